"""Self-training's round 2 when no pool image was left to label (review rev84, #5): the run said "no unlabeled pool
...: the next round trains on the labelled images only", then "round 2 skipped ... round 1's model was not sure
enough of any of the 0 pool images it labelled". Now one account: nothing was left to label, round 2 is skipped."""

from __future__ import annotations

import json

import torch

from helpers.checks import run_main
from test_run_resume import BASE


def test_a_round_with_no_pool_image_to_label_is_skipped_in_one_consistent_account(digits_root, tmp_path, monkeypatch,
        real_kept_nothing):
    from fewshot import run_pseudo

    monkeypatch.setattr(run_pseudo, "pool_share_in_time", lambda *a, **k: torch.zeros(0, dtype=torch.long))
    out = tmp_path / "run"
    rc, stdout, err = run_main("run", "--data", digits_root, "--out", out, *BASE)
    assert rc == 0, err
    assert "labelled images only" not in stdout and "of the 0 pool images" not in stdout, stdout
    assert "[run] no pool image was left to label" in stdout, stdout
    line = [s for s in stdout.splitlines() if "round 2 skipped (planned, not an error)" in s]
    assert len(line) == 1 and "no pseudo-label was kept: no pool image was left to label" in line[0], stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune_labelled"] and summary["self_training_skipped"]["rounds"] == [2]
