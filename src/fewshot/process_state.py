"""What a command changes in the calling process, put back when it returns, and what it assumes of it, set for it.

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

from fewshot.errors import undecodable_escaped

# Set by a library a command imports, and read again only by that library, which sets it again when it is missing
SET_BY_IMPORTS = ("TORCHINDUCTOR_CACHE_DIR",)


# the calls running, innermost last: what a command keeps for its whole length across its stages (this_call)
_CALLS: list[dict] = []


# the modules' sets of what was said once, as (module, attribute): looked up when cleared, so that a set a test put
# in the module's place is the one cleared
_SAID_ONCE: list[tuple[str, str]] = []


@contextmanager
def kept():
    """Run a command and put the caller's state back when it returns. Commands run one at a time (cli_process._Turn), so
    each call keeps its own: a call made inside another command gives that command its state back."""
    state = snapshot()
    if not _CALLS:  # a call made inside another command is part of it: what that command said stays said
        _forget_said()
    _CALLS.append({"threads": state["torch"][0] if "torch" in state else None})
    try:
        with _torch_as_assumed():
            yield
    finally:
        _CALLS.pop()
        restore(state)


def said_once(module: str, name: str) -> set:
    """A new set of the warnings module `module` has given, its attribute `name`: emptied when a command starts
    (kept), so that each call from a notebook says what the same command says from the shell, while the stages of one
    command (`fewshot run` loads its data again in each) still say each once. Used directly, the library says each
    once per process."""
    _SAID_ONCE.append((module, name))
    return set()


def _forget_said() -> None:
    for module, name in _SAID_ONCE:
        told = getattr(sys.modules.get(module), name, None)
        if told is not None:
            told.clear()


@contextmanager
def _torch_as_assumed():
    """float32 as torch's default dtype (process-wide: torch keeps one) and, on the calling thread (the one that
    trains), grad mode on and inference mode off while the command runs, with the caller's back afterwards: a
    notebook's float64 default built double weights that the float32 images failed in, and its no_grad or
    inference_mode failed training's backward pass. Torch not loaded yet: the command's import gives torch's own
    defaults, and the caller had none to give back."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    dtype = torch.get_default_dtype()
    with torch.inference_mode(False), torch.enable_grad():
        try:
            torch.set_default_dtype(torch.float32)
            yield
        finally:
            torch.set_default_dtype(dtype)


def this_call() -> dict | None:
    """The running command's own record (the innermost call; None outside one: the library used directly), for
    what its stages share, such as the thread tuner's notes said once per command."""
    return _CALLS[-1] if _CALLS else None


def call_threads() -> int | None:
    """The caller's torch thread count when the running command began (None: torch not loaded then, or no call):
    the count the command's stages go back to, not the one torch had when fewshot was imported."""
    call = this_call()
    return None if call is None else call["threads"]


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
# shows it) or, where the stream's own errors was surrogateescape and its encoding writes a byte per character, as
# that byte, as it was written before
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
        if keep_bytes:
            return bytes(ord(c) - 0xdc00 for c in text[start:end]), end
        return undecodable_escaped(text[start:end]), end

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
            _take(stream, taken)
    except BaseException:  # Ctrl-C halfway: a stream counted for no call stayed escaped for good
        _unescape(taken)
        raise
    return taken


def _take(stream, taken: list) -> None:
    """Count this call on the stream's record, escaping the stream when it is the first. The record's lock is taken
    by `with` (taken by a bare acquire, an interrupt before the `try` kept it for good, and every later call on the
    stream waited for ever); a record given up by its last call is not used: looked up again, or replaced where it
    is still in _escaped (an interrupt before its removal)."""
    while True:
        with _ESCAPING:
            held = _escaped.get(id(stream))
            if held is None or held.gone:
                held = _escaped[id(stream)] = _Escape(stream)
        with held.lock:
            if held.gone:
                continue
            try:
                if held.calls or _reconfigured(held):
                    taken.append(held)  # first: counted but not in taken, an interrupt left it escaped for good
                    held.calls += 1
            finally:
                _drop_if_unheld(held)
            return


def _reconfigured(held: _Escape) -> bool:
    """Whether the stream now escapes: left alone where it writes any text already or cannot be reconfigured."""
    stream = held.stream
    errors = getattr(stream, "errors", None)
    if not _may_fail(stream, errors):
        return False
    keep_bytes = errors == "surrogateescape" and _byte_per_character(stream)
    try:
        stream.reconfigure(errors=ESCAPE_KEEPING_BYTES if keep_bytes else ESCAPE)
    except Exception:  # noqa: BLE001 - no reconfigure, closed, its flush failed, or a stream of the caller's own
        return False
    held.errors = errors
    return True


def _byte_per_character(stream) -> bool:
    """Whether the stream's encoding writes "a" as one byte: a raw byte of a name is text there, as
    surrogateescape wrote it, but one byte on a UTF-16 or UTF-32 stream is half a character and failed."""
    try:
        encoder = codecs.getincrementalencoder(stream.encoding)()
        encoder.encode("a")  # after a byte order mark (utf-16, utf-8-sig)
        return len(encoder.encode("a")) == 1
    except Exception:  # noqa: BLE001 - no encoding, an unknown one, or one that cannot write "a"
        return False


def _unescape(taken: list) -> None:
    """Give up this call's count on each stream, putting back those no other call holds. Every stream is done even
    when one is interrupted (Ctrl-C in a flush into a full pipe, or waiting for its lock): the streams after it kept
    this call's count and stayed escaped for good. The first interruption is raised once all are done."""
    first = None
    for held in taken:
        try:
            _unescape_one(held)
        except BaseException as caught:  # noqa: BLE001 - raised below, after the other streams
            first = first or caught
    if first is not None:
        raise first


def _unescape_one(held: _Escape) -> None:
    with held.lock:  # still in _escaped: this call counts in held.calls
        try:
            held.calls -= 1
            if held.calls <= 0:  # below 0 where an interrupt fell between _take's append and its count
                held.stream.reconfigure(errors=held.errors)
        except Exception:  # noqa: BLE001 - closed by the command, or stdout's reader went away (`| head`)
            pass
        finally:
            _drop_if_unheld(held)


def _drop_if_unheld(held: _Escape) -> None:
    """Drop the record when no call holds the stream escaped (its lock held): marked gone, then removed, whatever
    happens in between (a gone record left in _escaped is replaced by _take; one removed but not gone was used)."""
    if held.calls > 0:
        return
    with _ESCAPING:
        try:
            held.gone = True
        finally:
            if _escaped.get(id(held.stream)) is held:
                del _escaped[id(held.stream)]


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
