"""Progress bars that degrade to occasional plain lines when output is not a terminal (CI, files).

On a terminal `track` is a tqdm bar. Elsewhere (stderr redirected to a file or a pipe) carriage
returns would turn into one unreadable line, so `track` prints whole lines instead:

    supervised epoch 3/50: 40/100 (40%) 12.3 s  loss=0.812 lr=1.00e-04

one when about every 10 % more of the work is done (but at most one every 5 s), one at least
every 15 s while something is running, and a last one when the loop ends. Both objects support
iteration, `update(n)`, `set_postfix(...)`, `set_description(...)` and `close()`.
"""

from __future__ import annotations

import sys
import time

_ENABLED = True

# Plain-line pacing (module attributes so that callers and tests can tune them).
PLAIN_STEP_PCT = 10.0    # a line about every this many percent ...
PLAIN_MIN_GAP_S = 5.0    # ... but not more often than this
PLAIN_HEARTBEAT_S = 15.0  # and at least this often while running


def set_enabled(flag: bool) -> None:
    global _ENABLED
    _ENABLED = flag


def is_enabled() -> bool:
    return _ENABLED


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class PlainProgress:
    """A tqdm look-alike that writes whole lines to a stream (for logs, CI and pipes)."""

    def __init__(self, iterable=None, desc: str = "", total: int | None = None, file=None, disable: bool = False,
                 step_pct: float | None = None, min_gap_s: float | None = None, heartbeat_s: float | None = None,
                 clock=time.monotonic, **_ignored):
        self.iterable = iterable
        self.desc = desc or ""
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.total = total
        self.n = 0
        self.disable = disable
        self.file = file
        self.step_pct = PLAIN_STEP_PCT if step_pct is None else step_pct
        self.min_gap_s = PLAIN_MIN_GAP_S if min_gap_s is None else min_gap_s
        self.heartbeat_s = PLAIN_HEARTBEAT_S if heartbeat_s is None else heartbeat_s
        self._clock = clock
        self.start = clock()
        self._last_print = self.start
        self._next_pct = self.step_pct
        self._postfix = ""
        self._closed = False
        self._printed_n = None

    # ------------------------------------------------------------------ tqdm-like API
    def __iter__(self):
        if self.iterable is None:
            raise TypeError("PlainProgress was created without an iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total if self.total is not None else len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = self._clock()
        since = now - self._last_print
        due = since >= self.heartbeat_s
        if self.total:
            pct = 100.0 * self.n / self.total
            if pct >= self._next_pct and self.n < self.total:
                if since >= self.min_gap_s:
                    due = True
                # Skip milestones already passed, so that a slow start does not queue up lines.
                while self._next_pct <= pct:
                    self._next_pct += self.step_pct
        if due:
            self._emit(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {})
        items.update(kwargs)
        self._postfix = " ".join(f"{k}={_fmt_value(v)}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable and self.n > 0 and self._printed_n != self.n:
            self._emit(self._clock())

    # ------------------------------------------------------------------ output
    def line(self, now: float | None = None) -> str:
        elapsed = (self._clock() if now is None else now) - self.start
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            body = f"{self.n}/{self.total} ({100.0 * self.n / self.total:.0f}%)"
        else:
            body = f"{self.n}"
        text = f"{head}{body} {elapsed:.1f} s"
        if self._postfix:
            text += f"  {self._postfix}"
        return text

    def _emit(self, now: float) -> None:
        stream = self.file if self.file is not None else sys.stderr
        try:
            stream.write(self.line(now) + "\n")
            stream.flush()
        except (AttributeError, OSError, ValueError):  # no stream (stderr closed: None), closed or broken: go on
            pass
        self._last_print = now
        self._printed_n = self.n


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _quiet_rank() -> bool:
    """Under torchrun, a process other than the first of its node (cli_ranks._quiet_rank): every rank decodes its
    images, and each printed the same loading lines."""
    from fewshot.cli_ranks import _quiet_rank

    return _quiet_rank()


def track(iterable=None, desc: str = "", total: int | None = None, leave: bool = False, **kw):
    """A progress bar over `iterable`: tqdm on a terminal, plain log lines otherwise, nothing when disabled or on a
    quiet rank of torchrun (the first process of each node shows it, as it decodes that node's cache)."""
    stream = sys.stderr
    # `2>&-` leaves Python no stderr (None): the work goes on without a bar
    if not _ENABLED or stream is None or _quiet_rank():
        return PlainProgress(iterable, desc=desc, total=total, file=stream, disable=True)
    if not _is_tty(stream):
        return PlainProgress(iterable, desc=desc, total=total, file=stream, **kw)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True, mininterval=0.2, file=stream, **kw)
