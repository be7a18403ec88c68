"""Review rev117 of a resumed MoCo stage's summary.json record: one record for the run, so a later session's
fine-tuning skip replaced MoCo's (#2). The skip line's figure and the no-time words are tested in
test_fHE_moco_stop_left (unit) and test_fGY_moco_resume_words (end to end)."""

from __future__ import annotations

import json
import types
from html import unescape

import pytest

from fewshot.pipeline import PipelineRun
from helpers.checks import run_main
from test_fEU_compare_width import _pipeline, _stage_config


def test_a_later_sessions_fine_tuning_skip_keeps_moco_s_record():
    """Session 2 skipped MoCo's training, session 3 the fine-tuning's (the summary carries over, run_state.json):
    both records stay; a stage's own later record replaces its earlier one."""
    run = types.SimpleNamespace(summary={"stages": {}})
    moco, tune = {"left_s": 0.2, "why": "MoCo's why"}, {"left_s": 0.4, "why": "the fine-tuning's why"}
    PipelineRun.note_resumed_skip(run, "pretrain", moco)
    PipelineRun.note_resumed_skip(run, "finetune", tune)
    assert run.summary["resumed_training_skipped"] == [{"stage": "pretrain", **moco}, {"stage": "finetune", **tune}]
    PipelineRun.note_resumed_skip(run, "finetune", {**tune, "left_s": 0.1})
    assert run.summary["resumed_training_skipped"] == [{"stage": "pretrain", **moco},
                                                       {"stage": "finetune", **tune, "left_s": 0.1}]
    old = types.SimpleNamespace(summary={"resumed_training_skipped": {"stage": "pretrain", **moco}})  # one record
    PipelineRun.note_resumed_skip(old, "finetune", tune)
    assert old.summary["resumed_training_skipped"] == [{"stage": "pretrain", **moco}, {"stage": "finetune", **tune}]


@pytest.mark.parametrize("records", [
    [{"stage": "pretrain", "why": "MoCo's why"}, {"stage": "finetune", "why": "the fine-tuning's why"}],
    {"stage": "pretrain", "why": "MoCo's why"},  # a run summarised with one record
])
def test_the_report_says_each_stage_s_skip(tmp_path, records):
    folder = _pipeline(tmp_path / "r_skip", {"finetune": (42.25, _stage_config("pseudo"))})
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "resumed_training_skipped": records}))
    rc, _, err = run_main("report", folder, "--out", tmp_path / "rep", "--no-progress")
    assert rc == 0, err
    page = unescape((tmp_path / "rep" / "index.html").read_text(encoding="utf-8"))
    moco = "r_skip: the resumed stage pretrain trained no further (planned, not an error): MoCo's why"
    both = f"{moco}; the resumed stage finetune trained no further (planned, not an error): the fine-tuning's why."
    assert (both if isinstance(records, list) else f"{moco}.") in page, page
