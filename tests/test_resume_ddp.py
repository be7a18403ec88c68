"""--resume under torchrun: ranks that do not see the same run folder (multi-node, node-local disks), and a budget
stop inside an epoch, whose log row must come out as the uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from fewshot.run_lock import release_all
from fewshot.train.finetune import run_finetune
from helpers.forked_torchrun import forked_torchrun
from helpers.tiny import build_digits, dist_env, finetune_cfg, free_port, torchrun_cmd

WORKER = Path(__file__).parent / "helpers" / "rank_out_worker.py"


def torchrun(cmd: list[str], cwd: Path) -> tuple[int, str]:
    """(exit status, stdout + stderr); a hang (ranks out of step) fails the test and leaves no rank behind."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=dist_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun hung (ranks out of step):\n{out[-6000:]}")
    return proc.returncode, out


def test_ranks_that_see_different_checkpoints_refuse_to_resume_together(tmp_path):
    """Each rank read last.pt from its own --out: a rank that saw none started from scratch while rank 0
    resumed, and their collectives met out of step (gloo: "collective mismatch"; nccl: a hang). Now every
    rank stops with the same clear error, and the run is left as it was."""
    root = build_digits(tmp_path / "data")
    run0 = tmp_path / "run0"  # rank 0's node holds the run; rank 1's disk has no run1 at all
    run_finetune(finetune_cfg(root, **{"train.epochs": 1}), run0)
    release_all()  # the torchrun ranks are other processes: this one's lock on run0 would refuse them
    last = run0 / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=True)
    ck["world"] = 2  # as a 2-process run wrote it (so that the process-count check lets it through)
    torch.save(ck, last)
    log = (run0 / "log.jsonl").read_text()
    args = ["train", "--data", str(root), "--out", str(tmp_path / "run{rank}"), "--model", "test_resnet",
            "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--no-progress",
            "train.tensorboard=false", "train.threads=1", "--resume"]
    for attempt in range(2):  # a port taken between free_port() and bind: retry once
        rc, text = torchrun(torchrun_cmd(2, free_port(), str(WORKER), *args), tmp_path)
        if "address already in use" not in text.lower():
            break
    assert rc != 0
    said = "(rank 0: last.pt at global step 5; rank 1: no last.pt). --out must be a folder on storage that every node"
    assert text.count(said) == 1, text[-6000:]  # the first process of the node says why (cli_ranks._quiet_rank)
    assert "rank 0 exit status 2" in text and "rank 1 exit status 2" in text, text[-6000:]  # none waits in a collective
    assert "mismatch" not in text.lower(), text[-6000:]
    assert (run0 / "log.jsonl").read_text() == log
    assert torch.load(last, weights_only=True)["global_step"] == 5


def test_a_budget_stop_inside_an_epoch_keeps_every_ranks_running_sums(tmp_path):
    """A budget stop part-way through an epoch wrote its last.pt without every rank's running sums (a signal's stop
    and --save-every-steps carried them): the resumed epoch's log row averaged rank 0's partial sums on both ranks
    (loss 3.0585, train_acc1 13.28 against the uninterrupted run's 3.0722, 13.67), though the weights were right.
    That a last.pt with every rank's sums resumes to the uninterrupted rows is test_ddp's SIGTERM test: one launch
    here, not three."""
    root = build_digits(tmp_path / "data")
    args = ["train", "--data", str(root), "--model", "test_resnet", "--img-size", "32", "--epochs", "2",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.threads=1",
            "train.deterministic=true", "train.budget_minutes=5"]
    run = tmp_path / "run"
    # rank 1 alone finds the time up after its second step: the ranks agree, and stop at epoch 1, step 2 of 3
    codes, text = forked_torchrun(Path(__file__).parent / "helpers" / "budget_worker.py",
                                  ["1", "2", *args, "--out", run], tmp_path)  # forked ranks: the launch is no subject
    assert codes == [0, 0] and text.count("is used up") == 1, text[-6000:]
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"]) == (0, 2), (ck["epoch"], ck["step_in_epoch"])
    assert len(ck["epoch_sums_by_rank"]) == 2 and ck["epoch_sums_by_rank"][0] != ck["epoch_sums_by_rank"][1]
