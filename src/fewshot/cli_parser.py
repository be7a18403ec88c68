"""The `fewshot` command line as argparse reads it: the parser of every command with its help texts, and the checks
that answer as argparse does (usage, exit 2): a missing command, an empty path, an unknown option or a key=value
word where none is taken. `fewshot help COMMAND` and `~` in a path given after `=` are read here too.

Apart from cli.py (the commands and their exit codes) because the parser is most of the command line's text, and
its help is part of the command-line contract; pretrain's, run's, export's and probe's parsers are cli_moco's.
"""

from __future__ import annotations

import argparse
import os
import re


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
                   if task == "pretrain" else "4e-3 from random init; with --weights, 2e-3 for fewshot's own "
                   "export or checkpoint, 1e-4 for other weights)"))
    p.add_argument("--seed", type=int, help="seed for initialisation, batches and augmentation (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto: cuda when available")
    p.add_argument("--resume", action="store_true", help="continue RUN from checkpoints/last.pt exactly")
    p.add_argument("--skip-bad-images", action="store_true", help="skip undecodable images (listed) instead of failing")
    p.add_argument("--save-every-steps", type=int, help="also checkpoint every N steps (default: at epoch ends, at "
                   "most every train.save_interval_s=30 seconds, and always at the first, the best and the last)")
    p.add_argument("--skip-nonfinite", type=int, metavar="N",
                   help="skip up to N steps whose loss is NaN/inf instead of stopping (default 0)")
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def _run_reader(sub, name: str, help: str, description: str, data: str) -> argparse.ArgumentParser:
    """A command that reads one trained run (or one checkpoint) and a data root: eval and predict."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("run", metavar="RUN_OR_CKPT")
    p.add_argument("--data", required=True, help=data)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fewshot", description="Few-shot image classification over several "
                                     "datasets, with MoCo self-supervised pretraining on unlabeled images.",
                                     epilog="`fewshot help COMMAND` (or `fewshot COMMAND --help`) explains a command.")
    from fewshot import __version__

    parser.add_argument("--version", action="version", version=f"fewshot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("data", help="build a demo dataset from local real data (digits, fashion-mnist)",
                       description="Build a few-shot dataset in fewshot's layout from data on this machine: "
                       "`digits` from scikit-learn, `fashion-mnist` from Debian's dataset-fashion-mnist IDX files.")
    # named as the user sees it: argparse named its dest ("argument name: invalid choice") in a refusal; the choices
    # as the metavar keep the usage line naming them (review rev75)
    p.add_argument("name", metavar="{digits,fashion-mnist}", choices=["digits", "fashion-mnist"],
                   help="the dataset to build: digits or fashion-mnist")
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
                   "(from `fewshot export`). The lr follows the start: a fewshot export or checkpoint (of a run "
                   "not started from other weights) gets run.finetune_lr 2e-3 with backbone x1, other "
                   "(ImageNet-grade) weights the course's lr 1e-4 with backbone x0.1")

    p = _run_reader(sub, "eval", help="per-dataset accuracy of a trained run",
                    description="Score a trained run (or one checkpoint) on the val split, or on the test split "
                    "against ROOT/<dataset>/test_labels.json, in known- or unknown-source mode; prints per-dataset "
                    "acc@1/acc@5 and writes metrics.json with --out.", data="dataset root: ROOT/<dataset>/{val,test}/")
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

    p = _run_reader(sub, "predict", help="write pred_all.json for the test images",
                    description="Predict every image of ROOT/<dataset>/test/ with a trained run (or one checkpoint) "
                    "and write pred_all.json: {\"n_parameters\": N, \"<dataset>\": {\"<image_id>\": class}}, "
                    "the class an index into the dataset's sorted class folder names.",
                    data="dataset root: ROOT/<dataset>/test/<image>")
    p.add_argument("--out", required=True, help="pred_all.json path")
    p.add_argument("--mode", choices=["known", "unknown"], default="known",
                   help="known (default): each image's class among its own dataset's classes; unknown: dataset and "
                   "class over the union of all classes, the predicted dataset written to OUT's .routing.json, and "
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
                   "skewed test split reads val); on: for every dataset whose test split holds 3 images per class or "
                   "more on average (fewer cannot be evened out; the printed line says where the proportions could "
                   "not be checked); off: plain argmax")
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
    p.add_argument("--skip-bad-images", action="store_true",
                   help="go on past undecodable val images (listed): they are left out of the confusion matrices, "
                   "embedding map and prediction grid, which are otherwise skipped")

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
    probe = sub.choices["probe"]  # its words: the decoding settings train, pretrain and run take (cli_probe)
    probe.usage = (probe.format_usage().removeprefix("usage: ").rstrip()
                   + " [data.bit_depth=N] [data.resize=crop|pad|auto]")  # after its flags
    return parser


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
    from fewshot.cli_probe import PROBE_WORDS

    unread = [w for w in extra if args.command not in ("train", "pretrain", "run")
              and not (args.command == "probe" and w.partition("=")[0].strip() in PROBE_WORDS)]
    if bad or unread:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        # a word without = (`models a b`) is no override, but a dotted key is one whose = was forgotten (rev75)
        overrides = not bad and any("=" in w or re.fullmatch(r"[A-Za-z_]+(\.[A-Za-z_]+)+", w) for w in unread)
        note = (" (key=value config overrides apply to train, pretrain and run; probe takes data.bit_depth=N and "
                "data.resize=crop|pad|auto)"
                if overrides else "")
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra if bad else unread)}{note}")  # exit 2
    return args, extra
