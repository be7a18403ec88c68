"""`fewshot run`'s budget words and run_state.json's fields: run.min_epochs above what a stage's time holds is said,
not silently dropped; a --budget-minutes whose seconds overflow is refused before anything is written; every
field of run_state.json a --resume computes with is checked, so a damaged one is named, never a traceback."""

from __future__ import annotations

import json
import time

import pytest

from helpers.checks import run_main


def _state(**change) -> dict:
    state = {"version": 1, "budget_minutes": 0.7, "config": {}, "img_size": 16, "seconds": 3.0, "stages": {},
             "summary": None, "fit_seconds": [], "finished": False, "classes": None, "stage_clock": 3.0}
    state.update(change)
    return state


def _damaged(tmp_path, data: dict) -> str:
    """The message check_state_fields gives ``data`` ("" where it passes)."""
    from fewshot.errors import UserError
    from fewshot.run_state import check_state_fields

    try:
        check_state_fields(tmp_path / "run_state.json", data)
    except UserError as exc:
        return str(exc)
    return ""


BEGAN = {"status": "began", "fit_at": 2.0}


@pytest.mark.parametrize("change, field", [
    # a stage that began without fit_at: seconds_used read st["fit_at"] (KeyError)
    ({"stages": {"finetune": {"status": "began"}}}, "stages.finetune.fit_at"),
    ({"stages": {"finetune": {"status": "begun", "fit_at": 2.0}}}, "stages.finetune.status"),
    ({"stages": {"pretrain": {**BEGAN, "kept_s": "x"}}}, "stages.pretrain.kept_s"),
    ({"stages": {"finetune": {**BEGAN, "trained_at": float("nan")}}}, "stages.finetune.trained_at"),
    ({"stages": {"finetune": {**BEGAN, "pseudo_key": 5}}}, "stages.finetune.pseudo_key"),
    # "digits": 5: class_order_changes took list(5) (TypeError)
    ({"classes": {"digits": 5}}, "classes"), ({"classes": {"digits": [1, 2]}}, "classes"), ({"classes": []}, "classes"),
    ({"summary": {"seconds": 3}}, "summary"), ({"summary": {"stages": []}}, "summary"),
    ({"self_training": []}, "self_training"), ({"self_training": {"rounds": "2"}}, "self_training.rounds"),
    ({"self_training": {"rounds": 2, "skipped_from": 1.5}}, "self_training.skipped_from"),
    ({"self_training": {"rounds": 1, "skipped_from": 2}}, "self_training.why"),
    ({"self_training": {"rounds": 2, "skipped_from": None, "labelled_only": 2}}, "self_training.labelled_only_why"),
    ({"self_training": {"rounds": 2, "skipped_from": None, "reduced_why": 3}}, "self_training.reduced_why"),
    ({"budget_minutes": 1e308}, "budget_minutes"),
])
def test_each_field_a_resume_reads_is_checked(tmp_path, change, field):
    assert f"is damaged: {field} must be" in _damaged(tmp_path, _state(**change))


def test_a_budget_an_older_version_took_stays_resumable(tmp_path):
    """Before the cap on new budgets any finite one was taken: such a run is not "damaged" (its budget cannot be
    changed on resume, and --budget-minutes now refuses to repeat it), only one whose seconds overflow is."""
    assert _damaged(tmp_path, _state(budget_minutes=2e7)) == ""
    assert "is damaged: budget_minutes must be" in _damaged(tmp_path, _state(budget_minutes=1e307))


def test_the_fields_as_fewshot_writes_them_pass(tmp_path):
    """The checks refuse only what `fewshot run` never writes: a state with every field as the run records it."""
    skip = {"rounds": 2, "skipped_from": 2, "why": "no time", "reduced_why": "fewer", "reduced_to": 2,
            "labelled_only": None}
    data = _state(classes={"digits": ["0", "1"]}, summary={"stages": {"pretrain": {}}}, self_training=skip,
                  stages={"pretrain": {"status": "done", "fit_at": 1.0, "kept_s": 0.5, "epochs": 2},
                          "finetune": {"status": "began", "fit_at": 2.0, "pseudo_key": None},
                          "finetune_round2": {"status": "trained", "fit_at": 3.0, "pseudo_key": "ab", "trained_at": 4}})
    assert _damaged(tmp_path, data) == ""
    assert _damaged(tmp_path, _state(self_training={"rounds": 2, "skipped_from": None, "why": "all fit"})) == ""


@pytest.mark.parametrize("change, field", [({"stages": {"finetune": {"status": "began"}}}, "stages.finetune.fit_at"),
                                           ({"classes": {"digits": 5}}, "classes")])
def test_a_damaged_state_is_named_by_the_resume(digits_root, tmp_path, change, field):
    """The reported cases, end to end: a traceback (KeyError, TypeError) before, exit 2 naming the field now."""
    out = tmp_path / "run"
    (out / "finetune" / "checkpoints").mkdir(parents=True)
    (out / "finetune" / "checkpoints" / "last.pt").write_bytes(b"")  # seconds_used reads fit_at where one is there
    (out / "run_state.json").write_text(json.dumps(_state(**change)))
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--model", "test_resnet", "--device", "cpu",
                          "--no-progress", "--resume")
    assert rc == 2 and f"is damaged: {field} must be" in err and "Traceback" not in err, err


@pytest.mark.parametrize("minutes", ["1e308", "1e8"])
def test_a_budget_whose_seconds_overflow_is_refused_before_anything_is_written(digits_root, tmp_path, minutes):
    """1e308 minutes passed check_budget, became inf seconds and stopped the started run with an OverflowError,
    leaving a run_state.json behind."""
    out = tmp_path / "run"
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", minutes, "--model",
                          "test_resnet", "--device", "cpu", "--no-progress")
    assert rc == 2 and f"--budget-minutes {float(minutes):g} is more than any run can use" in err, err
    assert "give at most 10,000,000 minutes" in err, err  # not 1e+07
    assert "Traceback" not in err and not out.exists()


def test_the_largest_budget_taken_stays_finite_in_seconds():
    import math

    from fewshot.pipeline import check_budget
    from fewshot.config import MAX_BUDGET_MINUTES

    check_budget(MAX_BUDGET_MINUTES)  # taken
    assert math.isfinite(MAX_BUDGET_MINUTES * 60.0 + time.monotonic())


def test_min_epochs_beyond_the_stage_time_is_said(digits_root, capsys, monkeypatch):
    """`run.min_epochs=30` trained 3 epochs without a word: the budget ends a stage first (min_epochs only keeps
    its epoch cap from falling below it), and the plan now says so; at the default of 1 it says nothing."""
    import torch

    from fewshot import run_stages
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.distributed import DistContext
    from fewshot.train.supervised import SupervisedTask, resolve_finetune_defaults

    monkeypatch.setattr(run_stages, "measure_step_seconds", lambda task: 0.1)
    monkeypatch.setattr(run_stages, "measure_eval_seconds", lambda task: 0.0)
    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 16,
                         "train.batch_size": 8, "train.progress": False})
    resolve_finetune_defaults(cfg)
    task = SupervisedTask(cfg, scan_root(digits_root, None, splits=("train", "val")), torch.device("cpu"),
                          DistContext())
    steps = len(task.plan_epoch(0))
    # 3 epochs' time at 0.1 s a step (and the one step past the deadline that plan_stage keeps back)
    end = time.monotonic() + 3 * steps * 0.1 + 0.1
    _, fits, _ = run_stages.plan_stage(task, cfg, end, 30, ("train", "eval_every"))
    said = capsys.readouterr().out
    assert fits < 3.0 and "warning: run.min_epochs=30 asks for more epochs" in said, said
    assert cfg["train"]["epochs"] >= 30  # the cap, as before
    run_stages.plan_stage(task, cfg, end, 1, ("train", "eval_every"))
    run_stages.plan_stage(task, cfg, time.monotonic() + 100 * steps * 0.1, 30, ("train", "eval_every"))
    assert "min_epochs" not in capsys.readouterr().out


def test_one_minute_is_said_in_the_singular():
    from fewshot.run_words import minutes_text

    assert (minutes_text(1), minutes_text(1.0), minutes_text(2), minutes_text(0.5)) == (
        "1 minute", "1 minute", "2 minutes", "0.5 minutes")
