"""The plan of the class balancing of known-source test predictions: per dataset, whether it is used, towards which
class proportions and on what val evidence, and the run.balance a `fewshot run` recorded. The math (offsets, the
skew test, the val decision) is eval/balance.py's; this module reads the model and the data for it, and predict
applies the plan."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fewshot.data.names import grouped_names, some_of
from fewshot.errors import UserError, one_line
from fewshot.eval import balance as bal
from fewshot.eval.evaluate import compute_logits
from fewshot.eval.model_data import _labelled_split, prediction_cache_dir
from fewshot.train.checkpoint import _a_runs_checkpoints

if TYPE_CHECKING:
    from fewshot.eval.predict import TrainedModel


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
    from fewshot.data.fit import fit_of

    size = tm.space.sizes[tm.space.index(name)]
    val, why = _labelled_split(tm, root, name, "val")
    if val is None:
        return None, None, why
    too_few = auto_setting and _too_few_per_class([k for _, k in val.val], size, auto_setting)
    if too_few:
        return None, None, too_few
    try:
        crop, depth = tm.cfg["data"].get("crop_pct", 1.0), tm.cfg["data"].get("bit_depth", "auto")
        fit = fit_of(tm.cfg, [val], root)  # as the run decoded it (a run from before data.resize: crop)
        cache = prediction_cache_dir(root, [val], "val", tm.size, crop, depth, fit)
        # skipped without load_split's words: they said "--skip-bad-images" to a predict without it and listed
        # every file (200 lines), for images no prediction is made of
        read = load_images([p for p, _ in val.val], tm.size, cache, crop_pct=crop, skip_bad=True,
                           desc="loading val images", skip_note=None, bit_depth=depth, resize=fit)
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
    # uneven shots, with a test split that is often even all the same. Not val's own proportions as a third: where
    # the test split was in the train split's, val's won 11-30 of 80 noisy draws and cost more splits than plain
    if not torch.allclose(train_prior, even):
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
    return aimed_plan(prior, source, val, test, how, untestable)


def aimed_plan(prior: torch.Tensor, source: str, val: tuple | None, test: torch.Tensor, how: str,
               untestable: str | None = None) -> dict:
    """_balance_one's plan once val is read: the proportions aimed at (``prior``: the train split's, from
    ``source``), under auto the val decision, and the offsets. Apart, so that benchmarks/balance_priors.py scores
    it on cached logits. With uneven shots auto also judges on val re-weighted to the aim wherever val's shares
    differ from it (bal.val_decision)."""
    uneven = source == "train" and not torch.allclose(prior, torch.full_like(prior, 1.0 / len(prior)))
    estimated = "train"
    if not untestable:
        prior, estimated = _test_prior(prior, val, test, from_train=source == "train")
    plan = {"used": True, "prior_from": source if estimated == "train" else estimated,
            "prior": [round(float(x), 4) for x in prior]}
    if untestable:  # --balance on: done as asked, but the user hears that the proportions were not checked
        plan["unchecked"] = untestable
    if how == "auto":
        plan.update(bal.val_decision(val[0], val[1], aim=prior if uneven else None))
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
        val = f" (val {p['val_plain']:.1f} -> {p['val_balanced']:.1f}{_weighted(p)})" if "val_plain" in p else ""
        prior = f" [prior {p['prior_from']}]" if p["used"] and p.get("prior_from", "train") != "train" else ""
        if p["used"] and p.get("unchecked"):
            prior += f" [test proportions not checked: {p['unchecked']}]"
        return f"{val}{prior}" if p["used"] else f" not{val or ': ' + p.get('why', '')}"
    if how != "off" and plan:
        # datasets declined for the same reason share it: 12 small datasets repeated one long reason 12 times
        said = grouped_names((name, part(p)) for name, p in plan.items())
        print(one_line(f"[{who}] class-balanced test predictions ({setting} {how}): "
                       f"{'; '.join(names + text for names, text in said)}"), flush=True)


def _weighted(p: dict) -> str:
    """The val accuracies re-weighted to the proportions aimed at, named, where val's shares differ from them (uneven
    shots): "the aimed proportions" did not say which, and for the train split's no [prior ...] follows."""
    if "val_weighted_to" not in p:
        return ""
    return f"; re-weighted to {aim_words(p.get('prior_from'))} {p['val_weighted_plain']:.1f} -> " \
           f"{p['val_weighted_balanced']:.1f}"


def aim_words(prior_from) -> str:
    """Which proportions a plan aimed at (its prior_from), in a few words for a sentence."""
    if not isinstance(prior_from, str) or prior_from == "train":
        return "the train split's proportions"
    if prior_from.startswith("even"):
        return "even proportions"
    return "the estimated proportions" if prior_from.startswith("estimated") else "the proportions aimed at"


def recorded_balance(run_or_ckpt) -> str | None:
    """The run.balance a `fewshot run` folder wrote its pred_all.json and metrics.json with (summary.json's
    balanced_prediction), or None (another folder, a checkpoint of another run, no such record). ``run_or_ckpt`` is
    the run folder, or the stage that predicted (summary.json's predicted_with) or one of its checkpoints: `predict
    RUN/finetune` balanced with auto where `predict RUN` took the run's off, the same model predicted otherwise."""
    p = Path(run_or_ckpt)
    if p.is_dir() and _a_runs_checkpoints(p):
        p = p.parent  # `predict RUN/finetune/checkpoints` balances as `predict RUN/finetune` (resolve_checkpoint)
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
