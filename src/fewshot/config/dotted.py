"""Dotted field names (`optim.lr`) over nested config dicts: getting, setting and merging fields with unknown keys
refused, and reading a key=value word, so that every layer of a config (file, flags, words) is applied alike."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from fewshot.config.defaults import DEFAULTS
from fewshot.config.fields import (AUTO_OR_WHOLE, CHOICES, NONE_WORDS, OPTIONAL, OPTIONAL_NULL, TEXT, TEXT_LIST,
                                   _kind, _plain, field_words, none_is_a_word)
from fewshot.config.yaml_io import read_yaml
from fewshot.errors import UserError


def deep_merge(base: dict, update: dict, path: str = "", strict: bool = True) -> dict:
    """Return base updated by update, refusing keys base does not know (typos)."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        dotted = f"{path}{key}"
        if strict and key not in out:
            if not path:
                refuse_dotted_key(out, key, value)
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


def refuse_dotted_key(cfg: dict, key: Any, value: Any) -> None:
    """A config file's top-level `optim.lr: 1e-3` was refused as "unknown config field 'optim.lr'", a name that
    works as a key=value word: where the dotted key names a field, say to nest it under its section."""
    if not (isinstance(key, str) and "." in key):
        return
    keys = key.split(".")
    try:
        target = get_dotted(cfg, keys)
    except KeyError:
        return
    if isinstance(target, dict):
        return  # a section: the plain message lists what it holds
    shown = "..." if isinstance(value, (dict, list)) else _plain(value)
    section, field = ".".join(keys[:-1]), keys[-1]
    raise UserError(f"unknown config field '{key}': a config file nests each field under its section, "
                    f"`{section}:` on one line and `  {field}: {shown}` indented below it ({key}={shown} is the "
                    f"key=value word's form).")


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
    if raw.strip() in NONE_WORDS and not none_is_a_word(key):
        return key.split("."), None  # quoted ("None") it stays text: a folder may have that name
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
                raise UserError(f"'{dotted}' is a section; set one of its fields, e.g. "
                                f"{dotted}.{next(iter(node[key]))}=...")
            node[key] = value
        else:
            node = node[key]
