"""fewshot: few-shot image classification over several datasets, with MoCo pretraining.

From Python, every command is one call: ``fewshot.cli.main(["train", "--data", root, "--out", run])``
returns the exit status (README, "From Python"). The command line: ``fewshot --help``.
"""

import os as _os
import time as _time

__version__ = "0.1.0"


def _process_start(now: float, stat: str = "/proc/self/stat", uptime: str = "/proc/uptime") -> float:
    """When this process started, on the time.monotonic() clock (from /proc on Linux): the interpreter's start-up
    (0.5-1.7 s) came before this import and was missing from `fewshot run`'s budget. ``now`` where /proc is missing
    or its answer odd (negative, or over a minute: a long-lived process that imported fewshot late)."""
    try:
        import os

        with open(stat, encoding="ascii", errors="replace") as f:
            started = int(f.read().rpartition(")")[2].split()[19]) / os.sysconf("SC_CLK_TCK")  # after "(comm)"
        with open(uptime, encoding="ascii", errors="replace") as f:
            age = float(f.read().split()[0]) - started
    except Exception:  # noqa: BLE001 - no /proc (macOS, Windows), an odd line: the import's time, as before
        return now
    return now - age if 0.0 <= age <= 60.0 else now


PROCESS_START = _process_start(_time.monotonic())  # `fewshot run --budget-minutes` counts from here
IMPORTED_IN = _os.getpid()  # the process, not a fork of it (cli_ranks.exit_past_teardown)


def _omp_wait_policy() -> None:
    """How idle OpenMP threads wait, set before torch loads libgomp (it reads the environment once).

    torch's default (GNU OpenMP spins after every parallel region) is fastest on a machine that
    runs nothing else: a MoCo step ran 13 % slower with passive waiting on 2 idle cores. On a small
    machine shared with other work, a spinning thread holds a core its partner thread needs and
    every op's barrier stalls (3-6x slower steps were seen on 2 loaded cores); there
    ``FEWSHOT_OMP_WAIT=passive`` lets waiting threads sleep, and train.adapt_threads (on by default in
    budgeted runs) drops a run to 1 thread while that is faster (train/thread_tuner.py). Default ``spin``
    (torch's behaviour).
    An earlier ``auto`` mode chose by the load average at start; it misfired right after fewshot's
    own work (the load average still counts the previous run) and is gone: docs/performance.md.
    An OMP_WAIT_POLICY or GOMP_SPINCOUNT set by the user always wins; nothing changes when torch is
    already imported.
    """
    import os
    import sys

    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if os.environ.get("FEWSHOT_OMP_WAIT", "spin").strip().lower() == "passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ["FEWSHOT_OMP_WAIT_APPLIED"] = "passive"


_omp_wait_policy()
