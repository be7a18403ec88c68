"""One writer per run folder.

Two processes training into the same folder (the same command started twice, or `--resume` while the
first is still running) both exited 0 with every epoch logged twice and checkpoints overwriting each
other. The folder's writer holds an exclusive advisory lock (``flock``) on ``RUN/.fewshot.lock`` until it
exits; the lock goes with the process, so a crash or kill -9 never leaves a stale one behind. Where the
file system cannot lock (some network mounts) or the platform has no ``fcntl``, runs go on unguarded.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from fewshot.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LOCK_NAME = ".fewshot.lock"
_HELD: dict[str, int] = {}  # resolved folder -> open descriptor holding its lock (this process)


def lock_run_dir(folder: str | Path) -> None:
    """Take the folder's writer lock for this process (again: a no-op); UserError if another process holds it."""
    folder = Path(folder)
    key = str(folder.resolve())
    if fcntl is None or key in _HELD:
        return
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return  # the folder's own write check reports an unwritable folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise UserError(f"'{folder}' is being written by another fewshot process"
                            f"{f' (pid {holder})' if holder else ''}: two runs in one folder would log every "
                            f"epoch twice and overwrite each other's checkpoints. Wait for it to finish (or stop "
                            f"it), then --resume; or choose another --out.") from None
        return  # ENOLCK, EOPNOTSUPP, ...: this file system cannot lock
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = fd


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def release_all() -> None:
    """Give up every lock this process holds (the CLI's end: a later in-process command may take them again)."""
    for fd in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()
