"""Training speed on cores shared with other work: train.adapt_threads auto against false (the fixed count).

Why: with all cores' OpenMP threads, a step waits at every op's barrier for a thread the scheduler took away when
another process runs; the tuner (src/fewshot/train/thread_tuner.py) drops to 1 thread while that is faster.
This runs `fewshot train` for a fixed training time (train.budget_minutes) in three settings, each with the tuner
on and off, alternating within each repeat: alone, beside a one-core Python busy loop, and two runs at once (both
with the same setting). The figure is images trained per second of training; ratios are auto / false, medians
over the repeats.

    .venv/bin/python benchmarks/shared_cores.py --data demo_data --minutes 0.5 --repeats 3 \\
        --results benchmarks/results/shared_cores.json
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

HOG = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"


def train_cmd(data: str, out: Path, minutes: float, setting: str, model: str, size: int) -> list[str]:
    return [sys.executable, "-m", "fewshot", "train", "--data", data, "--out", str(out), "--model", model,
            "--img-size", str(size), "--epochs", "100000", "--batch-size", "64", "--device", "cpu", "--no-progress",
            f"train.budget_minutes={minutes}", "train.eval_every=100000", "train.tensorboard=false",
            f"train.adapt_threads={setting}"]


def images_per_s(run: Path, minutes: float) -> float:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return rows[-1]["step"] * 64 / (minutes * 60)


def measure(where: str, setting: str, a, tmp: Path) -> list[float]:
    """One setting's images per second (two figures for a pair of runs)."""
    outs = [tmp / f"{where}_{setting}_{i}_{time.monotonic_ns()}" for i in range(2 if where == "pair" else 1)]
    hog = None
    if where == "hog":
        hog = subprocess.Popen([sys.executable, "-c", HOG.format(s=a.minutes * 60 + 60)])
        time.sleep(1.0)
    procs = [subprocess.Popen(train_cmd(a.data, out, a.minutes, setting, a.model, a.img_size),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for out in outs]
    try:
        for p in procs:
            text = p.communicate()[0]
            if p.returncode != 0:
                raise SystemExit(f"fewshot train failed ({p.returncode}):\n{text[-2000:]}")
            for line in text.splitlines():
                if "threads" in line and line.startswith("note:"):
                    print(f"    {where}/{setting}: {line[:140]}", flush=True)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    speeds = [images_per_s(out, a.minutes) for out in outs]
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    return speeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="demo_data")
    ap.add_argument("--minutes", type=float, default=0.5, help="training time of each run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--where", nargs="+", default=["alone", "hog", "pair"], choices=["alone", "hog", "pair"])
    ap.add_argument("--results", help="JSON file for the figures")
    a = ap.parse_args()
    figures: dict = {w: {"auto": [], "false": []} for w in a.where}
    with tempfile.TemporaryDirectory(prefix="shared_cores_") as tmp:
        for r in range(a.repeats):
            for where in a.where:
                order = ("auto", "false") if r % 2 == 0 else ("false", "auto")
                for setting in order:
                    speeds = measure(where, setting, a, Path(tmp))
                    figures[where][setting] += speeds
                    print(f"repeat {r + 1} {where:5s} adapt_threads={setting:5s}: "
                          f"{', '.join(f'{s:.0f}' for s in speeds)} img/s", flush=True)
    summary = {}
    for where, by in figures.items():
        auto, fixed = statistics.median(by["auto"]), statistics.median(by["false"])
        summary[where] = {"auto_img_s": auto, "false_img_s": fixed, "ratio": auto / fixed, "runs": by}
        print(f"{where:5s}: auto {auto:.0f} img/s, false {fixed:.0f} img/s: {auto / fixed:.2f}x (medians)")
    if a.results:
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)
        Path(a.results).write_text(json.dumps({"args": vars(a), "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
