"""One report at a time per --out folder.

Two `fewshot report --out SAME` at once (a sweep that ends each job with `report runs/* --out runs/report`) each
read the earlier page's PNGs at their start and deleted those they did not draw at their end: the page left behind
showed images the other report had deleted. A report now holds an exclusive advisory lock (``flock``) on the OUT
folder itself for its whole build, and a second report waits for it, saying so: the later report then draws the
newer page over a whole one, where a refusal would fail the sweep's job and leave the older page up. The lock is on
the folder (no file is added to it) and goes with the process, so a killed report leaves nothing stale. Where the
platform has no ``fcntl`` or the file system cannot lock (some network mounts), reports go on unguarded as before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


@contextmanager
def report_out_locked(out: Path, log: Callable[[str], object]) -> Iterator[bool]:
    """Hold OUT's report lock inside the block, after waiting for another report that holds it (``log`` says so
    once). Yields whether the lock is held (False: no lock could be taken, the report goes on unguarded)."""
    fd = _open_folder(out)
    try:
        yield fd is not None and _lock(fd, out, log)
    finally:
        if fd is not None:
            os.close(fd)  # gives the lock up


def _open_folder(out: Path) -> int | None:
    """A read-only descriptor of the folder to lock; None where there is no fcntl or the folder cannot be opened."""
    if fcntl is None:
        return None
    try:
        return os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None


def _lock(fd: int, out: Path, log: Callable[[str], object]) -> bool:
    """Take the exclusive lock, waiting (after one note) while another report holds it; False where this file
    system cannot lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno not in _HELD:
            return False  # ENOLCK, EOPNOTSUPP, EBADF (an NFS lock on a read-only descriptor): unguarded
    log(f"note: another fewshot report is writing {out}; waiting for it to finish, so that neither deletes the "
        f"other's images")
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()  # the note is seen while waiting, also where stdout is a pipe
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # Ctrl-C still stops the wait (PEP 475 retries only after the handlers)
    except OSError:
        return False
    return True
