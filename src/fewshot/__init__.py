"""fewshot: few-shot image classification over several datasets, with MoCo pretraining."""

__version__ = "0.1.0"


def _omp_wait_policy() -> None:
    """How idle OpenMP threads wait, set before torch loads libgomp (it reads the environment once).

    torch's default (GNU OpenMP spinning ~300k iterations after every parallel region) is right on
    an idle machine, but on a small machine shared with other work a spinning thread holds a core
    that its partner thread needs, and every op's barrier stalls: a MoCo step on 2 loaded cores ran
    3-6x slower with 2 threads than with 1 (docs/performance.md). ``PASSIVE`` lets waiting threads
    sleep. FEWSHOT_OMP_WAIT: ``auto`` (default: passive when the 1-minute load average at start
    exceeds a quarter of the cores, i.e. other work is running), ``passive``, or ``spin`` (torch's
    default). An OMP_WAIT_POLICY or GOMP_SPINCOUNT set by the user always wins; nothing changes
    when torch is already imported.
    """
    import os
    import sys

    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    mode = os.environ.get("FEWSHOT_OMP_WAIT", "auto").strip().lower()
    if mode == "auto":
        try:
            busy = os.getloadavg()[0] > 0.25 * (os.cpu_count() or 1)
        except OSError:  # no load average on this platform
            busy = False
        mode = "passive" if busy else "spin"
    if mode == "passive":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ["FEWSHOT_OMP_WAIT_APPLIED"] = "passive"


_omp_wait_policy()
