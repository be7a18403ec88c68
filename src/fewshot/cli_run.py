"""`fewshot run`: its handler and what turns its command line into the pipeline's config (which flag names which
field, the MoCo preset sections it applies, what a --resume takes back from the run), and the check of --unlabeled's
words that pretrain shares.

Apart from cli_moco (pretrain, export and the parsers) because run has the most rules of its own, most of them about
continuing a stopped run with the settings it started with.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fewshot.cli_warnings import (warn_pretrain_config, warn_replaced_config_fields, warn_replaced_overrides,
                                  warn_unused_overrides)


def check_unlabeled_words(folders) -> None:
    """`--unlabeled A B` takes words up to the next flag, key=value ones too: say so instead of a missing folder."""
    from fewshot.errors import UserError

    for folder in folders or []:
        if "=" in folder and not Path(folder).exists():
            raise UserError(f"--unlabeled took '{folder}' as a folder: put key=value words before --unlabeled "
                            f"(or end its folders with another flag).")


def cmd_run(args, extra) -> int:
    from fewshot.errors import UserError
    from fewshot.pipeline import check_budget, run_pipeline

    if args.budget_minutes is None and not args.resume:
        args.budget_minutes = 10.0
    if args.budget_minutes is not None:
        check_budget(args.budget_minutes)
    check_unlabeled_words(args.unlabeled)
    flags = {"data.root": args.data, "model.name": args.model, "train.device": args.device,
             "data.unlabeled": args.unlabeled, "model.weights": args.weights,
             "model.img_size": args.img_size, "data.datasets": args.datasets, "train.seed": args.seed,
             "data.skip_bad_images": True if args.skip_bad_images else None}
    if sum(map(bool, (args.pretrain, args.no_pretrain, args.baseline))) > 1:
        raise UserError("choose one of --pretrain, --no-pretrain and --baseline.")
    if args.baseline and args.semi not in (None, "off"):
        raise UserError("--baseline trains on the labelled images only; it cannot take --semi " + args.semi)
    if args.pretrain:
        flags["run.pretrain"] = True
    if args.no_pretrain or args.baseline:
        flags["run.pretrain"] = False
    if args.semi or args.baseline:
        flags["run.semi_method"] = "off" if args.baseline else args.semi
    if args.no_progress:
        flags["train.progress"] = False
    # moco.preset=mocov1 (a word or the --config file's) chooses the MoCo stage's T, head, schedule and views, as
    # `fewshot pretrain --preset` does (it changed the recorded name only); the stage's optimiser, batch and queue
    # stay run.*'s small-data recipe (run_stages.pretrain_stage), and the user's own moco.*/aug.* fields still win
    from fewshot.cli_config import (adopt_recorded_bit_depth, mark_recorded_resize, note_flags_overridden,
                                    resolve_naming_flags)
    from fewshot.config import record_chosen

    cfg = resolve_naming_flags(RUN_FLAG_NAMES, flags, extra, file=args.config, default_preset="mocov2",
                               preset_sections=MOCO_PRESET_SECTIONS, rechoose_weights=True)
    from fewshot.models.backbone import timm_name

    cfg["model"]["name"] = timm_name(cfg["model"]["name"])  # as recorded, and as a resume compares it
    name = cfg["model"]["name"]
    adopt_run_model(cfg, flags, extra, args)
    if args.resume:
        adopt_run_settings(cfg, flags, extra, args)  # those the command does not give, the model among them
        # the run's model (run_state.json's), which the user may have given: as its stages record it
        record_resumed_model(cfg, flags, extra, args)
    else:  # the weights' model and bit depth, for the stages' config.yaml: chosen again there
        record_chosen(cfg, {"model.name": name})
        # as `train --weights` adopts it: the stages decoded a 12-bit backbone's images at the 16-bit scale
        adopt_recorded_bit_depth(cfg, flags, extra, args.config)
        # and the crop or pad its features were learnt on (hunt hBW #1: letterboxed a crop-trained export's wide
        # images, 68.7 % -> 50.2 %); a --resume keeps the run's own record (run_fit_record)
        mark_recorded_resize(cfg, flags, extra, args.config)
    adopt_run_datasets(cfg, flags, extra, args)
    if not args.resume:  # a resumed run's stages go on with their own config.yaml: nothing is chosen again
        from fewshot.cli_config import given_fields
        from fewshot.config import mark_rechosen
        from fewshot.models.backbone import note_pretrained_tag

        note_pretrained_tag(cfg["model"])
        # a run's config.yaml as --config: what it holds for the fields that run chose itself, for the note
        # (run_startup.note_run_rechosen) that names those chosen otherwise now, as `train --config` does
        mark_rechosen(cfg, args.config, given_fields(flags, extra))

    note_flags_overridden(flags, RUN_FLAG_NAMES, extra)
    warn_replaced_config_fields(args.config)
    warn_replaced_overrides(extra)
    warn_unused_overrides("run", cfg, extra, baseline=bool(args.baseline))
    warn_pretrain_config(args.config, "run")
    warn_run_random_backbone(cfg)
    from fewshot.train.stop_signal import stop_at_once_on_signals

    with stop_at_once_on_signals():  # between training loops; inside them a signal finishes the step first
        run_pipeline(cfg, Path(args.out), args.budget_minutes, started=getattr(args, "started", None),
                     resume=args.resume)
    return 0


def warn_run_random_backbone(cfg: dict) -> None:
    """`fewshot run --config course_resnet50` fine-tuned a random backbone at lr 1e-4 x 0.1 and ended "little
    better than guessing" without naming why, where `fewshot train` warns at its start. Without --pretrain (whose
    own MoCo export is pretrained weights) the stages keep the user's optim.lr and backbone_lr_mult and fill in
    unset ones by train's rules (run_stages.finetune_config): train's check applies as it is."""
    from fewshot.cli_ranks import launch_rank
    from fewshot.train.finetune import warn_random_backbone_at_a_pretrained_lr

    if not cfg["run"]["pretrain"] and launch_rank() == 0:
        warn_random_backbone_at_a_pretrained_lr(cfg, "--weights FILE or --pretrain", file=sys.stderr)


def adopt_run_model(cfg: dict, flags: dict, extra: list[str], args) -> None:
    """The model of a run whose command named none: the one --weights records, as a fresh run adopts it. On --resume
    the same command must resolve to the same model, or RunState.resume refused it as a change of model.name (the
    recorded test_resnet against the default resnet18); where the run recorded these same weights, its own model is
    kept, so that a weights file moved or rewritten since gives no other model."""
    from fewshot.cli_config import adopt_recorded_model, model_named
    from fewshot.config import same_weights_file
    from fewshot.run_state import recorded_setting

    if args.resume and cfg["model"]["weights"] and not model_named(flags, extra, args.config):
        recorded = recorded_setting(Path(args.out), "model.name")
        if isinstance(recorded, str) and same_weights_file(recorded_setting(Path(args.out), "model.weights"),
                                                           cfg["model"]["weights"]):
            cfg["model"]["name"] = recorded
            return
    adopt_recorded_model(cfg, flags, extra, args.config)


def adopt_run_settings(cfg: dict, flags: dict, extra: list[str], args) -> None:
    """On --resume, the run's own value of every setting the command line does not give (its flags, key=value words
    and --config file), so that the short `fewshot run --data D --out O --resume` continues the run; one it gives
    that differs is refused by RunState.resume. Says which it took."""
    from fewshot.cli_config import given_fields
    from fewshot.config import file_settings
    from fewshot.errors import one_line
    from fewshot.run_state import adopt_untyped_settings, worded

    typed = given_fields(flags, extra) | (set(file_settings(args.config)) if args.config else set())
    taken = adopt_untyped_settings(Path(args.out), cfg, typed)
    if taken:
        print(one_line(f"note: --resume continues '{args.out}' with its own settings where this command gives none: "
                       + ", ".join(f"{k} {worded(k, v)}" for k, v in taken.items())), file=sys.stderr, flush=True)


def record_resumed_model(cfg: dict, flags: dict, extra: list[str], args) -> None:
    """On --resume, the run's model recorded as chosen only where its stages' config.yaml record it so (the model
    its --weights record, adopted): set against the default, a `--model test_resnet2` the run was started with,
    taken back from run_state.json, was recorded as chosen, and `train --config STAGE/config.yaml --weights w`
    then swapped it for the model w records."""
    from fewshot.cli_config import model_named
    from fewshot.config import chosen_record, load_yaml, note_chosen
    from fewshot.errors import UserError

    if model_named(flags, extra, args.config):  # given now: the user's
        return
    for config in sorted(Path(args.out).glob("*/config.yaml")):
        try:
            record = chosen_record(load_yaml(config), config)
        except (UserError, OSError):  # a stage's file that cannot tell: the run's own checks say what is wrong
            continue
        if record.get("model.name") == cfg["model"]["name"]:
            note_chosen(cfg, "model.name")
            return


def datasets_named(flags: dict, extra: list[str], config_file: str | None) -> bool:
    """Whether the command names its datasets (--datasets, a data.datasets= word, the --config file)."""
    from fewshot.cli_config import given_fields
    from fewshot.config import file_settings

    return bool("data.datasets" in given_fields(flags, extra)
                or (config_file and "data.datasets" in file_settings(config_file)))


def adopt_run_datasets(cfg: dict, flags: dict, extra: list[str], args) -> None:
    """On --resume, the datasets of the run: a command that names none means "as before", as `train --resume`
    takes them (it refused: "data.datasets ('two,uni' in the run, None now)"); one that names the run's datasets
    in another order continues in the run's order, which its head's classes follow (datasets_in_run_order)."""
    from fewshot.run_state import STATE_FILE, datasets_in_run_order, recorded_setting

    if not args.resume or not (Path(args.out) / STATE_FILE).is_file():
        return  # no run to take them from: RunState.resume says so
    recorded = recorded_setting(Path(args.out), "data.datasets")
    if not datasets_named(flags, extra, args.config):
        cfg["data"]["datasets"] = recorded
    else:
        cfg["data"]["datasets"] = datasets_in_run_order(recorded, cfg["data"]["datasets"], cfg["data"]["root"])


# the sections of a MoCo preset `fewshot run` applies: what makes MoCo v1 or v2 (config.PRESETS); the rest (SGD,
# batch 256, 200 epochs, resnet50) is the full-size recipe, which run.* and the run's plan replace
MOCO_PRESET_SECTIONS = ("moco", "aug")

RUN_FLAG_NAMES = {"data.root": "--data", "model.name": "--model", "model.weights": "--weights",
                  "train.device": "--device",
                  "data.unlabeled": "--unlabeled", "model.img_size": "--img-size", "data.datasets": "--datasets",
                  "train.seed": "--seed", "data.skip_bad_images": "--skip-bad-images",
                  "run.pretrain": "--pretrain/--no-pretrain/--baseline", "run.semi_method": "--semi/--baseline",
                  "train.progress": "--no-progress"}
