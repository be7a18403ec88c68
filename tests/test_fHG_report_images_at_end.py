"""The end decides the report's images at the figure speed as timed, not at the capped one the stages were planned
with (review rev121 #1): with the cap alone, a report drawing 4x slower than FIGURE_S kept its images with too
little time left and ended late. The numbers are the review's probe (/tmp/rev121_e2e/cap_probe.py): one dataset of
10 classes, 2 report stages, a 32 MB checkpoint read, evaluations of 1.7 s."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace as NS

import torch

from fewshot.pipeline import PipelineRun
from fewshot.run_budget import FIGURE_S, report_seconds
from fewshot.run_closing import ClosingMixin

EVAL_S, STAGES = 1.7, 2


def _task():
    return NS(model=torch.nn.Linear(1000, 4000), space=NS(classes=[list(range(10))]),
              cfg={"train": {"ema": False}})


def _drawn_at(scale: float) -> float:
    """The probe's report at ``scale`` x the idle figure speed: the drawing scaled, the rest as timed."""
    conf = 0.15 + 0.013 * 10
    return scale * (0.5 + 0.6 * STAGES + conf + 1.3) + 0.3 * STAGES + 3 * 4000e3 * 8 / 250e6 + EVAL_S


def _run(figure_s: float) -> NS:
    """A run stand-in whose closing() has planned the report at ``figure_s`` (no stage planned now: step_s None)."""
    run = NS(report_plan={"figure_s": figure_s, "seconds": None}, budget_s=30.0, t_start=time.monotonic(),
             test_set=[], report_stages=STAGES, balance="off", writes_bps=250e6, semi="off", out=Path("r"),
             r={"report": True}, summary={"stages": {}})
    ClosingMixin.closing(run, _task(), EVAL_S, per_test_image=0.0)
    return run


def _left(run: NS, seconds: float) -> None:
    run.t_start = time.monotonic() - (run.budget_s - seconds)


def test_a_report_drawing_4x_slower_leaves_out_its_images_when_only_the_capped_estimate_fits():
    run = _run(4 * FIGURE_S)
    capped = sum(report_seconds(_task(), EVAL_S, STAGES, 4 * FIGURE_S))
    assert _drawn_at(4.0) - capped > 3.0  # the probe: 3.3 s short of the report's real need
    _left(run, capped + 1.5)  # room for the capped estimate, not for the report at its speed
    words = PipelineRun.report_skips_images(run)
    assert words is not None and "report_without_images" in run.summary
    assert f"takes about {_drawn_at(4.0):.0f} s with them" in words, words


def test_at_3_45x_the_images_are_left_out_too_and_kept_with_time_for_them():
    run = _run(3.45 * FIGURE_S)
    _left(run, _drawn_at(3.45) - 0.5)  # the probe's 14.0 s report, 1.5 s more than the capped 12.5 s
    assert PipelineRun.report_skips_images(run) is not None
    _left(run, _drawn_at(3.45) + 0.5)
    assert PipelineRun.report_skips_images(run) is None
    below = _run(2 * FIGURE_S)  # below the cap the end decides as planned
    _left(below, sum(below.report_plan["seconds"]) + 0.3)
    assert PipelineRun.report_skips_images(below) is None
