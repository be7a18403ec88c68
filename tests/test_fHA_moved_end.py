"""Round 1's end moved later (self-training's round 2 skipped at round 1's planned end, task.replan_end): the stage's
time-based schedule is re-planned over the new end, as if planned to it from the start. Held at the old end's
position, the cosine stayed at its minimum for the whole extension: 15 of 16 epochs at lr 1e-5, test 35.5 against
the baseline's 74.0 (hunt hCA #1)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import yaml

from test_fGE_round1_judged_at_its_end import fit_round1_killed_after_move

PEAK, MIN_LR = 0.1, 1e-5
SCHED = {"warmup_epochs": 0, "min_lr": MIN_LR, "warmup_lr": MIN_LR, "time_based": True}


def _cosine(frac: float) -> float:
    return MIN_LR + 0.5 * (PEAK - MIN_LR) * (1 + math.cos(math.pi * frac))


def _stage(monkeypatch, now: list):
    """The Engine's schedule and deadline methods on a stand-in at a fake clock: fit_start 100, round 1 planned to
    110 s with a cap of 4 epochs of 2 steps, all 8 trained by 111 s, when the run moves its end to 150 s."""
    from fewshot.train import stage_cap
    from fewshot.train.budget_reserve import BudgetReserveMixin
    from fewshot.train.optim import build_scheduler
    from fewshot.train.stage_cap import StageCapMixin

    monkeypatch.setattr(stage_cap, "time", SimpleNamespace(monotonic=lambda: now[0]))

    class Stage(BudgetReserveMixin, StageCapMixin):
        pass

    e = Stage()
    e.task = SimpleNamespace(replan_end=lambda end, row: 150.0)
    e.ctx, e.fit_start, e._budget_end, e.global_step, e.steps_per_epoch = SimpleNamespace(enabled=False), 100.0, \
        110.0, 8, 2
    e.cfg = {"train": {"epochs": 4, "budget_minutes": 10 / 60}, "sched": SCHED}
    e._sched_floor, e._cap_unsaved, e.step_in_epoch = 0.0, False, 0
    e.save_mid_epoch, e.write_rate = lambda: None, lambda: None
    e.optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=PEAK)
    e.scheduler = build_scheduler(e.cfg, e.optimizer, e.steps_per_epoch)
    return e


def _lr(e) -> float:
    e.scheduler.step_update(e._schedule_t(e._deadline()))
    return e.optimizer.param_groups[0]["lr"]


def test_after_the_move_the_lr_follows_the_new_ends_cosine(monkeypatch):
    now = [111.0]
    e = _stage(monkeypatch, now)
    assert _lr(e) == pytest.approx(MIN_LR)  # past its planned end: the old schedule has ended
    assert e._end_moved({"step": 8}) and e._deadline() == 150.0
    assert _lr(e) == pytest.approx(_cosine(11 / 50), rel=0.05)  # a warm restart at 11 s of the 50 s now planned
    now[0] = 130.0
    e.global_step = 20  # half the new cap of 40 steps, behind the clock
    assert _lr(e) == pytest.approx(_cosine(30 / 50), rel=0.05) and _lr(e) > 100 * MIN_LR


def test_the_cap_rises_in_proportion_so_the_steps_do_not_pin_the_position(monkeypatch):
    """d seed 0 trained exactly its cap of 16 epochs: the steps' fraction of the old cap held the position at 1."""
    now = [111.0]
    e = _stage(monkeypatch, now)
    assert e._end_moved({"step": 8})
    assert e.cfg["train"]["epochs"] == 20 and e._cap_unsaved  # 4 epochs of a 10-s plan, 20 of a 50-s one
    assert e._sched_floor == pytest.approx(11 / 50)
    assert e.cfg["train"]["budget_minutes"] == pytest.approx(50 / 60)


def test_a_resume_after_the_move_keeps_the_new_cap_and_position(digits_root, tmp_path, monkeypatch):
    """A kill right after the move, then --resume: last.pt and config.yaml hold the re-planned cap and position, and
    the resumed stage's lr goes on from there, not from its old end's minimum."""
    import fewshot.train.engine as engine
    from fewshot.train.checkpoint import load_checkpoint
    from fewshot.train.finetune import run_finetune

    step, Killed = fit_round1_killed_after_move(digits_root, tmp_path, monkeypatch)
    out = tmp_path / "finetune_labelled"
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == ck["epochs_cap"] > 10_000 and 0 < ck["sched_floor"] < 0.2, ck["sched_floor"]

    seen, schedule_t = [], engine.Engine._schedule_t

    def first_step(self, deadline):
        t = schedule_t(self, deadline)
        self.scheduler.step_update(t)
        seen.append((self.cfg["train"]["epochs"], self._sched_floor, self.optimizer.param_groups[0]["lr"]))
        raise Killed

    monkeypatch.setattr(engine.Engine, "_forward_backward", step)
    monkeypatch.setattr(engine.Engine, "_schedule_t", first_step)
    with pytest.raises(Killed):
        run_finetune(cfg, out, resume=True)
    epochs, floor, lr = seen[0]
    assert epochs == ck["epochs_cap"] and floor == pytest.approx(ck["sched_floor"])
    peak, least = float(cfg["optim"]["lr"]), float(cfg["sched"]["min_lr"])
    assert lr > 0.5 * peak > 10 * least, (lr, peak, least)


def test_an_end_moved_at_the_cap_s_epoch_trains_on(digits_root, tmp_path, monkeypatch):
    """Round 1's deadline passed at the epoch that reached its cap (2 epochs): the moved end raises the cap, and the
    stage trains on into epoch 3 rather than ending at the old cap with the new time unused."""
    import fewshot.train.engine as engine
    from fewshot.train.finetune import run_finetune
    from helpers.tiny import finetune_cfg

    (tmp_path / "run_state.json").write_text("{}")  # a `fewshot run` stage
    moved, step, init = [], engine.Engine._forward_backward, engine.Engine.__init__

    class Killed(Exception):
        pass

    def with_hook(self, task, *a, **k):
        task.step_s, task.eval_s = 1e-3, 1e-3
        task.replan_end = lambda end, row: moved.append(self.epoch) or end + 30.0
        init(self, task, *a, **k)

    def trained_on(self, *a, **k):
        if moved:
            raise Killed
        return step(self, *a, **k)

    monkeypatch.setattr(engine.Engine, "__init__", with_hook)
    monkeypatch.setattr(engine.Engine, "_forward_backward", trained_on)
    monkeypatch.setattr(engine.Engine, "_extend_cap", lambda self, deadline: None)  # no raise for a fast stage
    # the deadline is seen to pass at the end of epoch 2, the cap's, and only there
    monkeypatch.setattr(engine.Engine, "_agreed_stop", lambda self, deadline: (False, not moved and self.epoch >= 2))
    cfg = finetune_cfg(digits_root, **{"model.img_size": 16, "train.epochs": 2, "train.budget_minutes": 0.5,
                                       "sched.time_based": True})
    with pytest.raises(Killed):
        run_finetune(cfg, tmp_path / "finetune_labelled")
    assert moved == [2]  # trained on: the cap rose in proportion (2 epochs of 30 s, 4 of 60 s)
