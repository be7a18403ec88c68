"""The `fewshot` command line (SPEC's "Command-line contract").

Exit codes: 0 success, 2 user error (one paragraph, no traceback), 1 internal error.
Unknown `key=value` words after the options override config fields (`optim.lr=3e-4`).
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import errno
import io
import itertools
import json
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from fewshot.errors import UserError, printable
from fewshot.train.stop_signal import StopRequested


def training_epilog(example: str) -> str:
    """The help epilog of train, pretrain and run; ``example``: a word the command reads (pretrain's help showed
    train.eval_every=1, which it warns that it does not read; run replaces it by its plan)."""
    return (f"Any extra key=value words override config fields, e.g. optim.lr=3e-4 {example}. "
            "Every field and its default: DEFAULTS in fewshot/config/defaults.py of the installed package (and a run's "
            "RUN/config.yaml lists every field it used); recipes: --config NAME of the packaged configs/ "
            "(e.g. moco_cpu_small).")


NO_PROGRESS_HELP = "no progress bars, nor the per-epoch lines they leave in a log file (log.jsonl holds every epoch)"
# data, eval, predict, probe and report train no epochs and write no log.jsonl: their help names what they show
NO_PROGRESS_HELP_NO_EPOCHS = ("no progress bars, nor the plain progress lines printed instead when the output "
                              "goes to a file or a pipe (the results are printed and written all the same)")


def _add_common_training(p: argparse.ArgumentParser, task: str = "train") -> None:
    """The flags train and pretrain share; ``task`` words the ones whose meaning differs."""
    p.add_argument("--data", required=True, help="dataset root: ROOT/<dataset>/{train,val}/<class>/<image>")
    p.add_argument("--out", required=True, help="run directory to create (config, logs, checkpoints, metrics)")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--model", help="timm model name (see `fewshot models`)")
    p.add_argument("--datasets", help="comma-separated dataset names (default: every dataset under --data)")
    p.add_argument("--epochs", type=int, help="passes over the unlabeled pool (default: the preset's 200)"
                   if task == "pretrain" else "passes over the labelled training images (default 50)")
    p.add_argument("--batch-size", type=int, help="images per step and process (default: "
                   + ("the preset's 256)" if task == "pretrain" else "64)"))
    p.add_argument("--img-size", type=int, help="input size in pixels (default: the --weights export's, else the "
                   "model's)")
    p.add_argument("--lr", type=float, help="base learning rate (default: " + ("0.03 x global batch / 256)"
                   if task == "pretrain" else "4e-3 from random init, 1e-4 with --weights)"))
    p.add_argument("--seed", type=int, help="seed for initialisation, batches and augmentation (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: cuda when available")
    p.add_argument("--resume", action="store_true", help="continue RUN from checkpoints/last.pt exactly")
    p.add_argument("--skip-bad-images", action="store_true", help="skip undecodable images (listed) instead of failing")
    p.add_argument("--save-every-steps", type=int, help="also checkpoint every N steps (default: at epoch ends, at most every "
                   "train.save_interval_s=30 seconds, and always at the first, the best and the last)")
    p.add_argument("--skip-nonfinite", type=int, metavar="N",
                   help="skip up to N steps whose loss is NaN/inf instead of stopping (default 0)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewshot", description="Few-shot image classification over several "
                                     "datasets, with MoCo self-supervised pretraining on unlabeled images.",
                                     epilog="`fewshot help COMMAND` (or `fewshot COMMAND --help`) explains a command.")
    from fewshot import __version__
    from fewshot.cli_moco import positive_int

    parser.add_argument("--version", action="version", version=f"fewshot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("data", help="build a demo dataset from local real data (digits, fashion-mnist)",
                       description="Build a few-shot dataset in fewshot's layout from data on this machine: "
                       "`digits` from scikit-learn, `fashion-mnist` from Debian's dataset-fashion-mnist IDX files.")
    p.add_argument("name", choices=["digits", "fashion-mnist"])
    p.add_argument("--out", required=True, help="dataset root to write into (ROOT/<name>, ROOT/unlabeled/<name>)")
    p.add_argument("--shots", type=int, default=10, help="labelled training images per class (default 10)")
    p.add_argument("--seed", type=int, default=0, help="which images are drawn (default 0)")
    p.add_argument("--idx-dir", help="folder with the fashion-mnist IDX files (default: Debian's)")
    p.add_argument("--val-per-class", type=int,
                   help="labelled val images per class (default: digits 20, fashion-mnist 50)")
    p.add_argument("--test-per-class", type=int,
                   help="test images per class, with an answer key (default: digits 30, fashion-mnist 100)")
    p.add_argument("--pool-per-class", type=int, default=100,
                   help="unlabeled pool images per class, up to what the source holds (default 100)")

    p = sub.add_parser("train", help="fine-tune a timm backbone on all datasets at once",
                       epilog=training_epilog("train.eval_every=1"),
                       description="Fine-tune any timm model on several few-shot datasets with one joint head.")
    _add_common_training(p)
    p.add_argument("--weights", help="backbone weights: .safetensors / state dict / fewshot checkpoint "
                   "(from `fewshot export`); sets the course's lr 1e-4 with backbone x0.1")

    p = sub.add_parser("eval", help="per-dataset accuracy of a trained run",
                       description="Score a trained run (or one checkpoint) on the val split, or on the test split "
                       "against ROOT/<dataset>/test_labels.json, in known- or unknown-source mode; prints per-dataset "
                       "acc@1/acc@5 and writes metrics.json with --out.")
    p.add_argument("run", metavar="RUN_OR_CKPT")
    p.add_argument("--data", required=True, help="dataset root: ROOT/<dataset>/{val,test}/")
    p.add_argument("--mode", choices=["known", "unknown"], default="known",
                   help="known (default): the dataset of each image is given; unknown: predict dataset and class")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="val (default): the labelled val images; test: scored against "
                   "ROOT/<dataset>/test_labels.json where present")
    p.add_argument("--out", help="write metrics.json here")
    p.add_argument("--datasets", help="A,B: only these of the model's datasets (default: all of them)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--balance", choices=["auto", "on", "off"], default=None,
                   help="known-source test scores only, as predict --balance (default: auto for --split test, or the "
                   "run.balance a `fewshot run` folder recorded; the val split is scored as the model predicts it)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="go on past undecodable images (listed) instead of failing: val images are left out of the "
                   "scores; test images are scored as predicted from a blank image (as predict --skip-bad-images "
                   "writes them), so n counts every test image")

    p = sub.add_parser("predict", help="write pred_all.json for the test images",
                       description="Predict every image of ROOT/<dataset>/test/ with a trained run (or one checkpoint) "
                       "and write pred_all.json: {\"n_parameters\": N, \"<dataset>\": {\"<image_id>\": class}}, "
                       "the class an index into the dataset's sorted class folder names.")
    p.add_argument("run", metavar="RUN_OR_CKPT")
    p.add_argument("--data", required=True, help="dataset root: ROOT/<dataset>/test/<image>")
    p.add_argument("--out", required=True, help="pred_all.json path")
    p.add_argument("--mode", choices=["known", "unknown"], default="known",
                   help="known (default): each image's class among its own dataset's classes; unknown: dataset and class "
                   "over the union of all classes, the predicted dataset written to OUT's .routing.json, and "
                   "-1 in pred_all.json for an image routed to a dataset other than its own")
    p.add_argument("--datasets", help="A,B: predict only these of the model's datasets (held-out data for some of "
                   "them); unknown mode still routes over all the classes the model knows")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--balance", choices=["auto", "on", "off"], default=None,
                   help="known-source mode: even out each dataset's predicted classes to the proportions of its train "
                   "split or to even ones, whichever the test predictions fit better (where they fit neither, to the "
                   "test split's own, estimated), with per-class offsets fitted on the test images themselves (a "
                   "few-shot model leans towards some classes). auto (default, except for a `fewshot run` folder: the "
                   "run.balance it recorded): for the datasets where doing the same on their val images does not lower "
                   "val accuracy, and only where val holds at least 10 images of each class (the check for a "
                   "skewed test split reads val); on: always (the printed line says where the proportions could not "
                   "be checked); off: plain argmax")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="go on past undecodable test images (listed; each is predicted from a blank image, so that "
                   "pred_all.json still holds every id) instead of failing")

    p = sub.add_parser("models", help="list timm models with parameter counts and input sizes",
                       description="List the timm models whose names match the pattern, with parameter counts and "
                       "default input sizes: the names --model takes.")
    p.add_argument("pattern", nargs="?", default="*",
                   help="a part of the name (resnet) or a wildcard pattern (vit_*_patch16_*); case-insensitive")
    # at least 1: --limit -1 listed every model but the last (Python's [:-1]) and built all ~1400 of them
    p.add_argument("--limit", type=positive_int, default=60, help="list at most this many (default 60)")

    p = sub.add_parser("report", help="an HTML report of one or more runs (curves, accuracy bars, tables, "
                       "confusion matrices, embeddings, predictions)",
                       description="Write OUT/index.html with its PNGs beside it (no network, no scripts). RUN is a "
                       "run directory of `fewshot train` or `fewshot pretrain`, a checkpoint file in one, or a "
                       "`fewshot run` output folder (its stages: pretrain/, finetune_labelled/, finetune_round<k>/, "
                       "finetune/). Image-based parts need the data: --data ROOT, else the data.root recorded in the "
                       "run's config.yaml.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or checkpoint files")
    p.add_argument("--out", required=True, help="report folder (index.html + PNGs): a new or empty one, or an earlier "
                   "report's. Refused: a folder inside a reported run (but RUN/report, its own), the data root itself, "
                   "its unlabeled pool, or a dataset's train/val/test split")
    p.add_argument("--data", help="dataset root for the confusion matrices, embedding map and prediction grid")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--tsne", action="store_true", help="t-SNE instead of PCA for the embedding map (slower)")
    p.add_argument("--grid", type=int, default=40, metavar="N", help="val images in the prediction grid, spread "
                   "over the datasets and at least one of each (so N below their count shows more); at most 400, "
                   "0: no grid (default 40)")

    p = sub.add_parser("compare", help="print the report's tables of one or more runs in the terminal",
                       description="Print the tables of `fewshot report` (overview, per-dataset accuracy, kNN) in the "
                       "terminal, without loading data or drawing plots. RUN is a run directory of `fewshot train` or "
                       "`fewshot pretrain`, a checkpoint file in one, or a `fewshot run` output folder (its stages: "
                       "pretrain/, finetune_labelled/, finetune_round<k>/, finetune/).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or checkpoint files")

    from fewshot import cli_moco

    cli_moco.add_parsers(sub, _add_common_training, training_epilog)
    for name in ("train", "pretrain", "run"):  # the override words are no argparse argument: shown by hand
        command = sub.choices[name]
        command.usage = command.format_usage().removeprefix("usage: ").rstrip() + " [key=value ...]"
    for name in ("data", "eval", "predict", "report", "probe"):  # train, pretrain, run: _add_common_training / own
        sub.choices[name].add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP_NO_EPOCHS)
    probe = sub.choices["probe"]  # its one word: the decoding setting train, pretrain and run take (cli_moco)
    probe.usage = probe.format_usage().removeprefix("usage: ").rstrip() + " [data.bit_depth=N]"  # after its flags
    return parser


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


def resolve_run_config(args, extra: list[str], mapping: dict, preset: str | None = None,
                       default_preset: str | None = None) -> dict:
    from fewshot.config import PER_INVOCATION, file_settings, get_dotted, mark_rechosen, parse_override, record_chosen
    from fewshot.models.backbone import note_pretrained_tag, timm_name
    from fewshot.train.finetune import merge_resume_config, resumes_from_config

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
    last of two words for one field, which won without a word."""
    from fewshot.config import parse_override

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


def cmd_data(args, extra) -> int:
    from fewshot.data.build import build_dataset
    from fewshot.utils import check_output_dir

    if args.idx_dir and args.name != "fashion-mnist":  # it was ignored without a word
        raise UserError(f"--idx-dir is where the fashion-mnist IDX files are; {args.name} is built from "
                        f"scikit-learn's bundled copy and takes no --idx-dir.")
    check_output_dir(args.out)  # before decoding the source files
    summary = build_dataset(args.name, Path(args.out), shots=args.shots, seed=args.seed,
                            idx_dir=Path(args.idx_dir) if args.idx_dir else None, val_per_class=args.val_per_class,
                            test_per_class=args.test_per_class, pool_per_class=args.pool_per_class)
    print(f"built {summary['dataset']} in {args.out}: {summary['classes']} classes, {summary['train']} train, "
          f"{summary['val']} val, {summary['test']} test, {summary['unlabeled']} unlabeled")
    return 0


def cmd_train(args, extra) -> int:
    from fewshot.train.finetune import run_finetune

    cfg = resolve_run_config(args, extra, TRAIN_FLAGS)
    from fewshot.cli_moco import warn_pretrain_config, warn_unused_overrides

    warn_pretrain_config(args.config, "train")
    warn_unused_overrides("train", cfg, extra)
    run_finetune(cfg, Path(args.out), resume=args.resume)
    if launch_rank() == 0:  # under torchrun: once, after rank 0's metrics table
        print(f"done: {args.out}/metrics.json, checkpoints in {args.out}/checkpoints/")
    return 0


def cmd_eval(args, extra) -> int:
    from fewshot.data.output_guard import check_result_file_is_not_an_input
    from fewshot.eval.evaluate import format_table
    from fewshot.eval.output_files import EVAL_METRICS, check_own_output, holds_metrics
    from fewshot.eval.predict import evaluate_run
    from fewshot.utils import check_output_file, resolve_device, write_json

    if args.out:
        out = check_output_file(args.out, example="metrics.json")
        check_result_file_is_not_an_input(args.out, args.data, args.run, kind="metrics")
        check_own_output(out, f"--out {args.out}", "eval", lambda p: holds_metrics(p, EVAL_METRICS),
                         "metrics.json content: datasets, split and checkpoint",
                         f"Give --out a new file name, or move {args.out} away first.")
    if args.balance and (args.split != "test" or args.mode != "known"):  # the val split is what auto decides on
        print(f"fewshot eval: note: --balance applies to known-source test scores only; --split {args.split} "
              f"--mode {args.mode} is scored as the model predicts it.", file=sys.stderr)
    metrics = evaluate_run(args.run, args.data, args.mode, resolve_device(args.device, "--device"),
                           split=args.split, datasets=args.datasets, skip_bad=args.skip_bad_images,
                           balance=args.balance)  # None: the run's recorded run.balance, else auto
    print(format_table(metrics, title=f"{args.split} accuracy of {metrics['checkpoint']}"))
    if args.out:
        write_json(Path(args.out), metrics, follow_links=True)  # the user's path: a link writes its target
    return 0


def cmd_predict(args, extra) -> int:
    from fewshot.data.output_guard import check_result_file_is_not_an_input
    from fewshot.eval.output_files import check_predict_out, holds_routing
    from fewshot.eval.predict import predict_run
    from fewshot.utils import check_output_file, name_fits, resolve_device, write_json, written_in_place

    out = check_output_file(args.out, example="pred_all.json")
    check_result_file_is_not_an_input(args.out, args.data, args.run, kind="predictions")
    # a stream or device (/dev/stdout, a pipe, /dev/fd/3) has no folder of the user's beside it: /dev/stdout gave
    # /dev/stdout.routing.json (as root, a new file in /dev), /dev/fd/3 an error after the whole prediction
    routing_file = None if written_in_place(out) else out.with_name(out.stem + ".routing.json")
    routing_fits = routing_file is not None and name_fits(routing_file)
    if args.mode == "unknown" and routing_file is None:
        print(f"fewshot predict: note: --out {args.out} is a stream or device, not a file in a folder: the routing "
              f"(each image's predicted dataset, NAME.routing.json beside a file --out) is not written; give --out "
              f"a file name to keep it.", file=sys.stderr, flush=True)
    if args.mode == "unknown" and routing_file is not None:
        if not routing_fits:  # refused after the whole prediction, on a name never typed
            raise UserError(f"--out {args.out}: --mode unknown also writes each image's predicted dataset beside it, "
                            f"to {routing_file.name}, a name longer than this file system allows; choose a shorter "
                            f"--out.")
        if routing_file.is_dir():  # found after the whole prediction, with another path's advice
            raise UserError(f"--out {args.out}: --mode unknown also writes each image's predicted dataset beside it, "
                            f"to {routing_file}, which is a folder; move that folder away or choose another --out.")
    check_predict_out(out, routing_file, args.out, args.mode == "unknown" and routing_fits)
    if args.balance and args.mode != "known":  # classes compete across datasets there: not evened out per dataset
        print("fewshot predict: note: --balance applies to known-source predictions only; --mode unknown predicts "
              "as the model does.", file=sys.stderr)
    pred, routing = predict_run(args.run, args.data, args.mode, resolve_device(args.device, "--device"),
                                datasets=args.datasets, skip_bad=args.skip_bad_images, balance=args.balance)
    write_json(out, pred, follow_links=True)  # the user's path: a link writes its target
    if args.mode == "unknown" and routing_file is not None:
        write_json(routing_file, routing)
    elif routing_fits and holds_routing(routing_file):  # an earlier --mode unknown's would no longer describe these
        routing_file.unlink(missing_ok=True)  # only predict's own: a user's file, folder or link so named stays
    n = sum(len(v) for k, v in pred.items() if k != "n_parameters")
    print(f"wrote {out}: {n} predictions over {len(pred) - 1} dataset(s), mode {args.mode}")
    return 0


def cmd_models(args, extra) -> int:
    from fewshot.models.catalog import list_models

    print(list_models(args.pattern, args.limit))
    return 0


def cmd_report(args, extra) -> int:
    from fewshot.report.build import build_report

    if args.grid < 0:
        from fewshot.errors import UserError

        raise UserError("--grid must be 0 or more images.")
    index = build_report(args.runs, Path(args.out), data=args.data, device=args.device, tsne=args.tsne,
                         grid_images=args.grid)
    print(f"report: {index}")
    return 0


def cmd_compare(args, extra) -> int:
    from fewshot.report.build import run_compare

    run_compare(args.runs)
    return 0


COMMANDS = {"data": cmd_data, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "models": cmd_models,
            "report": cmd_report, "compare": cmd_compare}


def console_main() -> int:
    """The `fewshot` command and `python -m fewshot`: a fresh process, whose start-up (imports) counts toward
    `fewshot run --budget-minutes`. A call of main() from Python (tests, notebooks) starts its clock at the call."""
    import gc

    import fewshot

    _plug_closed_stderr()
    code = main(started=fewshot.PROCESS_START)
    # the interpreter's exit collects every object (torch, matplotlib, the run's tensors) before the process ends:
    # 1.2-1.5 s after `fewshot run`'s last line on 2 idle cores, 4-8 s on a busy machine, outside its budget;
    # everything is written and closed by now, so the exit leaves them to the operating system
    gc.freeze()
    return code


# OSErrors that describe the machine (disk, permissions, paths), which the user can fix: exit 2, no traceback
ENVIRONMENT_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                                errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP})


PATH_ARGS = ("data", "out", "run", "weights", "config", "unlabeled", "runs")


def _expand_home(args) -> None:
    """`--out=~/r` and a quoted '~/d' reach us unexpanded (the shell expands ~ only at a word's start): without
    this the run went to a folder literally named ./~ ."""
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])


def _help_command(argv: list) -> list:
    """`fewshot help [COMMAND]`, as git and pip have it, is `fewshot [COMMAND] --help` (it was an invalid choice)."""
    if argv[:1] != ["help"]:
        return argv
    return [*argv[1:2], "--help"] if argv[1:2] != ["help"] else ["--help"]


def main(argv: list | None = None, started: float | None = None) -> int:
    """Run one fewshot command, as the shell would: ``main(["train", "--data", root, ...])``.

    Returns the exit status (0 done, 2 a user error, 1 a bug, 128+N stopped by signal N) with the messages on
    stderr. As with any argparse program, ``--help``, ``--version`` and a malformed command line raise
    ``SystemExit`` after printing the usage. Paths and numbers may be given as ``pathlib.Path`` and ``int``.
    Called from Python, the command gives back what it changed in the process: its run-folder locks, the
    torch thread count, deterministic mode, the global random states and the variable torch sets
    (TORCHINDUCTOR_CACHE_DIR). Calls from several threads run one at a time: a call made while another runs waits
    for it (said on stderr). What stdout and stderr cannot encode (an ASCII or Latin-1 locale) is written escaped.
    """
    from fewshot import process_state

    with _stderr_present(), process_state.escaped_output():  # argparse's messages and the wait for the turn name
        return _main(argv, started)  # what was typed too


_NO_STDERR = threading.Lock()
_NO_STDERR_CALLS = [0, None]  # calls inside _stderr_present, the null stream they share


@contextlib.contextmanager
def _stderr_present():
    """sys.stderr a null stream while a command runs where Python has none (`2>&-`, pythonw: None): the commands'
    notes, warnings and tracebacks crashed on None.write, or (print's file=None) went into stdout, which may be
    the predictions (--out /dev/stdout). Put back to None when the last such call returns."""
    with _NO_STDERR:
        if sys.stderr is not None and not _NO_STDERR_CALLS[0]:
            owned = False
        else:
            owned = True
            if not _NO_STDERR_CALLS[0]:
                _NO_STDERR_CALLS[1] = sys.stderr = open(os.devnull, "w", encoding="utf-8")
            _NO_STDERR_CALLS[0] += 1
    try:
        yield
    finally:
        if owned:
            with _NO_STDERR:
                _NO_STDERR_CALLS[0] -= 1
                if not _NO_STDERR_CALLS[0]:
                    if sys.stderr is _NO_STDERR_CALLS[1]:
                        sys.stderr = None
                    _NO_STDERR_CALLS[1].close()
                    _NO_STDERR_CALLS[1] = None


def _plug_closed_stderr() -> None:
    """A closed descriptor 2 (`2>&-`) is the next file opened: a checkpoint or JSON file would then receive what
    torch, a DataLoader worker or the interpreter writes to stderr. /dev/null holds that place instead."""
    try:
        os.fstat(2)
        return
    except OSError:
        pass
    try:
        _devnull_onto(2)
    except OSError:
        pass


def _devnull_onto(fd: int) -> None:
    """Point descriptor ``fd`` at /dev/null, closing the descriptor opened for it (it leaked once a call) unless
    the open itself took ``fd``, as it does when ``fd`` was closed and the lowest free."""
    null = os.open(os.devnull, os.O_WRONLY)
    if null != fd:
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)


# their --out is one result file, which a pipe may take (`--out >(jq .)`); probe's is a folder, never stdout
_FILE_OUT_COMMANDS = ("eval", "predict", "export")


@contextlib.contextmanager
def _messages_off_the_output(args):
    """The command's own lines (checkpoint used, table, "wrote ...") on stderr while its --out is this process's
    stdout (/dev/stdout, /dev/fd/1, a file stdout also goes to): they came around the JSON, which then did not
    parse (`predict ... --out /dev/stdout > p.json`). /dev/null for both drops nothing worth moving."""
    out = getattr(args, "out", None)
    if args.command in _FILE_OUT_COMMANDS and out and _is_stdout(out):
        with contextlib.redirect_stdout(sys.stderr):
            yield
    else:
        yield


def _is_stdout(path) -> bool:
    """Whether ``path`` names the file that descriptor 1 (or sys.stdout's own descriptor) writes to."""
    try:
        target = os.stat(path)
        if os.path.samestat(target, os.stat(os.devnull)):
            return False
    except (OSError, ValueError):  # none there yet: a new file, not stdout
        return False
    fds = {1}
    try:
        fds.add(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # None, a StringIO or a notebook's stream: no descriptor
        pass
    for fd in fds:
        try:
            if os.path.samestat(target, os.fstat(fd)):
                return True
        except OSError:  # closed
            pass
    return False


def _main(argv: list | None, started: float | None) -> int:
    if argv is not None:
        argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in argv]
    argv = _help_command(sys.argv[1:] if argv is None else argv)
    with _argparse_said_once():
        args, extra = _parse(argv)
    args.started = started
    try:  # torch and torchvision ask for it while being imported: that traceback read as a bug in fewshot
        tempfile.gettempdir()
    except FileNotFoundError as exc:  # /tmp, /var/tmp and the current folder all unwritable
        if _quiet_rank() and _speaker_failed_too():  # every torchrun process meets it: the first of the node says it
            return 2
        rank = f"rank {os.environ.get('RANK', '?')}: " if _quiet_rank() else ""
        print(f"fewshot {args.command}: {rank}error: {printable(str(exc.strerror or exc))}. Set TMPDIR to a folder you "
              f"can write (e.g. `mkdir -p ~/tmp && export TMPDIR=~/tmp`) and run the command again.", file=sys.stderr)
        return 2
    with _TURN.taken(args.command) as stopped:
        if stopped:  # Ctrl-C in a notebook while this call waited: it did nothing
            print(f"fewshot {args.command}: stopped while waiting for the other fewshot command of this process; "
                  f"nothing was done.", file=sys.stderr)
            return 128 + signal.SIGINT
        return _main_alone(args, extra)


def _main_alone(args, extra) -> int:
    """The command itself, the only one running in this process (_Turn)."""
    from fewshot import cli_moco

    handlers = {**COMMANDS, **cli_moco.COMMANDS}
    from fewshot import progress

    bars = progress.is_enabled()
    if getattr(args, "no_progress", False):
        progress.set_enabled(False)
    from fewshot import process_state
    from fewshot.config import one_read_per_file
    from fewshot.run_lock import lock_scope
    from fewshot.train.stop_signal import sigterm_as_interrupt

    try:  # the run folders this command locks are free again when it returns, and the caller's settings back
        # under torchrun a rank blocked in a collective is ended by a watcher thread: the stop is said there
        blocked = lambda: _interrupted(args, signal.SIGTERM, from_watcher=True)  # noqa: E731
        # the streams escaped again, as they are now: the caller may have swapped sys.stdout while this call waited
        # its turn; a --config file read once, whatever reads it (config.one_read_per_file)
        with process_state.escaped_output(), process_state.kept(), lock_scope(), _command_call(), \
                sigterm_as_interrupt(blocked), one_read_per_file():
            return _dispatch(args, extra, handlers)
    finally:
        progress.set_enabled(bars)  # as were: --no-progress of one in-process call does not outlive it


class _Turn:
    """The process-wide turn of main() calls (threads of a notebook), re-entrant for a call made inside a command
    of the same thread. Commands change process-wide state while they run (warnings filters and
    warnings.showwarning, logger levels, torch's threads and random generator, os.environ) and put it back at
    their end: two at once left the caller's warnings switched off for good and made each other's training
    unreproducible, so a second call waits for the first."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # calls of the holding thread inside one another
        self._holder: tuple[str, str] | None = None  # (thread name, command) of the holder's outermost call

    @contextlib.contextmanager
    def taken(self, command: str):
        """Hold the turn for one call; yields whether a Ctrl-C stopped it while it waited (then not held)."""
        if not self._lock.acquire(blocking=False):
            holder = self._holder  # None only in the instant the holder gives the turn up
            who = f" (thread {holder[0]!r}, `fewshot {holder[1]}`)" if holder else ""
            try:
                print(f"fewshot {command}: another fewshot command is running in this process{who}: this one waits "
                      f"for it to finish (commands of one Python process run one at a time; to run them side by "
                      f"side, start them as separate processes).", file=sys.stderr, flush=True)
                self._lock.acquire()
            except KeyboardInterrupt:
                # the lock is not re-entrant here (this thread did not hold it): owned now means the Ctrl-C came
                # just after acquire() returned, and keeping it would make every later call wait for ever
                if self._lock._is_owned():
                    self._lock.release()
                yield True
                return
        try:
            self._depth += 1
            if self._depth == 1:
                self._holder = (threading.current_thread().name, command)
            yield False
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._holder = None
            self._lock.release()


_TURN = _Turn()


_CALLS = itertools.count(1)
# this process's main() call, numbered from 1. sigterm_as_interrupt's watcher and sayer threads start with a context
# of their own and read call 0 there: harmless, as _interrupted(from_watcher=True) asks the store nothing
_CALL = contextvars.ContextVar("fewshot_command_call", default=0)


@contextlib.contextmanager
def _command_call():
    """Numbers this main() call: the store keys of one call (distributed.EXIT_KEY, SAID_KEY) outlived it, and a
    second in-process call under torchrun found the first one's exit codes and claims."""
    token = _CALL.set(next(_CALLS))
    try:
        yield
    finally:
        _CALL.reset(token)


def _parse(argv: list) -> tuple[argparse.Namespace, list]:
    """The command line as argparse reads it, with the checks that answer as argparse does (usage, exit 2): a
    missing command, an empty path, an unknown option or a key=value word where none is taken."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if "--" in extra:  # `--unlabeled A B -- optim.lr=1e-3`: the usual end of a list of values, not an override
        extra.remove("--")
    _expand_home(args)
    if args.command is None:  # as argparse does for a missing argument: usage and why on stderr, exit 2
        parser.error("a command is required (`fewshot --help` lists them)")
    given = {name: getattr(args, name, None) for name in PATH_ARGS if name != "weights"}  # weights '': random init
    empty = [name for name, value in given.items()
             if value == "" or (isinstance(value, list) and "" in value)]
    if empty:  # `--out ''` (an unset shell variable) wrote into the current folder
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = sub.choices[args.command]
        names = {a.dest: a.option_strings[0] if a.option_strings else (a.metavar or a.dest.upper())
                 for a in command._actions}
        command.error(f"an empty path was given for {', '.join(names.get(n, n) for n in empty)}")  # usage; exit 2
    bad = [w for w in extra if w.startswith("-")]
    from fewshot.cli_moco import PROBE_WORDS

    unread = [w for w in extra if args.command not in ("train", "pretrain", "run")
              and not (args.command == "probe" and w.partition("=")[0].strip() in PROBE_WORDS)]
    if bad or unread:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        note = "" if bad else (" (key=value config overrides apply to train, pretrain and run; probe takes "
                               "data.bit_depth=N)")
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra if bad else unread)}{note}")  # exit 2
    return args, extra


ARGPARSE_GRACE_S = 2.0  # how long a quiet rank leaves the speaker to fail too (no process group yet) before speaking


@contextlib.contextmanager
def _argparse_said_once():
    """Under torchrun every process parses the same command line, and argparse's usage error, --help or --version
    came out once per process. A quiet rank (_quiet_rank) holds what argparse writes and drops it when argparse
    exits, with the same exit code. There is no process group yet to wait for the speaker on (_speaker_spoke): a
    failing quiet rank waits for torchrun to end it (_speaker_failed_too), and says it itself, its lines prefixed
    with its rank, where the speaker did not fail (a flag given to one rank only left every process silent)."""
    if not _quiet_rank():
        yield
        return
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    except SystemExit as exc:
        if exc.code not in (0, None) and not _speaker_failed_too():
            rank = os.environ.get("RANK", "?")
            sys.stderr.write("".join(f"rank {rank}: {line}" for line in err.getvalue().splitlines(keepends=True)))
        raise
    sys.stdout.write(out.getvalue())  # no exit: whatever was written along the way is the command's own
    sys.stderr.write(err.getvalue())


def _process_group_started() -> bool:
    """Whether this process may hold a torch.distributed process group. Not merely "torch.distributed" in
    sys.modules: a Ctrl-C in the first second (while torch is imported) left a half-initialised torch there, and
    importing fewshot.train.distributed from it ended the clean stop in a circular-import traceback (exit 1)."""
    dist = sys.modules.get("torch.distributed")
    try:
        return dist is not None and bool(dist.is_available()) and bool(dist.is_initialized())
    except Exception:  # noqa: BLE001 - a half-imported module lacks its attributes
        return False


def _dispatch(args, extra, handlers) -> int:
    code = _run_command(args, extra, handlers)
    if code and _process_group_started():
        from fewshot.train.distributed import report_exit

        # said after its message: a quiet rank that failed too waits for the speaker's (_speaker_spoke), and the
        # ranks that torchrun then ends look for any (_a_peer_said_why)
        report_exit(code, call=_CALL.get())
    return code


def _run_command(args, extra, handlers) -> int:
    try:
        refuse_several_processes(args.command)
        if args.command in ("train", "pretrain", "run"):
            from fewshot.runtime import check_environment

            check_environment()  # a typo is refused before any folder is written
        with _messages_off_the_output(args):
            code = handlers[args.command](args, extra) or 0
        if _process_group_started():  # under torchrun: leave no process group to interpreter teardown
            from fewshot.train.distributed import shutdown_distributed

            shutdown_distributed()  # on success only: after a failure a peer may never answer
        return code
    except UserError as exc:
        message = printable(str(exc))
        if getattr(exc, "every_process", False) or (not _quiet_rank() and _first_to_say(message)):
            print(f"fewshot {args.command}: error: {message}", file=sys.stderr)
        elif _quiet_rank() and not _speaker_spoke(message):  # an error of this rank alone: say which rank met it
            print(f"fewshot {args.command}: rank {os.environ.get('RANK', '?')}: error: {message}", file=sys.stderr)
        return 2
    except StopRequested as stop:
        how = "; continue with the same command and --resume"
        kept = "the stages finished so far are kept" if args.command != "run" or _run_stages_finished(
            Path(args.out)) else "no stage had finished"
        where = (f"after a whole step; checkpoint written: {stop.checkpoint}" if stop.checkpoint else
                 f"outside training ({kept})")
        if not stop.checkpoint and args.command == "run" and not _is_file(Path(args.out, "run_state.json")):
            where, how = "before the run started", "; nothing to resume: start the same command again"
        try:  # said first: once another rank has exited, torchrun ends this one with SIGTERM
            if not _quiet_rank():
                print(f"fewshot {args.command}: {stop} {where}{how}", file=sys.stderr, flush=True)
        except OSError:  # stderr went away with the same Ctrl-C (`... 2>&1 | tee log`)
            try:  # nor may the interpreter's final flush fail on it
                _devnull_onto(sys.stderr.fileno())
            except (OSError, ValueError, AttributeError):
                pass
        if _process_group_started():  # every rank passed the stop's barrier: safe to tear down
            from fewshot.train.distributed import shutdown_distributed

            shutdown_distributed()
        return 128 + int(stop.signum)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM outside training (training stops cleanly: StopRequested)
        return _interrupted(args, getattr(exc, "signum", signal.SIGINT))  # stop_signal.Terminated: SIGTERM
    except BrokenPipeError:  # the reader went away (`fewshot models | head`): not a bug, no traceback
        try:  # keep the interpreter's final flush from failing again
            _devnull_onto(sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141  # 128 + SIGPIPE, what the shell reports for a command cut off this way
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            traceback.print_exc()
            print(f"fewshot {args.command}: internal error (a bug; please report it with the traceback above).",
                  file=sys.stderr)
            return 1
        # the machine's answer, not a bug: a read-only or full disk, a missing permission, a path too long
        where = f" {printable(os.fsdecode(exc.filename))}:" if exc.filename else ""
        print(f"fewshot {args.command}: error:{where} {exc.strerror or exc} ({_environment_advice(args, exc)}).",
              file=sys.stderr)
        return 2
    except Exception as exc:
        if isinstance(exc, RuntimeError) and str(exc).startswith("Symlink loop from"):  # pathlib's resolve(), 3.11-12
            print(f"fewshot {args.command}: error: {exc}: a path given goes round a loop of symbolic links; give "
                  f"another path.", file=sys.stderr)
            return 2
        if _a_peer_stopped(exc):  # a user error on rank 0 alone (a held lock, a full disk) is not a bug on rank 1
            first_exit = _first_exit(1.0)
            if first_exit in (128 + signal.SIGINT, 128 + signal.SIGTERM):
                # rank 0 was interrupted, so was this rank (a terminal's Ctrl-C and torchrun's forwarded SIGINT reach
                # every process), whose own SIGINT may come only after the closed connection: not "another process"
                return _interrupted(args, signal.Signals(first_exit - 128))
            if _a_peer_said_why():  # the rank that stopped first said why (a user error of rank 1 alone)
                return 1
            first = clipped((str(exc).strip().splitlines() or [""])[0], 160)
            print(f"fewshot {args.command}: rank {os.environ.get('RANK', '?')} stopped because another process of "
                  f"this torchrun job ended first (its own message says why; here: {first}).", file=sys.stderr)
            return 1
        traceback.print_exc()
        print(f"fewshot {args.command}: internal error (a bug; please report it with the traceback above).",
              file=sys.stderr)
        return 1


def _environment_advice(args, exc: OSError) -> str:
    """What to do about an OSError of the machine: for its reason, then how to go on. A train whose disk filled
    while it wrote metrics.json was told to "run the command again", which refuses a folder that holds a run."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space on that disk, or write elsewhere"
    elif exc.errno == errno.ENAMETOOLONG:
        fix = "choose a shorter name"
    else:
        fix = "check the path and its permissions"
    out = getattr(args, "out", None)
    if out and args.command in ("train", "pretrain") and _is_file(out, "checkpoints", "last.pt"):
        return (f"{fix}, then run the same command with --resume: it continues from the last checkpoint, or "
                f"(training had finished) writes the results again")
    if out and args.command == "run" and _is_file(out, "run_state.json"):
        return f"{fix}, then run the same command with --resume: the stages finished so far are kept"
    return f"{fix}, then run the command again"


def _is_file(*parts) -> bool:
    """Whether the path is a file, False where it cannot be told. Path.is_file() raises PermissionError (an --out
    that cannot be searched): said while an OSError is reported, it replaced exit 2 with a traceback."""
    return os.path.isfile(os.path.join(*parts))


DDP_COMMANDS = ("train", "pretrain")  # the commands that share their work among torchrun's processes


def refuse_several_processes(command: str) -> None:
    """Under torchrun every other command did its whole work in every process: eval, predict, export and report
    wrote the same files N times, compare and models printed every table N times, data built into one temporary
    folder from every rank and crashed. All are refused alike, before any work."""
    if command in DDP_COMMANDS or world_size_env() < 2:
        return
    hint = (" (or run its stages under torchrun one by one: `fewshot pretrain`, then `fewshot train`)"
            if command == "run" else "")
    raise UserError(f"`fewshot {command}` runs in one process, but WORLD_SIZE is {world_size_env()} here "
                    f"(torchrun, or a job that starts several processes): run it once, without torchrun{hint}.")


def clipped(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word's end, with "..." where cut: a peer's gloo message
    cut mid-word ("caused by a remote worker c") read as garbled."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 3]
    if text[limit - 3] != " " and " " in cut:  # the cut fell inside a word: drop it whole
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.") + "..."


def _interrupted(args, signum: int, from_watcher: bool = False) -> int:
    """Ctrl-C or SIGTERM outside training: what was kept, and the exit status 128 + signum. Not said where torchrun's
    SIGTERM followed another rank's failure, which that rank has said (_a_peer_said_why). From sigterm_as_interrupt's
    watcher thread the store is not asked (the blocked main thread may hold it), and the line is written with
    os.write: print waited for stderr's lock, which a main thread stuck writing to stderr holds."""
    if signum == signal.SIGTERM and not from_watcher and _a_peer_said_why():
        return 128 + int(signum)
    out = getattr(args, "out", None)
    if out and args.command == "run" and _is_file(out, "run_state.json"):
        kept = "the stages finished so far are kept" if _run_stages_finished(Path(out)) else "no stage had finished"
        note = f"; {kept}: continue with the same command and --resume"
    elif out and args.command in ("train", "pretrain") and _is_file(out, "checkpoints", "last.pt"):
        # after the last epoch (plots or metrics being written), or a second Ctrl-C that did not wait for the
        # step's checkpoint: said bare, it read as a lost run
        note = ("; the checkpoints written so far are kept: the same command with --resume continues the run "
                "from the last one, or (training had finished) writes its results again")
    elif out and args.command in ("run", "train", "pretrain"):  # said bare, "interrupted" left the user guessing
        note = "; nothing to resume: start the same command again"
    else:
        note = ""
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    if signum == signal.SIGTERM and world_size_env() > 1 and (from_watcher or not _process_group_started()):
        # no store to ask (before the process group, or from the watcher thread): torchrun's SIGTERM may be its
        # answer to another process's failure (a flag given to rank 1 only), which "start again" would repeat
        what += " (if another process of this torchrun job failed first, its message above says why)"
    try:
        if not _quiet_rank() and from_watcher:
            os.write(2, f"fewshot {args.command}: {what}{note}\n".encode(errors="replace"))
        elif not _quiet_rank():
            print(f"fewshot {args.command}: {what}{note}", file=sys.stderr, flush=True)
    except OSError:  # stderr went away with the same signal (`... 2>&1 | tee log`)
        pass
    return 128 + int(signum)


def _run_stages_finished(out: Path) -> bool:
    """Whether run_state.json records a finished stage (a stop before round 1's end said "the stages finished so
    far are kept" of none)."""
    try:
        stages = json.loads(Path(out, "run_state.json").read_text()).get("stages", {})
        return any(isinstance(st, dict) and st.get("status") in ("trained", "done") for st in stages.values())
    except (OSError, ValueError, AttributeError, RecursionError):  # RecursionError: nested too deeply to be read
        # caught here, not by utils.loads_run_json: a Ctrl-C handler may run before fewshot.utils (and torch) is loaded
        return False


def world_size_env() -> int:
    """WORLD_SIZE as torchrun sets it; 1 where unset or not a number (`int("")` was an internal error)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return 1


def launch_rank() -> int:
    """This process's rank as init_distributed takes it (train.distributed.launch_rank, its one definition): 0 in one
    process, RANK under torchrun, a LaunchError naming RANK where it is missing or bad."""
    from fewshot.train.distributed import launch_rank

    return launch_rank()


def _quiet_rank() -> bool:
    """Under torchrun, a process other than the first of its node: each process meets the same user error, stop
    signal or Ctrl-C, and its message came out once per process, interleaved on one line. The environment says
    so even before (or without) a process group; the first process of each node speaks, as another node may lack
    a file or a GPU. A bad RANK is the message itself: every process prints it. Only torchrun's LOCAL_RANK counts
    (its agent sets TORCHELASTIC_RUN_ID too): a lone process in a pod that sets RANK=1 and WORLD_SIZE (Kubeflow), or
    LOCAL_RANK=1 by hand, exited 2 without a word. (A quiet rank that fails first waits for rank 0 to speak:
    _speaker_spoke.)"""
    if world_size_env() < 2 or not os.environ.get("TORCHELASTIC_RUN_ID"):
        return False
    raw = (os.environ.get("LOCAL_RANK") or "").strip()
    return raw.isdigit() and 0 < int(raw) < world_size_env()


SPEAKER_WAIT_S = 3.0  # the first process of a node meets the same error this much later and still speaks first


def _speaker_spoke(message: str) -> bool:
    """A quiet rank's user error (_quiet_rank): whether the first process of its node has printed why it stops, so
    this one may exit without a word. With a process group it is waited for, up to SPEAKER_WAIT_S (a quiet rank
    that exited first got the speaker ended by torchrun's SIGTERM before its message); not said by then, this rank
    says it and claims the message, so that a speaker meeting the same error later (a slower pool decode) stays
    silent (_first_to_say). The speaker blocked in a collective that this rank never joins held the exit for the
    60 s this wait once was. Before a process group exists: _speaker_failed_too."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return _speaker_failed_too()
    from fewshot.train.distributed import speaker_said

    speaker = dist.get_rank() - int(os.environ["LOCAL_RANK"])  # torchrun numbers a node's processes in a row
    return speaker_said(speaker, message, SPEAKER_WAIT_S, call=_CALL.get())


SPEAKER_EXIT_WAIT_S = 8.0  # before a process group: how long a quiet rank waits for a first process seen running


def _speaker_failed_too() -> bool:
    """Before a process group (no store to claim a message in): whether the first process of this node stopped too,
    and said why. Its process is looked for beside this one (torchrun's agent starts a node's processes): once it
    has exited, it failed, and said why if its exit status says it reported an error (_exited_saying_why; one
    killed by the OOM killer or SIGKILL said nothing, and the job ended without a word); seen running, it is waited
    for up to SPEAKER_EXIT_WAIT_S, as its exit after its message may be slow. A quiet rank that only slept
    ARGPARSE_GRACE_S for torchrun to end it said the same error again behind a slow exit or a --monitor-interval
    over the grace. Not found (no /proc, or reaped already): ARGPARSE_GRACE_S, as before. Still running at the end:
    an error of this rank alone; it says it."""
    speaker = _local_speaker()
    deadline = time.monotonic() + (ARGPARSE_GRACE_S if speaker is None else SPEAKER_EXIT_WAIT_S)
    try:
        while True:
            if speaker is not None and not _running(speaker):
                return _exited_saying_why(speaker)
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
    except KeyboardInterrupt:  # torchrun's SIGTERM (sigterm_as_interrupt) or Ctrl-C: the first process says why
        return True


def _local_speaker() -> tuple[int, str] | None:
    """The first process of this node under torchrun, as (pid, start time): a process of the same parent (the
    agent) with LOCAL_RANK=0 and this job's TORCHELASTIC_RUN_ID. One that has exited (its parent has not reaped it
    yet) shows no environment: the first started of this one's siblings, in the second before it (torchrun starts
    a node's processes in rank order); as that may be another rank (the first one reaped already), its exit status
    is what decides (_exited_saying_why). None where /proc cannot say (not Linux)."""
    run_id, parent, mine = os.environ.get("TORCHELASTIC_RUN_ID", ""), str(os.getppid()), _proc_stat(os.getpid())
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
    except OSError:
        return None
    siblings = [(pid, stat) for pid, stat in ((pid, _proc_stat(pid)) for pid in pids)
                if stat is not None and stat[1] == parent]
    for pid, stat in siblings:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"LOCAL_RANK=0" in environ and f"TORCHELASTIC_RUN_ID={run_id}".encode() in environ:
            return pid, stat[19]
    if mine is None:
        return None
    # among the siblings started in the second before this one only: the parent may hold older children (a test
    # runner's leftover zombies), and the oldest of all was taken for rank 0, found too old, and rank 0 not found
    near = [(pid, stat) for pid, stat in siblings if 0 <= int(mine[19]) - int(stat[19]) <= os.sysconf("SC_CLK_TCK")]
    if not near:
        return None
    pid, stat = min(near, key=lambda item: (int(item[1][19]), item[0]))
    return (pid, stat[19]) if stat[0] in ("Z", "X") else None


def _exited_saying_why(process: tuple[int, str]) -> bool:
    """Whether the process found by _local_speaker, seen exited, reported an error (exit 1 or 2: its message is
    out). Killed by a signal (OOM, SIGKILL) or ended another way, it said nothing of this rank's error, which this
    rank then says. A zombie's /proc/PID/stat field 52 (exit_code, Linux >= 3.5) holds its wait status; where that
    cannot be read (reaped already, an older kernel) it is taken to have said it, as before."""
    stat = _proc_stat(process[0])
    if stat is None or len(stat) < 50 or stat[19] != process[1] or stat[0] not in ("Z", "X") \
            or not stat[49].isdigit():
        return True
    status = int(stat[49])
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) in (1, 2)


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first, then the parent's pid); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _running(process: tuple[int, str]) -> bool:
    """Whether the process found by _local_speaker still runs: not exited (a zombie its parent has not reaped yet
    has exited), and its pid not reused by another (its start time)."""
    stat = _proc_stat(process[0])
    return stat is not None and stat[0] not in ("Z", "X") and stat[19] == process[1]


def _first_to_say(message: str) -> bool:
    """The speaker's user error: False where a quiet rank of its node has said the same message already."""
    if not _process_group_started():
        return True
    from fewshot.train.distributed import claim_message

    return claim_message(sys.modules["torch.distributed"].get_rank(), message, call=_CALL.get())


def _first_exit(timeout_s: float) -> int | None:
    """The exit code rank 0 reported after its message, if it did (read after a peer's connection closed: rank 0
    reports before it exits, so a short wait covers the report still on its way)."""
    if "torch.distributed" not in sys.modules:
        return None
    from fewshot.train.distributed import reported_exit

    return reported_exit(0, timeout_s, call=_CALL.get())


def _a_peer_said_why() -> bool:
    """Whether another process of this job reported a failure (after its message, if it printed one; _dispatch):
    torchrun then ends this one with SIGTERM, or its collective meets a closed connection, and a line of its own
    ("stopped by SIGTERM", "stopped because another process ended first") only added to the one that says why."""
    if not _process_group_started():
        return False
    from fewshot.train.distributed import reported_exit

    dist = sys.modules["torch.distributed"]
    try:
        others = [r for r in range(dist.get_world_size()) if r != dist.get_rank()]
    except Exception:  # noqa: BLE001 - a group torn down meanwhile
        return False
    stops = (None, 128 + signal.SIGINT, 128 + signal.SIGTERM)  # a stop, not a failure: each rank says its own
    return any(reported_exit(rank, 0.0, call=_CALL.get()) not in stops for rank in others)


def _a_peer_stopped(exc: BaseException) -> bool:
    """A collective failed under torchrun because another rank is gone: rank 0's own checks (the folder's
    lock, free disk space, a checkpoint write) end it with a clear message, and rank 1 then met a closed
    connection and printed gloo's traceback with "internal error (a bug; ...)". Only a connection closed or
    reset by the peer counts: a timeout, a port in use or a bad NCCL setup keep their traceback."""
    if sys.modules.get("torch.distributed") is None or world_size_env() < 2 or not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return any(words in text for words in ("closed by peer", "reset by peer", "connection closed", "broken pipe"))


if __name__ == "__main__":
    raise SystemExit(main())
