"""Patching a timing or the clock for a whole `fewshot run`.

The pipeline and its stage modules (run_stages: a stage's planning, training and a finished round's speeds;
run_pseudo: the pool's labelling) each import the run_budget timings they call (run_pseudo only
measure_prediction_seconds), and the pipeline and run_stages also `time` for the run's clock; each call looks the
name up in its own module: a patch on fewshot.pipeline alone would not reach plan_stage or pool_share_in_time, and
the test would pass on the real timings without a word. A test of one function patches its own module instead.
PipelineRun itself is written in the pipeline and its mixins' modules (PIPELINE_MODULES): patch_pipeline replaces a
name in each of them that looks it up, as a patch on fewshot.pipeline did before the class was split over them."""

from __future__ import annotations

import importlib

PIPELINE_MODULES = ("fewshot.pipeline", "fewshot.run_startup", "fewshot.run_closing", "fewshot.run_rounds")
RUN_MODULES = (*PIPELINE_MODULES, "fewshot.run_stages", "fewshot.run_pseudo")


def patch_run(monkeypatch, name: str, value) -> None:
    """``name`` set to ``value`` on every run module that looks it up (RUN_MODULES that import it)."""
    modules = [m for m in map(importlib.import_module, RUN_MODULES) if hasattr(m, name)]
    assert modules, f"no run module looks up {name!r}: {', '.join(RUN_MODULES)}"
    for module in modules:
        monkeypatch.setattr(module, name, value)


def patch_pipeline(monkeypatch, name: str, value) -> None:
    """``name`` set to ``value`` on every module of PipelineRun (PIPELINE_MODULES) that looks it up."""
    modules = [m for m in map(importlib.import_module, PIPELINE_MODULES) if hasattr(m, name)]
    assert modules, f"no module of PipelineRun looks up {name!r}: {', '.join(PIPELINE_MODULES)}"
    for module in modules:
        monkeypatch.setattr(module, name, value)


def jumpable_run_clock(monkeypatch) -> list[float]:
    """The run modules' clock (patch_run's ``time``) made to run ahead: the returned one-item list holds the seconds
    it is ahead of time.monotonic(), which a test raises to stand in for a slow start-up."""
    import time
    import types

    jump = [0.0]
    patch_run(monkeypatch, "time", types.SimpleNamespace(monotonic=lambda: time.monotonic() + jump[0],
                                                         perf_counter=time.perf_counter, sleep=time.sleep))
    return jump
