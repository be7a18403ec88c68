"""Forks of the test process in place of `python -m fewshot` / `python -c` children, where the process start is not
what a test checks: a fork keeps this process's imports (torch, timm), so a child costs milliseconds of CPU where
an interpreter start with torch's import costs seconds. The child gets its descriptors (dup2) and fresh
sys.stdout / sys.stderr on descriptors 1 and 2, as a started interpreter has them, and ends with os._exit."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
CLOSED = "closed"


class Forked:
    """A forked child, answering the part of subprocess.Popen the tests use (returncode -N for a death by signal N)."""

    def __init__(self, pid: int, readers: dict, text: bool):
        self.pid, self.returncode, self._readers, self._text = pid, None, readers, text

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit status; a child still running after ``timeout`` s is killed (a hang fails, never blocks)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                if self.poll() is None:  # the kill's own poll may have reaped a child that ended just now
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(self.pid, 0)
                    self.returncode = -signal.SIGKILL
                raise subprocess.TimeoutExpired(f"fork {self.pid}", timeout)
            time.sleep(0.002)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple:
        """(stdout, stderr) as Popen gives them: the captured text or bytes, None where not captured."""
        self.wait(timeout)
        got = []
        for name in ("out", "err"):
            reader = self._readers.get(name)
            if reader is None:
                got.append(None)
                continue
            reader[0].join(60)
            if reader[0].is_alive():  # a grandchild still holds the pipe: partial output must not pass a test
                raise subprocess.TimeoutExpired(f"fork {self.pid}'s {name} pipe (still open after its exit)", 60)
            data = b"".join(reader[1])
            got.append(data.decode() if self._text else data)
        return got[0], got[1]


def _reader(fd: int) -> tuple:
    """A thread draining ``fd`` (a pipe's read end) so that a child writing much never waits on a full pipe."""
    chunks: list = []

    def drain():
        with open(fd, "rb", buffering=0) as fh:
            while chunk := fh.read(1 << 16):
                chunks.append(chunk)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    return thread, chunks


def _streams() -> None:
    """sys.stdout and sys.stderr on descriptors 1 and 2 as an interpreter starts with them: stdout block-buffered,
    stderr line-buffered, both unbuffered under PYTHONUNBUFFERED (read from the child's environment, as a started
    interpreter reads it); None where the descriptor is closed."""
    encoding = getattr(sys.__stdout__, "encoding", None) or "utf-8"
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for fd, name, errors, lines in ((1, "stdout", "strict", False), (2, "stderr", "backslashreplace", True)):
        try:
            os.fstat(fd)
        except OSError:
            setattr(sys, name, None)
            continue
        raw = io.FileIO(fd, "w", closefd=False)
        binary = raw if unbuffered else io.BufferedWriter(raw)
        setattr(sys, name, io.TextIOWrapper(binary, encoding=encoding, errors=errors, line_buffering=lines,
                                            write_through=unbuffered))


def _one_thread() -> None:
    """One torch thread in the child: GNU OpenMP's thread pool is the parent's and does not survive a fork (a
    parallel region in the child waits forever on threads it does not have). A started `python -m fewshot` with
    the suite's OMP_NUM_THREADS share differs in speed only; the commands set their own count (train.threads)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _signals_as_at_start() -> None:
    """SIGTERM and SIGINT as a started interpreter has them: fewshot installs its SIGTERM stop only where the
    default is in place, and the test process (a pytest-xdist worker) may have set its own."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(-1)


def _warnings_and_logging_as_at_start() -> None:
    """Warnings and log records on the child's stderr, as in a started interpreter: the fork inherits pytest's
    per-test warning capture (catch_warnings(record=True)) and its logging handlers, which kept a warning a user
    would see out of the child's stderr, so a `not in stderr` check passed whatever was said."""
    import logging
    import warnings

    warnings.resetwarnings()  # then the filters a started interpreter has (-W and PYTHONWARNINGS aside)
    for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    warnings.showwarning = getattr(warnings, "_showwarning_orig", warnings.showwarning)

    def on_stderr(message) -> None:  # the interpreter's own writer (catch_warnings(record=True) replaced it)
        with contextlib.suppress(OSError, AttributeError):
            (message.file or sys.stderr).write(warnings._formatwarnmsg(message))

    warnings._showwarnmsg_impl = on_stderr
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


def as_a_started_process() -> None:
    """What a fork of the test process resets to be a started interpreter (streams aside): one torch thread, the
    default signal handlers, warnings and logging on stderr."""
    _one_thread()
    _signals_as_at_start()
    _warnings_and_logging_as_at_start()


def _child(fn, fds: dict, env: dict | None, cwd) -> None:
    """In the fork: descriptors, environment and streams set, ``fn()`` run, its exit status the process's."""
    code = 1
    try:
        for target, source in fds.items():
            if source == CLOSED:
                os.close(target)
            else:
                os.dup2(source, target)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        _streams()
        as_a_started_process()
        try:
            code = fn()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        code = 0 if code is None else code
    except BaseException:  # noqa: B036 - the child must end here, whatever happened
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed or broken stream: nothing more to say
                pass
        os._exit(code)


def _fd(spec):
    return spec.fileno() if hasattr(spec, "fileno") else spec


def start(fn, *, stdin=None, stdout=None, stderr=None, fds: dict | None = None, env: dict | None = None, cwd=None,
          text: bool = False) -> Forked:
    """``fn()`` in a fork of this process. stdin/stdout/stderr: None (this process's), PIPE (captured), STDOUT (for
    stderr), CLOSED, subprocess.DEVNULL, a descriptor or a file; ``fds`` maps further descriptors to open ones."""
    plan, readers, ours = dict(fds or {}), {}, []
    for target, spec, name in ((0, stdin, None), (1, stdout, "out"), (2, stderr, "err")):
        if spec is None:
            continue
        if spec == PIPE:
            read, write = os.pipe()
            readers[name] = read
            ours.append(write)
            plan[target] = write
        elif spec == STDOUT:
            plan[target] = 1
        elif spec == subprocess.DEVNULL:
            null = os.open(os.devnull, os.O_RDWR)
            ours.append(null)
            plan[target] = null
        else:
            plan[target] = spec if spec == CLOSED else _fd(spec)
    plan = {t: (s if s == CLOSED else _fd(s)) for t, s in sorted(plan.items(), key=lambda kv: kv[1] == 1)}
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for read in readers.values():
            os.close(read)
        _child(fn, plan, env, cwd)
    for fd in ours:
        os.close(fd)
    return Forked(pid, {name: _reader(fd) for name, fd in readers.items()}, text)


def run(fn, *, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """start(fn, ...) to its end, as subprocess.run: the exit status and what was captured."""
    child = start(fn, **kwargs)
    out, err = child.communicate(timeout=timeout)
    return subprocess.CompletedProcess([f"fork {child.pid}"], child.returncode, out, err)


def console(*argv) -> int:
    """`python -m fewshot ARGV` in the fork: fewshot.cli.console_main with sys.argv as the interpreter sets it."""
    from fewshot.cli import console_main

    sys.argv = ["fewshot", *map(str, argv)]
    return console_main()


def fewshot(*argv, **kwargs) -> subprocess.CompletedProcess:
    """run(console(ARGV)): `python -m fewshot ARGV` where its start is not the subject."""
    return run(lambda: console(*argv), **kwargs)
