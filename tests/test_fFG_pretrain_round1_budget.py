"""`fewshot run --pretrain --budget-minutes 1` on a busy machine ended 63-65 s in (review of fFE's hunt): after MoCo,
round 1's planning re-timed its step (the later rounds did not fit), which MoCo's keep-back did not count, and round
1's checkpoint writes were counted at a guessed 250 MB/s where the machine wrote at 50-190 MB/s; MoCo's curves plot
(1.2-2.9 s) was not counted either. MoCo now keeps back the re-time's steps and its plot too, and the closing work
counts the writes at the rate the stage before timed.

Fake step speeds and a frozen clock (helpers.run_clock), so the keep-back is exact; the write rate on a fake
perf_counter. Nothing is trained."""

from __future__ import annotations

import json
import types

import pytest
import torch

from helpers.run_clock import Planned, fixed_closing, run_cfg, step_clock, stop_at_training
from helpers.run_patch import patch_run
from test_fast_path import _TinyTask

FT_STEP_S = 3.0  # the fine-tuning's step: MoCo's keep-back is then more than 0 in 1 minute


def _kept_back(root, out, monkeypatch, semi: str) -> float:
    """MoCo's keep-back (run_state.json's kept_s) of a 1-minute --pretrain run with ``semi``: MoCo at 10 ms a step,
    the fine-tuning at FT_STEP_S, the closing work at 2 s, a clock that never moves."""
    def measure(task, *a, **kw):
        return 0.01 if task.kind == "moco" else FT_STEP_S

    step_clock(monkeypatch, 0.0)
    patch_run(monkeypatch, "measure_step_seconds", measure)
    fixed_closing(monkeypatch, 2.0)
    stop_at_training(monkeypatch)
    cfg = run_cfg(root, **{"run.semi_method": semi, "run.pretrain": True, "run.pretrain_batch_size": 8,
                           "moco.split_bn_groups": 2})
    with pytest.raises(Planned, match="moco"):
        import fewshot.pipeline as pipeline

        pipeline.run_pipeline(cfg, out, 1.0, started=0.0)
    return json.loads((out / "run_state.json").read_text())["stages"]["pretrain"]["kept_s"]


def test_moco_keeps_back_round_1s_re_time_where_self_training_plans_later_rounds(digits_root, tmp_path, monkeypatch,
                                                                                 real_least_run_holds):
    """The same speeds and budget: with self-training (2 rounds), MoCo keeps back 2 steps of the fine-tuning more
    than without it, the re-time round 1's planning makes where the later rounds do not fit (a warm-up and a step)."""
    without = _kept_back(digits_root, tmp_path / "off", monkeypatch, "off")
    with_rounds = _kept_back(digits_root, tmp_path / "pseudo", monkeypatch, "pseudo")
    assert without > 0.0
    assert with_rounds == pytest.approx(without + 2 * FT_STEP_S)


class _Run:
    """What ClosingMixin.closing reads of PipelineRun, for an estimate without a stage planned."""

    def __init__(self):
        from fewshot.run_closing import ClosingMixin

        self.__class__ = type("Run", (_Run, ClosingMixin), {})
        self.report_plan, self.budget_s, self.test_set = {"figure_s": 0.06, "seconds": None}, 60.0, []
        self.report_stages, self.balance, self.semi, self.t_start = 0, "off", "off", 0.0
        self.writes_bps = 250e6  # as PipelineRun.__init__ sets it


@pytest.mark.parametrize("semi, retime_steps", [("pseudo", 2), ("off", 0)])
def test_moco_keeps_back_its_curves_plot_at_the_machines_figure_speed(semi, retime_steps):
    """What MoCo keeps back beyond the closing work and the calibration: its curves plot, at a figure speed timed
    3x slower than FIGURE_S 3x CURVES_S, and with self-training round 1's re-time (2 steps of 0.5 s)."""
    from fewshot.run_budget import FIGURE_S
    from fewshot.run_closing import CURVES_S

    run = _Run()
    run.semi, run.r = semi, {"pseudo_rounds": 2}
    run.report_plan["figure_s"] = 3 * FIGURE_S
    assert run.after_moco_seconds(0.5) == pytest.approx(3 * CURVES_S + retime_steps * 0.5)


def test_the_closing_estimate_counts_checkpoint_writes_at_the_rate_the_stage_before_timed(monkeypatch):
    """A stage that wrote at 25 MB/s: the next stage's closing estimate counts its last.pt and best.pt (24 bytes a
    parameter) at that rate, not at 250 MB/s; a stage that wrote nothing (None) leaves the rate as it was."""
    import fewshot.run_closing as run_closing

    monkeypatch.setattr(run_closing, "report_seconds", lambda *a, **kw: (0.0, 0.0))
    task = types.SimpleNamespace(model=torch.nn.Linear(1000, 1000), cfg={"train": {"ema": False}})
    n_params = sum(p.numel() for p in task.model.parameters())
    run = _Run()
    guessed = run.closing(task, 0.0, per_test_image=0.0)
    run.note_writes(25e6)
    run.note_writes(None)
    timed = run.closing(task, 0.0, per_test_image=0.0)
    assert timed - guessed == pytest.approx(n_params * 24 * (1 / 25e6 - 1 / 250e6))


def test_the_engine_times_the_rate_of_its_checkpoint_writes(tmp_path, monkeypatch):
    """Engine.write_rate: the bytes of every checkpoint written over their timed seconds (2 s a write on a fake
    clock); None before any write."""
    import fewshot.train.engine as engine
    import fewshot.train.saving as saving
    from fewshot.config import resolve
    from fewshot.train.distributed import DistContext

    cfg = resolve(flags={"train.device": "cpu", "optim.lr": 0.01})
    eng = engine.Engine(_TinyTask(), cfg, tmp_path, torch.device("cpu"), DistContext())
    assert eng.write_rate() is None
    clock, write = {"t": 0.0}, saving.save_checkpoint

    def slow_write(path, payload):
        write(path, payload)
        clock["t"] += 2.0

    monkeypatch.setattr(saving, "time", types.SimpleNamespace(perf_counter=lambda: clock["t"]))
    monkeypatch.setattr(saving, "save_checkpoint", slow_write)
    monkeypatch.setattr(eng, "payload", lambda: {"model": {"w": torch.zeros(1000)}})
    eng.ckpt_dir.mkdir(parents=True, exist_ok=True)
    eng.save("last")
    eng.save("best")
    size = (eng.ckpt_dir / "last.pt").stat().st_size + (eng.ckpt_dir / saving.BEST_PENDING).stat().st_size
    assert eng.write_rate() == pytest.approx(size / 4.0)
