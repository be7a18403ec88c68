"""`fewshot run` is split over the pipeline and its stage modules, each of which imports run_budget's timings and
looks them up in its own namespace: a test that fakes a speed on fewshot.pipeline alone would leave a stage's
planning and the pool's labelling on the real clock and pass without a word. helpers.run_patch patches every run
module that imports the name; these tests keep it reaching all of them."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from types import SimpleNamespace

import fewshot
from helpers.run_patch import RUN_MODULES, patch_run

TIMINGS = ("measure_step_seconds", "measure_eval_seconds", "measure_prediction_seconds")


def test_every_module_that_imports_a_timing_is_one_patch_run_reaches():
    root = Path(fewshot.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.ImportFrom) and node.module == "fewshot.run_budget"
                    and any(alias.name in TIMINGS for alias in node.names)):
                importers.add(".".join(("fewshot", *path.relative_to(root).with_suffix("").parts)))
    assert "fewshot.run_stages" in importers and "fewshot.run_pseudo" in importers
    assert importers <= set(RUN_MODULES), f"not reached by helpers.run_patch: {sorted(importers - set(RUN_MODULES))}"


def test_a_patched_timing_reaches_the_stage_planning_and_the_round_speeds(monkeypatch):
    from fewshot.run_pseudo import round_speeds
    from fewshot.run_stages import plan_stage

    patch_run(monkeypatch, "measure_step_seconds", lambda task: 0.25)
    patch_run(monkeypatch, "measure_eval_seconds", lambda task: 0.5)
    task = SimpleNamespace(plan_epoch=lambda epoch: [0] * 4)
    step_s, _, _ = plan_stage(task, {"train": {}, "sched": {}}, time.monotonic() + 60.0, 1, ("train", "eval_every"))
    assert (step_s, task.eval_s) == (0.25, 0.5)
    assert round_speeds(SimpleNamespace(), 1)[:2] == (0.25, 0.5)
