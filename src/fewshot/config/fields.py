"""What kind of value each field takes (a path, names, a number or null, one of a few words) and how a value is
shown: shared by the parsing of key=value words, validation, messages and the resume's comparison, so that all of
them describe a field the same way."""

from __future__ import annotations

import math
from typing import Any

from fewshot.errors import UserError


TEXT = ("model.weights", "data.root", "data.cache_dir")  # None by default, a path when given
TEXT_LIST = ("data.datasets", "data.unlabeled")  # None, one text (datasets: comma-separated) or a list of texts
OPTIONAL = {  # None by default (resolved later), a number when given
    "optim.lr": 0.0, "optim.backbone_lr_mult": 0.0, "model.img_size": 0, "train.threads": 0,
    "train.budget_minutes": 0.0, "moco.mlp_hidden": 0, "run.pretrain_lr": 0.0, "run.queue_size": 0,
}
OPTIONAL_NULL = {  # what null means for each OPTIONAL field, and a value to show as an example
    "optim.lr": ("the rate the command chooses at run time (docs/recipes.md)", "3e-4"),
    "optim.backbone_lr_mult": ("the multiplier chosen at run time (0.1 with --weights, else 1)", "0.1"),
    "model.img_size": ("the model's default input size", "64"), "train.threads": ("one thread per core", "4"),
    "train.budget_minutes": ("no time limit", "10"), "moco.mlp_hidden": ("the backbone's feature width", "2048"),
    "run.pretrain_lr": ("the rate scaled from the batch size", "0.03"),
    "run.queue_size": ("a queue of about half the pool", "1024"),
}


# fields that are `auto` or a whole number in [low, high]: (low, high, what the number means, for the message)
AUTO_OR_WHOLE = {"data.bit_depth": (8, 16, "the bits 16-bit images use, e.g. 12 for values up to 4095")}


CHOICES = {  # fields whose value must be one of a few words (checked at start-up, not mid-run)
    "data.sampler": ("shuffle", "repeat", "grouped"),
    "data.resize": ("crop", "pad", "auto"),
    "train.eval_mode": ("known", "unknown"),
    "model.head": ("linear",),  # SPEC's BN(affine=False) + Linear; the field stays so saved configs still load
    "semi.views": ("randaug", "mocov2"),
    "semi.method": ("off", "fixmatch", "moco", False, None),  # YAML reads a bare off as false (and null as None)
    "model.head_init": ("random", "probe", "prototype"),
    "train.channels_last": ("auto", True, False),
    "train.compile": ("auto", True, False),
    "train.adapt_threads": ("auto", True, False),
    "moco.preset": tuple(["mocov1", "mocov2"]),
    "moco.shuffle_bn": ("auto", True, False, "off", "none"),  # YAML reads on/off as true/false; flags keep words
    "optim.fused": ("auto", True, False, "true", "false", "on", "off"),  # optim._sgd_impl
    "optim.name": ("adamw", "sgd"),
    "train.amp": ("auto", "bf16", "fp16", "off", "false", False, None),  # optim.amp_dtype
    "run.semi_method": ("pseudo", "fixmatch", "off", "none", False, None),  # run_startup.check_run_settings
    "run.pseudo_targets": ("hard", "soft"),
    "run.balance": ("auto", "on", "off", True, False),  # YAML reads a bare on/off as true/false
}
# words that mean the same value of a field (YAML reads a bare off as false; flags keep the word): the first of each
# group is how a resume's comparison and its message show it
SAME_VALUE = {
    "semi.method": (("off", False, None),),
    "run.semi_method": (("off", "none", False, None),),
    "train.amp": (("off", "false", False, None),),
    "moco.shuffle_bn": (("off", "none", False),),
    "optim.fused": (("off", "false", False), ("on", "true", True)),
    "run.balance": (("off", False), ("on", True)),
}


def field_words(dotted: str) -> str | None:
    """What a field of a few words (CHOICES) or of auto or a number (AUTO_OR_WHOLE) takes, as a message says it:
    each value once, in the spelling SAME_VALUE shows it (a refusal listed YAML's aliases too, "off, fixmatch,
    moco, false"). None for any other field."""
    if dotted in AUTO_OR_WHOLE:
        low, high, meaning = AUTO_OR_WHOLE[dotted]
        return f"auto or a whole number from {low} to {high} ({meaning})"
    if dotted not in CHOICES:
        return None
    words = (canonical_value(dotted, c) for c in CHOICES[dotted])
    return "one of " + ", ".join(dict.fromkeys(_plain(w) for w in words if w is not None))


def canonical_value(dotted: str, value: Any) -> Any:
    """``value`` as the first word of its SAME_VALUE group (semi.method=off is 'off', not False)."""
    for group in SAME_VALUE.get(dotted, ()):
        if any(value is v or (isinstance(v, str) and value == v) for v in group):
            return group[0]
    return value


def _plain(value: Any) -> str:
    """A value as a note shows it: numbers exactly as given back (0.01171875, not %g's 0.0117188), booleans and
    None as YAML writes them."""
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def _is_whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_text_list(value) -> bool:
    """One non-empty text, or a non-empty list of them (data.datasets, data.unlabeled)."""
    return (isinstance(value, str) and bool(value.strip())
            or isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value))


def _kind(default: Any) -> str | None:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "a whole number"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "text"
    return None  # None / list defaults: checked by validation (TEXT, TEXT_LIST) or where they are used


class FieldError(UserError):
    """A bad value of one config field (``field``, dotted): the command line names the flag that gave it, where a
    flag did (`--epochs -1` said "train.epochs must be ...", a name the user never typed)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def named(self, flag: str, value: Any) -> UserError:
        """The same message, after the flag and the value the user typed (`--epochs -1: train.epochs must ...`)."""
        typed = " ".join(map(str, value)) if isinstance(value, list) else str(value)
        typed = typed if typed.strip() else repr(typed)  # `--model ''` read "--model : model.name is empty"
        given = flag if isinstance(value, bool) else f"{flag} {typed}"
        return UserError(f"{given}: {self}")


def _as_number(value: Any) -> Any:
    """A text that YAML 1.1 left unread (`1e-3`: no dot) as the finite number users mean; anything else as is."""
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return value
        if math.isfinite(number):
            return number
    return value


# Python's None in the capitalisations YAML gives its own null (null, Null, NULL): read as null, not as the text
# 'None' (data.cache_dir=None filled a folder named None, model.weights=None looked for a file of that name), in a
# key=value word (dotted.parse_override) and a config file's plain scalar (yaml_io.keep_text_as_typed) alike
NONE_WORDS = ("None", "none", "NONE")


# the fields that hold names, not paths or numbers: `data.datasets=none` names a dataset folder `none`, as it did
# before None was read as null (and null there means every dataset); data.unlabeled holds paths, as model.weights
NAME_FIELDS = ("data.datasets",)


def none_is_a_word(key: str) -> bool:
    """The fields where `none` is one of the words (moco.shuffle_bn=none: off) or a name (NAME_FIELDS), which keep
    it."""
    return "none" in CHOICES.get(key, ()) or key in NAME_FIELDS
