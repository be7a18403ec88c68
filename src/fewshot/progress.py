"""Progress bars that degrade to occasional plain lines when output is not a terminal (CI, files)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

_ENABLED = True


def set_enabled(flag: bool) -> None:
    global _ENABLED
    _ENABLED = flag


def track(iterable=None, desc: str = "", total: int | None = None, leave: bool = False, **kw):
    tty = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, leave=leave if tty else True, disable=not _ENABLED,
                dynamic_ncols=True, mininterval=0.2 if tty else 15.0, ascii=not tty, file=sys.stderr, **kw)
