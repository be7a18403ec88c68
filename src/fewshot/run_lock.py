"""One writer per run folder.

Two processes training into the same folder (the same command started twice, or `--resume` while the
first is still running) both exited 0 with every epoch logged twice and checkpoints overwriting each
other. The folder's writer holds an exclusive advisory lock (``flock``) on ``RUN/.fewshot.lock`` until it
exits; the lock goes with the process, so a crash or kill -9 never leaves a stale one behind. Where the
file system cannot lock (some network mounts) or the platform has no ``fcntl``, runs go on unguarded.

Locks belong to one command (`lock_scope`, entered by ``cli.main``), not to the process: two calls of
``main`` in one Python process (threads of a notebook) wrote into one folder together, and the first call
to return freed the other's locks.
"""

from __future__ import annotations

import contextvars
import errno
import itertools
import os
import re
import stat
import tempfile
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable

from fewshot.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

LOCK_NAME = ".fewshot.lock"
_HELD: dict[str, tuple[int, int]] = {}  # resolved folder -> (descriptor holding its lock, owning command)
_MADE: set[str] = set()  # the folders of _HELD whose lock file the holding command created (made_lock_file)
_OWNER = contextvars.ContextVar("fewshot_lock_owner", default=0)  # 0: no command (library code called directly)
_COMMAND = contextvars.ContextVar("fewshot_lock_command", default="")  # the command's name, written beside the pid
_SCOPES = itertools.count(1)
_COMMAND_WORD = re.compile(r"[a-z][a-z-]{0,19}")  # what a lock file may name as its holder's command
# A reader's probe (being_written) holds a shared lock for an instant: a writer starting just then is not refused
LOCK_TRIES, LOCK_RETRY_S = 5, 0.1
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)  # flock's errors for a lock another holds


@contextmanager
def lock_scope(command: str = ""):
    """The locks taken inside belong to this command and are given up when it ends (in-process callers).
    ``command`` (train, probe, ...) is written beside the pid, so that a command refused names the holder."""
    token, named = _OWNER.set(next(_SCOPES)), _COMMAND.set(command if _COMMAND_WORD.fullmatch(command) else "")
    try:
        yield
    finally:
        release_owned(_OWNER.get())
        _OWNER.reset(token)
        _COMMAND.reset(named)


def _owner() -> int:
    """The command holding locks here; outside any command, the thread (library code called directly)."""
    return _OWNER.get() or -threading.get_ident()


def lock_run_dir(folder: str | Path, busy: Callable[[str], str] | None = None) -> bool:
    """Take the folder's writer lock for this command (again: a no-op); UserError if another one holds it.
    Returns whether this command holds it (False where none can be taken: no fcntl, a file system without
    locks, a lock file that cannot be opened), so that callers that undo their own writes know whose they are.
    ``busy``: the refusal for a command that is no run (probe's --out), given who holds the lock.

    Another command of this process is refused like another process: flock locks belong to an open file,
    so a second descriptor of the same process cannot take a lock the first one holds."""
    folder = Path(folder)
    key = str(folder.resolve())
    held, owner = _HELD.get(key), _owner()
    if held is not None and held[1] == owner:
        return True
    if fcntl is None:
        return False
    if held is not None and held[1] == -threading.get_ident():  # taken by library code of this thread outside
        _HELD[key] = (held[0], owner)  # any command (run_finetune called directly, which has returned): this
        return True                    # command adopts it and gives it up at its end; another thread's is refused
    for _ in range(5):
        fd, created = _open_lock_file(folder)
        if fd is None:
            if not folder.is_dir():  # another start into the same --out failed and removed the folder it made
                raise UserError(f"'{folder}' was removed while this command started (another fewshot command "
                                f"that started into the same folder failed and removed what it had made): run "
                                f"the command again.")
            return False  # the folder's own write check reports an unwritable folder
        try:
            _flock_retrying(fd)
        except OSError as exc:
            if exc.errno not in _BUSY and not _opened_for_writing(fd):
                _refuse_read_only(folder, fd, exc, busy)
            holder, command = _read_holder(fd)
            os.close(fd)
            if exc.errno in _BUSY:
                who = _holder_words(holder, command)
                raise UserError(busy(who) if busy else _refusal(folder, who, command)) from None
            _drop_unlockable(folder, created)
            return False  # ENOLCK, EOPNOTSUPP, ...: this file system cannot lock
        if _still_named(fd, folder / LOCK_NAME):
            if _opened_for_writing(fd):  # a lock file this user may not write keeps its last writer's record
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {_COMMAND.get()}".strip().encode() + b"\n")
            _HELD[key] = (fd, owner)
            if created:
                _MADE.add(key)
            return True
        # the holder removed the file while this command waited for it (a failed start undoing itself:
        # unlock_and_remove): a lock on a nameless file guards nothing, so lock the name anew
        os.close(fd)
    return False


def _refuse_read_only(folder: Path, fd: int, exc: OSError, busy: Callable[[str], str] | None) -> None:
    """A read-only lock file that cannot be locked (NFS emulates flock with byte-range locks, and LOCK_EX needs a
    descriptor open for writing: EBADF) is refused, a live holder named first: running on unguarded let a second
    writer in while the file's owner could still lock it. Closes ``fd``."""
    _refuse_if_held(folder, fd, busy)
    raise _unwritable(folder / LOCK_NAME, f"{os.strerror(errno.EACCES)}; locking it read-only failed: "
                                          f"{exc.strerror or exc}") from None


def made_lock_file(folder: str | Path) -> bool:
    """Whether this command holds ``folder``'s lock on a lock file it created itself (probe removes only such a
    file: one that was there when it locked is another command's, a run's that its --resume locks again)."""
    key = str(Path(folder).resolve())
    held = _HELD.get(key)
    return key in _MADE and held is not None and held[1] == _owner()


def _drop_unlockable(folder: Path, created: bool) -> None:
    """Delete the empty lock file this call created where it cannot be locked (a file system without flock):
    it guards nothing, and was left behind in every folder a command only looked into (probe's --out)."""
    if created:
        with suppress(OSError):
            (folder / LOCK_NAME).unlink()


def _still_named(fd: int, path: Path) -> bool:
    """Whether the open lock file is still the file at ``path`` (not unlinked or replaced since it was opened)."""
    try:
        mine, named = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


def _open_lock_file(folder: Path) -> tuple[int | None, bool]:
    """The lock file, opened for writing, never through a link, and whether this call created it: it is truncated
    and written (a planted symbolic link emptied its target). A symbolic link is refused; a file with other hard
    links (a run copied with `cp -al` or `rsync --link-dest`, or a planted link) is unlinked and made anew, which
    leaves the other names as they were. (None, False) where the folder cannot be written."""
    path = folder / LOCK_NAME
    for _ in range(2):
        try:
            fd, created = _open_or_create(path)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):  # EMLINK: FreeBSD's answer for O_NOFOLLOW on a link
                raise _planted_lock(folder, "a symbolic link") from None
            fd, created = _refuse_unopenable(folder, exc), False
            if fd is None:
                return None, False
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            return fd, created
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _planted_lock(folder, "not a file")
        try:
            path.unlink()
        except OSError:
            return None, False
    return None, False


def _refuse_unopenable(folder: Path, exc: OSError) -> int | None:
    """Refuse a lock file that is there but cannot be opened for writing: a folder (EISDIR) or an immutable file
    (EPERM) read as a folder that cannot be written, and two runs then wrote into one folder unguarded. None where
    nothing is there, or where the folder itself cannot be written: its own write check reports that. A file only
    this user may not write (EACCES: another's 0644 lock in a group-writable team folder) is opened read-only and
    returned, to be locked as it is (flock needs no write access; the pid record is left as its last writer wrote
    it): refused, a stopped run there could not be resumed by a group member. A live holder is named first: the
    advice to delete the lock file of a running train let a second writer in."""
    path = folder / LOCK_NAME
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise _planted_lock(folder, "not a file") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        return None
    try:  # O_NONBLOCK: a FIFO swapped in since the lstat does not hang
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        fd = None
    if fd is not None and exc.errno == errno.EACCES:
        return fd
    if fd is not None:
        _refuse_if_held(folder, fd)
    raise _unwritable(path, exc.strerror or str(exc)) from None


def _unwritable(path: Path, why: str) -> UserError:
    """The refusal of a lock file that cannot be opened (or locked) for writing: no run goes on unguarded."""
    return UserError(f"'{path}' cannot be opened for writing ({why}): fewshot locks that file so that two commands "
                     f"never write into one folder together, and will not run unguarded. Make it writable or delete "
                     f"it (fewshot makes a new one; an immutable file: chattr -i), then run the command again.")


def _refuse_if_held(folder: Path, fd: int, busy: Callable[[str], str] | None = None) -> None:
    """Raise the refusal naming the command that holds ``fd``'s lock (a shared probe, as being_written's); closes
    ``fd`` either way. ``busy``: as lock_run_dir's."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _BUSY:
            holder, command = _read_holder(fd)
            who = _holder_words(holder, command)
            raise UserError(busy(who) if busy else _refusal(folder, who, command)) from None
    finally:
        os.close(fd)


def _opened_for_writing(fd: int) -> bool:
    """Whether ``fd`` may be written (not the read-only descriptor of _refuse_unopenable)."""
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY


def _open_or_create(path: Path) -> tuple[int, bool]:
    """``path`` opened read-write (not through a link), made where missing, and whether this call made it:
    O_EXCL first, since a file that was there already is another command's (probe removes only its own)."""
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(3):
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        try:
            return os.open(path, flags), False
        except FileNotFoundError:  # removed in between (a holder's unlock_and_remove): make it again
            continue
    return os.open(path, flags | os.O_CREAT, 0o644), False


def _planted_lock(folder: Path, what: str) -> UserError:
    """The refusal of a lock file that fewshot did not make: writing the pid into it would write elsewhere."""
    return UserError(f"'{folder / LOCK_NAME}' is {what}: fewshot writes its process id into that file, and would "
                     f"write into what it points to (a folder from elsewhere can use this to overwrite another file). "
                     f"Delete {folder / LOCK_NAME} (fewshot makes a new one), then run the command again.")


def _flock_retrying(fd: int) -> None:
    """The exclusive lock, tried a few times over half a second: a report, compare or export probing the folder
    (being_written) holds a shared lock for an instant, and a writer starting then was refused naming a pid
    that had already exited."""
    for attempt in range(LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or attempt == LOCK_TRIES - 1:
                raise
            time.sleep(LOCK_RETRY_S)


def being_written(folder: str | Path) -> bool:
    """Whether a fewshot command (another process, or another command of this one) holds the folder's writer
    lock now: a run still training, not one that stopped. False where that cannot be told (no lock file, a
    platform or file system without flock)."""
    return writer(folder) is not None


def writer(folder: str | Path) -> str | None:
    """Who holds the folder's writer lock now, in a refusal's words ("another fewshot process (`fewshot run`,
    pid 123)"), or None: as being_written, for messages that name the run's writer."""
    if fcntl is None:
        return None
    try:  # read-only, never created; O_NONBLOCK: a FIFO put there does not hang the reader
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return _holder_words(*_read_holder(fd)) if exc.errno in _BUSY else None
    finally:
        os.close(fd)  # gives the probe's shared lock up at once
    return None


def refuse_if_being_written(folder: str | Path, busy: Callable[[str], str] | None = None) -> None:
    """Before a command judges what a folder holds (a run to --resume, a used folder): a run being written there
    is refused as such. A second `fewshot train` without --resume was told to pass --resume, which was then
    refused as the folder being written. ``busy``: as lock_run_dir's."""
    if being_written(folder):
        lock_run_dir(folder, busy)  # raises naming the writer (or takes the lock: the writer has just finished)


def _read_holder(fd: int) -> tuple[str, str]:
    """The holder's pid and command from its lock file ("PID COMMAND"; an older fewshot's holds "PID" only, and
    library code outside a command writes no command): ("", "") where nothing can be read."""
    try:
        words = os.pread(fd, 64, 0).decode(errors="replace").split()
    except OSError:
        return "", ""
    pid = words[0][:32] if words else ""
    command = words[1] if len(words) > 1 and _COMMAND_WORD.fullmatch(words[1]) else ""
    if pid.isdigit() and not _opened_for_writing(fd) and not _alive(int(pid)):
        return "", ""  # a read-only lock keeps its last writer's record: a stale pid (and its command's advice)
    return pid, command


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (another user's too): a holder that locked a file it could not write left
    the last writer's pid in it, and `kill PID` on that advice could stop an unrelated process."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except OSError:  # EPERM: another user's process
        return True
    return pid > 0


def _holder_words(holder: str, command: str) -> str:
    """Who holds the lock, for a refusal: the command by name where its lock file says it."""
    name = f"`fewshot {command}`" if command else ""
    if holder == str(os.getpid()):
        return (f"another fewshot command of this Python process ({f'{name}; ' if name else ''}a thread, or a call "
                f"still running)")
    said = ", ".join(w for w in (name, f"pid {holder}" if holder else "") if w)
    return f"another fewshot process{f' ({said})' if said else ''}"


def _refusal(folder: Path, who: str, command: str) -> str:
    """A run's refusal of a folder another command writes, with advice that fits that command: a probe writes no
    epochs and leaves no run to --resume, only its metrics.json, which a run there would replace."""
    if command == "probe":
        return (f"'{folder}' is being written by {who}, which writes its metrics.json there when it ends: a run in "
                f"that folder and the probe would replace each other's metrics.json. Choose another --out for the "
                f"run: a probe that finishes leaves its metrics.json in that folder, and a run does not start in a "
                f"folder holding other files.")
    return (f"'{folder}' is being written by {who}: two runs in one folder would log every epoch twice and overwrite "
            f"each other's checkpoints. Wait for it to finish (or stop it), then --resume; or choose another --out.")


def unlock_and_remove(folder: str | Path) -> None:
    """Give up this command's lock of ``folder`` and delete its lock file (a failed start removing the folder it
    made): the file goes while still locked, so no other writer can take a lock on the name in between."""
    key = str(Path(folder).resolve())
    held = _HELD.get(key)
    if held is None or held[1] != _owner():
        return
    del _HELD[key]
    _MADE.discard(key)
    try:
        (Path(folder) / LOCK_NAME).unlink(missing_ok=True)
    except OSError:
        pass
    try:
        os.close(held[0])
    except OSError:
        pass


def release_owned(owner: int) -> None:
    """Give up the locks one command took (its end: a later in-process command may take them again)."""
    for key, (fd, held_by) in list(_HELD.items()):
        if held_by == owner:
            del _HELD[key]
            _MADE.discard(key)
            try:
                os.close(fd)
            except OSError:
                pass


def release_all() -> None:
    """Give up every lock this process holds (tests, and library code that called the trainers directly)."""
    for owner in {held_by for _, held_by in _HELD.values()}:
        release_owned(owner)


# ---------------------------------------------------------------- a result written at the end of a long command

IN_PLACE = ("written in place",)  # output_state of a pipe, terminal or descriptor: written through, never replaced


def output_state(path: str | Path, follow_links: bool = False) -> tuple | None:
    """What is at ``path`` now (None: nothing), for write_unless_changed: probe and eval check their --out at the
    start and write it at the end, and a train that finished into that folder meanwhile had its metrics.json
    replaced. ``follow_links``: the write goes to a link's target (a path the user typed)."""
    from fewshot.utils import written_in_place

    if follow_links and written_in_place(path):  # a terminal's times change as the command prints
        return IN_PLACE
    for follow in (True, False) if follow_links else (False,):  # a dangling link: the link itself
        try:
            st = os.stat(path, follow_symlinks=follow)
        except OSError:
            continue
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
    return None


def write_unless_changed(path: str | Path, write: Callable[[Path], None], before: tuple | None,
                         follow_links: bool = False) -> bool:
    """``write(path)`` only if ``path`` still holds what output_state found at the command's check (``before``);
    False, writing nothing, where another command wrote there meanwhile. A path that was free is written under a
    temporary name and put in place by a hard link, which never replaces a file that appeared since."""
    if before is None:
        return _write_new(Path(path), write)
    if before != IN_PLACE and output_state(path, follow_links) != before:
        return False
    write(Path(path))
    return True


def _write_new(path: Path, write: Callable[[Path], None]) -> bool:
    """``write`` onto a temporary name beside ``path``, then os.link to ``path``; False where a file is there.
    A file system without hard links gets a check, then a rename."""
    from fewshot.utils import check_output_file, new_file_mode, temp_prefix

    check_output_file(path, None)  # as atomic_write_bytes: a folder on the way is the user's to fix
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=os.path.realpath(path.parent))
    os.close(fd)
    try:
        os.chmod(tmp, new_file_mode(path))  # the mode the write keeps: mkstemp makes 0600
        write(Path(tmp))
        return _link_no_replace(tmp, path)
    except OSError as exc:  # named by the output, not the temporary file
        raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from exc
    finally:
        with suppress(OSError):
            os.unlink(tmp)


def _link_no_replace(tmp: str, path: Path) -> bool:
    """``tmp`` given the name ``path`` unless one is there already (False): os.replace would replace it."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS):
            raise
    if os.path.lexists(path):  # no hard links here (FAT, some network mounts): checked, then renamed
        return False
    os.replace(tmp, path)
    return True
