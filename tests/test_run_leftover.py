"""`fewshot run` with time left after self-training's round 1 that cannot hold the pool's labelling, the layout problems
of every split in one error, and a stage's plan line at its floor of steps."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from types import SimpleNamespace

import pytest

from helpers.checks import run_main
from helpers.run_patch import patch_pipeline, patch_run
from test_pipeline import _check_pred_all
from test_run_resume import _cmd, _state, sigterm_in_stage

SHORT = ("--budget-minutes", "0.03")  # after BASE's 0.2, so it wins: the rounds' decisions are patched (suite time)


def _no_time_to_label_the_pool(monkeypatch) -> None:
    """Round 1 holds at any speed; before round 2 the time left holds a round without the pool's labelling
    (labelled_only_seconds), not one with it (later_rounds_seconds)."""
    patch_pipeline(monkeypatch, "after_round1_seconds", lambda *a: -1e6)
    patch_pipeline(monkeypatch, "later_rounds_seconds", lambda *a: 1e6 if a[3] else -1e6)
    patch_pipeline(monkeypatch, "labelled_only_seconds", lambda *a: -1e6)


def test_time_left_without_room_to_label_the_pool_goes_on_training_on_the_labelled_images(
        digits_root, tmp_path, monkeypatch, real_time_holds):
    """Round 2 was skipped with 20 s of a 1-minute budget left, unused, and round 1 at 4.5 epochs (val at chance).
    The last round trains round 1's model on the labelled images instead; the val guard picks what predicts."""
    _no_time_to_label_the_pool(monkeypatch)
    out = tmp_path / "run"
    rc, stdout, err = run_main(*_cmd(digits_root, out, *SHORT))
    assert rc == 0, err
    assert "round 2 trains on the labelled images only (planned, not an error)" in stdout
    assert "continuing round 1's model at a tenth of its lr" in stdout and "on the labelled images again" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune_labelled", "finetune"] and "self_training_skipped" not in summary
    assert "pseudo_labels" not in summary["stages"]["finetune"] and summary["stages"]["finetune"]["epochs"] > 0
    told = summary["self_training_labelled_only"]
    assert told["round"] == 2 and told["planned"] == 2 and "too little for labelling the pool" in told["why"]
    assert not (out / "pseudo_labels_round2.json").exists()
    vals = {n: summary["stages"][n]["val_mean_acc1"] for n in ("finetune_labelled", "finetune")}
    assert summary["predicted_with"] == max(vals, key=lambda n: (vals[n], n == "finetune"))
    assert _state(out)["self_training"]["labelled_only"] == 2
    _check_pred_all(digits_root, out)
    from fewshot.report.pipeline_runs import _read_summary  # the report's note: its table row shows no pseudo-labels

    assert "too little for labelling the pool" in _read_summary(out, [])["self_training_labelled_only"]


def test_a_middle_round_without_time_to_label_is_the_last_and_the_rounds_after_it_are_dropped(
        digits_root, tmp_path, monkeypatch, real_time_holds):
    _no_time_to_label_the_pool(monkeypatch)
    out = tmp_path / "run"
    rc, stdout, err = run_main(*_cmd(digits_root, out, "run.pseudo_rounds=3", *SHORT))
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune_labelled", "finetune"]
    told = summary["self_training_labelled_only"]
    assert told["round"] == 2 and told["planned"] == 3 and "(round 3 dropped)" in told["why"]


def stopped_in_the_labelled_only_round(monkeypatch, root, out) -> None:
    """A short run of ``root`` into ``out`` whose round 2 is labelled-only, stopped (SIGTERM) in its second step."""
    from fewshot.train.supervised import SupervisedTask

    with monkeypatch.context() as mp:
        _no_time_to_label_the_pool(mp)
        sigterm_in_stage(mp, "finetune", SupervisedTask, 2)
        rc, _, err = run_main(*_cmd(root, out, *SHORT))
    assert rc == 128 + signal.SIGTERM, err


def test_a_stopped_labelled_only_round_is_continued_on_resume_without_labelling_the_pool(
        digits_root, tmp_path, monkeypatch, real_time_holds):
    """The decision is kept in run_state.json: on --resume the stopped round continues from its last.pt even where
    the time would now hold the pool's labelling."""
    out = tmp_path / "run"
    stopped_in_the_labelled_only_round(monkeypatch, digits_root, out)
    assert _state(out)["self_training"]["labelled_only"] == 2
    patch_pipeline(monkeypatch, "later_rounds_seconds", lambda *a: -1e6)  # every round would fit now
    rc, stdout, err = run_main(*_cmd(digits_root, out, *SHORT), "--resume")
    assert rc == 0, err
    # a loaded machine can leave it no time to train on: "resumed from ...: no time is left" (fGW)
    assert "finetune_labelled: finished before the stop" in stdout
    assert re.search(r"finetune: (continuing|resumed) from", stdout), stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune_labelled", "finetune"]
    assert summary["self_training_labelled_only"]["round"] == 2 and "pseudo_labels" not in summary["stages"]["finetune"]
    assert not (out / "pseudo_labels_round2.json").exists()
    _check_pred_all(digits_root, out)


def test_no_time_even_for_a_round_on_the_labelled_images_still_skips_it(digits_root, tmp_path, monkeypatch,
                                                                        real_time_holds):
    patch_pipeline(monkeypatch, "after_round1_seconds", lambda *a: -1e6)
    patch_pipeline(monkeypatch, "later_rounds_seconds", lambda *a: 1e6)
    patch_pipeline(monkeypatch, "labelled_only_seconds", lambda *a: 1e6)  # nor one on the labelled images alone
    out = tmp_path / "run"
    rc, stdout, err = run_main(*_cmd(digits_root, out, *SHORT))
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune_labelled"] and summary["self_training_skipped"]["rounds"] == [2]
    assert "self_training_labelled_only" not in summary


def test_run_lists_the_layout_problems_of_every_split_at_once(copy_root, dataset_names, tmp_path):
    """A duplicate test id, a test/ sub-folder with an image and a val class train lacks: only "val classes not in
    train" was reported, the test split's problems after it was fixed."""
    name = dataset_names[0]
    ds = copy_root / name
    test = ds / "test"
    first = sorted(test.iterdir())[0]
    shutil.copy(first, test / f"000{first.name}")  # 0.png and 0000.png: one test id
    (test / "sub").mkdir()
    shutil.copy(first, test / "sub" / first.name)
    extra = ds / "val" / "c9"
    extra.mkdir()
    shutil.copy(next(p for p in (ds / "val").rglob("*.png")), extra / "x.png")
    rc, _, err = run_main("run", "--data", copy_root, "--out", tmp_path / "out", "--budget-minutes", "0.2", "--model",
                          "test_resnet", "--device", "cpu", "--no-progress")
    assert rc != 0
    assert "val classes not in train: c9" in err
    assert "duplicate test id" in err and str(test / "sub") in err
    assert not (tmp_path / "out" / "run_state.json").exists()


def test_the_plan_line_at_the_floor_says_the_warnings_steps_and_seconds(monkeypatch):
    """"least 5 steps (9 s) do not fit the 7 s left" was followed by "0.2 min ... about 2 epochs", and elsewhere
    "0.0 min ... about 6 epochs": at the floor the line says its steps and the warning's seconds."""
    import fewshot.run_stages
    from fewshot.run_stages import plan_stage
    from fewshot.run_words import stage_plan_words

    monkeypatch.setattr(fewshot.run_stages, "measure_step_seconds", lambda task: 1.8)
    monkeypatch.setattr(fewshot.run_stages, "measure_eval_seconds", lambda task: 0.5)
    task = SimpleNamespace(plan_epoch=lambda epoch: [0] * 2)
    cfg = {"train": {}, "sched": {}}
    step_s, epochs, budget_s = plan_stage(task, cfg, time.monotonic() + 7.0, 1, ("train", "eval_every"))
    assert budget_s == pytest.approx(9.0) and epochs == pytest.approx(2.5)
    assert stage_plan_words(step_s, budget_s, epochs) == ("about 9.0 s, its floor (5 training steps at the "
                                                         "measured speed, about 2 epochs)")
    # off the floor: seconds under a minute ("0.0 min" for a few seconds), minutes above
    assert stage_plan_words(0.01, 3.0, 6.0).startswith("3.0 s on a time-based schedule (about 6 epochs")
    assert stage_plan_words(0.01, 42.0, 6.0).startswith("42 s on a time-based schedule")
    assert stage_plan_words(0.08, 0.4, 1.0).startswith("about 0.4 s, its floor (5 training")  # fast: not "0 s"
    assert stage_plan_words(0.01, 90.0, 6.0).startswith("1.5 min on a time-based schedule")


def test_the_stage_line_of_a_run_at_its_floor_agrees_with_the_warning(digits_root, tmp_path, monkeypatch):
    """The whole run: the stage line after the floor warning says the same seconds."""
    import re

    patch_run(monkeypatch, "measure_step_seconds", lambda task: 0.5)
    out = tmp_path / "run"
    rc, stdout, err = run_main(*_cmd(digits_root, out, "run.semi_method=off", "--budget-minutes", "0.02"))
    assert rc == 0, err
    warned = re.search(r"least time \(about ([\d.]+) s, 5 training steps at the measured speed\) does not fit", stdout)
    assert warned, stdout
    assert f"about {warned.group(1)} s, its floor (5 training steps at the measured speed, about" in stdout
    assert " min on a time-based schedule" not in stdout
