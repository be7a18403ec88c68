"""The record a run keeps in its config.yaml of the values it chose itself (CHOSEN: learning rate, network, device)
and the notes when a --config run's file is chosen again otherwise, so that a value the user gave stays theirs and
one the run chose is chosen anew; also what of such a file is a setting (file_settings) and how it is saved."""

from __future__ import annotations

import copy
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from fewshot.config.defaults import DEFAULTS
from fewshot.config.dotted import flatten_dotted, get_dotted
from fewshot.config.fields import NONE_WORDS, _as_number, _plain
from fewshot.config.runfile import written_by_run
from fewshot.config.yaml_io import config_data, find_config
from fewshot.errors import UserError, printable


CHOSEN = "_chosen"  # a run's config.yaml: the fields the run chose itself (RUN_TIME_FIELDS), not the user
RECHOSEN = "_rechosen"  # in memory only: what a --config file's CHOSEN fields held, for the note (note_rechosen)
# a `fewshot run` stage's config.yaml whose model.weights is the run's own MoCo export: the weights the run was given
# (--weights), which its MoCo stage started from; `fewshot run --config` starts from them again (rechosen_value)
GIVEN_WEIGHTS = "_given_weights"
# data.resize=auto's choice per dataset (crop or pad, by name: data/fit.py), which resume, predict and eval repeat;
# a --config of the file decides it anew
RESIZE_RECORD = "_resize"
# each dataset's median training image [width, height] (data/fit.py), which predict's and eval's note compares the
# images given with: re-read from data.root, it cost seconds a call and named a root that now holds other images
SHAPE_RECORD = "_shapes"
# written into a run's config.yaml by the tool (report, resume)
RECORDED = ("_task", CHOSEN, GIVEN_WEIGHTS, RESIZE_RECORD, SHAPE_RECORD)
RECHOSEN_LATER = "_rechosen_later"  # in memory only: RECHOSEN's fields chosen once training starts (CHOSEN_LATER)
# in memory only: the data.resize a --weights file records, until the datasets are known (data/weights_resize.py)
WEIGHTS_RESIZE = "_weights_resize"
TRANSIENT = (RECHOSEN, RECHOSEN_LATER, WEIGHTS_RESIZE)  # never written into config.yaml (save_yaml)

# Fields a run fills in itself where the user left them unset (None, or auto): the learning rate and backbone
# multiplier (resolve_finetune_defaults: --weights or not; resolve_pretrain_defaults: the global batch), the
# network a --weights export records (model.name, img_size, width, small_stem), the bit depth it records
# (cli_config.adopt_recorded_bit_depth: a run fine-tuned from it could not be resumed, its _chosen "refused") and the
# device and the arithmetic train.amp=auto resolves to (train/optim.py record_amp: bf16 on one CPU, fp32 on another).
# config.yaml saves the values used and records these under CHOSEN with the value chosen, so that the file
# given back as --config chooses them again where it still holds that value (an edited value is the user's).
RUN_TIME_FIELDS = ("optim.lr", "optim.backbone_lr_mult", "model.name", "model.img_size", "model.width",
                   "model.small_stem", "data.bit_depth", "train.device", "train.amp")
# Of those, the ones chosen only once training starts (the Engine resolves train.amp), after the start's note: while
# they still hold this value, note_rechosen leaves their part of the note for its call then (Engine._record_amp).
CHOSEN_LATER = {"train.amp": "auto"}
# Fields only a `fewshot run` stage records under CHOSEN: its model.weights where that is the run's own MoCo export
# (run_stages.finetune_config). Only `fewshot run` chooses it again (resolve(rechoose_weights=True)): its MoCo stage
# makes a new export, from the weights the run was given (GIVEN_WEIGHTS); a repeat from the stage's file continued
# from the old run's backbone. `fewshot train` and `pretrain` keep the export: they have no MoCo stage before theirs.
RUN_CHOSEN_FIELDS = ("model.weights",)
CHOSEN_FIELDS = RUN_TIME_FIELDS + RUN_CHOSEN_FIELDS


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
    other = [c for c in chosen if c not in CHOSEN_FIELDS]
    if other:
        raise UserError(f"config file {where}: {CHOSEN} lists {', '.join(other)}, which no run chooses itself (those "
                        f"are {', '.join(CHOSEN_FIELDS)}); delete {'them' if len(other) > 1 else 'it'} from "
                        f"{CHOSEN}.")
    return dict(chosen)


RESIZE_MODES = ("crop", "pad")


def resize_record(data: dict, where: str | Path,
                  deleted: str = "have each dataset decided again from its images") -> dict:
    """The RESIZE_RECORD of a run's config (``data``, read from ``where``: its config.yaml or checkpoint), checked:
    each dataset's name mapped to crop or pad; {} where there is none. A hand-edited entry (`1: crop`, `PAD`)
    crashed the decode or was silently decided again (review rev89 #1). ``deleted``: what deleting the entry does
    (run_state.json's is taken from the run's stages, restore_fit_records)."""
    record = data.get(RESIZE_RECORD)
    if record is None:
        return {}
    bad = [f"{k!r}: {v!r}" for k, v in record.items() if not (isinstance(k, str) and k.strip())
           or v not in RESIZE_MODES] if isinstance(record, dict) else [repr(record)]
    if bad:
        raise UserError(f"{where}: its {RESIZE_RECORD} entry must map each dataset's name to crop or pad "
                        f"(digits: pad), as the run recorded how it decoded each dataset's images under "
                        f"data.resize=auto, but it holds {', '.join(bad)}; correct that entry (lowercase crop or pad, "
                        f"the dataset's folder name as the key), or delete it to {deleted}.")
    return dict(record)


# the widest side a SHAPE_RECORD entry may hold: a 400-digit side (a hand edit) overflowed the note's ratio
MAX_RECORDED_SIDE = 1 << 16


def shape_record(data: dict) -> dict:
    """The SHAPE_RECORD of a run's config (``data``, read back from a file: untrusted) as {name: (width, height)}:
    an entry that is not two whole numbers of pixels in 1..MAX_RECORDED_SIDE is left out, as if not recorded, since
    it feeds a note only (shape_change_notes), which then goes by the run's data.resize."""
    record = data.get(SHAPE_RECORD) if isinstance(data, dict) else None

    def pixels(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_RECORDED_SIDE

    return {name: (shape[0], shape[1]) for name, shape in record.items()
            if isinstance(name, str) and isinstance(shape, (list, tuple)) and len(shape) == 2
            and all(pixels(v) for v in shape)} if isinstance(record, dict) else {}


def same_value(first: Any, second: Any) -> bool:
    """Whether a config.yaml's value is still the one its CHOSEN record holds (`4e-3` typed for 0.004 is)."""
    first, second = _as_number(first), _as_number(second)
    return isinstance(first, bool) == isinstance(second, bool) and first == second


def chosen_in_file(path: str | Path) -> dict:
    """The fields a run's config.yaml records as chosen at run time (CHOSEN) and still holds at the recorded value,
    with that value: --config leaves them to be chosen again. A value edited since is the user's, pinned (and
    compared on --resume). A run's config.yaml without the record (an older fewshot's): the fields holding a value
    the rules choose (chosen_by_rule); {} for the user's own file. Either way a `fewshot run` stage's own MoCo
    export that its record does not hold is chosen (own_export_by_rule)."""
    data = config_data(path)
    raw = flatten_dotted({key: value for key, value in data.items() if key not in RECORDED})
    if CHOSEN not in data and not written_by_run(data, path):
        return {}
    chosen = chosen_by_rule(data.get("_task"), raw) if CHOSEN not in data else {
        dotted: value for dotted, value in chosen_record(data, path).items()
        if dotted in raw and same_value(raw[dotted], value)}
    if "model.weights" not in chosen and own_export_by_rule(raw, path):
        chosen["model.weights"] = raw["model.weights"]
    return chosen


def own_export_by_rule(raw: dict, path: str | Path) -> bool:
    """Whether a `fewshot run --pretrain` stage's config.yaml (``raw``, dotted, read from ``path``) holds its own
    run's MoCo export as model.weights without a record of it as chosen: a stage written before the record (a path
    relative to the run's cwd), or one whose record named the folder it was moved from. `run --config` of it
    continued from the old export, as from the user's weights. The export is the stage folder's parent's
    backbone.safetensors; a relative path is matched by its trailing folders, or from the current folder."""
    weights = raw.get("model.weights")
    if raw.get("run.pretrain") is not True or not isinstance(weights, str) or not weights.strip():
        return False
    export = find_config(path).resolve().parent.parent / "backbone.safetensors"
    given = Path(os.path.normpath(os.path.expanduser(weights.strip())))
    if given.name != export.name:
        return False
    if given.is_absolute() or ".." in given.parts:
        return Path(os.path.abspath(given)).resolve() == export
    trailing = len(given.parts) > 1 and export.parts[-len(given.parts):] == given.parts  # runs/x/backbone...
    return trailing or given.resolve() == export


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


def rechosen_value(path: str | Path, dotted: str, below: dict) -> Any:
    """What a --config file's field that its run chose itself (chosen_in_file) is chosen again as: the value under
    the file (``below``: the defaults and preset), which the run fills in again; a `fewshot run` stage's own MoCo
    export (RUN_CHOSEN_FIELDS): the weights that run was given, its MoCo stage's start (GIVEN_WEIGHTS; none: none)."""
    if dotted in RUN_CHOSEN_FIELDS and GIVEN_WEIGHTS in config_data(path):
        return copy.deepcopy(config_data(path)[GIVEN_WEIGHTS])
    return copy.deepcopy(get_dotted(below, dotted.split(".")))


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
    rechosen = cfg.pop(RECHOSEN, None) or cfg.pop(RECHOSEN_LATER, None)
    if rechosen:
        rechosen = defer_later_fields(cfg, rechosen)
    if not rechosen or not say:
        return
    other_task = rechosen.get("task") != cfg.get("_task")  # `_task: moco` for MoCo, none for fine-tuning
    meant = "MoCo pretraining's, not meant for fine-tuning" if rechosen.get("task") == "moco" else \
        "fine-tuning's, not meant for MoCo pretraining"
    differ, keep = [], ""
    # a stage's own export that this command keeps (train, pretrain: resolve chose it again only for run) goes unnamed
    values = {dotted: was for dotted, was in rechosen["values"].items()
              if dotted not in RUN_CHOSEN_FIELDS or get_dotted(cfg, dotted.split(".")) != was}
    for dotted, was in values.items():
        now = get_dotted(cfg, dotted.split("."))
        if now == was:
            continue
        if other_task and dotted.startswith("optim."):
            differ.append(f"{dotted} {_plain(now)} ({_plain(was)} there: {meant})")
        else:  # a run's repeat starts its MoCo anew: from the given weights, not the old export
            export = ": the MoCo export of the run that wrote it" if dotted in RUN_CHOSEN_FIELDS else ""
            differ.append(f"{dotted} {_plain(now)} ({_plain(was)} there{export})")
            keep = keep or f"{dotted}={_plain(was)}"
    if differ:
        fields = ", ".join(values)
        # an older fewshot's run or `fewshot run` stage recorded nothing: values a run's rules choose count as chosen
        said = (f"is a run's config.yaml without a record of what the run chose itself (an older fewshot's run or "
                f"`fewshot run` stage); it holds {fields} at values a run chooses itself"
                if rechosen.get("unrecorded") else
                f"records {fields} as chosen by the run that wrote it")
        advice = f" (give e.g. {keep} to keep the file's value)" if keep else ""
        print(printable(f"note: {rechosen['file']} {said}, so this command chose "
                        f"{'them' if len(values) > 1 else 'it'} again: {', '.join(differ)}{advice}."),
              file=sys.stderr, flush=True)


def defer_later_fields(cfg: dict, rechosen: dict) -> dict:
    """``rechosen`` (mark_rechosen's record) without the CHOSEN_LATER fields not chosen yet, which go back into
    ``cfg`` (RECHOSEN_LATER) for the next note_rechosen: said now, train.amp read "auto" against the file's bf16."""
    values = rechosen["values"]
    later = {dotted: was for dotted, was in values.items()
             if dotted in CHOSEN_LATER and get_dotted(cfg, dotted.split(".")) == CHOSEN_LATER[dotted]}
    if later:
        cfg[RECHOSEN_LATER] = {**rechosen, "values": later}
    return {**rechosen, "values": {dotted: was for dotted, was in values.items() if dotted not in later}}


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


def save_yaml(cfg: dict, path: Path) -> None:
    from fewshot.utils import atomic_write_text

    kept = {key: value for key, value in cfg.items() if key not in TRANSIENT}
    atomic_write_text(path, yaml.dump(kept, Dumper=RecordDumper, sort_keys=False))


class RecordDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting the text `None` / `none` / `NONE` (NONE_WORDS): written plain, a folder of
    that name would be read back as null (yaml_io.keep_text_as_typed) on resume."""


def _quoted_none_words(dumper: yaml.SafeDumper, text: str):
    style = "'" if text in NONE_WORDS else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


RecordDumper.add_representer(str, _quoted_none_words)
