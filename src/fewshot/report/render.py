"""A table (cells.Table) drawn as HTML for the report page or as terminal text (rich where installed), with names
from folders and run files drawn as plain text, never as markup."""

from __future__ import annotations

import html

from fewshot.errors import printable
from fewshot.report.cells import Table


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
    """Print with rich when installed (wide enough that no number is ever cut), else as plain text."""
    import sys

    file = file or sys.stdout
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table as RichTable
    except ImportError:
        for t in tables:
            print(printable(to_text(t)) + "\n", file=file)
        return
    from rich.cells import cell_len

    console = Console(file=file, highlight=False)
    # widths in terminal cells (a CJK character takes two), as rich measures them
    needed = max((max(cell_len(printable(t.title)),
                      sum(max(cell_len(printable(str(c))) for c in [col, *(r[i] for r in t.rows)])
                          for i, col in enumerate(t.columns)) + 5 * len(t.columns)) for t in tables), default=80)
    # Never let rich crop a number: the console is at least as wide as the widest table. Rich keeps a width only
    # given with a height: a dumb terminal (TERM=dumb) is otherwise 80 columns whatever width= says.
    console = Console(file=file, highlight=False, width=max(needed, console.width), height=console.height,
                      color_system=console.color_system if console.is_terminal else None)
    console.on_broken_pipe = _raise_broken_pipe  # rich exits 1 itself; the CLI reports a cut-off reader as 141
    from rich.text import Text

    # names come from folders and run files (anyone's): drawn as plain text, never as rich markup or escape codes
    for t in tables:
        console.print(Text(printable(t.title), style="bold"))  # above the table, not wrapped to its width
        rt = RichTable(box=box.SIMPLE_HEAD)
        for c, num in zip(t.columns, t.numeric):
            rt.add_column(Text(printable(c)), justify="right" if num else "left", no_wrap=True)
        for i, row in enumerate(t.rows):
            rt.add_row(*(Text(printable(str(c))) for c in row), style="bold" if i in t.emphasis else None)
        console.print(rt)
        if t.caption:  # what the numbers are (balanced predictions, best vs exported epoch): the HTML shows it too
            console.print(Text(printable(t.caption), style="dim"))
            console.print()
