"""The report's --out folder: which folders a report may write into (never a run it reports on, nor the data, nor
a folder of the user's own files) and which PNGs of an earlier report there it replaces."""

from __future__ import annotations

import html
import os
import re
import stat
from pathlib import Path

from fewshot.data.roots import REPORT_MARK
from fewshot.errors import UserError
from fewshot.report.run_record import Run


def _inside(out: Path, folder: Path) -> bool:
    out, folder = out.resolve(), folder.resolve()
    return out == folder or folder in out.parents


def check_report_out(out: Path, runs: list[Run], data: str | None = None) -> None:
    """Refuse an --out whose PNGs would change what they report on: a run's folder (its checkpoints/, plots),
    or the data (predict read PNGs put in ROOT/<dataset>/test as test images). A run's own report/ (where
    `fewshot run` writes it) stays allowed: nothing of fewshot's reads it."""
    from fewshot.data.output_guard import check_output_is_not_in_data
    from fewshot.report.analysis import resolve_data_root

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give --out a folder: a new one, or an earlier report's folder "
                        f"(its index.html and PNGs are replaced).")
    for r in runs:
        own = (r.group or r.path) / "report"
        for folder in (r.path, r.group):
            if folder is not None and _inside(out, folder) and out.resolve() != own.resolve():
                raise UserError(f"--out {out} lies inside the run folder {folder} that is reported; give the report "
                                f"a folder outside it (or {own}, the run's own report folder).")
        # raises for a --data that is not a folder: here, before --out is made (an empty one was left behind)
        root = resolve_data_root(r, data)[0]
        if root is not None:
            from fewshot.config import is_text_list

            unlabeled = (r.config.get("data") or {}).get("unlabeled")
            check_output_is_not_in_data(out, root, unlabeled if is_text_list(unlabeled) else None, what="the report",
                                        reads_pool=False)  # a report reads val images, never the pool
    owns = {((r.group or r.path) / "report").resolve() for r in runs}
    foreign = [] if out.resolve() in owns else not_a_report(out)
    if foreign:  # after the checks above: `--out RUN` is told it lies in the run, not that it holds other files
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise UserError(f"--out {out} holds files that are not a fewshot report ({shown}): the report writes "
                        f"index.html and its PNGs there and would replace any of the same name. Give a new or empty "
                        f"folder, or an earlier report's folder.")


# REPORT_MARK: written into --out before the first PNG: the folder is a report's, page or not (and no dataset of a
# data root it lies in: roots.RUN_MARKERS)


def not_a_report(out: Path) -> list[str]:
    """The entries of an existing --out that no fewshot report wrote (hidden ones aside): none where the folder is new,
    empty, or holds an earlier report (its index.html is fewshot's: its PNGs are what --out promises to replace).
    A user's own index.html and pictures (a web folder, another run's folder) were replaced without a word. A link
    as the mark or the page is not read through: a report writes neither as a link, and the file it points to says
    nothing of this folder."""
    try:
        names = sorted(n for n in os.listdir(out) if not n.startswith("."))
    except OSError:
        return []
    if not names or _plain_file(out / REPORT_MARK):  # a report stopped before its page was written: its own PNGs
        return []
    return [] if _report_page(out) else names


def _plain_file(path: Path) -> bool:
    """A regular file that is not a symbolic link."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _report_page(out: Path) -> str | None:
    """The text of OUT/index.html where it is a page a fewshot report wrote (a plain file, not a link), else None."""
    if not _plain_file(out / "index.html"):
        return None
    try:
        text = (out / "index.html").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text if "<title>fewshot report</title>" in text else None



def _earlier_report_pngs(out: Path) -> set[str]:
    """The PNG names an earlier report's OUT/index.html shows: what --out promises to replace. Only files of a page
    fewshot wrote, beside it, are taken; anything else in OUT (the user's) is never touched."""
    text = _report_page(out)
    if text is None:
        return set()
    names = {html.unescape(src) for src in re.findall(r'<img src="([^"<>]*)"', text)}
    return {n for n in names if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.png", n) and (out / n).is_file()}
