"""Load a trained run for evaluation and prediction; write metrics.json and pred_all.json.

The root's data read in the model's terms (model_data), the answer keys (answer_keys), the balancing's plan
(balancing) and the checks of the files these commands write (output_files) are modules of their own."""

from __future__ import annotations

import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from fewshot.config.recorded import resize_record
from fewshot.data.label_space import LabelSpace
from fewshot.data.fit import fit_of
from fewshot.data.layout import scan_root
from fewshot.data.names import names_list, usable_datasets_hint
from fewshot.data.roots import list_datasets, run_root_advice
from fewshot.data.sets import load_split
from fewshot.data.shape_change import shape_change_notes, training_shapes
from fewshot.data.transforms import Normalize
from fewshot.data.warn_once import warn_once
from fewshot.errors import CheckpointError, UserError, one_line, printable
from fewshot.eval.answer_keys import check_answer_keys, load_answer_key, read_answer_keys, warn_about_unknown_ids
from fewshot.eval.balancing import balance_plan, balanced_logits, chosen_balance, public, say_balance
from fewshot.eval.evaluate import compute_logits, score
from fewshot.eval.model_data import (_chosen_datasets, _in_model_classes, _usable_datasets, prediction_cache_dir,
                                     warn_about_blank_test_images, warn_about_unseen_datasets,
                                     warn_about_what_is_not_predicted)
from fewshot.models.backbone import MAX_IMG_SIZE, MIN_IMG_SIZE, RECORDED, mean_std, timm_name
from fewshot.models.classifier import HeadCountError, build_classifier, check_head_count
from fewshot.models.state_checks import check_state_fits, infinity_problem, state_value_problem
from fewshot.train.checkpoint import load_checkpoint, logged_epoch, resolve_checkpoint

MISROUTED = -1  # pred_all.json entry of an image that unknown-source mode routed to another dataset
# the data settings eval and predict read from a checkpoint's config (its images are decoded as the run's were);
# skip_bad_images is only checked: the command's own --skip-bad-images decides for the images it reads (hunt hBY #2)
RECORDED_DATA = ("crop_pct", "bit_depth", "skip_bad_images", "resize")


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
        resize_record(cfg, f"checkpoint {path}")  # how each dataset was decoded: a hand edit met a TypeError
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


def _others_keyed(entry, infos):
    """A dataset's scores with the datasets its images were routed to (routed_to_others) named by folder too."""
    if isinstance(entry, dict) and isinstance(entry.get("routed_to_others"), dict):
        return {**entry, "routed_to_others": by_folder(entry["routed_to_others"], infos)}
    return entry


def folder_keyed(metrics: dict, infos) -> dict:
    """score's metrics with their datasets (and not_scored) named as by_folder names them."""
    out = dict(metrics)
    if isinstance(metrics.get("datasets"), dict):
        out["datasets"] = by_folder({name: _others_keyed(v, infos) for name, v in metrics["datasets"].items()}, infos)
    if isinstance(metrics.get("not_scored"), list):
        out["not_scored"] = list(by_folder(dict.fromkeys(metrics["not_scored"]), infos))
    return out


def _data_for(tm: TrainedModel, root: Path, split: str, datasets: list[str] | str | None = None,
              skip_bad: bool = False, check=None, scoring: bool = False):
    """``skip_bad`` (the command's --skip-bad-images; not the run's data.skip_bad_images, which was about its
    training images: a test image broken since then was predicted from a blank image, exit 0): undecodable images
    are listed and left out, except test images, which keep a blank row so that pred_all.json holds every id (and a
    test score, ``scoring``, counts them as the guesses they are). ``check(infos)`` runs before any image is decoded
    (answer keys: a bad one was reported after 52 s of decoding)."""
    chosen = _chosen_datasets(tm, datasets)
    try:
        infos = scan_root(root, chosen, splits=(split,))
    except UserError as exc:
        here = [] if datasets is not None else _usable_datasets(tm, root, chosen, split)
        if not here or len(here) == len(chosen):
            raise
        raise UserError(_then(exc, usable_datasets_hint(f"The model knows {names_list(chosen)}", here,
                                                        f"a usable {split} split"))) from None
    infos = [_in_model_classes(info, tm.space.classes[tm.space.index(info.name)], split) for info in infos]
    if split == "test":
        warn_about_what_is_not_predicted(tm, root, infos, datasets, "not scored" if scoring else "not predicted")
    elif scoring:  # eval's val score leaves out a dataset the model does not know as its test score does: said alike
        warn_about_unseen_datasets(tm, root, datasets, "not scored")  # (not the report's val analysis: it scores none)
    if check is not None:
        check(infos)
    d = tm.cfg["data"]
    fit = fit_of(tm.cfg, infos, root)  # as the run decoded each dataset (a run from before data.resize: crop)
    warn_once(shape_change_notes(infos, fit, d.get("resize", "crop"), tm.size, training_shapes(tm.cfg)), "note")
    cache = prediction_cache_dir(root, infos, split, tm.size, d.get("crop_pct", 1.0), d.get("bit_depth", "auto"), fit)
    data = load_split(infos, split, tm.space, tm.size, cache, d.get("crop_pct", 1.0),
                      skip_bad, bit_depth=d.get("bit_depth", "auto"),
                      resize=fit)
    if split == "test":
        warn_about_blank_test_images(data, scoring)
    return infos, data


def _check_root(tm: TrainedModel, root, split: str = "test") -> None:
    """--data refused as training refuses it, but a missing one is pointed at the run's own root (data.root of its
    config), not at building the demo data there, which holds none of the run's datasets. Test-only datasets count
    for a "did you mean" only where ``split`` is test: `eval --split val` was pointed at one, and then refused."""
    list_datasets(Path(root), missing=run_root_advice(tm.cfg.get("data", {}).get("root")), demo=False,
                  tests=split == "test")


def evaluate_run(run_or_ckpt, root, mode: str, device: torch.device, split: str = "val",
                 datasets: list[str] | str | None = None, skip_bad: bool = False, balance: str | None = None) -> dict:
    """Accuracy on the val or test split. ``balance`` (known-source test scores only: the val split is what `auto`
    decides on): as `fewshot predict --balance`, so that a test score matches the predictions (None: the run's
    recorded run.balance, else auto, as chosen_balance says)."""
    tm = load_trained(run_or_ckpt, device)
    _check_root(tm, root, split)
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


def predict_run(run_or_ckpt, root, mode: str, device: torch.device,
                datasets: list[str] | str | None = None, skip_bad: bool = False,
                balance: str | None = None) -> tuple[dict, dict]:
    """pred_all.json content ({"n_parameters", "<dataset>": {"<id>": local class}}) and the routing.
    ``balance`` (known-source mode): auto | on | off, see fewshot.eval.balance; None: chosen_balance's default."""
    tm = load_trained(run_or_ckpt, device)
    _check_root(tm, root)  # a missing or wrong --data is refused before "predicting with" says it started
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
