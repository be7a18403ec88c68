"""Which files of a data folder are images fewshot reads (by extension), the words for the files it leaves unread
(and for a name that is not text), and a folder's entries as the scans see them (links followed, link loops and
unreadable folders forgiven, or an unreadable split folder recorded as a problem). The lowest layer of the data
scans: layout, its split scans, roots and output_guard share it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fewshot.errors import one_line, quoted

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                        ".pgm", ".pbm"})


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def _is_candidate_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS


def has_images(folder: Path) -> bool:
    """Whether the folder holds an image at any depth, hidden files and folders aside (as the pool scan)."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(is_image(Path(f)) for f in filenames):
            return True
    return False


def _entries(folder: Path) -> list[Path]:
    """The folder's entries sorted by name; none when it cannot be read (its problem is named elsewhere)."""
    try:
        return sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return []


def _scandir_quietly(folder: str) -> list[os.DirEntry]:
    """The folder's entries, unsorted; none when it cannot be read (its problem is named elsewhere)."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:
        return []


def _listdir(folder: Path, problems: list[str], links: list[str] | None = None) -> list[os.DirEntry] | None:
    """The folder's entries sorted by name; an unreadable folder is recorded as a problem (None). os.scandir's
    entries know whether they are folders or links without a system call a file; the symbolic links among them are
    added to ``links``, so that the scan knows, for free, whether any val/test image may be a train image."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        problems.append(f"{folder}: cannot list the folder ({exc.strerror or exc})")
        return None
    if links is not None:
        links += [e.path for e in entries if e.is_symlink()]
    return entries


def _is_dir_entry(entry: os.DirEntry) -> bool:
    """DirEntry.is_dir, following links as Path.is_dir does, and False as Path.is_dir is for a link loop (on which
    DirEntry.is_dir raises: it only forgives a missing target)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file_entry(entry: os.DirEntry) -> bool:
    """DirEntry.is_file, False for a link loop as _is_dir_entry."""
    try:
        return entry.is_file()
    except OSError:
        return False


# files that systems and tools write beside images (dot-files such as .DS_Store aside): passed over in silence
SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
UNREAD_EXAMPLES = 3  # the files an unread_files_note names


def is_unread_file(entry: os.DirEntry) -> bool:
    """A file that is not an image by its extension (IMG_001.HEIC, x.avif, a name without one), system files
    aside: class folders and the pool dropped them without a word, where test/ said so."""
    return (not entry.name.startswith(".") and entry.name.lower() not in SYSTEM_FILES
            and os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTS and _is_file_entry(entry))


# image formats fewshot does not decode (phones, cameras, editors, vector art): a file with one of these extensions
# is an image to convert; any other unread file (README.md, labels.csv, notes.txt) is simply not an image
OTHER_IMAGE_EXTS = frozenset({
    ".heic", ".heif", ".hif", ".avif", ".jxl", ".jp2", ".j2k", ".jpf", ".jpx", ".jxr", ".wdp", ".apng", ".qoi",
    ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".dng", ".srw",
    ".pef", ".x3f", ".erf", ".kdc", ".mrw", ".3fr", ".iiq", ".svg", ".svgz", ".eps", ".psd", ".psb", ".xcf", ".kra",
    ".exr", ".ico", ".icns", ".tga", ".dds", ".pcx", ".xbm", ".xpm", ".pict", ".pct"})


def unread_files_note(where: str, inside: str, names: list[str]) -> str:
    """One warning for a split's (or pool folder's) files that are not read: their count and a few names. Only
    images in a format fewshot does not decode (OTHER_IMAGE_EXTS) are told to be converted: a README.md or
    labels.csv told so got advice that made no sense for it."""
    def shown(group: list[str]) -> str:
        more = f" and {len(group) - UNREAD_EXAMPLES} more" if len(group) > UNREAD_EXAMPLES else ""
        return ", ".join(quoted(n) for n in group[:UNREAD_EXAMPLES]) + more

    image = [os.path.splitext(n)[1].lower() in OTHER_IMAGE_EXTS for n in names]
    images = [n for n, i in zip(names, image) if i]
    others = [n for n, i in zip(names, image) if not i]
    parts = []
    if images:
        parts.append(f"{len(images)} image file(s) {inside} are in a format fewshot does not read "
                     f"(e.g. {shown(images)}); convert them to one of {', '.join(sorted(IMAGE_EXTS))} to use them")
    if others:
        parts.append(f"{len(others)} file(s) {inside} are not images by their extension and are left out "
                     f"(e.g. {shown(others)})")
    return one_line(f"{where}: {'; '.join(parts)}")


NOT_UTF8 = (f"not valid text in the file-system encoding ({sys.getfilesystemencoding()}); rename it, or run under a "
            f"UTF-8 locale (e.g. LC_ALL=C.UTF-8) if the name is UTF-8")
