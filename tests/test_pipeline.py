"""`fewshot run` end to end on tiny real data: MoCo -> export -> fine-tune -> predict, in a budget.

Checks what the run leaves behind (pred_all.json against the test folders, summary stages, the
planned time-based schedules, the measured defaults), not wall-clock figures: a planned stage is
never shorter than 10 s, so a 0.2-minute budget gives two short stages.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers.checks import run_main
from test_cli import test_ids


def _run(root: Path, out: Path, *extra: str) -> dict:
    rc, _, err = run_main("run", "--data", root, "--out", out, "--budget-minutes", "0.2", "--model", "test_resnet",
                          "--device", "cpu", "--no-progress", "run.report=false", "run.pretrain_batch_size=16",
                          "train.batch_size=16", *extra)
    assert rc == 0, err
    return json.loads((out / "summary.json").read_text())


def _check_pred_all(root: Path, out: Path) -> None:
    pred = json.loads((out / "pred_all.json").read_text())
    assert isinstance(pred.pop("n_parameters"), int)
    names = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
    assert sorted(pred) == names
    for name in names:
        n_classes = len([p for p in (root / name / "train").iterdir() if p.is_dir()])
        assert set(pred[name]) == test_ids(root, name)
        assert all(isinstance(v, int) and 0 <= v < n_classes for v in pred[name].values())


@pytest.fixture(scope="module")
def moco_run(digits_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "moco"
    return out, _run(digits_root, out)


def test_run_pretrains_exports_finetunes_and_predicts(digits_root, moco_run):
    out, summary = moco_run
    assert set(summary["stages"]) == {"pretrain", "finetune"}
    assert summary["stages"]["pretrain"]["epochs"] >= 1 and summary["stages"]["finetune"]["epochs"] >= 1
    assert set(summary["stages"]["pretrain"]["knn_acc1"]) >= {"mean"}
    assert (out / "backbone.safetensors").is_file()
    _check_pred_all(digits_root, out)
    scores = summary["metrics"]["pred_all_score"]  # scored against the answer keys next to the test folders
    assert set(scores) == set(json.loads((out / "pred_all.json").read_text())) - {"n_parameters"}


def test_run_plans_time_based_stages_with_the_measured_defaults(moco_run):
    out, _ = moco_run
    pre = yaml.safe_load((out / "pretrain" / "config.yaml").read_text())
    fine = yaml.safe_load((out / "finetune" / "config.yaml").read_text())
    for cfg in (pre, fine):
        assert cfg["sched"]["time_based"] is True
        assert cfg["train"]["budget_minutes"] > 0 and cfg["train"]["epochs"] >= 8
    assert pre["moco"]["knn_every"] >= 1 and fine["train"]["eval_every"] >= 1
    assert pre["moco"]["momentum"] == 0.99 and pre["optim"]["name"] == "sgd"
    assert fine["semi"]["method"] == "off"  # FixMatch after MoCo measured worse (docs/recipes.md)
    assert fine["model"]["weights"].endswith("backbone.safetensors") and fine["optim"]["lr"] == 2e-3


def test_run_without_pretraining_is_the_random_init_baseline(digits_root, tmp_path):
    out = tmp_path / "scratch"
    summary = _run(digits_root, out, "--no-pretrain")
    assert set(summary["stages"]) == {"finetune"} and not (out / "pretrain").exists()
    fine = yaml.safe_load((out / "finetune" / "config.yaml").read_text())
    assert fine["model"]["weights"] is None and fine["optim"]["lr"] == 4e-3  # chosen on val
    _check_pred_all(digits_root, out)


def test_run_rejects_a_non_positive_budget(digits_root, tmp_path):
    rc, _, err = run_main("run", "--data", digits_root, "--out", tmp_path / "x", "--budget-minutes", "0")
    assert rc == 2 and "--budget-minutes" in err
