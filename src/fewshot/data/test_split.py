"""Scan a test split (ROOT/<dataset>/test/<id>.<ext>): each test image's id, SPEC's integer ids (0007.png is image
7, written "7" in pred_all.json) or any other file name's stem, in natural order; duplicate ids, sub-folders of
images and files named like ids that are no images are problems, odd names a warning. Called by
layout.scan_root; test_id also keys the answer keys and the predictions."""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path

from fewshot.data.image_files import (IMAGE_EXTS, NOT_UTF8, OTHER_IMAGE_EXTS, _is_candidate_name, _is_dir_entry,
                                      _is_file_entry, _listdir, has_images, is_image)
from fewshot.data.names import some_of
from fewshot.data.roots import _says_notes
from fewshot.errors import BIDI_CONTROLS, is_utf8_name, printable, quoted
from fewshot.process_state import said_once


def test_id(name: str) -> str:
    """The id of a test image (file stem) or of an answer-key entry: an integer written without leading zeros
    (SPEC's <int_id>: 0007 and 7 are image 7), any other name as written (Unicode NFC, as keys are typed)."""
    if name.isascii() and name.isdigit():
        return name.lstrip("0") or "0"  # not int(): Python refuses to convert more than 4300 digits
    return unicodedata.normalize("NFC", name)


def _natural(image_id: str) -> tuple:
    """17 before 100, then other names alphabetically."""
    return (0, int(image_id), image_id) if image_id.isascii() and image_id.isdigit() else (1, 0, image_id)


_TOLD_IGNORED: set[tuple[str, ...]] = said_once(__name__, "_TOLD_IGNORED")  # each warning about ignored test files once


def _scan_test(test_dir: Path, problems: list[str], links: list[str] | None = None,
               empty_ok: bool = False) -> list[tuple[str, Path]]:
    """(test id, path) of each test image, in natural order of the ids; the links among them added to ``links``.
    ``empty_ok``: a test/ without images is no problem (train's check: the test images may come later)."""
    seen: dict[str, Path] = {}
    ignored: list[str] = []
    odd: list[str] = []  # names a grader's <int_id> may not match: predicted (or passed over) but said
    numbered: list[Path] = []  # files named like a test id that are no image by their extension
    for entry in _listdir(test_dir, problems, links) or []:
        if entry.name.startswith("."):
            if not entry.name.startswith("._") and _is_candidate_name(entry.name) and _is_file_entry(entry):
                odd.append(f"{quoted(entry.name)} (hidden: passed over, nothing is predicted for it)")
            continue  # ._13.png: macOS metadata, not an image
        path = test_dir / entry.name
        if _is_dir_entry(entry):  # predicting part of the test set silently would be worse than stopping
            if has_images(path):
                problems.append(f"{path}: a sub-folder of test/ with images, which are not read; test images must "
                                f"sit directly in {test_dir}/ (move them up, or out of the dataset)")
            continue
        if not is_image(path):
            stem = path.name.split(".")[0]
            if stem.isascii() and stem.isdigit():  # 17.heic, 0.json: an id, judged once every image is seen
                numbered.append(path)
            else:  # Thumbs.db, readme.txt: ignored, as in class folders, but said
                ignored.append(path.name)
            continue
        if not is_utf8_name(path.stem):  # no answer key or JSON reader could name it
            problems.append(f"{path}: the file name is {NOT_UTF8}")
            continue
        image_id = test_id(path.stem)
        if any(unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS for c in image_id):
            # "30\n0": a grader's <int_id> never matches it, and it hides in a listing
            odd.append(f"{entry.name!r} (id {image_id!r}: a control character in the id)")
        elif image_id != image_id.strip():
            odd.append(f"{entry.name!r} (id {image_id!r}: spaces around the id)")
        elif _is_candidate_name(path.stem):
            odd.append(f"{entry.name!r} (id {image_id!r}: a second image extension)")
        if image_id in seen:
            problems.append(f"{path}: duplicate test id {image_id} (also {seen[image_id].name})")
            continue
        seen[image_id] = path
    ignored += _numbered_non_images(numbered, seen, problems)
    if not seen and not any(p.startswith(f"{test_dir}/") for p in problems):
        if not empty_ok:
            problems.append(f"{test_dir}: no test images" + (f" (only files that are not images by their extension: "
                                                              f"{some_of(sorted(ignored), 5)})" if ignored else ""))
    elif ignored and (str(test_dir), *ignored) not in _TOLD_IGNORED and _says_notes():
        _TOLD_IGNORED.add((str(test_dir), *ignored))
        names = some_of(sorted(ignored), 10)
        print(printable(f"warning: {test_dir}: ignoring {len(ignored)} file(s) that are not images by their "
                        f"extension, so nothing is predicted for them: {names} (test images are <id>.<ext>, ext one "
                        f"of {', '.join(sorted(IMAGE_EXTS))})"), file=sys.stderr, flush=True)
    _warn_odd_test_names(test_dir, odd)
    return sorted(seen.items(), key=lambda item: _natural(item[0]))


# a download not finished: 17.jpg.part may be the test image 17.jpg is an older copy of
PARTIAL_EXTS = frozenset({".part", ".partial", ".crdownload", ".download", ".tmp", ".temp"})


def _numbered_non_images(numbered: list[Path], seen: dict[str, Path], problems: list[str]) -> list[str]:
    """The names to ignore among files named like a test id that are no image (17.heic, 0.json): a side file of an
    id that has its image (0.json beside 0.png, a per-image annotation) is ignored, as readme.txt is. Refused: an id
    without an image (skipping its file would leave a test image out of pred_all.json unsaid), and an image-like
    file beside an image of its id (17.heic beside 17.png: which one is the test image is unclear)."""
    ignored = []
    for path in numbered:
        image = seen.get(test_id(path.name.split(".")[0]))
        if image is not None and not _image_like(path):
            ignored.append(path.name)
            continue
        also = f"; {image.name} has the same id" if image is not None else ""
        problems.append(f"{path}: a test id in a file that is not an image by its extension (test images are "
                        f"<id>.<ext>, ext one of {', '.join(sorted(IMAGE_EXTS))}){also}; convert or remove it")
    return ignored


def _image_like(path: Path) -> bool:
    """A file that may hold a test image fewshot does not read: another image format (17.heic), an unfinished
    download (17.jpg.part), no extension at all (0017)."""
    ext = path.suffix.lower()
    return not ext or ext in OTHER_IMAGE_EXTS or ext in PARTIAL_EXTS


def _warn_odd_test_names(test_dir: Path, odd: list[str]) -> None:
    """Test file names that are likely typos of <int_id>.<ext> (SPEC): their ids are predicted as written (other
    datasets may name test images freely), so a grader keyed on the intended id would count them as misses.
    Said once per folder (rank 0), as the files that are not images."""
    if not odd or (str(test_dir), "odd", *odd) in _TOLD_IGNORED or not _says_notes():
        return
    _TOLD_IGNORED.add((str(test_dir), "odd", *odd))
    names = ", ".join(odd[:10]) + (f" and {len(odd) - 10} more" if len(odd) > 10 else "")
    print(printable(f"warning: {test_dir}: {len(odd)} test file name(s) that may not be what was meant: {names}; "
                    f"test images are <id>.<ext> (e.g. 17.png), and a prediction is keyed by the name without its "
                    f"last extension: rename them if the ids should be other ones"), file=sys.stderr, flush=True)
