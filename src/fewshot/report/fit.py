"""Fitting the terminal tables to the terminal's width: a table wider than it is split by columns into parts that
each repeat the first column (the run or dataset the rows are keyed by), and titles and captions are wrapped at
spaces. `fewshot compare` of 10 runs printed 243-column rows that an 80-column terminal wrapped over 3 lines each;
rich's own narrowing would crop numbers ("3…") or fold them, so the cells are never narrowed."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

from fewshot.report.cells import Table


def target_width(is_terminal: bool, terminal_width: int) -> int | None:
    """The width to fit to: a terminal's own; for a file or a pipe COLUMNS where it is set, else None (no limit:
    each table as wide as its cells, as a file always got)."""
    if is_terminal:
        return terminal_width
    columns = os.environ.get("COLUMNS", "").strip()
    return int(columns) if columns.isdigit() and int(columns) > 0 else None


def output_width(file) -> int | None:
    """target_width of ``file``, as rich sees it where installed (its terminal width, 80 under TERM=dumb)."""
    try:
        from rich.console import Console
    except ImportError:
        import shutil

        return target_width(bool(getattr(file, "isatty", lambda: False)()), shutil.get_terminal_size().columns)
    console = Console(file=file)
    return target_width(console.is_terminal, console.width)


def cell_len(text: str) -> int:
    """The terminal cells ``text`` takes (a CJK character two) as rich counts them; its characters without rich."""
    try:
        from rich.cells import cell_len as cells
    except ImportError:
        return len(text)
    return cells(text)


def wrap_words(text: str, width: int | None, cell_len: Callable[[str], int] = len) -> list[str]:
    """``text`` wrapped at spaces to ``width`` cells (None: one line). A word wider than that (a long path) keeps
    its own line whole: folded, it could not be copied or searched for."""
    if width is None or cell_len(text) <= width:
        return [text]
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            if line and cell_len(line) + 1 + cell_len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return lines


def split_columns(t: Table, width: int | None, drawn_width: Callable[[list[int]], int],
                  cell_len: Callable[[str], int] = len) -> list[Table]:
    """``t`` as it is where it fits ``width`` (or width is None), else in parts of its columns, in order, each led
    by its first column and as many of the next as fit; a column too wide to fit with the first is a part alone,
    wider than ``width`` (no cell is ever cut). ``drawn_width``: the cells a drawing of columns this wide takes.
    The caption goes below the last part."""
    widths = [max(cell_len(str(c)) for c in [col, *(r[i] for r in t.rows)]) for i, col in enumerate(t.columns)]
    if width is None or len(widths) < 3 or drawn_width(widths) <= width:
        return [t]
    groups = _groups(widths, width, drawn_width)
    if len(groups) == 1:
        return [t]
    for cap in range(drawn_width(widths[:1]), width):  # as many parts, as even as they go: no part of one column
        even = _groups(widths, cap, drawn_width)         # left over beside a full one
        if len(even) == len(groups):
            groups = even
            break
    parts = []
    for k, group in enumerate(groups, 1):
        keep = [0, *group]
        parts.append(replace(t, title=f"{t.title} (part {k} of {len(groups)})", columns=[t.columns[i] for i in keep],
                             rows=[[r[i] for i in keep] for r in t.rows], numeric=[t.numeric[i] for i in keep],
                             emphasis=list(t.emphasis), caption=t.caption if k == len(groups) else ""))
    return parts


def _groups(widths: list[int], width: int, drawn_width: Callable[[list[int]], int]) -> list[list[int]]:
    """The columns after the first, in order, in groups that fit ``width`` beside it (a column too wide alone)."""
    groups: list[list[int]] = [[]]
    for i in range(1, len(widths)):
        if groups[-1] and drawn_width([widths[0], *(widths[j] for j in groups[-1]), widths[i]]) > width:
            groups.append([])
        groups[-1].append(i)
    return groups
