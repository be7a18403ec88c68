"""A clean stop on SIGTERM / SIGINT: finish the step, write last.pt, exit.

Clusters announce the end of a job (time limit, preemption) with SIGTERM and kill the process some
seconds later (SLURM's KillWait: 30 s by default); Ctrl-C sends SIGINT. Without a handler either one
loses every step since the last checkpoint. With it, the training loop sees the request after its
current step, writes last.pt there and raises ``StopRequested``, so `--resume` continues from that
step exactly. A second Ctrl-C (a second or more later) interrupts at once; a repeated SIGTERM, or a
SIGINT within a second of the first, changes nothing (SLURM signals every process of a step and torchrun
forwards its own copy, so each worker may get two).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

BLOCKED_EXIT_S = 2.0  # under torchrun: a SIGTERM the main thread has not acted on by then finds it blocked in a wait
REPEAT_WINDOW_S = 1.0  # a second signal sooner than this is a copy of the first, not a second Ctrl-C
_last_signal = [0.0]  # time.monotonic() of the last SIGTERM/SIGINT that either handler acted on
_sigterm_ran = [0.0]  # time.monotonic() of any handler's last run on SIGTERM here, a copy it ignored too
SAY_BLOCKED_S = 1.0  # how long the watcher leaves on_blocked to say the stop before it exits all the same


def write_stderr(data: bytes) -> None:
    os.write(2, data)


class StopRequested(KeyboardInterrupt):
    """Training stopped on a signal after its checkpoint was written (a KeyboardInterrupt, so code
    that cleans up on Ctrl-C does the same here)."""

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop: the command stops where it is, as on Ctrl-C (a KeyboardInterrupt, so the
    cleanup done on Ctrl-C happens, and the command line says the same)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _ran(signum: int) -> None:
    """A handler ran on SIGTERM, a copy it ignores too: the main thread runs Python (_exit_when_blocked), and the
    copy that woke the watcher needs no exit of its own."""
    if signum == signal.SIGTERM:
        _sigterm_ran[0] = time.monotonic()


def _acted_on_since(seen: float) -> bool:
    """Whether a handler of this module ran on a signal at or after `seen`: a training loop's clean stop
    (stop_on_signals) took the SIGTERM and may still be in its slow part (NCCL's shutdown, report_exit) with this
    module's handler back in place; it was once ended with 143 and a second stop line."""
    return max(_sigterm_ran[0], _last_signal[0]) >= seen


@contextlib.contextmanager
def sigterm_as_interrupt(on_blocked=None):
    """Within the block SIGTERM raises ``Terminated`` where the program is, as Ctrl-C raises KeyboardInterrupt: a
    command killed outside its training loop (start-up, metrics and plots after the last epoch, predict, data) died
    with no word and half a cleanup. Training loops install ``stop_on_signals`` over it (finish the step, write
    last.pt), `fewshot run` ``stop_at_once_on_signals``. Left alone where the caller handles SIGTERM itself, and
    outside the main thread. Under torchrun (WORLD_SIZE > 1) a rank blocked in a collective or the rendezvous runs
    a Python handler only when the call returns, and torchrun's SIGTERM must end it at once (it waited 30 s for
    its SIGKILL): ``_exit_when_blocked`` calls ``on_blocked`` (which says the stop) and exits 143 there. Ranks
    were once left to die by the signal itself, without a word (exit -15)."""
    world = (os.environ.get("WORLD_SIZE") or "").strip()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        _sigterm_ran[0] = time.monotonic()  # the main thread runs Python: not blocked (_exit_when_blocked)
        # a copy of a signal already acted on (SLURM signals every process and torchrun forwards its own) must not
        # raise again and cut the first one's cleanup short
        if time.monotonic() - _last_signal[0] < REPEAT_WINDOW_S:
            return
        _last_signal[0] = time.monotonic()
        raise Terminated(signum)

    several = world.isdigit() and int(world) > 1
    signal.signal(signal.SIGTERM, handler)
    try:
        with _exit_when_blocked(handler, on_blocked) if several else contextlib.nullcontext():
            yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _exit_when_blocked(handler, on_blocked):
    """A watcher thread that learns of SIGTERM from the interpreter's wakeup fd (written by the C-level handler at
    once, even while the main thread waits in C with the GIL released) and, where ``handler`` is still SIGTERM's
    (not a training loop's clean stop) and no handler has run on a signal BLOCKED_EXIT_S later (_acted_on_since),
    calls ``on_blocked`` and exits 143. Copies that arrive meanwhile (torchrun forwards its own) belong to the same
    stop: read and dropped, not judged again once their handler's run is long past. ``on_blocked`` gets
    SAY_BLOCKED_S: a stderr that blocks it must not keep the rank alive. Left out where something else (an event
    loop) holds the wakeup fd."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:
        previous = None
    if previous != -1:  # another owner, or none could be set: put theirs back, no watcher
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        yield
        return

    done = threading.Event()

    def watch():
        with open(read_fd, "rb", buffering=0) as wakeups:  # closed here, never while this thread may read it
            for got in iter(lambda: wakeups.read(64), b""):  # b"": the block ended, the write end is closed
                if signal.SIGTERM not in got:
                    continue
                seen = time.monotonic() - 0.25  # the handler may have run just before this thread woke
                time.sleep(BLOCKED_EXIT_S)
                if not done.is_set() and signal.getsignal(signal.SIGTERM) is handler and not _acted_on_since(seen):
                    break  # neither a training loop's clean stop (stop_on_signals), nor the block's end
                _drop_pending(wakeups.fileno())
            else:
                return
            if on_blocked is not None:
                sayer = threading.Thread(target=_quietly, args=(on_blocked,), name="fewshot-sigterm-say", daemon=True)
                sayer.start()
                sayer.join(SAY_BLOCKED_S)
            os._exit(128 + signal.SIGTERM)

    watcher = threading.Thread(target=watch, name="fewshot-sigterm-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(-1)
        os.close(write_fd)


def _drop_pending(fd: int) -> None:
    """Reads what the wakeup fd holds now without waiting: the copies of a stop already acted on."""
    os.set_blocking(fd, False)
    try:
        while os.read(fd, 64):
            pass
    except (BlockingIOError, InterruptedError):
        pass
    finally:
        os.set_blocking(fd, True)


def _quietly(call) -> None:
    with contextlib.suppress(Exception):
        call()


class StopFlag:
    """Set by the first SIGTERM/SIGINT while installed; ``signum`` says which."""

    def __init__(self):
        self.signum: int | None = None
        self.at = 0.0  # time.monotonic() of the first signal
        self.unsaid = False  # its stop line held back until the ranks agree to stop (stop_on_signals' defer_sigterm)

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_at_once_on_signals():
    """Within the block SIGTERM and SIGINT raise ``StopRequested`` (no checkpoint) where the program is: for
    the work between training loops (`fewshot run`'s calibration, pseudo-labelling, prediction), whose
    results are on disk atomically or are redone on --resume. A training loop inside the block installs
    ``stop_on_signals`` over it, which gives these handlers back when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in signums}

    def handler(signum, frame):
        _ran(signum)
        # a copy of a signal already acted on (SLURM and torchrun deliver two; the training loop's stop may be
        # unwinding through its cleanup right now) must not raise again and cut that cleanup short
        if time.monotonic() - _last_signal[0] < REPEAT_WINDOW_S:
            return
        _last_signal[0] = time.monotonic()
        raise StopRequested(signum, None)

    for s in signums:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def stop_line(signum: int) -> bytes:
    """What a clean stop says when it is asked for: the step ends, then last.pt is written."""
    again = "Ctrl-C again" if signum == signal.SIGINT else "SIGINT or SIGKILL"
    return (f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint ({again} to stop "
            f"at once)\n").encode()


def say_stop(flag: StopFlag) -> None:
    """The stop line a flag held back (``unsaid``), said now that the checkpoint follows."""
    if flag.unsaid and flag.signum is not None:
        flag.unsaid = False
        with contextlib.suppress(OSError):
            write_stderr(stop_line(flag.signum))


@contextlib.contextmanager
def stop_on_signals(announce: bool = True, defer_sigterm: bool = False):
    """Within the block the first SIGTERM or SIGINT only sets the yielded flag; the previous handlers
    come back afterwards. Outside the main thread (signals cannot be caught there) nothing changes.
    ``defer_sigterm`` (under torchrun): SIGTERM's line is held back (flag.unsaid) for say_stop once the ranks agree
    to stop, as torchrun sends it to the others when a process dies, and no checkpoint follows then."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    signums = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in signums}

    def handler(signum, frame):
        _ran(signum)
        if flag:
            # Ctrl-C again: the user means now, without a checkpoint. But a copy of the same signal within a
            # moment is the same request: SLURM signals every process of a step and torchrun forwards its own
            # SIGTERM/SIGINT to each worker, so a worker under torchrun gets a terminal's Ctrl-C twice.
            if signum == signal.SIGINT and time.monotonic() - flag.at > REPEAT_WINDOW_S:
                raise KeyboardInterrupt
            return
        flag.signum, flag.at = signum, time.monotonic()
        _last_signal[0] = flag.at
        if announce and defer_sigterm and signum == signal.SIGTERM:
            flag.unsaid = True
        elif announce:  # os.write, not print: a handler that interrupts a print to stderr may not print again
            try:
                write_stderr(stop_line(signum))
            except OSError:  # stderr piped to a `tee` that the same Ctrl-C has already ended: stop anyway
                pass

    for s in signums:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
