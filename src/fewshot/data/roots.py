"""Which folders of a data root are datasets (not runs, OS litter or the pool), and the refusals of a --data that is
a dataset or split folder instead of the root above them, or a broken link. Apart from layout.py, which scans the
datasets found here; report's --data check asks the same questions."""

from __future__ import annotations

import difflib
import errno
import os
import stat
import sys
import unicodedata
from pathlib import Path

from fewshot.data.image_files import has_images, is_image
from fewshot.data.names import datasets_option, names_list, some_of
from fewshot.errors import UserError, one_line, path_argument, quoted, shell_quoted
from fewshot.process_state import said_once

NOT_DATASETS = frozenset({"unlabeled"})
SPLITS = ("train", "val", "test")
SYSTEM_FOLDERS = frozenset({"__MACOSX", "$RECYCLE.BIN", "System Volume Information"})  # unzip / OS litter
REPORT_MARK = ".fewshot_report"  # written by `fewshot report` into --out before its first PNG (report/build.py)
# index.html and REPORT_MARK: a report's folder (the mark from its first file on, the page once it is written)
RUN_MARKERS = ("config.yaml", "run_state.json", "log.jsonl", "checkpoints", "index.html", REPORT_MARK)
_MARKER_NAMES = frozenset(RUN_MARKERS)
REPORT_TITLE = "<title>fewshot report</title>"  # in every page `fewshot report` writes (report/out_folder.py reads it)
_TOLD_NOT_DATASETS: set[str] = said_once(__name__, "_TOLD_NOT_DATASETS")
_LAYOUT_ADVICE = "Give --data the folder above the datasets (ROOT/<dataset>/<split>/<class>/<image>)."


def _holds_run(folder: Path) -> bool:
    """Whether ``folder`` itself is a run or report (_marks_output): a `wget -r` mirror copied whole has an
    index.html at its top too, and was passed over as "fewshot output" instead of having its layout named."""
    return _marks_output(folder, [m for m in RUN_MARKERS if (folder / m).exists()])


def _marks_output(folder: Path, names) -> bool:
    """Whether a folder below a candidate dataset, holding ``names``, is a run or report to pass over. An index.html
    alone counts only where a fewshot report wrote it: a user's class folders, each with the index.html of a web
    folder (a `wget -r` mirror, a photo gallery), made the dataset "fewshot output" instead of a layout error."""
    found = _MARKER_NAMES.intersection(names)
    return bool(found) and (found != {"index.html"} or _report_page(folder / "index.html"))


def _report_page(page: Path) -> bool:
    """Whether ``page`` is one `fewshot report` wrote (its title, in its head). One that cannot be read counts, and
    so does anything but a regular file (as before: any index.html marked a report): a FIFO so named was opened and
    read, and every command on the root hung there."""
    try:
        if not stat.S_ISREG(os.stat(page).st_mode):
            return True
        fd = os.open(page, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # swapped for a FIFO since: no hang
        with os.fdopen(fd, "rb") as fh:
            return not stat.S_ISREG(os.fstat(fd).st_mode) or REPORT_TITLE.encode() in fh.read(4096)
    except OSError:
        return True


def _child_marks_output(child: Path) -> bool:
    """_marks_output for a visible folder directly below a candidate dataset (a runs/ folder's runs)."""
    if child.name.startswith(".") or not child.is_dir():
        return False
    return _holds_run(child)


def _images_below(folder: Path, limit: int = 20000) -> str:
    """"images" where an image file lies below ``folder`` outside run and report folders (stops at the first; a tree
    too large to look through counts as holding images, so that it is scanned and its problems named), else "runs"
    where run or report folders were passed over, else "". A run or report folder is passed over at any depth: a
    sweep's `--out ROOT/runs/sweep/a` made ROOT/runs a dataset through its plots/*.png. Its markers are looked for
    among the names the walk lists anyway, so the walk costs no more calls than before."""
    seen, runs = 0, False
    for top, dirs, files in os.walk(folder):
        if _marks_output(Path(top), (*files, *dirs)):
            dirs[:], runs = [], True
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(is_image(Path(f)) for f in files):
            return "images"
        seen += len(files) + len(dirs)
        if seen > limit:
            return "images"
    return "runs" if runs else ""


def not_a_dataset(folder: Path) -> str | None:
    """Why a visible folder of ROOT is not a dataset (None: it is one). A run written into the data root
    (`--out ROOT/runs/x`, `--out ROOT/myrun`, even one that failed to start and left its folder empty) used to
    turn every later command on that root into a layout error; so did the `__MACOSX/` folder that unzipping a
    macOS archive leaves, and an unreadable folder such as a mount point's `lost+found`. A folder that holds
    images but no split folder (`ROOT/x/Train/...`) stays a dataset whose problem is named."""
    if folder.name in SYSTEM_FOLDERS:
        return "operating-system metadata"
    try:
        if any((folder / split).is_dir() for split in ("train", "val", "test")):
            return None
        output = "fewshot output (a run or a report), no train/, val/ or test/"
        if _holds_run(folder) or any(_child_marks_output(c) for c in folder.iterdir()):
            return output
        found = _images_below(folder)  # runs deeper down (ROOT/runs/sweep/a) are passed over as such
        if found != "images":
            return output if found == "runs" else "no images, no train/, val/ or test/"
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    return None


def _is_split_folder(folder: Path) -> bool:
    """A folder named like a split that holds no split folders of its own: a dataset's split, not a dataset
    (a dataset may be named `test`, but then it holds ROOT/test/train/...)."""
    try:
        return (folder.name in SPLITS and not any((folder / split).is_dir() for split in SPLITS)
                and not _holds_run(folder))  # `--out ROOT/test` is a run, passed over as one
    except OSError:
        return False


def split_folders(root: Path, folders: list[Path] | None = None) -> list[Path]:
    """ROOT's folders (``folders``, else ROOT's visible ones) that count as a dataset's splits, by name: one rule for
    what training's and report's "looks like a dataset folder" messages name (a dataset or run named like a split
    is none); an OSError where ROOT cannot be listed."""
    return [f for f in (_visible_folders(root) if folders is None else folders) if _is_split_folder(f)]


def _holds_splits(folder: Path) -> bool:
    try:
        return any((folder / split).is_dir() for split in SPLITS)
    except OSError:
        return False


def holds_a_dataset(folder: Path, splits: tuple[str, ...] = ("train",)) -> bool:
    """Each of FOLDER/<split> (``splits``) has a class folder with an image in it: a folder merely named train
    (`--out ~/ml/train/data`) or an empty test/ of a project (Maven's src/test) is no dataset's split. The rule of
    build's --out checks (a missing --data's "did you mean": _advised_dataset); an OSError where one cannot be read."""
    return all(_labelled_split(folder / split) for split in splits)


def holds_a_full_dataset(folder: Path) -> bool:
    """holds_a_dataset with train/ and val/ alike, as fewshot's layout requires (False where it cannot be read): a
    folder named as a root or dataset in advice is one that training accepts, not any ImageFolder or project."""
    try:
        return holds_a_dataset(folder, ("train", "val"))
    except OSError:
        return False


def _labelled_split(split: Path) -> bool:
    if not split.is_dir():
        return False
    return any(c.is_dir() and any(is_image(f) for f in c.iterdir()) for c in split.iterdir())


def _refuse_a_dataset_given_as_root(root: Path, folders: list[Path]) -> None:
    """`--data ROOT/digits` (a dataset folder, not the root above it) took train/, val/ and test/ for three datasets
    and listed six "missing split folder" problems under them. Said once, with the --data to pass instead: when two
    split folders sit in the root, or when split folders are all it holds (SPEC's layout is ROOT/DATASET/split/class,
    so a root is never read as one dataset)."""
    splits = split_folders(root, folders)
    if not splits or (len(splits) < 2 and len(splits) < len(folders)):
        return
    if any(_holds_splits(f) for f in folders if f not in splits) or not any(has_images(f) for f in splits):
        return  # a real dataset beside stray (or empty) split-named folders: those are passed over as before
    absolute = Path(os.path.abspath(root))
    parent = absolute.parent if root.is_absolute() else Path(os.path.relpath(absolute.parent))
    names = [f"{f.name}/" for f in splits]
    held = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else f"the split folder {names[0]}"
    only = (f" {datasets_option([absolute.name])} (or leave --datasets out for every dataset there)"
            if absolute.name else "")
    raise UserError(one_line(f"--data {root} looks like a dataset folder itself (it holds {held}), but --data is the "
                             f"root above the datasets (ROOT/<dataset>/train/<class>/<image>). Pass its parent "
                             f"instead: --data {path_argument(parent)}{only}."))


def _refuse_a_split_given_as_root(root: Path, folders: list[Path]) -> None:
    """`--data ROOT/digits/train` (a split folder) took each class folder for a dataset and listed two "missing split
    folder" problems per class. Said once, with the --data to pass instead: when the root is named like a split (or
    unlabeled/), none of its folders holds split folders, and some hold images (classes)."""
    absolute = Path(os.path.abspath(root))
    if absolute.name not in SPLITS + ("unlabeled",) or not folders or any(_holds_splits(f) for f in folders):
        return
    if not any(has_images(f) for f in folders):
        return
    dataset = absolute.parent
    top = dataset.parent if root.is_absolute() else Path(os.path.relpath(dataset.parent))
    if absolute.name == "unlabeled":  # ROOT/unlabeled/<dataset>/: the pool, whose root is one level up
        top, only = (dataset if root.is_absolute() else Path(os.path.relpath(dataset))), ""
        what = "the unlabeled pool (ROOT/unlabeled/<dataset>/)"
    else:
        only = f" {datasets_option([dataset.name])} (or leave --datasets out for every dataset there)"
        what = f"the {absolute.name} split of the dataset {quoted(dataset.name)} (its folders are classes)"
    raise UserError(one_line(f"--data {root} looks like {what}, but --data is the root above the datasets "
                             f"(ROOT/<dataset>/train/<class>/<image>). Pass --data {path_argument(top)}{only}."))


def _refuse_class_folders_as_root(root: Path, folders: list[Path], tests: bool = False) -> None:
    """`--data DIR` of an ImageFolder (DIR/<class>/<image>, the layout most students have) took each class folder
    for a dataset and listed two "missing split folder" problems per class, whatever DIR was called (a DIR named
    train/ is _refuse_a_split_given_as_root's). Said once: when no folder holds split folders and most of them (two
    at least: one folder of loose images is a dataset whose message names them) hold images directly. ``tests``:
    predict and `eval --split test`, which read a dataset's test/ too."""
    if any(_holds_splits_any_case(f) for f in folders):
        return  # a real root, a dataset lacking a split or naming it Train/: each problem is named as before
    candidates = [f for f in folders if f.name not in SYSTEM_FOLDERS]
    classes = [f for f in candidates if _holds_images_directly(f)]
    if not _mostly_classes(classes, candidates):
        return
    # runs and reports at their top (a report's index.html, a run's markers): passed over as such. Not
    # not_a_dataset, which looks at every entry of a class folder (90k stats for 3 classes of 30k images)
    candidates = [f for f in candidates if not _holds_run(f)]
    classes = [f for f in classes if f in candidates]
    if not _mostly_classes(classes, candidates):
        return
    shown, some = path_argument(root), some_of([f.name for f in classes], 3)
    raise UserError(one_line(
        f"--data {root} looks like a folder of classes, not a dataset root: its folders ({some}) hold images "
        f"directly and none holds train/ or val/; but --data is the root above the datasets "
        f"(ROOT/<dataset>/train/<class>/<image>, and val/<class>/<image> alike). Make that layout: move these class "
        f"folders into {shown}/<dataset>/train/ (any dataset name) and some images of each class into "
        f"{shown}/<dataset>/val/<class>/, then pass --data {shown} again"
        + (" (the images to predict go in <dataset>/test/, without class folders)." if tests else ".")))


def _mostly_classes(classes: list[Path], candidates: list[Path]) -> bool:
    """Two class-shaped folders at least, and more than half of the candidates."""
    return len(classes) >= 2 and 2 * len(classes) > len(candidates)


def _holds_splits_any_case(folder: Path) -> bool:
    """Whether ``folder`` holds a split folder in any case (Train/, VAL/): a dataset whose other-case split is
    named with its `mv` by the layout scan, not a class folder (a stray preview.png beside Train/ made it one)."""
    try:
        with os.scandir(folder) as entries:
            return any(e.name.casefold() in SPLITS and e.is_dir() for e in entries)
    except OSError:
        return False


def _holds_images_directly(folder: Path) -> bool:
    """Whether an image file lies directly in ``folder`` (a class folder's shape, not a dataset's); stops at the
    first one, so a class of 100k images costs little. False where it cannot be read."""
    try:
        with os.scandir(folder) as entries:
            return any(is_image(Path(e.name)) and e.is_file() for e in entries)
    except OSError:
        return False


def broken_link(link: Path) -> tuple[str | None, bool]:
    """What a symbolic link that leads nowhere names (None: it can no longer be read) and whether it goes round a
    loop of links. One test for --data and --out alike: os.stat's ELOOP, where resolve() stops at a loop on 3.11
    and raises on 3.13."""
    try:
        target = os.readlink(link)
    except OSError:
        return None, False
    try:
        os.stat(link)
    except OSError as exc:
        return target, exc.errno == errno.ELOOP
    return target, False


def broken_link_words(link: Path) -> str:
    """Why a link leads nowhere: a loop of links, or the missing path it names."""
    target, loops = broken_link(link)
    if target is None:
        return "that no longer leads anywhere"
    if loops:
        return f"(to {target}) that goes round a loop of links"
    return f"to {target}, which does not exist (a dangling link)"


def dataset_folders(root: Path) -> list[Path]:
    """The folders under ROOT that may be datasets (every visible directory except `unlabeled/`), by name, once ROOT
    is found to be no dataset folder itself (else the UserError that says so, worded for --data and --datasets);
    an OSError where ROOT cannot be listed. Shared by list_datasets and report's --data check, which copied the
    filter and so could take another root for a dataset folder than training does."""
    folders = _visible_folders(root)
    _refuse_a_dataset_given_as_root(root, folders)
    return folders


def _visible_folders(root: Path) -> list[Path]:
    """ROOT's visible directories but `unlabeled/`, by name; an OSError where ROOT cannot be listed."""
    return sorted((p for p in root.iterdir()
                   if p.is_dir() and not p.name.startswith(".") and p.name not in NOT_DATASETS), key=lambda p: p.name)


def list_datasets(root: Path, missing: str | None = None, demo: bool = True, tests: bool | None = None) -> list[str]:
    """Dataset folders under ROOT: every visible directory except `unlabeled/`, run folders and OS litter
    (not_a_dataset; each is named once on stderr). A ROOT that does not exist is told ``missing`` (eval and predict:
    the run's own root), else a root near it, else to build the demo data there (``demo``: training commands).
    ``tests``: whether test-only datasets count for that advice (predict, `eval --split test`); None: not ``demo``."""
    if root.exists() and not root.is_dir():  # --data FILE.json: building demo data over it is no advice
        raise UserError(one_line(f"dataset root '{root}' is a file, not a dataset root: --data is the folder above "
                                 f"the datasets (ROOT/<dataset>/train/<class>/<image>, ROOT/<dataset>/test/<id>.jpg)"
                                 f"; pass that folder instead."))
    if root.is_symlink() and not root.exists():  # building demo data "--out" a dangling link is no advice
        raise UserError(one_line(f"dataset root '{root}' is a symbolic link {broken_link_words(root)}; give --data the "
                                 f"folder above the datasets, or fix the link."))
    if not root.is_dir():
        advice = (missing or near_root_advice(root, tests=not demo if tests is None else tests)
                  or (demo_data_advice(root) if demo else _LAYOUT_ADVICE))
        raise UserError(f"dataset root {shell_quoted(root)} does not exist or is not a folder. {advice}")
    try:
        folders = _visible_folders(root)
    except OSError as exc:
        raise UserError(f"cannot list the dataset root '{root}': {exc.strerror or exc}.") from None
    # outside the listing's try: an unreadable ROOT/train met by this check was "cannot list the dataset root"
    _refuse_a_dataset_given_as_root(root, folders)
    _refuse_a_split_given_as_root(root, folders)
    _refuse_class_folders_as_root(root, folders, tests=not demo if tests is None else tests)
    names: list[str] = []
    for folder in folders:
        why = not_a_dataset(folder)
        if why is None:
            names.append(folder.name)
        elif str(folder) not in _TOLD_NOT_DATASETS and _says_notes():
            _TOLD_NOT_DATASETS.add(str(folder))
            print(one_line(f"note: {folder} is not a dataset ({why}): passed over"), file=sys.stderr, flush=True)
    if not names:
        raise UserError(f"no dataset folders found under '{root}'. Expected ROOT/<dataset>/train/<class>/*.jpg "
                        f"(and val/<class>/ alike) for training, ROOT/<dataset>/test/<id>.jpg for predict "
                        f"(see `fewshot data --help` to build demo data).")
    return names


def demo_data_advice(root: Path) -> str:
    """For training commands on a path with no data near it: the demo data, built where --data points."""
    return f"Build the demo data with `fewshot data digits --out {path_argument(root)}`."


def run_root_advice(recorded) -> str | None:
    """For eval and predict of a run: the root it was trained on (its recorded data.root) where that still exists
    (None: it does not); the demo data holds none of a run's datasets, so building it at --data was refused again."""
    if not recorded or not Path(recorded).is_dir():
        return None
    return (f"The run was trained on --data {path_argument(recorded)}; pass that root (or the root that holds its "
            f"datasets now).")


def near_root_advice(root: Path, tests: bool = False) -> str | None:
    """"Did you mean" for a --data that does not exist, where a folder above it holds datasets (a typo under a real
    root: building the demo data there put a whole root inside the user's and broke it) or a folder beside it with
    a close name is a dataset root. ``tests``: eval and predict, which accept test-only datasets (_advised_dataset).
    None: no root near it."""
    absolute = Path(os.path.abspath(root))
    existing = next((a for a in absolute.parents if a.is_dir()), None)
    if existing is None:
        return None
    for above in _layout_folders(existing):
        found = _root_above(above, root, tests)
        if found:
            return found
    close = [existing / n for n in difflib.get_close_matches(absolute.relative_to(existing).parts[0],
                                                              _folder_names(existing), n=3)]
    roots = [(c, _advised_datasets_in(c, tests)) for c in close]
    roots = [(r, names) for r, names in roots if names]
    if not roots:
        return None
    return "Did you mean " + " or ".join(f"--data {_shown_like(root, r)}{_only(r, names)}" for r, names in roots) + "?"


def _layout_folders(existing: Path):
    """``existing`` and the folders above it while it lies in a dataset's layout (a split, a class folder, the pool):
    a folder further up that held some dataset (a sibling's, in /tmp or ~) was no root the user meant."""
    a = existing
    for _ in range(4):
        yield a
        if a == a.parent or not {a.name, a.parent.name} & {*SPLITS, "unlabeled"}:
            return
        a = a.parent


def _root_above(above: Path, root: Path, tests: bool) -> str | None:
    """The advice where ``above`` (a folder above the missing --data ``root``) is a dataset folder or a root."""
    absolute = Path(os.path.abspath(root))
    if _advised_dataset(above, tests):
        top = above.parent
        return (f"{above} is a dataset folder, and --data is the root above the datasets: did you mean "
                f"--data {_shown_like(root, top)} {datasets_option([above.name])}?")
    names = _advised_datasets_in(above, tests)
    if not names:
        return None
    typed = absolute.relative_to(above).parts[0]
    close = difflib.get_close_matches(typed, names, n=1)
    pick = f" {datasets_option(close)}" if close else _only(above, names)
    return (f"{above} is a dataset root (it holds {names_list(names)}): did you mean "
            f"--data {_shown_like(root, above)}{pick}?")


def _folder_names(folder: Path) -> list[str]:
    try:
        return [p.name for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir()]
    except OSError:
        return []


def full_datasets_in(folder: Path) -> list[str]:
    """The visible folders of ``folder`` that are datasets training accepts (holds_a_full_dataset; its datasets,
    where it is a root), by name: an empty test/ (a project's, Maven's src/test) made its folder a "dataset", and
    the advice built on it was refused when followed."""
    try:
        return sorted(f.name for f in _visible_folders(folder) if holds_a_full_dataset(f))
    except OSError:
        return []


def _advised_dataset(folder: Path, tests: bool = False) -> bool:
    """Whether "did you mean" names ``folder`` as a dataset: it has train/ and val/ folders and a class folder in
    train/ (images or not: a root being set up, its images not yet copied in, was told to build the demo data inside
    itself; a project's empty train/ and val/ was named a dataset, and the advice was refused when followed), or,
    for eval and predict (``tests``), a test/ with an image, which they accept. An empty test/ alone is none."""
    try:
        full = (folder / "val").is_dir() and _holds_a_folder(folder / "train")
        return full or (tests and has_images(folder / "test"))
    except OSError:
        return False


def _holds_a_folder(folder: Path) -> bool:
    """Whether ``folder`` is a folder holding a sub-folder (a class folder of a train/ split)."""
    if not folder.is_dir():
        return False
    with os.scandir(folder) as it:
        return any(e.is_dir() for e in it)


def _advised_datasets_in(folder: Path, tests: bool) -> list[str]:
    """The visible folders of ``folder`` that the advice names as datasets (_advised_dataset), by name."""
    try:
        return sorted(f.name for f in _visible_folders(folder) if _advised_dataset(f, tests))
    except OSError:
        return []


def _only(root: Path, names: list[str]) -> str:
    """` --datasets NAMES` where ROOT holds visible folders besides ``names``: `--data ROOT` alone scanned them too
    (an empty proj/test was "missing split folder 'train'"), so following the advice was refused."""
    try:
        others = {f.name for f in _visible_folders(root)} - set(names)
    except OSError:
        return ""
    return f" {datasets_option(names)}" if others else ""


def _shown_like(given: Path, path: Path) -> str:
    """``path`` as a word to paste, relative where the user's --data was typed relative."""
    return path_argument(path if given.is_absolute() else Path(os.path.relpath(path)))


def _refuse_dataset_twins(root: Path, names: list[str]) -> None:
    """Two dataset folders whose names differ only in their Unicode form (composed / decomposed accents, as macOS
    writes them) are refused, as such class folders are: names are matched by their composed (NFC) form, so
    `--datasets` naming one of them scored the other, and a model trained on both could not tell them apart."""
    first: dict[str, str] = {}
    for name in names:
        other = first.setdefault(unicodedata.normalize("NFC", name), name)
        if other != name:
            forms = {n: "composed" if n == unicodedata.normalize("NFC", n) else "decomposed" for n in (other, name)}
            raise UserError(one_line(
                f"{root / other} ({forms[other]}) and {root / name} ({forms[name]}): two dataset folders named "
                f"'{unicodedata.normalize('NFC', name)}' that differ only in their Unicode form (accents written "
                f"composed or decomposed); merge them, or rename one (or leave both out with --datasets)."))


def _says_notes() -> bool:
    """Whether this process says the notes (train.distributed.launch_rank is 0), imported only when one is due:
    that module loads torch, which this one does not."""
    from fewshot.train.distributed import launch_rank

    return launch_rank() == 0
