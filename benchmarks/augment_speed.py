"""Images/s of fewshot's BatchAugment vs the equivalent per-image torchvision v2 pipeline on PIL.

MoCo v2 "aug-plus" both ways: RandomResizedCrop(0.2-1), ColorJitter(0.4,0.4,0.4,0.1) p=0.8,
RandomGrayscale 0.2, GaussianBlur(sigma 0.1-2) p=0.5, flip, to float, Normalize. The PIL pipeline
runs image by image in this process then stacks the batch (what one DataLoader worker does);
BatchAugment takes the cached uint8 batch [B,3,H,W]. Inputs are cached at the output size.

    python benchmarks/augment_speed.py [--runs 5] [--device cpu|cuda] [--threads 2]

Prints a table and writes benchmarks/results/augment_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision
import torchvision.transforms.v2 as T
from PIL import Image

from fewshot.data.augment import BatchAugment, preset


def torchvision_pipeline(cfg) -> T.Compose:
    """The per-image torchvision v2 equivalent of `cfg` (MoCo v2 aug-plus)."""
    k = cfg.blur_kernel
    return T.Compose(
        [
            T.RandomResizedCrop(cfg.out_size, scale=cfg.scale, ratio=cfg.ratio, antialias=True),
            T.RandomApply([T.ColorJitter(*cfg.jitter)], p=cfg.jitter_p),
            T.RandomGrayscale(p=cfg.gray_p),
            T.RandomApply([T.GaussianBlur(k, sigma=cfg.blur_sigma)], p=cfg.blur_p),
            T.RandomHorizontalFlip(p=cfg.flip_p),
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(cfg.mean, cfg.std),
        ]
    )


def time_runs(fn, runs: int, sync) -> list[float]:
    """Seconds per call, after one warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def positive_list(ap, flag: str, text: str) -> list[int]:
    """"64,32" -> [64, 32]; "32," or "x" is an argparse error, not a traceback."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        ap.error(f"{flag} {text!r}: expected whole numbers above 0 separated by commas, e.g. 64,32")
    return [int(p) for p in parts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="64,32")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "augment_speed.json"))
    args = ap.parse_args()
    sizes, batches = positive_list(ap, "--sizes", args.sizes), positive_list(ap, "--batches", args.batches)
    if args.runs < 1 or args.threads < 1:
        ap.error("--runs and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    rows = []
    for size in sizes:
        cfg = preset("mocov2", size)
        aug, tv = BatchAugment(cfg), torchvision_pipeline(cfg)
        for batch in batches:
            g = torch.Generator().manual_seed(0)
            x = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
            pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in x]
            xd, g = x.to(device), torch.Generator().manual_seed(0)
            ours = time_runs(lambda: aug(xd, g), args.runs, sync)
            torch.manual_seed(0)
            theirs = time_runs(lambda: torch.stack([tv(im) for im in pil]), max(3, args.runs // 2), lambda: None)
            row = {
                "out_size": size,
                "batch": batch,
                "batch_augment_img_per_s": batch / statistics.median(ours),
                "torchvision_pil_img_per_s": batch / statistics.median(theirs),
                "batch_augment_s": ours,
                "torchvision_pil_s": theirs,
            }
            row["speedup"] = row["batch_augment_img_per_s"] / row["torchvision_pil_img_per_s"]
            rows.append(row)

    print(f"MoCo v2 aug-plus, {args.threads} threads, BatchAugment on {device}, median of runs (images/s)")
    print(f"{'size':>5} {'batch':>6} {'BatchAugment':>13} {'torchvision/PIL':>16} {'speedup':>8}")
    for r in rows:
        print(
            f"{r['out_size']:>5} {r['batch']:>6} {r['batch_augment_img_per_s']:>13.0f} "
            f"{r['torchvision_pil_img_per_s']:>16.0f} {r['speedup']:>7.1f}x"
        )
    meta = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "processor": platform.processor() or platform.machine(),
        "runs": args.runs,
        "loadavg_1min_at_end": os.getloadavg()[0],  # other processes skew timings on a small box
        "input": "uint8 cached at the output size; torchvision pipeline on PIL images, one process",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
