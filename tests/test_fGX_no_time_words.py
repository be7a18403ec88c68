"""Review rev115 of fGW: a resumed stage with no time left said "its planned training time was used before the stop"
wherever its config.yaml's budget was capped, which every capped session saves, not only a skip (#1); and the
Engine's "resuming from ...: epoch 1, step 2 of 5" followed the [run] line that said it trains no further (#2)."""

from __future__ import annotations

import pytest

from helpers.checks import run_main
from test_fGQ_resumed_startup import stop_and_jump
from test_fGW_resumed_skip_record import _stopped_again, _summary

pytestmark = pytest.mark.usefixtures("real_least_run_holds")


def test_a_second_no_time_session_names_the_runs_budget_not_its_plan(digits_root, tmp_path, monkeypatch):
    """rev115 repro A: a session resumed past the run's end saves the capped config.yaml and is stopped again; the
    next one has no time either, and the run's budget, not the stage's plan, is what ran out."""
    cmd, before, steps = stop_and_jump(monkeypatch, digits_root, tmp_path / "run", [-0.5])
    first, entry = _stopped_again(monkeypatch, cmd, before_fit=False)
    assert "no time is left of the run's budget of 1 minute" in first and "resumed_training_skipped" not in entry
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert "planned training time" not in stdout, stdout
    assert "finetune: resumed from " in stdout and "no time is left of the run's budget of 1 minute before its " \
           "closing work (" in stdout and "session before the stop ended" not in stdout, stdout
    assert "resuming from" not in stdout, stdout  # the [run] line said it trains no further (rev115 #2)
    assert steps[-1] == before and "resumed_training_skipped" not in _summary(cmd), steps


def test_the_carried_skip_words_say_the_records_seconds():
    from fewshot.run_words import carried_skip_words

    assert carried_skip_words({"left_s": 0.4, "least_s": 2.1, "step_s": 0.35, "why": "..."}) == (
        "the session before the stop ended its training (0.4 s were left before its closing work, less than the "
        "2.1 s it needed to train on): it trains no further and goes straight to its closing work")
    assert carried_skip_words({}, "the end of round 1's share") == (
        "the session before the stop ended its training (too little time was left): it trains no further and ends "
        "with its evaluation")
