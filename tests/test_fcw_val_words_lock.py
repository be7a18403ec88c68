"""The val figure said as what it is, and a failed start's lock file judged by who made it (fCW).

The val accuracy printed at a fine-tuning's end was the best of many evaluations of a tiny val (4 classes x 10
images: best of 130 scores 77.5, test 57.5) without saying so. A failed start removed its lock file only where an
early listing of the folder did not hold one: a lock file another command put there after the listing went, and one
this start made after an earlier one vanished stayed behind.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

import fewshot.run_startup as run_startup
import fewshot.train.finetune as finetune
import fewshot.train.run_dir as run_dir
from fewshot.errors import UserError
from fewshot.pipeline import PipelineRun
from fewshot.report import tables as T
from helpers.checks import run_main

OTHER = "999999 probe\n"  # another command's lock file, not held now (that command ended)
FAST = ("--datasets", "digits", "--img-size", "16", "--batch-size", "16", "--device", "cpu", "--no-progress",
        "train.tensorboard=false")


def train(root, out, *extra):
    return run_main("train", "--data", root, "--out", out, *FAST, *extra)


# ------------------------------------------------------------------------------ the val figure's words


def test_the_val_table_says_it_is_the_best_of_the_logged_scores(digits_root, tmp_path):
    out = tmp_path / "run"
    rc, said, err = train(digits_root, out, "--model", "test_resnet", "--epochs", "2", "train.eval_every=1")
    assert rc == 0, err
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "score" in r]
    compared = sum(2 if "score_raw" in r else 1 for r in scored)
    metrics = json.loads((out / "metrics.json").read_text())
    assert compared >= 2 and metrics["val_scores_compared"] == compared
    n_val = sum(d["n"] for d in metrics["datasets"].values())
    assert (f"the best of {compared} val scores of {n_val} images (a maximum: optimistic; the last evaluation "
            f"{scored[-1]['score']:.2f})") in said, said


def test_val_scores_logged_counts_raw_and_ema_and_skips_rows_without_a_score(tmp_path):
    rows = [{"epoch": 1}, {"epoch": 2, "score": 50.0, "score_raw": 50.0, "score_ema": 40.0}, {"epoch": 3, "score": 25}]
    (tmp_path / "log.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\nnot json\n")
    assert finetune.val_scores_logged(tmp_path) == (3, 25.0)
    assert finetune.val_scores_logged(tmp_path / "none") == (0, None)
    assert finetune.best_of_words(1, 30, 25.0) == ""  # one score: no maximum to speak of


def test_summary_json_says_beside_each_rounds_val_how_many_scores_it_is_the_best_of(tmp_path):
    run = PipelineRun.__new__(PipelineRun)
    run.summary = {"stages": {"finetune_labelled": {"epochs": 3}, "finetune": {"epochs": 2}}}
    run.pseudo, run.skipped, run.round1_val, run.out = object(), False, 60.0, tmp_path
    run.earlier = {"finetune_labelled": {"mean_acc1": 60.0, "val_scores_compared": 130}}
    run.fdir, run.val_metrics = tmp_path / "finetune", {"mean_acc1": 70.0, "val_scores_compared": 40}
    run.guard_on_val()
    stages = run.summary["stages"]
    assert stages["finetune_labelled"] == {"epochs": 3, "val_mean_acc1": 60.0, "val_scores_compared": 130}
    assert stages["finetune"] == {"epochs": 2, "val_mean_acc1": 70.0, "val_scores_compared": 40}


def test_the_reports_val_table_and_rounds_say_the_figure_is_a_maximum(tmp_path):
    scores = {"mode": "known", "mean_acc1": 77.5, "datasets": {"d": {"acc1": 77.5, "acc5": 100.0, "n": 40}}}
    run = SimpleNamespace(label="r", metrics={**scores, "val_scores_compared": 130, "best_epoch": 4},
                          metrics_known=scores, metrics_unknown=None, from_log=False, best_epoch=4)
    assert T.dataset_table(run).title == ("r: val accuracy (best epoch 4, the best of 130 val scores: optimistic; "
                                          "metrics.json mode: known)")
    run.metrics = scores  # an older run's metrics.json: no count, no words
    assert T.dataset_table(run).title == "r: val accuracy (best epoch 4; metrics.json mode: known)"
    rounds = [{"round": 1, "stage": "finetune_labelled", "val_mean_acc1": 50.0, "pseudo_labels": None}]
    assert T.self_training_table("r", rounds).columns[-1] == "val mean acc@1 (best.pt's: a maximum, optimistic)"


# ------------------------------------------------------------------------------ a failed start's lock file


def _between_listing_and_lock(monkeypatch, module, change):
    """``change(folder)`` run where the start has listed the folder and not yet locked it."""
    real = module.ensure_writable_dir

    def then_change(folder, *args, **kwargs):
        change(folder)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(module, "ensure_writable_dir", then_change)


def _another_commands_lock_file(folder):
    (folder / ".fewshot.lock").write_text(OTHER)


def test_a_failed_train_start_keeps_a_lock_file_another_command_made_after_its_listing(digits_root, tmp_path,
                                                                                       monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    _between_listing_and_lock(monkeypatch, run_dir, _another_commands_lock_file)
    rc, _, err = train(digits_root, out, "--model", "no_such_model_xyz", "--epochs", "1")
    assert rc == 2 and "no_such_model_xyz" in err, err
    assert os.listdir(out) == [".fewshot.lock"]  # its content is this start's pid now (written on locking)


def test_a_failed_train_start_removes_the_lock_file_it_made_after_an_earlier_one_vanished(digits_root, tmp_path,
                                                                                         monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".fewshot.lock").write_text(OTHER)  # listed by the start, then removed by its holder's own undo
    _between_listing_and_lock(monkeypatch, run_dir, lambda folder: (folder / ".fewshot.lock").unlink())
    rc, _, err = train(digits_root, out, "--model", "no_such_model_xyz", "--epochs", "1")
    assert rc == 2 and "no_such_model_xyz" in err, err
    assert os.listdir(out) == []


def _refused_after_the_lock(monkeypatch):
    def refuse(device):
        raise UserError("refused after the lock (fCW test)")

    monkeypatch.setattr(run_startup, "resolve_device", refuse)


@pytest.mark.parametrize("there_before", [False, True])
def test_a_failed_run_start_removes_only_a_lock_file_it_made(digits_root, tmp_path, monkeypatch, there_before):
    out = tmp_path / "run"
    out.mkdir()
    if there_before:  # listed, then gone; the start makes its own, which its undo removes
        (out / ".fewshot.lock").write_text(OTHER)
        _between_listing_and_lock(monkeypatch, run_startup, lambda folder: (folder / ".fewshot.lock").unlink())
    else:  # not listed, then another command's: it stays
        _between_listing_and_lock(monkeypatch, run_startup, lambda folder: _another_commands_lock_file(out))
    _refused_after_the_lock(monkeypatch)
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "1", "--device", "cpu")
    assert rc == 2 and "refused after the lock" in err, err
    assert os.listdir(out) == ([] if there_before else [".fewshot.lock"])
