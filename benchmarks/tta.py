"""Does test-time augmentation help? Val accuracy of fine-tuned runs with and without it.

For each run (a `fewshot train` run or a `fewshot run` stage folder such as OUT/finetune), scores
the val split three ways: the plain prediction; the softmax averaged over the image and its four
1-pixel shifts (edge pixels replicated: label-preserving for digits and clothes alike); the
softmax averaged over the image and its horizontal mirror (wrong for digits, plausible for clothes).
Also the average of a self-training run's round 1 and round 2 (`--rounds`), and the average of
several runs' models (`--ensemble`: independently trained teachers, e.g. the same recipe's seeds).
Prints one line per run and writes JSON; choices are made on val, so test is not read.

    python benchmarks/tta.py runs/quality10/b10/st_s0/finetune ... [--data demo_data]
    python benchmarks/tta.py --rounds runs/quality10/b10/st_s0 ...
    python benchmarks/tta.py --ensemble runs/qbf/b3/st_s0/finetune_labelled runs/qbf/b3/st_s1/finetune_labelled ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot.data.cache import default_cache_dir
from fewshot.data.layout import scan_root
from fewshot.data.sets import load_splits
from fewshot.eval.predict import load_trained


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
    tm = load_trained(run, device)
    infos = scan_root(data, list(tm.space.names), splits=("train", "val"))
    (val,) = load_splits(infos, ("val",), tm.space, tm.size, default_cache_dir(data, tm.cfg["data"]["cache_dir"]),
                         tm.cfg["data"]["crop_pct"], False)
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
    results_path.write_text(json.dumps({"runs": [str(r) for r in runs], "single": singles, "pairs": pairs,
                                        "all": everything, "mean": summary}, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, default=Path("demo_data"))
    ap.add_argument("--rounds", action="store_true", help="runs are `fewshot run` folders: also average round 1 "
                    "(finetune_labelled) with the last round (finetune)")
    ap.add_argument("--ensemble", action="store_true", help="instead of the views: score each run, the softmax "
                    "average of every pair and of all of them (do independently trained models make different "
                    "mistakes?)")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/tta.json"))
    args = ap.parse_args()
    device = torch.device("cpu")
    if args.ensemble:
        if len(args.runs) < 2:
            ap.error("--ensemble needs at least two runs")
        ensemble(args.runs, args.data, device, args.results)
        return
    results = {}
    for run in args.runs:
        last = run / "finetune" if args.rounds else run
        plain, val, space = val_probabilities(last, args.data, VIEWS["shift"][:1], device)
        row = {"plain": accuracy(plain, val, space)}
        for name, views in VIEWS.items():
            row[f"tta_{name}"] = accuracy(val_probabilities(last, args.data, views, device)[0], val, space)
        if args.rounds:
            first = val_probabilities(run / "finetune_labelled", args.data, VIEWS["shift"][:1], device)[0]
            row["rounds_1_and_2"] = accuracy(first + plain, val, space)
        results[str(run)] = row
        print(run, " | ".join(f"{k}: {v['mean']:.2f}" for k, v in row.items()), flush=True)
    keys = next(iter(results.values())).keys()
    summary = {k: statistics.fmean(r[k]["mean"] for r in results.values()) for k in keys}
    print("val mean over runs: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"runs": results, "mean": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
