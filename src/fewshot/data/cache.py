"""Decode every image once into a uint8 array [N, 3, S, S], memory-mapped and reused across runs.

Why: decoding and resizing JPEG/PNG per sample per epoch is what starves training on a few CPU
cores. After one pass, batches are slices of this array and augmentation runs on tensors.
The cache key covers the file list, each file's size, mtime, inode and ctime, the resize settings and
data.bit_depth, so a changed or renamed-over file (or setting) triggers a rebuild. Undecodable files are
collected and reported together (or skipped).
Each new entry prunes the least recently used ones beyond data.cache_max_gb (prune_cache).
Decoding one file is data/decode.py; the entry's files on disk, data/cache_files.py; the list of skipped files,
data/skipped.py; the lazy view of a pool's rows, data/image_rows.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from fewshot.data.cache_files import HELD_SUFFIX, _drop, _mapped_file, hold_temp, prune_cache
from fewshot.data.decode import decode_resized
from fewshot.data.skipped import report_skipped
from fewshot.errors import DataLayoutError, UserError, one_line, printable
from fewshot.progress import track
from fewshot.train.distributed import launch_rank
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

    def __len__(self) -> int:
        return self.images.shape[0]


def cache_key(paths: list[Path], size: int, crop_pct: float, bit_depth: int | str = "auto") -> str:
    """The entry's name: every setting that changes the pixels, then each file. Numbers are keyed by value: the
    override parser's data.crop_pct=1 (an int) and the config's 1.0 wrote two entries of the same pixels."""
    # data.bit_depth auto keys as before it existed: the entries already cached hold its pixels. Any number has a key
    # of its own, 16 too: a 32-bit image whose values all lie under 256 is scaled from 255 by auto, from 65535 by 16
    # (keyed as auto, whichever ran first chose the cached pixels). "depth", not the "bits" of before: a given depth
    # now scales such float images too, so those entries are decoded again (the old ones age out by prune_cache)
    depth = "" if bit_depth == "auto" else f"|depth{int(bit_depth)}"
    h = hashlib.sha1(f"v{CACHE_VERSION}|{int(size)}|{float(crop_pct)!r}{depth}".encode())
    for p in paths:
        p = os.path.abspath(p)  # `--data root` and `--data /abs/root` (train records it absolute) share one cache
        try:
            st = os.stat(p)
            # inode and ctime too: `mv b.jpg a.jpg` keeps size and mtime (same-size files swapped by name kept
            # their old pixels) but changes both
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}\n".encode(
                "utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{p}|missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:20]


RETRYABLE = {"permission denied"}  # decode failures that can go away without the file changing
OUT_OF_MEMORY = "out of memory"  # _decode_one's reason for a failed allocation: the machine's fault, never cached
PNG_METADATA = (f"its PNG metadata (a colour profile or text) decompresses to more than Pillow allows "
                f"({PngImagePlugin.MAX_TEXT_CHUNK // 2**20} MB a chunk, {PngImagePlugin.MAX_TEXT_MEMORY // 2**20} "
                f"MB in all); save the image again without it")


def _retryable(why: str) -> bool:
    """A cached failure to try again: it may be gone without the file changing (a cache written before memory
    failures were kept out of it recorded numpy's "Unable to allocate" or a bare MemoryError)."""
    return why in RETRYABLE or why.startswith("[Errno") or why.startswith("Unable to allocate") or why == "MemoryError"


def _decode_one(args):
    """(path, size, crop_pct[, bit_depth, peaks]) -> (CHW uint8 or None, None or why it failed)."""
    path, size, crop_pct, *more = args
    try:
        return decode_resized(path, size, crop_pct, *more), None
    except MemoryError:  # numpy's "Unable to allocate ...", Pillow's allocations: a busy machine, not a bad file
        return None, OUT_OF_MEMORY
    except Exception as exc:  # every other decoding failure is a user-data problem, reported with its path
        reason = str(exc).strip() or type(exc).__name__
        if isinstance(exc, PermissionError):
            reason = "permission denied"
        elif isinstance(exc, OSError) and reason.startswith("out of memory"):  # a Pillow codec's allocation
            return None, OUT_OF_MEMORY
        elif "MAX_TEXT_CHUNK" in reason or "MAX_TEXT_MEMORY" in reason:  # Pillow's names, not what the file has
            reason = PNG_METADATA
        return None, reason.splitlines()[0][:200]


def _decode_peak(args):
    """(path, size, crop_pct, bit_depth[, digest]) -> _decode_one's pair, the file's largest value if it is 16-bit,
    and (``digest`` True) its image_digest, taken in the decoding thread."""
    path, size, crop_pct, bit_depth, *digest = args
    peaks: list[int] = []
    arr, err = _decode_one((path, size, crop_pct, bit_depth, peaks))
    return (arr, err, (peaks[0] if peaks and err is None else None),
            image_digest(arr) if digest and digest[0] and err is None else None)


def image_digest(image: np.ndarray) -> str | None:
    """A digest of a decoded (channels-first) image's pixels, to find the same image in two splits
    (sets.warn_split_copies) without reading any file again; None for a blank image (each channel one value
    throughout: black, or a solid colour such as red), whose copies tell nothing."""
    image = np.ascontiguousarray(image)
    if image.size == 0:
        return None
    planes = image.reshape(image.shape[0] if image.ndim > 2 else 1, -1)
    if bool((planes == planes[:, :1]).all()):
        return None
    return hashlib.sha1(image, usedforsecurity=False).hexdigest()[:16]  # the fastest of hashlib's here (SHA-NI)


def _too_big(n: int, size: int, nbytes: int) -> UserError:
    return UserError(f"not enough memory for {n} images at {size}x{size} pixels ({nbytes / 1e9:.2f} GB); a smaller "
                     f"--img-size (model.img_size), fewer images or more memory (ulimit -v, the container's limit)")


def _out_of_memory(path: Path, threads: int) -> UserError:
    """A file that ran out of memory even when decoded on its own: the machine's limit, not a bad file."""
    dims = ""
    with contextlib.suppress(Exception), Image.open(path) as img:
        dims = f" ({img.size[0]}x{img.size[1]} pixels)"
    alone = f"even alone (not one of {threads} decoding at a time)" if threads > 1 else "with one decoding thread"
    return UserError(f"out of memory while decoding {path}{dims}, {alone}: the file is not at fault, this process "
                     f"may not use enough memory for it; free memory, raise the limit (ulimit -v, the container's "
                     f"limit) or shrink the image")


def load_images(paths: list[Path], size: int, cache_dir: Path | None, crop_pct: float = 1.0,
                skip_bad: bool = False, desc: str = "decoding images", threads: int | None = None,
                skip_note: str | None = "--skip-bad-images", max_gb: float | None = None,
                bit_depth: int | str = "auto", digests: bool = False, entry_digests: bool = False) -> CachedImages:
    """Decode (or reuse the cache of) `paths` at `size`; bad files raise DataLayoutError unless skip_bad.
    ``max_gb``: data.cache_max_gb, the cache folder's cap once a new entry is written (prune_cache; None or 0:
    none). ``bit_depth``: data.bit_depth (to_rgb_uint8); 16-bit images that seem to use fewer bits than they are
    scaled from are named in one warning (warn_bit_depth). ``digests``: the result holds each image's image_digest,
    taken as it decodes and kept in the entry's meta file (an entry written without them is hashed once).
    ``entry_digests``: a new entry this process writes keeps them even where it does not ask for them: under torchrun
    every rank decodes a split and the last to finish writes its meta file, so a rank other than 0 left an entry that
    rank 0's next run hashed again for warn_split_copies."""
    # filters are the process's: the decoding threads see this one while it is in place, and a user's -W error
    # (or a caller's catch_warnings) holds again afterwards (a filter set at import overrode it for good)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        return _load_images(paths, size, cache_dir, crop_pct, skip_bad, desc, threads, skip_note, max_gb, bit_depth,
                            digests, entry_digests)


def _load_images(paths, size, cache_dir, crop_pct, skip_bad, desc, threads, skip_note, max_gb,
                 bit_depth, digests, entry_digests=False) -> CachedImages:
    paths = [Path(p) for p in paths]
    n = len(paths)
    key = cache_key(paths, size, crop_pct, bit_depth)
    data_file = meta_file = None
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
                if not any(_decode_one((p, size, crop_pct, bit_depth))[1] is None for p in retry):
                    with contextlib.suppress(OSError):  # its last use, for prune_cache (a read-only cache: none)
                        os.utime(data_file)
                    warn_bit_depth(desc, _sixteen(meta.get("bits16")), bit_depth)  # each run, not only the first
                    found = _kept_digests(meta, arr, bad, paths, meta_file) if digests else None
                    return _finish(torch.from_numpy(arr), bad, paths, skip_bad, skip_note, found)
            except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError):
                pass  # unreadable cache (or a meta file of another shape): rebuild below

    shape, nbytes = (n, 3, size, size), n * 3 * size * size
    out = tmp = held = None
    if data_file is not None and n:
        # decoded straight into the (temporary) cache file: an in-memory copy of a large pool at a large size was
        # more memory than the machine had, where the page cache can hold the mapping's pages or write them out.
        # A unique name: `.tmp{pid}` was shared by processes of other containers or nodes using this folder, and a
        # second one's open emptied the first's file under its mapping (SIGBUS, or zeros cached). Held open and
        # locked until it becomes the entry: a later build deletes it once no process holds it (a kill -9 left a
        # full-size file for a day, outside data.cache_max_gb)
        try:
            data_file.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=cache_dir, prefix=f"{key}.", suffix=HELD_SUFFIX)
            tmp, held = Path(name), os.fdopen(fd, "rb+")
            hold_temp(held)  # before it has any size (cache_files._lock_state)
            os.chmod(tmp, new_file_mode(data_file))  # mkstemp makes 0600: a shared cache others could not read
            out = _mapped_file(held, shape, nbytes)
        except OSError as exc:
            if tmp is not None:
                _drop(tmp)
            tmp, held = None, _closed(held)
            if exc.errno == errno.ENOMEM:  # no address space for the mapping (ulimit -v): nor for an array
                raise _too_big(n, size, nbytes) from None
            _warn_no_cache(cache_dir, exc, nbytes)
        if tmp is not None:
            _note_new_entry(desc, n, size, cache_dir, nbytes, max_gb)
    if out is None:
        try:
            out = np.zeros(shape, dtype=np.uint8)
        except MemoryError:
            raise _too_big(n, size, nbytes) from None
    try:
        found: list[str | None] | None = [None] * n if digests or (entry_digests and tmp is not None) else None
        bad, sixteen = _decode_into(out, paths, size, crop_pct, desc, threads or min(8, os.cpu_count() or 1),
                                    bit_depth, found)
        if tmp is not None:
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
                prune_cache(cache_dir, max_gb, keep=data_file)
            except OSError as exc:  # out still holds every image (the mapping outlives its unlinked file)
                _warn_no_cache(cache_dir, exc, nbytes)
            if tmp is None and isinstance(out, np.memmap):  # mapped again as a read maps it: a caller's change
                # to its images stays its own
                out = None  # the writable mapping first (its address space, under ulimit -v)
                out = np.memmap(data_file, dtype=np.uint8, mode="c", shape=shape)
    finally:
        if tmp is not None:  # a failure or a stop: no partial copy per process left in the cache folder
            _drop(tmp)
        _closed(held)  # its lock given up once it is the entry (or gone)
    warn_bit_depth(desc, sixteen, bit_depth)
    return _finish(torch.from_numpy(out), bad, paths, skip_bad, skip_note, found if digests else None)


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


def _digests_fit(kept, n: int) -> bool:
    """Whether ``kept`` is a list of ``n`` digests (str, or None for a blank or bad image)."""
    return isinstance(kept, list) and len(kept) == n and all(d is None or isinstance(d, str) for d in kept)


def is_cached(paths: list[Path], size: int, cache_dir: Path | None, crop_pct: float = 1.0,
              bit_depth: int | str = "auto") -> bool:
    """Whether load_images finds ``paths`` decoded in ``cache_dir`` (it then only maps the file)."""
    if cache_dir is None:
        return False
    key = cache_key([Path(p) for p in paths], size, crop_pct, bit_depth)
    return _holds(entry_dir(cache_dir, key), key)


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
                   bit_depth: int | str = "auto") -> Path | None:
    """Where the sizes of the seeded random subsets of ``paths`` decoded as entries of their own are listed
    (run_pseudo.pool_decode_limit), named after the whole list's entry: a later run of the same pool reuses one.
    A few bytes, not pruned; a changed file list gets another name."""
    if cache_dir is None:
        return None
    key = cache_key([Path(p) for p in paths], size, crop_pct, bit_depth)
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


def decode_seconds_per_image(paths: list[Path], size: int, crop_pct: float = 1.0, threads: int | None = None,
                             bit_depth: int | str = "auto") -> float:
    """Seconds per file of decoding ``paths`` as load_images does (its threads), into memory and not cached: the
    rate at which a cold cache would be filled. Bad files count as decoded (they are reported by load_images)."""
    if not paths:
        return 0.0
    out = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _decode_into(out, [Path(p) for p in paths], size, crop_pct, "timing the decoding",
                     threads or min(8, os.cpu_count() or 1), bit_depth)
    return (time.perf_counter() - t0) / len(paths)


def _decode_into(out: np.ndarray, paths: list[Path], size: int, crop_pct: float, desc: str, threads: int,
                 bit_depth: int | str = "auto",
                 digests: list | None = None) -> tuple[list[tuple[int, str]], dict | None]:
    """Decode ``paths`` into ``out`` with ``threads`` threads; returns the bad files (by index) with their reasons,
    and the 16-bit images' largest value with their common folder (None: no 16-bit image), gathered as they decode.
    Files that ran out of memory are decoded again one at a time after the others, never reported as bad.
    ``digests``: filled with each image's image_digest (None for a bad file)."""
    bad: list[tuple[int, str]] = []
    starved: list[int] = []
    peak, folders = -1, set()

    def seen(i: int, value: int | None, digest: str | None) -> None:
        nonlocal peak
        if digests is not None:
            digests[i] = digest
        if value is not None:
            peak = max(peak, value)
            folders.add(os.path.dirname(os.path.abspath(paths[i])))

    pool = ThreadPoolExecutor(threads)
    try:
        hashed = digests is not None
        results = pool.map(_decode_peak, ((p, size, crop_pct, bit_depth, hashed) for p in paths), chunksize=64)
        for i, (arr, err, value, digest) in enumerate(track(results, desc=desc, total=len(paths))):
            if err is None:
                out[i] = arr
                seen(i, value, digest)
            elif err == OUT_OF_MEMORY:
                starved.append(i)
            else:
                bad.append((i, err))
    except BaseException:  # a stop (SIGTERM, Ctrl-C) must not wait for every queued decode of a large pool
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    for i in starved:  # the other decodes' memory is free now
        arr, err, value, digest = _decode_peak((paths[i], size, crop_pct, bit_depth, digests is not None))
        if err == OUT_OF_MEMORY:
            raise _out_of_memory(paths[i], threads)
        if err is None:
            out[i] = arr
            seen(i, value, digest)
        else:
            bad.append((str(paths[i]), err))
    return bad, ({"peak": peak, "folder": os.path.commonpath(sorted(folders))} if folders else None)


FEW_BITS = 14  # with data.bit_depth auto, 16-bit images whose values all stay below 2**FEW_BITS are warned about


def _sixteen(recorded) -> dict | None:
    """A cache entry's record of its 16-bit images ({"peak", "folder"}), None where it has none (an entry written
    before data.bit_depth existed, or one without 16-bit images)."""
    if (isinstance(recorded, dict) and isinstance(recorded.get("peak"), int) and not isinstance(recorded["peak"], bool)
            and isinstance(recorded.get("folder"), str)):
        return recorded
    return None


def warn_bit_depth(desc: str, sixteen: dict | None, bit_depth: int | str) -> None:
    """One warning (rank 0, once per message) when a split's 16-bit images do not fit data.bit_depth: with auto,
    values that all stay below 2**FEW_BITS (10-, 12- or 14-bit microscopy, medical or astronomy data in 16-bit
    files) decode dark and in few grey levels; with a number, larger values are clipped to white. Values over 65535
    (32-bit images) are clipped whatever the setting: auto, once advised for them, clips them the same, unwarned."""
    if sixteen is None or launch_rank() != 0:
        return
    peak, folder = sixteen["peak"], sixteen["folder"]
    if peak > 65535:
        message = (f"warning: {desc}: the 32-bit images in {folder} hold values up to {peak}, more than 16 bits "
                   f"(65535), the most any data.bit_depth (auto included) scales from: brighter pixels are clipped "
                   f"to white; save them as 16-bit images scaled to 0..65535 (or as 8-bit ones) to keep them")
    elif bit_depth == "auto":
        if not 0 < peak < 2 ** FEW_BITS:
            return
        bits = next(b for b in (8, 10, 12, 14) if peak < 2 ** b)  # a split's peak may sit below its data's depth
        message = (f"warning: {desc}: the 16-bit images in {folder} use at most {bits} bits (largest value {peak} of "
                   f"65535), so they decode dark, as values 0..{round(peak / 65535 * 255)} of 255; if they hold "
                   f"{bits}-bit data, add data.bit_depth={bits} to the train, pretrain, run or probe command "
                   f"(eval and predict take it from the run)")
    elif peak > 2 ** int(bit_depth) - 1:
        fits = f"data.bit_depth={next(b for b in (10, 12, 14, 16) if peak < 2 ** b)}"
        message = (f"warning: {desc}: 16-bit images in {folder} hold values up to {peak}, more than the "
                   f"{2 ** int(bit_depth) - 1} of data.bit_depth={bit_depth}: brighter pixels are clipped to white; "
                   f"give {fits} if they hold more bits")
    else:
        return
    if message not in _WARNED:  # `fewshot run` loads its pool once per round
        _WARNED.add(message)
        print(one_line(message), file=sys.stderr, flush=True)


def _warn_no_cache(cache_dir: Path, exc: OSError, nbytes: int) -> None:
    local_rank = (os.environ.get("LOCAL_RANK") or "0").strip()  # once per node (not RANK: a lone RANK=1 pod)
    if str(cache_dir) not in _WARNED and local_rank in ("", "0"):  # and once per folder
        _WARNED.add(str(cache_dir))
        full = exc.errno == errno.ENOSPC or "requested and" in str(exc)  # numpy's short write on a full disk
        world = os.environ.get("WORLD_SIZE", "").strip()  # under torchrun every process writes its own copy
        each = f" by each of the job's {world} processes" if world.isdigit() and int(world) > 1 else ""
        why = f"the disk is full ({nbytes / 1e6:.1f} MB needed{each})" if full else _fault(exc)
        if cache_dir.name == ".fewshot_cache" and os.access(cache_dir.parent, os.W_OK | os.X_OK):
            # a writable data root is where predict and eval cache, whatever XDG_CACHE_HOME says (advised here,
            # it changed nothing): only room there, or another folder for the commands that take one, helps
            where = (f"predict and eval cache only there while {cache_dir.parent} can be written: "
                     f"{'free some space on its disk' if full else 'fix that'} to cache them")
        else:
            where = ("predict and eval use ROOT/.fewshot_cache, else $XDG_CACHE_HOME/fewshot (~/.cache/fewshot): "
                     "XDG_CACHE_HOME=DIR chooses another")
        print(printable(f"warning: could not write the image cache in {cache_dir}: {why}; continuing "
                        f"without it (train, pretrain and run: data.cache_dir=DIR chooses another folder; {where})"),
              file=sys.stderr, flush=True)


def _fault(exc: OSError) -> str:
    """What went wrong with the cache folder: a file where it (or a folder above it) should be said only "[Errno 17]
    File exists", which named no file to move."""
    if isinstance(exc, FileExistsError) and exc.filename and not os.path.isdir(exc.filename):
        return f"{exc.filename} is a file, where the cache folder (or one above it) should be"
    return str(exc)


NOTE_MIN_BYTES = 50e6  # a new entry this large is announced (_note_new_entry); the few-shot splits stay quiet


def _gb_or_mb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.0f} MB"


def _note_new_entry(desc: str, n: int, size: int, cache_dir: Path, nbytes: int, max_gb: float | None) -> None:
    """Say where a large new entry goes and how much disk it takes (rank 0): a 100k-image pool at 224 px wrote
    15 GB beside the data without a word. A warm cache only maps its file, quietly."""
    if nbytes < NOTE_MIN_BYTES or launch_rank() != 0:
        return
    world = os.environ.get("WORLD_SIZE", "").strip()  # as _warn_no_cache: every process writes its own copy
    each = (f", {_gb_or_mb(nbytes * int(world))} while the job's {world} processes each decode a copy"
            if world.isdigit() and int(world) > 1 else "")
    hint = ""
    if f"noted:{cache_dir}" not in _WARNED:  # the settings once per folder (a first run writes the pool and splits)
        _WARNED.add(f"noted:{cache_dir}")
        cap = f"; data.cache_max_gb={max_gb:g} caps the folder" if max_gb else ""
        hint = f", reused by later commands; train, pretrain and run: data.cache_dir=DIR chooses another folder{cap}"
    print(one_line(f"note: {desc}: decoding {n:,} images at {size} px into {cache_dir} ({_gb_or_mb(nbytes)} on "
                   f"disk{each}{hint})"), file=sys.stderr, flush=True)


SKIP_HINT = ("(pass --skip-bad-images to skip these files and go on)",)


def _finish(images: torch.Tensor, bad_at: list[tuple[int, str]], paths: list[Path], skip_bad: bool,
            skip_note: str | None = "--skip-bad-images", digests: list[str | None] | None = None) -> CachedImages:
    """``bad_at``: the bad files by index (every copy of a path listed twice, under any spelling, fails on its own),
    reported under this caller's spelling; ``skip_note`` None: skipped without a word (the caller says what they
    are left out of)."""
    valid = torch.ones(len(paths), dtype=torch.bool)
    bad = list(dict.fromkeys((str(paths[i]), why) for i, why in bad_at))  # a path listed twice is reported once
    if bad:
        if not skip_bad:
            raise DataLayoutError([f"{p}: cannot be decoded as an image ({why})" for p, why in bad], SKIP_HINT)
        for i, _ in bad_at:
            valid[i] = False
        if skip_note is not None:
            report_skipped(bad, note=skip_note)
    return CachedImages(images, valid, bad, digests)


_WARNED: set[str] = set()


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
        if f"no-home:{root}" not in _WARNED and launch_rank() == 0:  # as the unwritable cache's
            _WARNED.add(f"no-home:{root}")
            print(printable(f"warning: no folder for the image cache: {root} cannot be written and there is no home "
                            f"folder (HOME unset, no passwd entry); continuing without it (train, pretrain and run: "
                            f"data.cache_dir=DIR chooses a folder)"), file=sys.stderr, flush=True)
        return None
    digest = hashlib.sha1(str(Path(root).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return home / "fewshot" / f"{Path(root).resolve().name}-{digest}"
