"""Follow-up of the stage drops of `fewshot run` (review rev86): MoCo's least run on a small pool is its 5-step
floor, not half an epoch (a 3-step epoch kept MoCo at 3.5 steps of share, and its floor then overran); a --resume
plans without a stage dropped before, and summary.json records what ran; the labelled-only fine-tune trains
after FixMatch's task is gone.

Fake step speeds (patched timings); the run stops where its first stage would train, so nothing is trained."""

from __future__ import annotations

import gc
import weakref

import pytest

from helpers.run_clock import Planned, run_cfg
from helpers.run_patch import patch_run
from test_fER_stage_fallbacks import _speeds, _stop_at_training


def _moco_cfg(root) -> dict:
    """MoCo at batch 64: its pool of 200 images makes 3 steps an epoch, fewer than plan_stage's floor of 5."""
    return run_cfg(root, **{"run.semi_method": "off", "run.pretrain": True, "run.pretrain_batch_size": 64,
                            "moco.split_bn_groups": 2})


def _fixmatch_cfg(root) -> dict:
    return run_cfg(root, **{"run.semi_method": "fixmatch"})


def _planned(cfg: dict, out, minutes: float | None, resume: bool = False):
    """The run, stopped where its first stage would train (Planned): the PipelineRun, for its summary."""
    import fewshot.pipeline as pipeline

    run = pipeline.PipelineRun(cfg, out, minutes, None, resume)
    with pytest.raises(Planned):
        try:
            run.run()
        except BaseException:
            run.note_stop()  # as run_pipeline: the session's time counted for the resume
            raise
    return run


@pytest.mark.parametrize("minutes, dropped", [(0.7, True), (1.0, False)])
def test_moco_is_kept_only_where_its_share_holds_its_floor_on_a_small_pool(digits_root, tmp_path, monkeypatch, capsys,
                                                                         real_least_run_holds, minutes, dropped):
    """4 s a MoCo step, 3 steps an epoch: in 0.7 minutes MoCo's share holds about 4 steps once the fine-tuning's is
    kept back, more than half an epoch but fewer than the 5 it trains at the least: dropped, said in steps. In 1
    minute it trains, with a schedule that holds its floor."""
    _speeds(monkeypatch, moco_s=4.0)
    plan = _stop_at_training(monkeypatch)
    out = tmp_path / "r"
    run = _planned(_moco_cfg(digits_root), out, minutes)
    text = capsys.readouterr().out
    assert plan["kind"] == ("supervised" if dropped else "moco"), text
    assert ("pretrain_skipped" in run.summary) is dropped
    if dropped:
        assert "less than the 5 steps that MoCo trains at the least (3 steps make an epoch of its pool)" in text
        assert run.summary["pretrain_skipped"]["why"] in " ".join(text.split())
        assert not (out / "pretrain").exists()
    else:
        assert plan["stage_s"] >= 5 * 4.0, text  # its floor of 5 steps inside its schedule: no overrun past it


@pytest.mark.parametrize("stage", ["pretrain", "fixmatch"])
def test_a_resume_plans_without_the_stage_dropped_before(digits_root, tmp_path, monkeypatch, capsys,
                                                         real_least_run_holds, stage):
    """Session 1 drops the stage and stops before anything trained; the resume, at speeds where the stage would
    fit, plans the labelled-only fine-tune again, with no second note, and its summary records the drop."""
    cfg, minutes = (_moco_cfg(digits_root), 0.7) if stage == "pretrain" else (_fixmatch_cfg(digits_root), 2.0)
    _speeds(monkeypatch, fixmatch_s=10.0, moco_s=4.0)
    plan = _stop_at_training(monkeypatch)
    out = tmp_path / "r"
    first = _planned(cfg, out, minutes)
    assert plan["kind"] == "supervised" and plan["semi"] == "off", capsys.readouterr().out
    assert f"{stage}_skipped" in first.summary and "semi" not in first.summary
    capsys.readouterr()

    _speeds(monkeypatch, fixmatch_s=0.01, moco_s=0.01)  # now the stage would fit: only the record drops it
    plan.clear()
    cfg = _moco_cfg(digits_root) if stage == "pretrain" else _fixmatch_cfg(digits_root)
    resumed = _planned(cfg, out, None, resume=True)
    text = capsys.readouterr().out
    assert plan["kind"] == "supervised" and plan["semi"] == "off", text
    assert "skipped (planned, not an error)" not in text
    assert resumed.summary[f"{stage}_skipped"] == first.summary[f"{stage}_skipped"]
    assert "semi" not in resumed.summary  # FixMatch's settings are not what ran


def test_fixmatch_dropped_keeps_its_settings_aside_and_its_task_is_gone_when_the_fallback_trains(
        digits_root, tmp_path, monkeypatch, real_least_run_holds):
    """summary.json's ``semi`` described FixMatch after its drop; and the fallback trained inside the except
    block, whose traceback kept FixMatch's task (its model on the device, its pool) alive."""
    from fewshot.train import engine

    _speeds(monkeypatch, fixmatch_s=10.0)
    timed = []
    measure = _measure_recording(timed)
    patch_run(monkeypatch, "measure_step_seconds", measure)
    alive = {}

    def fit(self, resume=False):
        gc.collect()
        alive.update(semi=self.cfg["semi"]["method"], fixmatch=[ref() is not None for ref in timed])
        raise Planned(self.task.kind)

    monkeypatch.setattr(engine.Engine, "fit", fit)
    run = _planned(_fixmatch_cfg(digits_root), tmp_path / "r", 2.0)
    assert alive["semi"] == "off" and alive["fixmatch"] and not any(alive["fixmatch"]), alive
    assert "semi" not in run.summary
    assert run.summary["fixmatch_skipped"]["planned"]["pool_size"] > 0


def _measure_recording(timed: list):
    """measure_step_seconds at _speeds' FixMatch speed (10 s), a weak reference to each FixMatch task timed kept."""
    def measure(task, *a, **kw):
        if task.cfg["semi"]["method"] == "fixmatch":
            timed.append(weakref.ref(task))
            return 10.0
        return 0.01

    return measure
