"""bf16 autocast on the CPU: does this CPU compute bf16 natively, and what does it buy per training step?

On CPUs with AVX512-BF16 or AMX (AMD Zen 4, Intel Sapphire Rapids and later) oneDNN runs bf16
convolutions natively; on AVX2-only CPUs bf16 is emulated and no faster. Times a supervised resnet18
step (forward, backward, SGD) in fp32 and under `torch.autocast("cpu", torch.bfloat16)`, alternating,
and prints the median of the per-pair speed-ups. `fewshot train/run train.amp=bf16` is the same
autocast; `train.amp=auto` uses it on such CPUs from 48 px (24 px with `model.small_stem`), the sizes at
which this script measured a gain (docs/performance.md).

    .venv/bin/python benchmarks/cpu_bf16.py --results benchmarks/results/cpu_bf16.json
    .venv/bin/python benchmarks/cpu_bf16.py --small-stem --width 0.5 --sizes 32 --batch 64 256   # fewshot's small-image network
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import timm
import torch


def time_steps(img: int, batch: int, pairs: int, steps: int, small_stem: bool = False, width: float = 1.0) -> dict:
    if small_stem or width != 1.0:  # fewshot's small-image ResNet (model.small_stem / model.width)
        from fewshot.models.backbone import create_backbone

        backbone = create_backbone("resnet18", img_size=img, width=width, small_stem=small_stem)
        model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, 20))
    else:
        model = timm.create_model("resnet18", num_classes=20)
    x, y = torch.randn(batch, 3, img, img), torch.randint(0, 20, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for bf16 in (False, True):  # warm-up: oneDNN picks and caches its kernels
        for _ in range(3):
            step(bf16)
    ms = {False: [], True: []}
    for pair in range(pairs):
        for bf16 in ((False, True) if pair % 2 == 0 else (True, False)):  # alternate who goes first: load drifts
            t0 = time.perf_counter()
            for _ in range(steps):
                step(bf16)
            ms[bf16].append(1000 * (time.perf_counter() - t0) / steps)
    ratios = sorted(a / b for a, b in zip(ms[False], ms[True]))
    med = statistics.median
    return {"img": img, "batch": batch, "small_stem": small_stem, "width": width, "fp32_ms": med(ms[False]), "bf16_ms": med(ms[True]),
            "speedup_median": med(ratios), "speedup_min": ratios[0], "speedup_max": ratios[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--batch", type=int, nargs="+", default=[64])
    ap.add_argument("--small-stem", action="store_true", help="fewshot's stride-1 stem (model.small_stem)")
    ap.add_argument("--width", type=float, default=1.0, help="stage width multiplier (model.width)")
    ap.add_argument("--results", help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from fewshot.runtime import bf16_conv_speedup, cpu_computes_bf16

    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # also True on AVX-512 without bf16 arithmetic
    auto = cpu_computes_bf16()  # what train.amp=auto goes by: AMX, or AVX512-BF16 and a probe that finds it faster
    probe = bf16_conv_speedup()
    print(f"bf16 on this CPU: oneDNN supports it {native}; faster than fp32 (train.amp=auto's test) {auto}; "
          f"the test's convolution probe {probe:.2f}x; {args.threads} threads; torch {torch.__version__}")
    rows = []
    net = "resnet18" + (" small stem" if args.small_stem else "") + (f" width {args.width}" if args.width != 1 else "")
    for img, batch in ((i, b) for i in args.sizes for b in args.batch):
        r = time_steps(img, batch, args.pairs, args.steps, args.small_stem, args.width)
        rows.append(r)
        print(f"{net} {img}px batch {batch}: fp32 {r['fp32_ms']:.0f} ms/step, bf16 {r['bf16_ms']:.0f} ms/step, "
              f"speed-up {r['speedup_median']:.2f}x (median of {args.pairs} pairs, "
              f"{r['speedup_min']:.2f}..{r['speedup_max']:.2f})")
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps({"native_bf16": native, "amp_auto_bf16": auto, "probe_speedup": probe, "threads": args.threads,
                                                  "machine": platform.processor() or platform.machine(),
                                                  "torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
