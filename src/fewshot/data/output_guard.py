"""The guards that keep a command's outputs out of its data and its inputs out of its outputs: a run folder in the
data root or one of its splits, an `eval`/`predict --out` onto an answer key, a checkpoint, another file of the run
or a file the data links to. Apart from layout.py: they read the layout's shape, but serve the commands' --out
checks."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from fewshot.data.image_files import _entries, _is_candidate_name, _is_dir_entry, _scandir_quietly
from fewshot.data.layout import ANSWER_KEY
from fewshot.data.roots import NOT_DATASETS, SPLITS
from fewshot.errors import UserError


def check_output_is_not_in_data(out: Path, root, unlabeled=None, what: str = "the run",
                                reads_pool: bool = True) -> None:
    """A run folder that is the data root, or inside one of its datasets, changes the data: `--out ROOT` left
    ROOT/plots/ and ROOT/checkpoints/, and every later command on ROOT failed on them as datasets. Inside an
    --unlabeled folder (``unlabeled``: data.unlabeled), its plots joined the pool and --resume then refused it.
    ``what``: the output named in the message (`fewshot report` checks its --out too). ``reads_pool`` (probe: False)
    no longer changes the check: a later pretrain reads the whole pool, so every command keeps out of it (see
    _read_folders)."""
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


def pool_read_by(cfg: dict) -> bool:
    """Whether a training command with settings ``cfg`` reads the unlabeled pool (check_output_is_not_in_data's
    ``reads_pool``): MoCo (pretrain, a `fewshot run` MoCo stage) and train with semi.method fixmatch or moco."""
    return cfg.get("_task") == "moco" or (cfg.get("semi") or {}).get("method") not in ("off", None, False)


def _read_folders(root: Path) -> list[tuple[Path, str]]:
    """The folders whose files a command reads as data, links resolved, each with what it is: every split folder of
    the root's visible folders, ROOT/unlabeled and its sub-folders (the pool scan follows ROOT/unlabeled/<name> as a
    link). Compared as resolved folders, not as ROOT/<x>/<split> below the resolved root: with ROOT/digits a link to
    a folder elsewhere, `--out ROOT/digits/train/myrun` was accepted and every later command read myrun as a class.
    The pool's sub-folders (links among them lead elsewhere) each named itself: the pool's name hid which link led to
    the folder. All of them, for every command: a later pretrain's pool read (unsorted_pool_images) follows every
    link there, and `train --out` into a link's target put the run's plots into the pool. Passed over: a link to ROOT
    or a folder above it (ROOT/unlabeled/slash -> /), which refused every --out; a pool read there reads everything."""
    pool = root / "unlabeled"
    found = [(pool.resolve(), f"the unlabeled pool {pool}")]
    above = {root.resolve(), *root.resolve().parents}
    found += [(sub.resolve(), f"the unlabeled pool's {'link' if sub.is_symlink() else 'folder'} {sub}")
              for sub in _entries(pool) if sub.is_dir() and sub.resolve() not in above]
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
    from fewshot.eval.output_files import EVAL_METRICS, holds_metrics, holds_predictions

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
