"""The decode cache's files on disk: a new entry's file reserved and memory-mapped for writing, the least recently
used entries and abandoned temporary files pruned, and a folder checked writable before a command writes to it
(the cache's, a run's, a report's).

Apart from data/cache.py (which decides what an entry holds and when it is reused) because these only handle files
and folders.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import time
from pathlib import Path

import numpy as np

from fewshot.data.roots import broken_link
from fewshot.errors import UserError


def _mapped_file(fh, shape: tuple[int, ...], nbytes: int) -> np.memmap | None:
    """The new, empty file ``fh`` sized for ``shape`` uint8 and memory-mapped for writing. Its blocks are reserved
    first where the system can (posix_fallocate: not on macOS or Windows), so a full disk is an OSError here (ENOSPC)
    rather than a SIGBUS at a write into the mapping. None where the file cannot be mapped for writing (some FUSE
    and network mounts): the caller decodes into memory and writes the file at the end."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fh.fileno(), 0, nbytes)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it: written as it goes
                raise
    fh.truncate(nbytes)  # the size, where nothing was reserved
    try:
        return np.memmap(fh, dtype=np.uint8, mode="r+", shape=shape)
    except (OSError, ValueError) as exc:
        if getattr(exc, "errno", None) == errno.ENOMEM:  # no address space (ulimit -v): nor for an array
            raise
        return None


def _drop(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


KEEP_RECENT_S = 3600  # an entry used this recently may be open in another process: kept
# a temporary file may be a build still decoding (the in-memory fallback writes it only at the end): a day
KEEP_TEMP_S = 24 * 3600
# cache_key's names, and the kept rows of a stopped decode (cache_partial): other files in a shared cache_dir stay
ENTRY_NAME = re.compile(r"[0-9a-f]{20}(\.part)?\.u8")
TEMP_NAME = re.compile(r"[0-9a-f]{20}\.(tmp\d+|[0-9a-z_]+\.tmp)")  # load_images' temporary files (and older ones')
# load_images' temporary file, locked (hold_temp) while it decodes: a name of its own, since older versions' files
# of TEMP_NAME are never locked, and one that no process holds is abandoned (a decode killed by SIGKILL)
HELD_SUFFIX = ".held.tmp"
HELD_TEMP = re.compile(r"[0-9a-f]{20}\.[0-9a-z_]+\.held\.tmp")


def hold_temp(fh) -> None:
    """Lock a new temporary file for as long as ``fh`` is open, before the file has any size: a cleaner deletes
    only a file with bytes in it that it can lock itself (_lock_state). Without flock (no fcntl, a file system
    without locks) nothing is held, and its file is left to the KEEP_TEMP_S rule."""
    with contextlib.suppress(OSError, ImportError):
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _lock_state(path: str) -> str:
    """"free" where the HELD_TEMP file ``path`` has bytes and no process holds its lock (its decoder was killed),
    "held" where one does (a live decoder), else "" (cannot be told). A file without bytes may be one whose decoder
    has not locked it yet: it is not tried, so that its decoder's lock is never met by a cleaner's."""
    try:
        import fcntl
    except ImportError:
        return ""
    try:  # O_NONBLOCK: a FIFO so named does not hang the cleaner
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            return ""
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # given up as the descriptor closes
        named = os.stat(path, follow_symlinks=False)
        return "free" if (named.st_dev, named.st_ino) == (info.st_dev, info.st_ino) else ""  # still the file locked
    except OSError as exc:
        return "held" if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else ""
    finally:
        os.close(fd)


def _temp_bytes(entry: os.DirEntry, now: float) -> int:
    """The bytes a temporary file of load_images still takes, after deleting it where no build can be writing it:
    a HELD_TEMP file whose lock is free (its decoder was killed), or any one not written for KEEP_TEMP_S (a killed
    build of an older version) unless a live decoder holds it."""
    st = entry.stat(follow_symlinks=False)
    state = _lock_state(entry.path) if HELD_TEMP.fullmatch(entry.name) else ""
    if state == "free" or (state != "held" and now - st.st_mtime > KEEP_TEMP_S):
        os.unlink(entry.path)
        return 0
    return st.st_size


def prune_cache(cache_dir: Path, max_gb: float | None, keep: Path) -> None:
    """Delete the least recently used entries until the folder holds at most ``max_gb`` GB: every changed file
    list (one image added to a pool) wrote a new entry of the whole pool and the old one stayed forever. An
    entry's last use is its .u8 file's mtime (touched on every read). ``keep`` (just written) and entries used
    within KEEP_RECENT_S stay, even over the cap. Temporary files no build can be writing are deleted whatever the
    cap (_temp_bytes): a killed build (SIGKILL, out of memory) left its full-size file behind; the others (builds
    still decoding) count toward the cap, as the entries they become."""
    entries, temps, now = [], 0, time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(cache_dir):
            with contextlib.suppress(OSError):
                if ENTRY_NAME.fullmatch(entry.name):
                    st = entry.stat()
                    entries.append((st.st_mtime, st.st_size, Path(entry.path)))
                elif TEMP_NAME.fullmatch(entry.name) or HELD_TEMP.fullmatch(entry.name):
                    temps += _temp_bytes(entry, now)
    if not max_gb:
        return
    total = temps + sum(size for _, size, _ in entries)
    for used, size, data in sorted(entries):  # least recently used first
        if total <= max_gb * 1e9:
            break
        if data == keep or now - used < KEEP_RECENT_S:
            continue
        with contextlib.suppress(OSError):
            data.with_suffix(".json").unlink(missing_ok=True)  # first: a reader without it rebuilds the entry
            data.unlink()
            total -= size


def ensure_writable_dir(path: Path, what: str) -> None:
    """Fail early and clearly when an output folder cannot be written. A dangling symbolic link is followed (its
    target made), as predict and export follow one to write its target: mkdir said only "File exists"."""
    if path.exists() and not path.is_dir():
        raise UserError(f"the {what} folder '{path}' is a file; give --out a folder (new or empty).")
    made = path
    if path.is_symlink() and not path.exists():
        target, loops = broken_link(path)  # told as a --data link is (data.layout)
        if loops:
            raise UserError(f"the {what} folder '{path}' is a symbolic link (to {target}) that goes round a loop of "
                            f"links; remove it or give another --out.")
        try:  # its target (a link gone since, target None, is made below as any folder)
            if target is not None:
                made = Path(path).resolve(strict=False)
                made.mkdir(parents=True, exist_ok=True)
        except (OSError, RuntimeError) as exc:
            raise UserError(f"the {what} folder '{path}' is a dangling symbolic link to {target}, and that folder "
                            f"cannot be made: {getattr(exc, 'strerror', None) or exc}. Remove the link or give "
                            f"another --out.") from None
    try:
        made.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the {what} folder '{path}': {exc.strerror or exc}.") from None
