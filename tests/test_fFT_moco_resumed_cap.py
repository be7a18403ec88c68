"""A `fewshot run --pretrain` stopped inside MoCo and resumed ran 67 s of 60 and left the fine-tuning 0 s (hunt hBU
#1): the resumed MoCo's cap was taken before its task was built (the build, the pool's decode and last.pt's read came
on top), its keep-back was the first session's kept_s (0 s, against half of the whole budget) and its epoch cap (4x
its plan) let it run into a second epoch and pay one more kNN evaluation. Now the cap is taken once the task is
built, the keep-back is counted again from the plan's after_s, and the epoch cap holds what the budget left holds.

pretrain_stage on a fake clock with a fake MoCo task and Engine: nothing is built or trained."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from fewshot import run_stages

STEP_S = 0.5  # MoCo's logged step
PER_EPOCH = 31
BUILD_S = 6.0  # the resumed task's build and its pool's decode


class _State:
    def __init__(self, entry: dict):
        self.data, self.entry = {}, entry

    def status(self, name):
        return self.entry["status"]

    def stage(self, name):
        return self.entry

    def record(self, name, status, seconds, **fields):
        self.entry.update(status=status, **fields)


def _resumed(tmp_path, monkeypatch, entry: dict, end_time: float, run_end: float) -> dict:
    """pretrain_stage resumed at 100 s on a fake clock, its stage stopped at global step 20 after 10 s of training
    with a 30 s plan. Returns what its Engine saw: the clock at its start, train.budget_minutes and train.epochs."""
    from fewshot.ssl import export, pretrain
    from fewshot.report import plots
    from fewshot.train import engine

    clock = {"t": 100.0}
    monkeypatch.setattr(run_stages, "time", SimpleNamespace(monotonic=lambda: clock["t"]))
    pdir = tmp_path / "pretrain"
    (pdir / "checkpoints").mkdir(parents=True)
    (pdir / "checkpoints" / "last.pt").write_bytes(b"0" * 1000)
    pcfg = {"train": {"seed": 0, "budget_minutes": 0.5, "epochs": 8}, "sched": {"time_based": True}}
    monkeypatch.setattr(run_stages, "stage_config", lambda sdir, cfg: pcfg)
    monkeypatch.setattr(run_stages, "read_last", lambda last: {"train_seconds": 10.0, "global_step": 20})
    monkeypatch.setattr(run_stages, "trained_speeds", lambda path: (STEP_S, 1.0))
    monkeypatch.setattr(run_stages, "drop_best_aside", lambda pdir: None)

    class Task:
        def __init__(self, *a, **k):
            clock["t"] += BUILD_S

        def plan_epoch(self, epoch):
            return list(range(PER_EPOCH))

    seen = {}

    class Engine:
        def __init__(self, task, cfg, *a):
            seen.update(at=clock["t"], budget_s=cfg["train"]["budget_minutes"] * 60, epochs=cfg["train"]["epochs"])

        def fit(self, resume):
            return {}

        def epochs_trained(self):
            return 1.0

        def write_rate(self):
            return None

    monkeypatch.setattr(pretrain, "MoCoTask", Task)
    monkeypatch.setattr(pretrain, "write_knn_metrics", lambda *a, **k: None)
    monkeypatch.setattr(engine, "Engine", Engine)
    monkeypatch.setattr(plots, "plot_pretrain_curves", lambda pdir: None)
    monkeypatch.setattr(export, "export_backbone", lambda pdir, weights: None)
    cfg = {"run": {"pretrain_share": 0.5}}  # its words on a cap that left nothing name the share
    run_stages.pretrain_stage(cfg, None, None, None, tmp_path, end_time, _State(entry), 0.0,
                              run_end=run_end)
    return seen


def test_a_resumed_moco_stage_ends_where_the_fine_tuning_keeps_its_least_time(tmp_path, monkeypatch):
    # the plan needs 48.5 s after MoCo's deadline; this session leaves 30 s after it (130 to 160): 18.5 s kept back
    entry = {"status": "began", "fit_at": 1.0, "kept_s": 0.0, "after_s": 48.5}
    seen = _resumed(tmp_path, monkeypatch, entry, end_time=130.0, run_end=160.0)
    assert seen["at"] == 100.0 + BUILD_S
    ends = seen["at"] + seen["budget_s"] - 10.0  # the Engine's clock goes on from the 10 s trained before
    assert ends + STEP_S <= 160.0 - 48.5 + 1e-6, seen  # the step past its deadline included
    assert ends == pytest.approx(111.5 - STEP_S)


def test_the_cap_keeps_back_the_read_of_last_pt(tmp_path, monkeypatch):
    """Review rev96 #4: last.pt's read (its size at the write rate) comes off the cap; a 1000-byte file at
    500 B/s reads in 2 s."""
    monkeypatch.setattr(run_stages, "WRITE_BYTES_PER_S", 500.0)
    entry = {"status": "began", "fit_at": 1.0, "kept_s": 0.0, "after_s": 48.5}
    seen = _resumed(tmp_path, monkeypatch, entry, end_time=130.0, run_end=160.0)
    assert seen["at"] + seen["budget_s"] - 10.0 == pytest.approx(111.5 - STEP_S - 2.0)


def test_the_cap_counts_the_task_build_with_the_recorded_keep_back_of_an_older_run(tmp_path, monkeypatch):
    entry = {"status": "began", "fit_at": 1.0, "kept_s": 4.0}  # no after_s: its kept_s, as before
    seen = _resumed(tmp_path, monkeypatch, entry, end_time=130.0, run_end=160.0)
    assert seen["at"] + seen["budget_s"] - 10.0 + STEP_S <= 126.0 + 1e-6, seen
    assert entry["fit_at"] == pytest.approx(seen["at"] - 10.0)


def test_the_keep_back_is_counted_again_from_the_plans_need():
    assert run_stages.resumed_keep_back({"kept_s": 0.0, "after_s": 20.0}, 130.0, 160.0) == 0.0
    assert run_stages.resumed_keep_back({"kept_s": 0.0, "after_s": 35.0}, 130.0, 160.0) == 5.0
    assert run_stages.resumed_keep_back({"kept_s": 3.0}, 130.0, 160.0) == 3.0
    assert run_stages.resumed_keep_back({"kept_s": 3.0, "after_s": 35.0}, 130.0, None) == 3.0


def test_a_fresh_plan_records_what_it_needs_after_mocos_deadline(digits_root, tmp_path, monkeypatch,
                                                                real_least_run_holds):
    from test_fFG_pretrain_round1_budget import _kept_back

    kept = _kept_back(digits_root, tmp_path / "r", monkeypatch, "off")
    entry = json.loads((tmp_path / "r" / "run_state.json").read_text())["stages"]["pretrain"]
    assert kept > 0 and entry["after_s"] > kept, entry  # the time after MoCo's share counts in after_s only
