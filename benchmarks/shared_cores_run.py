"""Whole `fewshot run`s on cores shared with a one-core busy loop: train.adapt_threads variants side by side.

Why: benchmarks/shared_cores.py times one training stage; a `fewshot run` has several (round 1, the pool's
labelling, round 2, the closing predictions), and what the tuner learned in one stage decides how the next is timed
and planned. This runs the same `fewshot run` beside a busy loop (started before it, stopped after it) once per
variant, alternating within each repeat, and reports per variant the epochs of each stage, the wall time against
the budget and the test mean acc@1 (medians over repeats). A variant is `NAME=SETTING` (train.adapt_threads) or
`NAME=SETTING@SRC` to run another source tree (e.g. a clone at an older commit) through PYTHONPATH.

    .venv/bin/python benchmarks/shared_cores_run.py --data demo_data --minutes 1 --repeats 2 \\
        --variants auto=auto false=false --results benchmarks/results/shared_cores_run.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOG = "while True: pass\n"


def run_once(data: str, out: Path, minutes: float, setting: str, src: str | None, seed: int) -> dict:
    """One `fewshot run` beside a busy loop; its figures from summary.json and the wall clock."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve() / "src")
    hog = subprocess.Popen([sys.executable, "-c", HOG])
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "fewshot", "run", "--data", data, "--out", str(out),
                               "--budget-minutes", str(minutes), "--seed", str(seed), "--device", "cpu",
                               "--no-progress", "run.report=false", f"train.adapt_threads={setting}"],
                              env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
    finally:
        hog.kill()
        hog.wait()
    if proc.returncode != 0:  # e.g. a budget refused at start-up on an oversubscribed machine: counted, not fatal
        return {"wall_s": round(wall, 1), "failed": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr else "",
                "epochs": {}, "test_mean": None, "thread_notes": []}
    summary = json.loads((out / "summary.json").read_text())
    stages = {k: v.get("epochs") for k, v in summary["stages"].items()}
    notes = [line for line in proc.stdout.splitlines() if "threads" in line and line.startswith("note:")]
    return {"wall_s": round(wall, 1), "epochs": stages, "test_mean": summary["metrics"]["test"]["mean_acc1"],
            "thread_notes": notes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="demo_data")
    ap.add_argument("--minutes", type=float, default=1.0, help="the budget of each run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=["auto=auto", "false=false"],
                    help="NAME=SETTING or NAME=SETTING@SRC (another source tree)")
    ap.add_argument("--results", help="JSON file for the figures")
    args = ap.parse_args()
    variants = {}
    for v in args.variants:
        name, _, rest = v.partition("=")
        setting, _, src = rest.partition("@")
        variants[name] = (setting, src or None)
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    work = Path(tempfile.mkdtemp(prefix="shared_cores_run_"))
    try:
        for rep in range(args.repeats):
            for name, (setting, src) in variants.items():
                r = run_once(args.data, work / f"{name}_{rep}", args.minutes, setting, src, args.seed)
                rows[name].append(r)
                print(f"[{rep}] {name}: {r.get('failed') or r['epochs']} wall {r['wall_s']} s, "
                      f"test mean {r['test_mean']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n`fewshot run --budget-minutes {args.minutes:g}` beside a one-core busy loop, medians of the runs that "
          f"finished (a round a run skipped counts 0 epochs):")
    stages = ["finetune_labelled", "finetune"]
    print("| variant | finished | " + " | ".join(f"{s} epochs" for s in stages) + " | wall (s) | test mean |")
    print("|---" * (len(stages) + 4) + "|")
    summary = {}
    for name, rs in rows.items():
        done = [r for r in rs if r["test_mean"] is not None] or [{"epochs": {}, "wall_s": 0.0, "test_mean": 0.0}]
        med = {s: statistics.median([r["epochs"].get(s) or 0 for r in done]) for s in stages}
        wall = statistics.median([r["wall_s"] for r in done])
        test = statistics.median([r["test_mean"] for r in done])
        finished = sum(r["test_mean"] is not None for r in rs)
        summary[name] = {"finished": finished, "median_epochs": med, "median_wall_s": wall, "median_test_mean": test}
        print(f"| {name} | {finished}/{len(rs)} | " + " | ".join(f"{med[s]:.1f}" for s in stages)
              + f" | {wall:.0f} | {test:.2f} |")
    if args.results:
        Path(args.results).write_text(json.dumps({"minutes": args.minutes, "seed": args.seed,
                                                  "variants": {k: list(v) for k, v in variants.items()},
                                                  "runs": rows, "medians": summary}, indent=1))


if __name__ == "__main__":
    main()
