"""Round 1's end moved later (round 2 skipped at its planned end): the model the old end annealed is evaluated before
the warm restart raises the lr again, at an epoch's end and inside an epoch (review rev120 #1); the EMA's warm-up
counts again from the move (#2). Without this the move skipped the epoch's evaluation and the annealed weights were
lost unscored."""

from __future__ import annotations

import json

import pytest


class Killed(Exception):
    pass


def _fit_moved(digits_root, tmp_path, monkeypatch, late_at):
    """A real time-based round 1 whose deadline is seen to pass where ``late_at(engine)`` says (once), its end then
    moved 30 s later; killed at the second step after the move. Returns (events, ema steps, folder)."""
    import fewshot.train.engine as engine
    from fewshot.train.finetune import run_finetune
    from helpers.tiny import finetune_cfg

    (tmp_path / "run_state.json").write_text("{}")  # a `fewshot run` stage
    events, ema_steps, moved = [], [], []
    init, step, evaluate = engine.Engine.__init__, engine.Engine._forward_backward, engine.Engine._evaluate

    def with_hook(self, task, *a, **k):
        task.step_s, task.eval_s = 1e-3, 1e-3
        task.replan_end = lambda end, row: moved.append(self.global_step) or end + 30.0
        init(self, task, *a, **k)
        update = self.ema.update
        self.ema.update = lambda model, step=None: ema_steps.append((moved[:], step)) or update(model, step=step)

    def traced_step(self, *a, **k):
        if sum(1 for e in events if e[0] == "step" and e[1]) >= 2:
            raise Killed
        events.append(("step", bool(moved)))
        return step(self, *a, **k)

    def traced_eval(self, record, epoch):
        events.append(("eval", bool(moved)))
        return evaluate(self, record, epoch)

    monkeypatch.setattr(engine.Engine, "__init__", with_hook)
    monkeypatch.setattr(engine.Engine, "_forward_backward", traced_step)
    monkeypatch.setattr(engine.Engine, "_evaluate", traced_eval)
    monkeypatch.setattr(engine.Engine, "_extend_cap", lambda self, deadline: None)
    monkeypatch.setattr(engine.Engine, "_agreed_stop",
                        lambda self, deadline: (False, deadline is not None and not moved and late_at(self)))
    cfg = finetune_cfg(digits_root, **{"model.img_size": 16, "train.epochs": 6, "train.budget_minutes": 0.5,
                                       "train.eval_every": 100, "train.batch_size": 4, "train.ema": True,
                                       "train.ema_warmup": True, "sched.time_based": True})
    out = tmp_path / "finetune_labelled"
    with pytest.raises(Killed):
        run_finetune(cfg, out)
    assert moved, "the deadline never passed"
    return events, ema_steps, moved[0], out


def _evaluated_before_restart(events) -> bool:
    after = [e[0] for e in events if e[1]]
    return after[:1] == ["eval"]


def test_a_move_at_an_epoch_s_end_is_evaluated_first(digits_root, tmp_path, monkeypatch):
    """The deadline passes at epoch 1's end, with no evaluation due there (eval_every 100)."""
    events, ema_steps, at, out = _fit_moved(digits_root, tmp_path, monkeypatch,
                                            lambda e: e.epoch == 1 and e.step_in_epoch == 0)
    assert _evaluated_before_restart(events), events
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == at and "score" in rows[0], rows  # val at the old end, logged with its epoch
    assert (out / "checkpoints" / "best.pt").is_file()
    # the EMA's warm-up counts from the move: its first update after it is its step 0 (a copy of the weights)
    assert [s for m, s in ema_steps if m][:2] == [0, 1], ema_steps


def test_a_move_inside_an_epoch_ends_it_and_is_evaluated_first(digits_root, tmp_path, monkeypatch):
    """The deadline passes after epoch 1's first step: the epoch ends there, evaluated, then the restart."""
    events, ema_steps, at, out = _fit_moved(digits_root, tmp_path, monkeypatch,
                                            lambda e: e.epoch == 1 and e.step_in_epoch == 1)
    assert _evaluated_before_restart(events), events
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 2 and rows[-1]["step"] == at and "score" in rows[-1], rows
