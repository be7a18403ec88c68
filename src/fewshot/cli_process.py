"""The process a command runs in, as main() finds it: stderr missing (`2>&-`, pythonw) or closed, the command's
own lines moved off stdout where its --out is stdout, and the turn that runs the main() calls of one process
(threads of a notebook) one at a time.

Apart from cli.py (the commands and their exit codes) because these guard the process's streams and state around
any command, whatever it does.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading


_NO_STDERR = threading.Lock()
_NO_STDERR_CALLS = [0, None]  # calls inside _stderr_present, the null stream they share


@contextlib.contextmanager
def _stderr_present():
    """sys.stderr a null stream while a command runs where Python has none (`2>&-`, pythonw: None): the commands'
    notes, warnings and tracebacks crashed on None.write, or (print's file=None) went into stdout, which may be
    the predictions (--out /dev/stdout). Put back to None when the last such call returns."""
    with _NO_STDERR:
        if sys.stderr is not None and not _NO_STDERR_CALLS[0]:
            owned = False
        else:
            owned = True
            if not _NO_STDERR_CALLS[0]:
                _NO_STDERR_CALLS[1] = sys.stderr = open(os.devnull, "w", encoding="utf-8")
            _NO_STDERR_CALLS[0] += 1
    try:
        yield
    finally:
        if owned:
            with _NO_STDERR:
                _NO_STDERR_CALLS[0] -= 1
                if not _NO_STDERR_CALLS[0]:
                    if sys.stderr is _NO_STDERR_CALLS[1]:
                        sys.stderr = None
                    _NO_STDERR_CALLS[1].close()
                    _NO_STDERR_CALLS[1] = None


def _plug_closed_stderr() -> None:
    """A closed descriptor 2 (`2>&-`) is the next file opened: a checkpoint or JSON file would then receive what
    torch, a DataLoader worker or the interpreter writes to stderr. /dev/null holds that place instead."""
    try:
        os.fstat(2)
        return
    except OSError:
        pass
    try:
        _devnull_onto(2)
    except OSError:
        pass


def _devnull_onto(fd: int) -> None:
    """Point descriptor ``fd`` at /dev/null, closing the descriptor opened for it (it leaked once a call) unless
    the open itself took ``fd``, as it does when ``fd`` was closed and the lowest free."""
    null = os.open(os.devnull, os.O_WRONLY)
    if null != fd:
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)


# their --out is one result file, which a pipe may take (`--out >(jq .)`); probe's is a folder, never stdout
_FILE_OUT_COMMANDS = ("eval", "predict", "export")


@contextlib.contextmanager
def _messages_off_the_output(args):
    """The command's own lines (checkpoint used, table, "wrote ...") on stderr while its --out is this process's
    stdout (/dev/stdout, /dev/fd/1, a file stdout also goes to): they came around the JSON, which then did not
    parse (`predict ... --out /dev/stdout > p.json`). /dev/null for both drops nothing worth moving."""
    out = getattr(args, "out", None)
    if args.command in _FILE_OUT_COMMANDS and out and _is_stdout(out):
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


def _is_stdout(path) -> bool:
    """Whether ``path`` names the file that descriptor 1 (or sys.stdout's own descriptor) writes to."""
    try:
        target = os.stat(path)
        if os.path.samestat(target, os.stat(os.devnull)):
            return False
    except (OSError, ValueError):  # none there yet: a new file, not stdout
        return False
    fds = {1}
    try:
        fds.add(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # None, a StringIO or a notebook's stream: no descriptor
        pass
    for fd in fds:
        try:
            if os.path.samestat(target, os.fstat(fd)):
                return True
        except OSError:  # closed
            pass
    return False


class _Turn:
    """The process-wide turn of main() calls (threads of a notebook), re-entrant for a call made inside a command
    of the same thread. Commands change process-wide state while they run (warnings filters and
    warnings.showwarning, logger levels, torch's threads and random generator, os.environ) and put it back at
    their end: two at once left the caller's warnings switched off for good and made each other's training
    unreproducible, so a second call waits for the first."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # calls of the holding thread inside one another
        self._holder: tuple[str, str] | None = None  # (thread name, command) of the holder's outermost call

    @contextlib.contextmanager
    def taken(self, command: str):
        """Hold the turn for one call; yields whether a Ctrl-C stopped it while it waited (then not held)."""
        if not self._lock.acquire(blocking=False):
            holder = self._holder  # None only in the instant the holder gives the turn up
            who = f" (thread {holder[0]!r}, `fewshot {holder[1]}`)" if holder else ""
            try:
                print(f"fewshot {command}: another fewshot command is running in this process{who}: this one waits "
                      f"for it to finish (commands of one Python process run one at a time; to run them side by "
                      f"side, start them as separate processes).", file=sys.stderr, flush=True)
                self._lock.acquire()
            except KeyboardInterrupt:
                # the lock is not re-entrant here (this thread did not hold it): owned now means the Ctrl-C came
                # just after acquire() returned, and keeping it would make every later call wait for ever
                if self._lock._is_owned():
                    self._lock.release()
                yield True
                return
        try:
            self._depth += 1
            if self._depth == 1:
                self._holder = (threading.current_thread().name, command)
            yield False
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._holder = None
            self._lock.release()


_TURN = _Turn()
