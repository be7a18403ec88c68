"""A command's flags and key=value words made into its config (train, pretrain, run): the flags the user gave,
the fields the command line gives, the model and data.bit_depth a --weights file records, a resumed run's saved
config as the base, and the notes where a word replaces a flag or an earlier word.

Apart from cli.py (the commands and their exit codes) because every training command resolves its config this way,
and the question "did the user give this field?" has one answer here (given_fields) for `fewshot run`
(cli_run) and the warnings (cli_warnings) too.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


def _flags(args, mapping: dict) -> dict:
    """The flags the user gave. An unset flag is None (store_true: False); a 0 is a value (`--seed 0` must
    override a config file's seed), which `not in (None, False)` would drop since 0 == False."""
    out = {}
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None and value is not False:
            out[key] = value
    return out


TRAIN_FLAGS = {"data": "data.root", "model": "model.name", "datasets": "data.datasets", "epochs": "train.epochs",
               "batch_size": "train.batch_size", "img_size": "model.img_size", "lr": "optim.lr",
               "seed": "train.seed", "device": "train.device", "skip_bad_images": "data.skip_bad_images",
               "save_every_steps": "train.save_every_steps", "weights": "model.weights",
               "skip_nonfinite": "train.skip_nonfinite"}


def given_fields(flags: dict, extra: list[str]) -> set[str]:
    """The dotted fields the command line gives: those of the flags set (their value not None) and of the
    key=value words, so that each question "did the user give this field?" has one answer."""
    from fewshot.config import parse_override

    return {dotted for dotted, value in flags.items() if value is not None} | \
        {".".join(parse_override(word)[0]) for word in extra}


def model_named(flags: dict, extra: list[str], config_file: str | None) -> bool:
    """Whether the user named a model (--model, a model.name= word, the config file): a named one is never replaced
    by the one a weights file or a run records."""
    from fewshot.config import file_settings

    return bool("model.name" in given_fields(flags, extra)
                or (config_file and "model.name" in file_settings(config_file)))


def adopt_recorded_model(cfg: dict, flags: dict, extra: list[str], config_file: str | None) -> None:
    """model.weights' recorded model where the user named none (--model, a model.name= word, the config file)."""
    from fewshot.models.backbone import adopt_weights_model

    adopt_weights_model(cfg["model"], model_named(flags, extra, config_file))


def adopt_recorded_bit_depth(cfg: dict, flags: dict, extra: list[str], config_file: str | None) -> None:
    """model.weights' recorded data.bit_depth where the user gave none (a flag, a word, the config file): the scale
    its features were learnt at, as probe, eval and predict read it (`train --weights` of a data.bit_depth=12 MoCo
    run fine-tuned on its 16-bit images at the 16-bit scale: dark, in 17 grey levels)."""
    from fewshot.config import file_settings, record_chosen
    from fewshot.eval.probe import bit_depth_for

    given = "data.bit_depth" in given_fields(flags, extra) or bool(
        config_file and "data.bit_depth" in file_settings(config_file))
    if given or not cfg["model"].get("weights"):
        return
    before = cfg["data"]["bit_depth"]
    cfg["data"]["bit_depth"] = bit_depth_for(cfg["model"]["weights"], None)
    record_chosen(cfg, {"data.bit_depth": before})  # the weights file's, not the user's: chosen again later


def mark_recorded_resize(cfg: dict, flags: dict, extra: list[str], config_file: str | None) -> None:
    """model.weights' recorded data.resize, kept for the start (data/weights_resize.py): taken where the user gave
    none, compared where they did."""
    from fewshot.config import file_settings
    from fewshot.data.weights_resize import mark_weights_resize

    if cfg["model"].get("weights"):
        mark_weights_resize(cfg, "data.resize" in given_fields(flags, extra) or bool(
            config_file and "data.resize" in file_settings(config_file)))


def resolve_run_config(args, extra: list[str], mapping: dict, preset: str | None = None,
                       default_preset: str | None = None) -> dict:
    from fewshot.config import PER_INVOCATION, file_settings, get_dotted, mark_rechosen, parse_override, record_chosen
    from fewshot.models.backbone import note_pretrained_tag, timm_name
    from fewshot.train.resume_config import merge_resume_config, resumes_from_config

    flags = _flags(args, mapping)
    if getattr(args, "no_progress", False):
        flags["train.progress"] = False
    names = {key: "--" + attr.replace("_", "-") for attr, key in mapping.items()}
    cfg = resolve_naming_flags(names, flags, extra, preset=preset, file=args.config, default_preset=default_preset)
    note_flags_overridden(flags, names, extra)
    cfg["model"]["name"] = timm_name(cfg["model"]["name"])  # as recorded, and as a resume compares it
    # a resumed run keeps its recorded model; --resume with no run's config.yaml in --out starts fresh, and adopts
    # the model --weights records as a fresh run does (it kept the default resnet18 and failed on the file)
    if not (args.resume and resumes_from_config(Path(args.out))):
        name = cfg["model"]["name"]
        adopt_recorded_model(cfg, flags, extra, args.config)
        adopt_recorded_bit_depth(cfg, flags, extra, args.config)
        mark_recorded_resize(cfg, flags, extra, args.config)
        record_chosen(cfg, {"model.name": name})  # the weights file's model, not the user's: chosen again later
        note_pretrained_tag(cfg["model"])
    # a run's config.yaml as --config: what it holds for the fields that run chose itself, for the note that names
    # those chosen otherwise now (a resume with a config.yaml replaces cfg with the run's: no note)
    mark_rechosen(cfg, args.config, given_fields(flags, extra))
    if args.resume:
        # the saved config is the base; a --config file given now, then flags, then words change it
        explicit = file_settings(args.config) if args.config else {}
        explicit.update(flags)
        if preset:  # --preset changes T, MLP and the schedule: as if each were given (resume refused it silently)
            explicit["moco.preset"] = preset
        for word in extra:
            keys, value = parse_override(word)
            explicit[".".join(keys)] = value
        for key in explicit:  # as validated (a file's `lr: 1e-3` is the string '1e-3' until then)
            with contextlib.suppress(KeyError, TypeError):
                explicit[key] = get_dotted(cfg, key.split("."))
        for dotted in PER_INVOCATION:  # this command's (a flag, a word, a recipe or the default), never the run's
            explicit[dotted] = get_dotted(cfg, dotted.split("."))
        cfg = merge_resume_config(Path(args.out), cfg, explicit)
    return cfg


def resolve_naming_flags(names: dict, flags: dict, extra: list[str], **kwargs) -> dict:
    """config.resolve(), whose message about a bad value names the flag that gave it (`--epochs -1` said
    "train.epochs must be ..."), unless a key=value word set the field after the flag."""
    from fewshot.config import FieldError, resolve

    try:
        return resolve(flags=flags, overrides=extra, **kwargs)
    except FieldError as exc:
        words = given_fields({}, extra)  # every word parsed already: resolve read them
        if flags.get(exc.field) is not None and exc.field in names and exc.field not in words:
            raise exc.named(names[exc.field], flags[exc.field]) from None
        raise


def same_setting(dotted: str, first, second) -> bool:
    """Whether two values given for one field are the same setting: the same word in another spelling (--semi off
    and run.semi_method=off, which YAML reads as false), or the same path as typed and as expanded."""
    from fewshot.config import canonical_value

    if isinstance(first, str) and isinstance(second, str) and dotted in ("data.root", "model.weights"):
        # the flag's path is expanded by argparse, the word's by resolve: the same file is no replacement
        return os.path.abspath(os.path.expanduser(first)) == os.path.abspath(os.path.expanduser(second))
    return canonical_value(dotted, first) == canonical_value(dotted, second)


def note_flags_overridden(flags: dict, names: dict, extra: list[str]) -> None:
    """A flag and a key=value word that set the same field: the word wins (words come last); say so. So does the
    last of two words for one field, which won without a word. Under torchrun every process resolves the same
    words: rank 0 alone says so (each note came out once per process)."""
    from fewshot.cli_ranks import launch_rank
    from fewshot.config import parse_override

    if launch_rank() != 0:
        return False
    words: dict[str, str] = {}
    for word in extra:
        keys, value = parse_override(word)
        dotted = ".".join(keys)
        if dotted in words and not same_setting(dotted, parse_override(words[dotted])[1], value):
            print(f"note: {word} replaces {words[dotted]} given before it (the last word for a field wins)",
                  file=sys.stderr, flush=True)
        words[dotted] = word
        given_value = flags.get(dotted)
        same = same_setting(dotted, given_value, value)
        if given_value is not None and not same:
            flag = names.get(dotted, dotted)
            given = (f"{flag}" if given_value is True else f"the flag that set {dotted}=false"
                     if given_value is False else f"{flag} {given_value}")
            print(f"note: {word} replaces {given}", file=sys.stderr, flush=True)
