"""Same-process A/B pairs of the 2026-12-05 augmentation change on the bench's fewshot MoCo side (moco_speed.Ours).

Why: on a shared 2-core host other jobs move the machine's speed between runs, so each change is timed against
itself undone in interleaved pairs (on, off, off, on, ...) in one process; the ratio is taken per pair.

* ``--what augment``: fewshot.data.augment.set_fast_path (hue shift, blur, crop grid), the only choice left: the
  ``stem`` and ``both`` runs timed a channels_last ResNet stem that was measured within noise and dropped
  (docs/performance.md, "The data path and the stem on the AMX host"); their result JSONs stay as the record.
* ``--mode step``: the fixed views (step only: the augmentation never runs, so both sides do the same work, a
  null control); ``e2e``: MoCoTask.make_batch from a uint8 pool in memory (the decoded cache; PNG decoding
  happens once and is excluded as in moco_speed.py) + the step.
* ``--clock cpu``: process CPU time instead of wall time, for a busy host (use with ``--threads 1``).

    .venv/bin/python benchmarks/moco_ab.py --what augment --mode e2e --img-size 64 --batch-size 64 --pairs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--what", choices=["augment"], default="augment")
    ap.add_argument("--mode", choices=["step", "e2e"], default="e2e")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run (after one untimed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--out", help="JSON file for the results")
    a = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import moco_speed

    ours = moco_speed.Ours({"threads": a.threads, "device": "cpu", "img": a.img_size, "batch": a.batch_size})
    from fewshot.data import augment

    if a.mode == "e2e":
        ours.setup_pool(3000)
    once = ours.e2e_once if a.mode == "e2e" else ours.step_once
    clock = time.process_time if a.clock == "cpu" else time.perf_counter

    def run(on: bool) -> float:
        augment.set_fast_path(on)
        once()
        t0 = clock()
        for _ in range(a.steps):
            once()
        return a.batch_size * a.steps / (clock() - t0)

    rows = []
    for i in range(a.pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        rate = {on: run(on) for on in order}
        rows.append({"on": rate[True], "off": rate[False], "ratio": rate[True] / rate[False],
                     "load1": os.getloadavg()[0]})
        print(f"pair {i}: on {rate[True]:.1f} img/s, off {rate[False]:.1f} img/s, {rows[-1]['ratio']:.3f}x, "
              f"load {rows[-1]['load1']:.2f}", flush=True)
    ratios = [r["ratio"] for r in rows]
    summary = {**vars(a), "amp": str(ours.amp), "on": statistics.median(r["on"] for r in rows),
               "off": statistics.median(r["off"] for r in rows), "ratio_median": statistics.median(ratios),
               "ratio_min": min(ratios), "ratio_max": max(ratios), "pairs_rows": rows}
    print(f"{a.what} {a.mode} {a.img_size} px b{a.batch_size} ({summary['amp']}, {a.threads} thread(s), {a.clock} "
          f"clock): on {summary['on']:.1f} img/s, off {summary['off']:.1f}: {summary['ratio_median']:.3f}x "
          f"({min(ratios):.3f}..{max(ratios):.3f})")
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
