"""A/B of the augmentation's fast op forms (fewshot.data.augment.set_fast_path) on MoCoTask.make_batch.

Why: the end-to-end MoCo rate loses to the step what make_batch costs; this times make_batch alone as the
pretrain path runs it (two views of a batch gathered from a uint8 pool, CPU, fewshot's thread settings),
fast and plain interleaved in one process (pairs), and checks that both give the same views.

    .venv/bin/python benchmarks/augment_ab.py --img-size 64 --batch-size 64 --pairs 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pool", type=int, default=3000, help="images in the random uint8 pool")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--batches", type=int, default=20, help="make_batch calls timed per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, for a busy shared machine (meaningful with --threads 1)")
    ap.add_argument("--out", help="JSON file for the results")
    a = ap.parse_args()

    import fewshot  # noqa: F401  (its OpenMP settings precede torch)
    import torch

    from fewshot.data import augment
    from fewshot.data.augment import BatchAugment, preset
    from fewshot.runtime import configure_cpu
    from fewshot.ssl.pretrain import MoCoTask
    from fewshot.train.distributed import DistContext

    configure_cpu(a.threads)
    task = MoCoTask.__new__(MoCoTask)  # make_batch reads only these attributes
    task.cfg, task.device, task.ctx = {"train": {"seed": 0}}, torch.device("cpu"), DistContext()
    task.channels_last = False
    task.augment = BatchAugment(preset("mocov2", a.img_size))
    task.pool = torch.randint(0, 256, (a.pool, 3, a.img_size, a.img_size), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0))
    batches = [torch.randperm(a.pool, generator=torch.Generator().manual_seed(s))[:a.batch_size]
               for s in range(a.batches)]

    clock = time.process_time if a.clock == "cpu" else time.perf_counter

    def run(fast: bool) -> float:
        augment.set_fast_path(fast)
        task.make_batch(batches[0], 0, 0)  # warm-up
        t0 = clock()
        for s, idx in enumerate(batches):
            task.make_batch(idx, 0, s)
        return (clock() - t0) / len(batches) * 1e3

    # same views: fast against plain on every timed batch
    diff = 0.0
    for s, idx in enumerate(batches):
        augment.set_fast_path(True)
        q1, k1, _ = task.make_batch(idx, 0, s)
        augment.set_fast_path(False)
        q0, k0, _ = task.make_batch(idx, 0, s)
        diff = max(diff, float((q1 - q0).abs().max()), float((k1 - k0).abs().max()))
    rows = []
    for i in range(a.pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        ms = {fast: run(fast) for fast in order}
        rows.append({"fast_ms": ms[True], "plain_ms": ms[False], "ratio": ms[False] / ms[True]})
        print(f"pair {i}: fast {ms[True]:.1f} ms, plain {ms[False]:.1f} ms, {ms[False] / ms[True]:.2f}x", flush=True)
    augment.set_fast_path(True)
    ratios = [r["ratio"] for r in rows]
    summary = {"img_size": a.img_size, "batch_size": a.batch_size, "threads": a.threads, "clock": a.clock,
               "fast_ms": statistics.median(r["fast_ms"] for r in rows),
               "plain_ms": statistics.median(r["plain_ms"] for r in rows),
               "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
               "max_abs_diff": diff, "loadavg": os.getloadavg(), "pairs": rows}
    print(f"make_batch (2 views) fast {summary['fast_ms']:.1f} ms, plain {summary['plain_ms']:.1f} ms: "
          f"{summary['ratio_median']:.2f}x ({min(ratios):.2f}..{max(ratios):.2f}), max |fast - plain| {diff:.2e}, "
          f"load {summary['loadavg'][0]:.2f}")
    if a.out:
        with open(a.out + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
