"""Every image under the unlabeled pool's folders, listed (recursively, links to folders not followed, a long
scan said): the walk itself. Which folders hold the pool, and which of their images it leaves out, is pool.py's."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fewshot.data.image_files import IMAGE_EXTS, is_unread_file, unread_files_note
from fewshot.data.roots import _says_notes
from fewshot.data.warn_once import warn_once
from fewshot.errors import DataLayoutError, UserError

SCAN_NOTE_S = 2.0  # a pool scan that takes longer says so (a 100k-file pool was a minute of silence)


def find_unlabeled_images(folders: list[str | Path]) -> list[Path]:
    """Every image under the folders, recursively, sorted. Symlinked sub-folders are not followed (a link to /
    or to the data's test split would pull those in): they are named in a note, so that one meant as pool
    can be given as a folder of its own. Works on os.scandir's names (Path objects per file cost most of
    the time on a 100k-file pool); a scan longer than SCAN_NOTE_S says so on stderr."""
    out: list[Path] = []
    unreadable: list[str] = []
    links: list[str] = []
    unread: list[str] = []  # files that are not images by their extension: said in one warning
    start, told = time.monotonic(), False
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"unlabeled folder '{folder}' does not exist or is not a folder.")
        stack = [str(folder)]
        while stack:  # depth first, sorted: the order os.walk gave with sorted dirnames and filenames
            top = stack.pop()
            try:
                with os.scandir(top) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                unreadable.append(f"{exc.filename}: cannot list the folder ({exc.strerror or exc})")
                continue
            subdirs, base = [], Path(top)
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:  # a symlink loop: a file name, kept when it is an image's (decoding names it)
                    is_dir = False
                if is_dir:
                    (links if entry.is_symlink() else subdirs).append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTS:
                    out.append(base / entry.name)  # half the cost of Path(entry.path)
                elif is_unread_file(entry):
                    unread.append(os.path.relpath(entry.path, folder))
            stack.extend(reversed(subdirs))
            if not told and time.monotonic() - start > SCAN_NOTE_S and _says_notes():
                told = True
                print(f"note: scanning the unlabeled pool ({len(out)} images so far) ...", file=sys.stderr,
                      flush=True)
    if told and _says_notes():
        print(f"note: scanned the unlabeled pool: {len(out)} images in {time.monotonic() - start:.0f} s",
              file=sys.stderr, flush=True)
    if unreadable:
        raise DataLayoutError(unreadable)
    if links:
        shown = ", ".join(links[:3]) + (f" and {len(links) - 3} more" if len(links) > 3 else "")
        warn_once([f"not following {len(links)} symlinked folder(s) in the unlabeled pool: {shown} (give a "
                    f"linked folder as a pool folder of its own, e.g. --unlabeled DIR, to use it)"], "note")
    if not out:
        raise UserError(f"no images found under: {', '.join(str(f) for f in folders)}")
    if unread:
        warn_once([unread_files_note(f"the unlabeled pool {', '.join(str(f) for f in folders)}", "in it", unread)])
    return out
