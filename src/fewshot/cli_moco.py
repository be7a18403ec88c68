"""CLI parsers of the MoCo side's commands (pretrain, run, export, probe) and the handlers of pretrain and export;
run's handler is in cli_run, probe's in cli_probe, and the warnings about unused settings in cli_warnings."""

from __future__ import annotations

from pathlib import Path

from fewshot.cli_parser import image_size, positive_int
from fewshot.cli_probe import cmd_probe
from fewshot.cli_run import check_unlabeled_words, cmd_run
from fewshot.cli_warnings import warn_finetune_config, warn_unused_overrides


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
                   "--budget-minutes 5 (32 below), moved to the nearest size the model takes (up to 16x the "
                   "pixels; beyond that the run stops and names one)")
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
                   "'' probes a randomly initialised backbone (a baseline: the network --seed draws, its BatchNorm "
                   "statistics taken from the train images first, as train's model.head_init does)")
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
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (--weights '') and of the "
                   "linear head (default 0): the same command gives the same score")
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


COMMANDS = {"pretrain": cmd_pretrain, "run": cmd_run, "export": cmd_export, "probe": cmd_probe}
