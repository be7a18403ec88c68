"""Backbone training-step speed with and without the tiny-map matmuls (models/tiny_map_conv).

What a fine-tuning step costs the backbone: forward + backward of resnet18 (ImageNet stem, so the
last stages see 2x2 / 1x1 maps at 32 px and 2x2 at 64 px), one plain and one fast copy of the same
network, alternating, median of the rounds. MoCo's step is measured by `moco_speed.py --ablation`.

    python benchmarks/tiny_map_speed.py [--rounds 7] [--threads 2] [--cells 32:64:fp32 64:64:bf16 ...]

Prints a table and writes benchmarks/results/tiny_map_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from fewshot.models import tiny_map_conv
from fewshot.models.backbone import create_backbone

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _step(model, x, amp: bool) -> None:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        model(x).float().square().mean().backward()


def measure(img: int, batch: int, amp: bool, rounds: int, steps: int = 2) -> dict:
    torch.manual_seed(0)
    base = create_backbone("resnet18")
    x = torch.randn(batch, 3, img, img)
    times = {"plain": [], "tiny_map": []}
    for _ in range(2):  # warm-up both
        for fast in (False, True):
            old = tiny_map_conv.set_fast_path(fast)
            _step(base, x, amp)
            tiny_map_conv.set_fast_path(old)
    for _ in range(rounds):
        for name, fast in (("plain", False), ("tiny_map", True)):
            old = tiny_map_conv.set_fast_path(fast)
            try:
                t0 = time.perf_counter()
                for _ in range(steps):
                    _step(base, x, amp)
                times[name].append(steps * batch / (time.perf_counter() - t0))
            finally:
                tiny_map_conv.set_fast_path(old)
    ratios = [b / a for a, b in zip(times["plain"], times["tiny_map"])]
    return {"img": img, "batch": batch, "amp": "bf16" if amp else "fp32",
            "plain_img_per_s": statistics.median(times["plain"]),
            "tiny_map_img_per_s": statistics.median(times["tiny_map"]),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "runs": times}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cells", nargs="*", default=["32:64:fp32", "32:256:fp32", "64:64:fp32", "64:64:bf16"],
                    help="img:batch:precision (fp32 or bf16)")
    ap.add_argument("--out", type=Path, default=RESULTS / "tiny_map_speed.json")
    a = ap.parse_args(argv)
    for cell in a.cells:  # checked before any work: "32:8:BF16" measured fp32 without a word
        parts = cell.split(":")
        sizes_ok = len(parts) == 3 and all(p.isdigit() and int(p) > 0 for p in parts[:2])
        if not sizes_ok or parts[2] not in ("fp32", "bf16"):
            ap.error(f"--cells {cell!r}: expected img:batch:precision, e.g. 32:64:fp32 (precision fp32 or bf16)")
    torch.set_num_threads(a.threads)
    rows = []
    print(f"resnet18 forward + backward, {a.threads} threads: plain oneDNN vs tiny-map matmuls, {a.rounds} rounds")
    print(f"{'img':>4} {'batch':>5} {'prec':>5} {'plain img/s':>12} {'tiny-map img/s':>15}  ratio (min..max)")
    for cell in a.cells:
        img, batch, prec = cell.split(":")
        r = measure(int(img), int(batch), prec == "bf16", a.rounds)
        rows.append(r)
        print(f"{r['img']:4d} {r['batch']:5d} {r['amp']:>5} {r['plain_img_per_s']:12.1f} {r['tiny_map_img_per_s']:15.1f}"
              f"  {r['ratio_median']:.2f}x ({r['ratio_min']:.2f}..{r['ratio_max']:.2f})")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "threads": a.threads,
            "rounds": a.rounds, "date": time.strftime("%Y-%m-%d %H:%M")}
    a.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
