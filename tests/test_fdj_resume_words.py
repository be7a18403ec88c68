"""A resume's words about what the run chose itself and about its overrun (a stop/resume hunt, findings 4 and 5):
`run --resume --img-size 32` of a run that trained at the 32 px it chose was refused as a change of "the model's
default input size", and a run stopped in its report and resumed was told its budget was too small."""

from __future__ import annotations

import copy
import time
from types import SimpleNamespace

import pytest

from fewshot.config import DEFAULTS
from fewshot.errors import UserError
from fewshot.run_state import RunState
from fewshot.run_words import overrun_note


def _run_that_chose(out, size: int = 32) -> dict:
    """A run folder whose state records the settings as asked (no image size) and the ``size`` the run chose."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg["model"]["img_size"] = None
    RunState.start(out, cfg, 1.5, size, 1.0, None)
    return cfg


def test_a_resume_may_give_the_image_size_the_run_chose(tmp_path):
    cfg = _run_that_chose(tmp_path)
    cfg["model"]["img_size"] = 32  # --img-size 32: the size the run printed and trained at
    assert RunState.resume(tmp_path, cfg, None).resumed


def test_a_resume_that_changes_the_chosen_image_size_names_the_size_the_run_used(tmp_path):
    cfg = _run_that_chose(tmp_path)
    cfg["model"]["img_size"] = 64
    with pytest.raises(UserError) as err:
        RunState.resume(tmp_path, cfg, None)
    said = str(err.value)
    assert "model.img_size (32 px, chosen by the run; 64 now)" in said, said
    assert "default input size" not in said


def test_the_overrun_of_a_resumed_run_names_the_resume_not_the_budget():
    """The hunt's numbers: stopped in the report at 87 s of 90, resumed, done in 118 s with 55 s of training."""
    said = overrun_note(118.0, 90.0, 55.0, 87.0)
    assert "at least" not in said, said
    assert "more than one session" in said and "the resumed session's start-up" in said
    assert "took about 63 s" in said and "made the run late, not the budget" in said


def test_a_resumed_run_is_advised_a_larger_budget_where_the_sessions_before_overran_alone():
    said = overrun_note(130.0, 90.0, 40.0, 100.0)  # 100 s before the stop, 60 s of it outside the training
    assert "A budget of at least 2 minutes leaves training a fair share" in said, said
    assert "more than one session" in said


def test_a_single_session_overrun_keeps_its_words():
    assert overrun_note(95.0, 90.0, 60.0) == overrun_note(95.0, 90.0, 60.0, None)
    assert "more than one session" not in overrun_note(95.0, 90.0, 60.0)


def test_the_run_end_passes_the_sessions_before_a_resume_to_the_overrun_note(tmp_path, capsys):
    """PipelineRun.finish of a resumed run stopped in its report (87 s before the stop, 118 s in all)."""
    from fewshot.pipeline import PipelineRun

    state = RunState.resume(tmp_path, _run_that_chose(tmp_path), None)
    run = SimpleNamespace(out=tmp_path, budget_s=90.0, budget_minutes=1.5, t_start=time.monotonic() - 118.0,
                          closing_record=lambda total_s: None, r={"report": False}, summary={}, state=state,
                          fit_seconds=[55.0], resume=True, used=87.0)
    PipelineRun.finish(run)
    said = capsys.readouterr().out
    assert "more than one session" in said and "at least" not in said, said
