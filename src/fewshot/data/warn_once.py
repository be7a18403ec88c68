"""The data's warnings (and other modules' alike), each printed once per command, on rank 0 only: the data is
scanned several times a command, and every rank scans it."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from fewshot.data.roots import _says_notes
from fewshot.errors import printable
from fewshot.process_state import said_once

_TOLD_GAPS: set[str] = said_once(__name__, "_TOLD_GAPS")  # each warning of warn_once once per command
_RECORDING: list[list] = []  # the lists recorded() is filling now


def warn_once(lines: list[str], kind: str = "warning") -> None:
    """Print these warnings once per command (the data is scanned several times a command), on rank 0 only."""
    for into in _RECORDING:
        into.append((list(lines), kind))
    new = [line for line in lines if line not in _TOLD_GAPS]
    if new and _says_notes():
        _TOLD_GAPS.update(new)
        print("\n".join(f"{kind}: {printable(line)}" for line in new), file=sys.stderr, flush=True)


@contextmanager
def recorded(into: list):
    """Append each warn_once call's (lines, kind) to ``into`` while it runs, said or not (already said in this
    command, or not rank 0): a memo of the work that gave them (the pool's scan) says them again when a later
    command takes the memo instead of doing the work."""
    _RECORDING.append(into)
    try:
        yield into
    finally:
        _RECORDING[:] = [other for other in _RECORDING if other is not into]  # by identity: equal lists nest
