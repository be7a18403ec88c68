"""Review rev112 of fGQ's skip of a resumed stage's short training (run_stages.skip_short_resumed_training): its
summary record was lost by a second stop before the stage's summary entry (#1); its line blamed this session's
start-up and the budget whatever set the end, at the mean step with the first step's warm-up in it (#2); the stage's
own-plan check was untested and its edge uneven (#3)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from fewshot.run_budget import FLOOR_STEPS
from fewshot.run_stages import cap_resumed_budget, skip_short_resumed_training
from helpers.checks import run_main
from test_fGQ_resumed_startup import STEP_S, stop_and_jump

TRAINED = 10.0
pytestmark = pytest.mark.usefixtures("real_least_run_holds")  # later_rounds_fit relaxes it for whole runs


def _skip(planned: float, left: float, step_s: float | None = STEP_S, **kwargs):
    """The cap then the skip of a stage with TRAINED s trained and ``planned`` s in its plan, ``left`` s before its
    end: (the record or None, the budget's seconds after them)."""
    cfg = {"train": {"budget_minutes": planned / 60}}
    trained, _ = cap_resumed_budget(cfg, {"train_seconds": TRAINED, "global_step": 100}, time.monotonic() + left,
                                    step_s)
    record = skip_short_resumed_training(cfg, planned, trained, left, step_s, **kwargs)
    return record, cfg["train"]["budget_minutes"] * 60


def test_a_plan_with_fewer_steps_left_than_the_least_run_trains_them_where_they_fit():
    rest = 3 * STEP_S  # 3 steps of its plan left: they and the step past its end need 0.4 s, under the least run
    record, budget = _skip(TRAINED + rest, 0.45)
    assert record is None and budget == pytest.approx(TRAINED + rest), budget  # its own plan ends first: trained
    record, budget = _skip(TRAINED + rest, 0.38)  # the time sets the end now: the same measure, 0.4 s
    assert budget == pytest.approx(TRAINED) and record["least_s"] == pytest.approx(rest + STEP_S), record
    assert "less than the rest of its own plan (3 training steps and the one past its end, about 0.40 s" in \
           record["why"], record
    record, _ = _skip(TRAINED + 60.0, 0.65)  # a long plan: the least run fits
    assert record is None


def test_the_mean_step_with_its_warm_up_skips_nothing():
    """rev112 #2's repro: 2 steps in 2.35 s (a first step's warm-up) and no epoch row nor planning timing."""
    cfg = {"train": {"budget_minutes": 5.175 / 60}}
    assert skip_short_resumed_training(cfg, 60.0, 2.35, 4.0, None) is None
    assert cfg["train"]["budget_minutes"] * 60 == pytest.approx(5.175)


@pytest.mark.parametrize("startup, cause", [
    (26.0, "this session's start-up and the work before this stage took all but 0.4 s of the 26 s the stop left "
           "before its closing work"),
    (0.3, "the session before the stop used all but 0.7 s of the time before its closing work, and this session's "
          "start-up and the work before this stage 0.3 s of them, leaving 0.4 s"),
    (None, "0.4 s were left before its closing work"),
])
def test_the_line_names_what_took_the_time(startup, cause):
    record, _ = _skip(TRAINED + 60.0, 0.4, startup=startup, logged=False)
    assert record["why"].startswith(cause + ", less than a stage's least run"), record
    assert f"({FLOOR_STEPS + 1} training steps, about 0.6 s at the speed its planning timed of 0.1 s" in \
           record["why"], record


def test_round_1s_share_is_named_where_it_ends_the_stage():
    ends = "the end of round 1's share (run.pseudo_share=0.5; labelling the pool and the later round come after it)"
    record, _ = _skip(TRAINED + 60.0, 0.4, startup=30.0, ends=ends)
    assert f"took all but 0.4 s of the 30 s the stop left before {ends}, less than" in record["why"], record
    assert record["why"].endswith("it trains no further and ends with its evaluation"), record


def test_the_skip_survives_a_second_stop_before_its_summary_entry(digits_root, tmp_path, monkeypatch):
    """SIGTERM while the skipped stage's metrics are computed, then --resume: summary.json keeps the record."""
    import fewshot.train.finetune as ft
    from fewshot.train import stop_signal

    out = tmp_path / "run"
    cmd, _, _ = stop_and_jump(monkeypatch, digits_root, out, 4 * STEP_S)
    real = ft.final_metrics

    def stopped(engine, task, fdir, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(engine, task, fdir, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(ft, "final_metrics", stopped)
        mp.setattr(stop_signal, "REPEAT_WINDOW_S", 0.0)  # not a copy of the first stop's signal (the jumped clock)
        rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 128 + signal.SIGTERM, (stdout, err)
    assert "it trains no further and goes straight to its closing work" in stdout, stdout
    state = json.loads((out / "run_state.json").read_text())["stages"]["finetune"]
    assert state["status"] == "trained" and state["resumed_training_skipped"]["least_s"] > 0, state
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    skipped = json.loads((out / "summary.json").read_text()).get("resumed_training_skipped")
    assert skipped == [{"stage": "finetune", **state["resumed_training_skipped"]}], skipped
