"""Load a trained run for evaluation and prediction; write metrics.json and pred_all.json."""

from __future__ import annotations

import contextlib
import dataclasses

import json
import os
import stat
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from fewshot.data.cache import default_cache_dir, is_cached, user_cache_dir
from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import (datasets_option, list_datasets, names_list, parse_datasets, scan_root, some_of,
                                 test_id, warn_once)
from fewshot.data.sets import load_split
from fewshot.data.transforms import Normalize
from fewshot.errors import CheckpointError, UserError, one_line, printable
from fewshot.eval import balance as bal
from fewshot.eval.evaluate import compute_logits, score
from fewshot.models.backbone import MAX_IMG_SIZE, MIN_IMG_SIZE, RECORDED, mean_std, timm_name
from fewshot.models.classifier import HeadCountError, build_classifier, check_head_count
from fewshot.models.weights import check_state_fits, infinity_problem, state_value_problem
from fewshot.train.checkpoint import load_checkpoint, logged_epoch, resolve_checkpoint

MISROUTED = -1  # pred_all.json entry of an image that unknown-source mode routed to another dataset
# the data settings eval and predict read from a checkpoint's config (its images are decoded as the run's were)
RECORDED_DATA = ("crop_pct", "bit_depth", "skip_bad_images")


@dataclass
class TrainedModel:
    model: torch.nn.Module
    space: LabelSpace
    cfg: dict
    normalize: Normalize
    size: int
    n_parameters: int
    path: Path
    epoch: int | None = None  # the log.jsonl epoch the weights are from (a report matches its scores to it)


def load_trained(run_or_ckpt: str | Path, device: torch.device) -> TrainedModel:
    path = resolve_checkpoint(run_or_ckpt)
    try:
        ck = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(_last_hint(exc, path)) from None
    if ck.get("kind") != "supervised":
        raise CheckpointError(f"{path} is a {ck.get('kind')} checkpoint; evaluation and prediction need a "
                              f"fine-tuned one (`fewshot train --weights ...` after `fewshot export`).")
    try:  # a checkpoint is user input (it may come from anyone): what does not fit is a user error, not exit 1
        img_size, n_parameters = ck["img_size"], ck["n_parameters"]
        if isinstance(img_size, bool) or not isinstance(img_size, int) or not MIN_IMG_SIZE <= img_size <= MAX_IMG_SIZE:
            raise ValueError(f"img_size {img_size!r} is not a whole number in {MIN_IMG_SIZE}..{MAX_IMG_SIZE}")
        if isinstance(n_parameters, bool) or not isinstance(n_parameters, int):
            raise ValueError(f"n_parameters {n_parameters!r} is not a whole number")
        space = LabelSpace.from_dict(ck["label_space"])
        epoch = logged_epoch(ck)
        cfg = ck["config"]
        if not isinstance(cfg.get("data"), dict):
            raise CheckpointError(f"{path} records no data settings (its config has no data section), so its test "
                                  f"images cannot be decoded as the run's were; it was not written by fewshot or "
                                  f"was altered. Use another checkpoint.")
        cfg["data"].update(checked_data_settings(cfg["data"], path))
        cfg["model"]["weights"] = None  # the checkpoint holds every weight
        timm_name(cfg["model"]["name"], RECORDED)  # a tag timm does not know: worded as the file's, not the user's
        model = build_classifier(cfg, space.num_classes)
        state = ck["ema"] if ck.get("ema") is not None else ck["model"]
        check_head_count(model, state, path, cfg["model"]["name"])
        # load_state_dict casts int/complex tensors and takes NaN ones: every image was predicted class 0, exit 0
        check_state_fits(state, model.state_dict(), path, "ema" if ck.get("ema") is not None else "model")
        model.load_state_dict(state)
    except HeadCountError:  # the run's last.pt has the same heads: no hint to it
        raise
    except CheckpointError as exc:
        raise CheckpointError(_last_hint(exc, path)) from None
    except UserError:  # already says what is wrong
        raise
    except (RuntimeError, TypeError, KeyError, ValueError, AttributeError, IndexError) as exc:
        raise CheckpointError(_last_hint(f"{path} is not a fine-tuned checkpoint this version can use "
                                         f"({type(exc).__name__}: {printable(str(exc))[:400]}).", path)) from None
    model.to(device).eval()
    return TrainedModel(model, space, cfg, Normalize(*mean_std(model.backbone)).to(device), img_size,
                        n_parameters, path, epoch)


def checked_data_settings(data: dict, path, fields: tuple[str, ...] = RECORDED_DATA, use: str = "used") -> dict:
    """``fields`` of a checkpoint's data settings (``data``), checked and normalised as config checks the values a
    user types (config.validate), or a CheckpointError naming the checkpoint (``path``): a file from anyone decided
    the decoding unchecked (crop_pct 0 left every test image "undecodable", bit_depth 99 was taken). A field the
    checkpoint lacks (an older version's) is left out: its reader takes the default."""
    from fewshot.config import DEFAULTS, validate

    given = {k: data[k] for k in fields if k in data}
    try:
        return validate(given, {k: DEFAULTS["data"][k] for k in fields}, "data.")
    except UserError as exc:
        said = str(exc).rstrip(".")
        raise CheckpointError(f"{path} cannot be {use}: its config records an unusable setting ({said}); it was not "
                              f"written by fewshot or was altered. Use another checkpoint.") from None


def _last_hint(exc: Exception | str, path: Path) -> str:
    """exc's message; for a damaged best.pt (a copy cut short, a full disk), which left no way forward, with the
    run's last.pt beside it, which may be whole."""
    last = path.with_name("last.pt")
    if path.name != "best.pt" or not last.is_file():
        return str(exc)
    problem = _unusable(last)
    if problem:  # "pass last.pt instead" sent the user to a file refused the same way
        return _then(exc, f"The run's last.pt cannot be used either: {problem}")
    return _then(exc, f"The run's last.pt may be whole: pass {last} instead to use its last epoch.")


def _unusable(last: Path) -> str | None:
    """Why a run's last.pt cannot stand in for its refused best.pt, or None; read (mapped) and checked, no model
    built."""
    try:
        ck = load_checkpoint(last, mmap=True)
    except CheckpointError as exc:
        return printable(one_line(str(exc)))[:300]
    if ck.get("kind") != "supervised":
        return f"it is a {printable(one_line(str(ck.get('kind'))))[:40]} checkpoint, not a fine-tuned one."
    data = ck["config"].get("data") if isinstance(ck.get("config"), dict) else None
    if not isinstance(data, dict):  # refused as best.pt's would be (load_trained)
        return "it records no data settings."
    try:
        checked_data_settings(data, last)
    except CheckpointError:
        return "its config records an unusable data setting."
    state = ck["ema"] if ck.get("ema") is not None else ck["model"]
    # an infinity the model does not start with is refused in best.pt and here alike (last.pt with the same damage
    # was offered as "may be whole")
    problem = state_value_problem(state) or infinity_problem(state, ck, prefix="backbone.")
    return f"its tensor {printable(one_line(problem))[:200]}." if problem else None


def _then(exc: Exception | str, sentence: str) -> str:
    """exc's message followed by a further sentence: messages end with or without a full stop, and a bare join
    ran two sentences together ("...: no test images The model knows ...")."""
    text = str(exc).rstrip()
    return f"{text}{'' if text.endswith(('.', '!', '?')) else '.'} {sentence}"


def checkpoint_note(run_or_ckpt, tm: TrainedModel) -> str | None:
    """Why a run folder's last.pt was used (resolve_checkpoint takes it when best.pt is missing): predictions
    from a run still training, or with its best.pt deleted, came from other weights than its metrics without a
    word. None when the checkpoint is the run's best.pt, or a file the user named."""
    path = tm.path
    if not Path(run_or_ckpt).is_dir() or path.name == "best.pt":
        return None
    run = path.parent.parent
    if (run / "metrics.json").is_file():
        return f"{path.with_name('best.pt')} is missing, so these are the last epoch's weights, not the run's best"
    return (f"{run} has no best.pt and no metrics.json yet: the run looks unfinished (still training, or stopped "
            f"before its first evaluation)")


def say_checkpoint(run_or_ckpt, tm: TrainedModel, doing: str, always: bool = True) -> None:
    """One line naming the checkpoint used (``always``: also when it is the expected one, on stdout); a last.pt
    taken for a missing best.pt is a warning on stderr."""
    note = checkpoint_note(run_or_ckpt, tm)
    line = f"{doing} {tm.path} (epoch {tm.epoch})"
    if note:
        print(one_line(f"warning: {line}: {note}."), file=sys.stderr, flush=True)
    elif always:
        print(one_line(line), flush=True)


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


def by_folder(per_dataset: dict, infos) -> dict:
    """``per_dataset`` ({dataset: ...}, the model's names) keyed by each dataset's folder name under the root now
    (``infos``), as pred_all.json keys it: a model trained on a decomposed `café` (macOS) wrote that form into
    metrics.json beside a pred_all.json keyed by the composed folder, and readers matching the two by name (a
    grader, the report) found no scores for it. Where two of the model's names would take one key (a name not
    found under the root now that is another's folder: twins of an older run), both keep the model's names, which
    differ: the dict kept only the last, without a word."""
    folder = {info.name: info.root.name for info in infos}
    key = {name: folder.get(name, name) for name in per_dataset}
    while True:  # each pass gives back its own name to at least one that had another: ends within len() passes
        names_of: dict = {}
        for name, k in key.items():
            names_of.setdefault(k, []).append(name)
        shared = [names for names in names_of.values() if len(names) > 1]
        if not shared:
            return {key[name]: value for name, value in per_dataset.items()}
        for names in shared:
            unicode = len({unicodedata.normalize("NFC", n) for n in names}) == 1  # one name in two Unicode forms
            form = {n: " (composed)" if unicodedata.is_normalized("NFC", n) else " (decomposed)" for n in names}
            forms = ", ".join(f"{names_list([n])}{form[n] if unicode else ''}" for n in sorted(names))
            why = "names that differ only in their Unicode form, from an older run" if unicode else \
                "one of them is not under the root now and has another's folder name"
            warn_once([f"the model's datasets {forms} would share the key of the one folder "
                       f"{names_list([key[names[0]]])} under the root now ({why}): their results keep the model's "
                       f"names"], kind="note")
            key.update({name: name for name in names})


def folder_keyed(metrics: dict, infos) -> dict:
    """score's metrics with their datasets (and not_scored) named as by_folder names them."""
    out = dict(metrics)
    if isinstance(metrics.get("datasets"), dict):
        out["datasets"] = by_folder(metrics["datasets"], infos)
    if isinstance(metrics.get("not_scored"), list):
        out["not_scored"] = list(by_folder(dict.fromkeys(metrics["not_scored"]), infos))
    return out


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
    """The refusal of data whose classes are not all the model's (val, or test beside such train folders)."""
    return (f"the classes of {where} differ from those the model was trained on: "
            f"{', '.join(printable(c) for c in unknown[:10])}{' ...' if len(unknown) > 10 else ''} not among the "
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
    listed = ", ".join(printable(c) for c in want[:12]) + (", ..." if len(want) > 12 else "")
    raise UserError(_other_classes(info.root / "train", unknown, want,
                                   f" The model's class indices would name other classes than these folders: "
                                   f"rename them to the model's ({listed}), or use a model trained on this data."))


def _data_for(tm: TrainedModel, root: Path, split: str, datasets: list[str] | str | None = None,
              skip_bad: bool = False, check=None, scoring: bool = False):
    """``skip_bad`` (--skip-bad-images, or the run's own data.skip_bad_images): undecodable images are listed and
    left out, except test images, which keep a blank row so that pred_all.json holds every id (and a test score,
    ``scoring``, counts them as the guesses they are). ``check(infos)``
    runs before any image is decoded (answer keys: a bad one was reported after 52 s of decoding)."""
    chosen = _chosen_datasets(tm, datasets)
    try:
        infos = scan_root(root, chosen, splits=(split,))
    except UserError as exc:
        here = [] if datasets is not None else _usable_datasets(tm, root, chosen, split)
        if not here or len(here) == len(chosen):
            raise
        raise UserError(_then(exc, f"The model knows {names_list(chosen)}; to use only those with a usable {split} "
                                  f"split under this root, pass {datasets_option(here)}.")) from None
    infos = [_in_model_classes(info, tm.space.classes[tm.space.index(info.name)], split) for info in infos]
    if split == "test":
        warn_about_what_is_not_predicted(tm, root, infos, datasets, "not scored" if scoring else "not predicted")
    elif scoring:  # eval's val score leaves out a dataset the model does not know as its test score does: said alike
        warn_about_unseen_datasets(tm, root, datasets, "not scored")  # (not the report's val analysis: it scores none)
    if check is not None:
        check(infos)
    d = tm.cfg["data"]
    cache = prediction_cache_dir(root, infos, split, tm.size, d.get("crop_pct", 1.0), d.get("bit_depth", "auto"))
    data = load_split(infos, split, tm.space, tm.size, cache, d.get("crop_pct", 1.0),
                      skip_bad or bool(d.get("skip_bad_images", False)), bit_depth=d.get("bit_depth", "auto"))
    if split == "test":
        warn_about_blank_test_images(data, scoring)
    return infos, data


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


def warn_about_blank_test_images(data, scoring: bool = False) -> None:
    """Test images are never left out: a submission holds every test id, and a test score (``scoring``: eval)
    is the one a grader gives that submission, with n counting every test image."""
    if data.skipped and scoring:
        print(f"warning: {len(data.skipped)} undecodable test image(s) (listed above) are scored as predicted from "
              f"a blank image, as `fewshot predict --skip-bad-images` writes them into pred_all.json: they count as "
              f"guesses, and n includes them (undecodable val images are left out).", file=sys.stderr, flush=True)
    elif data.skipped:
        print(f"warning: {len(data.skipped)} undecodable test image(s) (listed above) are predicted from a blank "
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
    from fewshot.data.layout import list_datasets

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
                         bit_depth: int | str = "auto") -> Path | None:
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
    if is_cached(paths, size, beside, crop_pct, bit_depth):
        return beside  # a cache prebuilt for these images on a read-only mount
    return user_cache_dir(root) or beside


def load_answer_key(path: Path, num_classes: int | None = None,
                    class_names: list[str] | tuple[str, ...] | None = None,
                    data_classes: list[str] | tuple[str, ...] | None = None) -> dict[str, int]:
    """{"<image id>": class index} from a test_labels.json, or a UserError naming the file. A class is its
    index in the dataset's sorted class folders, or (given ``class_names``, the model's) the class's name itself.
    ``data_classes``: the class folders found under the root now, named in the error where they differ from the
    model's (a key written from renamed folders names classes the model does not know)."""
    try:
        key = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"answer key {path} cannot be read as JSON: {exc}") from None
    if not isinstance(key, dict):
        raise UserError(f"answer key {path} must map image ids to class indices, e.g. {{\"17\": 3}}.")
    names = {unicodedata.normalize("NFC", n): k for k, n in enumerate(class_names)} if class_names else {}
    if num_classes is None and class_names:
        num_classes = len(class_names)
    out: dict[str, int] = {}
    for i, c in key.items():
        if isinstance(c, str) and unicodedata.normalize("NFC", c) in names:
            c = names[unicodedata.normalize("NFC", c)]
        if isinstance(c, bool) or not isinstance(c, int) or c < 0 or (num_classes is not None and c >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
            named = ""
            if class_names:
                listed = ", ".join(printable(n) for n in list(class_names)[:8])
                named = f" or one of the model's class names ({listed}{', ...' if len(class_names) > 8 else ''})"
                if data_classes is not None and list(names) != [unicodedata.normalize("NFC", n) for n in data_classes]:
                    theirs = ", ".join(printable(n) for n in list(data_classes)[:8])
                    named += (f". The data's class folders ({theirs}{', ...' if len(data_classes) > 8 else ''}) differ "
                              f"from the model's: the key is read with the model's names, so write those (or the "
                              f"indices) in it")
            quoted = ""
            if isinstance(c, str) and c.strip().isdigit():  # {"0": "1"}: "1" was read as a name, and is none
                listed = ", ".join(printable(n) for n in list(class_names)[:5]) if class_names else ""
                quoted = (f" A number in quotes is read as a class name: write the index without quotes ({c.strip()})"
                          + (f", or a name such as {listed}" if listed else "") + ".")
            raise UserError(f"answer key {path}: image {i} has class {_as_written(c)}; a class must be a whole "
                            f"number in {bound}{named}.{quoted}")
        image_id = test_id(str(i))  # "0007" and "7" both name test image 7 (layout.test_id)
        if out.get(image_id, c) != c:
            raise UserError(f"answer key {path}: image {image_id} is listed twice with different classes.")
        out[image_id] = c
    return out


def _as_written(value) -> str:
    """A key's class as JSON writes it: `true` and `null` read as "True" and "None", which the file never says. A
    name keeps its quotes; a long list or object is cut."""
    if isinstance(value, str):
        return repr(value)
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):  # nested deeper than json writes back
        text = f"a {type(value).__name__} nested too deep to show"
    return text if len(text) <= 60 else f"{text[:57]}..."


def warn_about_unknown_ids(path: Path, key: dict, test_ids) -> list[str]:
    """Ids of the answer key that are no image in test/ are not scored (n counts the test images); they are
    named on stderr, since a key and a test folder that disagree usually mean a copy went wrong."""
    unknown = sorted(set(key) - set(test_ids))
    if unknown:
        print(one_line(f"warning: answer key {path} lists {len(unknown)} id(s) that are not test images scored "
                       f"here ({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}): they are not scored."),
              file=sys.stderr, flush=True)
    return unknown


def _data_classes(info) -> list[str] | None:
    """_class_folders for an answer key's error, which an unreadable train/ must not replace."""
    try:
        return _class_folders(info)
    except OSError:  # an unreadable train/: the key's error says what the model knows, without the comparison
        return None


KEYED_HINT = " Score the datasets that have one with "  # read_answer_keys' hint, replaced by check_answer_keys'


def read_answer_keys(infos, space: LabelSpace, ids: list[str], dsids: torch.Tensor, warn: bool = True) -> torch.Tensor:
    """Global targets for test images from ROOT/<dataset>/test_labels.json (scoring only)."""
    keys = {}
    keyed = [info.name for info in infos if info.answer_key is not None]
    for info in infos:
        if info.answer_key is None:
            hint = (f"{KEYED_HINT}{datasets_option(keyed)}." if keyed else "")
            raise UserError(f"no answer key {info.root / 'test_labels.json'}: the test split of {info.name} cannot "
                            f"be scored.{hint}")
        keys[info.name] = load_answer_key(info.answer_key, class_names=space.classes[space.index(info.name)],
                                          data_classes=_data_classes(info))
    by_dataset: dict[str, set[str]] = {}
    for i, d in zip(ids, dsids.tolist()):
        by_dataset.setdefault(space.names[d], set()).add(str(i))
    for info in infos if warn else ():  # once: evaluate_run checks the keys before decoding, then reads them
        warn_about_unknown_ids(info.answer_key, keys[info.name], by_dataset.get(info.name, set()))
    missing: dict[str, list[str]] = {}
    for i, d in zip(ids, dsids.tolist()):
        if str(i) not in keys[space.names[d]]:
            missing.setdefault(space.names[d], []).append(str(i))
    if missing:  # all of them at once: the first alone made fixing a partial key one run per id
        raise UserError("test images missing from their answer key: " + "; ".join(
            f"{len(v)} of {name} ({', '.join(printable(x) for x in v[:5])}{', ...' if len(v) > 5 else ''}; "
            f"{next(info.answer_key for info in infos if info.name == name)})" for name, v in missing.items())
            + ". Every test image needs its class in the key to be scored.")
    return torch.tensor([space.global_label(d, keys[space.names[d]][str(i)]) for i, d in zip(ids, dsids.tolist())],
                        dtype=torch.long)


def check_answer_keys(infos, space: LabelSpace, warn: bool = True) -> None:
    """The answer keys of the test split, checked against the scanned test files before decoding them. One unusable
    key refuses them all: the refusal names the datasets whose keys can be scored (`--datasets A,B` scores them;
    without the hint, one bad key read as "eval cannot score this root")."""
    ids = [tid for info in infos for tid, _ in info.test]
    dsids = torch.tensor([space.index(info.name) for info in infos for _ in info.test], dtype=torch.long)
    try:
        read_answer_keys(infos, space, ids, dsids, warn=warn)
    except UserError as exc:
        if len(infos) < 2:
            raise
        # read_answer_keys' own hint for a missing key names every dataset with a key file, a broken one too
        words = str(exc).split(KEYED_HINT)[0].rstrip()
        usable = _usable_keys(infos, space)
        if usable:
            raise UserError(f"{words} The other datasets' keys are usable: score them with "
                            f"{_datasets_hint(usable)}.") from None
        if words != str(exc).rstrip():
            raise UserError(words) from None
        raise


def _datasets_hint(names: list[str]) -> str:
    """`--datasets A,B` for the datasets a refusal can still score; a name holding a comma is given alone (the option
    splits at commas: "--datasets x,y,z" for "x,y" and "z" named three unknown datasets)."""
    plain = [n for n in names if "," not in n]
    alone = [datasets_option([n]) for n in names if "," in n]
    parts = ([datasets_option(plain)] if plain else []) + alone
    return parts[0] if len(parts) == 1 else ", then ".join(parts) + " (a name with a comma goes alone)"


def _usable_keys(infos, space: LabelSpace) -> list[str]:
    """The datasets whose answer key scores their test split, each checked on its own (quietly)."""
    usable = []
    for info in infos:
        with contextlib.suppress(UserError):
            check_answer_keys([info], space, warn=False)
            usable.append(info.name)
    return usable


def evaluate_run(run_or_ckpt, root, mode: str, device: torch.device, split: str = "val",
                 datasets: list[str] | str | None = None, skip_bad: bool = False, balance: str | None = None) -> dict:
    """Accuracy on the val or test split. ``balance`` (known-source test scores only: the val split is what `auto`
    decides on): as `fewshot predict --balance`, so that a test score matches the predictions (None: the run's
    recorded run.balance, else auto, as chosen_balance says)."""
    tm = load_trained(run_or_ckpt, device)
    say_checkpoint(run_or_ckpt, tm, "evaluating", always=False)  # the table's title names it
    check = (lambda infos: check_answer_keys(infos, tm.space)) if split == "test" else None
    infos, data = _data_for(tm, Path(root), split, datasets, skip_bad, check=check, scoring=True)
    targets = data.targets if split != "test" else read_answer_keys(infos, tm.space, data.image_ids, data.dataset_ids,
                                                                      warn=False)
    logits = compute_logits(tm.model, data.images, tm.normalize, device)
    if split == "test" and mode == "known":
        balance = chosen_balance(run_or_ckpt, balance, "eval")
        plan = balance_plan(tm, Path(root), infos, data, logits, balance, device)
        say_balance(by_folder(plan, infos), balance, who="eval")
        logits = balanced_logits(tm, data, logits, plan)
    metrics = folder_keyed(score(logits, targets, data.dataset_ids, tm.space, mode, tm.n_parameters), infos)
    metrics["split"] = split
    metrics["checkpoint"] = str(tm.path)
    if split == "test" and mode == "known":  # which predictions were scored: `eval --out` kept no word of it
        metrics["balance"] = balance
    return metrics


def _test_logits(tm: TrainedModel, root: Path, device: torch.device, preloaded=None, datasets=None,
                 skip_bad: bool = False):
    infos, data = preloaded if preloaded is not None else _data_for(tm, Path(root), "test", datasets, skip_bad)
    return infos, data, compute_logits(tm.model, data.images, tm.normalize, device, desc="predicting")


def _predictions(tm: TrainedModel, infos, data, logits: torch.Tensor, mode: str) -> tuple[dict, dict]:
    """pred_all.json and the routing, keyed by each dataset's folder name as it is under the root now (SPEC keys
    by dataset folder): a model trained on a decomposed `café` (macOS) wrote that key for a composed folder, which a
    grader keyed by folder names did not find. A dataset not predicted here keeps the model's name (routing)."""
    pred_ds, pred_local = tm.space.predict(logits, mode, data.dataset_ids)
    out: dict = {"n_parameters": int(tm.n_parameters)}
    routing: dict = {}
    folder = dict(enumerate(tm.space.names))
    for info in infos:  # the datasets predicted (all, or those of --datasets)
        folder[tm.space.index(info.name)] = info.root.name
        out[info.root.name] = {}
        routing[info.root.name] = {}
    for i, d, pd, pl in zip(data.image_ids, data.dataset_ids.tolist(), pred_ds.tolist(), pred_local.tolist()):
        name = folder[d]
        # An image routed to another dataset has no class of its own dataset: MISROUTED (-1) can never
        # match, where the other dataset's local index could be out of range or a spurious hit.
        out[name][str(i)] = int(pl) if pd == d else MISROUTED
        routing[name][str(i)] = folder[pd]
    return out, routing


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


def _too_few_per_class(targets, size: int, setting: str) -> str | None:
    """Why auto cannot decide on these val labels (None: it can). Counted per class: 1 image of half the classes
    and 19 of the others passed an average of 10, and the skew test then read a confusion of single images."""
    counts = torch.bincount(torch.as_tensor(targets, dtype=torch.long), minlength=size)
    missing, fewest = int((counts == 0).sum()), int(counts.min())
    if missing:  # the words _skew_untestable gives, said before the val pass
        return f"val lacks {missing} of the {size} classes, so a skewed test split could not be told apart"
    if fewest >= bal.AUTO_MIN_VAL_PER_CLASS:
        return None
    return (f"val holds as few as {fewest} image{'s' if fewest != 1 else ''} of a class, too few to tell whether "
            f"evening out helps: auto decides on {bal.AUTO_MIN_VAL_PER_CLASS} of each, {setting} on forces it")


def _val_logits(tm: TrainedModel, root: Path, name: str, device: torch.device, auto_setting: str | None = None,
                setting: str = "--balance"):
    """One dataset's val logits in its own classes and its local targets, or (None, None, why): undecodable val
    images are left out (said as what they are left out of: the balancing's reading of val, with or without
    --skip-bad-images), and a val split that cannot be used leaves the predictions plain instead of failing them.
    ``auto_setting``: under auto, a split with too few images of a class is declined before any image is read."""
    from fewshot.data.cache import load_images

    size = tm.space.sizes[tm.space.index(name)]
    val, why = _labelled_split(tm, root, name, "val")
    if val is None:
        return None, None, why
    too_few = auto_setting and _too_few_per_class([k for _, k in val.val], size, auto_setting)
    if too_few:
        return None, None, too_few
    try:
        crop, depth = tm.cfg["data"].get("crop_pct", 1.0), tm.cfg["data"].get("bit_depth", "auto")
        cache = prediction_cache_dir(root, [val], "val", tm.size, crop, depth)
        # skipped without load_split's words: they said "--skip-bad-images" to a predict without it and listed
        # every file (200 lines), for images no prediction is made of
        read = load_images([p for p, _ in val.val], tm.size, cache, crop_pct=crop, skip_bad=True,
                           desc="loading val images", skip_note=None, bit_depth=depth)
    except UserError as exc:
        return None, None, f"its val images cannot be read ({one_line(str(exc))[:160]})"
    if read.bad:
        _say_val_left_out(name, read.bad, len(val.val), setting)
    images = read.images[read.valid]
    targets = torch.tensor([k for _, k in val.val], dtype=torch.long)[read.valid]
    if not bal.enough_images(len(targets), size):
        return None, None, f"{_images(len(targets), 'val')} for {size} classes: too few to decide on" + _lacking(
            tm.space.classes[tm.space.index(name)], targets)
    lo = tm.space.offsets[tm.space.index(name)]
    logits = compute_logits(tm.model, images, tm.normalize, device, desc=f"val of {name}")[:, lo:lo + size]
    return logits, targets, None


def _lacking(classes, targets: torch.Tensor, shown: int = 5) -> str:
    """The classes val has no image of, for the "too few to decide on" note: "9 val images for 4 classes" alone did
    not say that val lacked two of them (a reason to add val images of those)."""
    present = set(targets.tolist())
    absent = [c for k, c in enumerate(classes) if k not in present]
    if not absent:
        return ""
    return f" (val lacks {len(absent)} of the {len(classes)} classes: {some_of(absent, shown)})"


def _say_val_left_out(name: str, bad: list[tuple[str, str]], n_val: int, setting: str, shown: int = 3) -> None:
    """One line: the undecodable val images of dataset ``name`` left out of the balancing's reading of val, the
    first ``shown`` of them named and the rest counted."""
    listed = some_of([f"{p} ({why})" for p, why in bad], shown, str)
    print(one_line(f"warning: {len(bad)} of the {n_val} val images of {name} cannot be decoded and are left out of "
                   f"what {setting} reads on val to balance the test predictions (no test image is left out): "
                   f"{listed}"), file=sys.stderr, flush=True)


def _images(n: int, split: str) -> str:
    """`1 test image`, `3 test images`: the balancing notes read "1 test images for 10 classes"."""
    return f"{n} {split} image{'' if n == 1 else 's'}"


def _skew_untestable(val: tuple | None, n_classes: int, val_why: str | None) -> str | None:
    """Why the test split's proportions cannot be checked against the train split's (None: they can). The check
    reads the model's confusion on val, one column per class: a class val lacks leaves its column a guess."""
    if val is None:
        return val_why or "no usable val split"
    missing = n_classes - len(torch.unique(val[1]))
    return f"val lacks {missing} of the {n_classes} classes" if missing else None


def _test_prior(train_prior: torch.Tensor, val: tuple, test: torch.Tensor,
                from_train: bool = True) -> tuple[torch.Tensor, str]:
    """The class proportions to even the test predictions out to: the train split's or even ones, whichever the test
    predictions fit better, unless they fit neither (then the test split's own, estimated through the model's
    confusion on val), and where they come from ("train", or words). ``val`` (logits, targets) must hold every
    class (_skew_untestable); ``from_train``: False where ``train_prior`` is even for want of train images."""
    logits, targets = val
    even = torch.full_like(train_prior, 1.0 / len(train_prior))
    references = {"train": train_prior}
    if not torch.allclose(train_prior, even):  # uneven shots, with a test split that is often even all the same
        references["even"] = even
    fits = {name: bal.fits_proportions(logits, targets, test, prior) for name, prior in references.items()}
    best = max(fits, key=fits.get)  # the train split's on a tie
    if fits[best] >= bal.SKEW_P:
        if best == "train":
            return train_prior, "train"
        return even, f"even: the test predictions fit even proportions (p={fits['even']:.2g}) better than the " \
                     f"train split's (p={fits['train']:.2g})"
    confusion = bal.soft_confusion(logits.softmax(1), targets, len(train_prior))
    estimated = bal.estimate_prior(confusion, test.softmax(1))
    names = {"train": "the train split's proportions" if from_train else "even proportions", "even": "even ones"}
    fitted = ", ".join(f"p={p:.1g} for {names[name]}" for name, p in fits.items())
    return floored_shares(estimated, len(test)), f"estimated from the test predictions ({fitted})"


def floored_shares(shares: torch.Tensor, n_test: int) -> torch.Tensor:
    """``shares`` normalised with each class holding at least one test image's share: a class estimated at 0 would
    never be predicted again. The floor holds after the normalising too (a clamp before it left 9 floored classes
    of 100 at 0.0092 of 100 images): the floored classes' shares come out of the others', in proportion."""
    floor = min(1.0 / n_test, 1.0 / len(shares))
    shares = shares / shares.sum()
    low = shares < floor
    while True:  # scaling the others down can take one of them below the floor in turn
        rest = shares.masked_fill(low, 0.0)
        out = torch.where(low, torch.full_like(shares, floor), rest * (1 - floor * int(low.sum())) / rest.sum())
        if not bool((out < floor * (1 - 1e-6)).logical_and(~low).any()):
            return out
        low |= out < floor


def _balance_one(tm: TrainedModel, root: Path, name: str, test: torch.Tensor, how: str, device: torch.device,
                 setting: str) -> dict:
    """The balancing of one dataset's known-source predictions (``test``: its test logits in its own classes):
    whether it is used, with the class proportions aimed at and where they came from, under auto the val accuracies
    it was decided on, and its offsets (``_offsets``, not for summary.json); or why not."""
    size, n_test = tm.space.sizes[tm.space.index(name)], len(test)
    if how == "off":
        return {"used": False, "why": f"{setting} off"}
    if size < 2:
        return {"used": False, "why": "a single class: nothing to even out"}
    if not bal.enough_images(n_test, size):
        return {"used": False, "why": f"{_images(n_test, 'test')} for {size} classes: too few to even out"}
    train, why = _labelled_split(tm, root, name, "train")
    if train is not None and train.train:
        prior, source = bal.train_prior(torch.tensor([k for _, k in train.train], dtype=torch.long), size), "train"
    else:  # held-out data with only test/ (and val/): even is the assumption that favours no class
        prior, source = torch.full((size,), 1.0 / size), f"uniform: {why or 'no train images'}"
    val_logits, val_targets, val_why = _val_logits(tm, root, name, device, setting if how == "auto" else None,
                                                   setting)
    if how == "auto" and val_logits is None:
        return {"used": False, "why": val_why}
    val = (val_logits, val_targets) if val_logits is not None else None
    untestable = _skew_untestable(val, size, val_why)
    if untestable and how == "auto":  # evening out a skewed test split costs far more than balancing gains
        return {"used": False, "why": f"{untestable}, so a skewed test split could not be told apart"}
    # counted again on the images read (an undecodable one is left out); under `on` there may be no val at all
    too_few = _too_few_per_class(val_targets, size, setting) if how == "auto" else None
    if too_few:
        return {"used": False, "why": too_few}
    estimated = "train"
    if not untestable:
        prior, estimated = _test_prior(prior, val, test, from_train=source == "train")
    plan = {"used": True, "prior_from": source if estimated == "train" else estimated,
            "prior": [round(float(x), 4) for x in prior]}
    if untestable:  # --balance on: done as asked, but the user hears that the proportions were not checked
        plan["unchecked"] = untestable
    if how == "auto":
        plan.update(bal.val_decision(val_logits, val_targets))
    if plan["used"]:
        plan["_offsets"] = bal.class_offsets(test, prior)
    return plan


def balance_plan(tm: TrainedModel, root: Path, infos, data, logits: torch.Tensor, how: str, device: torch.device,
                 setting: str = "--balance") -> dict:
    """{dataset: its balancing} for the test datasets predicted (eval.balance's module docstring says why)."""
    if how not in bal.MODES:
        raise UserError(f"{setting} must be one of {', '.join(bal.MODES)}, not {how!r}.")
    plan = {}
    for info in infos:
        d = tm.space.index(info.name)
        lo, size = tm.space.offsets[d], tm.space.sizes[d]
        test = logits[data.dataset_ids == d][:, lo:lo + size]
        plan[info.name] = _balance_one(tm, Path(root), info.name, test, how, device, setting)
    return plan


def public(plan: dict) -> dict:
    """The plan as summary.json keeps it: without the offsets."""
    return {name: {k: v for k, v in p.items() if not k.startswith("_")} for name, p in plan.items()}


def balanced_logits(tm: TrainedModel, data, logits: torch.Tensor, plan: dict) -> torch.Tensor:
    """Known-source logits with each balanced dataset's offsets added to its classes (the other datasets' columns
    are masked in known-source mode anyway)."""
    out = logits.clone()
    for name, how in plan.items():
        if how["used"]:
            d = tm.space.index(name)
            rows, lo, size = data.dataset_ids == d, tm.space.offsets[d], tm.space.sizes[d]
            out[rows, lo:lo + size] += how["_offsets"]
    return out


def say_balance(plan: dict, how: str, who: str = "predict", setting: str = "--balance") -> None:
    """One line: which datasets' predictions were evened out, on what val evidence, and from which prior."""
    def part(p: dict) -> str:
        val = f" (val {p['val_plain']:.1f} -> {p['val_balanced']:.1f})" if "val_plain" in p else ""
        prior = f" [prior {p['prior_from']}]" if p["used"] and p.get("prior_from", "train") != "train" else ""
        if p["used"] and p.get("unchecked"):
            prior += f" [test proportions not checked: {p['unchecked']}]"
        return f"{val}{prior}" if p["used"] else f" not{val or ': ' + p.get('why', '')}"
    if how != "off" and plan:
        # datasets declined for the same reason share it: 12 small datasets repeated one long reason 12 times
        said: dict[str, list[str]] = {}
        for name, p in plan.items():
            said.setdefault(part(p), []).append(name)
        print(one_line(f"[{who}] class-balanced test predictions ({setting} {how}): "
                       f"{'; '.join(names_list(names) + text for text, names in said.items())}"), flush=True)


def recorded_balance(run_or_ckpt) -> str | None:
    """The run.balance a `fewshot run` folder wrote its pred_all.json and metrics.json with (summary.json's
    balanced_prediction), or None (another folder, a checkpoint of another run, no such record). ``run_or_ckpt`` is
    the run folder, or the stage that predicted (summary.json's predicted_with) or one of its checkpoints: `predict
    RUN/finetune` balanced with auto where `predict RUN` took the run's off, the same model predicted otherwise."""
    p = Path(run_or_ckpt)
    if p.is_dir() and not (p / "checkpoints").is_dir() and (p / "summary.json").is_file():
        return _summary_balance(p)  # the run folder: resolve_checkpoint reads the predicting stage the same way
    stage = p.parent.parent if p.is_file() and p.parent.name == "checkpoints" else p if p.is_dir() else None
    if stage is None or not (stage / "checkpoints").is_dir() or not (stage.parent / "summary.json").is_file():
        return None
    return _summary_balance(stage.parent, stage=stage.name)


def _summary_balance(run: Path, stage: str | None = None) -> str | None:
    """summary.json's run.balance of the `fewshot run` folder ``run``; with ``stage``, only where that stage is the
    one that predicted (another round's model is not what pred_all.json came from)."""
    from fewshot.config import canonical_value
    from fewshot.utils import loads_run_json

    try:
        summary = loads_run_json((run / "summary.json").read_text())
        if stage is not None and summary.get("predicted_with") != stage:
            return None
        setting = canonical_value("run.balance", summary.get("balanced_prediction", {}).get("setting"))
    except (OSError, ValueError, AttributeError, TypeError):
        return None  # an unreadable summary: resolve_checkpoint says so where it matters
    return setting if isinstance(setting, str) and setting in bal.MODES else None


def chosen_balance(run_or_ckpt, typed: str | None, who: str) -> str:
    """The balancing of known-source test predictions: ``typed`` (--balance), else the run.balance a `fewshot run`
    folder recorded, else auto. `predict RUN` of a run.balance=off run balanced with auto, so its predictions and
    `eval --split test` scores differed from the run's pred_all.json and metrics.json without a word."""
    recorded = recorded_balance(run_or_ckpt)
    if typed is None:
        if recorded not in (None, "auto"):
            print(one_line(f"[{who}] --balance {recorded}: the run.balance recorded for {run_or_ckpt} (the "
                           f"run's pred_all.json and metrics.json); pass --balance to choose another."), flush=True)
        return recorded or "auto"
    if recorded is not None and typed != recorded:
        made = "predictions" if who == "predict" else "test scores"
        print(one_line(f"fewshot {who}: note: --balance {typed} differs from the run.balance {recorded} recorded "
                       f"for {run_or_ckpt}: these {made} follow --balance {typed}, so they may differ from the "
                       f"run's pred_all.json and metrics.json."), file=sys.stderr, flush=True)
    return typed


def predict_run(run_or_ckpt, root, mode: str, device: torch.device,
                datasets: list[str] | str | None = None, skip_bad: bool = False,
                balance: str | None = None) -> tuple[dict, dict]:
    """pred_all.json content ({"n_parameters", "<dataset>": {"<id>": local class}}) and the routing.
    ``balance`` (known-source mode): auto | on | off, see fewshot.eval.balance; None: chosen_balance's default."""
    tm = load_trained(run_or_ckpt, device)
    list_datasets(Path(root))  # a missing or wrong --data is refused before "predicting with" says it started
    say_checkpoint(run_or_ckpt, tm, "predicting with")
    infos, data, logits = _test_logits(tm, root, device, datasets=datasets, skip_bad=skip_bad)
    if mode == "known":
        balance = chosen_balance(run_or_ckpt, balance, "predict")
        plan = balance_plan(tm, Path(root), infos, data, logits, balance, device)
        say_balance(by_folder(plan, infos), balance)
        logits = balanced_logits(tm, data, logits, plan)
    return _predictions(tm, infos, data, logits, mode)


def predict_and_score(run_or_ckpt, root, device: torch.device, mode: str = "known",
                      preloaded=None, score_test: bool = True,
                      unscorable: set[str] | frozenset[str] = frozenset(), balance: str = "auto",
                      balanced: dict | None = None, who: str = "predict",
                      setting: str = "--balance") -> tuple[dict, dict, dict | None]:
    """pred_all.json content, the routing, and the test metrics in both modes ({"known": ..., "unknown": ...})
    of the datasets with a usable answer key (None when there is none), from one pass over the test images.
    ``preloaded``: (test infos, ImageSet) already decoded at this model's image size, in its label space;
    ``unscorable``: datasets whose key was found unusable beforehand (not scored); ``balance``: the known-source
    predictions' balancing (auto | on | off, fewshot.eval.balance), its decision per dataset put in ``balanced``."""
    tm = load_trained(run_or_ckpt, device)
    infos, data, logits = _test_logits(tm, root, device, preloaded)
    plan = balance_plan(tm, Path(root), infos, data, logits, balance, device, setting)
    say_balance(by_folder(plan, infos), balance, who, setting)
    if balanced is not None:
        balanced.update(by_folder(public(plan), infos))
    known_logits = balanced_logits(tm, data, logits, plan)
    pred, routing = _predictions(tm, infos, data, known_logits if mode == "known" else logits, mode)
    keyed = [info for info in infos if info.answer_key is not None and info.name not in unscorable]
    if not score_test or not keyed:
        return pred, routing, None
    # datasets without an answer key are predicted but not scored: the mean is over the keyed ones
    in_keyed = torch.isin(data.dataset_ids, torch.tensor([tm.space.index(i.name) for i in keyed]))
    rows = in_keyed.nonzero().flatten().tolist()
    every_id = data.image_ids  # a property that parses every path: read per row, 1,300 test images took 13 s
    ids, dsids = [every_id[k] for k in rows], data.dataset_ids[in_keyed]
    targets = read_answer_keys(keyed, tm.space, ids, dsids)
    unscored = [info.name for info in infos if info not in keyed]
    scores = {m: {**score((known_logits if m == "known" else logits)[in_keyed], targets, dsids, tm.space, m,
                          tm.n_parameters), "split": "test",
                  "checkpoint": str(tm.path), **({"not_scored": unscored} if unscored else {}),
                  **({"balance": balance} if m == "known" else {})}  # as evaluate_run's: which predictions
              for m in ("known", "unknown")}
    return pred, routing, {m: folder_keyed(s, infos) for m, s in scores.items()}


def score_predictions(pred: dict, root: Path, class_names: dict | None = None, skip=(),
                      test_ids: dict | None = None, warn: bool = True) -> dict:
    """Accuracy of a pred_all.json against the answer keys, as a grader scores a submission (what `make demo`
    prints): every keyed test image counts, and one the file has no prediction for is a miss. ``class_names``
    {dataset: classes} lets keys name classes by folder name; ``skip``: datasets not to score; ``test_ids``
    {dataset: ids of its test images} (default: read from ROOT/<dataset>/test/). pred_all.json is keyed by the
    folder names, the others by the model's: matched by their composed (NFC) forms where the two differ."""
    def of(given, name: str):
        given = given or {}
        if name in given:
            return given[name]
        return next((v for k, v in given.items() if unicodedata.normalize("NFC", k) == unicodedata.normalize(
            "NFC", name)), None)

    skipped = {unicodedata.normalize("NFC", n) for n in skip}
    result = {}
    for name, preds in pred.items():
        if name == "n_parameters" or unicodedata.normalize("NFC", name) in skipped:
            continue
        key_file = Path(root) / name / "test_labels.json"
        if not key_file.is_file():
            continue
        key = load_answer_key(key_file, class_names=of(class_names, name))
        ids = of(test_ids, name)
        if ids is None:
            ids = [i for i, _ in scan_root(root, [name], splits=("test",))[0].test]
        if warn:
            warn_about_unknown_ids(key_file, key, ids)
        scored = [i for i in ids if i in key]  # as eval: the test images, not the ids the key lists
        hits = sum(1 for i in scored if preds.get(i) == key[i])
        result[name] = {"acc1": 100.0 * hits / max(1, len(scored)), "n": len(scored)}
    return result


# No output of ours is near this: a pred_all.json of 100k test images is ~3 MB, metrics and routing files smaller.
# A larger file is the user's (a dataset dump, a log), told apart without reading gigabytes into memory to parse.
OWN_OUTPUT_MAX_BYTES = 64 * 2**20


def _read_own_output(path: Path):
    """The JSON in ``path``, or None where it holds none of ours (not a regular file, over OWN_OUTPUT_MAX_BYTES,
    unreadable, not UTF-8, not JSON, nested too deep). Its size is looked up first: the whole file was read."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > OWN_OUTPUT_MAX_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def holds_predictions(path: Path) -> bool:
    """Whether ``path`` holds a pred_all.json as `predict` writes it ({"n_parameters": int, "<dataset>": {"<id>":
    int}}): the only file `predict --out` may replace. Judged by content, not name or place: `--out notes.json`
    replaced the user's notes without a word."""
    data = _read_own_output(path)
    if not isinstance(data, dict):
        return False
    n = data.get("n_parameters")
    return isinstance(n, int) and not isinstance(n, bool) and all(
        isinstance(v, dict) and all(isinstance(c, int) and not isinstance(c, bool) for c in v.values())
        for k, v in data.items() if k != "n_parameters")


def _holds_nothing(path: Path) -> bool:
    """An empty file, or one holding only `{}` or blanks: a placeholder (`touch pred.json`), nothing to lose."""
    try:
        if path.stat().st_size > 64:
            return False
        return path.read_bytes().strip() in (b"", b"{}")
    except OSError:
        return False


def holds_routing(path: Path) -> bool:
    """Whether ``path`` is a routing file as `predict --mode unknown` writes it ({"<dataset>": {"<id>": "<dataset
    it was routed to>"}}), a plain file and not a link (predict never writes one): the only .routing.json beside
    --out that predict may replace or delete. A user's own n.routing.json beside `--out n.json` was deleted, and
    so was one holding `{}` (a placeholder of the user's: predict writes every dataset it predicted)."""
    if path.is_symlink() or not path.is_file():
        return False
    data = _read_own_output(path)
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and all(isinstance(d, str) for d in v.values()) for v in data.values())


# what each command's metrics.json holds, by which an earlier one is told from a user's file: `eval --out` names its
# checkpoint, `probe` its protocol
EVAL_METRICS = ("datasets", "split", "checkpoint")
PROBE_METRICS = ("datasets", "split", "protocol")


def holds_metrics(path: Path, fields: tuple[str, ...]) -> bool:
    """Whether ``path`` holds a metrics dict with ``fields`` (EVAL_METRICS, PROBE_METRICS): an earlier result of the
    command that writes them. The one rule (layout's check inside a run folder asks it too), by content, not name."""
    data = _read_own_output(path)
    return isinstance(data, dict) and isinstance(data.get("datasets"), dict) and set(fields) <= set(data)


def check_own_output(out: Path, shown: str, command: str, holds, content: str, advice: str,
                     what: str = "result") -> None:
    """Refuse, before any work, to replace a file that ``command`` did not write: ``out`` (``shown`` as said) must be
    new, empty (or `{}`), a pipe or device, or hold that command's earlier result (``holds(out)``; ``content``
    names what that holds). `eval --out notes.md` and probe's metrics.json replaced the user's files (exit 0)."""
    from fewshot.utils import is_special_file

    if out.is_file() and not is_special_file(out) and not (_holds_nothing(out) or holds(out)):
        raise UserError(f"{shown} already holds a file that is not an earlier {what} of `fewshot {command}` (no "
                        f"{content}); {command} replaces only its own results. {advice}")


def check_predict_out(out: Path, routing_file: Path, shown: str, unknown: bool) -> None:
    """Refuse, before any work, to replace a file that `predict` did not write: --out (``shown``, as typed) must be
    new, empty (or `{}`) or an earlier prediction, and with --mode unknown so must the routing file beside it.
    Inside a run or data folder check_result_file_is_not_an_input guards more; this holds everywhere."""
    check_own_output(out, f"--out {shown}", "predict", holds_predictions,
                     "pred_all.json content: n_parameters and each dataset's predictions",
                     f"Give --out a new file name, or move {shown} away first.", what="prediction")
    if unknown and (routing_file.exists() or routing_file.is_symlink()) and not holds_routing(routing_file):
        raise UserError(f"--out {shown}: --mode unknown also writes each image's predicted dataset beside it, to "
                        f"{routing_file}, which already holds a file that is not an earlier routing file of "
                        f"`fewshot predict`; move {routing_file} away or choose another --out.")
