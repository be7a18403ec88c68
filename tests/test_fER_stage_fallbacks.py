"""`fewshot run` drops a stage whose schedule the budget cannot make useful (hunt hBQ): FixMatch planned at 5 steps
scored 16 % where the labelled-only fine-tune scored 83 % in the same minute, and a MoCo stage of 0.8 epoch left
the fine-tuning 0 s and ran past the budget. Each is now dropped at its planning with a one-line note, kept in
summary.json's plan and run_state.json; at a larger budget with the same speeds the stage stays.

Fake step speeds (patched timings); the run stops where its first stage would train, so nothing is trained."""

from __future__ import annotations

import json

import pytest

from helpers.run_clock import Planned, fixed_closing, run_cfg
from helpers.run_patch import patch_run


def _stop_at_training(monkeypatch) -> dict:
    """Engine.fit raises Planned(the task's kind), with the stage's FixMatch setting and its seconds kept."""
    from fewshot.train import engine

    plan = {}

    def fit(self, resume=False):
        plan.update(kind=self.task.kind, semi=self.cfg["semi"]["method"], lr=self.cfg["optim"]["lr"],
                    stage_s=60 * float(self.cfg["train"]["budget_minutes"]))
        raise Planned(self.task.kind)

    monkeypatch.setattr(engine.Engine, "fit", fit)
    return plan


def _speeds(monkeypatch, fixmatch_s: float = 1.0, moco_s: float = 5.0) -> None:
    """FixMatch's steps at ``fixmatch_s``, MoCo's at ``moco_s``, the labelled-only fine-tune's at 10 ms."""
    def measure(task, *a, **kw):
        if task.kind == "moco":
            return moco_s
        return fixmatch_s if task.cfg["semi"]["method"] == "fixmatch" else 0.01

    patch_run(monkeypatch, "measure_step_seconds", measure)
    fixed_closing(monkeypatch, 2.0)


@pytest.mark.parametrize("minutes, dropped", [(0.3, True), (2.0, False)])
def test_fixmatch_too_short_to_learn_falls_back_to_the_labelled_only_fine_tune(
        digits_root, tmp_path, monkeypatch, capsys, real_least_run_holds, minutes, dropped):
    """1 s a FixMatch step (5 steps an epoch): in 0.3 minutes fewer than 6 epochs of the labelled images fit, so
    the stage that trains is the labelled-only fine-tune, said once; in 2 minutes FixMatch trains."""
    import fewshot.pipeline as pipeline

    _speeds(monkeypatch)
    plan = _stop_at_training(monkeypatch)
    out = tmp_path / "r"
    with pytest.raises(Planned):
        pipeline.run_pipeline(run_cfg(digits_root, **{"run.semi_method": "fixmatch"}), out, minutes)
    text = capsys.readouterr().out
    assert plan["semi"] == ("off" if dropped else "fixmatch")
    assert text.count("[run] --semi fixmatch skipped (planned, not an error)") == int(dropped)
    state = json.loads((out / "run_state.json").read_text())
    assert ("fixmatch_skipped" in state) is dropped
    if dropped:
        assert "fewer than the 6 it needs to learn" in text
        assert "fine-tuning from random init: " in text  # the labelled-only stage's plan line, no FixMatch in it


@pytest.mark.parametrize("minutes, dropped", [(1.0, True), (3.0, False)])
def test_pretrain_with_less_than_half_an_epoch_is_dropped(digits_root, tmp_path, monkeypatch, capsys,
                                                     real_least_run_holds, minutes, dropped):
    """MoCo at 2.5 s a step (25 steps an epoch of its pool at batch 8): in 1 minute its share of the budget holds
    its floor but not half an epoch, so MoCo is dropped and the fine-tuning plans at once (at the lr of a run
    without MoCo); in 3 minutes MoCo trains."""
    import fewshot.pipeline as pipeline

    _speeds(monkeypatch, moco_s=2.5)
    plan = _stop_at_training(monkeypatch)
    out = tmp_path / "r"
    cfg = run_cfg(digits_root, **{"run.semi_method": "off", "run.pretrain": True, "run.pretrain_batch_size": 8,
                                  "moco.split_bn_groups": 2})
    with pytest.raises(Planned):
        pipeline.run_pipeline(cfg, out, minutes)
    text = capsys.readouterr().out
    assert plan["kind"] == ("supervised" if dropped else "moco"), text
    assert text.count("[run] --pretrain skipped (planned, not an error)") == int(dropped)
    assert ("pretrain_skipped" in json.loads((out / "run_state.json").read_text())) is dropped
    if dropped:
        assert "less than the 0.5 epochs a pretraining needs" in text
        assert not (out / "pretrain").exists()
        assert plan["lr"] != cfg["run"]["finetune_lr"]  # the fine-tuning's lr after MoCo is not taken
