"""A data root read for a trained model: the datasets and classes it names in the model's terms, the warnings where
the root says otherwise, and the cache prediction reads. Apart from predict.py so that answer_keys and balancing,
which read data the same way, import it without importing predict (which imports them)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING

from fewshot.data.cache import default_cache_dir, is_cached, user_cache_dir
from fewshot.data.layout import scan_root
from fewshot.data.names import names_list, parse_datasets
from fewshot.data.skipped import vanished
from fewshot.data.warn_once import warn_once
from fewshot.errors import UserError, one_line

if TYPE_CHECKING:
    from fewshot.eval.predict import TrainedModel


def _chosen_datasets(tm: TrainedModel, datasets: list[str] | str | None) -> list[str]:
    """The model's datasets, or the chosen ones among them (held-out data may cover only some)."""
    if datasets is None:
        return list(tm.space.names)
    chosen = parse_datasets(datasets, tm.space.names) if isinstance(datasets, str) else list(datasets)
    if not chosen:
        raise UserError(f"--datasets names no dataset; choose among {names_list(tm.space.names)}.")
    # a name typed in composed Unicode matches a folder written decomposed (macOS), as scan_root matches them; a
    # name the model holds as typed is taken as it is (a model trained on twins of both forms: the one named)
    by_form = {unicodedata.normalize("NFC", n): n for n in tm.space.names}
    chosen = [d if d in tm.space.names else by_form.get(unicodedata.normalize("NFC", d), d) for d in chosen]
    unknown = [d for d in chosen if d not in tm.space.names]
    if unknown:
        typed = f"--datasets {datasets!r} names" if isinstance(datasets, str) else "--datasets"
        known = names_list(tm.space.names)
        quoted = known != ", ".join(tm.space.names)
        whole = " (a name that holds a comma or a space, in quotes here, is typed whole)" if quoted else ""
        raise UserError(f"{typed} {names_list(unknown)}: the model was trained on {known} only{whole}.")
    return list(dict.fromkeys(chosen))


def _in_model_classes(info, want: tuple[str, ...], split: str, warn: bool = True):
    """The split's labels indexed by the model's classes. A labelled split scanned alone takes its classes
    from its own folders: a val split may lack a rare class (warned here), any other difference
    means the data is not what the model was trained on. A test split (no labels) is checked against the
    dataset's train class folders, where the root has them."""
    if split == "test":
        _refuse_other_train_classes(info, want)
        return info
    if tuple(info.classes) == tuple(want):
        return info
    unknown = [c for c in info.classes if c not in want]
    if unknown:
        raise UserError(_other_classes(info.root, unknown, want))
    missing = [c for c in want if c not in info.classes]
    if missing and split == "val" and warn:
        warn_once([f"{info.root / 'val'}: no val images for {len(missing)} of the model's class(es), which are "
                   f"not scored: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else "")])
    index = {c: i for i, c in enumerate(want)}

    def remap(items):
        return tuple((p, index[info.classes[k]]) for p, k in items)

    return dataclasses.replace(info, classes=tuple(want), train=remap(info.train), val=remap(info.val))


def _other_classes(where: Path, unknown: list[str], want, hint: str = "") -> str:
    """The refusal of data whose classes are not all the model's (val, or test beside such train folders). Names as
    names_list shows them: a class folder "a\nb" split the one-paragraph message over two lines."""
    return (f"the classes of {where} differ from those the model was trained on: "
            f"{names_list(unknown[:10])}{' ...' if len(unknown) > 10 else ''} not among the "
            f"model's {len(want)} classes.{hint}")


def _refuse_other_train_classes(info, want) -> None:
    """A test split is read without labels, so its dataset's train class folders are what say which classes the
    root's answer keys and users mean: folders the model does not know (`one`, `zero` for a model of `Zero`,
    `one`) made predict write indices into the model's list (exit 0) and eval score 0 % without a word. A
    test-only root (no train/), or one whose train/ cannot be listed, has nothing to compare; a train/ lacking
    some of the model's classes is warned about by warn_about_what_is_not_predicted."""
    try:
        here = _class_folders(info)
    except OSError:
        return
    known = {unicodedata.normalize("NFC", c) for c in want}
    unknown = [c for c in here or () if unicodedata.normalize("NFC", c) not in known]
    if not unknown:
        return
    listed = names_list(want[:12]) + (", ..." if len(want) > 12 else "")
    raise UserError(_other_classes(info.root / "train", unknown, want,
                                   f" The model's class indices would name other classes than these folders: "
                                   f"rename them to the model's ({listed}), or use a model trained on this data."))


def _usable_datasets(tm: TrainedModel, root: Path, chosen: list[str], split: str) -> list[str]:
    """The chosen datasets whose ``split`` scans cleanly on its own, in the model's classes (``tm``): the --datasets
    hint when others are missing or have no usable split (a missing test/ gave no hint, a missing dataset folder
    did; a dataset with a renamed class folder was suggested, and following the hint failed on it)."""
    usable = []
    for name in chosen:
        try:
            (info,) = scan_root(root, [name], splits=(split,))
            _in_model_classes(info, tm.space.classes[tm.space.index(name)], split, warn=False)
        except UserError:
            continue
        usable.append(name)
    return usable


def _skipped_words(skipped: list[tuple[str, str]]) -> str:
    """The skipped test images in words: those removed while the command ran are no undecodable ones."""
    gone, broken = vanished(skipped), len(skipped) - vanished(skipped)
    if not gone:
        return f"{broken} undecodable test image(s)"
    return f"{broken} undecodable test image(s) and {gone} removed while the command ran" if broken else \
        f"{gone} test image(s) removed while the command ran"


def warn_about_blank_test_images(data, scoring: bool = False) -> None:
    """Test images are never left out: a submission holds every test id, and a test score (``scoring``: eval)
    is the one a grader gives that submission, with n counting every test image."""
    what = _skipped_words(data.skipped)
    if data.skipped and scoring:
        print(f"warning: {what} (listed above) are scored as predicted from "
              f"a blank image, as `fewshot predict --skip-bad-images` writes them into pred_all.json: they count as "
              f"guesses, and n includes them (undecodable val images are left out).", file=sys.stderr, flush=True)
    elif data.skipped:
        print(f"warning: {what} (listed above) are predicted from a blank "
              f"image, so that a submission holds every test id; those predictions are guesses, and a test score "
              f"counts them as such.", file=sys.stderr, flush=True)


def warn_about_what_is_not_predicted(tm: TrainedModel, root: Path, infos, datasets,
                                     verdict: str = "not predicted") -> None:
    """Predicting is right to use the model's datasets and classes, but the user should hear when the root says
    otherwise: a dataset the model never saw used to be left out of pred_all.json without a word, and class folders
    that differ from the model's make its class indices mean other classes than the root's sorted folders."""
    warn_about_unseen_datasets(tm, root, datasets, verdict)
    for info in infos:
        train = info.root / "train"
        with contextlib.suppress(OSError):
            here = _class_folders(info)
            if here is None:
                continue  # a test-only root: nothing to compare with
            want = list(tm.space.classes[tm.space.index(info.name)])
            if [unicodedata.normalize("NFC", n) for n in here] != [unicodedata.normalize("NFC", n) for n in want]:
                print(one_line(f"warning: the class folders of {train} ({len(here)}) differ from the model's "
                               f"({len(want)}: {', '.join(want[:12])}{', ...' if len(want) > 12 else ''}); "
                               f"pred_all.json gives each image its class index in the model's list."),
                      file=sys.stderr, flush=True)


def warn_about_unseen_datasets(tm: TrainedModel, root: Path, datasets, verdict: str = "not predicted") -> None:
    """The root's datasets the model does not know, which are left out (``verdict``), said on stderr when every
    dataset is used (no --datasets). Names are matched by their composed (NFC) form, as scan_root finds them: a
    folder renamed to another Unicode form was said to be left out, and then predicted all the same."""
    from fewshot.data.roots import list_datasets

    if datasets is not None:
        return
    known = {unicodedata.normalize("NFC", n) for n in tm.space.names}
    with contextlib.suppress(UserError, OSError):
        unseen = [d for d in list_datasets(Path(root)) if unicodedata.normalize("NFC", d) not in known]
        if unseen:
            print(one_line(f"warning: {root} also holds {names_list(unseen)}, which the model was not trained "
                           f"on (it knows {names_list(tm.space.names)}): {verdict}."), file=sys.stderr, flush=True)


def _class_folders(info) -> list[str] | None:
    """The class folders of the dataset's train/ as found now (a predict scan reads test/ only); None without one."""
    train = info.root / "train"
    if not train.is_dir():
        return None
    return sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))


def prediction_cache_dir(root: Path, infos=None, split: str = "test", size: int = 0, crop_pct: float = 1.0,
                         bit_depth: int | str = "auto", resize: str = "crop") -> Path | None:
    """Prediction reads the data root's own cache (the training machine's data.cache_dir may not exist here).
    Given the images it loads (load_split's ``infos`` and ``split``, at ``size``): a ROOT/.fewshot_cache that
    cannot be written and does not hold them (stale, from other images) gives way to the user cache, as a
    read-only root without one does; else every predict decoded them again, and predict takes no data.cache_dir."""
    cache = default_cache_dir(root, None)
    beside = Path(root) / ".fewshot_cache"
    if infos is None or cache != beside or not beside.is_dir() or os.access(beside, os.W_OK | os.X_OK):
        return cache
    paths = [p for info in infos for p in ((p for _, p in info.test) if split == "test"
                                           else (p for p, _ in getattr(info, split)))]
    if is_cached(paths, size, beside, crop_pct, bit_depth, resize):
        return beside  # a cache prebuilt for these images on a read-only mount
    return user_cache_dir(root) or beside


def _labelled_split(tm: TrainedModel, root: Path, name: str, split: str):
    """One dataset's train or val split in the model's classes, or the reason it cannot be read (a val split that
    lacks a class is fine here: nothing is scored per class)."""
    want = tm.space.classes[tm.space.index(name)]
    try:
        (info,) = scan_root(root, [name], splits=(split,))
    except UserError:  # the layout's own message is long and multi-line: the folder says enough here
        return None, f"no usable {split} split under {Path(root) / name / split}"
    try:
        return _in_model_classes(info, want, split, warn=False), None
    except UserError:  # a class folder the model was not trained on: the split is there, but is not this model's
        return None, f"{Path(root) / name / split} has classes the model was not trained on"
