"""The val guard's line where the last self-training round lost on val by more than val's noise (hunt hBZ #1): a
pool that was 75 % other classes slipped past the pool check, round 2 fell from 72 to 40 on val at 25 val images,
and the guard said only that round 1 scores higher. Now it names the likely cause (wrong pseudo-labels), the pool
check's numbers and what to do, and summary.json and the report keep it beside predicted_with."""

import json
from pathlib import Path

from fewshot.pipeline import PipelineRun

# the hunt's pool check of round 2's pseudo-labels: silent (margin 0.2247)
CHECK = {"quantile": 0.3, "val_confidence": 0.689, "val": 25, "val_share_below": 0.2926, "pool": 400,
         "pool_share_below": 0.37, "class_mix": True, "val_effective": 25.0, "classes_far_below": [],
         "margin": 0.2247, "kept": 173, "suspect": False}


def _val(acc: float, n: int = 25) -> dict:
    return {"mean_acc1": acc, "datasets": {"fm5": {"acc1": acc, "acc5": 100.0, "n": n}}}


def _guard(tmp_path: Path, round1: float, last: float, n: int = 25) -> dict:
    """PipelineRun.guard_on_val on a finished 2-round run: round 1 scored ``round1`` on val, the last round
    (`finetune`, trained on the hunt's pseudo-labels) ``last``; returns summary.json's dict."""
    run = object.__new__(PipelineRun)  # the guard only reads what a finished run holds: no data, no training
    labels = {"pool_size": 400, "pool_labelled": 400, "datasets": {"fm5": {"kept": 173, "pool": 400,
                                                                           "pool_classes_check": CHECK}}}
    run.summary = {"stages": {"finetune_labelled": {"epochs": 5},
                              "finetune": {"epochs": 3, "pseudo_labels": labels}}}
    run.earlier, run.pseudo, run.skipped, run.rounds = {"finetune_labelled": _val(round1, n)}, {"summary": labels}, \
        False, 2
    run.round1_val, run.val_metrics, run.out, run.fdir = round1, _val(last, n), tmp_path, tmp_path / "finetune"
    run.guard_on_val()
    return run.summary


def test_a_last_round_lost_beyond_noise_is_explained(tmp_path, capsys):
    summary = _guard(tmp_path, 72.0, 40.0)
    line = capsys.readouterr().out
    assert summary["predicted_with"] == "finetune_labelled"
    assert "round 1 scores highest on val (72.00 vs 40.00" in line  # the guard's words are kept
    assert "Round 2 lost 32.0 points on val" in line and "at 25 val images" in line
    assert "pseudo-labels were likely wrong" in line and "classes or kinds of images the labelled set lacks" in line
    assert "fm5 37% of 400 pool images against 29% of 25 val images below confidence 0.689" in line
    assert "run.semi_method=off" in line and "--baseline" in line and "clean the pool" in line
    assert len(line.strip().splitlines()) == 1  # one line
    lost = summary["last_round_lost"]
    assert lost["round"] == "round 2" and lost["val_drop"] == 32.0 and lost["val_images"] == 25
    assert 25 < lost["val_noise"] < 32  # 2 binomial standard errors at the pooled 56 %: 28.1 points
    assert lost["why"] in line
    json.dumps(summary)  # summary.json takes it


def test_a_loss_within_val_noise_says_nothing_more(tmp_path, capsys):
    summary = _guard(tmp_path, 72.0, 60.0)  # 12 points at 25 val images: noise
    line = capsys.readouterr().out
    assert summary["predicted_with"] == "finetune_labelled" and "round 1 scores highest on val" in line
    assert "last_round_lost" not in summary and "likely wrong" not in line
    # a large val: the same 12 points are beyond noise; a tiny drop never is (at least 5 points)
    assert "last_round_lost" in _guard(tmp_path, 72.0, 60.0, n=500)
    assert "last_round_lost" not in _guard(tmp_path, 99.0, 96.0, n=100000)


def test_a_last_round_that_wins_or_has_no_pseudo_labels_has_no_note(tmp_path, capsys):
    summary = _guard(tmp_path, 40.0, 72.0)
    assert summary["predicted_with"] == "finetune" and "last_round_lost" not in summary
    from fewshot.run_guard import round_loss_note

    assert round_loss_note("round 2", _val(72.0), _val(40.0), None) is None  # a round on the labelled images only
    assert round_loss_note("round 2", _val(72.0), {"mean_acc1": 40.0}, {}) is None  # counts unknown


def test_the_report_shows_why_the_last_round_did_not_predict(tmp_path):
    from fewshot.report.pipeline_runs import _read_summary

    summary = _guard(tmp_path, 72.0, 40.0)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    notes: list[str] = []
    got = _read_summary(tmp_path, notes)
    assert got["predicted_with"] == "finetune_labelled" and not notes
    assert got["last_round_lost"] == summary["last_round_lost"]["why"]
