"""Review rev114 of fGS's resumed-skip record (run_state.json's ``resumed_training_skipped``): it outlived a session
that trained the stage after all (#1); the planning's step fallback, its record, the record's carry over a second
stop and its removal on a start-over had no test (#2); the no-time path named a capped train.budget_minutes (#4)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from helpers.checks import run_main
from test_fGQ_resumed_startup import STEP_S, stop_and_jump
from test_run_budget_state_fields import BEGAN, _damaged, _state

pytestmark = pytest.mark.usefixtures("real_least_run_holds")  # later_rounds_fit relaxes it for whole runs


def _stopped_again(monkeypatch, cmd, before_fit: bool):
    """A --resume that SIGTERMs itself as the stage's Engine.fit starts (``before_fit``: before it saves the capped
    config.yaml) or right after it (status still "began"): (stdout, the stage's run_state entry)."""
    import fewshot.train.engine as engine
    from fewshot.train import stop_signal

    fit = engine.Engine.fit

    def stopped(self, *args, **kwargs):
        if before_fit:
            os.kill(os.getpid(), signal.SIGTERM)
        result = fit(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    with monkeypatch.context() as mp:
        mp.setattr(engine.Engine, "fit", stopped)
        mp.setattr(stop_signal, "REPEAT_WINDOW_S", 0.0)  # the jumped clock: no stop is a copy of the one before
        rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 128 + signal.SIGTERM, (stdout, err)
    return stdout, _entry(cmd)


def _entry(cmd) -> dict:
    out = cmd[cmd.index("--out") + 1]
    return json.loads((out / "run_state.json").read_text())["stages"]["finetune"]


def _summary(cmd) -> dict:
    return json.loads((cmd[cmd.index("--out") + 1] / "summary.json").read_text())


@pytest.mark.parametrize("then", ["more time", "other images"])
def test_a_skip_recorded_before_a_stop_is_dropped_where_the_stage_trains_after_all(then, digits_root, tmp_path,
                                                                                  monkeypatch):
    """rev114 #1's repro: the skip's record, then a stop before Engine.fit saved the capped config.yaml; the next
    session has time for the stage (or starts it over: other training images) and trains it."""
    import fewshot.run_stages as run_stages

    left = [4 * STEP_S]
    cmd, before, steps = stop_and_jump(monkeypatch, digits_root, tmp_path / "run", left)
    stdout, entry = _stopped_again(monkeypatch, cmd, before_fit=True)
    assert "it trains no further" in stdout and entry["resumed_training_skipped"]["least_s"] > 0, (stdout, entry)
    left[0] = 40 * STEP_S
    if then == "other images":
        monkeypatch.setattr(run_stages, "same_training_images", lambda *a, **k: False)
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    said = "finetune: continuing from" if then == "more time" else "the stage starts over"
    # the skip's words (the resumed-late warning, said before the test's clock moves back, may say it trains no further)
    assert said in stdout and "trains no further and goes straight to its closing work" not in stdout, stdout
    assert steps[-1] > before, (steps, before)  # it trained
    assert "resumed_training_skipped" not in _summary(cmd), _summary(cmd)
    assert "resumed_training_skipped" not in _entry(cmd), _entry(cmd)


def test_a_second_stop_after_the_skipped_stages_fit_keeps_the_record(digits_root, tmp_path, monkeypatch):
    """Stopped right after Engine.fit (status "began", the capped config.yaml saved): the next session trains no
    further either, keeps the record, and says why, not "continuing" nor the capped train.budget_minutes."""
    cmd, _, _ = stop_and_jump(monkeypatch, digits_root, tmp_path / "run", 4 * STEP_S)
    _, entry = _stopped_again(monkeypatch, cmd, before_fit=False)
    assert entry["status"] == "began" and entry["resumed_training_skipped"]["least_s"] > 0, entry
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert _summary(cmd)["resumed_training_skipped"] == [{"stage": "finetune", **entry["resumed_training_skipped"]}]
    # said from the carried record (rev115 #1): not "continuing ... on its planned schedule" (rev114 #4)
    assert ": the session before the stop ended its training (" in stdout and "it needed to train on): it trains " \
           "no further and goes straight to its closing work" in stdout, stdout
    assert "finetune: continuing from" not in stdout and "train.budget_minutes=" not in stdout, stdout
    # time was left: neither the Engine's "no time is left" note nor its "resuming from" line (rev115 #2)
    assert "no time is left of the run's budget" not in stdout and "resuming from" not in stdout, stdout


def test_a_stage_without_a_logged_step_is_judged_at_its_planned_step(digits_root, tmp_path, monkeypatch):
    """log.jsonl has no epoch row: the skip takes the step the stage's planning timed, kept in run_state.json."""
    import fewshot.run_budget as run_budget
    import fewshot.run_stages as run_stages

    cmd, before, steps = stop_and_jump(monkeypatch, digits_root, tmp_path / "run", 3.0)
    path = cmd[cmd.index("--out") + 1] / "run_state.json"
    state = json.loads(path.read_text())
    assert state["stages"]["finetune"]["planned_step_s"] > 0, state["stages"]["finetune"]  # the fresh stage's
    state["stages"]["finetune"]["planned_step_s"] = 1.0  # its least run, 6 s, does not fit the 3 s left
    path.write_text(json.dumps(state))
    real = run_budget.trained_speeds
    monkeypatch.setattr(run_stages, "trained_speeds", lambda *a, **k: (None, real(*a, **k)[1]))
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert "less than a stage's least run (6 training steps, about 6.0 s at the speed its planning timed of 1.0 s " \
           "a step)" in stdout, stdout
    assert steps[-1] == before and _summary(cmd)["resumed_training_skipped"][0]["step_s"] == 1.0, steps


@pytest.mark.parametrize("stage, field", [
    ({**BEGAN, "planned_step_s": -1.0}, "stages.finetune.planned_step_s"),
    ({**BEGAN, "planned_step_s": "fast"}, "stages.finetune.planned_step_s"),
    ({**BEGAN, "resumed_training_skipped": [0.4]}, "stages.finetune.resumed_training_skipped"),
])
def test_run_state_names_a_damaged_skip_field(stage, field, tmp_path):
    assert field in _damaged(tmp_path, _state(stages={"finetune": stage}))
    assert _damaged(tmp_path, _state(stages={"finetune": {**BEGAN, "planned_step_s": 0.03,
                                                          "resumed_training_skipped": {"left_s": 0.1}}})) == ""


def test_the_no_time_words_name_the_budget_given_and_what_is_left():
    """A stage resumed past its run's end (rev114 #4's FAKE_LEFT=-0.5), or with less than a step left."""
    from fewshot.run_words import resumed_no_time_words

    assert resumed_no_time_words(-0.5, 0.5) == ("no time is left of the run's budget of 0.5 minutes before its "
                                                "closing work (0.5 s past it already): it trains no further and goes "
                                                "straight to its closing work")
    ends = "the end of round 1's share"
    assert resumed_no_time_words(0.02, 1.0, ends) == (
        "no time is left of the run's budget of 1 minute before the end of round 1's share (less than 0.1 s left, not "
        "enough for a training step): it trains no further and ends with its evaluation")
