"""The warning of a stage continued on --resume whose closing work no longer fits the budget left (run_words and
PipelineRun.last_closing): the whole run's case is tests/test_budget_stop.py's."""

from __future__ import annotations

import time
from types import SimpleNamespace

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
    # the step kept back (its logged speed): the stage trains no further, so no step runs past the deadline
    words = resumed_late_warning("finetune", 21.0, 20.0, step_s=2.0)
    assert "closing work and a training step (2.0 s at its logged speed) need" in words, words
    assert "it trains no further, and the run still ends within its budget" in words
    assert resumed_late_warning("finetune", 23.0, 20.0, step_s=2.0) is None
    assert "end about 60 s after its budget" in resumed_late_warning("finetune", -40.0, 20.0, step_s=2.0)


def _run(left: float, need: float) -> SimpleNamespace:
    run = SimpleNamespace(last_end=time.monotonic() + left, closing=lambda task, eval_s, step_s=None: need)
    run.warn_if_resumed_late = lambda stage, n, task=None: PipelineRun.warn_if_resumed_late(run, stage, n, task)
    return run


def test_the_last_stages_hook_warns_a_resumed_stage_only(capsys):
    assert PipelineRun.last_closing(_run(5.0, 60.0), None, 1.0, step_s=0.1) == 60.0  # planned now: plan_stage's word
    assert "resumes with" not in capsys.readouterr().out
    assert PipelineRun.last_closing(_run(500.0, 60.0), None, 1.0) == 60.0  # resumed, time enough
    assert "resumes with" not in capsys.readouterr().out
    assert PipelineRun.last_closing(_run(5.0, 60.0), None, 1.0) == 60.0
    assert "[run] warning: finetune resumes with" in capsys.readouterr().out
    # the resumed stage's logged step (finetune_stage sets it) counts: 65 s hold the 60 s of closing work, not a step
    assert PipelineRun.last_closing(_run(65.0, 60.0), SimpleNamespace(resumed_step_s=10.0), 1.0) == 60.0
    assert "a training step (10 s at its logged speed)" in capsys.readouterr().out
