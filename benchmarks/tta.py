"""Does test-time augmentation help? Val accuracy of fine-tuned runs with and without it.

For each run (a `fewshot train` run or a `fewshot run` stage folder such as OUT/finetune), scores
the val split three ways: the plain prediction; the softmax averaged over the image and its four
1-pixel shifts (edge pixels replicated: label-preserving for digits and clothes alike); the
softmax averaged over the image and its horizontal mirror (wrong for digits, plausible for clothes).
Also the average of a self-training run's round 1 and the round that predicted (`--rounds`: row rounds_1_and_last,
that round's stage named in the JSON's last_round), and the average of several runs' models (`--ensemble`:
independently trained teachers, e.g. the same recipe's seeds).
Prints one line per run and writes JSON; choices are made on val, so test is not read.

    python benchmarks/tta.py runs/quality10/b10/st_s0/finetune ... [--data demo_data]
    python benchmarks/tta.py --rounds runs/quality10/b10/st_s0 ...
    python benchmarks/tta.py --ensemble runs/qbf/b3/st_s0/finetune_labelled runs/qbf/b3/st_s1/finetune_labelled ...
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot.data.cache import default_cache_dir
from fewshot.data.layout import scan_root
from fewshot.data.sets import load_splits
from fewshot.errors import UserError
from fewshot.eval.predict import load_trained
from fewshot.train.checkpoint import resolve_checkpoint
from fewshot.utils import write_json


def shifted(x: torch.Tensor, dx: int, dy: int, pad: int = 2) -> torch.Tensor:
    """x moved by (dx, dy) pixels, the uncovered border filled with the edge pixels."""
    h, w = x.shape[-2:]
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return xp[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w]


VIEWS = {
    "shift": [lambda x: x] + [lambda x, d=d: shifted(x, *d) for d in ((1, 0), (-1, 0), (0, 1), (0, -1))],
    "flip": [lambda x: x, lambda x: x.flip(-1)],
}


@torch.no_grad()
def val_probabilities(run: Path, data: Path, views, device: torch.device):
    tm = load_trained(run, device)  # a `fewshot run` folder: the stage that predicted, as `fewshot predict` takes it
    infos = scan_root(data, list(tm.space.names), splits=("train", "val"))
    d = tm.cfg["data"]  # the images decoded as the run's were, as eval reads them (bit depth, bad files skipped)
    (val,) = load_splits(infos, ("val",), tm.space, tm.size, default_cache_dir(data, d["cache_dir"]),
                         d.get("crop_pct", 1.0), bool(d.get("skip_bad_images", False)),
                         bit_depth=d.get("bit_depth", "auto"))
    x = tm.normalize(val.images.to(device))
    probs = [tm.space.restrict(tm.model(v(x)).float(), val.dataset_ids).softmax(1) for v in views]
    return torch.stack(probs).mean(0), val, tm.space


def accuracy(probs: torch.Tensor, val, space) -> dict[str, float]:
    pred = probs.argmax(1)
    out = {n: round(float((pred[val.dataset_ids == d] == val.targets[val.dataset_ids == d]).float().mean()) * 100, 2)
           for d, n in enumerate(space.names)}
    out["mean"] = round(statistics.fmean(out.values()), 2)
    return out


def ensemble(runs: list[Path], data: Path, device: torch.device, results_path: Path) -> None:
    """Val accuracy of each model alone, of every pair and of all of them (softmax averages)."""
    probs, singles = [], []
    for run in runs:
        p, val, space = val_probabilities(run, data, VIEWS["shift"][:1], device)
        probs.append(p)
        singles.append(accuracy(p, val, space))
        print(run, singles[-1], flush=True)
    pairs = {f"{a}+{b}": accuracy((probs[a] + probs[b]) / 2, val, space)
             for a in range(len(runs)) for b in range(a + 1, len(runs))}
    everything = accuracy(torch.stack(probs).mean(0), val, space)
    summary = {"single_mean": statistics.fmean(s["mean"] for s in singles),
               "pair_mean": statistics.fmean(s["mean"] for s in pairs.values()),
               "all": everything["mean"]}
    print(f"val mean: single models {summary['single_mean']:.2f}, pairs {summary['pair_mean']:.2f}, "
          f"all {len(runs)} averaged {summary['all']:.2f} ({everything})")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(results_path, {"runs": [str(r) for r in runs], "single": singles, "pairs": pairs, "all": everything,
                              "mean": summary})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=Path("demo_data"))
    ap.add_argument("--rounds", action="store_true", help="runs are `fewshot run` folders: also average round 1 "
                    "(finetune_labelled) with the round that predicted (finetune, or finetune_roundK where later "
                    "rounds were skipped)")
    ap.add_argument("--ensemble", action="store_true", help="instead of the views: score each run, the softmax "
                    "average of every pair and of all of them (do independently trained models make different "
                    "mistakes?)")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/tta.json"))
    args = ap.parse_args()
    try:
        score_runs(args, ap)
    except UserError as exc:  # a run folder without the stage asked for, a damaged checkpoint: said, no traceback
        raise SystemExit(f"tta.py: {exc}") from None


def score_runs(args, ap: argparse.ArgumentParser) -> None:
    device = torch.device("cpu")
    if args.ensemble:
        if len(args.runs) < 2:
            ap.error("--ensemble needs at least two runs")
        ensemble(args.runs, args.data, device, args.results)
        return
    results, last_round = {}, {}
    for run in args.runs:
        first = run / "finetune_labelled"
        if args.rounds and not (first / "checkpoints").is_dir():
            raise SystemExit(f"tta.py: --rounds reads a self-training `fewshot run` folder, and {run} has no round 1 "
                             f"({first}); leave out --rounds to score {run} alone.")
        # the stage that predicted (resolve_checkpoint, as predict): `finetune`, or the last round that finished
        # where later ones were skipped (finetune_roundK), or one the val guard preferred
        last = resolve_checkpoint(run) if args.rounds else run
        plain, val, space = val_probabilities(last, args.data, VIEWS["shift"][:1], device)
        row = {"plain": accuracy(plain, val, space)}
        for name, views in VIEWS.items():
            row[f"tta_{name}"] = accuracy(val_probabilities(last, args.data, views, device)[0], val, space)
        if args.rounds and last.parent.parent.resolve() != first.resolve():
            # named for what it is: "rounds_1_and_2" was also the name where finetune_round3 (of 5) predicted
            row["rounds_1_and_last"] = accuracy(val_probabilities(first, args.data, VIEWS["shift"][:1], device)[0]
                                                + plain, val, space)
            last_round[str(run)] = last.parent.parent.name
        elif args.rounds:
            print(f"{run}: round 1 ({first.name}) is the stage that predicted: no later round to average it with",
                  flush=True)
        results[str(run)] = row
        said = f" (last: {last_round[str(run)]})" if str(run) in last_round else ""
        print(run, " | ".join(f"{k}: {v['mean']:.2f}" for k, v in row.items()) + said, flush=True)
    keys = dict.fromkeys(k for r in results.values() for k in r)  # a run without a later round lacks that row
    summary = {k: statistics.fmean(r[k]["mean"] for r in results.values() if k in r) for k in keys}
    print("val mean over runs: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.results, {"runs": results, "mean": summary, **({"last_round": last_round} if last_round else {})})


if __name__ == "__main__":
    main()
