"""fewshot: few-shot image classification over several datasets, with MoCo pretraining.

From Python, every command is one call: ``fewshot.cli.main(["train", "--data", root, "--out", run])``
returns the exit status (README, "From Python"). The command line: ``fewshot --help``.
"""

import time as _time

__version__ = "0.1.0"
PROCESS_START = _time.monotonic()  # `fewshot run --budget-minutes` counts from here: imports are part of the budget


def _omp_wait_policy() -> None:
    """How idle OpenMP threads wait, set before torch loads libgomp (it reads the environment once).

    torch's default (GNU OpenMP spins after every parallel region) is fastest on a machine that
    runs nothing else: a MoCo step ran 13 % slower with passive waiting on 2 idle cores. On a small
    machine shared with other work, a spinning thread holds a core its partner thread needs and
    every op's barrier stalls (3-6x slower steps were seen on 2 loaded cores); there
    ``FEWSHOT_OMP_WAIT=passive`` lets waiting threads sleep. Default ``spin`` (torch's behaviour).
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
