"""Scan and validate a dataset root before any compute starts.

Layout: ROOT/<dataset>/{train,val}/<class>/<image> and ROOT/<dataset>/test/<id>.<ext>: SPEC's integer ids
(0007.png is image 7, written "7" in pred_all.json), and any other file name, whose stem is then the id.
`unlabeled/`, hidden entries and plain files under ROOT are not datasets. Every problem is
collected and reported at once (DataLayoutError), each naming its path.
"""

from __future__ import annotations

import errno
import itertools
import os
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from fewshot.errors import (BIDI_CONTROLS, DataLayoutError, UserError, is_utf8_name, one_line, path_argument,
                            printable, quoted, shell_quoted)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
NOT_DATASETS = frozenset({"unlabeled"})
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


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


SYSTEM_FOLDERS = frozenset({"__MACOSX", "$RECYCLE.BIN", "System Volume Information"})  # unzip / OS litter
RUN_MARKERS = ("config.yaml", "run_state.json", "log.jsonl", "checkpoints", "index.html")  # index.html: a report
_TOLD_NOT_DATASETS: set[str] = set()


def _holds_run(folder: Path) -> bool:
    return any((folder / marker).exists() for marker in RUN_MARKERS)


def _has_images(folder: Path, limit: int = 20000) -> bool:
    """Whether any image file lies below ``folder`` (stops at the first; a tree too large to look through
    counts as holding images, so that it is scanned and its problems named)."""
    seen = 0
    for _, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(is_image(Path(f)) for f in files):
            return True
        seen += len(files) + len(dirs)
        if seen > limit:
            return True
    return False


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
        if _holds_run(folder) or any(c.is_dir() and _holds_run(c) for c in folder.iterdir()
                                     if not c.name.startswith(".")):
            return "fewshot output (a run or a report), no train/, val/ or test/"
        if not _has_images(folder):
            return "no images, no train/, val/ or test/"
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    return None


def check_output_is_not_in_data(out: Path, root, unlabeled=None, what: str = "the run") -> None:
    """A run folder that is the data root, or inside one of its datasets, changes the data: `--out ROOT` left
    ROOT/plots/ and ROOT/checkpoints/, and every later command on ROOT failed on them as datasets. Inside an
    --unlabeled folder (``unlabeled``: data.unlabeled), its plots joined the pool and --resume then refused it.
    ``what``: the output named in the message (`fewshot report` checks its --out too)."""
    out_r, root_r = Path(out).resolve(), Path(root).resolve()
    folders = [] if not unlabeled else unlabeled if isinstance(unlabeled, (list, tuple)) else [unlabeled]
    for folder in folders:
        folder_r = Path(folder).resolve()
        if out_r == folder_r or folder_r in out_r.parents:
            raise UserError(f"--out {out} lies inside the unlabeled folder {folder}, whose every image joins the "
                            f"pool (its plots too); give {what} a folder outside it.")
    if out_r == root_r:
        raise UserError(f"--out {out} is the data root itself; give {what} a folder of its own (e.g. "
                        f"runs/mine, or a sub-folder of the root such as {Path(root) / 'runs' / 'mine'}).")
    for folder_r, where in _read_folders(Path(root)):
        if out_r == folder_r or folder_r in out_r.parents:
            raise UserError(f"--out {out} lies inside {where} ({folder_r} with links resolved), whose files are "
                            f"read as data; give {what} a folder outside the datasets' splits and the pool.")
    for split in SPLITS:  # a split not made yet: the run's folder would become one
        for folder in (out_r, *out_r.parents):
            if folder.name == split and folder.parent.parent == root_r:
                raise UserError(f"--out {out} lies inside the {split}/ split of dataset {folder.parent.name}; "
                                f"give {what} a folder outside the datasets' splits.")


def _read_folders(root: Path) -> list[tuple[Path, str]]:
    """The folders whose files a command reads as data, links resolved, each with what it is: every split folder of
    the root's visible folders, ROOT/unlabeled and its sub-folders (the pool scan follows ROOT/unlabeled/<name> as a
    link). Compared as resolved folders, not as ROOT/<x>/<split> below the resolved root: with ROOT/digits a link to
    a folder elsewhere, `--out ROOT/digits/train/myrun` was accepted and every later command read myrun as a class."""
    pool = root / "unlabeled"
    found = [(pool.resolve(), f"the unlabeled pool {pool}")]
    found += [(sub.resolve(), f"the unlabeled pool {pool}") for sub in _entries(pool) if sub.is_dir()]
    for entry in _entries(root):
        if not entry.name.startswith(".") and entry.name != "unlabeled":
            found += [((entry / split).resolve(), f"the {split}/ split of dataset {entry.name}") for split in SPLITS
                      if (entry / split).is_dir()]
    return found


# a run's own results, which compare and report read: never replaced by `eval --out`, though shaped like its output
RUN_RECORDS = frozenset({"metrics.json", "metrics_known.json", "metrics_unknown.json", "summary.json"})


def _run_folders(run) -> list[Path]:
    """The folders whose files belong to the run that ``run`` (RUN_OR_CKPT) reads: the run folder (a checkpoint's,
    above its checkpoints/), and the `fewshot run` folder around a stage (its run_state.json or summary.json)."""
    p = Path(run)
    if p.is_file():
        if p.parent.name != "checkpoints":
            return []  # a checkpoint on its own: only the file itself is the run's
        p = p.parent.parent
    if not p.is_dir():
        return []
    folders = [p]
    if any((p.parent / name).is_file() for name in ("run_state.json", "summary.json")):
        folders.append(p.parent)
    return folders


def _run_folders_around(out) -> list[Path]:
    """Run folders that would hold ``out``: its own folder, or the run above a checkpoints/ folder.
    `eval RUN_A --out RUN_B/checkpoints/best.pt` replaced another run's model with JSON (exit 0)."""
    folder = Path(os.path.abspath(out)).parent
    return [f for f in ((folder.parent,) if folder.name == "checkpoints" else ()) + (folder,) if _trained_here(f)]


def _trained_here(folder: Path) -> bool:
    """A folder a training wrote (not merely a project folder with its config.yaml, or a report's index.html:
    `eval --out metrics.json` there was refused the second time)."""
    return any((folder / n).is_file() for n in ("log.jsonl", "run_state.json", "checkpoints/last.pt",
                                                "checkpoints/best.pt"))


def _earlier_result(path: Path, kind: str) -> bool:
    """Whether ``path`` holds what this command wrote before, and is none of the run's own records (its
    metrics*.json and summary.json), so may be written again. ``kind`` "predictions": a pred_all.json of
    `predict`; "metrics": the metrics of `eval --out` (they name their checkpoint); "backbone": a `.safetensors`
    of `export`. Each command replaces only its own kind: `predict --out` onto an earlier `eval --out` file
    replaced those metrics with predictions. Told by content with the rule of predict's own check (one helper):
    this one wanted a .json name and its own idea of metrics, so `eval --out RUN/m.txt` ran once, not twice."""
    if path.name in RUN_RECORDS:
        return False
    if kind == "backbone":
        return path.suffix.lower() == ".safetensors" and path.is_file()
    from fewshot.eval.predict import EVAL_METRICS, holds_metrics, holds_predictions

    return holds_metrics(path, EVAL_METRICS) if kind == "metrics" else holds_predictions(path)


def check_result_file_is_not_an_input(out, root, run, kind: str) -> None:
    """`eval`/`predict --out` must not replace what they read: `--out ROOT/digits/test_labels.json` replaced
    the answer key, `--out RUN/checkpoints/best.pt` the model, `--out ROOT/digits/test/0.png` a test image.
    Nor any other file of the run (the folder above a checkpoint's checkpoints/, and the `fewshot run` folder
    around a stage): `--out RUN/config.yaml`, `RUN/metrics.json` or `RUN/checkpoints/last.pt` exited 0, and
    `train --resume`, `compare` and `report` then failed on the run. A new file in the run folder (outside
    checkpoints/) is allowed, and so is one this command wrote before (``kind``, see _earlier_result), such as
    `fewshot run`'s DIR/pred_all.json, so that a command can be run again. Other places in ROOT (ROOT/pred.json,
    ROOT/<ds>/runs/...) stay allowed. Paths are compared as written and with links resolved (a dataset folder
    may be a link into ROOT)."""
    if Path(out).resolve() == Path(run).resolve():
        raise UserError(f"--out {out} would replace the checkpoint it reads ({run}); write the result elsewhere.")
    read = _run_folders(run)
    for folder in read + [f for f in _run_folders_around(out) if f not in read]:
        which = f"the run it reads ({folder})" if folder in read else f"the run in {folder}"
        for out_p, folder_p in ((Path(os.path.abspath(out)), Path(os.path.abspath(folder))),
                                (Path(out).resolve(), folder.resolve())):
            if folder_p not in out_p.parents:
                continue
            inside = out_p.relative_to(folder_p)
            if "checkpoints" in [p.name for p in inside.parents]:
                raise UserError(f"--out {out} would write into the checkpoints of {which}; write the result "
                                f"elsewhere.")
            if (out_p.exists() or out_p.is_symlink()) and not _earlier_result(Path(out), kind):
                raise UserError(f"--out {out} would replace {inside}, a file of {which} that --resume, `report` "
                                f"or `compare` may need; write the result to a new file (in the run folder or "
                                f"elsewhere).")
    for out_p, root_p in ((Path(os.path.abspath(out)), Path(os.path.abspath(root))),
                          (Path(out).resolve(), Path(root).resolve())):
        if root_p not in out_p.parents:
            continue
        parts = out_p.relative_to(root_p).parts
        ds = root_p / parts[0]
        key = len(parts) == 2 and parts[1] == "test_labels.json"
        split = len(parts) > 2 and parts[1] in ("train", "val", "test") and (ds / parts[1]).is_dir()
        if parts[0] == "unlabeled" or ((key or split) and ds.is_dir()):
            what = ("the unlabeled pool" if parts[0] == "unlabeled" else f"the answer key of {parts[0]}" if key
                    else f"the {parts[1]}/ split of {parts[0]}")
            raise UserError(f"--out {out} would write into the data it reads ({what}); write the result outside "
                            f"the datasets' files (e.g. {Path(root) / out_p.name} or a run folder).")
    _refuse_a_file_behind_a_data_link(out, root)


def data_folder_around(path) -> tuple[Path, str] | None:
    """(the dataset root, what it is) where the folder ``path`` is or lies in a dataset's split (ROOT/<ds>/train/...,
    a split told by a sibling split folder or answer key) or ROOT/unlabeled/, by the folders' shape alone: the hint of
    utils.check_output_file for `predict --out ROOT/digits/test` was a file in it, which
    check_result_file_is_not_an_input then refused as data. The root is given as ``path`` was (relative or not).
    The dataset must hold images as one does (_holds_split_images): the walk goes up to /, and any --out under
    ~/train/ was "a folder of the data" where ~/val/ existed."""
    here = Path(os.path.abspath(path))
    for folder in (here, *here.parents):
        parent = folder.parent
        if parent == folder:
            break
        try:
            if folder.name in SPLITS and ((parent / ANSWER_KEY).is_file()
                                          or any((parent / s).is_dir() for s in SPLITS if s != folder.name)) \
                    and _holds_split_images(parent):
                root, what = parent.parent, f"the {folder.name}/ split of {parent.name}"
            elif folder.name == "unlabeled" and any(_holds_split_images(d) for d in parent.iterdir() if d != folder):
                root, what = parent, "the unlabeled pool"
            else:
                continue
        except OSError:
            continue
        return (root if Path(path).is_absolute() else Path(os.path.relpath(root))), what
    return None


def _holds_split_images(ds: Path, look: int = 64) -> bool:
    """Whether ``ds`` holds images where a dataset does (train/<class>/<image>, val/<class>/<image>,
    test/<image>), looking at no more than ``look`` entries of each folder: a home folder with train/ and val/ of
    other things is no dataset, and a split of 100k images is not listed to tell."""
    def entries(folder: Path):
        try:
            with os.scandir(folder) as it:
                yield from itertools.islice(it, look)
        except OSError:  # missing, not a folder, unreadable: no images seen there
            return

    for split in SPLITS:
        for e in entries(ds / split):
            if split == "test" and _is_candidate_name(e.name) and not _is_dir_entry(e):
                return True
            if split != "test" and _is_dir_entry(e) and any(_is_candidate_name(f.name) and not _is_dir_entry(f)
                                                            for f in entries(Path(e.path))):
                return True
    return False


def _refuse_a_file_behind_a_data_link(out, root) -> None:
    """`predict --out /x/t50.png`, with ROOT/digits/test/50.png a link to /x/t50.png, replaced that test image with
    JSON (exit 0): the checks above compare where --out lies, not the files the data's links lead to. An existing
    --out (the usual rerun) is compared by real path with each file of the datasets' splits and answer keys."""
    if not os.path.exists(out):  # a new file replaces nothing the data holds
        return
    hits = _data_files_at(os.path.realpath(out), os.fspath(root))
    if hits:
        raise UserError(f"--out {out} is the file that {min(hits)} (read as data) links to: writing there would "
                        f"replace it; write the result elsewhere.")


def _data_files_at(real: str, root: str) -> list[str]:
    """The answer keys and entries of the datasets' splits, two levels deep (test/<image>, train/<class>/<image>),
    whose real path is ``real``. The pool is not read by eval or predict. Walked with os.scandir, whose entries say
    whether they are folders or links without a system call: resolving, or even lstat-ing, each file took 2.5 s on a
    root of 100k test and 100k train images, on every rerun of eval or predict."""
    hits = []
    for ds in _scandir_quietly(root):
        if ds.name.startswith(".") or ds.name in NOT_DATASETS or not _is_dir_entry(ds):
            continue
        key = os.path.join(ds.path, ANSWER_KEY)
        if os.path.realpath(key) == real:  # one file a dataset: resolved as it is
            hits.append(key)
        for split in SPLITS:
            split_dir = os.path.join(ds.path, split)
            entries = _scandir_quietly(split_dir)
            hits += _entries_at(real, split_dir, entries)
            for entry in entries:
                if _is_dir_entry(entry):  # a class folder (test/: a sub-folder, listed all the same)
                    hits += _entries_at(real, entry.path, _scandir_quietly(entry.path))
    return hits


def _entries_at(real: str, folder: str, entries: list[os.DirEntry]) -> list[str]:
    """The entries of ``folder`` whose real path is ``real``: a link resolved on its own, any other entry only by
    its name when the folder's real path (resolved once: the folder may be a link or lie below one) is ``real``'s."""
    here = os.path.realpath(folder) == os.path.dirname(real)
    name = os.path.basename(real)
    return [e.path for e in entries
            if (os.path.realpath(e.path) == real if e.is_symlink() else here and e.name == name)]


def _scandir_quietly(folder: str) -> list[os.DirEntry]:
    """The folder's entries, unsorted; none when it cannot be read (its problem is named elsewhere)."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:
        return []


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


def datasets_option(names) -> str:
    """`--datasets A,B` for a hint, as it must be pasted into a shell: quoted when a name holds a space, and in the
    `--datasets=...` form when it starts with '-' (`--datasets -x,...` failed: "expected one argument"), quoted as
    $'...' when a name is not UTF-8 or holds a control character (shell_quoted)."""
    joined = ",".join(names)
    value = shell_quoted(joined)
    return f"--datasets={value}" if joined.startswith("-") else f"--datasets {value}"


def names_list(names) -> str:
    """Dataset names joined for a message, a name that holds a comma, a space or a quote (or is empty) in quotes:
    "trained on  b, 1e3, a, a,b only" hid which of the four names were the datasets."""
    return ", ".join(shown_name(n) for n in names)


def shown_name(name: str) -> str:
    """A folder or file name for a list in a message: quoted (as quoted() does) where it holds a comma, a space or a
    quote, or is empty: "val classes not in train: 3 , x" hid the class folder named "3 " (a trailing space)."""
    plain = name and not any(c in name for c in ",'\"") and not any(c.isspace() for c in name)
    return name if plain else quoted(name)


def some_of(items, limit: int, shown=shown_name) -> str:
    """The first ``limit`` of ``items`` for a message, each as ``shown`` gives it, and how many more there are: a list
    cut at 10 of 12 without a word read as the whole list."""
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(shown(i) for i in items[:limit]) + more


def parse_datasets(value: str, names) -> list[str]:
    """`--datasets A,B` as a list of names. A folder may be named "a,b" or " spaced ": the whole value, or a part as
    typed (unstripped), that names one of ``names`` is taken as it is; other parts are stripped of spaces."""
    forms = {unicodedata.normalize("NFC", n) for n in names}

    def exists(d: str) -> bool:
        return unicodedata.normalize("NFC", d) in forms

    if exists(value):
        return [value]
    return [d if exists(d) else d.strip() for d in value.split(",") if exists(d) or d.strip()]


SPLITS = ("train", "val", "test")


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


def list_datasets(root: Path) -> list[str]:
    """Dataset folders under ROOT: every visible directory except `unlabeled/`, run folders and OS litter
    (not_a_dataset; each is named once on stderr)."""
    if root.exists() and not root.is_dir():  # --data FILE.json: building demo data over it is no advice
        raise UserError(one_line(f"dataset root '{root}' is a file, not a dataset root: --data is the folder above "
                                 f"the datasets (ROOT/<dataset>/train/<class>/<image>, ROOT/<dataset>/test/<id>.jpg)"
                                 f"; pass that folder instead."))
    if root.is_symlink() and not root.exists():  # building demo data "--out" a dangling link is no advice
        raise UserError(one_line(f"dataset root '{root}' is a symbolic link {broken_link_words(root)}; give --data the "
                                 f"folder above the datasets, or fix the link."))
    if not root.is_dir():
        raise UserError(f"dataset root {shell_quoted(root)} does not exist or is not a folder. "
                        f"Build the demo data with `fewshot data digits --out {path_argument(root)}`.")
    try:
        folders = _visible_folders(root)
    except OSError as exc:
        raise UserError(f"cannot list the dataset root '{root}': {exc.strerror or exc}.") from None
    # outside the listing's try: an unreadable ROOT/train met by this check was "cannot list the dataset root"
    _refuse_a_dataset_given_as_root(root, folders)
    _refuse_a_split_given_as_root(root, folders)
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


def _entries(folder: Path) -> list[Path]:
    """The folder's entries sorted by name; none when it cannot be read (its problem is named elsewhere)."""
    try:
        return sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return []


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


def has_images(folder: Path) -> bool:
    """Whether the folder holds an image at any depth, hidden files and folders aside (as the pool scan)."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(is_image(Path(f)) for f in filenames):
            return True
    return False


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


def _is_candidate_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS


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
        note = numbered_classes_note(name, classes)
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


def _says_notes() -> bool:
    """Whether this process says the notes (train.distributed.launch_rank is 0), imported only when one is due:
    that module loads torch, which this one does not."""
    from fewshot.train.distributed import launch_rank

    return launch_rank() == 0


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
