"""Hunt hBX #2: a resumed run with no stage left to train (each finished or skipped before the stop) went straight
to prediction and the report with less time left than they need, and said nothing before ending late."""

from __future__ import annotations

import time
from types import SimpleNamespace

import fewshot.run_closing as run_closing
from fewshot.pipeline import PipelineRun


class _Test(list):
    """1,000 test images (len), their tensor not needed: the prediction's timing is faked."""
    images = None


def _run(left: float, resume: bool = True, balance: str = "auto") -> SimpleNamespace:
    """A resumed run whose session began 12 s ago (its earlier sessions used 40 s), ``left`` seconds of 60 left."""
    now = time.monotonic()
    return SimpleNamespace(resume=resume, balance=balance, budget_s=60.0, used=40.0, report_stages=1,
                           t_start=now - 60.0 + left, report_plan={"seconds": (3.0, 4.0)}, test_set=_Test([0] * 1000))


def _warn(run, monkeypatch, eval_s: float = 1.0) -> None:
    """``eval_s`` for a val split of 500: 2 ms an image, 2 s for the 1,000 test images."""
    monkeypatch.setattr(run_closing, "measure_prediction_seconds", lambda task, images: 0.002)
    PipelineRun.warn_if_predicting_late(run, SimpleNamespace(val_set=[0] * 500), eval_s)


def test_a_late_prediction_is_warned_with_its_end(monkeypatch, capsys):
    # prediction 2 s + val for run.balance 1 s + the report without images 3 s + 1.5 % of 60 s = 6.9 s; 2 s left
    run = _run(2.0)
    run.used = 60.0 - 2.0 - 12.0  # this session's start-up: 12 s
    _warn(run, monkeypatch)
    out = capsys.readouterr().out
    assert "[run] warning: no stage is left to train" in out, out
    assert "start-up took 12 s" in out and "2.0 s of the budget left" in out and "about 6.9 s" in out, out
    assert "end about 5 s after its budget" in out, out


def test_past_the_budget_already_and_fitting_cases(monkeypatch, capsys):
    _warn(_run(-3.0), monkeypatch)
    out = capsys.readouterr().out
    assert "3.0 s past the budget already" in out and "end about 10 s after its budget" in out, out
    _warn(_run(30.0), monkeypatch)  # it fits: no word
    _warn(_run(2.0, resume=False), monkeypatch)  # only a resumed session
    assert capsys.readouterr().out == ""
    _warn(_run(5.5, balance="off"), monkeypatch)  # without run.balance's val pass 5.9 s: late under 1 s
    assert "less than 1 s after its budget" in capsys.readouterr().out
