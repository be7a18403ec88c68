"""Numerical faults: a non-finite loss stops the run with a clear message and leaves the last good
checkpoint intact; with --skip-nonfinite N up to N bad steps are skipped without a trace (weights,
optimizer, BatchNorm statistics, MoCo queue and key encoder all as before the bad batch).

(The MoCo module's own guard, non-finite keys never entering the queue, is tested in
test_moco_module.py; here the engine's handling of a whole bad step is.)
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import pytest
import torch

from fewshot.cli import main
from fewshot.ssl.pretrain import MoCoTask, run_pretrain
from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.engine import NonFiniteLossError
from fewshot.train.finetune import run_finetune
from fewshot.train.supervised import SupervisedTask
from helpers.tiny import build_digits, finetune_cfg, pretrain_cfg

# 40 train images, batch 8: 5 steps per epoch; 2 epochs; a checkpoint after every step.
FT = {"model.img_size": 16, "train.save_every_steps": 1, "train.epochs": 2}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("nonfinite-data"))


def nan_loss_at(monkeypatch, task_cls, calls: set[int], seen: dict) -> None:
    """training_step returns a NaN loss on the given (1-based) calls; `seen[k]` = the model state just
    before call k (what the last good checkpoint must hold)."""
    orig = task_cls.training_step
    count = {"n": 0}

    def step(self, model, batch):
        count["n"] += 1
        if count["n"] in calls:
            seen[count["n"]] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        loss, metrics, n = orig(self, model, batch)
        if count["n"] in calls:
            loss = loss * float("nan")
        return loss, metrics, n

    monkeypatch.setattr(task_cls, "training_step", step)


def nan_batch_at(monkeypatch, task_cls, steps: set[tuple[int, int]]) -> None:
    """make_batch fills the images of the given (epoch, step) batches with NaN: the forward pass then
    pushes NaN into BatchNorm running statistics (and, for MoCo, the key encoder's)."""
    orig = task_cls.make_batch

    def make_batch(self, idx, epoch, step):
        batch = orig(self, idx, epoch, step)
        if (epoch, step) in steps:
            batch = tuple(x.clone().fill_(float("nan")) if torch.is_tensor(x) and x.is_floating_point() else x
                          for x in batch)
        return batch

    monkeypatch.setattr(task_cls, "make_batch", make_batch)


def all_finite(obj, path="") -> list[str]:
    if torch.is_tensor(obj):
        return [] if not obj.is_floating_point() or bool(torch.isfinite(obj).all()) else [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in all_finite(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in all_finite(v, f"{path}[{i}]")]
    return []


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(root, tmp_path, monkeypatch):
    out, seen = tmp_path / "run", {}
    nan_loss_at(monkeypatch, SupervisedTask, {4}, seen)
    with pytest.raises(NonFiniteLossError) as exc:
        run_finetune(finetune_cfg(root, **FT), out)
    msg = str(exc.value)
    assert "the loss became nan at epoch 1, step 4 (global step 4)" in msg
    assert f"{out / 'checkpoints' / 'last.pt'} (global step 3)" in msg and "train.skip_nonfinite=N" in msg
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (0, 3, 3)
    assert set(ck["model"]) == set(seen[4])
    for k, v in seen[4].items():
        assert torch.equal(ck["model"][k], v), k  # exactly the state before the bad step
    assert all_finite(ck) == []


def test_nan_loss_exits_2_from_the_cli(root, tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, SupervisedTask, {2}, {})
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--model", "test_resnet",
                   "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
                   "--save-every-steps", "1", "train.tensorboard=false", "train.threads=1"])
    assert rc == 2
    text = err.getvalue()
    assert text.startswith("fewshot train: error: the loss became nan at epoch 1, step 2") and "Traceback" not in text
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["global_step"] == 1


def test_skip_nonfinite_skips_nan_batches_without_a_trace(root, tmp_path, monkeypatch):
    """Two NaN batches with --skip-nonfinite 2: the run finishes, nothing non-finite anywhere, and the
    two bad steps are counted; without restoring the state the forward pass changed, the BatchNorm
    running statistics would be NaN from the first bad batch on."""
    nan_batch_at(monkeypatch, SupervisedTask, {(0, 2), (1, 0)})
    out = tmp_path / "run"
    run_finetune(finetune_cfg(root, **FT, **{"train.skip_nonfinite": 2}), out)
    for name in ("last", "best"):
        ck = load_checkpoint(out / "checkpoints" / f"{name}.pt")
        assert all_finite(ck) == [], name
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ck["nonfinite_skipped"] == 2 and ck["global_step"] == 10 and ck["epoch"] == 2
    assert (out / "metrics.json").is_file()
    # and said: they were counted only inside the checkpoint (a run could skip every step and exit 0)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r.get("nonfinite_skipped") for r in rows] == [1, 1]


@pytest.mark.parametrize("save_every_steps", [1, 0])
def test_weights_that_overflow_under_a_finite_loss_are_never_evaluated_or_saved(root, tmp_path, monkeypatch,
                                                                              save_every_steps):
    """--lr 1e9: every loss finite, BatchNorm variances inf; the model was scored at chance, saved as best.pt
    and used by eval, predict and export without a word."""
    orig = SupervisedTask.make_batch

    def make_batch(self, idx, epoch, step):
        if (epoch, step) == (0, 3):  # before the 4th step's forward pass, which keeps its loss finite
            with torch.no_grad():
                next(m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(
                    float("inf"))
        return orig(self, idx, epoch, step)

    monkeypatch.setattr(SupervisedTask, "make_batch", make_batch)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="weights or BatchNorm statistics became inf/NaN in epoch 1"):
        run_finetune(finetune_cfg(root, **{**FT, "train.save_every_steps": save_every_steps}), out)
    assert not (out / "checkpoints" / "best.pt").exists()
    if save_every_steps:  # the last checkpoint before the overflow is kept, and it is finite
        ck = load_checkpoint(out / "checkpoints" / "last.pt")
        assert ck["global_step"] == 3 and all_finite(ck) == []
    else:
        assert not (out / "checkpoints" / "last.pt").exists()


def test_diverged_weights_after_skipped_steps_do_not_claim_the_loss_stayed_finite(root, tmp_path, monkeypatch):
    """A DDP hunt: --lr 1e38 --skip-nonfinite 100 skipped a NaN loss, then the weights overflowed, and the error
    said "although the loss stayed finite"."""
    nan_loss_at(monkeypatch, SupervisedTask, {2}, {})
    orig = SupervisedTask.make_batch

    def make_batch(self, idx, epoch, step):
        if (epoch, step) == (0, 3):
            with torch.no_grad():
                next(m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(
                    float("inf"))
        return orig(self, idx, epoch, step)

    monkeypatch.setattr(SupervisedTask, "make_batch", make_batch)
    with pytest.raises(NonFiniteLossError) as err:
        run_finetune(finetune_cfg(root, **FT, **{"train.skip_nonfinite": 5}), tmp_path / "run")
    assert "in epoch 1 after 1 non-finite loss(es) were skipped" in str(err.value), err.value
    assert "although the loss stayed finite" not in str(err.value)


def test_skip_nonfinite_gives_up_after_n(root, tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, SupervisedTask, {2, 6}, {})
    with pytest.raises(NonFiniteLossError, match="after 2 non-finite loss"):
        run_finetune(finetune_cfg(root, **FT, **{"train.skip_nonfinite": 1}), tmp_path / "run")
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ck["global_step"] == 5 and ck["nonfinite_skipped"] == 1


def test_moco_skip_leaves_queue_and_key_encoder_untouched(root, tmp_path, monkeypatch):
    """A NaN batch in MoCo: the skipped step changes neither the queue (pointer included) nor the key
    encoder (momentum update and BatchNorm statistics) nor anything else."""
    cfg = pretrain_cfg(root, **{"model.img_size": 16, "train.epochs": 1, "train.skip_nonfinite": 1})
    states = {}
    orig_make = MoCoTask.make_batch

    def make_batch(self, idx, epoch, step):
        batch = orig_make(self, idx, epoch, step)
        if step in (3, 4):
            states[step] = copy.deepcopy(self.model.state_dict())  # before the forward of step 3 / step 4
        if step == 3:
            batch = (batch[0].clone().fill_(float("nan")), batch[1].clone().fill_(float("nan")), batch[2])
        return batch

    monkeypatch.setattr(MoCoTask, "make_batch", make_batch)
    out = tmp_path / "pre"
    run_pretrain(cfg, out)
    for k, before in states[3].items():  # step 3 was skipped: step 4 starts from the very same state
        assert torch.equal(states[4][k], before), k
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ck["nonfinite_skipped"] == 1 and all_finite(ck) == []
    assert int(ck["model"]["queue_ptr"]) == (9 * 8) % 52  # 9 enqueued batches of 8, not 10


def test_a_resumed_epoch_counts_the_steps_skipped_before_the_stop(root, tmp_path, monkeypatch):
    """The epoch's count began again at the resume: its log row lost the skips made before the stop."""
    import os
    import signal

    from fewshot.train.stop_signal import StopRequested

    nan_batch_at(monkeypatch, SupervisedTask, {(0, 2), (1, 0)})
    cfg = finetune_cfg(root, **FT, **{"train.skip_nonfinite": 2})
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        orig, count = SupervisedTask.training_step, {"n": 0}

        def step(self, model, batch):
            count["n"] += 1
            if count["n"] == 4:  # epoch 1, step 4: after the skipped step 3
                os.kill(os.getpid(), signal.SIGTERM)
            return orig(self, model, batch)

        mp.setattr(SupervisedTask, "training_step", step)
        with pytest.raises(StopRequested):
            run_finetune(copy.deepcopy(cfg), out)
    run_finetune(copy.deepcopy(cfg), out, resume=True)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r.get("nonfinite_skipped") for r in rows] == [1, 1]  # as the uninterrupted run logs them
