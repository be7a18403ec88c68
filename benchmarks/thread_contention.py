"""Training steps per second on 2 threads (spinning or passive OpenMP waits) and on 1, alone, beside a one-core
busy loop and two processes at once: why `train.adapt_threads` exists (docs/performance.md, "Shared cores").

A plain timm resnet18 training loop (32 px, batch 64, SGD) after `import fewshot` (its OpenMP and allocator
settings), each figure from its own process timed for --seconds.

    .venv/bin/python benchmarks/thread_contention.py --seconds 20 --results benchmarks/results/thread_contention.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def loop(threads: int, seconds: float) -> None:
    """One process's figure, printed as JSON."""
    import fewshot  # noqa: F401  (its OpenMP wait policy precedes torch)
    import timm
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    print(json.dumps({"steps_per_s": n / (time.perf_counter() - t0)}), flush=True)


def figure(arm: tuple[int, str], where: str, seconds: float) -> list[float]:
    threads, wait = arm
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if wait == "passive":
        env["FEWSHOT_OMP_WAIT"] = "passive"
    cmd = [sys.executable, __file__, "--loop", str(threads), "--seconds", str(seconds)]
    hog = None
    if where == "hog":
        hog = subprocess.Popen([sys.executable, "-c", f"import time\nt = time.time()\nwhile time.time() - t < "
                                f"{seconds + 30}: pass\n"])
        time.sleep(1.0)
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2 if where == "pair" else 1)]
    outs = [p.communicate()[0] for p in procs]
    if hog is not None:
        hog.kill()
        hog.wait()
    return [json.loads(o.strip().splitlines()[-1])["steps_per_s"] for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--loop", type=int, help=argparse.SUPPRESS)  # one process's figure (internal)
    ap.add_argument("--results", help="JSON file for the figures")
    a = ap.parse_args()
    if a.loop:
        loop(a.loop, a.seconds)
        return
    arms = [(2, "spin"), (2, "passive"), (1, "spin")]
    table = {}
    for where in ("alone", "hog", "pair"):
        for arm in arms:
            speeds = figure(arm, where, a.seconds)
            table[f"{where} threads={arm[0]} wait={arm[1]}"] = speeds
            print(f"{where:5s} threads={arm[0]} wait={arm[1]:7s}: {', '.join(f'{s:.2f}' for s in speeds)} steps/s",
                  flush=True)
    if a.results:
        Path(a.results).parent.mkdir(parents=True, exist_ok=True)
        Path(a.results).write_text(json.dumps({"seconds": a.seconds, "steps_per_s": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
