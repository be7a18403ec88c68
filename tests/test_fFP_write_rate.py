"""Review rev93 of fFG's measured checkpoint write rate and MoCo's after-MoCo keep-back: MoCo dropped where that
keep-back does not fit (and only there), the rate MoCo's and a round's fit timed reaching the run's closing
estimate, the slowest rate kept and capped at the old 250 MB/s guess, and a checkpoint size that cannot be read
kept out of the "cannot write the checkpoint" error.

Fake step speeds and a frozen clock (helpers.run_clock); nothing is trained."""

from __future__ import annotations

import json
import os
import types

import pytest
import torch

from helpers.run_clock import Planned, fixed_closing, run_cfg, step_clock, stop_at_training
from helpers.run_patch import patch_pipeline, patch_run
from test_fast_path import _TinyTask

GUESS_BPS = 250e6  # WRITE_BYTES_PER_S, the rate before any stage of the session wrote


def _moco_speeds(monkeypatch) -> None:
    """MoCo at 250 ms a step, the fine-tuning at 1 s, the closing work at 2 s, a clock that never moves."""
    step_clock(monkeypatch, 0.0)
    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 0.25 if task.kind == "moco" else 1.0)
    fixed_closing(monkeypatch, 2.0)


def _pretrain_cfg(root, semi: str = "pseudo") -> dict:
    return run_cfg(root, **{"run.semi_method": semi, "run.pretrain": True, "run.pretrain_batch_size": 8,
                            "moco.split_bn_groups": 2})


@pytest.mark.parametrize("minutes, after_moco, trains", [(0.3, True, "supervised"), (0.3, False, "moco"),
                                                          (0.35, True, "moco")])
def test_moco_is_dropped_where_the_work_after_it_would_not_fit(digits_root, tmp_path, monkeypatch,
                                                               real_least_run_holds, minutes, after_moco, trains):
    """0.3 minutes: MoCo's share, less its curves plot and round 1's re-time (after_moco_seconds), cannot hold
    MoCo's least run, so the run fine-tunes without it; the same budget without that keep-back trained MoCo into
    the time round 1's floor needs. 0.35 minutes holds both, and MoCo trains."""
    from fewshot.run_closing import ClosingMixin

    _moco_speeds(monkeypatch)
    stop_at_training(monkeypatch)
    if not after_moco:
        monkeypatch.setattr(ClosingMixin, "after_moco_seconds", lambda self, ft_s: 0.0)
    import fewshot.pipeline as pipeline

    with pytest.raises(Planned, match=f"^{trains}$"):
        pipeline.run_pipeline(_pretrain_cfg(digits_root), tmp_path / "r", minutes, started=0.0)
    state = json.loads((tmp_path / "r" / "run_state.json").read_text())
    assert ("pretrain_skipped" in state) == (trains == "supervised")


def test_the_rate_mocos_fit_timed_reaches_round_1s_closing_estimate(digits_root, tmp_path, monkeypatch,
                                                                     real_least_run_holds):
    """MoCo's checkpoints written at 25 MB/s (Engine.write_rate): every closing estimate before MoCo's fit counts
    the writes at the guess, and round 1's, planned after it, at 25 MB/s."""
    import fewshot.report.plots as plots
    import fewshot.ssl.pretrain as ssl_pretrain
    from fewshot.train import engine

    _moco_speeds(monkeypatch)
    rates = []
    patch_pipeline(monkeypatch, "closing_seconds", lambda *a, **kw: rates.append(kw["write_bps"]) or 2.0)

    def fit(self, resume=False):  # MoCo "trains" (its last.pt, for the export); the fine-tuning stops the run
        if self.task.kind != "moco":
            raise Planned(self.task.kind)
        rates.append("fit")
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.save("last")
        return {}

    monkeypatch.setattr(engine.Engine, "fit", fit)
    monkeypatch.setattr(engine.Engine, "write_rate", lambda self: 25e6)
    monkeypatch.setattr(plots, "plot_pretrain_curves", lambda pdir: None)
    monkeypatch.setattr(ssl_pretrain, "write_knn_metrics", lambda *a, **kw: None)
    import fewshot.pipeline as pipeline

    with pytest.raises(Planned, match="^supervised$"):
        pipeline.run_pipeline(_pretrain_cfg(digits_root), tmp_path / "r", 1.0, started=0.0)
    fit_at = rates.index("fit")
    assert rates[:fit_at] and set(rates[:fit_at]) == {GUESS_BPS}
    assert rates[fit_at + 1:] and set(rates[fit_at + 1:]) == {25e6}


def _run(tmp_path):
    """A PipelineRun as built, before its start-up."""
    from fewshot.pipeline import PipelineRun

    return PipelineRun(run_cfg(tmp_path), tmp_path / "r", 1.0, 0.0, False)


def test_a_rounds_timed_rate_reaches_the_run_and_the_slowest_is_kept(tmp_path, monkeypatch):
    """PipelineRun.finetune passes the rate its stage timed (task.write_bps) on to the run, where the next round's
    closing estimate reads it; a later, faster stage (a quiet moment) and a reused one (None) leave the slowest."""
    import fewshot.pipeline as pipeline

    run = _run(tmp_path)
    run.fcfg = run.infos = run.device = run.ctx = run.state = None
    run.test_set = []
    for rate, kept in ((25e6, 25e6), (100e6, 25e6), (None, 25e6), (10e6, 10e6)):
        stage = types.SimpleNamespace(write_bps=rate)
        monkeypatch.setattr(pipeline, "finetune_stage", lambda *a, done=stage, **kw: (done, {}))
        run.finetune(tmp_path / "f", 0.0, "")
        assert run.writes_bps == kept


def test_a_fast_disk_does_not_count_writes_faster_than_the_old_guess(tmp_path):
    """A tmpfs or fast NVMe wrote at 1 GB/s: the closing estimate still counts the writes at 250 MB/s, as before
    the rate was timed (a run that fitted its budget then must not plan closer to its end now)."""
    run = _run(tmp_path)
    assert run.writes_bps == GUESS_BPS
    run.note_writes(1e9)
    assert run.writes_bps == GUESS_BPS


def test_a_checkpoint_size_that_cannot_be_read_is_no_failed_write(tmp_path, monkeypatch):
    """The write succeeded but os.path.getsize failed: the run goes on with the rate untimed, instead of the
    "cannot write the checkpoint" error, whose advice (free space, --resume) would be wrong."""
    import fewshot.train.engine as engine
    import fewshot.train.saving as saving
    from fewshot.config import resolve
    from fewshot.train.distributed import DistContext

    eng = engine.Engine(_TinyTask(), resolve(flags={"train.device": "cpu", "optim.lr": 0.01}), tmp_path,
                        torch.device("cpu"), DistContext())
    monkeypatch.setattr(eng, "payload", lambda: {"model": {"w": torch.zeros(10)}})

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(saving.os.path, "getsize", unreadable)
    eng.ckpt_dir.mkdir(parents=True, exist_ok=True)
    eng.save("last")
    monkeypatch.undo()
    assert os.path.getsize(eng.ckpt_dir / "last.pt") > 0
    assert eng.write_rate() is None
