"""A table (cells.Table) drawn as HTML for the report page or as terminal text (rich where installed), with names
from folders and run files drawn as plain text, never as markup."""

from __future__ import annotations

import html
from dataclasses import replace

from fewshot.errors import printable
from fewshot.report.cells import Table
from fewshot.report.fit import output_width, split_columns, wrap_words


def to_html(t: Table, with_title: bool = True) -> str:
    e = html.escape
    parts = []
    if with_title and t.title:
        parts.append(f"<h4>{e(t.title)}</h4>")
    parts.append('<div class="tablewrap"><table>')
    parts.append("<thead><tr>" + "".join(
        f'<th class="{"num" if num else "txt"}">{e(c)}</th>' for c, num in zip(t.columns, t.numeric)) + "</tr></thead>")
    parts.append("<tbody>")
    for i, row in enumerate(t.rows):
        cls = ' class="em"' if i in t.emphasis else ""
        parts.append(f"<tr{cls}>" + "".join(
            f'<td class="{"num" if num else "txt"}">{e(v)}</td>' for v, num in zip(row, t.numeric)) + "</tr>")
    parts.append("</tbody></table></div>")
    if t.caption:
        parts.append(f'<p class="caption">{e(t.caption)}</p>')
    return "\n".join(parts)


def to_text(t: Table) -> str:
    """Plain aligned text (the fallback when `rich` is not available)."""
    widths = [max(len(c), *(len(r[i]) for r in t.rows)) if t.rows else len(c) for i, c in enumerate(t.columns)]

    def line(cells):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, t.numeric)).rstrip()

    out = [t.title, line(t.columns), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in t.rows]
    return "\n".join(out + ([t.caption] if t.caption else []))


def _raise_broken_pipe() -> None:
    raise BrokenPipeError


def print_tables(tables: list[Table], file=None) -> None:
    """Print with rich when installed, else as plain text; fitted to the terminal (fit.py), no number ever cut."""
    import sys

    file = file or sys.stdout
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:
        width = output_width(file)
        for t in tables:
            for part in split_columns(t, width, lambda ws: sum(ws) + 2 * (len(ws) - 1), lambda s: len(printable(s))):
                text = printable(to_text(replace(part, caption="")))
                caption = "\n".join(wrap_words(printable(part.caption), width)) if part.caption else ""
                print("\n".join(filter(None, [text, caption])) + "\n", file=file)
        return
    from rich.cells import cell_len

    def cells(s) -> int:  # widths in terminal cells (a CJK character takes two), as rich measures them
        return cell_len(printable(str(s)))

    console = Console(file=file, highlight=False)
    width = output_width(file)
    # rich draws a column w cells wide in w + 3 (padding, divider) and one edge more
    parts = [p for t in tables for p in split_columns(t, width, lambda ws: sum(ws) + 3 * len(ws) + 1, cells)]
    needed = max((max(cells(t.title), sum(max(cells(c) for c in [col, *(r[i] for r in t.rows)])
                                          for i, col in enumerate(t.columns)) + 5 * len(t.columns)) for t in parts),
                 default=80)
    # Never let rich crop a number: the console is at least as wide as the widest part. Rich keeps a width only
    # given with a height: a dumb terminal (TERM=dumb) is otherwise 80 columns whatever width= says.
    console = Console(file=file, highlight=False, width=max(needed, console.width), height=console.height,
                      color_system=console.color_system if console.is_terminal else None)
    console.on_broken_pipe = _raise_broken_pipe  # rich exits 1 itself; the CLI reports a cut-off reader as 141
    from rich.text import Text

    def lines(text: str, style: str, wrap: int | None) -> None:  # wrapped at spaces: rich folds a long path
        for line in wrap_words(printable(text), wrap, cell_len):
            console.print(Text(line, style=style), no_wrap=True, overflow="ignore", crop=False)

    # names come from folders and run files (anyone's): drawn as plain text, never as rich markup or escape codes
    for t in parts:
        lines(t.title, "bold", width)  # above the table, wrapped to the terminal, not to the table
        rt = RichTable(box=box.SIMPLE_HEAD)
        for c, num in zip(t.columns, t.numeric):
            rt.add_column(Text(printable(c)), justify="right" if num else "left", no_wrap=True)
        for i, row in enumerate(t.rows):
            rt.add_row(*(Text(printable(str(c))) for c in row), style="bold" if i in t.emphasis else None)
        console.print(rt)
        if t.caption:  # what the numbers are (balanced predictions, best vs exported epoch): the HTML shows it too
            lines(t.caption, "dim", width or console.width)
            console.print()
