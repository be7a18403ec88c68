"""Two fHD paths no test held (review rev121 #5): the labelled-only round's line about the report's images is silent
where they would be left out anyway (the closing work with them over half the budget), and MoCo's curves plot is
scaled by the capped figure speed, as the report's drawing is."""

from __future__ import annotations

from types import SimpleNamespace as NS

from fewshot.run_budget import FIGURE_S, FIGURE_SCALE_CAP
from fewshot.run_closing import CURVES_S, ClosingMixin
from fewshot.run_rounds import say_images_left_out


def _said(capsys, budget_s: float) -> str:
    run = NS(report_plan={"seconds": (1.0, 4.0), "least": 10.0}, budget_s=budget_s, speeds_before=(0.1,), out=None)
    say_images_left_out(run, 2, 0.15, 10.0, 12.0)
    return capsys.readouterr().out


def test_the_images_line_is_said_within_half_the_budget_and_silent_beyond(capsys):
    assert "round 2 trains on the labelled images without the report's" in _said(capsys, 40.0)  # 14 s of 40
    assert _said(capsys, 27.0) == ""  # 14 s of 27: over half, the end leaves the images out anyway


def test_moco_s_curves_are_scaled_by_the_capped_figure_speed():
    run = NS(report_plan={"figure_s": 5 * FIGURE_S}, semi="off", r={"pseudo_rounds": 1})
    assert ClosingMixin.after_moco_seconds(run, 0.1) == CURVES_S * FIGURE_SCALE_CAP
    run.report_plan["figure_s"] = 2 * FIGURE_S
    assert abs(ClosingMixin.after_moco_seconds(run, 0.1) - CURVES_S * 2) < 1e-9
