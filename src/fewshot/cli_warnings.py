"""The warnings of a training command (train, pretrain, run) about settings it was given and does not use: a
key=value word nothing reads, a field `fewshot run` sets itself, a config file that is the other command's recipe.

Apart from the commands because train, pretrain and run share them, and the field tuples they read say which
command reads what.
"""

from __future__ import annotations

import sys


# fields `fewshot run` sets itself (run_stages.pretrain_stage and plan_stage, run_pipeline): a key=value word for one
# of them was accepted, recorded in the stages' config.yaml and never used
RUN_REPLACES = {
    "moco.queue_size": "run.queue_size (the MoCo stage's queue, with --pretrain); set that",
    "moco.momentum": "run.moco_momentum (the MoCo stage's key-encoder momentum, with --pretrain); set that",
    "train.epochs": "the run's plan, which fits each stage's epochs into --budget-minutes; set that (and "
                    "run.min_epochs, the lowest epoch cap a stage plans, not a promise of epochs: the budget "
                    "ends a stage first)",
    "train.budget_minutes": "--budget-minutes (the whole run's); set that",
    "train.eval_every": "the run's plan (evaluations take about a tenth of each stage's time)",
    "moco.knn_every": "the run's plan (evaluations take about a tenth of each stage's time)",
    "sched.time_based": "the run's time-based schedule, always on in `fewshot run`",
    "semi.method": "run.semi_method (--semi pseudo, fixmatch or off; semi.method=moco, the joint MoCo loss, is a "
                   "`fewshot train` option); set that",
}


def warn_replaced_overrides(extra) -> None:
    """`fewshot run moco.queue_size=64` ran with K=128 without a word: say which field the run uses instead (rank 0
    alone, as every warning here)."""
    from fewshot.cli_config import given_fields
    from fewshot.cli_ranks import launch_rank

    if launch_rank() != 0:
        return
    for word in extra or []:
        dotted = next(iter(given_fields({}, [word])))
        if dotted in RUN_REPLACES:
            print(f"warning: {word} is replaced by {RUN_REPLACES[dotted]}.", file=sys.stderr, flush=True)


# the run.* fields only `fewshot run`'s MoCo stage reads (run_stages.pretrain_stage,
# run_checks.check_pretrain_settings) or, after it, the fine-tuning lr rules (run_stages.finetune_config): words
# nothing reads without run.pretrain
MOCO_STAGE_FIELDS = ("run.pretrain_share", "run.pretrain_batch_size", "run.pretrain_lr", "run.queue_size",
                     "run.moco_momentum", "run.finetune_lr", "run.finetune_backbone_mult")


# the run.* fields that also set the lr of a fine-tuning from fewshot's own --weights file, in `fewshot train` and in
# a run without a MoCo stage (train/supervised.py small_data_recipe)
SMALL_DATA_RECIPE_FIELDS = ("run.finetune_lr", "run.finetune_backbone_mult")


def _small_data_weights(cfg: dict) -> bool:
    """Whether model.weights fine-tune at the small-data recipe, which reads SMALL_DATA_RECIPE_FIELDS."""
    from fewshot.train.supervised import small_data_recipe

    return bool((cfg.get("model") or {}).get("weights")) and small_data_recipe(cfg) is not None


# the fields `fewshot pretrain` (MoCoTask, the Engine under it, run_pretrain) never reads, traced from a run: the
# fine-tuning head, loss, backbone lr (param_groups gives every parameter one rate), EMA (MoCoTask.supports_ema is
# false), evaluation (moco.knn_every is its schedule), the labelled sampler and views (MoCo's are aug.*) and semi.*;
# run.* and the mixing fields have reasons of their own (unused_override_warnings)
PRETRAIN_UNREAD = ("model.head", "model.head_init", "optim.label_smoothing", "optim.backbone_lr_mult", "train.ema",
                   "train.ema_decay", "train.ema_warmup", "train.eval_every", "train.eval_mode", "data.sampler",
                   "data.repeats", "data.randaug_ops", "data.randaug_magnitude", "data.randaug_p",
                   "data.randaug_group", "data.hflip", "data.hflip_symmetric", "data.gray_p")
# the moco.* fields fine-tuning with semi.method=moco reads (train/semi_moco.py); without it, it reads none
SEMI_MOCO_READS = ("moco.dim", "moco.mlp", "moco.mlp_hidden", "moco.temperature", "moco.queue_size",
                   "moco.shuffle_bn", "moco.split_bn_groups")


def unused_override_warnings(command: str, cfg: dict, extra, baseline: bool = False) -> list[str]:
    """The key=value words ``command`` (train, pretrain, run) or its method never reads, one warning per reason
    naming them: `fewshot train run.pseudo_rounds=5`, `fewshot run --semi off run.pseudo_rounds=1`,
    `fewshot run --baseline run.pretrain_share=0.4`, `data.mix_p=0.3` without mixup or CutMix, fine-tuning words
    given to pretrain (PRETRAIN_UNREAD), moco.* words given to train or to a run without a MoCo stage and semi.*
    words its fine-tuning method does not read (`fewshot train semi.threshold=0.5` without semi.method=fixmatch) were
    accepted and did nothing, without a word. Only typed words: a shared --config file may carry them. Warned, not
    refused, for the same reason. ``baseline``: `fewshot run --baseline`, which refuses --semi pseudo and
    --pretrain, so the advice is to drop it instead."""
    from fewshot.config import parse_override

    pretrain = bool(cfg.get("run", {}).get("pretrain"))
    semi = cfg.get("run", {}).get("semi_method")
    semi = "off" if semi in (None, False, "off", "none") else semi  # YAML reads a bare `off` as false
    data = cfg.get("data", {})
    mixing = any(isinstance(data.get(k), (int, float)) and data[k] > 0 for k in ("mixup_alpha", "cutmix_alpha"))
    semi_moco = cfg.get("semi", {}).get("method") == "moco"
    # the semi.* fields each fine-tuning method reads (train/semi.py UnlabeledStream and fixmatch_loss,
    # train/semi_moco.py): off reads none; `fewshot run` sets semi.method itself, to fixmatch with --semi fixmatch
    # and to off otherwise (run_stages.finetune_config); semi.method itself has its own warning under run
    tuning = semi if command == "run" else cfg.get("semi", {}).get("method")
    tuning = tuning if tuning in ("fixmatch", "moco") else "off"
    semi_reads = {"fixmatch": ("semi.mu", "semi.threshold", "semi.weight", "semi.views"),
                  "moco": ("semi.mu", "semi.weight", "semi.moco_momentum")}.get(tuning, ())
    unused: dict[str, list[str]] = {}
    for word in extra or []:
        dotted = ".".join(parse_override(word)[0])
        if command in ("train", "run") and dotted in SMALL_DATA_RECIPE_FIELDS and _small_data_weights(cfg):
            continue  # the lr recipe of fewshot's own --weights file (train/supervised.py small_data_recipe)
        if command in ("train", "pretrain") and dotted.startswith("run."):
            why = (f"`fewshot {command}` reads no run.* field (they set `fewshot run`'s stages and budget); drop "
                   f"them, or give them to `fewshot run`")
        elif command == "run" and dotted.startswith("run.pseudo_") and semi != "pseudo":
            why = (f"run.pseudo_* fields are read by self-training only (--semi pseudo) and this run's method is "
                   f"{semi}; drop them, or {'drop --baseline' if baseline else 'give --semi pseudo'}")
        elif command == "run" and dotted in MOCO_STAGE_FIELDS and not pretrain:
            why = (f"run.pretrain_*, run.queue_size, run.moco_momentum and run.finetune_* are read only with a MoCo "
                   f"stage (--pretrain) and {'--baseline runs none' if baseline else 'this run has none'}; drop them, "
                   f"or {'give --pretrain instead of --baseline' if baseline else 'give --pretrain'}")
        elif command == "run" and dotted.startswith("moco.") and not pretrain and dotted not in RUN_REPLACES:
            # only the MoCo stage reads moco.*: the run's fine-tuning sets semi.method itself (never moco,
            # run_stages.finetune_config); the replaced fields have their own warning (warn_replaced_overrides)
            why = (f"`fewshot run` reads moco.* only in its MoCo stage (--pretrain) and "
                   f"{'--baseline runs none' if baseline else 'this run has none'}; drop them, or "
                   f"{'give --pretrain instead of --baseline' if baseline else 'give --pretrain'}")
        elif command == "pretrain" and dotted in ("data.mix_p", "data.mixup_alpha", "data.cutmix_alpha"):
            why = ("`fewshot pretrain` mixes no batches (mixup and CutMix are supervised training's); drop them, or "
                   "give them to `fewshot train` or `fewshot run`")
        elif command == "pretrain" and (dotted in PRETRAIN_UNREAD or dotted.startswith("semi.")):
            why = ("`fewshot pretrain` does not read them (fine-tuning's head, loss, backbone lr, EMA, evaluation, "
                   "sampler, RandAugment and flips, and semi.*; MoCo's views are aug.*, its kNN monitor moco.knn_*); "
                   "drop them, or give them to `fewshot train` or `fewshot run`")
        elif (command in ("train", "run") and dotted.startswith("semi.") and dotted != "semi.method"
              and dotted not in semi_reads):
            if command == "run" and tuning == "off":
                why = (f"`fewshot run` reads semi.* only with --semi fixmatch (FixMatch while fine-tuning) and this "
                       f"run's method is {semi}; drop them, or "
                       f"{'drop --baseline and give --semi fixmatch' if baseline else 'give --semi fixmatch'}")
            elif command == "run":
                why = ("`fewshot run --semi fixmatch` reads only semi.mu, semi.threshold, semi.weight and semi.views "
                       "of semi.* (semi.moco_momentum is the joint MoCo loss's, `fewshot train semi.method=moco`; "
                       "the MoCo stage's momentum is run.moco_momentum); drop them")
            elif tuning == "off":
                why = ("`fewshot train` reads semi.* only with semi.method=fixmatch (semi.mu, threshold, weight, "
                       "views) or semi.method=moco (semi.mu, weight, moco_momentum), which train on the unlabeled "
                       "pool; drop them, or give one of those")
            else:
                other, note = (("moco", "semi.moco_momentum is the joint MoCo loss's") if tuning == "fixmatch"
                               else ("fixmatch", "it takes MoCo v2's views, aug.*, and no pseudo-labels"))
                why = (f"semi.method={tuning} reads only {', '.join(semi_reads)} of semi.* ({note}); drop them, or "
                       f"give semi.method={other}")
        elif command == "train" and dotted.startswith("moco.") and not semi_moco:
            why = ("`fewshot train` reads moco.* only with semi.method=moco (MoCo's loss on the pool while "
                   "fine-tuning); drop them, give semi.method=moco, or give them to `fewshot pretrain`")
        elif command == "train" and dotted.startswith("moco.") and dotted not in SEMI_MOCO_READS:
            why = (f"semi.method=moco reads only {', '.join(SEMI_MOCO_READS)} of moco.* (its key encoder's momentum "
                   f"is semi.moco_momentum); drop them, or give them to `fewshot pretrain`")
        elif command in ("train", "run") and dotted == "data.mix_p" and not mixing:
            why = ("data.mix_p is the share of batches mixed, and neither mixup nor CutMix is on; give "
                   "data.mixup_alpha or data.cutmix_alpha above 0 as well, or drop it")
        else:
            why = _read_only_with_another_setting(command, cfg, dotted, baseline)
            if why is None:
                continue
        unused.setdefault(why, []).append(word)
    return [f"warning: {' '.join(words)} {'does' if len(words) == 1 else 'do'} nothing: {why}."
            for why, words in unused.items()]


def _read_only_with_another_setting(command: str, cfg: dict, dotted: str, baseline: bool) -> str | None:
    """Why ``command`` never reads ``dotted`` with these settings, or None: SGD's optim.momentum and optim.fused
    (train/optim.py) under AdamW, data.repeats without the repeat sampler, sched.time_based without a budget (the
    Engine's deadline) and the pool's fields without a method that reads the pool were accepted and did nothing.
    pretrain's data.repeats is PRETRAIN_UNREAD's; run's sched.time_based is RUN_REPLACES'."""
    sgd = cfg.get("optim", {}).get("name") == "sgd"
    if dotted in ("optim.momentum", "optim.fused") and command != "run" and not sgd:
        return (f"optim.momentum and optim.fused are SGD's (optim.name=sgd) and this run's optimiser is "
                f"{cfg.get('optim', {}).get('name')}; drop them, or give optim.name=sgd")
    if dotted in ("optim.momentum", "optim.fused") and command == "run":
        return _run_sgd_field(cfg, dotted, sgd)
    if dotted == "data.repeats" and command in ("train", "run") and cfg.get("data", {}).get("sampler") != "repeat":
        return (f"data.repeats is the repeat sampler's copies of each image and data.sampler is "
                f"{cfg.get('data', {}).get('sampler')}; drop it, or give data.sampler=repeat")
    if dotted == "sched.time_based" and command != "run" and not cfg.get("train", {}).get("budget_minutes"):
        return ("sched.time_based makes the lr follow the elapsed share of train.budget_minutes, and this run has "
                "no budget; drop it, or give train.budget_minutes")
    if dotted in ("data.unlabeled", "data.skip_bad_unlabeled"):
        return _pool_unread(command, cfg, baseline)
    return None


def _run_sgd_field(cfg: dict, dotted: str, sgd: bool) -> str | None:
    """`fewshot run`'s MoCo stage trains with SGD at momentum 0.9 whatever optim.momentum says
    (run_stages.pretrain_stage) and reads optim.fused; fine-tuning reads both with optim.name=sgd only."""
    if sgd or (dotted == "optim.fused" and cfg.get("run", {}).get("pretrain")):
        return None
    if dotted == "optim.momentum":
        return ("`fewshot run` reads optim.momentum only when fine-tuning with optim.name=sgd (its MoCo stage's SGD "
                "takes momentum 0.9 itself); drop it, or give optim.name=sgd")
    return ("optim.fused is SGD's, which `fewshot run` trains with only in its MoCo stage (--pretrain) or when "
            "fine-tuning with optim.name=sgd; drop it, or give one of those")


def _pool_unread(command: str, cfg: dict, baseline: bool) -> str | None:
    """data.unlabeled and data.skip_bad_unlabeled: the pool is read by MoCo (pretrain, a run's --pretrain stage),
    a run's self-training (--semi pseudo) and FixMatch, and train's semi.method=fixmatch or moco
    (output_guard.pool_read_by); elsewhere `data.unlabeled=/nonexistent` passed without a word."""
    run = cfg.get("run", {})
    if command == "pretrain":
        return None
    if command == "train":
        if cfg.get("semi", {}).get("method") in ("fixmatch", "moco"):
            return None
        return ("`fewshot train` reads the unlabeled pool only with semi.method=fixmatch or semi.method=moco; drop "
                "them, give one of those, or give them to `fewshot pretrain` or `fewshot run`")
    if run.get("pretrain") or run.get("semi_method") in ("pseudo", "fixmatch"):
        return None
    return ("`fewshot run` reads the unlabeled pool only with --pretrain (MoCo) or --semi pseudo or fixmatch, and "
            f"{'--baseline runs none of them' if baseline else 'this run has none of them'}; drop them, or "
            f"{'drop --baseline' if baseline else 'give one of those'}")


def warn_unused_overrides(command: str, cfg: dict, extra, baseline: bool = False) -> None:
    """unused_override_warnings on stderr, once under torchrun; as warn_replaced_overrides for a field a run sets
    itself."""
    from fewshot.cli_ranks import launch_rank
    from fewshot.errors import one_line

    if launch_rank() != 0:
        return
    for line in unused_override_warnings(command, cfg, extra, baseline):
        print(one_line(line), file=sys.stderr, flush=True)


def warn_replaced_config_fields(path) -> None:
    """`fewshot run --config f.yaml` dropped the file's semi.method or moco.queue_size without a word, while the
    same key=value words get a warning (warn_replaced_overrides): the same warning for each such field the file
    sets to other than its default (a run's own config.yaml, a valid --config, holds every field), but
    sched.time_based on, which the run keeps. A `fewshot run` stage's own config.yaml (run_stage_file) holds what
    its run set itself, which no warning blames on the file (stage_set_value); a value edited there still warns.
    Rank 0 alone, as every warning here."""
    from fewshot.cli_ranks import launch_rank

    if not path or launch_rank() != 0:
        return
    from fewshot.config import DEFAULTS, config_data, file_settings, flatten_dotted, setting_changed

    defaults = flatten_dotted(DEFAULTS)
    stage = config_data(path) if run_stage_file(path) else None
    for dotted, value in file_settings(path).items():
        if dotted == "sched.time_based" and value is True:
            continue
        if stage is not None and stage_set_value(stage, dotted, value):
            continue
        if dotted in RUN_REPLACES and setting_changed(dotted, defaults.get(dotted), value):
            print(f"warning: {dotted}: {value} in {path} is replaced by {RUN_REPLACES[dotted]}.", file=sys.stderr,
                  flush=True)


def run_stage_file(path) -> bool:
    """Whether ``path`` is a `fewshot run` stage's config.yaml: a run's, in a stage folder of a run (run_state.json
    beside it: run_state.is_run_stage), or one recording the run's own MoCo export as chosen, which only a stage
    records (config.RUN_CHOSEN_FIELDS) and which marks it copied elsewhere too. Its content alone (a budget and
    sched.time_based, `_chosen`) also marked every budgeted `fewshot train` run's config.yaml (review rev64)."""
    from pathlib import Path

    from fewshot.config import CHOSEN, config_data, find_config, written_by_run
    from fewshot.run_state import is_run_stage

    raw = config_data(path) or {}
    if not written_by_run(raw, path, run_files=False):
        return False
    chosen = raw.get(CHOSEN)
    return (isinstance(chosen, dict) and "model.weights" in chosen) or is_run_stage(Path(find_config(path)).parent)


def stage_set_value(raw: dict, dotted: str, value) -> bool:
    """Whether a stage's config.yaml (``raw``) holds at ``dotted`` what its run set itself (run_stages): the plan's
    epochs, budget and evaluation interval (knn_every for MoCo, eval_every else), and, where the file's run.*
    fields give that value, fine-tuning's semi.method and the MoCo stage's queue and momentum."""
    from fewshot.config import same_value

    moco = raw.get("_task") == "moco"
    run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
    symmetric = isinstance(raw.get("moco"), dict) and raw["moco"].get("symmetric") is True
    if dotted in ("train.epochs", "train.budget_minutes", "moco.knn_every" if moco else "train.eval_every"):
        return True
    if dotted == "semi.method":
        return not moco and value == "fixmatch" and run.get("semi_method") == "fixmatch"
    if moco and dotted == "moco.momentum":
        return same_value(value, run.get("moco_momentum"))
    if moco and dotted == "moco.queue_size":
        return stage_queue_size(run, symmetric, value)
    return False


def stage_queue_size(run: dict, symmetric: bool, value) -> bool:
    """Whether ``value`` is a queue a run's MoCo stage may have taken (run_stages.moco_queue_size): run.queue_size,
    else about half the pool capped at 4096, never under one step's keys (the pool is not in the file)."""
    from fewshot.config import same_value

    if run.get("queue_size") is not None:
        return same_value(value, run["queue_size"])
    batch = run.get("pretrain_batch_size")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (batch, value)):
        return False
    keys = batch * (2 if symmetric else 1)  # pretrain_settings.keys_per_step, whose module imports timm (2 s)
    return keys <= value <= max(keys, 4096)


def warn_finetune_config(path) -> None:
    """The reverse of warn_pretrain_config: a fine-tuning recipe (an AdamW optimiser, no moco: section) given to
    `fewshot pretrain` trained MoCo with AdamW at the recipe's lr and silently ignored its fine-tuning fields; one
    that names no optimiser but sets fields only fine-tuning reads (finetune_only_fields: cpu_tiny) ran MoCo's SGD
    at its lr and weight decay. The lr a train run's config.yaml records as chosen (config.chosen_in_file) is
    chosen again by pretrain, so it is not named as used."""
    from fewshot.cli_ranks import launch_rank

    if not path or launch_rank() != 0:  # under torchrun: once
        return
    from fewshot.config import chosen_in_file, config_data, written_by_run

    raw = config_data(path) or {}
    optim = raw.get("optim") if isinstance(raw.get("optim"), dict) else {}
    # every config a run saves has a moco: section, so that alone makes no MoCo recipe. A whole config (a train
    # run's, an older fewshot's without semi: too) or one with the fine-tuning-only semi: section is for
    # fine-tuning; a user's own MoCo recipe with AdamW is neither, and gets no warning
    fine_tuning = written_by_run(raw, path, run_files=False) or "semi" in raw
    own = finetune_only_fields(raw) if "moco" not in raw else []
    adamw = optim.get("name") not in (None, "sgd") and ("moco" not in raw or fine_tuning)
    if raw.get("_task") == "moco" or not (adamw or own):
        return
    rechosen = "optim.lr" in chosen_in_file(path)  # the backbone lr is a fine-tuning field: ignored either way
    lr = "" if rechosen else f", lr {optim.get('lr', '?')}"
    again = " (but optim.lr, which the run that wrote it chose itself: pretrain chooses it again)" if rechosen else ""
    what = (f"optimiser {optim['name']}" if optim.get("name") else
            f"{', '.join(own)}, which only fine-tuning reads; no optimiser named: MoCo's SGD")
    print(f"warning: {path} looks like a fine-tuning recipe for `fewshot train` ({what}{lr}). `fewshot pretrain` "
          f"trains MoCo with its optim.* fields as given{again} "
          f"and ignores its fine-tuning fields (ema, label smoothing, sampler, backbone lr). For MoCo, "
          f"use a preset (--preset mocov2: SGD lr 0.03) or `--config moco_cpu_small`; fine-tune with "
          f"`fewshot train --config {path} --weights <export>`.", file=sys.stderr, flush=True)


def finetune_only_fields(raw: dict) -> list[str]:
    """The fields of a config file (``raw``) that `fewshot pretrain` never reads (PRETRAIN_UNREAD): set, they mark
    a fine-tuning recipe even where it names no optimiser (model.drop_path is not one: MoCo's backbone reads it)."""
    fields = []
    for dotted in PRETRAIN_UNREAD:
        section, field = dotted.split(".")
        if isinstance(raw.get(section), dict) and field in raw[section]:
            fields.append(dotted)
    return fields


def warn_pretrain_config(path, command: str) -> None:
    """A `fewshot pretrain` recipe (a `moco:` section, an SGD optimiser) given to `fewshot run` or `fewshot train`
    is half applied: its moco.* fields are ignored and its optim.lr goes to fine-tuning (0.06 with AdamW
    collapsed a run). Say so rather than guess what the user meant; under torchrun once (rank 0)."""
    from fewshot.cli_ranks import launch_rank

    if not path or launch_rank() != 0:
        return
    from fewshot.config import config_data

    raw = config_data(path) or {}
    optim = raw.get("optim") if isinstance(raw.get("optim"), dict) else {}
    # every saved config.yaml has a moco: section; a train run's also names its (AdamW) optimiser
    if not (raw.get("_task") == "moco" or optim.get("name") == "sgd" or ("moco" in raw and "name" not in optim)):
        return
    if command == "run":
        where = ("In `fewshot run` its optim.* fields apply to fine-tuning, and the MoCo stage (--pretrain) takes its "
                 "settings from run.pretrain_lr, run.pretrain_batch_size, run.queue_size and run.moco_momentum "
                 "(model.* fields apply to both).")
        then = "`fewshot run --no-pretrain model.weights=...`"
    else:
        where = "`fewshot train` ignores its moco.* fields and fine-tunes with its optim.* fields."
        then = "`fewshot train --weights ...`"
    print(f"warning: {path} looks like a `fewshot pretrain` recipe. {where} To run that recipe, use "
          f"`fewshot pretrain --config {path}` and fine-tune from its export with {then}.", file=sys.stderr,
          flush=True)
