"""Review rev102 of fGB (round 1's cut judged again at the speed it trains at): round 1's end is judged once, when
round 1 reaches it, with the inputs of the check before round 2 (the whole log's speed), not at each epoch's end from
the epochs so far. One slow epoch skipped round 2 for good there, a round only slower than timed was acted on, the
whole log.jsonl was read again twice an epoch, and a kill before the next last.pt lost the longer budget.

fGB's stand-in and fake clock for the decision; a real tiny fine-tuning (test_resnet, 16 px digits) for the Engine."""

from __future__ import annotations

import builtins
import functools
from types import SimpleNamespace

import pytest
import torch
import yaml

from helpers.run_clock import rounds_clock
from test_fGB_round1_cut_at_trained_speed import EVAL, PER_IMAGE, STEP, _run, _train_round1


@pytest.fixture
def clock(monkeypatch, real_time_holds):  # fGB's: a fake clock, the timings at round 1's
    return rounds_clock(monkeypatch, PER_IMAGE, STEP)


def _planned(clock, tmp_path, left: float, n_pool: int):
    from fewshot import pipeline

    run, task, decided = _run(clock, tmp_path, left, n_pool)
    cut = pipeline.PipelineRun.round1_closing(run, task, EVAL, STEP)
    assert not decided and cut > 0  # the later round planned, round 1 cut for it
    return run, task, decided, cut


@pytest.mark.parametrize("busy", [0, 2])  # the first epoch (AdamW's first step, a compile) or the third
@pytest.mark.parametrize("left", [45.0, 50.0, 55.0])
@pytest.mark.parametrize("n_pool", [1_000, 50_000])
def test_one_slow_epoch_does_not_skip_round_2(clock, tmp_path, capsys, busy, left, n_pool):
    """Round 1 at its timed 460 ms a step but for one epoch at 3x, outside the last quarter of its steps that the
    check reads (a round 1 of 6+ epochs): the whole log's speed is the timed one, so round 2 is kept and round 1
    ends at its planned end. fGB skipped round 2 from the epochs so far ("round 1 trains at 1380 ms a step"), which
    its own log and the check then contradicted (rev102: 9 of 12 cases). In a round 1 of 3 epochs the slow one is
    its last quarter, and the check judges at it too."""
    from fewshot import pipeline

    run, task, decided, cut = _planned(clock, tmp_path, left, n_pool)
    end = _train_round1(clock, run, task, cut, lambda epoch: 3 * STEP if epoch == busy else STEP)
    out = capsys.readouterr().out
    assert not decided and end == run.labelled_end - cut - STEP, out
    assert task.trained_step_s == pytest.approx(STEP)
    pipeline.PipelineRun.check_later_rounds(run, task, 2)
    assert not decided and "labelled_only" not in run.skip, (run.skip, capsys.readouterr().out)


@pytest.mark.parametrize("slower", [1.3, 1.5])
@pytest.mark.parametrize("left, n_pool", [(40.0, 1_000), (50.0, 1_000), (50.0, 50_000), (60.0, 50_000)])
def test_a_slower_round_1_that_leaves_round_2_its_time_stops_as_planned(clock, tmp_path, capsys, slower, left,
                                                                         n_pool):
    """Only a round 2 that no longer fits is acted on, not any training slower than timed: at 1.3-1.5x with room
    after the planned end, round 1 ends there, says nothing, and the check keeps round 2 (rev102's mutant, "act
    whenever slower", passed fGB's tests)."""
    from fewshot import pipeline

    run, task, decided, cut = _planned(clock, tmp_path, left, n_pool)
    end = _train_round1(clock, run, task, cut, slower * STEP)
    out = capsys.readouterr().out
    assert task.trained_step_s == pytest.approx(slower * STEP)
    assert not decided and end == run.labelled_end - cut - STEP and "skipped" not in out, out
    pipeline.PipelineRun.check_later_rounds(run, task, 2)
    assert not decided and "labelled_only" not in run.skip, (run.skip, capsys.readouterr().out)


def _fit_round1(digits_root, tmp_path, monkeypatch, hook):
    """A real round 1 in a run's folder (run_state.json beside it: a `fewshot run` stage, time-based), 1.2 s of
    budget and an epoch cap it does not reach; ``hook(task)`` is its task.replan_end. Returns its folder."""
    import fewshot.train.engine as engine
    from fewshot.train.finetune import run_finetune
    from helpers.tiny import finetune_cfg

    (tmp_path / "run_state.json").write_text("{}")
    init = engine.Engine.__init__

    def with_hook(self, task, *a, **k):
        task.step_s, task.eval_s, task.replan_end = 1e-3, 1e-3, hook(task)
        init(self, task, *a, **k)

    monkeypatch.setattr(engine.Engine, "__init__", with_hook)
    cfg = finetune_cfg(digits_root, **{"model.img_size": 16, "train.epochs": 10_000, "train.budget_minutes": 0.02,
                                       "sched.time_based": True})
    out = tmp_path / "finetune_labelled"
    run_finetune(cfg, out)
    return out


def fit_round1_killed_after_move(digits_root, tmp_path, monkeypatch):
    """Round 1 fitted with its end moved 30 s later at its first deadline, killed (an exception in the next step,
    as kill -9 would leave it) right after the move. Returns (the Engine's own step, the exception), for a resume."""
    import fewshot.train.engine as engine

    moved, step = [], engine.Engine._forward_backward

    class Killed(Exception):
        pass

    def kill_after_move(self, *a, **k):
        if moved:
            raise Killed
        return step(self, *a, **k)

    monkeypatch.setattr(engine.Engine, "_forward_backward", kill_after_move)
    with pytest.raises(Killed):
        _fit_round1(digits_root, tmp_path, monkeypatch, lambda task: lambda end, row: moved.append(end) or end + 30.0)
    return step, Killed


def test_round_1s_log_is_read_once_whatever_its_epochs(digits_root, tmp_path, monkeypatch):
    """round1_replan is asked once, at round 1's planned end, and reads log.jsonl once there. fGB's was asked at each
    _deadline() (twice an epoch) and read the whole log each time: about 270 s lost over a 5k-epoch round 1."""
    from fewshot import pipeline

    reads, real_open = [], builtins.open

    def counting_open(file, mode="r", *a, **k):
        if str(file).endswith("log.jsonl") and "r" in mode:
            reads.append(file)
        return real_open(file, mode, *a, **k)

    run = SimpleNamespace(skip={"skipped_from": None}, out=tmp_path, closing=lambda *a, **k: 1.0, last_end=1e12,
                          note_writes=lambda rate: None,
                          test_set=SimpleNamespace(images=torch.zeros(0, 3, 16, 16)))  # no prediction to time
    monkeypatch.setattr(builtins, "open", counting_open)
    out = _fit_round1(digits_root, tmp_path, monkeypatch, lambda task: functools.partial(
        pipeline.PipelineRun.round1_replan, run, task, lambda *a, **k: 0.0))  # round 2 fits: round 1 stops
    monkeypatch.setattr(builtins, "open", real_open)
    assert len(real_open(out / "log.jsonl").read().splitlines()) >= 2  # epochs trained: fGB read 2 an epoch
    assert len(reads) == 1, reads


def test_a_kill_after_round_1s_end_moved_later_keeps_the_new_budget(digits_root, tmp_path, monkeypatch):
    """The end moved later (round 2 skipped at round 1's planned end): last.pt (with the schedule's floor and cap) and
    config.yaml hold it before the next step, so that a kill -9 there and --resume keep training round 1 (fGB wrote
    it with the next last.pt: a resume kept the cut end, skipped round 2 and left the time unused)."""
    from fewshot.train.checkpoint import load_checkpoint

    fit_round1_killed_after_move(digits_root, tmp_path, monkeypatch)
    out = tmp_path / "finetune_labelled"
    minutes = yaml.safe_load((out / "config.yaml").read_text())["train"]["budget_minutes"]  # stage_config's
    assert minutes > 0.02 + 29 / 60, minutes
    ck = load_checkpoint(out / "checkpoints" / "last.pt")  # re-planned over the new end (hunt hCA #1), not held at 1
    assert 0 < ck["sched_floor"] < 0.2 and ck["epochs_cap"] > 10_000, (ck["sched_floor"], ck["epochs_cap"])
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == ck["epochs_cap"]
