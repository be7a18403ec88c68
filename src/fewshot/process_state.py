"""What a command changes in the calling process, put back when it returns.

For fewshot used from Python (`fewshot.cli.main([...])` in a notebook): a run with `train.threads=1
train.deterministic=true` left every later call, and the caller's own work, on one thread in deterministic
mode, and each call re-seeded the caller's random generators.
"""

from __future__ import annotations

import random
import sys
import threading
from contextlib import contextmanager

_LOCK = threading.Lock()
_ACTIVE = 0  # commands running in this process (threads of a notebook)
_CALLER: dict | None = None  # the state before the first of them began


@contextmanager
def kept():
    """Run a command; when the last command running in the process returns, put the caller's state back (the
    first to return would otherwise switch off another's deterministic mode and reset its threads mid-run)."""
    global _ACTIVE, _CALLER
    with _LOCK:
        if _ACTIVE == 0:
            _CALLER = snapshot()
        _ACTIVE += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE -= 1
            if _ACTIVE == 0:
                restore(_CALLER)
                _CALLER = None


def snapshot() -> dict:
    """The caller's thread count, deterministic mode and global random states (torch's only if it is loaded)."""
    state = {"random": random.getstate()}
    torch = sys.modules.get("torch")
    if torch is not None:
        state["torch"] = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled(), torch.random.get_rng_state())
        if torch.cuda.is_initialized():  # the command's torch.manual_seed seeds every GPU's generator too
            state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        state["numpy"] = numpy.random.get_state()
    return state


def restore(state: dict) -> None:
    """Put `snapshot`'s state back; torch loaded by the command itself gets its import-time defaults."""
    random.setstate(state["random"])
    if "numpy" in state:
        sys.modules["numpy"].random.set_state(state["numpy"])
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if "torch" in state:
        threads, deterministic, warn_only, rng = state["torch"]
        torch.random.set_rng_state(rng)
        if "cuda" in state:
            torch.cuda.set_rng_state_all(state["cuda"])
    else:
        runtime = sys.modules.get("fewshot.runtime")
        threads = runtime.DEFAULT_THREADS if runtime is not None else torch.get_num_threads()
        deterministic = warn_only = False
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled()) != (deterministic, warn_only):
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
