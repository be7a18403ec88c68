"""The cells of fewshot's tables: one table model and the formatting of each kind of number, so that `fewshot
report`, `fewshot compare` and the notes show a value the same way ('–' where none was recorded, '?' where a run's
file holds no usable number)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DASH = "–"
UNKNOWN = "?"  # a value a run's file holds that is no usable number
ABSURD = 1e18  # beyond any parameter count, FLOPs, seconds or rate a run records


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    numeric: list[bool] = field(default_factory=list)   # right-align these columns
    emphasis: list[int] = field(default_factory=list)   # row indexes shown in bold (mean, routing)
    caption: str = ""

    def __post_init__(self) -> None:
        if not self.numeric:
            self.numeric = [False] + [True] * (len(self.columns) - 1)


# ---------------------------------------------------------------------- formatting
def number(x) -> float | None:
    """A finite JSON number as a float; None for anything else (a bool, a string, NaN, an int of 400 digits that
    float() cannot hold: metrics.json's "n_parameters": 10**400 stopped `fewshot compare` with an OverflowError)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        value = float(x)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def shown(x, fmt) -> str:
    """``fmt(value)`` of a sensible number; a dash where none was recorded, '?' where the run's files hold
    something that is no usable number (they may come from elsewhere, or be damaged)."""
    if x is None:
        return DASH
    value = number(x)
    if value is None or abs(value) >= ABSURD:
        return UNKNOWN
    return fmt(value)


def pct(x) -> str:
    return shown(x, lambda v: f"{v:.2f}")


def routing(metrics: dict | None):
    """A run's dataset-routing accuracy where it means something: with one dataset every image is routed right by
    construction (100.00 beside two-dataset runs' routing read as a result)."""
    m = metrics or {}
    return m.get("routing_acc") if len(m.get("datasets") or {}) > 1 else None


def count(x) -> str:
    def fmt(v: float) -> str:
        if v < 0:
            return UNKNOWN
        n = x if isinstance(x, int) else int(v)  # an int as written (float(x) rounds one of 17 digits)
        return f"{n:,} ({n / 1e6:.1f} M)" if n >= 1_000_000 else f"{n:,}"
    return shown(x, fmt)


def flops(x) -> str:
    x = number(x)
    if x is None or x <= 0 or x >= ABSURD:
        return DASH
    for unit, scale in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} FLOPs"


def duration(s) -> str:
    return shown(s, _duration)


def _duration(s: float) -> str:
    """Rounded once to the unit shown, then split: rounding the remainder after the split made 179.6 s "2 min 60 s"
    (a budget stop's note) and 59.96 s "60.0 s"."""
    if round(s, 1) < 60:
        return f"{s:.1f} s"
    if round(s) < 3600:
        minutes, seconds = divmod(int(round(s)), 60)
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(int(round(s / 60)), 60)
    return f"{hours} h {minutes:02d} min"


def epochs(x) -> str:
    """Epochs trained: 8, or 5.75 for a run stopped a quarter of an epoch before the end of its sixth."""
    return shown(x, lambda v: str(x) if isinstance(x, int) else f"{v:.2f}".rstrip("0").rstrip("."))


def opt(x) -> str:
    return DASH if x is None else str(x)


def rate(x) -> str:
    return shown(x, lambda v: f"{v:.1f} img/s")
