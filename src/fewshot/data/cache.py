"""Decode every image once into a uint8 array [N, 3, S, S], memory-mapped and reused across runs.

Why: decoding and resizing JPEG/PNG per sample per epoch is what starves training on a few CPU
cores. After one pass, batches are slices of this array and augmentation runs on tensors.
The cache key covers the file list, each file's size, mtime, inode and ctime, the resize settings and
data.bit_depth, so a changed or renamed-over file (or setting) triggers a rebuild. Undecodable files are
collected and reported together (or skipped).
Each new entry prunes the least recently used ones beyond data.cache_max_gb (prune_cache). A decode stopped midway
keeps the rows it wrote for the next load of the same files (data/cache_partial.py).
Decoding one file is data/decode.py; the files of a list with threads, data/decode_many.py; the entry's files on
disk, data/cache_files.py; the notes, warnings and errors it gives, data/cache_words.py; the list of skipped files,
data/skipped.py; the lazy view of a pool's rows, data/image_rows.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshot.data.cache_files import HELD_SUFFIX, _drop, _mapped_file, hold_temp, prune_cache
from fewshot.data.cache_partial import KeptRows, keep_rows, kept_positions, part_file, read_part
from fewshot.data.cache_words import (SKIP_HINT, _note_kept_part, _note_new_entry, _note_part_ignored, _too_big,
                                      _warn_no_cache, _warn_no_home, warn_bit_depth)
from fewshot.data.decode_many import VANISHED, _decode_into, _decode_one, image_digest
from fewshot.data.skipped import report_skipped
from fewshot.errors import DataLayoutError, UserError, one_line
from fewshot.progress import track
from fewshot.utils import new_file_mode, atomic_write_text, loads_run_json

CACHE_VERSION = 5  # 2: EXIF orientation applied; 3: float images in [0, 1] no longer black; 4: dark transparent
#                    images laid on white; 5: transparency of L, RGB and 16-bit PNGs (a tRNS colour) applied, and
#                    broken image links named as such (the old "[Errno 2]" reason was kept by each retry)


@dataclass
class CachedImages:
    """uint8 images [N, 3, S, S] plus which entries decoded (valid[i] False: skipped bad file)."""

    images: torch.Tensor
    valid: torch.Tensor
    bad: list[tuple[str, str]]
    digests: list[str | None] | None = None  # image_digest of each entry, where asked for (load_images' digests)
    # the digests this load had without hashing for them (taken as it decoded, or kept in the entry's meta file), or
    # asked for: what torchrun's ranks compare of their pixels (distributed.check_same_image_counts)
    known_digests: list[str | None] | None = None
    rows: torch.Tensor | None = None  # the row of ``images`` each file is (load_rows); None: file i is row i

    def __len__(self) -> int:
        return len(self.valid)


def cache_key(paths: list[Path], size: int, crop_pct: float, bit_depth: int | str = "auto",
              resize: str = "crop") -> str:
    """The entry's name: every setting that changes the pixels, then each file. Numbers are keyed by value: the
    override parser's data.crop_pct=1 (an int) and the config's 1.0 wrote two entries of the same pixels.
    data.resize crop keys as before the field existed (its entries hold those pixels), and so does auto where it
    crops every dataset (fit.fit_of passes crop or pad, decided per dataset); pad has a key of its own, as has a
    Fit of datasets decided apart, so a cropped entry is never served for a padded image."""
    # data.bit_depth auto keys as before it existed: the entries already cached hold its pixels. Any number has a key
    # of its own, 16 too: a 32-bit image whose values all lie under 256 is scaled from 255 by auto, from 65535 by 16
    # (keyed as auto, whichever ran first chose the cached pixels). "depth", not the "bits" of before: a given depth
    # now scales such float images too, so those entries are decoded again (the old ones age out by prune_cache)
    return _key_of(_key_settings(paths, size, crop_pct, bit_depth, resize), _stat_rows(paths))


def _key_of(settings: str, stat_rows: list[str]) -> str:
    h = hashlib.sha1(settings.encode())
    h.update("".join(stat_rows).encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:20]


def _key_settings(paths: list[Path], size: int, crop_pct: float, bit_depth: int | str, resize) -> str:
    """cache_key's part for the settings (a kept part of a stopped decode is named by it and the paths alone)."""
    depth = "" if bit_depth == "auto" else f"|depth{int(bit_depth)}"
    fit = resize.key(paths) if not isinstance(resize, str) else "" if resize == "crop" else f"|{resize}"
    return f"v{CACHE_VERSION}|{int(size)}|{float(crop_pct)!r}{depth}{fit}"


STAT_PROGRESS_FILES = 10_000  # a stat pass over this many files or more shows a progress line
_STAT_PASS: dict | None = None  # shared_stat_pass's stat lines of each list of files, by the list (None: outside)


@contextlib.contextmanager
def shared_stat_pass():
    """Within it, cache_key stats each list of files once: `fewshot run`'s start-up keyed the same cached 50k-file
    pool four times (its cold checks, is_cached, load_images), 7 s of a 1-minute budget (hunt hBV #2). The key still
    covers every file's stat, taken once in the block: a file changed after it is seen by the next command, as one
    changed just after a single stat pass always was. Nested blocks share the outer one's."""
    global _STAT_PASS
    outer = _STAT_PASS
    if outer is None:
        _STAT_PASS = {}
    try:
        yield
    finally:
        if outer is None:
            _STAT_PASS = None


def _stat_rows(paths) -> list[str]:
    """cache_key's part for the files: each one's absolute path with its size, mtime, inode and ctime, in order, a
    line each (load_images stamps the rows of a stopped decode with them)."""
    memo = _STAT_PASS
    listed = tuple(map(os.fspath, paths)) if memo is not None else None
    if listed is not None and listed in memo:
        return memo[listed]
    lines, n = [], len(paths)
    with track(total=n, desc=f"checking {n:,} files against the decode cache",
               disable=n < STAT_PROGRESS_FILES) as bar:
        for i, p in enumerate(paths):
            p = os.path.abspath(p)  # `--data root` and `--data /abs/root` (train records it absolute) share one cache
            try:
                st = os.stat(p)
                # inode and ctime too: `mv b.jpg a.jpg` keeps size and mtime (same-size files swapped by name kept
                # their old pixels) but changes both
                lines.append(f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}\n")
            except OSError:
                lines.append(f"{p}|missing\n")
            if i % 1000 == 999:
                bar.update(1000)
        bar.update(n % 1000)
    if listed is not None:
        memo[listed] = lines
    return lines


RETRYABLE = {"permission denied"}  # decode failures that can go away without the file changing


def _retryable(why: str) -> bool:
    """A cached failure to try again: it may be gone without the file changing (a cache written before memory
    failures were kept out of it recorded numpy's "Unable to allocate" or a bare MemoryError)."""
    return why in RETRYABLE or why.startswith("[Errno") or why.startswith("Unable to allocate") or why == "MemoryError"


def load_images(paths: list[Path], size: int, cache_dir: Path | None, crop_pct: float = 1.0,
                skip_bad: bool = False, desc: str = "decoding images", threads: int | None = None,
                skip_note: str | None = "--skip-bad-images", max_gb: float | None = None,
                bit_depth: int | str = "auto", digests: bool = False, entry_digests: bool = False,
                reuse: list[Path] | None = None, resize: str = "crop") -> CachedImages:
    """Decode (or reuse the cache of) `paths` at `size`; bad files raise DataLayoutError unless skip_bad.
    ``max_gb``: data.cache_max_gb, the cache folder's cap once a new entry is written (prune_cache; None or 0:
    none). ``bit_depth``: data.bit_depth (to_rgb_uint8); 16-bit images that seem to use fewer bits than they are
    scaled from are named in one warning (warn_bit_depth). ``digests``: the result holds each image's image_digest,
    taken as it decodes and kept in the entry's meta file (an entry written without them is hashed once).
    ``entry_digests``: a decode takes them even where it does not ask for them, as they cost next to nothing then: a
    new entry keeps them (under torchrun the last rank to finish a split writes its meta file, and one-process
    decodes of the pool wrote none: a rank's next run hashed every image again), and the result's known_digests
    holds them without a cache entry too (the pixels torchrun's ranks compare). ``reuse``: another list whose cache
    entry (same size, crop and depth) may hold some of ``paths``: a new entry copies their rows from it (with their
    digests, as that entry keeps them) and decodes only the others (self-training's pool beside MoCo's capped share:
    the files MoCo decoded were decoded again, review rev76). ``resize``: data.resize (decode_resized)."""
    # filters are the process's: the decoding threads see this one while it is in place, and a user's -W error
    # (or a caller's catch_warnings) holds again afterwards (a filter set at import overrode it for good)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        return _load_images(paths, size, cache_dir, crop_pct, skip_bad, desc, threads, skip_note, max_gb, bit_depth,
                            digests, entry_digests, reuse, resize)


def _load_images(paths, size, cache_dir, crop_pct, skip_bad, desc, threads, skip_note, max_gb,
                 bit_depth, digests, entry_digests=False, reuse=None, resize="crop") -> CachedImages:
    paths = [p if isinstance(p, Path) else Path(p) for p in paths]
    n = len(paths)
    settings, stat_rows = _key_settings(paths, size, crop_pct, bit_depth, resize), _stat_rows(paths)
    key = _key_of(settings, stat_rows)
    data_file = meta_file = part = None
    root_dir = cache_dir  # where the entry of ``reuse`` is looked up (entry_dir of its own key)
    if cache_dir is not None:
        cache_dir = entry_dir(cache_dir, key)
        data_file, meta_file = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
        if data_file.is_file() and meta_file.is_file():
            try:
                meta = loads_run_json(meta_file.read_text())
                arr = np.memmap(data_file, dtype=np.uint8, mode="c", shape=(n, 3, size, size))
                bad = _cached_bad(meta, paths)
                # a failure may have been fixed since (a transient I/O error, a permission of a parent folder:
                # neither changes the key; a chmod of the file itself does, through its ctime),
                # so the files that failed for such a reason are tried again; if one decodes now, the cache is
                # rebuilt (broken bytes change the key when they are replaced, so those are not retried)
                retry = [paths[i] for i, why in bad if _retryable(why)]
                if not any(_decode_one((p, size, crop_pct, bit_depth, None, resize))[1] is None for p in retry):
                    with contextlib.suppress(OSError):  # its last use, for prune_cache (a read-only cache: none)
                        os.utime(data_file)
                    warn_bit_depth(desc, _sixteen(meta.get("bits16")), bit_depth)  # each run, not only the first
                    found = _kept_digests(meta, arr, bad, paths, meta_file) if digests else None
                    known = found if found is not None else _stored_digests(meta, n)
                    return _finish(torch.from_numpy(arr), bad, paths, skip_bad, skip_note, found, known)
            except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError):
                pass  # unreadable cache (or a meta file of another shape): rebuild below

    shape, nbytes = (n, 3, size, size), n * 3 * size * size
    # rows held elsewhere: kept by a stopped decode of these files (cache_partial), in the entry of ``reuse``
    if data_file is not None and n:
        part = part_file(cache_dir, settings, paths)
    kept_part = read_part(part, paths, size, stat_rows, desc) if part is not None else None
    copied = [held for held in (kept_part, _rows_held(paths, size, root_dir, reuse, crop_pct, bit_depth, resize)
                                if reuse else None) if held is not None]
    out = tmp = held = None
    if data_file is not None and n:
        # decoded straight into the (temporary) cache file: an in-memory copy of a large pool at a large size was
        # more memory than the machine had, where the page cache can hold the mapping's pages or write them out.
        # A unique name: `.tmp{pid}` was shared by processes of other containers or nodes using this folder, and a
        # second one's open emptied the first's file under its mapping (SIGBUS, or zeros cached). Held open and
        # locked until it becomes the entry: a later build deletes it once no process holds it (a kill -9 left a
        # full-size file for a day, outside data.cache_max_gb)
        for tries_left in (1, 0):
            try:
                data_file.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(dir=cache_dir, prefix=f"{key}.", suffix=HELD_SUFFIX)
                tmp, held = Path(name), os.fdopen(fd, "rb+")
                hold_temp(held)  # before it has any size (cache_files._lock_state)
                os.chmod(tmp, new_file_mode(data_file))  # mkstemp makes 0600: a shared cache others could not read
                out = _mapped_file(held, shape, nbytes)
                break
            except OSError as exc:
                if tmp is not None:
                    _drop(tmp)
                tmp, held = None, _closed(held)
                if exc.errno == errno.ENOMEM:  # no address space for the mapping (ulimit -v): nor for an array
                    raise _too_big(n, size, nbytes) from None
                if tries_left and _room_without(part, exc, nbytes):
                    # no room for the entry beside a stopped decode's part: the part goes, and the entry is tried
                    # once more (each load decoded in memory and wrote nothing, the cache off for good: rev103 #1)
                    copied = [src for src in copied if src is not kept_part]
                    if kept_part is not None:  # else none of its rows could be used: nothing lost
                        again = len(kept_part[1].keys() - set().union(*(src[1].keys() for src in copied)))
                        _note_part_ignored(desc, part, "the disk has no room for it beside the new entry", again)
                    kept_part = None  # its mapping closed: a deleted file's blocks are freed once it is unmapped
                    _drop(part)
                    continue
                _warn_no_cache(cache_dir, exc, nbytes)
                break
        if tmp is not None:
            spared = len(set().union(*(src[1].keys() | {i for i, _ in src[4]} for src in copied)))  # not decoded
            _note_new_entry(desc, n - spared, size, cache_dir, nbytes, max_gb)
    if kept_part is not None:
        _note_kept_part(desc, len(kept_part[1]), n)
    if out is None:
        try:
            out = np.zeros(shape, dtype=np.uint8)
        except MemoryError:
            raise _too_big(n, size, nbytes) from None
    kept = KeptRows(paths)  # the rows written so far: a stop keeps them (cache_partial)
    try:
        found: list[str | None] | None = [None] * n if digests or entry_digests else None
        threads = threads or min(8, os.cpu_count() or 1)
        try:
            if not copied:
                bad, sixteen = _decode_into(out, paths, size, crop_pct, desc, threads, bit_depth, found, resize,
                                            done=kept.mark)
            else:
                bad, sixteen = _copy_or_decode(out, paths, size, crop_pct, desc, threads, bit_depth, copied, found,
                                               resize, kept)
        except BaseException:  # a stop (Ctrl-C, SIGTERM, a failure): the rows decoded so far are kept for the next
            if tmp is not None:
                with contextlib.suppress(OSError):
                    if keep_rows(held, tmp, part, out, kept, stat_rows, size, found, desc):
                        tmp = None
            raise
        # a file removed while it decoded: the entry would hold the folder as it was at no moment, and be served
        # as "removed" should the file come back with its old size and time (cp -p): not cached
        if tmp is not None and not any(why == VANISHED for _, why in bad):
            try:
                # durable before the (fsynced) meta file says it is complete; written through the held descriptor:
                # another one's close could give a lock emulated by fcntl (NFS) up
                if isinstance(out, np.memmap):
                    out.flush()
                else:  # a folder that cannot be mapped for writing (_mapped_file): written in one go
                    held.seek(0)
                    out.tofile(held)
                    held.flush()
                os.fsync(held.fileno())
                _no_folder_at(meta_file)  # before the entry's data takes its name: no entry without its meta file
                os.replace(tmp, data_file)
                tmp = None
                # bad_at: by index in the keyed list (cwd-free); bad: the same files by absolute path, for a person
                # and for older versions, which read only bad (they matched it by absolute path)
                meta = {"n": n, "size": size, "bad": [(os.path.abspath(paths[i]), why) for i, why in bad],
                        "bad_at": bad, "bits16": sixteen}
                _write_cache_text(meta_file, json.dumps(meta if found is None else {**meta, "digests": found}))
                _drop(part)  # the entry holds every row it kept
                prune_cache(cache_dir, max_gb, keep=data_file)
            except OSError as exc:  # out still holds every image (the mapping outlives its unlinked file)
                _warn_no_cache(cache_dir, exc, nbytes)
            if tmp is None and isinstance(out, np.memmap):  # mapped again as a read maps it: a caller's change
                # to its images stays its own
                out = None  # the writable mapping first (its address space, under ulimit -v)
                out = np.memmap(data_file, dtype=np.uint8, mode="c", shape=shape)
    finally:
        if tmp is not None:  # a failure with no row written: no partial copy per process left in the cache folder
            _drop(tmp)
        _closed(held)  # its lock given up once it is the entry (or gone)
    warn_bit_depth(desc, sixteen, bit_depth)
    return _finish(torch.from_numpy(out), bad, paths, skip_bad, skip_note, found if digests else None, found)


ROOM_MARGIN_BYTES = 8 << 20  # beyond the entry's own bytes: its meta file and the file system's blocks that map it


def _room_without(part: Path | None, exc: OSError, nbytes: int) -> bool:
    """Whether deleting the kept ``part`` can make room for an entry of ``nbytes`` that ``exc`` found no room for:
    the part was deleted where even its space was too little, and its rows were lost for nothing (review rev105 #3).
    A quota (EDQUOT), or a disk whose free space cannot be read, is tried without it, as before. Root may write
    into the blocks reserved for it (f_bfree, ext4's 5 %): counting only f_bavail kept the part where deleting it
    made room, and the cache stayed off (review rev109 #1). ROOM_MARGIN_BYTES leaves room for the meta file and the
    entry's extent blocks: at exact equality the part was deleted and the entry still did not fit."""
    if part is None or exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not part.is_file():
        return False
    if exc.errno == errno.EDQUOT:
        return True
    try:
        vfs = os.statvfs(part.parent)
        free = (vfs.f_bfree if getattr(os, "geteuid", lambda: -1)() == 0 else vfs.f_bavail) * vfs.f_frsize
        return free + part.stat().st_blocks * 512 >= nbytes + ROOM_MARGIN_BYTES
    except (OSError, AttributeError):  # statvfs, st_blocks: none on Windows
        return True


def _open_entry(within: list, size: int, cache_dir: Path | None, crop_pct: float, bit_depth: int | str,
                mode: str, resize: str = "crop") -> tuple[dict, dict, np.ndarray, Path] | None:
    """The cache entry of the list ``within`` (another list's rows are read there: _rows_held, _entry_rows): its
    meta, its bad files {row: why}, its images mapped in ``mode`` and its data file; None where it is missing or
    unreadable."""
    if cache_dir is None:
        return None
    within = [Path(p) for p in within]
    key = cache_key(within, size, crop_pct, bit_depth, resize)
    folder = entry_dir(cache_dir, key)
    if not _holds(folder, key):
        return None
    try:
        meta = loads_run_json((folder / f"{key}.json").read_text())
        bad_of = dict(_cached_bad(meta, within))
        images = np.memmap(folder / f"{key}.u8", dtype=np.uint8, mode=mode, shape=(len(within), 3, size, size))
    except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError):
        return None
    return meta, bad_of, images, folder / f"{key}.u8"


def _rows_held(paths: list[Path], size: int, cache_dir: Path | None, within: list, crop_pct: float,
               bit_depth: int | str,
               resize: str = "crop") -> tuple[np.ndarray, dict[int, int], dict | None, list | None, list] | None:
    """The rows of ``paths`` that the cache entry of ``within`` holds decoded: (its images, {index in ``paths``: row},
    its record of 16-bit images where it may be theirs (_sixteen_of), the digests its meta file keeps or None, the
    files it holds as broken, not to be retried: [(index, why)], decoded again they fail again); None where it holds
    none of them or cannot be read."""
    opened = _open_entry(within, size, cache_dir, crop_pct, bit_depth, "r", resize)
    if opened is None:
        return None
    meta, bad_of, images, _ = opened
    where: dict[str, int] = {}
    for i, p in enumerate(within):
        where.setdefault(os.path.abspath(p), i)
    rows, broken = {}, []
    for i, a in enumerate(map(os.path.abspath, paths)):
        row = where.get(a)
        if row is not None and row not in bad_of:
            rows[i] = row
        elif row is not None and not _retryable(bad_of[row]):
            broken.append((i, bad_of[row]))
    sixteen = _sixteen_of(meta.get("bits16"), [paths[i] for i in rows])
    return (images, rows, sixteen, _stored_digests(meta, len(within)), broken) if rows or broken else None


def kept_rows_at(paths: list, size: int, cache_dir: Path | None, crop_pct: float = 1.0,
                 bit_depth: int | str = "auto", resize: str = "crop") -> set[int]:
    """The positions in ``paths`` whose rows a stopped decode of them kept (cache_partial.kept_positions: its record
    read, no pixel): none where none is kept, or the part cannot be read as one of these files. ``paths``: str or
    Path, as is_cached's."""
    if cache_dir is None or not paths:
        return set()
    settings, stat_rows = _key_settings(paths, size, crop_pct, bit_depth, resize), _stat_rows(paths)
    folder = entry_dir(cache_dir, _key_of(settings, stat_rows))
    return kept_positions(part_file(folder, settings, paths), len(paths), size, stat_rows)


def rows_held_at(paths: list, size: int, cache_dir: Path | None, within: list, crop_pct: float = 1.0,
                 bit_depth: int | str = "auto", resize: str = "crop") -> set[int]:
    """The positions in ``paths`` whose rows the entry of ``within`` holds decoded (_rows_held; none where there is
    none): the files a copy from it costs no decoding (a failure it recorded is no image, and an entry never written
    holds none)."""
    held = _rows_held([Path(p) for p in paths], size, cache_dir, within, crop_pct, bit_depth, resize)
    return set() if held is None else set(held[1])


def _sixteen_of(recorded, paths: list) -> dict | None:
    """An entry's record of its 16-bit images (_sixteen) as far as it may be that of ``paths``, some of its files:
    it keeps only the largest value and the folder all of them lie under, not which files they are, so it is kept
    where one of ``paths`` lies under that folder and dropped otherwise (MoCo's 16-bit train-image stand-ins were
    warned of on every cache hit of a share of 8-bit pool files copied from its entry, review rev80)."""
    sixteen = _sixteen(recorded)
    if sixteen is None:
        return None
    folder = os.path.abspath(sixteen["folder"])
    under = (os.path.abspath(p) for p in paths)
    return sixteen if any(a == folder or a.startswith(folder.rstrip(os.sep) + os.sep) for a in under) else None


class _RowsOf:
    """``out``'s rows ``rows`` as _decode_into writes them (``view[i] = image`` puts image i into row rows[i])."""

    def __init__(self, out, rows: list[int]):
        self.out, self.rows = out, rows

    def __setitem__(self, i: int, image) -> None:
        self.out[self.rows[i]] = image


def _copy_or_decode(out, paths: list[Path], size: int, crop_pct: float, desc: str, threads: int,
                    bit_depth: int | str, copied: list, found: list | None = None,
                    resize: str = "crop", kept: KeptRows | None = None) -> tuple[list, dict | None]:
    """_decode_into of ``paths``, except that the rows each of ``copied`` holds (_rows_held, cache_partial.read_part;
    the first that holds a row gives it) are copied from there, not decoded, nor the files one holds as broken: the
    bad files (by index in ``paths``) and the 16-bit record, the others' merged in where it may be the copied rows'
    (_rows_held). ``found``: filled with each image's digest, a copied one's as its source keeps it (hashed where it
    keeps none): asking for digests decoded every file again. ``kept``: marked as each row is written (a row
    copied from an entry is not: that entry still holds it)."""
    taken_from: dict[int, int] = {}
    known: dict[int, str] = {}
    merged = None
    for images, rows, sixteen_there, there, broken, *peaks in copied:  # a kept part adds its rows' own peaks
        fresh = {i: row for i, row in rows.items() if i not in taken_from and i not in known}
        for i, row in fresh.items():
            out[i] = images[row]
            if found is not None:
                found[i] = there[row] if there is not None else image_digest(images[row])
            if kept is not None and peaks:  # a part's row, with its own peak: a stop keeps both or neither (rev105
                # #2); an entry's row is not kept again, as that entry still holds it (#4)
                kept.mark(i, peaks[0].get(i))
        taken_from.update(fresh)
        known.update((i, why) for i, why in broken if i not in taken_from and i not in known)
        if fresh:
            merged = _merged_sixteen(merged, sixteen_there)
    missing = [i for i in range(len(paths)) if i not in taken_from and i not in known]
    taken = None if found is None else [None] * len(missing)

    def done(j: int, peak: int | None) -> None:  # row missing[j] written: its digest too, for a stop's kept rows
        if found is not None:
            found[missing[j]] = taken[j]
        if kept is not None:
            kept.mark(missing[j], peak)

    bad, sixteen = _decode_into(_RowsOf(out, missing), [paths[i] for i in missing], size, crop_pct, desc, threads,
                                bit_depth, taken, resize, done=done)
    bad = [(missing[i] if isinstance(i, int) else i, why) for i, why in bad] + list(known.items())
    return bad, _merged_sixteen(sixteen, merged)


def _merged_sixteen(one: dict | None, other: dict | None) -> dict | None:
    """Two records of 16-bit images as one: the larger peak, the folder both lie under."""
    if one is None or other is None:
        return one or other
    try:
        folder = os.path.commonpath([one["folder"], other["folder"]])
    except ValueError:  # folders on two drives: the first's
        folder = one["folder"]
    return {"peak": max(one["peak"], other["peak"]), "folder": folder}


def _closed(fh) -> None:
    """Close a temporary file's held descriptor (None: none); returns None for the caller's variable."""
    if fh is not None:
        with contextlib.suppress(OSError):
            fh.close()


def _cached_bad(meta: dict, paths: list[Path]) -> list[tuple[int, str]]:
    """A cache entry's bad files, as (index in ``paths``, why). The key hashes the absolute paths in order, so an
    index names the same file for every caller that finds the entry; a name as the writer spelt it did not (made
    absolute against the reader's cwd, `data/a/bad.png` written from w/ and read from w/sub named no file, and the
    bad one was a valid black image). A meta file without indices (an older version's) is read by its names where
    they are absolute; a relative one cannot be placed, so the entry is rebuilt (ValueError, as any bad shape)."""
    if "bad_at" in meta:
        bad = [tuple(b) for b in meta["bad_at"]]
        if not all(len(b) == 2 and type(b[0]) is int and 0 <= b[0] < len(paths) and isinstance(b[1], str)
                   for b in bad):
            raise ValueError("meta file of another shape")
        return bad
    named = [tuple(b) for b in meta["bad"]]
    if not all(len(b) == 2 and all(isinstance(x, str) for x in b) for b in named):
        raise ValueError("meta file of another shape")
    if not all(os.path.isabs(p) for p, _ in named):
        raise ValueError("bad files named relative to the writer's folder")
    why_of: dict[str, str] = {}
    for p, why in named:
        why_of.setdefault(os.path.abspath(p), why)
    return [(i, why_of[a]) for i, a in enumerate(map(os.path.abspath, paths)) if a in why_of]


_HASHED: dict[str, list[str | None]] = {}  # _kept_digests' digests of entries whose meta file lacks them, by meta file


def _kept_digests(meta: dict, arr: np.ndarray, bad: list[tuple[int, str]], paths: list[Path],
                  meta_file: Path) -> list[str | None]:
    """A cache entry's image digests: as its meta file keeps them, else (an entry written without them) taken from
    its pixels now and added to the meta file where its folder can be written, so that only the first read pays.
    They are also kept in this process (by meta file; its key names the files' contents): a read-only cache's
    entry was hashed again by every stage of `fewshot run`, and a failed write (a UserError from the output
    check) made the load fail."""
    kept = meta.get("digests")
    if _digests_fit(kept, len(arr)):
        return kept
    kept = _HASHED.get(str(meta_file))
    if _digests_fit(kept, len(arr)):
        return kept
    failed = {i for i, _ in bad}
    kept = [None if i in failed else image_digest(arr[i]) for i in range(len(paths))]
    _HASHED[str(meta_file)] = kept
    if os.access(meta_file.parent, os.W_OK | os.X_OK):  # a read-only cache (or mount): nothing to add
        with contextlib.suppress(OSError, UserError, ValueError):
            # another process may have rewritten the entry since it was read (its own digests, a rebuild): only
            # the meta file as read is extended, never one written meanwhile
            if loads_run_json(meta_file.read_text()) == meta:
                _write_cache_text(meta_file, json.dumps({**meta, "digests": kept}))
    return kept


def _stored_digests(meta: dict, n: int) -> list[str | None] | None:
    """The digests an entry's meta file keeps, None where it keeps none (nothing is hashed for them)."""
    kept = meta.get("digests")
    return kept if _digests_fit(kept, n) else None


def _digests_fit(kept, n: int) -> bool:
    """Whether ``kept`` is a list of ``n`` digests (str, or None for a blank or bad image)."""
    return isinstance(kept, list) and len(kept) == n and all(d is None or isinstance(d, str) for d in kept)


def is_cached(paths: list[Path], size: int, cache_dir: Path | None, crop_pct: float = 1.0,
              bit_depth: int | str = "auto", resize: str = "crop") -> bool:
    """Whether load_images finds ``paths`` decoded in ``cache_dir`` (it then only maps the file)."""
    if cache_dir is None:
        return False
    key = cache_key(paths, size, crop_pct, bit_depth, resize)  # str or Path: a Path each cost 0.2 s on 20k files
    return _holds(entry_dir(cache_dir, key), key)


def rows_of_entry(paths: list[Path], size: int, cache_dir: Path | None, within: list[Path], crop_pct: float = 1.0,
                  bit_depth: int | str = "auto",
                  resize: str = "crop") -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]] | None:
    """``paths`` as rows of the cache entry of ``within``, a longer list decoded at the same size, crop and depth
    that holds each of them: (that entry's images, the row of each path, the bad ones by index in ``paths``). Its
    key hashed every file's stat, so the rows are these files' pixels: `fewshot run --pretrain` decoded the same
    pool files again for self-training (hunt hBK #3). None where the entry is missing or unreadable, lacks a file,
    or holds one as a failure load_images would retry (the caller decodes its own entry then)."""
    found = _entry_rows(paths, size, cache_dir, within, crop_pct, bit_depth, resize)
    return None if found is None else found[:3]


def _entry_rows(paths: list[Path], size: int, cache_dir: Path | None, within: list[Path], crop_pct: float,
                bit_depth: int | str, resize: str = "crop"):
    """rows_of_entry, with the entry's record of its 16-bit images (load_rows warns of them, as a cache hit does)
    and the digests its meta file keeps (None: none)."""
    if cache_dir is None:
        return None
    where: dict[str, int] = {}
    for i, p in enumerate(within):
        where.setdefault(os.path.abspath(p), i)
    rows = [where.get(os.path.abspath(p)) for p in paths]
    if None in rows:
        return None
    opened = _open_entry(within, size, cache_dir, crop_pct, bit_depth, "c", resize)
    if opened is None:
        return None
    meta, bad_of, arr, data_file = opened
    sixteen = _sixteen_of(meta.get("bits16"), paths)  # the entry's record, where it may be theirs
    bad = [(i, bad_of[r]) for i, r in enumerate(rows) if r in bad_of]
    if any(_retryable(why) for _, why in bad):
        return None
    with contextlib.suppress(OSError):  # its last use, for prune_cache
        os.utime(data_file)
    return torch.from_numpy(arr), torch.tensor(rows, dtype=torch.long), bad, sixteen, _stored_digests(meta, len(within))


def load_rows(paths: list[Path], size: int, cache_dir: Path | None, within: list[Path], crop_pct: float = 1.0,
              skip_bad: bool = False, skip_note: str | None = "--skip-bad-images",
              bit_depth: int | str = "auto", desc: str = "decoding images",
              digests: bool = False, resize: str = "crop") -> CachedImages | None:
    """load_images of ``paths`` read from the entry of ``within`` (rows_of_entry), nothing decoded: the result's
    ``rows`` says which row of its images each file is. None where that entry does not hold them all. Its 16-bit
    images are warned of as load_images' cache hit warns (warn_bit_depth; the entry's record where it may be theirs):
    `fewshot train --semi fixmatch` reading an earlier run's entry gave no warning of dark 12-bit pool images.
    ``digests``: each file's, as that entry's meta file keeps them (its rows hashed where it keeps none): FixMatch
    under torchrun, whose ranks compare them, decoded the pool again into an entry of its own (review rev79)."""
    found = _entry_rows([Path(p) for p in paths], size, cache_dir, within, crop_pct, bit_depth, resize)
    if found is None:
        return None
    images, rows, bad_at, sixteen, there = found
    warn_bit_depth(desc, sixteen, bit_depth)
    taken = _rows_digests(images.numpy(), rows.tolist(), bad_at, there) if digests else None
    cached = _finish(images, bad_at, [Path(p) for p in paths], skip_bad, skip_note, taken)
    cached.rows = rows
    return cached


def _rows_digests(arr: np.ndarray, rows: list[int], bad_at: list[tuple[int, str]],
                  there: list | None) -> list[str | None]:
    """The digest of each file at ``rows`` of an entry: kept by its meta file (``there``), else hashed from the row
    (None for a bad file); only these rows are hashed, not the whole entry."""
    if there is not None:
        return [there[r] for r in rows]
    failed = {i for i, _ in bad_at}
    return [None if i in failed else image_digest(arr[r]) for i, r in enumerate(rows)]


def _holds(cache_dir: Path, key: str) -> bool:
    return (Path(cache_dir) / f"{key}.u8").is_file() and (Path(cache_dir) / f"{key}.json").is_file()


def entry_dir(cache_dir: str | Path, key: str) -> Path:
    """Where the entry ``key`` is read and written: ``cache_dir``, except that a ROOT/.fewshot_cache that cannot be
    written and does not hold the entry (stale, from other images: default_cache_dir still chose it, as a cache
    prebuilt on a read-only mount is read) gives way to the user cache, as a read-only root without one does. Train,
    pretrain and run warned "could not write the image cache" and decoded every image again on every command,
    where predict (prediction_cache_dir) already used the user cache."""
    cache_dir = Path(cache_dir)
    if (cache_dir.name != ".fewshot_cache" or not cache_dir.is_dir() or os.access(cache_dir, os.W_OK | os.X_OK)
            or _holds(cache_dir, key)):
        return cache_dir
    return user_cache_dir(cache_dir.parent) or cache_dir


def subsets_record(paths: list[Path], size: int, cache_dir: Path | None, crop_pct: float, seed: int,
                   bit_depth: int | str = "auto", resize: str = "crop") -> Path | None:
    """Where the sizes of the seeded random subsets of ``paths`` decoded as entries of their own are listed
    (run_pseudo.pool_decode_limit), named after the whole list's entry: a later run of the same pool reuses one.
    A few bytes, not pruned; a changed file list gets another name."""
    if cache_dir is None:
        return None
    key = cache_key(paths, size, crop_pct, bit_depth, resize)
    record = Path(cache_dir) / f"{key}.seed{seed}.subsets.json"  # beside a read-only root's stale cache: read only
    return record if record.is_file() else entry_dir(cache_dir, key) / record.name


def add_to_subsets_record(record: Path, size: int) -> None:
    """List ``size`` in a subsets_record, read and written again under an exclusive lock on a file beside it: two
    runs of one pool started together each read the list, added their size and wrote it back, and one size was
    lost. Where the file system cannot lock (some network mounts), two runs at once may still lose one."""
    record.parent.mkdir(parents=True, exist_ok=True)
    with open(record.with_name(record.name + ".lock"), "a") as lock:
        with contextlib.suppress(OSError, ImportError):
            import fcntl

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        sizes: set[int] = set()
        with contextlib.suppress(OSError, ValueError, TypeError):
            sizes = {int(m) for m in loads_run_json(record.read_text())}
        _write_cache_text(record, json.dumps(sorted({size, *sizes})))


def _no_folder_at(path: Path) -> None:
    """A folder where a cache file of fewshot's goes (a copied or hostile cache) is an OSError, as any other cache
    fault: the callers warn and go on without the cache."""
    if path.is_dir() and not path.is_symlink():  # a link is replaced by the write, never followed
        raise IsADirectoryError(errno.EISDIR, "a folder is where the cache file goes", str(path))


def _write_cache_text(path: Path, text: str) -> None:
    """atomic_write_text for a file fewshot names in its cache: its output checks raise UserError about an
    "output" the user never gave, which stopped every command; here they are an OSError, which the callers treat as
    a cache they cannot write (a warning, and the command goes on)."""
    _no_folder_at(path)
    try:
        atomic_write_text(path, text)
    except UserError as exc:
        raise OSError(errno.EINVAL, one_line(str(exc))) from None


def _sixteen(recorded) -> dict | None:
    """A cache entry's record of its 16-bit images ({"peak", "folder"}), None where it has none (an entry written
    before data.bit_depth existed, or one without 16-bit images)."""
    if (isinstance(recorded, dict) and isinstance(recorded.get("peak"), int) and not isinstance(recorded["peak"], bool)
            and isinstance(recorded.get("folder"), str)):
        return recorded
    return None


def _finish(images: torch.Tensor, bad_at: list[tuple[int, str]], paths: list[Path], skip_bad: bool,
            skip_note: str | None = "--skip-bad-images", digests: list[str | None] | None = None,
            known: list[str | None] | None = None) -> CachedImages:
    """``bad_at``: the bad files by index (every copy of a path listed twice, under any spelling, fails on its own),
    reported under this caller's spelling; ``skip_note`` None: skipped without a word (the caller says what they
    are left out of); ``known``: CachedImages.known_digests."""
    valid = torch.ones(len(paths), dtype=torch.bool)
    bad = list(dict.fromkeys((str(paths[i]), why) for i, why in bad_at))  # a path listed twice is reported once
    if bad:
        if not skip_bad:
            hint = SKIP_HINT if any(why != VANISHED for _, why in bad) else (  # review rev99 #7c
                "(the folder changed while the command read it: run it again once nothing adds or removes images)",)
            raise DataLayoutError([f"{p}: {why}" if why == VANISHED else f"{p}: cannot be decoded as an image ({why})"
                                   for p, why in bad], hint)
        for i, _ in bad_at:
            valid[i] = False
        if skip_note is not None:
            report_skipped(bad, note=skip_note)
    return CachedImages(images, valid, bad, digests, known if known is not None else digests)


def default_cache_dir(root: str | Path | None, configured: str | None) -> Path | None:
    """data.cache_dir when set; else ROOT/.fewshot_cache; else, when the data cannot be written (a read-only
    mount, a shared dataset folder), a per-root folder under $XDG_CACHE_HOME (~/.cache)/fewshot, so that a
    second command does not decode every image again."""
    if configured:
        return Path(configured)
    if root is None:
        return None
    beside = Path(root) / ".fewshot_cache"
    if beside.is_dir() and os.access(beside, os.R_OK | os.X_OK) or os.access(Path(root), os.W_OK):
        return beside  # a cache prebuilt on a read-only mount is still read (and only not written)
    return user_cache_dir(root)


def user_cache_dir(root: str | Path) -> Path | None:
    """The per-root folder under $XDG_CACHE_HOME (~/.cache)/fewshot that stands in for a ROOT/.fewshot_cache
    that cannot be written; None (said once) where there is no home folder."""
    xdg = os.environ.get("XDG_CACHE_HOME") or ""
    try:  # a relative XDG_CACHE_HOME is invalid (XDG spec): it would put the cache under the current folder
        home = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    except RuntimeError:  # no HOME and no passwd entry (containers with arbitrary uids): no cache
        _warn_no_home(root)
        return None
    digest = hashlib.sha1(str(Path(root).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return home / "fewshot" / f"{Path(root).resolve().name}-{digest}"
