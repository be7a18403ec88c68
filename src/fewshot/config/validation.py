"""The check of a resolved config, field by field (type, choices, range) and the aug.* lists, so that a bad value is
refused at start-up with its field's name rather than as a traceback minutes into a run."""

from __future__ import annotations

import math
from typing import Any

from fewshot.config.defaults import DEFAULTS
from fewshot.config.fields import (AUTO_OR_WHOLE, CHOICES, OPTIONAL, TEXT, TEXT_LIST, FieldError, _as_number,
                                   _is_whole, _kind, field_words, is_text_list)
from fewshot.config.memory import check_moco_memory
from fewshot.errors import UserError


AT_LEAST = {"model.img_size": 1, "train.threads": 1, "moco.mlp_hidden": 1, "run.queue_size": 1,
            "train.batch_size": 1, "train.epochs": 1, "moco.queue_size": 1, "moco.dim": 1, "moco.knn_k": 1,
            "train.eval_every": 1, "train.save_interval_s": 0, "moco.knn_every": 1, "data.repeats": 1,
            "data.randaug_ops": 0, "data.randaug_group": 1, "train.save_every_steps": 0, "train.skip_nonfinite": 0,
            "semi.mu": 1, "semi.weight": 0, "moco.split_bn_groups": 1, "run.pretrain_batch_size": 2,
            "run.min_epochs": 1, "run.pseudo_labelled_repeat": 1, "run.finetune_backbone_mult": 0,
            "optim.weight_decay": 0, "optim.grad_clip": 0,
            "optim.backbone_lr_mult": 0, "sched.warmup_epochs": 0, "sched.min_lr": 0, "sched.warmup_lr": 0,
            "data.cache_max_gb": 0, "run.pseudo_max_per_shot": 1}
POSITIVE = ("optim.lr", "run.pretrain_lr", "train.budget_minutes", "run.finetune_lr", "moco.temperature",
            "moco.knn_t")  # > 0
# the most minutes a budget may be (`fewshot run --budget-minutes`, train.budget_minutes): about 19 years, beyond
# any run, and far from where the budget's arithmetic in seconds overflows (1e308 minutes passed as finite, became
# inf seconds, and crashed the started run; train.budget_minutes=1e308 meant no time limit without a word)
MAX_BUDGET_MINUTES = 1e7
# what an empty text field should hold instead, as its refusal says
EMPTY_TEXT_ADVICE = {"model.name": "a timm model name (`fewshot models PATTERN` lists them)"}

# the most a whole-number field (and a float one used as a count) may be: far above any use, and within what torch's
# 64-bit arguments take (data.randaug_group=1e19 crashed the started run with an OverflowError, 1e308 warmup epochs
# too); AT_MOST has the fields whose own bound is far smaller, each with why
MAX_COUNT = 2**31 - 1
# (the queues and the fine-tuning batch are left to config/memory.py, whose refusal says what would not fit)
COUNTS = ("train.threads", "moco.mlp_hidden", "train.epochs", "moco.dim", "moco.knn_k", "train.eval_every",
          "moco.knn_every", "data.randaug_group", "train.save_every_steps", "train.skip_nonfinite", "semi.mu",
          "moco.split_bn_groups", "run.pretrain_batch_size", "run.min_epochs", "run.pseudo_labelled_repeat",
          "run.pseudo_max_per_shot", "run.pseudo_rounds", "sched.warmup_epochs")
AT_MOST = {  # field: (bound, why): each bound leaves room far beyond the usual value
    "data.randaug_ops": (100, "RandAugment applies that many transforms in a row to each augmented image; 2 is "
                              "usual, and 1e19 never finished its first batch"),
    "data.repeats": (1024, "the repeat sampler's copies of each image in a row, whose epoch order it builds that "
                           "many times as long as the training set; 3 is usual"),
}

INTERVALS = {  # (low, high, low included[, high included]): fractions and probabilities
    "data.crop_pct": (0.0, 1.0, False), "data.randaug_p": (0.0, 1.0, True), "aug.jitter_p": (0.0, 1.0, True),
    "aug.gray_p": (0.0, 1.0, True), "aug.blur_p": (0.0, 1.0, True), "aug.flip_p": (0.0, 1.0, True),
    "model.width": (0.0, 4.0, False), "model.img_size": (0, 1024, False, True),  # backbone.MAX_IMG_SIZE
    "data.hflip": (0.0, 1.0, True), "data.hflip_symmetric": (0.0, 1.0, True), "data.gray_p": (0.0, 1.0, True),
    "data.randaug_magnitude": (0, 30, True),  # torchvision's 31 magnitude bins
    "model.drop_path": (0.0, 1.0, True, False), "optim.label_smoothing": (0.0, 1.0, True, False),
    "optim.momentum": (0.0, 1.0, True, False), "train.ema_decay": (0.0, 1.0, True, False),
    "semi.threshold": (0.0, 1.0, True), "moco.momentum": (0.0, 1.0, True), "run.moco_momentum": (0.0, 1.0, True),
    "semi.moco_momentum": (0.0, 1.0, True),
    "run.pseudo_threshold": (0.0, 1.0, True), "data.mix_p": (0.0, 1.0, True),
    "data.mixup_alpha": (0.0, 100.0, True, True), "data.cutmix_alpha": (0.0, 100.0, True, True),  # Beta(a, a)
    "train.seed": (-2**63, 2**64 - 1, True, True),  # what torch.manual_seed takes: a larger one was an internal error
}  # the run.* shares are checked by the pipeline (run_startup.check_run_settings)


def _bound(x) -> str:
    return str(x) if _is_whole(x) else f"{x:g}"  # a seed's bound as digits, not 9.22337e+18


def validate(cfg: dict, defaults: dict | None = None, path: str = "", typed: dict | None = None,
             recorded: bool = False) -> dict:
    """Refuse a value of the wrong type or range now, with the field's name, rather than as a traceback
    minutes into a run. The type is the default's: `train.epochs=ten` or `model.small_stem=2` is an error.
    ``typed``: dotted -> the word as typed on the command line, where YAML read it as another value (`on` as
    true), so that a message shows what the user wrote. ``recorded``: ``cfg`` is a run's own config.yaml (--resume),
    whose budget an older fewshot took above MAX_BUDGET_MINUTES (and its AT_MOST values, _check_at_most): only its
    seconds need be finite, or the run could never be resumed."""
    defaults = DEFAULTS if defaults is None else defaults
    for key, default in defaults.items():
        if key not in cfg:
            continue
        dotted = f"{path}{key}"
        if isinstance(default, dict):
            if isinstance(cfg[key], dict):
                validate(cfg[key], default, dotted + ".", typed, recorded)
            continue
        _check_field(cfg, key, dotted, default, typed or {}, recorded)
    if not path and isinstance(cfg.get("aug"), dict):
        check_augmentation_lists(cfg["aug"])
    if not path:
        check_moco_memory(cfg)
    return cfg


def _shown(dotted: str, value: Any, typed: dict) -> str:
    """``value`` as a message shows it: the word typed where YAML changed it (train.amp=on is not 'True')."""
    if dotted in typed:
        return repr(typed[dotted])
    if isinstance(value, bool):
        return str(value).lower()  # as YAML writes it (a config file's `on` reads as true)
    return repr(value)


def _normalise_field(cfg: dict, key: str, dotted: str, default: Any) -> Any:
    """The field's value in the form validation compares (texts, paths and numbers YAML read otherwise), stored
    back into ``cfg``."""
    value = cfg[key]
    # `weights: ''` / `cache_dir: false` meant "none" before; a 0 is no path (`0 in ("", False)` made it none)
    if dotted in TEXT and (value == "" or value is False):
        value = cfg[key] = None
    if dotted in TEXT_LIST and isinstance(value, (int, list)) and not isinstance(value, bool):
        # YAML reads a dataset folder named 2019 as a number
        value = cfg[key] = ([str(v) if _is_whole(v) else v for v in value] if isinstance(value, list)
                            else str(value))
    if isinstance(default, list) and isinstance(value, list):  # aug.scale: [1e-1, 1] read 1e-1 as text
        value = cfg[key] = [_as_number(v) for v in value]
    kind = _kind(default)
    if kind in ("a number", "a whole number"):  # YAML 1.1 reads `lr: 1e-3` in a config file as a string
        value = cfg[key] = _as_number(value)
    if kind == "a whole number" and isinstance(value, float) and value.is_integer():
        value = cfg[key] = int(value)  # `2.0` from a YAML file means 2
    return value


def _check_field(cfg: dict, key: str, dotted: str, default: Any, typed: dict, recorded: bool = False) -> None:
    """One field's type, choices and range (validate; ``recorded`` as there)."""
    if dotted in AUTO_OR_WHOLE:
        _check_auto_or_whole(cfg, key, dotted, typed)
        return
    if default is None and dotted in OPTIONAL and cfg[key] is not None:
        default = OPTIONAL[dotted]
    value = _normalise_field(cfg, key, dotted, default)
    shown = _shown(dotted, value, typed)
    if dotted in TEXT and value is not None and not (isinstance(value, str) and value.strip()):
        raise FieldError(dotted, f"{dotted} must be a path, not {shown}.")
    if dotted in TEXT_LIST and value is not None and not is_text_list(value):
        raise FieldError(dotted, f"{dotted} must be a name or a list of names, not {shown}.")
    kind = _kind(default)
    if dotted == "train.budget_minutes" and isinstance(value, float) and not math.isfinite(value):
        raise _budget_refusal(dotted, shown)  # inf is no time limit only by accident: null says it
    if kind == "text" and dotted in CHOICES:
        kind = None  # a few words, some of which YAML reads as true/false: checked against CHOICES below
    ok = (kind is None or value is None and default is None
          or kind == "true or false" and isinstance(value, bool)
          or kind == "text" and isinstance(value, str) and bool(value.strip())
          or kind == "a whole number" and isinstance(value, int) and not isinstance(value, bool)
          or kind == "a number" and isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))  # `.inf` / `nan` would only fail deep in a run
    if not ok and kind == "text" and isinstance(value, str):  # '' is text: "must be text, not ''" said nothing
        raise FieldError(dotted, f"{dotted} is empty: give {EMPTY_TEXT_ADVICE.get(dotted, 'a value')}.")
    if not ok:
        raise FieldError(dotted, f"{dotted} must be {kind}, not {shown}.")
    if dotted in CHOICES and not any(value == c and isinstance(value, bool) == isinstance(c, bool)
                                     for c in CHOICES[dotted]):  # 1 is not `true`
        raise FieldError(dotted, f"{dotted} must be {field_words(dotted)}, not {shown}.")
    _check_range(dotted, value, shown, recorded)


def _check_auto_or_whole(cfg: dict, key: str, dotted: str, typed: dict) -> None:
    """A field that is `auto` or a whole number in a range (data.bit_depth): its default is text, so the text
    check would refuse `data.bit_depth=12`, and any text (`abc`) would pass it."""
    low, high, _ = AUTO_OR_WHOLE[dotted]
    value = cfg[key]
    if isinstance(value, str) and value.strip().lower() == "auto":
        cfg[key] = "auto"
        return
    value = _as_number(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # `12.0` from a YAML file, or `"12"` quoted, means 12
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        cfg[key] = value
        return
    raise FieldError(dotted, f"{dotted} must be {field_words(dotted)}, not {_shown(dotted, cfg[key], typed)}.")


def _budget_refusal(dotted: str, shown: str) -> FieldError:
    """A budget that is not finite or beyond any run (MAX_BUDGET_MINUTES), refused as `fewshot run
    --budget-minutes` refuses it: 1e308 minutes became inf seconds, a time limit that never came."""
    return FieldError(dotted, f"{dotted} must be a positive number of minutes up to {MAX_BUDGET_MINUTES:,.0f} (about "
                              f"19 years), not {shown}; leave it unset (null) for no time limit.")


def _check_range(dotted: str, value: Any, shown: str, recorded: bool = False) -> None:
    """AT_LEAST, POSITIVE and INTERVALS for one field (``recorded``: a run's own config.yaml, as in validate)."""
    if value is None:
        return
    if dotted in AT_LEAST and value < AT_LEAST[dotted]:
        raise FieldError(dotted, f"{dotted} must be at least {AT_LEAST[dotted]}, not {shown}.")
    if dotted in POSITIVE and not value > 0:
        raise FieldError(dotted, f"{dotted} must be greater than 0, not {shown}.")
    if dotted == "train.budget_minutes" and recorded and not math.isfinite(value * 60.0):
        raise FieldError(dotted, f"{dotted} must be a number of minutes whose seconds are finite, not {shown}; set "
                                 f"a smaller one (or null for no time limit) in the run's config.yaml.")
    if dotted == "train.budget_minutes" and not recorded and value > MAX_BUDGET_MINUTES:
        raise _budget_refusal(dotted, shown)
    _check_at_most(dotted, value, shown, recorded)
    if dotted in INTERVALS:
        low, high, closed, *rest = INTERVALS[dotted]
        high_closed = rest[0] if rest else True
        if not ((low <= value if closed else low < value) and (value <= high if high_closed else value < high)):
            raise FieldError(dotted, f"{dotted} must be in {'[' if closed else '('}{_bound(low)}, {_bound(high)}"
                                     f"{']' if high_closed else ')'}, not {shown}.")


def _check_at_most(dotted: str, value: Any, shown: str, recorded: bool = False) -> None:
    """COUNTS and AT_MOST: a huge count passed validation and crashed the started run (exit 1, a traceback) or
    never finished it. A run's own config.yaml (``recorded``) keeps AT_MOST's values, as it keeps a budget above
    MAX_BUDGET_MINUTES: a run of data.repeats 2000 (allowed before the bound, and unread without the repeat sampler)
    could not be resumed; a resume compares them with its last.pt, so an edit is refused there. MAX_COUNT stays (the
    counts found above it crashed their runs), and its refusal of a run's file says where to correct it."""
    if isinstance(value, int) and value > 10**15:
        shown = f"{float(value):g}"  # 1e+30, as typed, not its 31 digits
    if dotted in AT_MOST and value > AT_MOST[dotted][0] and not recorded:
        bound, why = AT_MOST[dotted]
        raise FieldError(dotted, f"{dotted} must be at most {bound} ({why}), not {shown}.")
    if dotted in COUNTS and value > MAX_COUNT:
        fix = "; set a smaller one in the run's config.yaml" if recorded else ""
        raise FieldError(dotted, f"{dotted} must be at most {MAX_COUNT} (2**31 - 1), not {shown}{fix}.")


def check_augmentation_lists(aug: dict) -> None:
    """aug.scale = [low, high] crop area fractions; aug.jitter = [brightness, contrast, saturation, hue]."""
    def numbers(value, n: int) -> bool:
        return (isinstance(value, (list, tuple)) and len(value) == n
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))

    scale, jitter = aug.get("scale"), aug.get("jitter")
    _refuse_non_finite("scale", scale, ("low", "high"), "crop area fractions with 0 < low <= high <= 1, e.g. "
                       "[0.2, 1.0]")
    _refuse_non_finite("jitter", jitter, ("brightness", "contrast", "saturation", "hue"),
                       "a number >= 0 (hue at most 0.5), e.g. 0.4, or 0 to turn that jitter off")
    if scale is not None and not (numbers(scale, 2) and 0 < scale[0] <= scale[1] <= 1):
        raise UserError(f"aug.scale must be [low, high] with 0 < low <= high <= 1 (crop area fractions), "
                        f"not {scale!r}.")
    if jitter is not None and not (numbers(jitter, 4) and min(jitter[:3]) >= 0 and 0 <= jitter[3] <= 0.5):
        raise UserError(f"aug.jitter must be [brightness, contrast, saturation, hue], each >= 0 and hue <= 0.5, "
                        f"not {jitter!r}.")


def _refuse_non_finite(field: str, value, slots: tuple[str, ...], what: str) -> None:
    """A NaN or infinity in an aug.* list, named with its slot: the range checks compare with min(), which passes
    over a NaN that is not first (`aug.jitter=[0.4,.nan,0.4,0.1]` ran with contrast jitter off, `.nan` in the run's
    config.yaml), and an infinite brightness only stopped the run at its first step as a NaN loss."""
    if not isinstance(value, (list, tuple)) or len(value) != len(slots):
        return  # the shape is the range check's to refuse
    for i, (slot, v) in enumerate(zip(slots, value)):
        if isinstance(v, float) and not math.isfinite(v):
            word = ".nan" if math.isnan(v) else ".inf" if v > 0 else "-.inf"  # as YAML writes it
            raise UserError(f"aug.{field} must hold finite numbers, but its {slot} (item {i + 1} of {len(slots)}) "
                            f"is {word}; give {what}.")
