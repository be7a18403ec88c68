"""TensorBoard's copy of log.jsonl (train.tensorboard): the event files, opened so that a resumed run's show what
its log.jsonl holds.

Apart from the loop (engine.py) because the writer's set-up (an optional package, told once a command where it is
missing), the event files' naming and the flattening of a log row are TensorBoard's business, not training's.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
import weakref
from pathlib import Path

from fewshot.errors import one_line
from fewshot.process_state import said_once


# the reasons a missing TensorBoard was already told in this command
_TOLD_TENSORBOARD: set[str] = said_once(__name__, "_TOLD_TENSORBOARD")


def open_writer(run_dir: Path, purge_step: int | None):
    """A SummaryWriter of ``run_dir``/tensorboard, or None where none can be made: said once a command for each
    reason (`fewshot run` builds an Engine per stage). ``purge_step``: a resumed run's epoch, from which the events
    of the session before it are purged (None: a fresh run)."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        if purge_step is not None:
            wait_for_a_later_event_file_second(run_dir / "tensorboard")
        before = set(threading.enumerate())
        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)
        _quiet_threads(set(threading.enumerate()) - before)  # the writer's own flush thread
        return QuietWriter(writer, run_dir / "tensorboard")
    except Exception as exc:  # tensorboard is optional at run time, but a user who has it on is told
        why = ("the tensorboard package is not installed (pip install tensorboard)"
               if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}")
        if why not in _TOLD_TENSORBOARD:  # once a command: `fewshot run` builds an Engine per stage
            _TOLD_TENSORBOARD.add(why)
            print(one_line(f"warning: train.tensorboard is on, but no event files are written to "
                           f"{run_dir / 'tensorboard'}: {why}. log.jsonl and the plots hold the same "
                           f"figures; train.tensorboard=false silences this."), file=sys.stderr, flush=True)
        return None


class QuietWriter:
    """A SummaryWriter whose failures to write (a full disk, a folder gone) end its event files with one warning
    line: TensorBoard is a copy of log.jsonl, and its OSError stopped training, or its flush thread printed a
    traceback beside fewshot's own message for the same full disk."""

    def __init__(self, writer, folder: Path):
        self._writer, self._folder = writer, folder

    def add_scalar(self, tag: str, value, step: int) -> None:
        if self._writer is not None:
            self._quietly(self._writer.add_scalar, tag, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._quietly(self._writer.flush)

    def close(self) -> None:
        """Closes the writer; one that failed already is closed without a word (its file may be unwritable)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            with contextlib.suppress(OSError):
                writer.close()

    def _quietly(self, call, *args) -> None:
        try:
            call(*args)
        except OSError as exc:
            self._stop(exc)

    def _stop(self, exc: OSError) -> None:
        """The events stop here, said once; the writer's file and thread are let go quietly."""
        writer, self._writer = self._writer, None
        print(one_line(f"warning: TensorBoard's event files in {self._folder} stop here: {exc.strerror or exc}. "
                       f"log.jsonl keeps every figure."), file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            writer.close()


_QUIET_THREADS: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()  # the SummaryWriters' flush threads
_HOOK_BEFORE = [threading.excepthook]  # the hook _quiet_thread_hook hands every other thread's exception to


def _quiet_threads(threads: set) -> None:
    """Keeps an OSError of ``threads`` (a SummaryWriter's flush thread) from printing a traceback: the writer
    raises it again at its next write, where QuietWriter turns it into one warning line."""
    _QUIET_THREADS.update(threads)
    if threading.excepthook is not _quiet_thread_hook:
        _HOOK_BEFORE[0] = threading.excepthook
        threading.excepthook = _quiet_thread_hook


def _quiet_thread_hook(args) -> None:
    """threading.excepthook: silent for a SummaryWriter thread's OSError only; the hook before it for the rest."""
    if args.thread in _QUIET_THREADS and issubclass(args.exc_type, OSError):
        return
    _HOOK_BEFORE[0](args)


def rows_to_write_again(run_dir: Path, epoch: int, redo: bool) -> list[dict]:
    """The rows of log.jsonl (already trimmed to the resumed checkpoint) that a resumed run's new event file gets
    again: the last row of ``epoch``, whose events the writer purged, and with ``redo=False`` (nothing is redone)
    the last row of every later epoch too."""
    from fewshot.report.run_files import read_log

    rows = [r for r in read_log(run_dir) if isinstance(r, dict) and isinstance(r.get("epoch"), int)
            and (r["epoch"] == epoch or (not redo and r["epoch"] > epoch))]
    return [[r for r in rows if r["epoch"] == e][-1] for e in sorted({r["epoch"] for r in rows})]


def add_scalars(writer, record: dict) -> None:
    """A log row's finite numbers as scalars at its epoch, flushed at once."""
    step = record.get("epoch", 0)
    for k, v in _flatten(record).items():
        if isinstance(v, (int, float)) and k not in ("epoch",) and v is not None and math.isfinite(v):
            writer.add_scalar(k, v, step)
    writer.flush()


def wait_for_a_later_event_file_second(folder: Path, longest_s: float = 2.0) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the second it was opened
    (then host and pid): a resume opened in the same second as the writer before it could sort first, and that
    older writer's purge (at its resumed epoch) then removed the later steps of this one. Waits into the next
    second, at most ``longest_s`` (a file named by a clock that was ahead is not waited for)."""
    seconds = []
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            parts = p.name.split(".")
            if p.name.startswith("events.out.tfevents.") and len(parts) > 3 and parts[3].isdigit():
                seconds.append(int(parts[3]))
    if seconds:
        wait = max(seconds) + 1 - time.time()
        if 0 < wait <= longest_s:
            time.sleep(wait)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
