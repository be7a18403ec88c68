"""A `fewshot run` on a fake clock, for the tests of its planning: training steps move the run modules' and
run_budget's clocks on by given seconds (``step_clock``), so that a timing "meets a busy moment" without any real
load; ``stop_at_training`` ends the run where its first stage would train, with the plan it was given."""

from __future__ import annotations

import types

from fewshot.config import resolve
from fewshot.train.supervised import SupervisedTask
from helpers.run_patch import patch_pipeline, patch_run


class Planned(Exception):
    """Raised where a stage would start training (its task's kind): the plan is what the test reads."""


def run_cfg(root, **flags) -> dict:
    """A tiny `fewshot run`'s config: test_resnet at 16 px on the CPU, no report."""
    return resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16,
                          "train.device": "cpu", "train.progress": False, "train.batch_size": 16, "run.report": False,
                          **flags})


def step_clock(monkeypatch, step_s: float | list[float]) -> dict:
    """The run modules' (helpers.run_patch) and run_budget's clocks read ``clock["t"]``, which each training step
    moves on by ``step_s`` (a list: the steps' in turn, the last one from there on); ``clock["steps"]`` counts the
    steps. Nothing else takes time."""
    import fewshot.run_budget as run_budget

    clock = {"t": 0.0, "steps": 0}
    fake = types.SimpleNamespace(monotonic=lambda: clock["t"], perf_counter=lambda: clock["t"])
    patch_run(monkeypatch, "time", fake)
    monkeypatch.setattr(run_budget, "time", fake)
    step = SupervisedTask.training_step

    def training_step(self, model, batch):
        seconds = step_s if not isinstance(step_s, list) else step_s[min(clock["steps"], len(step_s) - 1)]
        clock["steps"] += 1
        clock["t"] += seconds
        return step(self, model, batch)

    monkeypatch.setattr(SupervisedTask, "training_step", training_step)
    return clock


def stop_at_training(monkeypatch) -> dict:
    """Engine.fit raises Planned(the task's kind); the returned dict holds the plan it was given (kind, step_s and
    the stage's seconds)."""
    from fewshot.train import engine

    plan = {}

    def fit(self, resume=False):
        plan.update(kind=self.task.kind, step_s=self.task.step_s,
                    stage_s=60 * float(self.cfg["train"]["budget_minutes"]))
        raise Planned(self.task.kind)

    monkeypatch.setattr(engine.Engine, "fit", fit)
    return plan


def fixed_closing(monkeypatch, seconds: float) -> None:
    """The closing work's estimate (before its share of the budget) fixed at ``seconds``."""
    patch_pipeline(monkeypatch, "closing_seconds", lambda *a, **kw: seconds)


def refused_on_a_slow_machine(monkeypatch, cfg: dict, out) -> tuple[dict, str]:
    """A 0.4-minute run on a machine that is slow on every timing (3 s a step but one 1-s step), the closing work
    fixed at 2 s: (the clock, the refusal's words)."""
    import pytest

    import fewshot.pipeline as pipeline
    from fewshot.errors import UserError

    clock = step_clock(monkeypatch, [3.0, 1.0, 3.0, 3.0, 3.0])
    fixed_closing(monkeypatch, 2.0)
    stop_at_training(monkeypatch)
    with pytest.raises(UserError) as caught:
        pipeline.run_pipeline(cfg, out, 0.4, started=0.0)
    return clock, str(caught.value)


def rounds_clock(monkeypatch, per_image: float, step_s: float) -> list[float]:
    """The self-training rounds' planning tests' fake clock: ``now[0]`` is the run modules' time.monotonic(), a
    prediction batch times ``per_image`` seconds an image and a re-timed step ``step_s`` (the same speed as the
    timing), so that only what a test moves on itself takes time."""
    now = [1000.0]
    patch_pipeline(monkeypatch, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    patch_pipeline(monkeypatch, "measure_prediction_seconds", lambda *a, **k: per_image)
    patch_pipeline(monkeypatch, "measure_step_seconds", lambda *a, **k: step_s)
    return now
