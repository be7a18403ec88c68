"""Fine-tuning on the labelled images with and without a use of the pool, at equal wall time (issue 8, item 3).

Each variant is `fewshot train` with one finished `fewshot run`'s round-1 settings (RUN/finetune_labelled/
config.yaml: model, lr, augmentation, time-based schedule) and the same budget, on the same machine, variants
alternating within a seed so that machine drift hits them alike. The score is the best val mean acc@1 (what
the run keeps); test images are not looked at.

    python benchmarks/semi_equal_time.py runs/r1/st_s0 --seeds 0 1 2 --minutes 2 \\
        --variants plain= "moco=semi.method=moco semi.mu=1"
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(run: Path, data: Path, seed: int, minutes: float, flags: list[str], work: Path) -> dict:
    """One `fewshot train` of ``minutes`` with the run's round-1 config; its val metrics and step count."""
    out = work / "run"
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "fewshot", "train", "--data", str(data), "--config",
           str(run / "finetune_labelled" / "config.yaml"), "--out", str(out), "--seed", str(seed), "--device", "cpu",
           "--no-progress", "--epochs", "100000", f"train.budget_minutes={minutes}", "train.tensorboard=false",
           *flags]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    return {"val": metrics["mean_acc1"], "datasets": {k: v["acc1"] for k, v in metrics["datasets"].items()},
            "steps": rows[-1]["step"] if rows else 0, "seconds": time.monotonic() - t0,
            "moco_loss_last": rows[-1].get("moco_loss") if rows else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished `fewshot run` folder (its finetune_labelled/config.yaml)")
    ap.add_argument("--data", type=Path, default=None, help="the data root (default: the run's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--variants", nargs="+", default=["plain=", "moco=semi.method=moco semi.mu=1"],
                    help='NAME="key=value key=value" (empty: the run\'s own settings)')
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/semi_equal_time.json"))
    args = ap.parse_args()
    import yaml

    saved = yaml.safe_load((args.run / "finetune_labelled" / "config.yaml").read_text())
    data = args.data or Path(saved["data"]["root"])
    variants = {v.split("=", 1)[0]: v.split("=", 1)[1].split() for v in args.variants}
    results: dict = {"minutes": args.minutes, "run": str(args.run), "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, flags in variants.items():
                r = train(args.run, data, seed, args.minutes, flags, Path(tmp))
                results["variants"].setdefault(name, {})[str(seed)] = r
                print(f"seed {seed} {name:8s} val {r['val']:.2f} {r['datasets']} steps {r['steps']} "
                      f"({r['seconds']:.0f} s)", flush=True)
    base = next(iter(variants))
    print(f"val mean acc@1 at {args.minutes:g} minutes, mean +- std over seeds; paired difference to {base}:")
    for name, rows in results["variants"].items():
        vals = [r["val"] for r in rows.values()]
        diffs = [rows[s]["val"] - results["variants"][base][s]["val"] for s in rows]
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        print(f"  {name:8s} {statistics.fmean(vals):.2f} +- {spread:.2f}   "
              f"{', '.join(f'{d:+.2f}' for d in diffs)}")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
