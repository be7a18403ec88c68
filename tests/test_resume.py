"""Exact resume: a run killed mid-epoch or at an epoch boundary and resumed with --resume ends
bit-for-bit where the uninterrupted run ends (weights, EMA, optimizer, MoCo queue and pointer,
best checkpoint, metrics.json, log values), for fine-tuning and MoCo pretraining.

The kill is simulated in-process by raising a BaseException from inside the engine: the resumed
run then starts from what is on disk only (a fresh task, model and engine), as a new process would.
"""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from fewshot.ssl.pretrain import MoCoTask, run_pretrain
from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.engine import Engine
from fewshot.train.finetune import run_finetune
from fewshot.train.supervised import SupervisedTask
from helpers.tiny import build_digits, finetune_cfg, pretrain_cfg
from helpers.checks import assert_same, engine_clock

TIMING = {"images_per_s", "epoch_time_s", "eval_time_s"}


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in the code under test can swallow it."""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("data"))


# ------------------------------------------------------------------------------ comparisons


def read_log(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def compare_runs(ref: Path, run: Path, metrics: bool) -> None:
    for name in ("last", "best"):
        a = load_checkpoint(ref / "checkpoints" / f"{name}.pt")
        b = load_checkpoint(run / "checkpoints" / f"{name}.pt")
        for ck in (a, b):  # wall-clock training time: a measurement, like the log's timings (the epoch's too)
            assert isinstance(ck.pop("train_seconds"), float) and isinstance(ck.pop("epoch_seconds"), float)
            ck["config"]["train"].pop("budget_minutes")  # a session's budget (a checkpoint keeps its session's)
        assert_same(a, b, name)
    assert read_log(run) == read_log(ref)
    if metrics:
        assert json.loads((run / "metrics.json").read_text()) == json.loads((ref / "metrics.json").read_text())


# ------------------------------------------------------------------------------ kill points


def in_training_step(monkeypatch, task_cls, call: int, action) -> None:
    """Call ``action()`` inside the `call`-th training step, after its forward pass (which for MoCo already
    moved the key encoder and the queue in memory)."""
    orig = task_cls.training_step
    calls = {"n": 0}

    def step(self, model, batch):
        out = orig(self, model, batch)
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return out

    monkeypatch.setattr(task_cls, "training_step", step)


def kill_in_training_step(monkeypatch, task_cls, call: int) -> None:
    """Die inside the `call`-th step: the step's work must be lost, never half-saved."""

    def die():
        raise Killed(f"killed in step {call}")

    in_training_step(monkeypatch, task_cls, call, die)


def kill_after_epoch_log(monkeypatch, epoch: int) -> None:
    """Raise right after epoch `epoch` was checkpointed and logged (an epoch-boundary kill)."""
    orig = Engine.log

    def log(self, record):
        orig(self, record)
        if record.get("epoch") == epoch:
            raise Killed(f"killed after epoch {epoch}")

    monkeypatch.setattr(Engine, "log", log)


def kill_after_save(monkeypatch, global_step: int) -> None:
    """Raise right after the mid-epoch checkpoint of `global_step` was written."""
    orig = Engine.save

    def save(self, name="last", **kwargs):
        orig(self, name, **kwargs)
        if name == "last" and self.global_step == global_step and self.step_in_epoch > 0:
            raise Killed(f"killed after saving step {global_step}")

    monkeypatch.setattr(Engine, "save", save)


def interrupted(run_fn, cfg, out: Path, monkeypatch, kill) -> Path:
    with monkeypatch.context() as mp:
        kill(mp)
        with pytest.raises(Killed):
            run_fn(copy.deepcopy(cfg), out)
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    run_fn(copy.deepcopy(cfg), out, resume=True)
    return ck


# ------------------------------------------------------------------------------ fine-tuning

# 40 train images, batch 8: 5 steps per epoch, 3 epochs; checkpoints every 2 steps.
FT = dict(**{"train.epochs": 3, "train.save_every_steps": 2})


@pytest.fixture(scope="module")
def ft_ref(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "ref"
    run_finetune(finetune_cfg(root, **FT), out)
    return out


def test_finetune_resume_mid_epoch_between_checkpoints(root, ft_ref, tmp_path, monkeypatch):
    # step 8 (epoch 2, step 3) dies after its forward; the last checkpoint is global step 6.
    out = tmp_path / "run"
    ck = interrupted(run_finetune, finetune_cfg(root, **FT), out, monkeypatch,
                     lambda mp: kill_in_training_step(mp, SupervisedTask, 8))
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 1, 6)
    compare_runs(ft_ref, out, metrics=True)


def test_finetune_cli_resume_mid_epoch(root, ft_ref, tmp_path, monkeypatch):
    """The same through `fewshot train ... --resume` (the saved config.yaml is the base on resume)."""
    from fewshot.cli import main

    out = tmp_path / "run"
    argv = ["train", "--data", str(root), "--out", str(out), "--model", "test_resnet", "--img-size", "32",
            "--epochs", "3", "--batch-size", "8", "--device", "cpu", "--no-progress", "--save-every-steps", "2",
            "train.eval_every=1", "train.tensorboard=false", "train.deterministic=true", "train.threads=1"]
    with monkeypatch.context() as mp:
        kill_in_training_step(mp, SupervisedTask, 12)  # epoch 3, step 2; last checkpoint: global step 10
        with pytest.raises(Killed):
            main(argv)
    assert main(argv) == 2  # without --resume an existing run is refused
    assert main(argv + ["--resume"]) == 0
    compare_runs(ft_ref, out, metrics=True)


def test_finetune_resume_at_epoch_boundary(root, ft_ref, tmp_path, monkeypatch):
    out = tmp_path / "run"
    ck = interrupted(run_finetune, finetune_cfg(root, **FT), out, monkeypatch, lambda mp: kill_after_epoch_log(mp, 2))
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (2, 0, 10)
    compare_runs(ft_ref, out, metrics=True)


def test_resumed_steps_do_not_depend_on_the_saved_global_rng(root, ft_ref, tmp_path):
    """Under torchrun last.pt holds rank 0's global RNG and every rank resumes from it, so drop-path (on by
    default) drew other masks on rank 1 and the resumed run drifted (loss 1.895337 against 1.892274, a DDP hunt).
    The steps' global RNG is a function of (seed, epoch, step, rank) now: a resume from another RNG state, as
    rank 1 gets, continues exactly."""

    flags = {**FT, "model.drop_path": 0.5, "train.epochs": 2}  # one epoch resumed shows it as well as two
    whole = tmp_path / "whole"
    run_finetune(finetune_cfg(root, **flags), whole)
    out = tmp_path / "run"
    run_finetune(finetune_cfg(root, **{**flags, "train.epochs": 1}), out)
    last = out / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=True)
    ck["rng"]["torch"] = torch.Generator().manual_seed(12345).get_state()  # another rank's state
    torch.save(ck, last)
    run_finetune(finetune_cfg(root, **flags), out, resume=True)
    assert_same(load_checkpoint(whole / "checkpoints" / "last.pt")["model"],
                load_checkpoint(last)["model"])


def test_finetune_resume_of_finished_run_is_a_no_op(root, ft_ref, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(ft_ref, out)
    before = load_checkpoint(out / "checkpoints" / "last.pt")
    run_finetune(finetune_cfg(root, **FT), out, resume=True)
    assert_same(before, load_checkpoint(out / "checkpoints" / "last.pt"))
    assert read_log(out) == read_log(ft_ref)


def test_finetune_resume_with_more_epochs_extends_the_schedule(root, ft_ref, tmp_path, capsys):
    """`--resume --epochs 3` on a finished 2-epoch run: the third epoch follows the 3-epoch cosine
    (same lr as the uninterrupted 3-epoch run), not min_lr, which the restored scheduler state pinned.
    The jump of the lr is announced (a long-run hunt saw 1e-5 become 2e-3 in one epoch without a word)."""
    out = tmp_path / "run"
    run_finetune(finetune_cfg(root, **{**FT, "train.epochs": 2}), out)
    capsys.readouterr()
    run_finetune(finetune_cfg(root, **FT), out, resume=True)
    lrs, ref = [r["lr"] for r in read_log(out)], [r["lr"] for r in read_log(ft_ref)]
    assert len(lrs) == 3
    assert lrs[2] == pytest.approx(ref[2], rel=1e-12)
    assert lrs[2] > 2 * finetune_cfg(root)["sched"]["min_lr"]
    note = [line for line in capsys.readouterr().out.splitlines() if "schedule now spans" in line]
    assert len(note) == 1 and "3 epochs instead of 2" in note[0], note
    now, was = (float(note[0].split(word)[1].split()[0].rstrip(").")) for word in ("continues at", "was"))
    assert was == pytest.approx(lrs[1], rel=1e-2) and now > 2 * was, (note, lrs)
    # the same plan again says nothing
    run_finetune(finetune_cfg(root, **FT), out, resume=True)
    assert "schedule now spans" not in capsys.readouterr().out


def test_resume_refuses_settings_that_would_make_another_run_and_leaves_the_run_alone(root, ft_ref, tmp_path):
    """A changed model, batch or seed on --resume used to fail deep in torch (shape mismatch) or silently
    continue as a different run; and the failed attempt rewrote config.yaml, so that every later --resume
    inherited the bad setting. Now they are refused before anything is written; --epochs may change."""
    import shutil

    from helpers.checks import run_main

    out = tmp_path / "run"
    shutil.copytree(ft_ref, out)
    config = (out / "config.yaml").read_text()
    base = ["train", "--data", str(root), "--out", str(out), "--device", "cpu", "--no-progress", "--resume"]
    for extra, field in ((["--model", "resnet18"], "model.name"), (["--batch-size", "4"], "train.batch_size"),
                         (["--img-size", "48"], "model.img_size"), (["--seed", "3"], "train.seed"),
                         (["model.width=0.5"], "model.width"), (["optim.weight_decay=0.1"], "optim.weight_decay")):
        rc, _, err = run_main(*base, *extra)
        assert rc == 2 and field in err and "Traceback" not in err, (extra, err)
        assert (out / "config.yaml").read_text() == config
    # the same value as the run's is no change
    rc, _, err = run_main(*base, "--batch-size", "8", "--model", "test_resnet")
    assert rc == 0, err
    # other data whose classes differ: a clear message naming the class, not a state-dict shape error
    other = tmp_path / "other"
    shutil.copytree(root, other, ignore=shutil.ignore_patterns(".fewshot_cache"))
    for split in ("train", "val"):
        shutil.rmtree(other / "digits" / split / "9")
    rc, _, err = run_main("train", "--data", str(other), "--out", str(out), "--device", "cpu", "--no-progress",
                          "--resume", "--epochs", "4")
    assert rc == 2 and "classes differ" in err and "digits: class(es) 9 in the run, not now" in err, err
    assert "other" not in (out / "config.yaml").read_text()  # the failed attempt left the run's config alone
    rc, _, err = run_main(*base)
    assert rc == 0, err
    # amp may change on resume: an fp32 run's checkpoint holds a disabled scaler's empty state, which an
    # enabled fp16 scaler refused with a traceback
    rc, _, err = run_main(*base, "--epochs", "4", "train.amp=fp16")
    assert rc == 0, err


# ------------------------------------------------------------------------------ MoCo pretraining

# 80 pool images, batch 8: 10 steps per epoch, 2 epochs; K=52 is not a multiple of 8, so the
# queue pointer wraps at different rows every lap.
PT = {"train.epochs": 2, "train.save_every_steps": 3}


@pytest.fixture(scope="module")
def pt_ref(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pt") / "ref"
    run_pretrain(pretrain_cfg(root, **PT), out)
    return out


def test_pretrain_resume_mid_epoch_between_checkpoints(root, pt_ref, tmp_path, monkeypatch):
    out = tmp_path / "run"
    ck = interrupted(run_pretrain, pretrain_cfg(root, **PT), out, monkeypatch,
                     lambda mp: kill_in_training_step(mp, MoCoTask, 15))
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 2, 12)
    compare_runs(pt_ref, out, metrics=False)
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    ref = load_checkpoint(pt_ref / "checkpoints" / "last.pt")
    # the queue and its pointer explicitly (also covered by compare_runs): 20 steps x 8 keys mod 52
    assert int(last["model"]["queue_ptr"]) == int(ref["model"]["queue_ptr"]) == (20 * 8) % 52
    assert torch.equal(last["model"]["queue"], ref["model"]["queue"])
    assert int(last["model"]["queue_filled"]) == 52


def test_pretrain_resume_right_after_a_mid_epoch_checkpoint(root, pt_ref, tmp_path, monkeypatch):
    out = tmp_path / "run"
    ck = interrupted(run_pretrain, pretrain_cfg(root, **PT), out, monkeypatch, lambda mp: kill_after_save(mp, 6))
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (0, 6, 6)
    compare_runs(pt_ref, out, metrics=False)


def test_pretrain_resume_at_epoch_boundary(root, pt_ref, tmp_path, monkeypatch):
    out = tmp_path / "run"
    ck = interrupted(run_pretrain, pretrain_cfg(root, **PT), out, monkeypatch, lambda mp: kill_after_epoch_log(mp, 1))
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 0, 10)
    compare_runs(pt_ref, out, metrics=False)


def test_pretrain_budget_stop_then_resume(root, pt_ref, tmp_path, monkeypatch):
    """train.budget_minutes stops mid-epoch (a clean stop: partial epoch logged and checkpointed);
    resuming without a budget ends with the uninterrupted run's weights, queue and epoch means."""
    import types

    import fewshot.train.engine as engine_mod
    import fewshot.train.stage_cap as stage_cap

    clock = {"t": 0.0}

    def monotonic():  # one "second" per call: fit() reads it once, then once after every step
        clock["t"] += 1.0
        return clock["t"]

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        fake = types.SimpleNamespace(monotonic=monotonic, perf_counter=engine_mod.time.perf_counter)
        mp.setattr(engine_mod, "time", fake)
        mp.setattr(stage_cap, "time", fake)  # the time-based schedule's cap reads the same clock
        run_pretrain(pretrain_cfg(root, **PT, **{"train.budget_minutes": 13.5 / 60}), out)
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 4, 14)
    run_pretrain(pretrain_cfg(root, **PT), out, resume=True)

    a = load_checkpoint(out / "checkpoints" / "last.pt")
    b = load_checkpoint(pt_ref / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "epoch", "step_in_epoch", "global_step", "rng"):
        assert_same(a[key], b[key], key)
    rows, ref = read_log(out), read_log(pt_ref)
    assert rows[0] == ref[0] and rows[-1] == ref[-1]  # whole-epoch means, although epoch 2 ran in two parts
    # the budget stop's partial row of epoch 2 is replaced by the finished epoch's (it stayed: epoch 2 twice)
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in ref]


def test_epoch_end_checkpoints_are_spaced_by_save_interval(root, tmp_path, monkeypatch):
    """last.pt at the end of an epoch only when train.save_interval_s has passed (always at the first and the
    last epoch and with a new best.pt, every epoch with 0); best.pt carries no optimizer state, last.pt does."""
    written = []
    save = Engine.save

    def spy(self, name="last"):
        written.append((name, self.epoch))
        save(self, name)

    monkeypatch.setattr(Engine, "save", spy)
    spaced = {"train.epochs": 4, "train.eval_every": 2, "train.save_interval_s": 3600.0}
    run_finetune(finetune_cfg(root, **spaced), tmp_path / "spaced")
    lasts, bests = [e for n, e in written if n == "last"], [e for n, e in written if n == "best"]
    # the first epoch; every epoch that wrote a new best.pt (evaluated at 2 and 4); the last; not epoch 3
    assert lasts == sorted({1, 4, *bests}) and 3 not in lasts
    written.clear()
    run_finetune(finetune_cfg(root, **{"train.epochs": 3, "train.save_interval_s": 0.0}), tmp_path / "every")
    assert [e for n, e in written if n == "last"] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "every" / "checkpoints" / "best.pt")["optimizer"] is None
    assert load_checkpoint(tmp_path / "every" / "checkpoints" / "last.pt")["optimizer"]["state"]


def test_resume_from_an_older_last_pt_when_epoch_end_saves_were_spaced(root, tmp_path, monkeypatch):
    """With train.save_interval_s, a kill can find last.pt several epochs old while log.jsonl has rows after
    it: resume must redo those epochs exactly and leave one row per epoch (no duplicates, none lost)."""
    spaced = {"train.epochs": 4, "train.eval_every": 4, "train.save_interval_s": 3600.0}
    ref = tmp_path / "ref"
    run_finetune(finetune_cfg(root, **spaced), ref)
    out = tmp_path / "run"
    # 40 images, batch 8: 5 steps per epoch; step 18 is in epoch 4. Only epoch 1 wrote last.pt (the first
    # epoch end always saves; epochs 2 and 3 fell inside the interval and evaluated nothing).
    with monkeypatch.context() as mp:
        kill_in_training_step(mp, SupervisedTask, 18)
        with pytest.raises(Killed):
            run_finetune(finetune_cfg(root, **spaced), out)
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 0, 5)
    assert [r["epoch"] for r in read_log(out)] == [1, 2, 3]  # rows past the checkpoint, to be redone
    with (out / "log.jsonl").open("a") as log:  # rows no fewshot wrote: dropped like a torn line, not a crash
        log.write('{"epoch": 3, "step": "x"}\n{"epoch": 3, "step": null}\n{"epoch": 3, "step": [1]}\n')
    run_finetune(finetune_cfg(root, **spaced), out, resume=True)
    compare_runs(ref, out, metrics=True)
    assert [r["epoch"] for r in read_log(out)] == [1, 2, 3, 4]


# ------------------------------------------------------------------------------ SIGTERM / SIGINT: a clean stop


def signal_in_training_step(monkeypatch, task_cls, call: int, signums=(signal.SIGTERM,)) -> None:
    """Send the signal(s) to this process during the `call`-th training step, as a cluster's scheduler
    (SIGTERM before the kill) or a Ctrl-C (SIGINT) would."""
    in_training_step(monkeypatch, task_cls, call, lambda: [os.kill(os.getpid(), s) for s in signums])


def stopped_by_signal(run_fn, cfg, out: Path, monkeypatch, task_cls, call: int, signums=(signal.SIGTERM,)):
    """Run until the signal(s) in step `call` stop it cleanly; returns (StopRequested, last.pt's contents)."""
    from fewshot.train.stop_signal import StopRequested

    with monkeypatch.context() as mp:
        signal_in_training_step(mp, task_cls, call, signums)
        with pytest.raises(StopRequested) as stop:
            run_fn(copy.deepcopy(cfg), out)
    return stop.value, load_checkpoint(out / "checkpoints" / "last.pt")


def test_sigterm_mid_epoch_finishes_the_step_checkpoints_it_and_resume_equals_the_uninterrupted_run(
        root, ft_ref, tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    # epoch 2, step 2: between the every-2-steps saves
    stop, ck = stopped_by_signal(run_finetune, finetune_cfg(root, **FT), out, monkeypatch, SupervisedTask, 7)
    assert stop.signum == signal.SIGTERM and stop.checkpoint == str(out / "checkpoints" / "last.pt")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers given back
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 2, 7)  # step 7 kept, not lost
    run_finetune(finetune_cfg(root, **FT), out, resume=True)
    compare_runs(ft_ref, out, metrics=True)


def test_sigterm_in_the_last_step_of_an_epoch_stops_at_the_epoch_end(root, ft_ref, tmp_path, monkeypatch):
    out = tmp_path / "run"
    # the last step of epoch 2: the epoch is evaluated and logged first
    _, ck = stopped_by_signal(run_finetune, finetune_cfg(root, **FT), out, monkeypatch, SupervisedTask, 10)
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (2, 0, 10)
    assert [r["epoch"] for r in read_log(out)] == [1, 2]
    run_finetune(finetune_cfg(root, **FT), out, resume=True)
    compare_runs(ft_ref, out, metrics=True)


def test_sigterm_during_moco_keeps_the_queue_of_the_finished_step(root, pt_ref, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _, ck = stopped_by_signal(run_pretrain, pretrain_cfg(root, **PT), out, monkeypatch, MoCoTask, 5)
    assert ck["global_step"] == 5 and int(ck["model"]["queue_ptr"]) == (5 * 8) % 52
    run_pretrain(pretrain_cfg(root, **PT), out, resume=True)
    compare_runs(pt_ref, out, metrics=False)


def test_a_repeated_sigterm_still_stops_cleanly_and_a_signal_in_the_last_step_stops_the_caller(
        root, ft_ref, tmp_path, monkeypatch):
    """SLURM signals every process and torchrun forwards its own copy: two SIGTERMs are one request. And a
    signal in the run's very last step must not be dropped when fit() returns (`fewshot run` would start
    its next stage, which the scheduler then kills without a checkpoint)."""
    out = tmp_path / "run"
    _, ck = stopped_by_signal(run_finetune, finetune_cfg(root, **FT), out, monkeypatch, SupervisedTask, 15,
                              signums=(signal.SIGTERM, signal.SIGTERM))  # 3 epochs x 5 steps: the very last
    assert ck["global_step"] == 15
    assert not (out / "metrics.json").exists()  # the caller stopped too
    run_finetune(finetune_cfg(root, **FT), out, resume=True)  # nothing left to train: writes the results
    compare_runs(ft_ref, out, metrics=True)


def test_an_epoch_end_stop_writes_the_checkpoint_that_save_spacing_skipped(root, tmp_path, monkeypatch):
    spaced = {"train.epochs": 3, "train.save_every_steps": 0, "train.save_interval_s": 3600.0,
              "train.eval_every": 3}  # epoch 2 writes no last.pt of its own
    ref = tmp_path / "ref"
    run_finetune(finetune_cfg(root, **spaced), ref)
    out = tmp_path / "run"  # signalled in the last step of epoch 2
    _, ck = stopped_by_signal(run_finetune, finetune_cfg(root, **spaced), out, monkeypatch, SupervisedTask, 10)
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (2, 0, 10)
    run_finetune(finetune_cfg(root, **spaced), out, resume=True)
    compare_runs(ref, out, metrics=True)


def test_cli_exit_code_and_message_on_sigterm_and_a_second_signal_stops_at_once(root, tmp_path, monkeypatch, capsys):
    from fewshot.cli import main

    argv = ["train", "--data", str(root), "--model", "test_resnet", "--img-size", "32", "--epochs", "3",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.threads=1"]
    with monkeypatch.context() as mp:
        signal_in_training_step(mp, SupervisedTask, 3)
        assert main(argv + ["--out", str(tmp_path / "a")]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "SIGTERM" in err and str(tmp_path / "a" / "checkpoints" / "last.pt") in err and "--resume" in err
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["global_step"] == 3
    # Ctrl-C twice: the second one does not wait for the step's checkpoint
    import fewshot.train.stop_signal as stop_signal

    with monkeypatch.context() as mp:
        mp.setattr(stop_signal, "REPEAT_WINDOW_S", -1.0)  # as if the second came a while after the first
        signal_in_training_step(mp, SupervisedTask, 3, signums=(signal.SIGINT, signal.SIGINT))
        assert main(argv + ["--out", str(tmp_path / "b")]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "b" / "checkpoints" / "last.pt").exists()
    # ... but two at once are one request: torchrun forwards its own copy of a terminal's Ctrl-C to each worker
    with monkeypatch.context() as mp:
        signal_in_training_step(mp, SupervisedTask, 3, signums=(signal.SIGINT, signal.SIGINT))
        assert main(argv + ["--out", str(tmp_path / "c")]) == 130
    assert "stopped by SIGINT after a whole step" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "c" / "checkpoints" / "last.pt")["global_step"] == 3


def test_the_stop_survives_a_stderr_that_is_gone(root, tmp_path, monkeypatch):
    """`fewshot train ... 2>&1 | tee log` and Ctrl-C: tee dies first, so writing the announcement (and the
    final message) fails; the stop and its checkpoint must happen all the same."""
    import fewshot.train.stop_signal as stop_signal
    from fewshot.cli import main

    def broken(data):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(stop_signal, "write_stderr", broken)
    argv = ["train", "--data", str(root), "--out", str(tmp_path / "a"), "--model", "test_resnet", "--img-size", "32",
            "--epochs", "3", "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false",
            "train.threads=1"]
    signal_in_training_step(monkeypatch, SupervisedTask, 3, signums=(signal.SIGINT,))
    assert main(argv) == 130
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["global_step"] == 3


def test_resume_of_a_run_older_than_a_field_compares_the_field_with_its_default(tmp_path):
    """A config.yaml saved before data.mixup_alpha existed: restating the default is not a change, another
    value is (the run trained without mixing)."""
    from fewshot.config import resolve, save_yaml
    from fewshot.errors import UserError
    from fewshot.train.resume_config import merge_resume_config

    old = resolve()
    del old["data"]["mixup_alpha"]
    save_yaml(old, tmp_path / "config.yaml")
    cfg = merge_resume_config(tmp_path, resolve(), {"data.mixup_alpha": 0.0})
    assert cfg["data"]["mixup_alpha"] == 0.0
    with pytest.raises(UserError, match=r"data.mixup_alpha \(0.0 in the run, 0.4 now\)"):
        merge_resume_config(tmp_path, resolve(), {"data.mixup_alpha": 0.4})


def test_resume_of_a_run_older_than_a_field_fills_it_with_what_the_run_did(tmp_path):
    """Fields the saved config.yaml lacks were read directly by the tasks: KeyError 'skip_bad_unlabeled', an
    internal error, on resuming any run written before the field existed."""
    from fewshot.config import resolve, save_yaml
    from fewshot.run_stages import stage_config
    from fewshot.train.resume_config import merge_resume_config

    old = resolve()
    del old["data"]["skip_bad_unlabeled"], old["data"]["crop_pct"], old["semi"]["views"]
    save_yaml(old, tmp_path / "config.yaml")
    for cfg in (merge_resume_config(tmp_path, resolve(), {}), stage_config(tmp_path, resolve())):
        assert cfg["data"]["skip_bad_unlabeled"] == resolve()["data"]["skip_bad_unlabeled"]
        assert cfg["data"]["crop_pct"] == resolve()["data"]["crop_pct"]
        assert cfg["semi"]["views"] == "mocov2"  # what runs did before semi.views, not today's default


def test_resume_refuses_other_training_images_and_fewer_epochs_than_done(root, ft_ref, tmp_path):
    """A `fewshot run` stage trained on labelled + pseudo-labelled images; `fewshot train --resume` on it saw
    only the labelled ones and silently trained another run (and overwrote the stage's results). Any other
    image count is refused; so is --epochs below what the run already did (it trained nothing, and
    config.yaml claimed fewer epochs than were trained)."""
    import shutil

    from fewshot.errors import UserError

    out = tmp_path / "run"
    shutil.copytree(ft_ref, out)
    config_before = (out / "config.yaml").read_text()
    other = tmp_path / "other"
    shutil.copytree(root, other, ignore=shutil.ignore_patterns(".fewshot_cache"))
    next(iter(sorted((other / "digits" / "train" / "0").iterdir()))).unlink()
    with pytest.raises(UserError, match="trained on 40 training images; these data give 39"):
        run_finetune(finetune_cfg(other, **FT), out, resume=True)
    with pytest.raises(UserError, match=r"already trained 3 epochs; --epochs 2 would train nothing.*keep its plan "
                                        r"\(3 epochs\)"):  # the saved plan, not "its 3-epoch results" (stopped runs)
        run_finetune(finetune_cfg(root, **{**FT, "train.epochs": 2}), out, resume=True)
    assert (out / "config.yaml").read_text() == config_before


def test_a_budget_counts_the_training_time_of_every_session(root, tmp_path, monkeypatch, capsys):
    """train.budget_minutes over a stop and a resume: the resumed session gets what is left of the budget
    (last.pt carries train_seconds), not a whole new budget, and a time-based schedule continues."""
    from fewshot.train.checkpoint import save_checkpoint

    budgeted = {**FT, "train.epochs": 50, "train.budget_minutes": 5.0, "sched.time_based": True}
    out = tmp_path / "run"
    _, ck = stopped_by_signal(run_finetune, finetune_cfg(root, **budgeted), out, monkeypatch, SupervisedTask, 7)
    assert 0 < ck["train_seconds"] < 300
    # as if the first session had already used up the budget: the resumed one trains nothing and says so, not
    # a fresh 5 minutes (nor the single step it took before it first looked at the clock, which logged the
    # stopped epoch once more: a DDP hunt saw epoch 22 three times in log.jsonl)
    ck["train_seconds"] = 300.5
    save_checkpoint(out / "checkpoints" / "last.pt", ck)
    log_before = (out / "log.jsonl").read_text()
    capsys.readouterr()
    run_finetune(finetune_cfg(root, **budgeted), out, resume=True)
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["global_step"] == 7 and last["train_seconds"] == 300.5  # nothing trained
    assert "used its whole budget (train.budget_minutes=5)" in capsys.readouterr().out
    # the signal's stop was not evaluated: it is now, once (as a budget stop there would have been)
    log = (out / "log.jsonl").read_text()
    assert log.startswith(log_before) and [r["step"] for r in read_log(out)][-1] == 7
    run_finetune(finetune_cfg(root, **budgeted), out, resume=True)
    assert (out / "log.jsonl").read_text() == log


def test_a_refused_pretrain_resume_points_to_pretrain_from_its_weights(tmp_path):
    """It pointed to `fewshot train --weights`: fine-tuning, where the user wanted to go on pretraining."""
    from fewshot.config import resolve, save_yaml
    from fewshot.errors import UserError
    from fewshot.train.resume_config import merge_resume_config

    saved = resolve()
    saved["_task"] = "moco"
    save_yaml(saved, tmp_path / "config.yaml")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")  # weights to start from (without: nothing to offer)
    with pytest.raises(UserError, match="`fewshot pretrain --weights "):
        merge_resume_config(tmp_path, resolve(), {"optim.lr": 0.01})


def test_ctrl_c_after_training_says_the_checkpoints_are_kept(root, tmp_path, monkeypatch, capsys):
    """A Ctrl-C while the plots were drawn printed a bare "interrupted": it read as a lost run."""
    import fewshot.report.plots as plots
    from fewshot.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_train_curves", interrupted)
    rc = main(["train", "--data", str(root), "--out", str(tmp_path / "r"), "--model", "test_resnet", "--img-size",
               "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
               "train.tensorboard=false"])
    err = capsys.readouterr().err
    assert rc == 130 and "fewshot train: interrupted; the checkpoints written so far are kept" in err, err


# ------------------------------------------------------------------------------ a budget stop's partial evaluation


def best_score_in(monkeypatch, epoch: int) -> None:
    """The evaluation of epoch index `epoch` (a budget stop's partial one) scores above anything else."""
    evaluate = SupervisedTask.evaluate

    def flattering(self, model, e):
        result = evaluate(self, model, e)
        return {**result, "score": 1e9} if e == epoch else result

    monkeypatch.setattr(SupervisedTask, "evaluate", flattering)


def test_a_tie_on_val_keeps_the_later_epoch_as_best_pt(root, tmp_path, monkeypatch):
    """With one val image per class scores tie often; the first epoch of the top score (lr still high) stayed
    best.pt and taught the pseudo-labels. A tie now goes to the later, more trained epoch, in the report too."""
    from fewshot.report.run_score import best_evaluation

    evaluate = SupervisedTask.evaluate
    scores = {0: 0.5, 1: 0.9, 2: 0.9}  # epoch index -> val score: epochs 2 and 3 tie

    def tied(self, model, e):
        return {**evaluate(self, model, e), "score": scores.get(e, 0.0)}  # the closing val scoring: any

    monkeypatch.setattr(SupervisedTask, "evaluate", tied)
    out = tmp_path / "run"
    run_finetune(finetune_cfg(root, **{"train.epochs": 3}), out)
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert (best["epoch"], best["best_score"]) == (3, 0.9)
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == 3
    assert best_evaluation(read_log(out))["epoch"] == 3


@pytest.mark.parametrize("stop_step", [7, 3])  # epoch 2 (epoch 1 made best.pt before), epoch 1 (no best.pt yet)
def test_a_budget_stop_whose_partial_epoch_made_best_pt_resumes_as_the_uninterrupted_run(
        root, ft_ref, tmp_path, monkeypatch, stop_step):
    """A budget stop mid-epoch evaluates the partial epoch; it scored best and wrote best.pt. A resume with more
    budget drops that partial row from log.jsonl and redoes the epoch, but best.pt and the best score stayed those
    of the dropped row: metrics.json named a best epoch whose scores were in no log row (best.pt at global step 9,
    the log's epoch 3 at step 12). Now the best.pt it replaced comes back, and the run ends as if never stopped."""
    out = tmp_path / "run"
    stop_epoch = (stop_step - 1) // 5  # 5 steps per epoch
    with monkeypatch.context() as mp:
        engine_clock(mp)
        best_score_in(mp, stop_epoch)
        run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": (stop_step - 0.5) / 60}), out)
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (stop_epoch, stop_step - 5 * stop_epoch, stop_step)
    assert load_checkpoint(out / "checkpoints" / "best.pt")["global_step"] == stop_step
    assert read_log(out)[-1]["score"] == 1e9

    run_finetune(finetune_cfg(root, **FT), out, resume=True)
    compare_runs(ft_ref, out, metrics=True)
    assert not (out / "checkpoints" / "best_before_stop.pt").exists()
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    rows = {r["step"]: r for r in read_log(out)}
    assert rows[best["global_step"]]["score"] == best["best_score"] == max(r.get("score", -1) for r in rows.values())


def test_a_kill_while_a_budget_stop_writes_its_best_pt_resumes_as_the_uninterrupted_run(
        root, ft_ref, tmp_path, monkeypatch):
    """The stop moved the old best.pt aside and was killed before its own best.pt (and last.pt) were written:
    the resume from the older last.pt puts the old best.pt back."""
    out = tmp_path / "run"
    save = Engine.save

    def dying(self, name="last", **kwargs):
        if name == "best" and self.step_in_epoch:
            raise Killed("killed while the stop wrote best.pt")
        save(self, name, **kwargs)

    with monkeypatch.context() as mp:
        engine_clock(mp)
        best_score_in(mp, 1)  # the stop after step 8 is in epoch 2, after the every-2-steps save of step 8
        mp.setattr(Engine, "save", dying)
        with pytest.raises(Killed):
            run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": 7.5 / 60}), out)
    best, aside = out / "checkpoints" / "best.pt", out / "checkpoints" / "best_before_stop.pt"
    assert best.read_bytes() == aside.read_bytes()  # the old best.pt, still in place, and its copy aside
    run_finetune(finetune_cfg(root, **FT), out, resume=True)
    compare_runs(ft_ref, out, metrics=True)
    assert not aside.exists()  # one file under two names: a rename between them does nothing, and it stayed


def test_best_pt_is_never_missing_while_a_budget_stop_replaces_it(root, tmp_path, monkeypatch):
    """The stop kept the old best.pt aside by renaming it, then wrote the new one: an `eval` or `predict` of the
    run in between found no best.pt. Now it is copied aside (a hard link) and replaced by one rename."""
    out = tmp_path / "run"
    save, seen = Engine.save, []

    def watched(self, name="last", **kwargs):
        if name == "best" and self.step_in_epoch:
            best = self.ckpt_dir / "best.pt"
            seen.append(best.is_file() and load_checkpoint(best)["global_step"] < self.global_step)
        save(self, name, **kwargs)

    with monkeypatch.context() as mp:
        engine_clock(mp)
        best_score_in(mp, 1)
        mp.setattr(Engine, "save", watched)
        # the reserve is measured in real seconds (evaluation, writes) against the fake clock's one a call: on a
        # loaded CI machine it took two steps of the budget (the stop at step 6, not 8); it is not this test's subject
        mp.setattr(Engine, "_closing_estimate", lambda self: 0.0)
        run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": 7.5 / 60}), out)
    assert seen == [True]
    aside = load_checkpoint(out / "checkpoints" / "best_before_stop.pt")
    assert aside["global_step"] < load_checkpoint(out / "checkpoints" / "best.pt")["global_step"] == 8


def test_a_resume_that_ends_before_its_first_save_leaves_the_restored_best_pt_to_the_next(
        root, ft_ref, tmp_path, monkeypatch):
    """The first resume after a budget stop puts the old best.pt back at once, but last.pt names the stop's best
    until its next save. A resume that ended before that save (an error, a kill) left the next resume without
    best_before_stop.pt: it took the stop's evaluation for the run's first best and deleted the restored best.pt."""
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        engine_clock(mp)
        best_score_in(mp, 1)
        run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": 6.5 / 60}), out)
    assert load_checkpoint(out / "checkpoints" / "best.pt")["global_step"] == 7

    def dies(self):
        raise Killed("killed after resume()")

    for _ in range(2):
        with monkeypatch.context() as mp, pytest.raises(Killed):
            mp.setattr(Engine, "_open_tensorboard", dies)
            run_finetune(finetune_cfg(root, **FT), out, resume=True)
        assert load_checkpoint(out / "checkpoints" / "best.pt")["global_step"] == 5  # epoch 1's, every time
    run_finetune(finetune_cfg(root, **FT), out, resume=True)
    compare_runs(ft_ref, out, metrics=True)


def test_a_training_that_finishes_its_epochs_deletes_the_best_pt_kept_aside(root, ft_ref, tmp_path):
    """best_before_stop.pt serves only a resume that reopens a stopped epoch: once the epochs are all trained it
    was a whole checkpoint of wasted disk."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(ft_ref, out)
    aside = out / "checkpoints" / "best_before_stop.pt"
    shutil.copy(out / "checkpoints" / "best.pt", aside)
    last = out / "checkpoints" / "last.pt"
    ck = torch.load(last, weights_only=True)
    ck["best_before_stop"] = ck["best_score"]  # named by last.pt (a resume puts back only one that it does not name)
    torch.save(ck, last)
    run_finetune(finetune_cfg(root, **{**FT, "train.epochs": 4}), out, resume=True)
    assert not aside.exists()


def test_a_finished_run_stage_deletes_the_best_pt_kept_aside(root, tmp_path, monkeypatch):
    """`fewshot run` stages end with a budget stop, mostly mid-epoch: best_before_stop.pt stayed in every stage
    whose stop scored a new best, though a finished stage is never resumed."""
    from helpers.checks import run_main

    fit = Engine.fit

    def keeps_aside(self, *args, **kwargs):  # as a stop mid-epoch with a new best does
        result = fit(self, *args, **kwargs)
        (self.ckpt_dir / "best_before_stop.pt").write_bytes(b"old best")
        return result

    monkeypatch.setattr(Engine, "fit", keeps_aside)
    out = tmp_path / "run"
    rc, _, err = run_main("run", "--data", root, "--out", out, "--budget-minutes", "0.05", "--model", "test_resnet",
                          "--device", "cpu", "--no-progress", "run.report=false", "train.batch_size=16")
    assert rc == 0, err
    stages = [d for d in out.iterdir() if (d / "checkpoints").is_dir()]
    assert stages and not [d for d in stages if (d / "checkpoints" / "best_before_stop.pt").exists()]


@pytest.mark.parametrize("edit, said", [
    (("name: test_resnet", "name: test_vit"), "model.name ('test_resnet' in the run, 'test_vit' now)"),
    (("lr: 0.004", "lr: 0.01"), "optim.lr (0.004 in the run, 0.01 now)"),
    (("drop_path: 0.1", "drop_path: 0.0"), "model.drop_path (0.1 in the run, 0.0 now)"),
])
def test_resume_after_config_yaml_was_edited_names_the_settings_it_changes(root, ft_ref, tmp_path, edit, said):
    """`name: test_resnet` -> `name: test_vit` in a run's config.yaml ended --resume in a load_state_dict
    size-mismatch traceback (an internal error, exit 1); another optim.lr or drop_path was used without a word,
    where the same change on the command line is refused."""
    import shutil

    from helpers.checks import run_main

    out = tmp_path / "run"
    shutil.copytree(ft_ref, out)
    config = out / "config.yaml"
    assert edit[0] in config.read_text()
    config.write_text(config.read_text().replace(*edit))
    rc, _, err = run_main("train", "--data", root, "--out", out, "--device", "cpu", "--no-progress", "--resume",
                          "--epochs", "4")
    assert rc == 2 and "Traceback" not in err, err
    assert f"its config.yaml (edited since {out / 'checkpoints' / 'last.pt'} was written) changes {said}." in err, err
    assert "Restore those settings in config.yaml to resume" in err, err


def test_ranks_that_see_last_pt_files_of_one_step_but_of_other_sessions_refuse_to_resume(monkeypatch, tmp_path):
    """Two copies of a run stopped at the same global step (node-local disks, one copied over later) are two
    checkpoints: the ranks compared only the step, and resumed from different weights."""
    import types

    import fewshot.errors
    import fewshot.train.start_checks as start_checks

    monkeypatch.setattr(start_checks, "all_gather_object", lambda ctx, x: [(5, 12.5), (5, 30.5)])
    fake = types.SimpleNamespace(ctx=types.SimpleNamespace(enabled=True))
    with pytest.raises(fewshot.errors.UserError) as err:
        Engine._agree_on_checkpoint(fake, tmp_path / "last.pt", {"global_step": 5, "train_seconds": 12.5})
    assert ("(rank 0: last.pt at global step 5 after 12.5 s of training; rank 1: last.pt at global step 5 after "
            "30.5 s of training)") in str(err.value)


def test_a_rank_that_cannot_read_last_pt_still_meets_the_others_in_the_agreement(monkeypatch, tmp_path):
    """A half-copied last.pt on one node: that rank raised before the gather, and the others waited in it until
    torchrun tore the job down, without the agreed message."""
    import types

    import fewshot.errors
    import fewshot.train.start_checks as start_checks

    (tmp_path / "last.pt").write_bytes(b"half a checkpoint")
    gathered = []

    def gather(ctx, view):
        gathered.append(view)
        return [(5, 12.5), view]  # rank 0 read it; this process is rank 1

    monkeypatch.setattr(start_checks, "all_gather_object", gather)
    fake = types.SimpleNamespace(ctx=types.SimpleNamespace(enabled=True), ckpt_dir=tmp_path)
    fake._agree_on_checkpoint = types.MethodType(Engine._agree_on_checkpoint, fake)
    with pytest.raises(fewshot.errors.UserError) as err:
        Engine.resume(fake)
    assert gathered and gathered[0][0] == "unreadable"
    assert "rank 0: last.pt at global step 5" in str(err.value) and "rank 1: an unreadable last.pt (" in str(err.value)


def test_a_setting_in_another_spelling_is_no_change_on_resume():
    """`--resume semi.method=off` on a run without FixMatch was refused ("'off' in the run, False now": YAML
    reads a bare off as false), and a real change showed False where the user typed off."""
    from fewshot.config import flatten_dotted, resolve
    from fewshot.train.resume_config import resume_changes

    plain = flatten_dotted(resolve())
    off = flatten_dotted(resolve(overrides=["semi.method=off", "train.amp=off", "optim.fused=true"]))
    assert resume_changes({**plain, "optim.fused": "on"}, off) == []
    fixmatch = flatten_dotted(resolve(overrides=["semi.method=fixmatch", "train.amp=false", "optim.fused=on"]))
    assert resume_changes(fixmatch, off) == ["semi.method ('fixmatch' in the run, 'off' now)"]


@pytest.mark.parametrize("in_run", [False, True])
def test_a_resume_with_the_budget_spent_evaluates_where_a_signal_stopped_it(root, tmp_path, monkeypatch, capsys,
                                                                            in_run):
    """A `fewshot run` stage stopped by a signal in its first epoch and resumed with no time left trained nothing
    and left no best.pt and no log.jsonl: its predictions came from the mid-epoch last.pt, its metrics named
    "best epoch 1" that no log row held, and the note told the user to start a new run while the run went on.
    The stop's state is now evaluated, logged as the partial epoch and kept as best.pt."""
    from fewshot.train.checkpoint import save_checkpoint

    out = (tmp_path / "run" / "finetune_labelled") if in_run else tmp_path / "run"
    out.parent.mkdir(parents=True, exist_ok=True)
    if in_run:
        (out.parent / "run_state.json").write_text("{}")  # a `fewshot run` stage
    budgeted = {**FT, "train.epochs": 50, "train.budget_minutes": 5.0, "sched.time_based": True}
    _, ck = stopped_by_signal(run_finetune, finetune_cfg(root, **budgeted), out, monkeypatch, SupervisedTask, 3)
    assert not (out / "checkpoints" / "best.pt").exists()  # epoch 1 is not over: no evaluation, no log row
    assert not (out / "log.jsonl").is_file() or not read_log(out)
    ck["train_seconds"] = 300.5
    save_checkpoint(out / "checkpoints" / "last.pt", ck)
    capsys.readouterr()
    metrics = run_finetune(finetune_cfg(root, **budgeted), out, resume=True)
    said = capsys.readouterr().out
    rows = read_log(out)
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 3)] and "score" in rows[0]
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["global_step"] == 3 and metrics["best_epoch"] == 1
    assert load_checkpoint(out / "checkpoints" / "last.pt")["global_step"] == 3  # nothing trained
    assert "evaluated there (log.jsonl: epoch 1)" in said
    if in_run:  # the stage ends and the run goes on: no new run to start
        assert "the run goes on" in said and "start a new run" not in said
    else:
        assert "give a larger train.budget_minutes to continue it" in said


def test_the_last_partial_epoch_of_a_budget_stop_prints_its_progress_line(root, tmp_path, monkeypatch, capsys):
    """A budget stop after the first step of an epoch: the loop was left before the progress bar counted that
    step, so the console showed epochs 1-2 while log.jsonl and the result named epoch 3."""
    with monkeypatch.context() as mp:
        engine_clock(mp)
        run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": 5.5 / 60, "train.progress": True}),
                     tmp_path / "run")
    err = capsys.readouterr().err
    assert "supervised epoch 1/3: 5/5 (100%)" in err
    assert "supervised epoch 2/3: 1/5 (20%)" in err  # step 6: the partial epoch's one step
    assert [r["epoch"] for r in read_log(tmp_path / "run")] == [1, 2]


@pytest.mark.parametrize("links", [True, False])
def test_keep_copy_leaves_the_original_in_place_with_or_without_hard_links(tmp_path, monkeypatch, links):
    """keep_copy copies by hard link, or by bytes where the file system has none; the original's later atomic
    replacement does not change the copy."""
    import os

    from fewshot.utils import atomic_write_bytes, keep_copy

    if not links:
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(1, "no hard links")))
    src, copy = tmp_path / "best.pt", tmp_path / "aside.pt"
    src.write_bytes(b"old")
    keep_copy(src, copy)
    atomic_write_bytes(src, b"new")
    assert (src.read_bytes(), copy.read_bytes()) == (b"new", b"old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aside.pt", "best.pt"]  # no temp file left


def test_put_back_of_a_copy_still_linked_to_its_file_removes_the_copy(tmp_path):
    """A kill between keep_copy and the new best.pt's write leaves best.pt and best_before_stop.pt one file:
    os.replace between them does nothing (POSIX), and the copy stayed, to be put back later over a newer best.pt."""
    from fewshot.utils import atomic_write_bytes, keep_copy, put_back

    best, aside = tmp_path / "best.pt", tmp_path / "aside.pt"
    best.write_bytes(b"old")
    keep_copy(best, aside)  # then killed before the new best.pt
    put_back(aside, best)
    assert not aside.exists() and best.read_bytes() == b"old"
    keep_copy(best, aside)
    atomic_write_bytes(best, b"new")  # the new best.pt was written: putting back restores the old one
    put_back(aside, best)
    assert not aside.exists() and best.read_bytes() == b"old"
