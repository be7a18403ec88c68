"""Scan a labelled split (ROOT/<dataset>/{train,val}/<class>/<image>): each class folder's images, and every
problem of its folders collected (empty or image-less class folders, images outside a class folder, broken links,
sub-folders, hidden folders of images, names that are not text). Called by layout.scan_root, which ties the splits
of each dataset together."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from fewshot.data.image_files import (IMAGE_EXTS, NOT_UTF8, _is_dir_entry, _is_file_entry, _listdir, is_image,
                                      is_unread_file, unread_files_note)
from fewshot.data.names import some_of
from fewshot.data.warn_once import warn_once
from fewshot.errors import is_utf8_name


def _is_candidate(entry: os.DirEntry) -> bool:
    """An image-named regular file, or an image-named broken symlink (dangling or a loop): the latter
    is kept so that decoding reports it (or --skip-bad-images skips it) instead of dropping it silently."""
    return (os.path.splitext(entry.name)[1].lower() in IMAGE_EXTS and not entry.name.startswith(".") and
            (_is_file_entry(entry) or (entry.is_symlink() and not os.path.exists(entry.path))))


def _scan_labelled(split_dir: Path, problems: list[str], gaps: list[str] | None = None,
                   warnings: list[str] | None = None, links: list[str] | None = None) -> dict[str, list[Path]]:
    """class name -> sorted image paths; records empty / image-less class folders and broken class-folder links (in
    ``gaps`` when given: a val class without images is a warning, not a layout error). Sub-folders beside a class's
    images are not read: said in ``warnings`` (a held-out set with nested folders lost a third of its images without a
    word). Symbolic links met (class folders, images) are added to ``links``."""
    gaps = problems if gaps is None else gaps
    classes: dict[str, list[Path]] = {}
    listing = _listdir(split_dir, problems, links)
    if listing is None:
        return classes
    loose: list[Path] = []
    unread: list[str] = []  # files of kept class folders that are not images by their extension (said once)
    for found in listing:
        if found.name.startswith("."):
            _note_hidden_class(split_dir / found.name, found)
            continue
        entry = split_dir / found.name
        if not _is_dir_entry(found):
            if is_image(entry):
                loose.append(entry)
            elif _is_broken_link(entry) and not _has_file_suffix(found.name):
                gaps.append(_broken_class_link(entry))
            elif _is_broken_link(entry):  # a class named U.S.A or e.coli would vanish without it
                warn_once([f"{entry}: a broken symbolic link named like a file, passed over; if it is a class "
                           f"folder, point it at the class's images"])
            continue
        listed = _listdir(entry, problems, links)
        if listed is None:
            continue
        files = [e for e in listed if not e.name.startswith(".")]
        if not files:
            gaps.append(f"{entry}: empty class folder")
            continue
        images = [entry / e.name for e in files if _is_candidate(e)]
        if not images:
            subfolders = [e.name for e in files if _is_dir_entry(e)]
            if subfolders:
                problems.append(f"{entry}: no image directly in this class folder, only in sub-folders "
                                f"({some_of(subfolders, 3)}), which are "
                                f"not read; a class's images must sit in its folder ({split_dir}/<class>/<image>)")
            else:
                gaps.append(f"{entry}: class folder without images (allowed extensions: "
                            f"{', '.join(sorted(IMAGE_EXTS))})")
            continue
        unread += [f"{found.name}/{e.name}" for e in files if is_unread_file(e)]
        nested = [e.name for e in files if _is_dir_entry(e)]
        if nested and warnings is not None:
            warnings.append(f"{entry}: sub-folder(s) {some_of(nested, 3)} "
                            f"not read: only the images directly in a class folder are used; move them up to use them")
        name = unicodedata.normalize("NFC", entry.name)  # macOS writes decomposed names: "café" is one class
        if not is_utf8_name(name):  # plots, TensorBoard and JSON need text: the run crashed after its first epoch
            problems.append(f"{entry}: the class folder's name is {NOT_UTF8}")
            continue
        if name in classes:
            problems.append(f"{entry}: two class folders named '{name}' that differ only in their Unicode form "
                            f"(composed / decomposed accents); merge them")
            continue
        classes[name] = images
    if unread and warnings is not None:
        warnings.append(unread_files_note(str(split_dir), "in its class folders", unread))
    if loose:
        problems.append(_loose_images(split_dir, loose))
    elif not classes and not any(p.startswith(f"{split_dir}/") for p in problems):
        # val's class folders without images are warnings (gaps), printed only by a scan that raises nothing: with
        # every one of them empty the error said "no class folders", and the folders it had passed over went unsaid
        empty = [g for g in gaps if g.startswith(f"{split_dir}/")]
        if empty:
            gaps[:] = [g for g in gaps if not g.startswith(f"{split_dir}/")]
            problems += empty
        else:
            problems.append(f"{split_dir}: no class folders")
    return classes


def _is_broken_link(path: Path) -> bool:
    """A symlink whose target is missing, or that loops (Path.exists is False for both)."""
    return path.is_symlink() and not path.exists()


def _has_file_suffix(name: str) -> bool:
    """Whether the name ends like a file's (README.md, labels.csv, notes.txt): a broken link so named, beside the
    class folders, is ignored as such files are, where a layout error stopped the command. A suffix of digits only
    (v1.0) or with a space (St. Bernard) is taken for part of a class's name."""
    suffix = Path(name).suffix[1:]
    return 0 < len(suffix) <= 5 and suffix.isascii() and suffix.isalnum() and not suffix.isdigit()


def _broken_class_link(entry: Path) -> str:
    """The problem of a broken link where class folders are read: `ln -s /nonexistent ROOT/ds/train/7` dropped
    class 7 without a word (exit 0), where a broken image link is reported when decoding. In val/ a warning, as a
    val class without images is."""
    try:
        target = os.readlink(entry)
    except OSError:
        target = "?"
    return (f"{entry}: a broken symbolic link (to {target}: missing, or a link loop) where class folders are read; "
            f"point it at the class's folder of images, or remove it")


LOOSE = "image(s) directly in the split folder"


def _loose_images(split_dir: Path, loose: list[Path]) -> str:
    """One problem for every image directly in a labelled split: a folder of 300 such images (labels kept in a
    CSV file) was 300 near-identical lines, 50 shown."""
    what = f"{loose[0]}: 1 {LOOSE}" if len(loose) == 1 else f"{split_dir}: {len(loose)} {LOOSE} (e.g. {loose[0].name})"
    return (f"{what}; fewshot reads a labelled image's class from its class folder ({split_dir}/<class>/<image>), "
            f"not from a file: move each image into the folder of its class")


# dot-folders tools keep inside folders of images (Jupyter, thumbnailers, version control, macOS resource forks
# whose files carry the images' names, QNAP thumbnails, caches, trash): passed over in silence
TOOL_DOT_FOLDERS = frozenset({".ipynb_checkpoints", ".thumbnails", ".git", ".svn", ".hg", ".Trashes", ".Trash",
                              ".AppleDouble", ".@__thumb", ".cache"})
TOOL_DOT_PREFIXES = (".Trash-",)  # a removable drive's per-user trash: .Trash-1000


def _note_hidden_class(entry: Path, found) -> None:
    """A dot-folder holding images in train/ or val/ is passed over (SPEC: hidden entries are not read), but
    `...` or `.hidden_class` may be a class of the user's: 10 class folders trained as 9 without a word."""
    if found.name in TOOL_DOT_FOLDERS or found.name.startswith(TOOL_DOT_PREFIXES) or not _is_dir_entry(found):
        return
    try:
        with os.scandir(entry) as it:
            holds = any(not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS for e in it)
    except OSError:
        return
    if holds:
        warn_once([f"{entry}: a hidden folder (its name starts with a dot) holding images, passed over: not a "
                   f"class; rename it without the leading dot to train on it as one"])
