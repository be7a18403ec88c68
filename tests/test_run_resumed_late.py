"""The warning of a stage continued on --resume whose closing work no longer fits the budget left (run_words and
PipelineRun.last_closing): the whole run's case is tests/test_budget_stop.py's."""

from __future__ import annotations

import time
from types import SimpleNamespace

import fewshot.run_closing as run_closing
from fewshot.pipeline import PipelineRun
from fewshot.run_words import resumed_late_warning


def test_the_warning_says_how_late_and_only_when_the_closing_work_does_not_fit():
    assert resumed_late_warning("finetune", 30.0, 20.0) is None
    assert resumed_late_warning("finetune", 20.0, 20.0) is None
    words = resumed_late_warning("finetune", 5.0, 20.0)
    assert "finetune resumes with 5.0 s of the budget left" in words and "about 20 s:" in words
    assert "end about 15 s after its budget" in words and "--budget-minutes" not in words
    # past the end: the 40 s already over and the 20 s of closing work (it said "about 20 s after")
    late = resumed_late_warning("finetune", -40.0, 20.0)
    assert "finetune resumes 40 s past the budget already" in late and "needs about 20 s more" in late
    assert "end about 60 s after its budget" in late
    # the step kept back (its logged speed) alone: the stage trains no further, the run still ends on time, so a note
    words = resumed_late_warning("finetune", 21.0, 20.0, step_s=2.0)
    assert words.startswith("[run] note: finetune resumes with 21 s of the budget left"), words
    assert "enough for its closing work (about 20 s) but not for a training step besides (2.0 s at its logged " \
        "speed): it trains no further." in words and "warning" not in words and "after its budget" not in words
    assert resumed_late_warning("finetune", 23.0, 20.0, step_s=2.0) is None
    assert "end about 60 s after its budget" in resumed_late_warning("finetune", -40.0, 20.0, step_s=2.0)


def test_a_margin_of_milliseconds_is_no_warning_and_a_fast_step_is_said_in_ms():
    """`resumed_late_warning('finetune', 20.002, 20.0, 0.004)` warned "20 s of the budget left, less than its closing
    work and a training step (0.0 s ...)" and, in the same line, that the run still ends within its budget."""
    words = resumed_late_warning("finetune", 20.002, 20.0, 0.004)
    assert words.startswith("[run] note:") and "20.002 s of the budget left" in words, words
    assert "(about 20.000 s)" in words and "(4 ms at its logged speed)" in words and "0.0 s" not in words, words
    assert "within its budget" not in words and "less than" not in words
    assert resumed_late_warning("finetune", 20.01, 20.0, 0.004) is None
    # the closing work alone does not fit: 5.6 and 6.4 s were both said "6 s"; under a second late is not "1 s"
    words = resumed_late_warning("finetune", 5.6, 6.4, 0.004)
    assert "[run] warning: finetune resumes with 5.6 s of the budget left" in words and "about 6.4 s:" in words
    assert "end less than 1 s after its budget" in words and "training step" not in words, words


def _task(**fields) -> SimpleNamespace:
    """A stand-in stage with no model and no val images: a resumed one's timings add nothing to the closing work."""
    return SimpleNamespace(model=None, val_set=[], **fields)


def _run(left: float, need: float) -> SimpleNamespace:
    run = SimpleNamespace(last_end=time.monotonic() + left, test_set=SimpleNamespace(images=None),
                          closing=lambda task, eval_s, step_s=None, per_test_image=None: need)
    run.warn_if_resumed_late = lambda stage, n, task=None: PipelineRun.warn_if_resumed_late(run, stage, n, task)
    return run


def test_the_last_stages_hook_warns_a_resumed_stage_only(capsys, monkeypatch):
    monkeypatch.setattr(run_closing, "measure_prediction_seconds", lambda task, images: 0.0)
    assert PipelineRun.last_closing(_run(5.0, 60.0), _task(), 1.0, step_s=0.1) == 60.0  # planned now: plan_stage's word
    assert "resumes with" not in capsys.readouterr().out
    assert PipelineRun.last_closing(_run(500.0, 60.0), _task(), 1.0) == 60.0  # resumed, time enough
    assert "resumes with" not in capsys.readouterr().out
    assert PipelineRun.last_closing(_run(5.0, 60.0), _task(), 1.0) == 60.0
    assert "[run] warning: finetune resumes with" in capsys.readouterr().out
    # the resumed stage's logged step (finetune_stage sets it) counts: 65 s hold the 60 s of closing work, not a step
    assert PipelineRun.last_closing(_run(65.0, 60.0), _task(resumed_step_s=10.0), 1.0) == 60.0
    out = capsys.readouterr().out
    assert "[run] note: finetune resumes" in out and "a training step besides (10 s at its logged speed)" in out
