"""summary.json's ``closing_seconds``: the closing work as the stage that predicts planned it beside the time it took
(issue 8: 1- and 2-minute runs ended 6-27 s early, and nothing in the run folder said which part of the plan was
off). No wall-clock assertions: the closing estimate is replaced, and the record is checked against the run's own
recorded length."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from fewshot.config import resolve
from helpers.run_patch import patch_pipeline


def _cfg(root, **flags) -> dict:
    return resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16,
                          "train.device": "cpu", "train.progress": False, "train.batch_size": 16, "run.report": False,
                          **flags})


def test_summary_records_the_closing_estimate_beside_the_real_closing_time(digits_root, tmp_path, monkeypatch):
    import fewshot.pipeline as pipeline
    from fewshot.run_budget import CLOSING_SHARE

    closing_s, budget_s = 1.5, 3.0
    patch_pipeline(monkeypatch, "closing_seconds", lambda *a, **kw: closing_s)
    out = tmp_path / "r"
    pipeline.run_pipeline(_cfg(digits_root, **{"run.semi_method": "off"}), out, budget_s / 60)
    summary = json.loads((out / "summary.json").read_text())
    record = summary["closing_seconds"]
    assert record["estimated"] == pytest.approx(closing_s)
    assert record["margin"] == pytest.approx(CLOSING_SHARE * budget_s, abs=0.01)
    # real counts from the end of the last stage's training (run_state.json) to the run's end, and training_late
    # says how far that end was from the plan's latest: together they make up the run's own overrun (or time left)
    state = json.loads((out / "run_state.json").read_text())
    trained_at = max(s["trained_at"] for s in state["stages"].values() if "trained_at" in s)
    assert record["real"] == pytest.approx(summary["seconds"] - trained_at, abs=0.02)
    planned = record["estimated"] + record["margin"]
    assert record["real"] + record["training_late"] - planned == pytest.approx(summary["seconds"] - budget_s,
                                                                                abs=0.03)


def test_a_skipped_last_round_drops_the_closing_plan_of_a_round_that_ended_at_its_share():
    """A middle round's plan is recorded with its speeds, but it ends at its share: when the round after it is
    skipped, that round predicts, and its plan is no closing estimate to compare with."""
    from fewshot.pipeline import PipelineRun

    run = PipelineRun.__new__(PipelineRun)
    run.budget_s, run.t_start, run.last_end = 60.0, 0.0, 60.0
    run.plan_closing(20.0)
    assert run.closing_record(50.0) == {"estimated": pytest.approx(19.1), "margin": 0.9, "real": 10.0}  # no end
    # recorded by a stage: counted from the plan's, without a lateness nobody measured
    run.state = SimpleNamespace(data={"stages": {"finetune_labelled": {"trained_at": 44.0}}})
    assert run.closing_record(50.0)["real"] == 6.0 and run.closing_record(50.0)["training_late"] == 4.0
    run.skip, run.report_stages, run.state = {}, 3, SimpleNamespace(save=lambda: None)
    run.decide(2, 3, "no time")
    assert run.closing_record(50.0) is None
