"""Cost of the small-image ResNet options (`model.small_stem`, `model.width`) at 32 px.

A supervised training step (forward + backward + AdamW) of each variant on the same batch, with
FLOPs per image from torch's FlopCounterMode. Variants run alternately, `--runs` times each, and the
median images/s is reported with each variant's ratio to the plain network.

    .venv/bin/python benchmarks/small_stem_speed.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fewshot.models.backbone import create_backbone
from fewshot.models.tiny_map_conv import plain_convolutions

VARIANTS = {  # name: create_backbone options (and whether the stem max-pool is dropped)
    "plain": dict(),
    "small stem": dict(small_stem=True),
    "small stem, width 0.5": dict(small_stem=True, width=0.5),
    "small stem, width 0.75": dict(small_stem=True, width=0.75),
    "small stem, width 0.5, no max-pool": dict(small_stem=True, width=0.5, no_pool=True),
}


def build(model: str, opts: dict, classes: int) -> nn.Module:
    opts = dict(opts)
    no_pool = opts.pop("no_pool", False)
    backbone = create_backbone(model, **opts)
    if no_pool:
        backbone.maxpool = nn.Identity()
    return nn.Sequential(backbone, nn.Linear(backbone.num_features, classes))


def images_per_s(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results", default=str(Path(__file__).parent / "results" / "small_stem_speed.json"))
    args = ap.parse_args()
    for flag in ("img_size", "batch_size", "steps", "runs"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        ap.error("--warmup must be 0 or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, 10, (args.batch_size,))
    models = {name: build(args.model, opts, 10) for name, opts in VARIANTS.items()}
    rows = {}
    for name, model in models.items():
        with FlopCounterMode(display=False) as fc, plain_convolutions():  # FLOPs as the network defines them
            model(x[:2]).sum().backward()  # 2 images: BatchNorm needs more than one in training mode
        model.zero_grad(set_to_none=True)
        rows[name] = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                      "train_gflop_per_image": fc.get_total_flops() / 2 / 1e9, "images_per_s": []}
    for _ in range(args.runs):  # alternate, so machine noise hits every variant alike
        for name, model in models.items():
            rows[name]["images_per_s"].append(images_per_s(model, x, y, args.steps, args.warmup))
    base = statistics.median(rows["plain"]["images_per_s"])
    print(f"{args.model}, {args.img_size} px, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"median of {args.runs} alternating runs")
    print(f"{'variant':38s} {'params':>8s} {'GFLOP/img':>10s} {'img/s':>8s} {'vs plain':>9s}")
    for name, r in rows.items():
        r["median_images_per_s"] = statistics.median(r["images_per_s"])
        r["ratio_to_plain"] = r["median_images_per_s"] / base
        print(f"{name:38s} {r['params_m']:7.2f}M {r['train_gflop_per_image']:10.3f} "
              f"{r['median_images_per_s']:8.1f} {r['ratio_to_plain']:8.2f}x")
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "img_size": args.img_size, "batch_size": args.batch_size,
                               "threads": torch.get_num_threads(), "runs": args.runs, "variants": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
