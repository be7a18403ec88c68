"""Patching a timing or the clock for a whole `fewshot run`.

The pipeline and its stage modules (run_stages: a stage's planning and training; run_pseudo: the pool's labelling
and a later round's speeds) each import run_budget's measure_*_seconds and `time`, and each call looks the name up
in its own module: a patch on fewshot.pipeline alone would not reach plan_stage or pool_share_in_time, and the test
would pass on the real timings without a word. A test of one function patches its own module instead."""

from __future__ import annotations

import importlib

RUN_MODULES = ("fewshot.pipeline", "fewshot.run_stages", "fewshot.run_pseudo")


def patch_run(monkeypatch, name: str, value) -> None:
    """``name`` set to ``value`` on every run module that looks it up (RUN_MODULES that import it)."""
    modules = [m for m in map(importlib.import_module, RUN_MODULES) if hasattr(m, name)]
    assert modules, f"no run module looks up {name!r}: {', '.join(RUN_MODULES)}"
    for module in modules:
        monkeypatch.setattr(module, name, value)
