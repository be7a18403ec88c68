"""A clean stop on SIGTERM / SIGINT: finish the step, write last.pt, exit.

Clusters announce the end of a job (time limit, preemption) with SIGTERM and kill the process some
seconds later (SLURM's KillWait: 30 s by default); Ctrl-C sends SIGINT. Without a handler either one
loses every step since the last checkpoint. With it, the training loop sees the request after its
current step, writes last.pt there and raises ``StopRequested``, so `--resume` continues from that
step exactly. A second signal interrupts at once (the user really means it).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading


class StopRequested(KeyboardInterrupt):
    """Training stopped on a signal after its checkpoint was written (a KeyboardInterrupt, so code
    that cleans up on Ctrl-C does the same here)."""

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class StopFlag:
    """Set by the first SIGTERM/SIGINT while installed; ``signum`` says which."""

    def __init__(self):
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals(announce: bool = True):
    """Within the block the first SIGTERM or SIGINT only sets the yielded flag; the previous handlers
    come back afterwards. Outside the main thread (signals cannot be caught there) nothing changes."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    signums = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in signums}

    def handler(signum, frame):
        if flag:
            raise KeyboardInterrupt  # the second signal: stop now, without a checkpoint
        flag.signum = signum
        if announce:
            print(f"\n{signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
                  f"(send it again to stop at once)", file=sys.stderr, flush=True)

    for s in signums:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
