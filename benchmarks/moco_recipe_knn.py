"""Which MoCo choices make short pretraining on small images learn? kNN monitor after a fixed time.

Runs `fewshot pretrain` on the demo pool for --minutes each (time-based cosine schedule, seed 0),
once with the small-image recipe of `configs/moco_cpu_small.yaml` and once with each of its choices
undone, plus the older `fewshot run` setting; prints and writes the last kNN monitor (val splits,
k=200, t=0.1), next to the same kNN on raw pixels (the bar a useful backbone must clear). A run folder
that already holds a log is reused (delete it to measure again).

    python benchmarks/moco_recipe_knn.py --data demo_data --out runs/knnabl --minutes 1.5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

COMMON = ["--model", "resnet18", "--img-size", "32", "--batch-size", "64", "--queue-size", "1024", "--epochs",
          "100000", "--no-progress", "sched.time_based=true", "moco.momentum=0.99"]
VARIANTS = {  # name: the choices (one undone at a time)
    "new": ["--lr", "0.06", "model.small_stem=true", "model.width=0.5", "moco.split_bn_groups=2"],
    "new_plainstem": ["--lr", "0.06", "moco.split_bn_groups=2"],
    "new_8groups": ["--lr", "0.06", "model.small_stem=true", "model.width=0.5", "moco.split_bn_groups=8"],
    "new_lr0.015": ["--lr", "0.015", "model.small_stem=true", "model.width=0.5", "moco.split_bn_groups=2"],
    "old": ["--lr", "0.015", "moco.split_bn_groups=8"],  # the `fewshot run --pretrain` setting
}


def last_knn(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    last = [r for r in rows if r.get("knn_acc1")][-1]
    return {"epochs": last["epoch"], "loss": round(last["loss"], 3),
            "knn_acc1": {k: round(v, 1) for k, v in last["knn_acc1"].items()}}


def recorded_minutes(run: Path) -> float | None:
    """The budget a reused run was made with (its config.yaml), so that a short run is not read as a long one."""
    import yaml

    try:
        return float(yaml.safe_load((run / "config.yaml").read_text())["train"]["budget_minutes"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def raw_pixel_knn(data: str, size: int = 32) -> dict:
    """The monitor's kNN (train split as memory, val scored) on mean-centred grey pixels at ``size``."""
    import numpy as np
    import torch
    from PIL import Image

    from fewshot.data.layout import scan_root
    from fewshot.ssl.knn import knn_accuracy

    def pixels(items) -> torch.Tensor:
        x = torch.stack([torch.from_numpy(np.asarray(Image.open(path).convert("L").resize((size, size), Image.BILINEAR),
                                                     dtype=np.float32).reshape(-1)) for path, _ in items])
        return x - x.mean(1, keepdim=True)

    out = {}
    for info in scan_root(data, None, splits=("train", "val")):
        labels = {split: torch.tensor([c for _, c in getattr(info, split)]) for split in ("train", "val")}
        out[info.name] = round(knn_accuracy(pixels(info.train), labels["train"], pixels(info.val), labels["val"],
                                            len(info.classes)), 1)
    out["mean"] = round(sum(out.values()) / len(out), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="demo_data")
    ap.add_argument("--out", type=Path, default=Path("runs/knnabl"))
    ap.add_argument("--minutes", type=float, default=1.5)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/moco_recipe_knn_90s.json"))
    args = ap.parse_args()
    if args.minutes <= 0:
        ap.error("--minutes must be above 0")
    for name in args.variants:  # before any work: a 0.1-minute run was reused and recorded as --minutes 5
        run = args.out / name
        if (run / "log.jsonl").is_file() and recorded_minutes(run) != args.minutes:
            ap.error(f"{run} holds a run of train.budget_minutes={recorded_minutes(run)}, not --minutes "
                     f"{args.minutes}: delete it or give another --out")
    raw = raw_pixel_knn(args.data)
    print(f"{'raw pixels':14s}                          kNN {raw}", flush=True)
    results = {}
    for name in args.variants:
        run = args.out / name
        if not (run / "log.jsonl").is_file():
            cmd = [sys.executable, "-m", "fewshot", "pretrain", "--data", args.data, "--out", str(run), *COMMON,
                   f"train.budget_minutes={args.minutes}", *VARIANTS[name]]
            subprocess.run(cmd, check=True, capture_output=True)
        results[name] = {"args": VARIANTS[name], **last_knn(run)}
        r = results[name]
        print(f"{name:14s} epochs {r['epochs']:3d}  loss {r['loss']:.3f}  kNN {r['knn_acc1']}", flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"minutes": args.minutes, "common": COMMON, "raw_pixels": raw, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
