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


# codec error handlers (codecs.register_error) of an escaped stream: what its encoding lacks as `\\u2013`, a byte of a
# name that is not UTF-8 (os.fsdecode's lone surrogate U+DC80..U+DCFF) as `\\xff` (as errors.undecodable_escaped
# shows it) or, where the stream's own errors was surrogateescape, as that byte, as it was written before
ESCAPE, ESCAPE_KEEPING_BYTES = "fewshot.escape", "fewshot.escape_keeping_bytes"
# error handlers with which a text stream writes any text
NEVER_FAIL = frozenset({"backslashreplace", "replace", "ignore", "namereplace", "xmlcharrefreplace", ESCAPE,
                        ESCAPE_KEEPING_BYTES})
_ESCAPING = threading.Lock()  # guards _escaped; each stream's reconfigure is under its own lock (_Escape.lock)
_escaped: dict[int, _Escape] = {}  # id(stream) -> the calls holding it escaped


def _escape_handler(keep_bytes: bool):
    """The handler of ESCAPE (keep_bytes False) or ESCAPE_KEEPING_BYTES: a run of kept bytes, or of other
    characters the encoding lacks, per call (a handler gives back text or bytes, not both)."""

    def handle(exc: UnicodeError):
        if not isinstance(exc, UnicodeEncodeError):
            raise exc
        text, start = exc.object, exc.start
        kept = "\udc80" <= text[start] <= "\udcff"
        end = start + 1
        while end < exc.end and ("\udc80" <= text[end] <= "\udcff") == kept:
            end += 1
        if not kept:
            return codecs.backslashreplace_errors(UnicodeEncodeError(exc.encoding, text, start, end, exc.reason))
        raw = bytes(ord(c) - 0xdc00 for c in text[start:end])
        return (raw if keep_bytes else "".join(f"\\x{b:02x}" for b in raw)), end

    return handle


codecs.register_error(ESCAPE, _escape_handler(keep_bytes=False))
codecs.register_error(ESCAPE_KEEPING_BYTES, _escape_handler(keep_bytes=True))


class _Escape:
    """One stream escaped for `calls` calls, with its errors before. `lock` is held while its errors change:
    reconfigure flushes, and a flush into a full pipe blocks only the calls that escape this same stream."""

    def __init__(self, stream) -> None:
        self.stream, self.errors, self.calls, self.gone = stream, None, 0, False
        self.lock = threading.Lock()


@contextmanager
def escaped_output():
    """stdout and stderr write what their encoding lacks escaped (ESCAPE) while a command runs: a table's "–" or a
    path with "é" or "中文" on a Latin-1 or ASCII stream (a Latin-1 locale, Windows output redirected to a file)
    ended the command in a traceback after its work. Put back when the last call that escaped a stream returns
    (calls made from threads in one another's time: cli takes the streams inside its turn, as they are then);
    a stream without `reconfigure` (a notebook's) is left as it is."""
    streams = _escape(sys.stdout, sys.stderr)
    try:
        yield
    finally:
        _unescape(streams)


def _escape(*streams) -> list:
    """The streams now escaping for this call (already escaping for another call: counted once more)."""
    taken: list[_Escape] = []
    try:
        for stream in {id(s): s for s in streams}.values():
            held = _hold(stream)
            try:
                if held.calls or _reconfigured(held):
                    held.calls += 1
                    taken.append(held)
            finally:
                _let_go(held)
    except BaseException:  # Ctrl-C halfway: a stream counted for no call stayed escaped for good
        _unescape(taken)
        raise
    return taken


def _reconfigured(held: _Escape) -> bool:
    """Whether the stream now escapes: left alone where it writes any text already or cannot be reconfigured."""
    stream = held.stream
    errors = getattr(stream, "errors", None)
    if not _may_fail(stream, errors):
        return False
    try:
        stream.reconfigure(errors=ESCAPE_KEEPING_BYTES if errors == "surrogateescape" else ESCAPE)
    except Exception:  # noqa: BLE001 - no reconfigure, closed, its flush failed, or a stream of the caller's own
        return False
    held.errors = errors
    return True


def _unescape(taken: list) -> None:
    for held in taken:
        held.lock.acquire()  # still in _escaped: this call counts in held.calls
        try:
            held.calls -= 1
            if not held.calls:
                held.stream.reconfigure(errors=held.errors)
        except Exception:  # noqa: BLE001 - closed by the command, or stdout's reader went away (`| head`)
            pass
        finally:
            _let_go(held)


def _hold(stream) -> _Escape:
    """The stream's record, its lock taken (one given up meanwhile by its last call is not used: looked up again)."""
    while True:
        with _ESCAPING:
            held = _escaped.get(id(stream))
            if held is None:
                held = _escaped[id(stream)] = _Escape(stream)
        held.lock.acquire()
        if not held.gone:
            return held
        held.lock.release()


def _let_go(held: _Escape) -> None:
    """Release the record's lock, dropping the record when no call holds the stream escaped."""
    if not held.calls:
        with _ESCAPING:
            held.gone = True
            del _escaped[id(held.stream)]
    held.lock.release()


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
