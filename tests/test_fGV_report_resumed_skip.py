"""summary.json's `resumed_training_skipped` (a `fewshot run` stage resumed with too little time left trained no
further, run_stages.skip_short_resumed_training) in the report: the console and summary.json said it, the report
showed the stage's short training without a word. Run folders are written by hand (no training)."""

from __future__ import annotations

import json
from html import unescape

from fewshot.run_words import resumed_short_words
from helpers.checks import run_main
from test_fEU_compare_width import _pipeline, _stage_config

WHY = resumed_short_words(0.4, 0.6, 0.1, startup=57.0)  # the words the run wrote: the cause, left and needed


def _skipped_run(tmp_path, record: dict | None):
    folder = _pipeline(tmp_path / "r_skip", {"finetune_labelled": (41.25, _stage_config("pseudo")),
                                             "finetune": (42.25, _stage_config("pseudo"))})
    summary = json.loads((folder / "summary.json").read_text())
    if record is not None:
        summary["resumed_training_skipped"] = record
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_the_report_says_why_a_resumed_stage_trained_no_further(tmp_path):
    record = {"stage": "finetune", "left_s": 0.4, "least_s": 0.6, "step_s": 0.1, "why": WHY}
    folder = _skipped_run(tmp_path, record)
    rc, _, err = run_main("report", folder, "--out", tmp_path / "rep", "--no-progress")
    assert rc == 0, err
    page = unescape((tmp_path / "rep" / "index.html").read_text(encoding="utf-8"))
    note = f"r_skip: the resumed stage finetune trained no further (planned, not an error): {WHY}."
    assert note in page, page
    assert page.count("trained no further") == 1, "once per run folder, not once per stage"
    for said in ("57 s", "0.4 s", "0.6 s", "this session's start-up"):  # what took the time, left and needed
        assert said in WHY, WHY


def test_a_run_without_the_record_or_with_a_broken_one_has_no_note(tmp_path):
    from fewshot.report.pipeline_runs import _read_summary

    for k, record in enumerate((None, {"stage": "finetune"}, {"why": WHY}, "finetune")):
        folder = _skipped_run(tmp_path / str(k), record)
        notes: list[str] = []
        assert "resumed_training_skipped" not in _read_summary(folder, notes) and not notes, record
