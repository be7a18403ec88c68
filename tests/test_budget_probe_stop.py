"""`fewshot run`'s start-up timing stops at the budget: a 0.2-minute run on a busy machine timed its steps, an
evaluation and a prediction batch, and refused its budget only after 21.5 s of 12 s. Now the timings check the
clock before they start and after each training step, and refuse once the budget left cannot hold any run, or the
least run's steps alone at the speed timed so far.

A fake clock (as helpers.checks.engine_clock fakes the Engine's): each training step takes ``step_s`` "seconds",
everything else none, so each test reads where the run stopped, not the machine's speed."""

from __future__ import annotations

import types

import pytest

from fewshot.config import resolve
from fewshot.errors import UserError
from fewshot.train.supervised import SupervisedTask


def _run_cfg(root) -> dict:
    return resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16,
                          "train.device": "cpu", "train.progress": False, "run.semi_method": "off",
                          "run.report": False})


def fake_clock(monkeypatch, step_s: float) -> dict:
    """pipeline's and run_budget's clocks read ``clock["t"]``, which each training step moves on by ``step_s``;
    ``clock["steps"]`` counts the steps (the timing's, as the Engine's are stopped before they run)."""
    import fewshot.pipeline as pipeline
    import fewshot.run_budget as run_budget
    from fewshot.train import engine

    clock = {"t": 0.0, "steps": 0}
    fake = types.SimpleNamespace(monotonic=lambda: clock["t"], perf_counter=lambda: clock["t"])
    monkeypatch.setattr(pipeline, "time", fake)
    monkeypatch.setattr(run_budget, "time", fake)
    step = SupervisedTask.training_step

    def training_step(self, model, batch):
        clock["steps"] += 1
        clock["t"] += step_s
        return step(self, model, batch)

    monkeypatch.setattr(SupervisedTask, "training_step", training_step)
    monkeypatch.setattr(engine.Engine, "fit", lambda self, resume=False: pytest.fail("the run started training"))
    return clock


def _refused(root, out, minutes: float) -> str:
    import fewshot.pipeline as pipeline

    with pytest.raises(UserError) as caught:
        pipeline.run_pipeline(_run_cfg(root), out, minutes, started=0.0)
    assert not out.exists()  # the start is undone: a rerun with a larger budget is not refused as "not empty"
    return str(caught.value)


def _no_later_timing(monkeypatch) -> None:
    import fewshot.pipeline as pipeline

    monkeypatch.setattr(pipeline, "measure_eval_seconds", lambda *a, **k: pytest.fail("evaluation timed"))
    monkeypatch.setattr(pipeline, "measure_prediction_seconds", lambda *a, **k: pytest.fail("prediction timed"))


def test_the_timing_stops_once_the_steps_alone_do_not_fit(digits_root, tmp_path, monkeypatch, real_least_run_holds):
    """3 s steps in 12 s: after the warm-up (3 s) and one timed step (6 s), 6 steps (18 s) cannot fit the 6 s left:
    refused there, with the speed timed; before, 3 more steps, an evaluation and a prediction batch were timed."""
    clock = fake_clock(monkeypatch, 3.0)
    _no_later_timing(monkeypatch)
    text = _refused(digits_root, tmp_path / "r", 0.2)
    assert clock["steps"] == 2 and clock["t"] == 6.0
    assert "--budget-minutes 0.2 is too short for test_resnet at 16px" in text
    assert "6 training steps at 3000 ms" in text and "took 6 s" in text
    assert "over 18 s more, over 24 s in all (its steps alone: the timing stopped there, as they did not fit; " in text
    least = float(text.split("Give --budget-minutes ")[1].split()[0])
    assert least * 60 >= 24  # what the steps alone need, at least
    assert "Nothing was trained and the output folder was left as it was" in text


def test_a_deadline_passed_in_the_warm_up_step_stops_the_timing(digits_root, tmp_path, monkeypatch,
                                                                real_least_run_holds):
    """A 20 s first step in a 12 s budget: refused at once, naming the warm-up's speed as such."""
    clock = fake_clock(monkeypatch, 20.0)
    _no_later_timing(monkeypatch)
    text = _refused(digits_root, tmp_path / "r", 0.2)
    assert clock["steps"] == 1
    assert "6 training steps at 20000 ms" in text and "at its first step's speed, a warm-up" in text


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


def test_a_budget_that_fits_is_timed_in_full(digits_root, tmp_path, monkeypatch, real_least_run_holds):
    """0.01 s steps in 10 minutes: the check refuses nothing, the 4 steps are timed and the stage starts training."""
    import fewshot.pipeline as pipeline

    clock = fake_clock(monkeypatch, 0.01)
    with pytest.raises(pytest.fail.Exception, match="the run started training"):
        pipeline.run_pipeline(_run_cfg(digits_root), tmp_path / "r", 10.0, started=0.0)
    assert clock["steps"] == 4
