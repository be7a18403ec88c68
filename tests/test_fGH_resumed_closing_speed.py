"""Review rev104 of the resumed-late warnings (hunt hBX #2): a resumed stage's closing estimate took its evaluation
time from the earlier session's log (a resumed round 1 warned "14 s late" and was 24 s late), left out the re-read of
last.pt and the write rate timed before the stop; the warning of a run with no stage left to train timed a whole
val evaluation of its own, said "report" with run.report off and "0.0 s past"."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import fewshot.pipeline as pipeline
from fewshot.pipeline import PipelineRun
from fewshot.run_budget import FIGURE_S
from fewshot.run_words import resumed_late_warning, resumed_predicting_warning
from fewshot.train.budget_reserve import WRITE_BYTES_PER_S
from helpers.run_patch import patch_run

LOGGED_EVAL = 1.0  # the earlier session's evaluation of 500 val images: 2 ms an image
NOW_PER_IMAGE = 0.004  # this session's machine: 2x slower


class _Test(list):
    """1,000 test images: their tensor stands in as a list (the timings are faked)."""
    images = list(range(1000))


def _model(n_params: int) -> SimpleNamespace:
    return SimpleNamespace(parameters=lambda: [SimpleNamespace(numel=lambda: n_params)])


def _task(n_params: int = 10) -> SimpleNamespace:
    return SimpleNamespace(cfg={"train": {}}, model=_model(n_params), val_set=[0] * 500, train_set=[0] * 50,
                           resumed_step_s=None)


def _run(left: float, **fields) -> PipelineRun:
    """A resumed session of a 60 s budget with ``left`` seconds left, its methods PipelineRun's own."""
    run = PipelineRun.__new__(PipelineRun)
    now = time.monotonic()
    run.__dict__.update({"budget_s": 60.0, "t_start": now - 60.0 + left, "last_end": now + left, "resume": True,
                         "used": 40.0, "report_stages": 0, "report_plan": {"figure_s": FIGURE_S, "seconds": None},
                         "balance": "auto", "semi": "pseudo", "writes_bps": WRITE_BYTES_PER_S, "closing_plan": None,
                         "test_set": _Test([0] * 1000), "startup_s": None, "state": None, **fields})
    return run


def _late(out: str) -> float:
    found = re.search(r"end about (\d+) s after its budget", out)
    assert found, out
    return float(found.group(1))


def _simulated_late(left: float) -> float:
    """The closing work as the 2x slower machine runs it: the stop's evaluation, the best checkpoint's and
    run.balance's val pass, the test prediction, and the 1.5 % margin, past the ``left`` seconds."""
    eval_now = NOW_PER_IMAGE * 500
    return 3 * eval_now + NOW_PER_IMAGE * 1000 + 0.015 * 60.0 - left


@pytest.fixture
def slower_now(monkeypatch):
    patch_run(monkeypatch, "measure_prediction_seconds", lambda task, images, *a, **k: NOW_PER_IMAGE)
    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **k: 0.1)


def _closing_hooks():
    """Each place a resumed stage estimates its closing work: the last stage, a later round, round 1 (skipped on)."""
    def last(run, task):
        return PipelineRun.last_closing(run, task, LOGGED_EVAL)

    def later(run, task):
        run.__dict__.update(rounds=2, skip={"skipped_from": None})
        return PipelineRun.later_round_closing(run, 2)(task, LOGGED_EVAL)

    def round1(run, task):
        run.__dict__.update(rounds=1, skip={"skipped_from": 2}, n_unlabeled=0, labelled_end=run.last_end)
        return PipelineRun.round1_closing(run, task, LOGGED_EVAL)

    return {"last": last, "later": later, "round1": round1}


@pytest.mark.parametrize("hook", ["last", "later", "round1"])
def test_a_resumed_stage_on_a_slower_machine_is_warned_how_late_it_really_ends(hook, slower_now, capsys):
    _closing_hooks()[hook](_run(2.0), _task())
    out = capsys.readouterr().out
    assert "[run] warning:" in out and "resumes with 2.0 s of the budget left" in out, out
    simulated = _simulated_late(2.0)
    assert abs(_late(out) - simulated) <= 0.2 * simulated, (out, simulated)


def test_the_slower_of_the_logged_and_the_measured_evaluation_counts(monkeypatch):
    for per_image, eval_s in ((NOW_PER_IMAGE, NOW_PER_IMAGE * 500), (0.001, LOGGED_EVAL)):  # slower now, then faster
        patch_run(monkeypatch, "measure_prediction_seconds", lambda task, images, *a, p=per_image, **k: p)
        need = PipelineRun.last_closing(_run(100.0), _task(), LOGGED_EVAL)
        assert need == pytest.approx(3 * eval_s + per_image * 1000 + 0.9, abs=0.01), per_image


def test_the_reread_of_last_pt_counts_in_the_resumed_warning(capsys):
    # 50M parameters: last.pt (weights, EMA, two AdamW slots) is 800 MB, 3.2 s at WRITE_BYTES_PER_S; 8 s of closing
    # work and 10 s left was no warning
    PipelineRun.warn_if_resumed_late(_run(10.0), "finetune", 8.0, _task(50_000_000))
    out = capsys.readouterr().out
    assert "[run] warning: finetune resumes with 10 s of the budget left" in out and "about 11 s" in out, out


def test_the_write_rate_timed_before_the_stop_is_kept_for_the_resume():
    saved = []
    state = SimpleNamespace(data={}, save=lambda: saved.append(dict(state.data)))
    run = _run(30.0, state=state)
    run.note_writes(1e8)
    run.note_writes(2e8)  # faster: the slowest seen is kept, not written again
    assert state.data["writes_bps"] == 1e8 and len(saved) == 1
    resumed = _run(30.0, state=SimpleNamespace(data={"writes_bps": 1e8}), r={"report": False}, budget_minutes=1.0,
                   fixmatch=None, cfg={"model": {"img_size": 32}}, semi=None)
    resumed.writes_bps = WRITE_BYTES_PER_S  # as __init__ leaves it
    resumed.plan_budget()
    assert resumed.writes_bps == 1e8
    old = _run(30.0, state=SimpleNamespace(data={}), r={"report": False}, budget_minutes=1.0, fixmatch=None,
               cfg={"model": {"img_size": 32}}, semi=None)
    old.plan_budget()  # a run_state.json from before the field: the guess, as before
    assert old.writes_bps == WRITE_BYTES_PER_S


def test_no_stage_left_to_train_warns_from_fine_tune_without_a_val_evaluation_of_its_own(monkeypatch, capsys):
    """PipelineRun.fine_tune's branch for a resumed run whose stages are all reused, run.report off and run.balance
    auto: one prediction batch is timed (nothing else timed a speed), val's balance pass counts, and the warning
    names the start-up's seconds (12 s), not the session's so far (20 s)."""
    evaluations, batches = [], []
    patch_run(monkeypatch, "measure_eval_seconds", lambda task, *a: evaluations.append(task) or 1.0)
    patch_run(monkeypatch, "measure_prediction_seconds",
              lambda task, images, *a, **k: batches.append(len(images)) or 0.002)
    monkeypatch.setattr(pipeline, "finetune_config", lambda *a: {})
    run = _run(2.0, cfg={}, weights=None, out=Path("unused"), stage_s=55.0, startup_s=12.0, semi=None,
               task=_task(), last_stage=lambda: None)
    run.used = 60.0 - 2.0 - 20.0  # this session so far: 20 s
    run.fine_tune()
    out = capsys.readouterr().out
    assert evaluations == [] and batches == [256], (evaluations, batches)
    # 1,000 test and 500 val images at 2 ms, and 0.9 s of margin: 3.9 s, 2 s left
    assert "[run] warning: no stage is left to train, only the prediction, and this session's start-up took 12 s" \
        in out and "about 3.9 s" in out and "end about 2 s after its budget" in out, out
    assert "report" not in out and run.task is None


def test_a_sliver_past_the_budget_is_said_less_than_a_tenth():
    words = resumed_predicting_warning(-0.02, 5.0, 12.0)
    assert "less than 0.1 s past the budget already" in words and "0.0 s" not in words, words
    words = resumed_late_warning("finetune", -0.02, 5.0)
    assert "less than 0.1 s past the budget already" in words and "0.0 s" not in words, words
    assert "0.5 s past the budget already" in resumed_late_warning("finetune", -0.5, 5.0)
