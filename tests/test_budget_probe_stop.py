"""`fewshot run`'s start-up timing stops at the budget: a 0.2-minute run on a busy machine timed its steps, an
evaluation and a prediction batch, and refused its budget only after 21.5 s of 12 s. Now the timings check the
clock before they start and after each training step, and refuse once the budget left cannot hold any run, or the
least run's steps alone at the speed timed so far.

A fake clock (as helpers.checks.engine_clock fakes the Engine's): each training step takes ``step_s`` "seconds",
everything else none, so each test reads where the run stopped, not the machine's speed."""

from __future__ import annotations

import pytest

from fewshot.config import resolve
from fewshot.errors import UserError
from helpers.run_clock import step_clock
from helpers.run_patch import patch_run


def _run_cfg(root) -> dict:
    return resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16,
                          "train.device": "cpu", "train.progress": False, "run.semi_method": "off",
                          "run.report": False})


def fake_clock(monkeypatch, step_s: float | list[float]) -> dict:
    """helpers.run_clock.step_clock, and a run that starts training fails the test."""
    from fewshot.train import engine

    clock = step_clock(monkeypatch, step_s)
    monkeypatch.setattr(engine.Engine, "fit", lambda self, resume=False: pytest.fail("the run started training"))
    return clock


def _refused(root, out, minutes: float) -> str:
    import fewshot.pipeline as pipeline

    with pytest.raises(UserError) as caught:
        pipeline.run_pipeline(_run_cfg(root), out, minutes, started=0.0)
    assert not out.exists()  # the start is undone: a rerun with a larger budget is not refused as "not empty"
    return str(caught.value)


def _no_later_timing(monkeypatch) -> None:
    patch_run(monkeypatch, "measure_eval_seconds", lambda *a, **k: pytest.fail("evaluation timed"))
    patch_run(monkeypatch, "measure_prediction_seconds", lambda *a, **k: pytest.fail("prediction timed"))


def test_the_timing_stops_once_the_steps_alone_do_not_fit(digits_root, tmp_path, monkeypatch, real_least_run_holds):
    """3 s steps in 12 s: after the warm-up (3 s) and two timed steps (9 s), 6 steps at the faster of them (18 s)
    cannot fit the 3 s left: refused there, with the speed timed; before, 2 more steps, an evaluation and a
    prediction batch were timed. One timed step alone (3 s, less than the budget) refuses nothing."""
    clock = fake_clock(monkeypatch, 3.0)
    _no_later_timing(monkeypatch)
    text = _refused(digits_root, tmp_path / "r", 0.2)
    assert clock["steps"] == 3 and clock["t"] == 9.0
    assert "--budget-minutes 0.2 is too short for test_resnet at 16px" in text
    assert "6 training steps at 3000 ms" in text and "took 9 s" in text
    assert ("over 18 s more, over 27 s in all (its steps alone, at the fastest step timed: the timing stopped there, "
            "as they did not fit; ") in text
    least = float(text.split("Give --budget-minutes ")[1].split()[0])
    assert least * 60 >= 27  # what the steps alone need, at least
    assert "Nothing was trained and the output folder was left as it was" in text


def test_a_deadline_passed_in_the_warm_up_step_stops_the_timing(digits_root, tmp_path, monkeypatch,
                                                                real_least_run_holds):
    """A 20 s first step in a 12 s budget: refused at once, naming the warm-up's speed as such."""
    clock = fake_clock(monkeypatch, 20.0)
    _no_later_timing(monkeypatch)
    text = _refused(digits_root, tmp_path / "r", 0.2)
    assert clock["steps"] == 1
    assert "6 training steps at 20000 ms" in text and "at the fastest step before two were timed (a warm-up" in text


def test_one_slow_timed_step_does_not_refuse_a_run_that_fits(digits_root, tmp_path, monkeypatch, real_least_run_holds):
    """A busy moment: a 3 s warm-up, then timed steps of 3 s, 0.5 s and 0.5 s in 24 s. The check's speed is the
    fastest timed step (0.5 s: 6 steps need 3 s), a lower bound as "over" says; the slower of the first two (3 s: 18 s
    in the 17.5 s left) refused this run, which fits."""
    import fewshot.pipeline as pipeline

    clock = fake_clock(monkeypatch, [3.0, 3.0, 0.5, 0.5])
    with pytest.raises(pytest.fail.Exception, match="the run started training"):
        pipeline.run_pipeline(_run_cfg(digits_root), tmp_path / "r", 0.4, started=0.0)
    assert clock["steps"] == 4


def test_a_timing_after_training_began_refuses_nothing(digits_root, tmp_path, monkeypatch, real_least_run_holds):
    """Once a stage recorded "began" the check is off: a refusal then undid a folder that holds training (it was
    switched off only when a stage was saved)."""
    import fewshot.pipeline as pipeline
    import fewshot.run_budget as run_budget
    from fewshot.train import engine

    clock = fake_clock(monkeypatch, 0.01)

    def fit(self, resume=False):  # training that ran past the budget, then a timing
        clock["t"] += 1000.0
        run_budget._check_budget(0.01, 0.01)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.Engine, "fit", fit)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(_run_cfg(digits_root), tmp_path / "r", 10.0, started=0.0)
    assert (tmp_path / "r").is_dir()  # not undone


@pytest.mark.parametrize("started, undone, says", [
    (False, True, "Nothing was started."),
    (True, True, "Nothing was trained and the output folder was left as it was."),
    (True, False, "Nothing was trained, but the output folder keeps what this start wrote there"),
])
def test_the_hopeless_budget_error_says_what_was_left(started, undone, says):
    from fewshot.run_budget import hopeless_budget_error

    text = str(hopeless_budget_error(12.0, 20.0, started=started, undone=undone))
    assert says in text and (started or "Nothing was trained" not in text)
    assert "larger --budget-minutes (1 or more to start with)" in text  # a figure, not only "larger" (hAU)


def test_the_first_budget_to_try_holds_the_start_up_three_times():
    from fewshot.run_budget import first_try_minutes

    assert first_try_minutes(0.0) == first_try_minutes(2.7) == first_try_minutes(20.0) == 1.0
    assert first_try_minutes(30.0) == 1.5 and first_try_minutes(100.0) == 5.0


def test_a_start_up_that_spent_the_budget_is_refused_before_the_step_timing(digits_root, tmp_path, monkeypatch,
                                                                          real_least_run_holds):
    """Decoding that took 20 s of 12: no step is timed; the floor's refusal (no speed is known) says so."""
    import fewshot.pipeline as pipeline

    clock = fake_clock(monkeypatch, 1.0)
    decode = pipeline.PipelineRun.decode_inputs

    def slow_decode(self):
        decode(self)
        clock["t"] += 20.0

    monkeypatch.setattr(pipeline.PipelineRun, "decode_inputs", slow_decode)
    text = _refused(digits_root, tmp_path / "r", 0.2)
    assert clock["steps"] == 0
    assert "--budget-minutes 0.2 (12.0 s) cannot hold a run: its start-up alone took 20.0 s" in text
    # the folder had been claimed (and its start is undone): "Nothing was started" was not true
    assert "Nothing was trained and the output folder was left as it was" in text and "Nothing was started" not in text


def test_a_budget_that_fits_is_timed_in_full(digits_root, tmp_path, monkeypatch, real_least_run_holds):
    """0.01 s steps in 10 minutes: the check refuses nothing, the 4 steps are timed and the stage starts training."""
    import fewshot.pipeline as pipeline

    clock = fake_clock(monkeypatch, 0.01)
    with pytest.raises(pytest.fail.Exception, match="the run started training"):
        pipeline.run_pipeline(_run_cfg(digits_root), tmp_path / "r", 10.0, started=0.0)
    assert clock["steps"] == 4
