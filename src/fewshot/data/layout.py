"""Scan and validate a dataset root before any compute starts.

Layout: ROOT/<dataset>/{train,val}/<class>/<image> and ROOT/<dataset>/test/<id>.<ext>: SPEC's integer ids
(0007.png is image 7, written "7" in pred_all.json), and any other file name, whose stem is then the id.
`unlabeled/`, hidden entries and plain files under ROOT are not datasets. Every problem is
collected and reported at once (DataLayoutError), each naming its path.

Which folders of ROOT are datasets is roots.py's; what is an image file, image_files.py's; names in messages,
names.py's; the guards that keep outputs out of the data, output_guard.py's.
"""

from __future__ import annotations

import os
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from fewshot.data.image_files import (IMAGE_EXTS, _entries, _is_candidate_name, _is_dir_entry, _is_file_entry,
                                      _scandir_quietly, has_images, is_image, is_unread_file, unread_files_note)
from fewshot.data.names import names_list, parse_datasets, some_of
from fewshot.data.roots import _refuse_dataset_twins, _says_notes, list_datasets
from fewshot.errors import (BIDI_CONTROLS, DataLayoutError, UserError, is_utf8_name, one_line, path_argument,
                            printable, quoted)

RESERVED_NAME = "n_parameters"  # a key of pred_all.json beside the datasets' names (SPEC's output format)
# keys that sit beside the datasets' names: pred_all.json's parameter count, and the mean of the per-dataset kNN
# accuracies (log.jsonl, summaries, compare), which overwrote a dataset named `mean`
RESERVED_NAMES = (RESERVED_NAME, "mean")


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset's files. Labels are local class indices (position in the sorted class list)."""

    name: str
    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[Path, int], ...] = ()
    val: tuple[tuple[Path, int], ...] = ()
    test: tuple[tuple[str, Path], ...] = ()  # (test_id of the file's stem, path), ids in natural order
    answer_key: Path | None = field(default=None)


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


def _is_candidate(entry: os.DirEntry) -> bool:
    """An image-named regular file, or an image-named broken symlink (dangling or a loop): the latter
    is kept so that decoding reports it (or --skip-bad-images skips it) instead of dropping it silently."""
    return (os.path.splitext(entry.name)[1].lower() in IMAGE_EXTS and not entry.name.startswith(".") and
            (_is_file_entry(entry) or (entry.is_symlink() and not os.path.exists(entry.path))))


NOT_UTF8 = (f"not valid text in the file-system encoding ({sys.getfilesystemencoding()}); rename it, or run under a "
            f"UTF-8 locale (e.g. LC_ALL=C.UTF-8) if the name is UTF-8")


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


LABEL_FILE_EXTS = frozenset({".csv", ".tsv", ".txt", ".json", ".jsonl"})
ANSWER_KEY = "test_labels.json"  # SPEC: ROOT/<dataset>/test_labels.json, scored by `eval --split test` only


def _label_files(ds_dir: Path) -> list[Path]:
    """Files beside a dataset's images that look like labels (labels.csv, train.csv, val.txt, ...), in the dataset
    folder or its top-level folders; SPEC's answer key aside."""
    found = []
    for folder in (ds_dir, *(p for p in _entries(ds_dir) if p.is_dir() and not p.name.startswith("."))):
        found += [p for p in _entries(folder) if p.suffix.lower() in LABEL_FILE_EXTS and p.is_file()
                  and not p.name.lower().startswith((".", "readme", "license", "licence"))
                  and not (folder == ds_dir and p.name == ANSWER_KEY)]
    return found


def _label_file_note(ds_dir: Path) -> str | None:
    """Why a labels file next to a dataset that fails the layout is not used: the walkthrough's CSV-labelled
    dataset (ds/labels.csv with ds/images/, or ds/train/*.png with ds/train.csv) got no word about the file."""
    files = _label_files(ds_dir)
    if not files:
        return None
    shown = ", ".join(str(f) for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return one_line(f"note: {shown}: labels are never read from a file: fewshot takes a labelled image's class from "
                    f"its folder ({ds_dir}/train/<class>/<image>, val/ alike); the one labels file it knows is the "
                    f"test answer key {ds_dir / ANSWER_KEY}, which only `fewshot eval --split test` scores against. "
                    f"Sort the images into class folders.")


def test_id(name: str) -> str:
    """The id of a test image (file stem) or of an answer-key entry: an integer written without leading zeros
    (SPEC's <int_id>: 0007 and 7 are image 7), any other name as written (Unicode NFC, as keys are typed)."""
    if name.isascii() and name.isdigit():
        return name.lstrip("0") or "0"  # not int(): Python refuses to convert more than 4300 digits
    return unicodedata.normalize("NFC", name)


def _natural(image_id: str) -> tuple:
    """17 before 100, then other names alphabetically."""
    return (0, int(image_id), image_id) if image_id.isascii() and image_id.isdigit() else (1, 0, image_id)


_TOLD_IGNORED: set[tuple[str, ...]] = set()  # each warning about ignored test files once per process
_TOLD_GAPS: set[str] = set()  # each warning of warn_once once per process


def _scan_test(test_dir: Path, problems: list[str], links: list[str] | None = None,
               empty_ok: bool = False) -> list[tuple[str, Path]]:
    """(test id, path) of each test image, in natural order of the ids; the links among them added to ``links``.
    ``empty_ok``: a test/ without images is no problem (train's check: the test images may come later)."""
    seen: dict[str, Path] = {}
    ignored: list[str] = []
    odd: list[str] = []  # names a grader's <int_id> may not match: predicted (or passed over) but said
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
            if stem.isascii() and stem.isdigit():  # 17.heic, 17.jpg.part: a test image's id, unreadable here
                problems.append(f"{path}: a test id in a file that is not an image by its extension (test images "
                                f"are <id>.<ext>, ext one of {', '.join(sorted(IMAGE_EXTS))}); convert or remove it")
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


def _other_case_note(ds_dir: Path, split: str) -> str:
    """Where a missing split folder exists with other capitals (Train/, VAL/): "missing split folder 'train'" over
    a dataset holding Train/ read as if there were no such folder. Split folder names are lower case (SPEC)."""
    found = [e.name for e in _scandir_quietly(os.fspath(ds_dir))
             if e.name != split and e.name.casefold() == split and _is_dir_entry(e)]
    if not found:
        return ""
    return (f"; found {some_of(sorted(found), 3, quoted)} instead: split folder names are lower case, rename it "
            f"(mv {path_argument(ds_dir / sorted(found)[0])} {path_argument(ds_dir / split)})")


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


def scan_root(root: str | Path, datasets: list[str] | str | None = None,
              splits: tuple[str, ...] = ("train", "val"), if_present: tuple[str, ...] = ()) -> list[DatasetInfo]:
    """Scan the chosen datasets (default: all) and check the requested splits; raise all problems at once.

    `splits` names the splits this command needs (train/val for training, test for prediction). `if_present`:
    splits checked only where their folder exists, and an empty one passed over (train and pretrain check test/,
    so that a duplicate id or a test/ sub-folder stops them before any compute, not predict after the training).
    """
    root = Path(root)
    available = list_datasets(root)
    if isinstance(datasets, str):
        given = datasets
        datasets = parse_datasets(datasets, available)
        if not datasets:  # `--datasets ""` trained on every dataset without a word
            raise UserError(f"--datasets {given!r} names no dataset; choose among {names_list(available)} "
                            f"(or leave --datasets out for all of them).")
    folder_of = {name: name for name in available}
    if datasets:
        # a model trained where macOS wrote "café" decomposed finds the composed folder elsewhere, and back
        composed = {unicodedata.normalize("NFC", name): name for name in available}
        for d in datasets:
            if d not in folder_of and unicodedata.normalize("NFC", d) in composed:
                folder_of[d] = composed[unicodedata.normalize("NFC", d)]
        missing = [d for d in datasets if d not in folder_of]
        if missing:
            raise UserError(f"dataset(s) {names_list(missing)} not found under '{root}'. "
                            f"Available: {names_list(available)}.")
        # a repeated name would duplicate its classes; so would one folder named twice in two Unicode forms
        # (NFC and NFD): the folder_of entry is the folder's name as listed, whatever form the file system keeps
        first: dict[str, str] = {}
        for d in datasets:
            first.setdefault(folder_of[d], d)
        names = list(first.values())
    else:
        names = available
    # twins refused where they are used: a root holding a twin pair stopped commands on its other datasets too
    used = {unicodedata.normalize("NFC", n) for n in names}
    _refuse_dataset_twins(root, [n for n in available if unicodedata.normalize("NFC", n) in used])
    unnamed = [n for n in names if not is_utf8_name(n)]
    if unnamed:
        raise UserError(f"{root / unnamed[0]}: the dataset folder's name is {NOT_UTF8}.")
    reserved = [n for n in names if folder_of[n] in RESERVED_NAMES]
    if reserved:
        raise UserError(f"{root / folder_of[reserved[0]]}: a dataset cannot be named 'n_parameters' or 'mean', "
                        f"since the results keep the model's parameter count (pred_all.json) and the mean over the "
                        f"datasets under those keys beside the datasets' names; rename the folder.")

    problems: list[str] = []
    notes: list[str] = []
    layout_warnings: list[str] = []
    infos: list[DatasetInfo] = []
    linked: list[tuple[Path, dict[str, dict[str, list[Path]]], list[tuple[str, Path]]]] = []
    for name in names:
        ds_dir = root / folder_of[name]
        before, unread = len(problems), False  # unread: a labelled split missing (labels kept elsewhere?)
        found: dict[str, dict[str, list[Path]]] = {}
        test: list[tuple[int, Path]] = []
        links: list[str] = []  # symbolic links below the dataset folder: only they make a val/test image a train one
        for split in splits + tuple(s for s in if_present if s not in splits):
            split_dir = ds_dir / split
            optional = split not in splits
            if optional and not split_dir.is_dir():
                continue
            if not split_dir.is_dir():
                why = {"val": " (the labelled images that choose the checkpoint and settings: move some of each "
                              "class's train images to val/<class>/)",
                       "train": " (the labelled images, one folder per class: train/<class>/<image>)",
                       "test": " (the images to predict, without class folders: test/<image>)"}.get(split, "")
                problems.append(f"{split_dir}: missing split folder '{split}'{why}{_other_case_note(ds_dir, split)}")
                unread = unread or split != "test"
                continue
            if split_dir.is_symlink():
                links.append(str(split_dir))
            if split == "test":
                test = _scan_test(split_dir, problems, links, empty_ok=optional)
            else:
                found[split] = _scan_labelled(split_dir, problems, layout_warnings if split == "val" else None,
                                              layout_warnings, links)
        # class indices follow the folder names as written, in _scan_labelled's order, as ImageFolder's
        # sorted(os.scandir names) does: sorting their NFC forms put a decomposed "é" (macOS) after "z", not with "e"
        train_classes = list(found.get("train", {}))
        if "train" in found and "val" in found:
            val_classes = sorted(found["val"])
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            if only_val:
                problems.append(f"{ds_dir / 'val'}: val classes not in train: {some_of(only_val, 10)}")
            if only_train and not val_classes:
                problems.append(f"{ds_dir / 'val'}: no val images (every class needs its labelled images in "
                                f"train/<class>/, and val/<class>/ scores them)")
            elif only_train:  # held-out data may lack val images for a rare class: train it, score the others
                layout_warnings.append(f"{ds_dir / 'val'}: no val images for {len(only_train)} class(es), which are "
                                f"trained but not scored on val: {some_of(only_train, 10)}")
        classes = tuple(train_classes or found.get("val", {}))
        # only train holds every class: val alone may lack one, and its indices then are not the model's
        note = numbered_classes_note(name, classes) if train_classes else None
        if note:
            layout_warnings.append(note)
        index = {c: i for i, c in enumerate(classes)}

        def labelled(split: str) -> tuple[tuple[Path, int], ...]:
            return tuple((p, index[c]) for c in classes for p in found.get(split, {}).get(c, ()))

        unlabelled = unread or any(LOOSE in p for p in problems[before:])
        note = _label_file_note(ds_dir) if unlabelled else None
        if note:
            notes.append(note)
        if links:
            linked.append((ds_dir, found, test))
        key = ds_dir / ANSWER_KEY
        infos.append(DatasetInfo(name=name, root=ds_dir, classes=classes, train=labelled("train"),
                                 val=labelled("val"), test=tuple(test), answer_key=key if key.is_file() else None))
    if problems:
        raise DataLayoutError(problems, notes)
    layout_warnings += [note for args in linked if (note := _held_out_are_train_images(*args))]
    warn_once(layout_warnings)
    return infos


def real_paths(paths) -> list[str]:
    """Each path with its links resolved, one realpath per folder: a file's real path is its folder's real path
    plus its name unless the file itself is a link (one lstat). Resolving every file of a 100k pool cost 30 s."""
    real_dirs: dict[str, str] = {}
    out = []
    for path in paths:
        path = os.fspath(path)
        if os.path.islink(path):
            out.append(os.path.realpath(path))
            continue
        folder, name = os.path.split(path)
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder or ".")
        out.append(os.path.join(real_dirs[folder], name))
    return out


def _held_out_are_train_images(ds_dir: Path, found: dict[str, dict[str, list[Path]]],
                               test: list[tuple[str, Path]]) -> str | None:
    """A warning when val or test images are train images reached through symbolic links (real_paths, as the pool
    leaves out val/test images so reached): val then scored the model on what it trained on, without a word, and
    picked the checkpoint by it. Copies are not detected. Called only for a dataset whose scan met a link, and a
    scan that raises none: an lstat a file made every scan_root 35 % slower."""
    train = [p for paths in found.get("train", {}).values() for p in paths]
    held = [("val", p) for paths in found.get("val", {}).values() for p in paths] + [("test", p) for _, p in test]
    if not train or not held:
        return None
    train_of = dict(zip(real_paths(train), train))
    hits = [(split, p, train_of[real]) for (split, p), real in zip(held, real_paths(p for _, p in held))
            if real in train_of]
    if not hits:
        return None
    counts = " and ".join(f"{n} {split}" for split in ("val", "test")
                          if (n := sum(s == split for s, _, _ in hits)))
    shown = some_of([f"{p} is {t}" for _, p, t in hits], 3, str)
    return (f"{ds_dir}: {counts} image(s) are train images reached through symbolic links ({shown}), so they "
            f"score the model on images it trains on; give val/ and test/ images of their own")


def numbered_classes_note(dataset: str, classes: tuple[str, ...]) -> str | None:
    """Class folders named 0..10 are indexed in text order ('0', '1', '10', '2', ...), as torchvision's ImageFolder
    does and pred_all.json's graders expect: index 2 is folder '10'. Said, since a user reading the names as the
    indices (or writing an answer key of integers that way) was silently scored wrong."""
    if len(classes) < 2 or not all(c.isascii() and c.isdigit() for c in classes):  # '²'.isdigit(): int() fails
        return None
    by_number = sorted(classes, key=int)
    if by_number == list(classes):
        return None
    moved = next(i for i, (a, b) in enumerate(zip(classes, by_number)) if a != b)
    return (f"{dataset}: the class folders are numbers, and class indices follow their sorted names as text "
            f"({', '.join(repr(c) for c in classes[:min(len(classes), moved + 2)])}, ...: index {moved} is folder "
            f"{classes[moved]!r}, not {by_number[moved]!r}), as torchvision's ImageFolder orders them. pred_all.json "
            f"and integer answer keys use these indices; zero-padded names (00, 01, ..., 10) make both orders agree.")


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


def warn_once(lines: list[str], kind: str = "warning") -> None:
    """Print these warnings once per process (the data is scanned several times a command), on rank 0 only."""
    new = [line for line in lines if line not in _TOLD_GAPS]
    if new and _says_notes():
        _TOLD_GAPS.update(new)
        print("\n".join(f"{kind}: {printable(line)}" for line in new), file=sys.stderr, flush=True)


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
