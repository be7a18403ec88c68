"""Configs: nested dicts of plain values, layered defaults < preset < file < flags < key=value.

Plain dicts (not dataclasses) because every field must be overridable from the command line
with dotted keys (`optim.lr=3e-4`) and the resolved result is saved verbatim as YAML in the
run directory. Unknown keys are refused so that a typo never silently does nothing.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from fewshot.errors import UserError, one_line, printable

# The fine-tuning defaults follow SPEC's course recipe; `None` means "decide at run time"
# (documented next to each field) so that one config serves CPU demos and GPU runs.
DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "resnet18",
        "weights": None,          # local state dict / safetensors / fewshot checkpoint
        "strict": True,           # refuse weights files whose keys do not match
        "drop_path": 0.1,
        "img_size": None,         # None: the model's default input size
        "width": 1.0,             # ResNets: stage channel multiplier (0.5: 32-64-128-256)
        "small_stem": False,      # ResNets: 3x3 stride-1 stem conv instead of 7x7 stride 2 (small images)
        "head": "linear",         # linear: BN1d(affine=False)+Linear
        "head_init": "random",    # random | probe (LP-FT: fit the head on frozen features first; measured
                                  # worse here: the full-batch probe is overconfident and derails early steps)
                                  # | prototype (SimpleShot: cosine nearest class mean of standardised features)
    },
    "data": {
        "root": None,
        "datasets": None,         # None: every dataset folder under root
        "cache_dir": None,        # None: ROOT/.fewshot_cache (read-only ROOT: ~/.cache/fewshot/<root>-<hash>)
        "cache_max_gb": 20.0,     # after writing a new entry, the least recently used ones go until the cache
                                  # holds this much (each changed file list writes a whole new entry); entries
                                  # used in the last hour stay; 0: no limit
        "crop_pct": 1.0,          # Resize(img_size / crop_pct) + CenterCrop(img_size)
        "bit_depth": "auto",      # significant bits of 16-bit images (8..16: 12 for 12-bit microscopy data stored
                                  # in 16-bit PNG/TIFF, scaled from 0..4095); auto: the container's 16 (0..65535)
        "sampler": "shuffle",     # shuffle | repeat | grouped (batches from one dataset)
        "repeats": 3,             # repeated-augmentation copies (sampler=repeat)
        "randaug_ops": 2,
        "randaug_magnitude": 8,
        "randaug_p": 0.6667,      # SPEC: 2/3 of samples get RandAugment
        "randaug_group": 8,       # samples sharing one RandAugment draw (1: per sample; slower on CPU)
        "hflip": 0.0,             # extra horizontal flip probability (off: digits are not symmetric)
        "hflip_symmetric": 0.0,   # flip probability for the classes whose mean image is mirror-symmetric
        "mixup_alpha": 0.0,       # > 0: mixup with partners of the same dataset, lam ~ Beta(a, a) (fewshot.data.mix)
        "cutmix_alpha": 0.0,      # > 0: CutMix likewise; with both > 0 each batch picks one at random
        "mix_p": 1.0,             # share of batches that are mixed (when mixup or CutMix is on)
        "skip_bad_images": False,  # undecodable labelled images are skipped and listed instead of stopping
                                   # the command (--skip-bad-images); a train class left without any is refused
        "skip_bad_unlabeled": True,  # undecodable pool images are skipped and listed (the pool is extra data; one
                                     # broken file stopped a whole run); false: they stop it, as labelled ones do
        "unlabeled": None,        # the pool (MoCo, self-training, FixMatch): list of folders (None:
                                  # ROOT/unlabeled/<dataset>, else MoCo falls back to the train images; images
                                  # elsewhere in ROOT/unlabeled/ join as of unknown dataset)
    },
    "optim": {
        "name": "adamw",          # adamw | sgd
        "lr": None,               # None: 1e-4 with --weights (course), 4e-3 from scratch (chosen on val: docs/recipes.md)
        "backbone_lr_mult": None, # None: 0.1 with --weights (course), 1.0 from scratch
        "weight_decay": 0.05,
        "momentum": 0.9,          # sgd only
        "fused": "auto",          # sgd: fused update kernel where torch has one (auto) | true | false
        "grad_clip": 5.0,         # max grad norm; 0 disables
        "label_smoothing": 0.1,
    },
    "sched": {
        "warmup_epochs": 1.0,
        "min_lr": 1e-5,
        "warmup_lr": 1e-6,
        "time_based": False,      # with train.budget_minutes: lr follows elapsed time, not steps (fewshot run)
    },
    "train": {
        "epochs": 50,
        "batch_size": 64,
        "seed": 0,
        "device": "auto",         # auto | cpu | cuda
        "amp": "auto",            # auto (bf16 on CUDA; on CPUs with native bf16 for >= 48 px, small stem >= 24 px; else off) | bf16 | fp16 | off
        "channels_last": "auto",  # auto: on for CNNs on CUDA
        "compile": "auto",        # torch.compile of the MoCo encoders; auto: on CUDA only (no gain on CPU)
        "ema": True,
        "ema_decay": 0.99996,
        "ema_warmup": True,       # timm's decay warm-up, so EMA is useful on short runs
        "eval_every": 5,          # epochs; the last epoch is always evaluated
        "eval_mode": "known",     # known | unknown (which accuracy picks `best`)
        "save_every_steps": 0,    # extra mid-epoch checkpoints (0: only at epoch ends)
        "save_interval_s": 30.0,  # epoch-end last.pt at most this often (0: every epoch); the last epoch always
        "skip_nonfinite": 0,      # tolerate up to N non-finite losses (skipped steps)
        "deterministic": False,
        "threads": None,          # None: all cores
        "progress": True,         # progress bars (plain lines when the output is a file or a pipe); --no-progress: off
        "tensorboard": True,      # also write curves to RUN/tensorboard/ when the tensorboard package is installed
        "budget_minutes": None,   # stop cleanly when this much training time is spent (start-up not counted)
    },
    "semi": {
        "method": "off",          # off | fixmatch: also train on the unlabeled pool with confident pseudo-labels
                                  # | moco: plus weight x MoCo's InfoNCE on the pool (train/semi_moco.py; moco.dim,
                                  # mlp, mlp_hidden, temperature, queue_size (a cap), shuffle_bn, split_bn_groups)
        "mu": 2,                  # unlabeled images per labelled image in a step (moco: per batch_size images)
        "threshold": 0.95,        # pseudo-label confidence (softmax within the image's dataset)
        "weight": 1.0,            # weight of the unlabeled loss
        "views": "randaug",       # randaug: weak = the clean image, strong = the labelled RandAugment | mocov2
                                  # (fixmatch only: moco always takes two independent MoCo v2 views, aug.*)
        "moco_momentum": 0.99,    # moco: the key encoder's momentum (0.999 barely moves it in a few hundred steps)
    },
    "moco": {
        "preset": "mocov2",
        "dim": 128,
        "queue_size": 4096,
        "momentum": 0.999,
        "temperature": 0.2,
        "mlp": True,
        "mlp_hidden": None,       # None: the backbone's feature width
        "symmetric": False,       # symmetric loss (both views as queries)
        "shuffle_bn": "auto",     # auto: split-BN groups on one process, DDP shuffle across ranks
        "split_bn_groups": 8,     # groups on a single device (batch must divide)
        "knn_k": 200,
        "knn_t": 0.1,
        "knn_every": 1,           # epochs
        "cos": True,
    },
    "run": {
        "pretrain": False,        # True: MoCo on the pool first (pretrain_share of the budget). Off by default:
                                  # at 3 and 10 CPU-minutes it lowered val accuracy (docs/recipes.md)
        "pretrain_share": 0.5,    # fraction of the budget spent on MoCo
        "pretrain_batch_size": 64,
        "pretrain_lr": None,      # None: linear scaling of 0.06 @ 256 (fast small-data setting)
        "queue_size": None,       # None: about half the pool, capped at 4096 (but one step's keys at least)
        "finetune_lr": 2e-3,      # fine-tuning lr after our own (short) MoCo: the backbone still needs to move
        "finetune_backbone_mult": 1.0,
        "min_epochs": 1,
        "report": True,           # write DIR/report/index.html at the end
        "semi_method": "pseudo",  # pseudo: self-training (fine-tune, label the pool, fine-tune again on both;
                                  # best on val at 3 and 10 min) | fixmatch: FixMatch while fine-tuning
                                  # (worse: it halves the epochs) | off: labelled images only
        "pseudo_share": 0.5,      # pseudo: fraction of the fine-tuning time for round 1 (labelled images only)
        "pseudo_rounds": 2,       # pseudo: fine-tuning rounds, >= 2 (round 1: labelled only; each later one
                                  # trains on the pool relabelled by the round before)
        "pseudo_keep": 0.5,       # pseudo: per class at most this fraction of (pool / classes) images, most confident first
        "pseudo_max_per_shot": 10,  # pseudo: a class keeps at most this many pool images per labelled train image of
                                    # its own (1 shot: 10), so a huge pool cannot drown the true labels; 10 shots: 100,
                                    # above the demo's 50 (pseudo_keep of 1000 / 10 classes)
        "pseudo_threshold": 0.0,  # pseudo: minimum confidence (softmax within the image's dataset); whatever it is,
                                  # a label needs more than twice chance (2 / classes; two classes: 0.75)
        "pseudo_precision": 0.0,  # pseudo: > 0: per-class confidence thresholds at which the teacher is right this
                                  # often on val (0: rank only)
        "pseudo_labelled_repeat": 3,  # pseudo: the labelled images appear this many times in later rounds
        "pseudo_targets": "hard",  # pseudo: hard (the teacher's class) | soft (its probabilities: distillation)
        "moco_momentum": 0.99,    # short schedules: at 0.999 the key encoder barely moves in a few hundred steps
        "balance": "auto",        # test predictions evened out to the train split's class proportions, or even
                                  # ones, or the test split's own where skewed (per-class offsets fitted on the test
                                  # images): auto, where it does not lower val accuracy and val holds 10 images of
                                  # every class (fewshot.eval.balance) | on | off
    },
    "aug": {
        "scale": [0.2, 1.0],
        "jitter": [0.4, 0.4, 0.4, 0.1],
        "jitter_p": 0.8,
        "gray_p": 0.2,
        "blur_p": 0.5,
        "flip_p": 0.5,
    },
}

# MoCo presets (SPEC values). Applied over DEFAULTS for `fewshot pretrain`. lr None: 0.03 at batch 256,
# scaled linearly with the global batch (resolve_pretrain_defaults), as the course's 0.015 at 128.
PRESETS: dict[str, dict[str, Any]] = {
    "mocov1": {
        "moco": {"preset": "mocov1", "temperature": 0.07, "mlp": False, "cos": False},
        "aug": {"jitter": [0.4, 0.4, 0.4, 0.4], "jitter_p": 1.0, "gray_p": 0.2, "blur_p": 0.0},
        "optim": {"name": "sgd", "lr": None, "weight_decay": 1e-4, "momentum": 0.9, "grad_clip": 0.0,
                  "label_smoothing": 0.0},
        "sched": {"warmup_epochs": 0.0, "min_lr": 0.0},
        "train": {"epochs": 200, "batch_size": 256, "ema": False, "eval_every": 1},
        "model": {"drop_path": 0.0, "name": "resnet50"},
    },
    "mocov2": {
        "moco": {"preset": "mocov2", "temperature": 0.2, "mlp": True, "cos": True},
        "aug": {"jitter": [0.4, 0.4, 0.4, 0.1], "jitter_p": 0.8, "gray_p": 0.2, "blur_p": 0.5},
        "optim": {"name": "sgd", "lr": None, "weight_decay": 1e-4, "momentum": 0.9, "grad_clip": 0.0,
                  "label_smoothing": 0.0},
        "sched": {"warmup_epochs": 0.0, "min_lr": 0.0},
        "train": {"epochs": 200, "batch_size": 256, "ema": False, "eval_every": 1},
        "model": {"drop_path": 0.0, "name": "resnet50"},
    },
}


def deep_merge(base: dict, update: dict, path: str = "", strict: bool = True) -> dict:
    """Return base updated by update, refusing keys base does not know (typos)."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        dotted = f"{path}{key}"
        if strict and key not in out:
            known = ", ".join(sorted(out))
            raise UserError(f"unknown config field '{dotted}'. Known fields here: {known}.")
        if isinstance(out.get(key), dict) and value is None:
            continue  # a section whose every field is commented out: nothing to change
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = deep_merge(out[key], value, dotted + ".", strict)
        elif isinstance(out.get(key), dict):  # `optim: 3` used to fail later as "'int' object is not subscriptable"
            raise UserError(f"config section '{dotted}' must hold fields ({dotted}: then indented `name: value` "
                            f"lines, e.g. {dotted}.{next(iter(out[key]), 'name')}), not {value!r}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(word: str) -> tuple[list[str], Any]:
    """`optim.lr=3e-4` -> (['optim', 'lr'], 0.0003); the value is read as YAML."""
    if "=" not in word:
        raise UserError(f"cannot read '{word}': extra words must be config overrides of the form key=value "
                        f"(for example optim.lr=3e-4).")
    key, raw = word.split("=", 1)
    if not raw.strip():
        refuse_empty_value(key)
    try:
        value = read_yaml(raw, f"the value of {key}=", field=key) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "1e-4" as a string; users mean a number (but a dataset named 08 is a name, not 8.0)
    if isinstance(value, str) and key not in TEXT + TEXT_LIST:
        try:
            value = float(value)
        except ValueError:
            pass
    return key.split("."), value


def refuse_empty_value(key: str) -> None:
    """`optim.lr=` (nothing after the =, a shell variable that was empty) read as null, which for lr means "decide
    at run time": a run at the default rate that the user thought they had set; `train.amp=` turned AMP off and
    `data.bit_depth=` was refused as "not None". Every field is refused with what to give, but the text fields
    whose none is documented (TEXT, TEXT_LIST: `model.weights=`, no weights; `data.datasets=`, every dataset), which
    keep reading an empty value as none; an unknown key or a section is left to set_dotted's message."""
    try:
        default = get_dotted(DEFAULTS, key.split("."))
    except KeyError:
        return
    if isinstance(default, dict) or key in TEXT + TEXT_LIST:
        return
    optional = default is None and key in OPTIONAL
    kind = _kind(OPTIONAL[key] if optional else default)
    if isinstance(default, list):
        kind = f"a list of {len(default)} numbers"
    elif key in AUTO_OR_WHOLE or key in CHOICES:
        kind = field_words(key)
    shown = _example(key, default)
    # what dropping the word keeps is the layered value (a preset's sgd for `pretrain optim.name=`, a --config
    # file's, probe's recorded data.bit_depth), not the built-in default this message once named
    keep = ("Drop the word to keep the value the command uses without it (a --config file's, a preset's, a recorded "
            "run's or the default)")
    if optional:
        keep += f", or give {key}=null for {OPTIONAL_NULL[key][0]}"
    raise UserError(f"{key}= gives no value, and {key} needs {kind}. Give one after the =, e.g. {key}={shown} "
                    f"(an empty shell variable there gives nothing). {keep}.")


def _example(key: str, default: Any) -> str:
    """A value to show in a message: the default where there is one, else a typical one (OPTIONAL_NULL)."""
    if isinstance(default, list):
        return "[" + ",".join(f"{v}" for v in default) + "]"
    return _plain(default) if default is not None else OPTIONAL_NULL[key][1]


def get_dotted(cfg: dict, keys: list[str]) -> Any:
    """cfg[a][b]...; KeyError when a key is missing."""
    node: Any = cfg
    for key in keys:
        if not isinstance(node, dict):
            raise KeyError(key)
        node = node[key]
    return node


def flatten_dotted(tree: dict, prefix: str = "") -> dict:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def with_defaults(saved: dict, absent_means: dict | None = None) -> dict:
    """A run's saved config.yaml with the fields it lacks filled in (``absent_means``: what the run did without
    a field, where that is not today's default). Resuming a run written before a field existed crashed with
    KeyError 'skip_bad_unlabeled', an internal error."""
    out = copy.deepcopy(saved)
    for dotted, value in flatten_dotted(DEFAULTS).items():
        keys = dotted.split(".")
        try:
            get_dotted(out, keys)
            continue
        except KeyError:
            pass
        section = out
        for key in keys[:-1]:
            if not isinstance(section.get(key), dict):
                section[key] = {}
            section = section[key]
        section[keys[-1]] = copy.deepcopy((absent_means or {}).get(dotted, value))
    return out


def set_dotted(cfg: dict, keys: list[str], value: Any) -> None:
    """Set cfg[a][b]... = value, refusing unknown keys."""
    node = cfg
    for i, key in enumerate(keys):
        dotted = ".".join(keys[: i + 1])
        if not isinstance(node, dict) or key not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a section)"
            raise UserError(f"unknown config field '{dotted}'. Known fields here: {known}.")
        if i == len(keys) - 1:
            if isinstance(node[key], dict):
                raise UserError(f"'{dotted}' is a section; set one of its fields, e.g. {dotted}.{next(iter(node[key]))}=...")
            node[key] = value
        else:
            node = node[key]


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where YAML 1.1 surprised users: a key given twice in one mapping is an
    error (PyYAML kept the last one, so a second `model:` section silently dropped the first), and `1:30` stays
    text (YAML 1.1 reads it as the base-60 number 90)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden by its own keys
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: PyYAML names it below
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"'{key}' is given twice in one section",
                                                            key_node.start_mark)
        return super().construct_mapping(node, deep)

    def compose_scalar_node(self, anchor):
        """Marks a scalar whose tag the user wrote (`!!int 5`, `!!python/name:x`; TAG_WRITTEN): its node looks
        like a plain one YAML resolved, and keep_text_as_typed read it as text (`!!python/name:os.system x`,
        refused by the safe loader, became the dataset 'x')."""
        tag = self.peek_event().tag
        node = super().compose_scalar_node(anchor)
        setattr(node, TAG_WRITTEN, tag not in (None, "!"))
        return node

    def _number_unless_base60(self, node, construct):
        text = self.construct_scalar(node)
        return text if ":" in text else construct(self, node)

    def _int_unless_leading_zero(self, node):
        """YAML 1.1 reads `040` as the octal 32 (`img_size: 040` trained at 32 px, `datasets: 01` named dataset
        1): a number with leading zeros stays the text as typed, which a number field reads as decimal
        (validate) and a list of names keeps ("01")."""
        text = self.construct_scalar(node)
        digits = text.lstrip("+-").replace("_", "")
        if len(digits) > 1 and digits.startswith("0") and digits.isdigit():
            return text
        return self._number_unless_base60(node, yaml.SafeLoader.construct_yaml_int)


ConfigLoader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: loader._int_unless_leading_zero(node))
ConfigLoader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: loader._number_unless_base60(
    node, yaml.SafeLoader.construct_yaml_float))


MAX_DEPTH = 32  # no config field nests more than two levels (aug.scale: a list in a section)


STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"  # a name field's null is still none (every dataset); `on` may name a folder
TAG_WRITTEN = "fewshot_tag_written"  # a scalar node's attribute (ConfigLoader.compose_scalar_node)


def keep_text_as_typed(node, field: str | None = None):
    """``node`` with the plain scalars of the name fields (TEXT_LIST) read as text, before they are built: YAML read
    a dataset folder `1_000` as 1000, `0x10` as 16, `+5` as 5 and `2020-01-01` as a date, and the run then looked
    for a folder of that other name. ``field``: the dotted field ``node`` is the value of (a key=value word); None:
    ``node`` is a config file's document, whose sections' fields are looked at, through merge keys too (`<<: *m`).
    New nodes replace the ones changed: an alias shares one node (`epochs: &e 10` ... `datasets: *e`), and a
    retag in place turned the other field's number into text. A tag the user wrote (`!!int 5`) is kept."""
    if field is None:
        memo: dict = {}
        return _with_fields(node, "", memo, lambda section, fields: _with_fields(
            fields, section, memo, lambda key, value: keep_text_as_typed(value, f"{section}.{key}")))
    if field not in TEXT_LIST:
        return node
    if isinstance(node, yaml.SequenceNode):
        return yaml.SequenceNode(node.tag, [_as_typed(item) for item in node.value], node.start_mark, node.end_mark,
                                 node.flow_style)
    return _as_typed(node)


def _as_typed(item):
    """A new text node for a plain scalar whose tag YAML resolved itself (none written; null still none); else
    ``item``."""
    if isinstance(item, yaml.ScalarNode) and item.style is None and item.tag != NULL_TAG and \
            not getattr(item, TAG_WRITTEN, False):
        return yaml.ScalarNode(STR_TAG, item.value, item.start_mark, item.end_mark, item.style)
    return item


MERGE_TAG = "tag:yaml.org,2002:merge"


def _with_fields(node, where: str, memo: dict, edit):
    """A copy of mapping ``node`` whose plain text keys' values are edit(key, value), and whose merged mappings
    (`<<: *m` or `<<: [*a, *b]`, whose keys it takes as its own) are copied alike; any other node as is. ``memo``:
    the copies made, by node and ``where`` (the section, or "" for the document), so that a mapping merged many
    times is walked once; a mapping merged into itself is left to PyYAML."""
    if not isinstance(node, yaml.MappingNode):
        return node
    key = (id(node), where)
    if key in memo:
        return memo[key] or node
    memo[key] = None
    pairs = []
    for name, value in node.value:
        if name.tag == MERGE_TAG and isinstance(value, yaml.SequenceNode):
            value = yaml.SequenceNode(value.tag, [_with_fields(item, where, memo, edit) for item in value.value],
                                      value.start_mark, value.end_mark, value.flow_style)
        elif name.tag == MERGE_TAG:
            value = _with_fields(value, where, memo, edit)
        elif isinstance(name, yaml.ScalarNode) and name.tag == STR_TAG:
            value = edit(name.value, value)
        pairs.append((name, value))
    memo[key] = yaml.MappingNode(node.tag, pairs, node.start_mark, node.end_mark, node.flow_style)
    return memo[key]


def read_yaml(text, source: str = "the YAML text", field: str | None = None):
    """One YAML document (str or bytes) read with ConfigLoader, its name fields kept as typed (keep_text_as_typed;
    ``field``: the field a key=value word's value is for). Brackets nested hundreds deep overflowed Python's stack
    while being read or copied (RecursionError, an internal error): refused, naming ``source``."""
    try:
        loader = ConfigLoader(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(keep_text_as_typed(node, field))
        finally:
            loader.dispose()
    except RecursionError:
        data, deep = None, True
    else:
        deep = deeper_than(data, MAX_DEPTH)
    if deep:
        raise UserError(f"{source} nests values more than {MAX_DEPTH} levels deep ([[[... or {{{{{{...); a fewshot "
                        f"config nests at most two: check its brackets.")
    return data


def deeper_than(data, limit: int, budget: int = 100_000) -> bool:
    """Whether ``data`` nests lists/dicts more than ``limit`` deep, counting containers only: 65 nested empty lists
    and 65 holding a value are alike (leaves counted as a level told them apart). Iterative (no stack to
    overflow); at most ``budget`` containers looked at, so that an alias bomb is left to _check_size."""
    stack = [(data, 1)] if isinstance(data, (dict, list)) else []
    while stack and budget > 0:
        item, depth = stack.pop()
        budget -= 1
        if depth > limit:
            return True
        values = item.values() if isinstance(item, dict) else item
        stack.extend((v, depth + 1) for v in values if isinstance(v, (dict, list)))  # leaves nest nothing
    return False


RECIPES = Path(__file__).parent / "configs"  # the shipped recipes (configs/ in the repository links here)
_NOTED_RECIPES: set[str] = set()


def find_config(path: str | Path) -> Path:
    """A config file as given (`.yaml` may be left out), else the shipped recipe of that name (`moco_cpu_small`, or
    the README's `configs/moco_cpu_small.yaml` from a folder that has no configs/, as after `pip install`)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.suffix not in (".yaml", ".yml"):  # `--config myexp` for ./myexp.yaml, before a shipped recipe's name
        for local in (path.with_name(f"{path.name}.yaml"), path.with_name(f"{path.name}.yml")):
            if local.is_file():
                return local
    if len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "configs"):  # a recipe's name, not a path
        for candidate in (RECIPES / path.name, RECIPES / f"{path.name}.yaml"):
            if candidate.is_file():
                if str(path) not in _NOTED_RECIPES:
                    _NOTED_RECIPES.add(str(path))
                    print(f"note: {path} is not here; using fewshot's recipe {candidate}", file=sys.stderr,
                          flush=True)
                return candidate
    if path.is_dir():
        inside = ", ".join(sorted(p.name for p in path.glob("*.yaml"))[:5]) or "none"
        raise UserError(f"config file {path} is a folder; give a YAML file (the .yaml files in it: {inside}).")
    names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
    raise UserError(f"config file not found: {path} (fewshot's own recipes, usable by name: {names}).")


def load_yaml(path: str | Path) -> dict:
    """load_yaml_or_none, with {} for a file that holds no value."""
    data = load_yaml_or_none(path)
    return {} if data is None else data


class NotAMapping(UserError):
    """A config file that is valid YAML but holds no mapping (`false`, `0`, `''`, a list): beside a run's checkpoint
    no settings are left in it (finetune.settings_lost), where a YAML error is an edit to correct."""


def load_yaml_or_none(path: str | Path) -> dict | None:
    """A config file's mapping, or None where it holds no YAML value at all (0 bytes, blank lines, comments, a bare
    `~`): an --out folder's config.yaml is said to be empty only then. The path is found as --config finds it
    (find_config: a recipe's name, a folder refused). Refused (UserError): text that is not UTF-8 (or UTF-16 with a
    BOM), a control character, invalid YAML, values nested too deep (read_yaml) or expanding past a config's size
    (aliases: _check_size), and any other value, NotAMapping (`0`, `false` and `''` were taken for an empty file)."""
    path = find_config(path)
    try:
        # bytes: PyYAML reads UTF-8 (with or without a BOM) and UTF-16 with a BOM, and names any other encoding
        data = read_yaml(path.read_bytes(), f"config file {path}")
    except yaml.reader.ReaderError as exc:
        if exc.encoding == "unicode":  # decoded fine, but YAML allows no control characters
            code = exc.character if isinstance(exc.character, int) else ord(exc.character)
            raise UserError(f"config file {path} holds the control character U+{code:04X} at character "
                            f"{exc.position}, which YAML does not allow; delete it.") from None
        raise UserError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.position}); save it as "
                        f"UTF-8.") from None
    except yaml.YAMLError as exc:
        # one paragraph: PyYAML's own message spans several lines with a caret drawing
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML{where}: {what}.") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        shown = one_line(yaml.safe_dump(data, default_flow_style=True).splitlines()[0])
        held = "a list" if isinstance(data, list) else f"`{shown[:40]}{'...' if len(shown) > 40 else ''}` alone"
        raise NotAMapping(f"config file {path} must hold a mapping of sections (model:, optim:, ...), but it holds "
                          f"{held}.")
    _check_size(data, path)
    return data


CHOSEN = "_chosen"  # a run's config.yaml: the fields the run chose itself (RUN_TIME_FIELDS), not the user
RECHOSEN = "_rechosen"  # in memory only: what a --config file's CHOSEN fields held, for the note (note_rechosen)
RECORDED = ("_task", CHOSEN)  # written into a run's config.yaml by the tool (report, resume), not settings
TRANSIENT = (RECHOSEN,)  # never written into config.yaml (save_yaml)

# Fields a run fills in itself where the user left them unset (None, or auto): the learning rate and backbone
# multiplier (resolve_finetune_defaults: --weights or not; resolve_pretrain_defaults: the global batch), the
# network a --weights export records (model.name, img_size, width, small_stem), the bit depth it records
# (cli.adopt_recorded_bit_depth: a run fine-tuned from it could not be resumed, its _chosen "refused") and the
# device. config.yaml saves the values used and records these under CHOSEN with the value chosen, so that the file
# given back as --config chooses them again where it still holds that value (an edited value is the user's).
RUN_TIME_FIELDS = ("optim.lr", "optim.backbone_lr_mult", "model.name", "model.img_size", "model.width",
                   "model.small_stem", "data.bit_depth", "train.device")


_READS: dict | None = None  # the --config files read in the scope of one_read_per_file, by resolved path


@contextlib.contextmanager
def one_read_per_file():
    """A scope (one command; one resolve()) in which each --config file is read and parsed once: its settings,
    its CHOSEN record, its preset and the warnings about it were read apart, and a file saved in between (an
    editor, a run writing its config.yaml) gave a config mixed from two versions of it. Scopes nest."""
    global _READS
    outer = _READS
    _READS = {} if outer is None else outer
    try:
        yield
    finally:
        _READS = outer


def config_data(path: str | Path) -> dict:
    """load_yaml(path) for a --config file: within one_read_per_file, the version first read (a copy, which the
    caller may change); outside it, the file as it is now."""
    if _READS is None:
        return load_yaml(path)
    key = str(find_config(path).resolve())
    if key not in _READS:
        _READS[key] = load_yaml(path)
    return copy.deepcopy(_READS[key])


# how one command shows its work, not how the run trains: a run's config.yaml records it, but neither --resume nor
# the file given as --config takes it from there (`--no-progress` once, and every later resume showed no bars)
PER_INVOCATION = ("train.progress",)


def read_config_file(path: str | Path) -> dict:
    """A --config file's settings: a run's own config.yaml is a valid --config, so the bookkeeping fields the
    tool records there are set aside rather than refused as unknown, and so are the PER_INVOCATION ones it
    recorded (a recipe of the user's that sets them keeps them). A file with a CHOSEN record is a run's wherever
    it lies, as chosen_in_file takes it: a fine-tuning run's config.yaml copied out of its folder kept the
    `progress: false` of the command that made it."""
    data = config_data(path)
    settings = {key: value for key, value in data.items() if key not in RECORDED}
    if CHOSEN in data or written_by_run(data, path):
        for dotted in PER_INVOCATION:
            section, field = dotted.split(".")
            if isinstance(settings.get(section), dict) and field in settings[section]:
                settings[section] = {k: v for k, v in settings[section].items() if k != field}
    return settings


def chosen_record(data: dict, where: str | Path) -> dict:
    """The CHOSEN record of a run's config.yaml (``data``, read from ``where``), checked: each field the run chose
    itself mapped to the value it chose; {} where there is none (the user's own file, or an older fewshot's). One
    check for --config and --resume, which met a malformed record with an internal error."""
    chosen = data.get(CHOSEN)
    if chosen is None:
        return {}
    if not (isinstance(chosen, dict) and all(isinstance(c, str) for c in chosen)):
        raise UserError(f"config file {where}: {CHOSEN} must map each field the run chose itself to the value it "
                        f"chose (optim.lr: 0.004), not {chosen!r}; correct it, or delete the {CHOSEN} entry and give "
                        f"the values you want kept as key=value words (optim.lr=0.004).")
    other = [c for c in chosen if c not in RUN_TIME_FIELDS]
    if other:
        raise UserError(f"config file {where}: {CHOSEN} lists {', '.join(other)}, which no run chooses itself (those "
                        f"are {', '.join(RUN_TIME_FIELDS)}); delete {'them' if len(other) > 1 else 'it'} from "
                        f"{CHOSEN}.")
    return dict(chosen)


def same_value(first: Any, second: Any) -> bool:
    """Whether a config.yaml's value is still the one its CHOSEN record holds (`4e-3` typed for 0.004 is)."""
    first, second = _as_number(first), _as_number(second)
    return isinstance(first, bool) == isinstance(second, bool) and first == second


def chosen_in_file(path: str | Path) -> dict:
    """The fields a run's config.yaml records as chosen at run time (CHOSEN) and still holds at the recorded value,
    with that value: --config leaves them to be chosen again. A value edited since is the user's, pinned (and
    compared on --resume). A run's config.yaml without the record (an older fewshot's): the fields holding a value
    the rules choose (chosen_by_rule); {} for the user's own file."""
    data = config_data(path)
    raw = flatten_dotted({key: value for key, value in data.items() if key not in RECORDED})
    if CHOSEN not in data and written_by_run(data, path):
        return chosen_by_rule(data.get("_task"), raw)
    return {dotted: value for dotted, value in chosen_record(data, path).items()
            if dotted in raw and same_value(raw[dotted], value)}


# the sections every fewshot (from the first) saved into a run's config.yaml; a recipe names the few it changes
RUN_SECTIONS = ("model", "data", "optim", "sched", "train", "moco", "aug")


RUN_FILES = ("log.jsonl", "checkpoints", "metrics.json", "run_state.json")  # what a run folder holds beside it


def missing_run_sections(data: dict | None) -> list[str]:
    """The RUN_SECTIONS that ``data`` (a config file's mapping, None: none) does not hold as a mapping."""
    return [section for section in RUN_SECTIONS if not isinstance((data or {}).get(section), dict)]


def written_by_run(data: dict, path: str | Path, run_files: bool = True) -> bool:
    """Whether a config file (``data``, read from ``path``) is a run's config.yaml rather than the user's own: what
    a run chose itself is chosen again only from a run's. A run records `_task` (MoCo) or saves every section in a
    folder with a run's files; ``run_files=False`` judges the content alone (an --out folder's start)."""
    if "_task" in data:
        return True
    if missing_run_sections(data):
        return False
    return not run_files or any((find_config(path).parent / name).exists() for name in RUN_FILES)


def read_run_config(path: str | Path) -> tuple[dict | None, bool]:
    """An --out folder's config.yaml: its settings (None where it holds none: load_yaml_or_none) and whether a run
    wrote them, on its content alone (written_by_run): the one answer of prepare_run_dir, which refuses a folder
    whose config.yaml no run wrote, and of --resume, which takes a run's as the settings. Raises UserError or
    OSError where it cannot be read."""
    data = load_yaml_or_none(path)
    by_run = data is not None and written_by_run(data, path, run_files=False)
    if by_run:
        refuse_scalar_sections(data, path)
    return data, by_run


def refuse_scalar_sections(data: dict, path: str | Path) -> None:
    """A run's config.yaml with a value where a section belongs (`semi: fixmatch`), refused as --config refuses it
    (deep_merge): with_defaults put the defaults in its place, and --resume then named one of them as changed
    ("semi.views ('randaug' in the run, 'mocov2' now)"), a setting the user never touched."""
    for section, fields in DEFAULTS.items():
        value = data.get(section)
        if isinstance(fields, dict) and value is not None and not isinstance(value, dict):
            raise UserError(f"config file {path}: section '{section}' must hold fields ({section}: then indented "
                            f"`name: value` lines, e.g. {section}.{next(iter(fields), 'name')}), not {value!r}; "
                            f"correct it there to resume the run.")


def chosen_by_rule(task: Any, raw: dict) -> dict:
    """The RUN_TIME_FIELDS of a run's config.yaml without a CHOSEN record (``raw``, dotted; ``task``: its `_task`)
    that hold a value the run's rules choose, with that value: chosen again, as the record would have them. Either
    start's lr counts (4e-3 scratch, 1e-4 --weights): an older run given an older config.yaml pinned 0.004 under
    --weights too. A value no rule chooses (a typed --lr 0.01) stays the user's."""
    def number(dotted: str) -> float | None:
        value = _as_number(raw.get(dotted))
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def run_default(value: float | None, field: str) -> bool:
        """A `fewshot run` stage's value that is its run's default run.* one: a user's run.finetune_lr=5e-4 is
        theirs, as the run records it (run_stages.finetune_config)."""
        default = DEFAULTS["run"][field]
        return raw.get("run.pretrain") is True and value is not None and same_value(value, default) and \
            same_value(raw.get(f"run.{field}"), default)

    lr, mult = number("optim.lr"), number("optim.backbone_lr_mult")
    chosen = set()
    # resolve_pretrain_defaults: 0.03 x global batch / 256, the global batch being the per-process batch x the
    # processes (unknown here: any whole number of them), and a `fewshot run` stage's 0.06 is 2x
    if task == "moco":
        batch = number("train.batch_size")
        world = lr * 256 / (0.03 * batch) if lr and batch and batch > 0 else 0.0
        chosen.update({"optim.lr"} if world >= 1 - 1e-9 and abs(world - round(world)) < 1e-6 * world else set())
        chosen.update({"optim.backbone_lr_mult"} if mult == 1.0 else set())
    else:  # resolve_finetune_defaults; a `fewshot run` stage after its own MoCo: run.finetune_lr / _backbone_mult
        if lr is not None and (any(math.isclose(lr, rule) for rule in (4e-3, 1e-4)) or run_default(lr, "finetune_lr")):
            chosen.add("optim.lr")
        if mult in (1.0, 0.1) or run_default(mult, "finetune_backbone_mult"):
            chosen.add("optim.backbone_lr_mult")
    if raw.get("train.device") in ("cpu", "cuda"):  # what auto gives on some machine (start_job saves the type)
        chosen.add("train.device")
    chosen.update(network_by_rule(raw))
    return {dotted: raw[dotted] for dotted in RUN_TIME_FIELDS if dotted in chosen}


def network_by_rule(raw: dict) -> set:
    """The model.* RUN_TIME_FIELDS of ``raw`` that its model.weights file records with the same value: adopted from
    it (adopt_weights_model, adopt_weights_architecture) as far as can be told; none where it is gone."""
    from fewshot.models.weights import architecture_of

    weights = raw.get("model.weights")
    if not (isinstance(weights, str) and weights.strip().endswith(".safetensors")):
        return set()  # a .pt would be loaded whole to read four fields: those stay as the file has them
    try:
        arch = architecture_of(weights) or {}
    except Exception:  # noqa: BLE001 - gone, unreadable or malformed: the weights' own check says so when used
        return set()
    recorded = {"model.name": arch.get("model"), "model.img_size": arch.get("img_size"),
                "model.width": arch.get("width"), "model.small_stem": arch.get("small_stem")}
    return {dotted for dotted, value in recorded.items()
            if value is not None and dotted in raw and same_value(raw[dotted], value)}


def file_settings(path: str | Path) -> dict:
    """A --config file's settings, dotted, as resolve() applies them: a section with every field commented out
    (`optim:` alone on its line) changes nothing (deep_merge), so it is no setting either (`train --resume
    --config` took it for a change of the whole optim section and refused); nor is a field the run that wrote the
    file chose itself and the file still holds as chosen (chosen_in_file), which resolve() chooses again."""
    chosen = chosen_in_file(path)
    return {key: value for key, value in flatten_dotted(read_config_file(path)).items()
            if not (value is None and isinstance(DEFAULTS.get(key), dict)) and key not in chosen}


def run_time_values(cfg: dict) -> dict:
    """RUN_TIME_FIELDS' values in ``cfg`` before a run fills them in (record_chosen compares)."""
    return {dotted: copy.deepcopy(get_dotted(cfg, dotted.split("."))) for dotted in RUN_TIME_FIELDS}


def record_chosen(cfg: dict, before: dict) -> None:
    """Record under CHOSEN the fields of ``before`` (run_time_values) that the run has filled in or changed since,
    with their values now: a value the user gave stays as given, so only the run's own choices are recorded."""
    for dotted, was in before.items():
        if get_dotted(cfg, dotted.split(".")) != was:
            note_chosen(cfg, dotted)


def note_chosen(cfg: dict, dotted: str) -> None:
    """Record ``dotted`` as chosen at run time in ``cfg`` (saved with it as config.yaml), with its value now: a
    value edited in the file later differs from it, and is the user's."""
    cfg.setdefault(CHOSEN, {})[dotted] = copy.deepcopy(get_dotted(cfg, dotted.split(".")))


def mark_rechosen(cfg: dict, file: str | Path | None, given: set) -> None:
    """Keep in ``cfg`` (in memory: TRANSIENT) what the --config file's CHOSEN fields held, but those the command
    gives now (``given``, dotted), for note_rechosen once the run has chosen them again."""
    if not file:
        return
    values = {dotted: _as_number(value) for dotted, value in chosen_in_file(file).items() if dotted not in given}
    if values:
        data = config_data(file)
        cfg[RECHOSEN] = {"file": str(file), "values": values, "unrecorded": CHOSEN not in data,
                         "task": data.get("_task")}


def note_rechosen(cfg: dict, say: bool = True) -> None:
    """After the run has filled in its fields: one line naming the --config file's CHOSEN fields that the run now
    chose otherwise, with both values (lr 1e-4 now where the file said 0.004: a --weights run, not the scratch
    one that wrote it). Drops the in-memory record either way. A MoCo run's optimiser values given to fine-tuning
    (or a fine-tuning run's to MoCo) get no advice to keep them: MoCo's lr with AdamW collapsed a run."""
    rechosen = cfg.pop(RECHOSEN, None)
    if not rechosen or not say:
        return
    other_task = rechosen.get("task") != cfg.get("_task")  # `_task: moco` for MoCo, none for fine-tuning
    meant = "MoCo pretraining's, not meant for fine-tuning" if rechosen.get("task") == "moco" else \
        "fine-tuning's, not meant for MoCo pretraining"
    differ, keep = [], ""
    for dotted, was in rechosen["values"].items():
        now = get_dotted(cfg, dotted.split("."))
        if now == was:
            continue
        if other_task and dotted.startswith("optim."):
            differ.append(f"{dotted} {_plain(now)} ({_plain(was)} there: {meant})")
        else:
            differ.append(f"{dotted} {_plain(now)} ({_plain(was)} there)")
            keep = keep or f"{dotted}={_plain(was)}"
    if differ:
        fields = ", ".join(rechosen["values"])
        # an older fewshot's run or `fewshot run` stage recorded nothing: values a run's rules choose count as chosen
        said = (f"is a run's config.yaml without a record of what the run chose itself (an older fewshot's run or "
                f"`fewshot run` stage); it holds {fields} at values a run chooses itself"
                if rechosen.get("unrecorded") else
                f"records {fields} as chosen by the run that wrote it")
        advice = f" (give e.g. {keep} to keep the file's value)" if keep else ""
        print(printable(f"note: {rechosen['file']} {said}, so this command chose "
                        f"{'them' if len(rechosen['values']) > 1 else 'it'} again: {', '.join(differ)}{advice}."),
              file=sys.stderr, flush=True)


def _plain(value: Any) -> str:
    """A value as a note shows it: numbers exactly as given back (0.01171875, not %g's 0.0117188), booleans and
    None as YAML writes them."""
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def unknown_fields(tree: dict, defaults: dict | None = None, path: str = "") -> list[str]:
    """The dotted names in ``tree`` (a run's config.yaml) that no config field has: a typo (`epochz`), which
    resolve() refuses in a --config file and a key=value word."""
    defaults = DEFAULTS if defaults is None else defaults
    unknown = []
    for key, value in tree.items():
        dotted = f"{path}{key}"
        if not path and key in RECORDED:
            continue
        if key not in defaults:
            unknown.append(dotted)
        elif isinstance(defaults[key], dict) and isinstance(value, dict):
            unknown.extend(unknown_fields(value, defaults[key], dotted + "."))
    return unknown


def _check_size(data, path: Path, limit: int = 100_000) -> None:
    """YAML aliases can nest a document into billions of values ("billion laughs") that a few hundred bytes
    describe; a run's config.yaml may come from anyone, and printing such a value exhausted the memory. A config
    holds a few hundred values: one that expands to more is refused."""
    seen, stack = 0, [data]
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            raise UserError(f"config file {path} expands to more than {limit:,} values (nested YAML aliases?); it "
                            f"is not a fewshot config.")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def resolve(preset: str | None = None, file: str | Path | None = None, flags: dict | None = None,
            overrides: list[str] | None = None, default_preset: str | None = None,
            preset_sections: tuple[str, ...] | None = None) -> dict:
    """Layer defaults < preset < config file < command-line flags < key=value words. The preset is ``preset``
    (--preset), else the one the file or the words name (`moco.preset: mocov1`, which used to change the recorded
    name only and leave the other preset's T, MLP and schedule in place), else ``default_preset``. Places that name
    different presets are refused (_refuse_preset_clash): the file is layered over the preset, so its values win.
    ``preset_sections``: only these sections of the preset apply (`fewshot run` takes its MoCo stage's moco.* and
    aug.* from the preset, but its optimiser, batch and epochs from run.* and its plan; the preset's resnet50 and
    SGD would otherwise reach fine-tuning too)."""
    with one_read_per_file():  # the file read once: its settings, CHOSEN record and preset from one version
        return _resolve(preset, file, flags, overrides, default_preset, preset_sections)


def _resolve(preset: str | None, file: str | Path | None, flags: dict | None, overrides: list[str] | None,
             default_preset: str | None, preset_sections: tuple[str, ...] | None) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    named = _presets_named_in(file, overrides) if default_preset else []  # only commands with presets
    given = [(preset, f"--preset {preset}")] if preset else []
    _refuse_preset_clash(given + named)
    preset = next((name for name, _ in given + named), default_preset)  # --preset, else a word, else the file
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'. Choose one of: {', '.join(PRESETS)}.")
        chosen = PRESETS[preset]
        if preset_sections is not None:
            chosen = {section: chosen[section] for section in preset_sections if section in chosen}
        cfg = deep_merge(cfg, chosen)
    if file:
        below = cfg
        cfg = deep_merge(cfg, read_config_file(file))
        for dotted in chosen_in_file(file):  # a run's config.yaml: what it chose itself (unedited) is chosen again
            set_dotted(cfg, dotted.split("."), copy.deepcopy(get_dotted(below, dotted.split("."))))
    for dotted, value in (flags or {}).items():
        if value is not None:
            set_dotted(cfg, dotted.split("."), value)
    typed = {}
    for word in overrides or []:
        keys, value = parse_override(word)
        set_dotted(cfg, keys, value)
        typed.pop(".".join(keys), None)
        if isinstance(value, bool):  # YAML read the word (on, no, yes) as true or false
            typed[".".join(keys)] = word.split("=", 1)[1]
    for field in ("root", "cache_dir"):
        path = cfg["data"].get(field)
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if isinstance(path, str) and path.strip():
            # recorded absolute: config.yaml is read from other folders later (report, --resume), where a relative
            # root named another folder, or the wrong dataset of the same name (and a cache was decoded again)
            cfg["data"][field] = os.path.abspath(os.path.expanduser(path))
    weights = cfg["model"].get("weights")
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    # '' means no weights (random init); a URL or hub name is left as typed, for the error to name it
    if isinstance(weights, str) and weights.strip() and "://" not in weights and not weights.startswith("hf-hub:"):
        # recorded absolute, as data.root: a --resume from another folder named the same file otherwise
        cfg["model"]["weights"] = os.path.abspath(os.path.expanduser(weights))
    cfg = validate(cfg, typed=typed)
    if (flags or {}).get("data.root") is not None and cfg["data"]["root"] is None:  # scan_root(None): TypeError
        raise UserError("data.root must be a folder (the dataset root that --data names), not empty: drop the "
                        "data.root= word, or give it a folder.")
    folders = cfg["data"]["unlabeled"]
    if folders is not None:  # recorded absolute, as data.root: --resume from another folder looked for ./pool there
        absolute = [os.path.abspath(os.path.expanduser(f)) for f in
                    (folders if isinstance(folders, list) else [folders])]
        cfg["data"]["unlabeled"] = absolute if isinstance(folders, list) else absolute[0]
    return cfg


def same_folders(before, now) -> bool:
    """data.unlabeled as a run recorded it and as given now (one folder or a list): same_recorded_path per
    folder."""
    if before == now:
        return True
    as_list = (lambda v: v if isinstance(v, list) else [v])
    if before is None or now is None or len(as_list(before)) != len(as_list(now)):
        return False
    return all(isinstance(old, str) and isinstance(new, str) and same_recorded_path(old, new)
               for old, new in zip(as_list(before), as_list(now)))


def same_weights_file(saved, now) -> bool:
    """model.weights as a run recorded it (``saved``) and as given now, for --resume (same_recorded_path)."""
    if not saved or not now:
        return not saved and not now
    return same_recorded_path(saved, now)


def same_recorded_path(saved, now) -> bool:
    """Whether a path a run recorded and one given now name the same file or folder. Runs record paths absolute;
    older ones kept the text as typed, relative to a folder they did not record: such a path matches when it is
    the tail of the path given now (`w/t.pth` of `/home/u/w/t.pth`), so that the same file reached from another
    folder resumes, and one of another name or folder is still refused."""
    saved, now = os.path.expanduser(os.fspath(saved)), os.path.abspath(os.path.expanduser(os.fspath(now)))
    if os.path.isabs(saved):
        return os.path.normpath(saved) == now
    tail = [part for part in Path(os.path.normpath(saved)).parts if part not in (".", "..")]
    same = bool(tail) and list(Path(now).parts[-len(tail):]) == tail
    if same and (saved, now) not in _TAIL_NOTED:  # a bare `pool` matches any folder so named: say what was taken
        _TAIL_NOTED.add((saved, now))
        print(printable(f"note: the run recorded {saved} relative to a folder it did not record (an older "
                        f"fewshot); taken as {now}"), file=sys.stderr, flush=True)
    return same


_TAIL_NOTED: set = set()


def _presets_named_in(file, overrides) -> list[tuple[str, str]]:
    """The presets the key=value words and the config file name (the last word, then the file), each with where it
    was named, for a message: a clash with --preset that named a key=value word the user never typed sent them
    looking for it."""
    named = []
    words = [word for word in overrides or [] if word.split("=", 1)[0].strip() == "moco.preset"]
    value = parse_override(words[-1])[1] if words else None  # the last word wins, as set_dotted has it
    if value in PRESETS:
        named.append((value, f"moco.preset={value}"))
    if file:
        moco = config_data(file).get("moco")
        if isinstance(moco, dict) and moco.get("preset") in PRESETS:
            named.append((moco["preset"], f"the config file {file} (moco.preset: {moco['preset']})"))
    return named


def _refuse_preset_clash(named: list[tuple[str, str]]) -> None:
    """Any two of --preset, a word and the file (``named``, in that order) that name different presets are refused:
    the file is layered over the preset, so `moco.preset=mocov1` against a run's config.yaml (which holds every
    field, v2's T, MLP and views) only renamed the preset, where `--preset mocov1` with that file was refused."""
    for name, where in named[1:]:
        if name != named[0][0]:
            hint = ("" if where.startswith("moco.preset=") else
                    " (the file's fields are applied over the preset's: to change preset, edit its moco.preset and "
                    "the fields the presets differ in: moco.temperature, mlp, cos and aug.*)")
            raise UserError(f"{named[0][1]} and {where} name different presets; give one of them{hint}.")


CHOICES = {  # fields whose value must be one of a few words (checked at start-up, not mid-run)
    "data.sampler": ("shuffle", "repeat", "grouped"),
    "train.eval_mode": ("known", "unknown"),
    "model.head": ("linear",),  # SPEC's BN(affine=False) + Linear; the field stays so saved configs still load
    "semi.views": ("randaug", "mocov2"),
    "semi.method": ("off", "fixmatch", "moco", False, None),  # YAML reads a bare off as false (and null as None)
    "model.head_init": ("random", "probe", "prototype"),
    "train.channels_last": ("auto", True, False),
    "train.compile": ("auto", True, False),
    "moco.preset": tuple(["mocov1", "mocov2"]),
    "moco.shuffle_bn": ("auto", True, False, "off", "none"),  # YAML reads on/off as true/false; flags keep words
    "optim.fused": ("auto", True, False, "true", "false", "on", "off"),  # engine._sgd_impl
    "optim.name": ("adamw", "sgd"),
    "train.amp": ("auto", "bf16", "fp16", "off", "false", False, None),  # engine.amp_dtype
    "run.semi_method": ("pseudo", "fixmatch", "off", "none", False, None),  # pipeline.check_run_settings
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


def setting_changed(dotted: str, was: Any, now: Any) -> bool:
    """Whether a resume's setting differs from the run's: the same word in another spelling, the same folders or
    the same weights file by another path are no change."""
    if canonical_value(dotted, was) == canonical_value(dotted, now):
        return False
    if dotted == "data.unlabeled":
        return not same_folders(was, now)
    if dotted == "model.weights":
        return not same_weights_file(was, now)
    return True


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
AT_LEAST = {"model.img_size": 1, "train.threads": 1, "moco.mlp_hidden": 1, "run.queue_size": 1,
            "train.batch_size": 1, "train.epochs": 1, "moco.queue_size": 1, "moco.dim": 1, "moco.knn_k": 1,
            "train.eval_every": 1, "train.save_interval_s": 0, "moco.knn_every": 1, "data.repeats": 1,
            "data.randaug_ops": 0, "data.randaug_group": 1, "train.save_every_steps": 0, "train.skip_nonfinite": 0,
            "semi.mu": 1, "semi.weight": 0, "moco.split_bn_groups": 1, "run.pretrain_batch_size": 2,
            "run.min_epochs": 1, "run.pseudo_labelled_repeat": 1, "run.finetune_backbone_mult": 0,
            "optim.weight_decay": 0, "optim.grad_clip": 0,
            "optim.backbone_lr_mult": 0, "sched.warmup_epochs": 0, "sched.min_lr": 0, "sched.warmup_lr": 0,
            "data.cache_max_gb": 0, "run.pseudo_max_per_shot": 1}
# fields that are `auto` or a whole number in [low, high]: (low, high, what the number means, for the message)
AUTO_OR_WHOLE = {"data.bit_depth": (8, 16, "the bits 16-bit images use, e.g. 12 for values up to 4095")}
POSITIVE = ("optim.lr", "run.pretrain_lr", "train.budget_minutes", "run.finetune_lr", "moco.temperature", "moco.knn_t")  # > 0
# the most minutes a budget may be (`fewshot run --budget-minutes`, train.budget_minutes): about 19 years, beyond
# any run, and far from where the budget's arithmetic in seconds overflows (1e308 minutes passed as finite, became
# inf seconds, and crashed the started run; train.budget_minutes=1e308 meant no time limit without a word)
MAX_BUDGET_MINUTES = 1e7

INTERVALS = {  # (low, high, low included[, high included]): fractions and probabilities
    "data.crop_pct": (0.0, 1.0, False), "data.randaug_p": (0.0, 1.0, True), "aug.jitter_p": (0.0, 1.0, True),
    "aug.gray_p": (0.0, 1.0, True), "aug.blur_p": (0.0, 1.0, True), "aug.flip_p": (0.0, 1.0, True),
    "model.width": (0.0, 4.0, False), "model.img_size": (0, 1024, False, True),  # backbone.MAX_IMG_SIZE
    "data.hflip": (0.0, 1.0, True), "data.hflip_symmetric": (0.0, 1.0, True), "data.randaug_magnitude": (0, 30, True),  # torchvision's 31 magnitude bins
    "model.drop_path": (0.0, 1.0, True, False), "optim.label_smoothing": (0.0, 1.0, True, False),
    "optim.momentum": (0.0, 1.0, True, False), "train.ema_decay": (0.0, 1.0, True, False),
    "semi.threshold": (0.0, 1.0, True), "moco.momentum": (0.0, 1.0, True), "run.moco_momentum": (0.0, 1.0, True),
    "semi.moco_momentum": (0.0, 1.0, True),
    "run.pseudo_threshold": (0.0, 1.0, True), "data.mix_p": (0.0, 1.0, True),
    "data.mixup_alpha": (0.0, 100.0, True, True), "data.cutmix_alpha": (0.0, 100.0, True, True),  # Beta(a, a)
    "train.seed": (-2**63, 2**64 - 1, True, True),  # what torch.manual_seed takes: a larger one was an internal error
}  # the run.* shares are checked by the pipeline (pipeline.check_run_settings)


def _bound(x) -> str:
    return str(x) if _is_whole(x) else f"{x:g}"  # a seed's bound as digits, not 9.22337e+18


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
    return None  # None / list defaults: checked below (TEXT, TEXT_LIST) or where they are used


class FieldError(UserError):
    """A bad value of one config field (``field``, dotted): the command line names the flag that gave it, where a
    flag did (`--epochs -1` said "train.epochs must be ...", a name the user never typed)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def named(self, flag: str, value: Any) -> UserError:
        """The same message, after the flag and the value the user typed (`--epochs -1: train.epochs must ...`)."""
        typed = " ".join(map(str, value)) if isinstance(value, list) else str(value)
        given = flag if isinstance(value, bool) else f"{flag} {typed}"
        return UserError(f"{given}: {self}")


def validate(cfg: dict, defaults: dict | None = None, path: str = "", typed: dict | None = None,
             recorded: bool = False) -> dict:
    """Refuse a value of the wrong type or range now, with the field's name, rather than as a traceback
    minutes into a run. The type is the default's: `train.epochs=ten` or `model.small_stem=2` is an error.
    ``typed``: dotted -> the word as typed on the command line, where YAML read it as another value (`on` as
    true), so that a message shows what the user wrote. ``recorded``: ``cfg`` is a run's own config.yaml (--resume),
    whose budget an older fewshot took above MAX_BUDGET_MINUTES: only its seconds need be finite, or the run could
    never be resumed."""
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
    if dotted in INTERVALS:
        low, high, closed, *rest = INTERVALS[dotted]
        high_closed = rest[0] if rest else True
        if not ((low <= value if closed else low < value) and (value <= high if high_closed else value < high)):
            raise FieldError(dotted, f"{dotted} must be in {'[' if closed else '('}{_bound(low)}, {_bound(high)}"
                                     f"{']' if high_closed else ')'}, not {shown}.")


def memory_bytes() -> int | None:
    """This machine's physical memory (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


MOCO_MEMORY_CAP = 1 << 40  # 1 TiB: where the machine's memory is unknown, no MoCo queue may need more
HEAD_WIDTH_GUESS = 2048  # a ResNet-50's features: the widest MLP head input the presets build


def moco_head_params(dim: int, hidden: int | None, mlp: bool = True) -> int:
    """The weights of MoCo's projection head on a backbone HEAD_WIDTH_GUESS wide: width x hidden and hidden x dim
    (hidden: the width where unset), or one width x dim layer without an MLP. The first layer was left out, so
    moco.mlp_hidden=2000000 on resnet50 was estimated at about 4 GiB of the 60 it takes."""
    if not mlp:
        return HEAD_WIDTH_GUESS * dim
    hidden = hidden or HEAD_WIDTH_GUESS
    return HEAD_WIDTH_GUESS * hidden + hidden * dim


def moco_bytes(queue_size: int, dim: int, batch: int, hidden: int | None, mlp: bool = True) -> int:
    """About the memory MoCo's queue takes in a step: the queue and its copy in the loss (K x dim floats each), the
    logits with their gradient and softmax (3 x batch x K), and the projection heads' weights with gradients and
    optimiser state (4 copies of moco_head_params)."""
    return 4 * (2 * queue_size * dim + 3 * batch * queue_size + 4 * moco_head_params(dim, hidden, mlp))


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**40 else f"{n / 2**40:,.1f} TiB"


def check_moco_memory(cfg: dict) -> None:
    """A queue (moco.queue_size, run.queue_size) or a projection (moco.dim, moco.mlp_hidden) that cannot fit in this
    machine's memory is refused now, naming the field that is too big: `--queue-size 1000000000000` ended in a
    RuntimeError traceback when the queue was allocated."""
    moco, train, run = cfg.get("moco"), cfg.get("train"), cfg.get("run")
    if not all(isinstance(s, dict) for s in (moco, train, run)):
        return
    total = memory_bytes() or MOCO_MEMORY_CAP
    where = f"this machine's {_gib(total)} of memory" if memory_bytes() else f"{_gib(total)}"
    # the hidden width builds a layer only in an MLP head (moco.mlp: false is one linear layer)
    mlp = moco.get("mlp") is not False
    hidden = moco.get("mlp_hidden") if _is_whole(moco.get("mlp_hidden")) and mlp else None
    for field, size, batch in (("moco.queue_size", moco.get("queue_size"), train.get("batch_size")),
                               ("run.queue_size", run.get("queue_size"), run.get("pretrain_batch_size"))):
        if not all(_is_whole(v) for v in (size, moco.get("dim"), batch)):
            continue  # unset (run.queue_size: None), or refused by validate with its own message
        need = moco_bytes(size, moco["dim"], batch, hidden, mlp)
        if need <= total:
            continue
        batch_field = "train.batch_size" if field == "moco.queue_size" else "run.pretrain_batch_size"
        if moco_bytes(size, moco["dim"], min(batch, 256), hidden, mlp) <= total:  # the batch, not the queue:
            # fine-tuning (`train train.batch_size=100000000000`, no MoCo queue at all) was told to shrink
            # moco.queue_size
            # the figure is MoCo's (its scores against the queue); fine-tuning has no queue, yet its images, logits
            # and activations grow with the batch as well, and a batch this size fits neither
            used = (f"with {field} {size}, MoCo pretraining's scores alone would need about {_gib(need)}"
                    if batch_field == "run.pretrain_batch_size" else
                    f"the images, activations and logits of one batch all grow with it; in MoCo pretraining, with "
                    f"{field} {size}, its scores alone would need about {_gib(need)}")
            raise FieldError(batch_field, f"{batch_field} {batch} is too large: a batch of {batch} images cannot "
                                          f"fit in {where} ({used}). Give a batch size of a few hundred at most.")
        wide = hidden is not None and hidden > HEAD_WIDTH_GUESS  # too wide for any queue: no queue can make room
        if hidden is not None and (moco_bytes(size, moco["dim"], batch, None) <= total
                                   or wide and moco_bytes(1, moco["dim"], batch, hidden) > total):
            # the head's width, not the queue: `moco.mlp_hidden=100000000` was told to shrink the queue
            raise FieldError("moco.mlp_hidden", f"moco.mlp_hidden {hidden} (with moco.dim {moco['dim']}) needs about "
                                                f"{_gib(need)} for MoCo's projection head and its copies, more than "
                                                f"{where}. Give a moco.mlp_hidden of a few thousand at most, or "
                                                f"moco.mlp_hidden=null for the backbone's feature width (default).")
        if moco_bytes(size, DEFAULTS["moco"]["dim"], batch, hidden, mlp) <= total:  # the queue fits, the width not
            raise FieldError("moco.dim", f"moco.dim {moco['dim']} (with {field} {size}) needs about {_gib(need)} "
                                         f"for MoCo's queue of negative keys and its projection, more than {where}. "
                                         f"Give a moco.dim of a few hundred at most (default 128).")
        raise FieldError(field, f"{field} {size} with moco.dim {moco['dim']} needs about {_gib(need)} for MoCo's "
                                f"queue of negative keys, more than {where}. Give a smaller queue (the MoCo papers "
                                f"use 4096 to 65536 keys; at most about "
                                f"{_max_queue(total, moco['dim'], batch, hidden, mlp)} fit here).")


def _max_queue(total: int, dim: int, batch: int, hidden: int | None = None, mlp: bool = True) -> str:
    """The largest queue moco_bytes lets fit in ``total`` bytes beside the projection head (``hidden`` wide),
    rounded down to a power of two, as text."""
    most = max(1, (total // 4 - 4 * moco_head_params(dim, hidden, mlp)) // (2 * dim + 3 * batch))
    return f"{1 << (int(most).bit_length() - 1):,}"


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


def save_yaml(cfg: dict, path: Path) -> None:
    from fewshot.utils import atomic_write_text

    kept = {key: value for key, value in cfg.items() if key not in TRANSIENT}
    atomic_write_text(path, yaml.safe_dump(kept, sort_keys=False))
