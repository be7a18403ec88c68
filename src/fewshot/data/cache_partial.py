"""The rows a stopped decode had written, kept beside the cache as KEY.part.u8 so that the next load of the same
files decodes only the rest: a Ctrl-C at 34% of a 50,000-image pool threw every decoded image away, and the restart
decoded them all again (hunt hBV #3).

One file, renamed into place whole (temp + rename): the rows, then a JSON trailer, its length and PART_MAGIC. The
trailer stamps each kept row with its file's stat line (the one cache_key hashes), so a row is reused only while
its file is as it was; a file cut short (no magic at its end) or of another shape is ignored and decoded again.
Its name hashes the settings and the list of paths, never their stats: a changed file costs its own row only.
Never an entry (cache_files.ENTRY_NAME tells them apart); pruned as one (the least recently used first).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import struct
from pathlib import Path

import numpy as np

from fewshot.data.cache_words import _note_part_ignored
from fewshot.process_state import said_once
from fewshot.utils import loads_run_json

PART_SUFFIX = ".part.u8"
PART_MAGIC = b"fewshot-part-v1\n"  # the file's last bytes: a file without them was cut short (or is no such file)
_LENGTH = struct.Struct("<Q")  # the trailer's length, just before PART_MAGIC
_KEPT: set = said_once(__name__, "_KEPT")  # what this command kept: (desc, rows kept, rows in all), for its stop line


def part_file(folder: Path, settings: str, paths: list) -> Path:
    """Where the rows of a stopped decode of ``paths`` at ``settings`` (cache_key's settings part) are kept."""
    h = hashlib.sha1(settings.encode("utf-8", "surrogateescape"), usedforsecurity=False)
    for p in paths:
        h.update(os.fsencode(os.path.abspath(p)) + b"\n")
    return Path(folder) / f"{h.hexdigest()[:20]}{PART_SUFFIX}"


def stamp(stat_row: str) -> str:
    """A file's stamp: a digest of its stat line (path, size, mtime, inode, ctime), as cache_key takes it."""
    return hashlib.sha1(stat_row.encode("utf-8", "surrogateescape"), usedforsecurity=False).hexdigest()[:16]


class KeptRows:
    """The rows a load has written so far (copied or decoded), with the largest value and folders of the 16-bit ones
    among them: marked just after each row is written, so that a stop at any moment keeps only whole rows."""

    def __init__(self, paths: list):
        self.paths, self.rows, self.peak, self.folders = paths, np.zeros(len(paths), dtype=bool), -1, set()

    def mark(self, i: int, peak: int | None = None) -> None:
        if peak is not None:
            self.peak = max(self.peak, peak)
            self.folders.add(os.path.dirname(os.path.abspath(self.paths[i])))
        self.rows[i] = True

    def add_sixteen(self, record: dict | None) -> None:
        """An entry's 16-bit record whose rows were copied here (merged as cache._merged_sixteen merges)."""
        if record is not None:
            self.peak = max(self.peak, int(record["peak"]))
            self.folders.add(record["folder"])

    def sixteen(self) -> dict | None:
        return {"peak": self.peak, "folder": os.path.commonpath(sorted(self.folders))} if self.folders else None


def keep_rows(held, tmp: Path, part: Path, out, kept: KeptRows, stat_rows: list[str], size: int,
              digests: list | None, desc: str) -> bool:
    """Make the temporary file ``tmp`` (open as ``held``, its rows mapped or in ``out``) the kept part ``part``,
    where a row was written: its trailer added, synced, then renamed. False where nothing was kept."""
    done = int(kept.rows.sum())
    if not done:
        return False
    n = len(kept.rows)
    stamps = [stamp(line) if d else None for line, d in zip(stat_rows, kept.rows.tolist())]
    meta = {"n": n, "size": size, "stamps": stamps, "bits16": kept.sixteen()}
    if digests is not None:
        meta["digests"] = [g if d else None for g, d in zip(digests, kept.rows.tolist())]
    trailer = json.dumps(meta).encode()
    nbytes = n * 3 * size * size
    if isinstance(out, np.memmap):
        out.flush()
    else:  # decoded into memory (a folder that cannot be mapped for writing): written in one go
        held.seek(0)
        out.tofile(held)
    held.seek(nbytes)
    held.write(trailer + _LENGTH.pack(len(trailer)) + PART_MAGIC)
    held.flush()
    os.fsync(held.fileno())
    os.replace(tmp, part)
    _KEPT.add((desc, done, n))
    return True


def read_part(part: Path, n: int, size: int, stat_rows: list[str], desc: str):
    """The rows ``part`` keeps of these files as they are now, in cache._rows_held's form (its images, {row: row},
    its 16-bit record, its digests, no broken files); None where there is none. A file that cannot be read as one
    (cut short, another shape) is said, deleted and decoded again."""
    try:
        found = _read(part, n, size)
    except OSError:  # none there, or a folder that cannot be read: nothing kept to use
        return None
    except (ValueError, KeyError, TypeError) as exc:
        _note_part_ignored(desc, part, str(exc), n)
        with contextlib.suppress(OSError):
            part.unlink()
        return None
    images, meta = found
    rows = {i: i for i, (was, line) in enumerate(zip(meta["stamps"], stat_rows))
            if was is not None and was == stamp(line)}
    if not rows:
        return None
    with contextlib.suppress(OSError):  # its last use, for prune_cache
        os.utime(part)
    digests = meta.get("digests")
    fits = isinstance(digests, list) and len(digests) == n and all(d is None or isinstance(d, str) for d in digests)
    from fewshot.data.cache import _sixteen  # imported here: the cache imports this module

    return images, rows, _sixteen(meta.get("bits16")), digests if fits else None, []


def _read(part: Path, n: int, size: int) -> tuple[np.ndarray, dict]:
    """``part``'s rows mapped read-only and its trailer, read through one descriptor (a file renamed over it
    meanwhile is not mixed in), never following a pipe or device of that name."""
    nbytes = n * 3 * size * size
    fd = os.open(part, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        tail = _LENGTH.size + len(PART_MAGIC)
        if info.st_size < nbytes + tail:
            raise ValueError(f"cut short ({info.st_size:,} bytes, {nbytes + tail:,} at least)")
        fh.seek(info.st_size - tail)
        end = fh.read(tail)
        if end[_LENGTH.size:] != PART_MAGIC:
            raise ValueError("cut short (its end marker is missing)")
        (length,) = _LENGTH.unpack(end[:_LENGTH.size])
        if nbytes + length + tail != info.st_size:
            raise ValueError("its rows are not of these images' number and size")
        fh.seek(nbytes)
        meta = loads_run_json(fh.read(length).decode())
        stamps = meta.get("stamps") if isinstance(meta, dict) else None
        if not isinstance(stamps, list) or (meta["n"], meta["size"], len(stamps)) != (n, size, n) or \
                not all(s is None or isinstance(s, str) for s in stamps):
            raise ValueError("its record is not of these images")
        return np.memmap(fh, dtype=np.uint8, mode="r", shape=(n, 3, size, size)), meta


def kept_note() -> str:
    """What this command's stopped decodes kept, for its stop line ("" where none)."""
    return "; ".join(f"the {done:,} of {n:,} images decoded while {desc} are kept in the image cache"
                     for desc, done, n in sorted(_KEPT))
