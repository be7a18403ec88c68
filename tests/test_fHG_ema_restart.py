"""Round 1's moved end and its EMA (review rev121 #2, #4): the restart of the EMA's warm-up is kept in last.pt and
read back by --resume (a resumed round 1 counted the warm-up from step 0 again, the decay rev120 #2 fixed), and it
applies only with train.ema_warmup (without it timm's decay is 0 at its first steps all the same, so a restart would
copy the raw weights into the EMA instead of keeping the constant decay the user set)."""

from __future__ import annotations

import pytest
import torch


class Killed(Exception):
    pass


def _cfg(digits_root, warmup: bool) -> dict:
    from helpers.tiny import finetune_cfg

    return finetune_cfg(digits_root, **{"model.img_size": 16, "train.epochs": 6, "train.budget_minutes": 0.5,
                                        "train.eval_every": 100, "train.batch_size": 4, "train.ema": True,
                                        "train.ema_warmup": warmup, "sched.time_based": True})


def _fit_moved(digits_root, tmp_path, monkeypatch, warmup: bool):
    """A real time-based round 1 whose deadline passes at epoch 1's end, moved 30 s later, killed at the second step
    after the move. Returns (the EMA's update steps after the move, the move's global step, the stage folder)."""
    import fewshot.train.engine as engine
    from fewshot.train.finetune import run_finetune

    (tmp_path / "run_state.json").write_text("{}")  # a `fewshot run` stage
    ema_steps, moved, after = [], [], []
    init, step = engine.Engine.__init__, engine.Engine._forward_backward

    def with_hook(self, task, *a, **k):
        task.step_s, task.eval_s = 1e-3, 1e-3
        task.replan_end = lambda end, row: moved.append(self.global_step) or end + 30.0
        init(self, task, *a, **k)
        update = self.ema.update
        self.ema.update = lambda model, step=None: (moved and ema_steps.append(step)) or update(model, step=step)

    def traced_step(self, *a, **k):
        if moved:
            after.append(self.global_step)
            if len(after) > 2:
                raise Killed
        return step(self, *a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(engine.Engine, "__init__", with_hook)
        mp.setattr(engine.Engine, "_forward_backward", traced_step)
        mp.setattr(engine.Engine, "_extend_cap", lambda self, deadline: None)
        mp.setattr(engine.Engine, "_agreed_stop", lambda self, deadline: (
            False, deadline is not None and not moved and self.epoch == 1 and self.step_in_epoch == 0))
        out = tmp_path / "finetune_labelled"
        with pytest.raises(Killed):
            run_finetune(_cfg(digits_root, warmup), out)
    assert moved, "the deadline never passed"
    return ema_steps, moved[0], out


def _resumed_ema_step0(digits_root, out, monkeypatch, warmup: bool) -> int:
    """The resumed Engine's _ema_step0, read at its first step (then killed)."""
    import fewshot.train.engine as engine
    from fewshot.train.finetune import run_finetune

    seen = []

    def first_step(self, *a, **k):
        seen.append(self._ema_step0)
        raise Killed

    with monkeypatch.context() as mp:
        mp.setattr(engine.Engine, "_forward_backward", first_step)
        with pytest.raises(Killed):
            run_finetune(_cfg(digits_root, warmup), out, resume=True)
    return seen[0]


def test_the_ema_restart_survives_a_kill_and_resume(digits_root, tmp_path, monkeypatch):
    ema_steps, at, out = _fit_moved(digits_root, tmp_path, monkeypatch, warmup=True)
    assert ema_steps[:2] == [0, 1], ema_steps  # the warm-up counts from the move
    last = out / "checkpoints" / "last.pt"
    assert torch.load(last, map_location="cpu", weights_only=False)["ema_step0"] == at  # the epoch-end save after it
    assert _resumed_ema_step0(digits_root, out, monkeypatch, warmup=True) == at
    ck = torch.load(last, map_location="cpu", weights_only=False)
    del ck["ema_step0"]  # a last.pt from before the restart was saved: counted from the stage's start
    torch.save(ck, last)
    assert _resumed_ema_step0(digits_root, out, monkeypatch, warmup=True) == 0


def test_without_ema_warmup_the_move_keeps_the_ema_s_constant_decay(digits_root, tmp_path, monkeypatch):
    """No restart: the EMA's steps go on from the stage's start, past timm's two steps of decay 0."""
    ema_steps, at, out = _fit_moved(digits_root, tmp_path, monkeypatch, warmup=False)
    assert ema_steps[:2] == [at, at + 1] and min(ema_steps) > 1, ema_steps
    assert torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["ema_step0"] == 0
