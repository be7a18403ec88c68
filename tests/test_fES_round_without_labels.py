"""Self-training's round 2 when round 1 kept no pseudo-label (hunt hBQ, finding 5): it trained on the labelled images
again, a restart at full lr that took val from 70 to 25 in 3.6 s, and the val guard then chose round 1. It is skipped
now, round 1 predicts, and the rest of the budget is left unused."""

from __future__ import annotations

import json

import torch

from helpers.checks import run_main
from test_pipeline import _check_pred_all
from test_run_resume import BASE, _state


def _keep_nothing(monkeypatch) -> None:
    from fewshot.train import semi

    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    monkeypatch.setattr(semi, "select_pseudo_labels", lambda *a, **k: empty)


def test_round_2_is_skipped_when_no_pseudo_label_was_kept(digits_root, tmp_path, monkeypatch,
        real_kept_nothing):
    _keep_nothing(monkeypatch)
    out = tmp_path / "run"
    rc, stdout, err = run_main("run", "--data", digits_root, "--out", out, *BASE)
    assert rc == 0, err
    line = [s for s in stdout.splitlines() if "round 2 skipped (planned, not an error)" in s]
    assert len(line) == 1 and "no pseudo-label was kept" in line[0] and "left unused" in line[0], stdout
    assert line[0].endswith("predicting with round 1"), line[0]
    assert "fine-tuning from the previous round" not in stdout  # no labelled-only restart
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune_labelled"] and summary["predicted_with"] == "finetune_labelled"
    skipped = summary["self_training_skipped"]
    assert skipped["rounds"] == [2] and skipped["why"].startswith("no pseudo-label was kept"), skipped
    assert summary["metrics"]["test"]["checkpoint"].endswith("finetune_labelled/checkpoints/best.pt")
    assert not (out / "finetune").exists()
    assert json.loads((out / "pseudo_labels_round2.json").read_text())["images"] == []  # the labelling's record
    assert _state(out)["self_training"]["skipped_from"] == 2
    _check_pred_all(digits_root, out)
    from fewshot.report.pipeline_runs import _read_summary  # the report's note says why

    assert _read_summary(out, [])["self_training_skipped"].startswith("no pseudo-label was kept")


def test_a_third_round_is_skipped_when_round_2_kept_nothing(digits_root, tmp_path, monkeypatch,
        real_kept_nothing):
    """Round 2 trained on what round 1 kept; round 2's own labelling kept nothing: round 3 is skipped, round 2
    (or round 1, the val guard) predicts."""
    from fewshot.train import semi

    calls = []

    def second_keeps_nothing(logits, dataset_ids, space, *a, **k):
        """Round 1 keeps each dataset's first 20 pool images, labelled by the model, however well round 1 trained
        (rev84 #2: a round 1 at chance kept nothing itself, and round 2 was skipped instead); round 2 keeps none."""
        calls.append(1)
        conf, labels = semi.teacher_probabilities(logits, dataset_ids, space).max(dim=1)
        idx = torch.cat([torch.nonzero(dataset_ids == d).flatten()[:20] for d in range(len(space.names))])
        return (idx, labels[idx], conf[idx]) if len(calls) == 1 else (idx[:0], labels[:0], conf[:0])

    monkeypatch.setattr(semi, "select_pseudo_labels", second_keeps_nothing)
    out = tmp_path / "run"
    rc, stdout, err = run_main("run", "--data", digits_root, "--out", out, *BASE, "run.pseudo_rounds=3")
    assert rc == 0, err
    assert "round 3 skipped (planned, not an error): no pseudo-label was kept: round 2's model" in stdout, stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune_labelled", "finetune_round2"], summary["stages"]
    assert summary["self_training_skipped"]["rounds"] == [3]
    assert summary["predicted_with"] in ("finetune_labelled", "finetune_round2")
    _check_pred_all(digits_root, out)
