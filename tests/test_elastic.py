"""Distributed faults: under torchrun elastic (`--max-restarts=1`, c10d rendezvous, gloo on CPU) one of
two workers is SIGKILLed in the middle of an epoch; torchrun restarts the group, which resumes from
checkpoints/last.pt (`--resume`, a checkpoint after every step) and finishes with exit status 0.

Rank 1 kills itself with SIGKILL when it builds the batch of epoch 2, step 3 on the first attempt only
(tests/helpers/faults.py, FEWSHOT_FAULT_DIE_AT, read outside src/: TORCHELASTIC_RESTART_COUNT 0).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from fewshot.train.checkpoint import load_checkpoint
from helpers.tiny import build_digits, dist_env, free_port


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("elastic-data"))


def test_killed_worker_restarts_the_group_from_last_checkpoint(root, tmp_path):
    run, note = tmp_path / "run", tmp_path / "kills.txt"
    env = dist_env()
    env.update({"FEWSHOT_FAULT_DIE_AT": "1:1:2", "FEWSHOT_FAULT_NOTE": str(note)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--max-restarts=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--monitor-interval=0.2",
           "-m", "helpers.faults", "train", "--data", str(root), "--out", str(run), "--model", "test_resnet",
           "--img-size", "16", "--batch-size", "4", "--epochs", "2", "--device", "cpu", "--no-progress",
           "--resume", "train.deterministic=true", "train.save_every_steps=1", "train.tensorboard=false",
           "train.threads=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]

    # rank 1 died once, by SIGKILL, and torchrun saw it
    kills = note.read_text().splitlines()
    assert len(kills) == 1 and kills[0].startswith("rank 1 at epoch 1 step 2"), kills
    pid = re.search(r"\(pid (\d+)\)", kills[0]).group(1)
    assert re.search(rf"exitcode: -9\) local_rank: 1 \(pid: {pid}\)", out), out[-5000:]

    # the first attempt started fresh, the restarted one resumed mid-epoch 2 from a per-step checkpoint
    assert out.count("starting fresh") == 1
    resumed = re.findall(r"resuming from \S+last\.pt: epoch (\d+), step (\d+) of 5 \(global step (\d+)\)", out)
    assert len(resumed) == 1, out[-5000:]
    epoch, step, g = map(int, resumed[0])
    # 2 ranks x 4 = 8 per global step: 5 steps per epoch; rank 1 died before step 3 of epoch 2, so last.pt
    # holds global step 7 (or 6 when rank 0 was stopped while writing step 7's checkpoint)
    assert epoch == 2 and g in (6, 7) and step == g - 5

    # finished: one log row per epoch (nothing logged twice), the final checkpoint and metrics
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 5), (2, 10)]
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["global_step"]) == (2, 10)
    assert all(bool(torch.isfinite(v).all()) for v in ck["model"].values() if v.is_floating_point())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["datasets"]["digits"]["n"] == 30
