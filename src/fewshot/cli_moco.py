"""CLI parsers and handlers for the MoCo side: pretrain, export, probe."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (`probe --epochs 0` reported an untrained head; `models
    --limit -1` listed every model but the last)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is below 1")
    return n


def image_size(text: str) -> int:
    """An argparse type: an image side within what the models and the decode cache take (as `train` checks)."""
    from fewshot.models.backbone import MAX_IMG_SIZE, MIN_IMG_SIZE

    n = positive_int(text)
    if not MIN_IMG_SIZE <= n <= MAX_IMG_SIZE:
        raise argparse.ArgumentTypeError(f"{n} px is outside {MIN_IMG_SIZE}..{MAX_IMG_SIZE}")
    return n


PRETRAIN_FLAGS = {"data": "data.root", "model": "model.name", "datasets": "data.datasets", "epochs": "train.epochs",
                  "batch_size": "train.batch_size", "img_size": "model.img_size", "lr": "optim.lr",
                  "seed": "train.seed", "device": "train.device", "skip_bad_images": "data.skip_bad_images",
                  "save_every_steps": "train.save_every_steps", "weights": "model.weights",
                  "queue_size": "moco.queue_size", "unlabeled": "data.unlabeled",
                  "skip_nonfinite": "train.skip_nonfinite"}


def add_parsers(sub, add_common, epilog) -> None:
    """pretrain and run; ``epilog``: cli_parser.training_epilog, given a word each command reads."""
    p = sub.add_parser("pretrain", help="MoCo self-supervised pretraining on unlabeled images",
                       epilog=epilog("moco.knn_every=5"),
                       description="MoCo v1/v2 on an unlabeled pool (--unlabeled folders; else ROOT/unlabeled/"
                       "<dataset>, else the training images, plus any other images in ROOT/unlabeled/), "
                       "with a per-dataset kNN monitor on the val splits. "
                       "Then `fewshot export RUN --out backbone.safetensors` and `fewshot train --weights ...`. "
                       "The presets follow the paper: resnet50, batch 256, 200 epochs, SGD lr 0.03 x batch / 256; "
                       "on a CPU and small images pass --model resnet18 --batch-size 64 --img-size 32 (or "
                       "--config configs/moco_cpu_small.yaml) and fewer epochs.")
    add_common(p, task="pretrain")
    p.add_argument("--preset", choices=["mocov1", "mocov2"], default=None,
                   help="SPEC's MoCo v1 (T=0.07, linear head) or v2 (T=0.2, MLP, aug-plus, cosine); default: "
                        "the config's moco.preset, else mocov2")
    p.add_argument("--unlabeled", action="extend", nargs="+", metavar="DIR",
                   help="unlabeled image folder(s), scanned recursively (`--unlabeled A B` or repeated)")
    p.add_argument("--queue-size", type=int, help="K, the number of negative keys in the queue")
    p.add_argument("--weights", help="initialise the backbone from a local weights file (e.g. ImageNet)")

    p = sub.add_parser("run", help="the whole pipeline in a time budget: [MoCo ->] fine-tune + self-training "
                       "-> predict -> report", epilog=epilog("optim.label_smoothing=0.1"),
                       description="Pool -> (with --pretrain: MoCo pretraining -> export ->) fine-tuning on the "
                       "labelled images -> pseudo-labels for the pool -> fine-tuning on both -> prediction -> "
                       "report, with each stage's length planned from measured step times so that the whole run "
                       "fits --budget-minutes. Writes DIR/pred_all.json, DIR/metrics.json and the report. "
                       "The defaults are the recipe measured best on val (docs/recipes.md).")
    p.add_argument("--data", required=True, help="dataset root: ROOT/<dataset>/{train,val,test}, optional "
                   "ROOT/unlabeled/<dataset>/ (the pool; images elsewhere in ROOT/unlabeled/ join it as of "
                   "unknown dataset)")
    p.add_argument("--unlabeled", action="extend", nargs="+", metavar="DIR",
                   help="unlabeled image folder(s), scanned recursively, instead of ROOT/unlabeled/ (images of "
                   "unknown dataset: self-training gives each the dataset of its most probable class)")
    p.add_argument("--out", required=True, help="new or empty folder for the run (stages, pred_all.json, "
                   "metrics.json, report/)")
    p.add_argument("--budget-minutes", type=float,
                   help="wall-clock minutes for the whole command, from its start to the report (default 10; "
                   "with --resume: the run's own)")
    p.add_argument("--model", help="timm model (default resnet18)")
    p.add_argument("--weights", help="start the backbone from a local weights file (`fewshot export`'s "
                   "safetensors, a timm/torchvision state dict, a fewshot checkpoint): the MoCo stage (--pretrain) "
                   "and fine-tuning start from it; the same as model.weights=FILE. Default: random init")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: CUDA when available")
    p.add_argument("--img-size", type=int, help="default: 32 for small images, else 160 on GPU, and on CPU 64 from "
                   "--budget-minutes 5 (32 below)")
    p.add_argument("--datasets", help="comma-separated dataset names (default: every dataset under --data)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--config", help="YAML config file of fine-tuning settings (configs/); the stage lengths "
                   "(train.epochs, budgets) are planned by the run, and the MoCo stage takes run.pretrain_* and from "
                   "moco.preset (mocov1/mocov2) its temperature, head, schedule and views")
    p.add_argument("--pretrain", action="store_true", help="MoCo-pretrain on the pool first (half the budget; it "
                   "lowered val accuracy at 3 and 10 CPU-minutes on the demo data: docs/recipes.md)")
    p.add_argument("--no-pretrain", action="store_true", help="no MoCo stage (the default)")
    p.add_argument("--semi", choices=["pseudo", "fixmatch", "off"],
                   help="how fine-tuning uses the pool: pseudo = self-training (default), fixmatch, off")
    p.add_argument("--baseline", action="store_true", help="the baseline: supervised on the labelled images only, "
                   "the whole budget (= --no-pretrain --semi off); from random init, or from --weights FILE "
                   "when given")
    p.add_argument("--skip-bad-images", action="store_true", help="skip undecodable images (listed) instead of "
                   "failing; test images are decoded at start-up, so a bad one is found before the budget is spent")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, nor the per-epoch lines they "
                   "leave in a log file (each stage's log.jsonl holds every epoch)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out that a SIGTERM or Ctrl-C "
                   "stopped: give the same command plus --resume. Finished stages are reused, the stopped one "
                   "continues from its last.pt, and the budget counts the time already used")

    p = sub.add_parser("export", help="write a run's backbone as timm-loadable safetensors",
                       description="Writes the backbone (no projection or classifier head) of a MoCo run "
                       "(checkpoints/last.pt: the end of pretraining), a fine-tuning run or a `fewshot run` folder "
                       "(checkpoints/best.pt, EMA weights when kept: the checkpoint eval and predict use), or of the "
                       "checkpoint file given.")
    p.add_argument("run", metavar="RUN_OR_CKPT")
    p.add_argument("--out", required=True, help="backbone.safetensors path")

    p = sub.add_parser("probe", help="linear probe (or, with --head prototype, nearest class mean) of frozen "
                       "backbone weights on the labelled splits",
                       description="How good are these features without fine-tuning? The backbone is frozen; a "
                       "BatchNorm(affine=False) + linear head (or, with --head prototype, the nearest class mean of "
                       "normalised features) is trained on ROOT's train splits and scored per dataset on val, in "
                       "the metrics.json format of `fewshot eval`. A model with a distillation token (e.g. DeiT, "
                       "PiT) is probed with one head on the average of its class and distillation tokens, so the "
                       "score is not that of the heads model.head_init=probe starts fine-tuning from (one per "
                       "token).")
    p.add_argument("--weights", required=True, help="backbone weights (safetensors from `fewshot export`, ...); "
                   "'' probes a randomly initialised backbone (a baseline)")
    p.add_argument("--model", help="timm model name the weights belong to (default: the one a fewshot export or "
                   "checkpoint records)")
    p.add_argument("--data", required=True, help="dataset root: ROOT/<dataset>/{train,val}/<class>/<image>")
    p.add_argument("--out", help="folder for metrics.json")
    p.add_argument("--img-size", type=image_size, help="input size in pixels (default: the export's, else the "
                   "model's)")
    p.add_argument("--datasets", help="comma-separated dataset names (default: every dataset under --data)")
    p.add_argument("--mode", choices=["known", "unknown"], default="known",
                   help="known (default): the dataset of each image is given; unknown: predict dataset and class")
    # None when not given: --head prototype trains nothing and says so about an --epochs given to it
    p.add_argument("--epochs", type=positive_int, help="linear head training epochs, full batch (default 300)")
    p.add_argument("--head", choices=["linear", "prototype"], default="linear",
                   help="linear: a trained BN + linear head; prototype: no training, cosine nearest class mean "
                   "of standardised features (SimpleShot)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave undecodable images out (listed) instead of failing")


def cmd_pretrain(args, extra) -> int:
    from fewshot.cli_config import resolve_run_config
    from fewshot.ssl.pretrain import run_pretrain

    check_unlabeled_words(args.unlabeled)
    warn_finetune_config(args.config)
    cfg = resolve_run_config(args, extra, PRETRAIN_FLAGS, preset=args.preset, default_preset="mocov2")
    warn_unused_overrides("pretrain", cfg, extra)
    run_pretrain(cfg, Path(args.out), resume=args.resume)
    from fewshot.cli_ranks import launch_rank

    if launch_rank() == 0:  # under torchrun: once
        print(f"done: {args.out}; export the backbone with `fewshot export {args.out} --out backbone.safetensors`")
    return 0


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
    from fewshot.cli_config import adopt_recorded_bit_depth, note_flags_overridden, resolve_naming_flags
    from fewshot.config import record_chosen

    cfg = resolve_naming_flags(RUN_FLAG_NAMES, flags, extra, file=args.config, default_preset="mocov2",
                               preset_sections=MOCO_PRESET_SECTIONS)
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
    from fewshot.train.stop_signal import stop_at_once_on_signals

    with stop_at_once_on_signals():  # between training loops; inside them a signal finishes the step first
        run_pipeline(cfg, Path(args.out), args.budget_minutes, started=getattr(args, "started", None),
                     resume=args.resume)
    return 0


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
    """`fewshot run moco.queue_size=64` ran with K=128 without a word: say which field the run uses instead."""
    from fewshot.cli_config import given_fields

    for word in extra or []:
        dotted = next(iter(given_fields({}, [word])))
        if dotted in RUN_REPLACES:
            print(f"warning: {word} is replaced by {RUN_REPLACES[dotted]}.", file=sys.stderr, flush=True)


# the run.* fields only `fewshot run`'s MoCo stage reads (run_stages.pretrain_stage, check_pretrain_settings) or,
# after it, the fine-tuning lr rules (run_stages.finetune_config): words nothing reads without run.pretrain
MOCO_STAGE_FIELDS = ("run.pretrain_share", "run.pretrain_batch_size", "run.pretrain_lr", "run.queue_size",
                     "run.moco_momentum", "run.finetune_lr", "run.finetune_backbone_mult")


# the fields `fewshot pretrain` (MoCoTask, the Engine under it, run_pretrain) never reads, traced from a run: the
# fine-tuning head, loss, backbone lr (param_groups gives every parameter one rate), EMA (MoCoTask.supports_ema is
# false), evaluation (moco.knn_every is its schedule), the labelled sampler and views (MoCo's are aug.*) and semi.*;
# run.* and the mixing fields have reasons of their own (unused_override_warnings)
PRETRAIN_UNREAD = ("model.head", "model.head_init", "optim.label_smoothing", "optim.backbone_lr_mult", "train.ema",
                   "train.ema_decay", "train.ema_warmup", "train.eval_every", "train.eval_mode", "data.sampler",
                   "data.repeats", "data.randaug_ops", "data.randaug_magnitude", "data.randaug_p",
                   "data.randaug_group", "data.hflip", "data.hflip_symmetric")
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
            continue
        unused.setdefault(why, []).append(word)
    return [f"warning: {' '.join(words)} {'does' if len(words) == 1 else 'do'} nothing: {why}."
            for why, words in unused.items()]


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
    sets to other than its default (a run's own config.yaml, a valid --config, holds every field)."""
    if not path:
        return
    from fewshot.config import DEFAULTS, file_settings, flatten_dotted, setting_changed

    defaults = flatten_dotted(DEFAULTS)
    for dotted, value in file_settings(path).items():
        if dotted in RUN_REPLACES and setting_changed(dotted, defaults.get(dotted), value):
            print(f"warning: {dotted}: {value} in {path} is replaced by {RUN_REPLACES[dotted]}.", file=sys.stderr,
                  flush=True)


def warn_finetune_config(path) -> None:
    """The reverse of warn_pretrain_config: a fine-tuning recipe (an AdamW optimiser, no moco: section) given to
    `fewshot pretrain` trained MoCo with AdamW at the recipe's lr and silently ignored its fine-tuning fields. The
    lr a train run's config.yaml records as chosen (config.chosen_in_file) is chosen again by pretrain, so it is
    not named as used."""
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
    if raw.get("_task") == "moco" or optim.get("name") in (None, "sgd") or ("moco" in raw and not fine_tuning):
        return
    rechosen = "optim.lr" in chosen_in_file(path)  # the backbone lr is a fine-tuning field: ignored either way
    lr = "" if rechosen else f", lr {optim.get('lr', '?')}"
    again = " (but optim.lr, which the run that wrote it chose itself: pretrain chooses it again)" if rechosen else ""
    print(f"warning: {path} looks like a fine-tuning recipe for `fewshot train` (optimiser "
          f"{optim.get('name', '?')}{lr}). `fewshot pretrain` trains MoCo with its optim.* fields as given{again} "
          f"and ignores its fine-tuning fields (ema, label smoothing, sampler, backbone lr). For MoCo, "
          f"use a preset (--preset mocov2: SGD lr 0.03) or `--config moco_cpu_small`; fine-tune with "
          f"`fewshot train --config {path} --weights <export>`.", file=sys.stderr, flush=True)


def warn_pretrain_config(path, command: str) -> None:
    """A `fewshot pretrain` recipe (a `moco:` section, an SGD optimiser) given to `fewshot run` or `fewshot train`
    is half applied: its moco.* fields are ignored and its optim.lr goes to fine-tuning (0.06 with AdamW
    collapsed a run). Say so rather than guess what the user meant."""
    if not path:
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


def cmd_export(args, extra) -> int:
    from fewshot.ssl.export import export_backbone
    from fewshot.utils import check_output_file

    check_output_file(args.out, example="backbone.safetensors")
    out, meta = export_backbone(args.run, args.out, follow_links=True)  # the user's path: a link writes its target
    if out.suffix != ".safetensors":
        import sys

        print(f"warning: {out} is a safetensors file; fewshot reads it under any name, but timm's "
              f"create_model(..., pretrained_cfg_overlay=dict(file=...)) only treats names ending in "
              f".safetensors as safetensors", file=sys.stderr)
    print(f"wrote {out} from {meta['source']} (model {meta['model'] or '?'}, epoch {meta['epoch']}); fine-tune with "
          f"`fewshot train --model {meta['model'] or 'NAME'} --weights {out} ...`")
    if meta.get("small_stem") == "true" or meta.get("width", "1.0") != "1.0":
        print("note: a small-stem or narrowed network is not a stock timm model: fewshot's train --weights and probe "
              "rebuild it from the file. Plain timm builds the stock network: it refuses the file, or (a small stem "
              "with unchanged shapes) loads it into a network that computes other features.")
    elif out.suffix != ".safetensors":  # timm would hand any other name to torch.load, which refuses it
        print("in plain timm: rename it to a .safetensors name first, then pass that name as "
              "pretrained_cfg_overlay=dict(file=...)")
    else:  # the file holds the backbone only (no classifier), and window / position tables follow the image size
        from safetensors import safe_open

        from fewshot.models.backbone import takes_img_size

        with safe_open(str(out), "pt") as fh:
            sized = any(k.endswith(("pos_embed", "relative_position_bias_table")) for k in fh.keys())
        if meta.get("model") and meta.get("img_size"):  # as fewshot built it: a patch embedding fixes the size
            sized = takes_img_size(meta["model"], int(meta["img_size"]), fallback=sized)
        size = f", img_size={meta['img_size']}" if sized and meta.get("img_size") else ""
        print(f"in plain timm: timm.create_model('{meta['model'] or 'NAME'}', pretrained=True, num_classes=0{size}, "
              f"pretrained_cfg_overlay=dict(file='{out}'))")
    return 0


# the key=value words probe takes (cli_parser._parse refuses the others): it decodes images as train does and trains no
# network, so of the config only how 16-bit images are read applies (eval and predict take it from the run)
PROBE_WORDS = ("data.bit_depth",)


def probe_bit_depth(extra: list[str]) -> int | str | None:
    """data.bit_depth from probe's key=value words, checked as train checks it (`data.bit_depth=abc` is an error
    naming the field); None when none is given (then the one --weights records, or auto: eval.probe)."""
    from fewshot.config import resolve

    return resolve(overrides=extra)["data"]["bit_depth"] if extra else None


PROBE_RUN_MARKERS = ("checkpoints", "log.jsonl", "config.yaml", "run_state.json")


def _probe_busy(out: Path, ended: bool = False):
    """The refusal of a --out whose lock another command holds (a run training there, another probe)."""
    lost = " The probe's metrics (the table above) were not written." if ended else ""
    return lambda who: (f"--out {out} is being written by {who}; probe writes metrics.json there and would replace "
                        f"that command's (a run's, or another probe's).{lost} Give the probe a folder of its own "
                        f"(e.g. {out / 'probe'}), or wait for the other command to finish.")


def _refuse_a_run_in(out: Path, ended: bool = False) -> None:
    """A run folder's metrics.json is the run's own (compare and report read it): never replaced by a probe's."""
    from fewshot.errors import UserError

    if any((out / marker).exists() for marker in PROBE_RUN_MARKERS):
        if ended:  # a train into --out that started (and maybe finished) while the probe ran
            raise UserError(f"--out {out}: a run was started there while the probe ran; probe writes metrics.json "
                            f"there and would replace the run's, so the probe's metrics (the table above) were not "
                            f"written. Give the probe a folder of its own (e.g. {out / 'probe'}).")
        raise UserError(f"--out {out} holds a run; probe writes metrics.json there and would replace the run's. "
                        f"Give the probe a folder of its own (e.g. {out / 'probe'}).")


def _check_probe_out(args) -> tuple | None:
    """Refuse an --out the probe must not write, before any work; returns output_state of its metrics.json, which
    the write at the end checks again. An existing folder is locked for the probe (as a run's is): a train started
    into it meanwhile is refused instead of having its metrics.json replaced at the probe's end."""
    from fewshot.data.output_guard import check_output_is_not_in_data
    from fewshot.eval.output_files import PROBE_METRICS, check_own_output, holds_metrics
    from fewshot.errors import UserError
    from fewshot.run_lock import lock_run_dir, output_state
    from fewshot.utils import check_output_dir, check_output_file

    # `--out ROOT/<ds>/train/probe` became a class folder without images, and every command refused ROOT
    check_output_is_not_in_data(Path(args.out), args.data, what="the probe")
    out = check_output_dir(args.out)
    if out.is_dir():
        lock_run_dir(out, _probe_busy(out))  # before the folder is judged: a run finishing now is seen below
    _refuse_a_run_in(out)
    # metrics.json is a name probe picks, not one the user typed: a link so named is replaced by the write (as in
    # a run folder), not followed, so only --out's own folder counts (its target's was checked, a folder refused)
    if not (out / "metrics.json").is_symlink():
        if (out / "metrics.json").is_dir():
            raise UserError(f"{out / 'metrics.json'} is a folder; probe writes its metrics.json into --out: "
                            f"choose another --out.")
        check_output_file(out / "metrics.json")
        check_own_output(out / "metrics.json", f"--out {args.out}: its metrics.json", "probe",
                         lambda p: holds_metrics(p, PROBE_METRICS), "metrics.json content: datasets, split and "
                         "protocol", f"Give --out a folder of the probe's own, or move {out / 'metrics.json'} "
                         f"away first.")
    return output_state(out / "metrics.json")


def _write_probe_metrics(out: Path, metrics: dict, before: tuple | None) -> None:
    """metrics.json into --out, judged again under the folder's lock: a train may have started there, or finished
    there, since _check_probe_out, and its metrics.json was replaced by the probe's (exit 0 for both)."""
    from fewshot.data.cache_files import ensure_writable_dir
    from fewshot.errors import UserError
    from fewshot.run_lock import lock_run_dir, write_unless_changed
    from fewshot.utils import write_json

    ensure_writable_dir(out, "probe")  # made only now: a probe that fails leaves no folder
    lock_run_dir(out, _probe_busy(out, ended=True))
    _refuse_a_run_in(out, ended=True)
    if not write_unless_changed(out / "metrics.json", lambda p: write_json(p, metrics), before):
        raise UserError(f"{out / 'metrics.json'} was written by another command while the probe ran; the probe's "
                        f"metrics (the table above) were not written over it. Give the probe a folder of its own "
                        f"(e.g. {out / 'probe'}).")


def cmd_probe(args, extra) -> int:
    from fewshot.errors import UserError
    from fewshot.eval.evaluate import format_table
    from fewshot.eval.probe import bit_depth_for, run_probe
    from fewshot.utils import resolve_device

    bit_depth = probe_bit_depth(extra)  # before any work: a bad value is refused at once
    if not args.model:
        from fewshot.models.backbone import adopt_weights_model
        from fewshot.models.weights_file import check_weights_path

        if args.weights:  # a folder or a missing file is the real trouble: "--model is required" misled
            check_weights_path(args.weights)
        args.model = adopt_weights_model({"name": None, "weights": args.weights}, given=False)
        if not args.model:
            raise UserError(f"--model is required: {args.weights or 'a random initialisation'} records no model "
                            f"(give the timm model name the weights belong to).")
    from fewshot.models.backbone import timm_name

    args.model = timm_name(args.model)  # the name the metrics record
    bit_depth = bit_depth_for(args.weights, bit_depth)  # a file that cannot be read is reported as it loads
    if args.head == "prototype" and args.epochs is not None:
        print(f"warning: --epochs {args.epochs} is ignored: --head prototype trains no head (class means of the "
              f"features).", file=sys.stderr, flush=True)
    with _probe_lock_file_removed(args.out):
        before = _check_probe_out(args) if args.out else None
        metrics = run_probe(args.weights, args.model, args.data, args.img_size, resolve_device(args.device),
                            mode=args.mode, epochs=args.epochs or 300, datasets=args.datasets, head=args.head,
                            skip_bad=args.skip_bad_images, bit_depth=bit_depth)
        print(format_table(metrics, title=f"{metrics['protocol']} of {args.weights or 'random init (no weights)'}"))
        if args.out:
            _write_probe_metrics(Path(args.out), metrics, before)
    return 0


@contextmanager
def _probe_lock_file_removed(out: str | None):
    """The lock file probe makes in --out goes again at its end, finished or failed: a run folder keeps its lock
    file (the run's next --resume locks it), but a probe's folder is the user's, with metrics.json in it at most.
    Removed while still locked (unlock_and_remove), never one another command holds; one there before stays."""
    from fewshot.run_lock import LOCK_NAME, unlock_and_remove

    lock = Path(out) / LOCK_NAME if out else None
    made = lock is not None and not os.path.lexists(lock)
    try:
        yield
    finally:
        if made:
            unlock_and_remove(lock.parent)


COMMANDS = {"pretrain": cmd_pretrain, "run": cmd_run, "export": cmd_export, "probe": cmd_probe}
