"""What a command changes in the calling process, put back when it returns.

For fewshot used from Python (`fewshot.cli.main([...])` in a notebook): a run with `train.threads=1
train.deterministic=true` left every later call, and the caller's own work, on one thread in deterministic
mode, each call re-seeded the caller's random generators, and variables set in os.environ stayed.
The caller's stdout and stderr are put back too, after `escaped_output` let them write any text.
"""

from __future__ import annotations

import codecs
import os
import random
import sys
import threading
from contextlib import contextmanager

# Set by a library a command imports, and read again only by that library, which sets it again when it is missing
SET_BY_IMPORTS = ("TORCHINDUCTOR_CACHE_DIR",)


@contextmanager
def kept():
    """Run a command and put the caller's state back when it returns. Commands run one at a time (cli._Turn), so
    each call keeps its own: a call made inside another command gives that command its state back."""
    state = snapshot()
    try:
        yield
    finally:
        restore(state)


def snapshot() -> dict:
    """The caller's thread count, deterministic mode, global random states (torch's only if it is loaded) and
    environment variables."""
    state = {"random": random.getstate(), "environ": dict(os.environ)}
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
    restore_environ(state["environ"])
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


def restore_environ(before: dict) -> None:
    """Remove the variables of SET_BY_IMPORTS that the command's imports added (importing torch._dynamo sets
    TORCHINDUCTOR_CACHE_DIR, which outlived the call and went to every process the caller started afterwards).
    Only those: other variables may be a library's own for the rest of the process (report.plots sets
    MPLCONFIGDIR once, at import), or another thread's of the caller."""
    for key in SET_BY_IMPORTS:
        if key not in before:
            os.environ.pop(key, None)


# error handlers with which a text stream writes any text
NEVER_FAIL = frozenset({"backslashreplace", "replace", "ignore", "namereplace", "xmlcharrefreplace"})
_ESCAPING = threading.Lock()
_escaped: dict[int, list] = {}  # id(stream) -> [stream, its errors before, calls holding it escaped]


@contextmanager
def escaped_output():
    """stdout and stderr write what their encoding lacks escaped (`errors="backslashreplace"`) while a command
    runs: a table's "–" or a path with "é" or "中文" on a Latin-1 or ASCII stream (a Latin-1 locale, Windows
    output redirected to a file) ended the command in a traceback after its work. Put back when the last call
    that escaped a stream returns (calls from threads may overlap here: they take their turn later); a stream
    without `reconfigure` (a notebook's) is left as it is."""
    streams = _escape(sys.stdout, sys.stderr)
    try:
        yield
    finally:
        _unescape(streams)


def _escape(*streams) -> list:
    """The streams now escaping for this call (already escaping for another call: counted once more)."""
    taken = []
    with _ESCAPING:
        for stream in {id(s): s for s in streams}.values():
            held = _escaped.get(id(stream))
            if held is not None and held[0] is stream:
                held[2] += 1
                taken.append(stream)
                continue
            errors = getattr(stream, "errors", None)
            if not _may_fail(stream, errors):
                continue
            try:
                stream.reconfigure(errors="backslashreplace")
            except (AttributeError, ValueError, OSError):  # no reconfigure, closed, or its flush failed
                continue
            _escaped[id(stream)] = [stream, errors, 1]
            taken.append(stream)
    return taken


def _unescape(streams: list) -> None:
    with _ESCAPING:
        for stream in streams:
            held = _escaped[id(stream)]
            held[2] -= 1
            if held[2]:
                continue
            del _escaped[id(stream)]
            try:
                stream.reconfigure(errors=held[1])
            except (ValueError, OSError):  # closed by the command, or stdout's reader went away (`| head`)
                pass


def _may_fail(stream, errors) -> bool:
    """Whether writing some text to the stream can raise UnicodeEncodeError. In UTF-8 mode (the C locale)
    stdout's surrogateescape writes every character, and a name's undecodable bytes as those bytes: kept."""
    if not isinstance(errors, str) or errors in NEVER_FAIL:
        return False
    if errors != "surrogateescape":
        return True
    try:
        return codecs.lookup(stream.encoding).name != "utf-8"
    except (AttributeError, LookupError, TypeError):
        return True
