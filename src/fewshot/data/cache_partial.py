"""The rows a stopped decode had written, kept beside the cache as KEY.part.u8 so that the next load of the same
files decodes only the rest: a Ctrl-C at 34% of a 50,000-image pool threw every decoded image away, and the restart
decoded them all again (hunt hBV #3).

One file, renamed into place whole (temp + rename): the kept rows only, in order, then a JSON trailer (their
indices, stamps, 16-bit peaks and digests), its length and PART_MAGIC. Each kept row is stamped with its file's stat
line (the one cache_key hashes), so a row is reused only while its file is as it was; a file cut short (no magic at
its end) or of another shape is ignored and decoded again.
Its name hashes the settings and the list of paths, never their stats: a changed file costs its own row only.
Never an entry (cache_files.ENTRY_NAME tells them apart); pruned as one (the least recently used first), and
deleted by a load that finds no room on the disk for its new entry beside it where deleting it makes that room
(cache.py), never to keep the cache off. Windows: a mapped file cannot be cut there, so a stop keeps nothing.
Under torchrun, where every process decodes the same files, only the first process of each node keeps its rows.
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

from fewshot.data.cache_words import _note_keeping, _note_part_ignored
from fewshot.process_state import said_once
from fewshot.utils import loads_run_json

PART_SUFFIX = ".part.u8"
PART_MAGIC = b"fewshot-part-v2\n"  # the file's last bytes: a file without them was cut short (or is no such file)
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
    """The rows a load has written so far (decoded, or copied from a kept part), each marked with its own 16-bit
    peak (-1: none) just after it is written, so that a stop at any moment keeps only whole rows with their peaks,
    and a kept part's 16-bit record is taken from the rows still valid when it is read (a file replaced since the
    stop left its peak behind, review rev103; peaks added after a part's rows were copied were lost by a stop in
    between, rev105 #2). Rows copied from another list's entry are not marked: that entry still holds them."""

    def __init__(self, paths: list):
        self.rows = np.zeros(len(paths), dtype=bool)
        self.peaks = np.full(len(paths), -1, dtype=np.int64)

    def mark(self, i: int, peak: int | None = None) -> None:
        if peak is not None:
            self.peaks[i] = max(int(self.peaks[i]), int(peak))
        self.rows[i] = True


def keep_rows(held, tmp: Path, part: Path, out, kept: KeptRows, stat_rows: list[str], size: int,
              digests: list | None, desc: str) -> bool:
    """Make the temporary file ``tmp`` (open as ``held``, its rows mapped or in ``out``) the kept part ``part``,
    where a row was written: the kept rows moved to its start in order (often they are there already: a decode goes
    in order; a failed file or rows copied from another entry leave gaps), the file cut after them, its trailer
    added, synced, then renamed. It holds the kept rows only: a stop wrote and synced the whole entry's size (zeros
    after one kept row), and a part as big as an entry left no room on a nearly full disk for the next load's entry
    (review rev103 #1, #3). False where nothing was kept, or where another process of a torchrun job keeps them
    (_keeps_here)."""
    rows = np.flatnonzero(kept.rows).tolist()
    if not rows or not _keeps_here():
        return False
    row_bytes = 3 * size * size
    _note_keeping(desc, len(rows), len(rows) * row_bytes)  # a large keep moves and syncs GBs: the exit waits on it
    if isinstance(out, np.memmap):
        for j, i in enumerate(rows):  # j <= i: a row is moved down before its place is written over
            if i != j:
                out[j] = out[i]
        out.flush()
    else:  # decoded into memory (a folder that cannot be mapped for writing): only the kept rows are written
        held.seek(0)
        for i in rows:
            held.write(out[i].tobytes())
    meta = {"n": len(kept.rows), "size": size, "rows": rows, "stamps": [stamp(stat_rows[i]) for i in rows],
            "peaks": [int(kept.peaks[i]) if kept.peaks[i] >= 0 else None for i in rows]}
    if digests is not None:
        meta["digests"] = [digests[i] for i in rows]
    trailer = json.dumps(meta).encode()
    held.flush()
    held.truncate(len(rows) * row_bytes)  # the rest's blocks given back (the mapping is not read again)
    held.seek(len(rows) * row_bytes)
    held.write(trailer + _LENGTH.pack(len(trailer)) + PART_MAGIC)
    held.flush()
    os.fsync(held.fileno())
    os.replace(tmp, part)
    _KEPT.add((desc, len(rows), len(kept.rows)))
    return True


def _keeps_here() -> bool:
    """Whether this process keeps its stopped decode's rows: under torchrun only the first process of each node
    (cli_ranks._quiet_rank, which also says the stop line: its kept_note is of its own part), as each process decodes
    the same files into its own file: every one of them moved and synced its rows as it exited, and the last rename
    threw the others' away. One per node: a node's cache folder may be its own."""
    from fewshot.cli_ranks import _quiet_rank

    return not _quiet_rank()


def read_part(part: Path, paths: list, size: int, stat_rows: list[str], desc: str):
    """The rows ``part`` keeps of ``paths`` as they are now, in cache._rows_held's form (its images, {index: row},
    the 16-bit record of the rows still valid, its digests, no broken files) with a 6th item, the valid rows' own
    16-bit peaks {index: peak}; None where there is none. A file that cannot be read as one (cut short, another
    shape) is said, deleted and decoded again."""
    n = len(paths)
    try:
        found = _read(part, n, size)
    except OSError:  # none there, or a folder that cannot be read: nothing kept to use
        return None
    except (ValueError, KeyError, TypeError) as exc:
        _note_part_ignored(desc, part, str(exc))
        with contextlib.suppress(OSError):
            part.unlink()
        return None
    images, meta = found
    rows = {i: j for j, (i, was) in enumerate(zip(meta["rows"], meta["stamps"])) if was == stamp(stat_rows[i])}
    if not rows:
        return None
    with contextlib.suppress(OSError):  # its last use, for prune_cache
        os.utime(part)
    digests = meta.get("digests")
    k = len(meta["rows"])
    fits = isinstance(digests, list) and len(digests) == k and all(d is None or isinstance(d, str) for d in digests)
    peaks = {i: meta["peaks"][j] for i, j in rows.items() if meta["peaks"][j] is not None}
    folders = sorted({os.path.dirname(os.path.abspath(paths[i])) for i in peaks})
    sixteen = {"peak": max(peaks.values()), "folder": os.path.commonpath(folders)} if peaks else None
    return images, rows, sixteen, digests if fits else None, [], peaks


def kept_positions(part: Path, n: int, size: int, stat_rows: list[str]) -> set[int]:
    """The positions of the ``n`` files whose rows ``part`` keeps decoded as they are now (stamps still matching),
    from its record alone, no pixel read: none where none is there or it cannot be read as one (read_part says so
    and deletes it when the load comes). A run's start-up estimate of a cold pool's decode counted the kept rows as
    still to decode; positions, not a count: it leaves out those another entry holds as well (review rev111 #1)."""
    try:
        with _opened(part) as fh:
            meta = _record(fh, n, size)
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {i for i, was in zip(meta["rows"], meta["stamps"]) if was == stamp(stat_rows[i])}


def _read(part: Path, n: int, size: int) -> tuple[np.ndarray, dict]:
    """``part``'s rows mapped read-only and its trailer, read through one descriptor (a file renamed over it
    meanwhile is not mixed in)."""
    with _opened(part) as fh:
        meta = _record(fh, n, size)
        return np.memmap(fh, dtype=np.uint8, mode="r", shape=(len(meta["rows"]), 3, size, size)), meta


def _opened(part: Path):
    """``part`` open for reading, never following a pipe or device of that name."""
    return os.fdopen(os.open(part, os.O_RDONLY | os.O_NONBLOCK), "rb")


def _record(fh, n: int, size: int) -> dict:
    """The trailer of the part open as ``fh``, checked against ``n`` files at ``size``. Its size must be exactly its
    rows, trailer and end: rows of another size are never read as these."""
    info = os.fstat(fh.fileno())
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file")
    tail = _LENGTH.size + len(PART_MAGIC)
    if info.st_size < tail:
        raise ValueError(f"cut short ({info.st_size:,} bytes)")
    fh.seek(info.st_size - tail)
    end = fh.read(tail)
    if end[_LENGTH.size:] != PART_MAGIC:
        raise ValueError("cut short (its end marker is missing)")
    (length,) = _LENGTH.unpack(end[:_LENGTH.size])
    if length > info.st_size - tail:
        raise ValueError("cut short (its record is longer than the file)")
    fh.seek(info.st_size - tail - length)
    meta = loads_run_json(fh.read(length).decode())
    if not isinstance(meta, dict) or (meta.get("n"), meta.get("size")) != (n, size):
        raise ValueError("its record is not of these images")
    rows, stamps, peaks = meta.get("rows"), meta.get("stamps"), meta.get("peaks")
    if not (isinstance(rows, list) and isinstance(stamps, list) and isinstance(peaks, list)
            and len(rows) == len(stamps) == len(peaks) and rows
            and all(isinstance(i, int) and not isinstance(i, bool) for i in rows)
            and all(0 <= i < n for i in rows) and all(a < b for a, b in zip(rows, rows[1:]))
            and all(isinstance(s, str) for s in stamps)
            and all(p is None or (isinstance(p, int) and not isinstance(p, bool)) for p in peaks)):
        raise ValueError("its record is not of these images")
    row_bytes = 3 * size * size
    if len(rows) * row_bytes + length + tail != info.st_size:
        raise ValueError("its rows are not of these images' number and size")
    return meta


def kept_note() -> str:
    """What this command's stopped decodes kept, for its stop line ("" where none): "up to", since another process
    (a second command on the same files, another node's first process on a shared cache folder) may have renamed its
    own part over this one since."""
    return "; ".join(f"up to {done:,} of the {n:,} images decoded while {desc} are kept in the image cache for the "
                     f"next load of the same files" for desc, done, n in sorted(_KEPT))
