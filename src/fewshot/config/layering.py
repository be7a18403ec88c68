"""resolve(): one config from the layers defaults < preset < config file < flags < key=value words, checked, with its
paths made absolute; kept apart so that the order of the layers and the preset rules read in one place."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from fewshot.config.defaults import DEFAULTS, PRESETS
from fewshot.config.dotted import deep_merge, parse_override, set_dotted
from fewshot.config.recorded import RUN_CHOSEN_FIELDS, chosen_in_file, read_config_file, rechosen_value
from fewshot.config.validation import validate
from fewshot.config.yaml_io import config_data, one_read_per_file
from fewshot.errors import UserError


def resolve(preset: str | None = None, file: str | Path | None = None, flags: dict | None = None,
            overrides: list[str] | None = None, default_preset: str | None = None,
            preset_sections: tuple[str, ...] | None = None, rechoose_weights: bool = False) -> dict:
    """Layer defaults < preset < config file < command-line flags < key=value words. The preset is ``preset``
    (--preset), else the one the file or the words name (`moco.preset: mocov1`, which used to change the recorded
    name only and leave the other preset's T, MLP and schedule in place), else ``default_preset``. Places that name
    different presets are refused (_refuse_preset_clash): the file is layered over the preset, so its values win.
    ``preset_sections``: only these sections of the preset apply (`fewshot run` takes its MoCo stage's moco.* and
    aug.* from the preset, but its optimiser, batch and epochs from run.* and its plan; the preset's resnet50 and
    SGD would otherwise reach fine-tuning too). ``rechoose_weights``: `fewshot run`, which chooses a stage's own MoCo
    export (RUN_CHOSEN_FIELDS) again; train and pretrain keep it."""
    with one_read_per_file():  # the file read once: its settings, CHOSEN record and preset from one version
        return _resolve(preset, file, flags, overrides, default_preset, preset_sections, rechoose_weights)


def _resolve(preset: str | None, file: str | Path | None, flags: dict | None, overrides: list[str] | None,
             default_preset: str | None, preset_sections: tuple[str, ...] | None, rechoose_weights: bool) -> dict:
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
            if dotted not in RUN_CHOSEN_FIELDS or rechoose_weights:
                set_dotted(cfg, dotted.split("."), rechosen_value(file, dotted, below))
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
