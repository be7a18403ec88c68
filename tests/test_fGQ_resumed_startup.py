"""Hunt hBX #2, left open: a resumed `fewshot run` whose own start-up (the pool and test checks, the cache reads, the
model's build) ate most of the time the stop left. The resumed-late warning said "3.5 s of the budget left" after
"0.5 of 1 minute used before the stop", without a word of the 26 s in between; and a stage resumed with less than a
fresh stage's least run started its loader and a warm-up step for a few steps at the end of its schedule."""

from __future__ import annotations

import json
import re
import signal
import time
from types import SimpleNamespace

import pytest
import torch

from fewshot.pipeline import PipelineRun
from fewshot.run_budget import FLOOR_STEPS
from helpers.checks import run_main
from helpers.run_clock import rounds_clock
from helpers.run_patch import jumpable_run_clock
from test_run_resume import _cmd, sigterm_in_stage

BUDGET_S, USED_S = 60.0, 32.0  # the hunt's 1-minute run, stopped 32 s in


def _resumed(now: float, startup: float) -> PipelineRun:
    """A resumed session ``startup`` seconds in, on the run's clock as start_state moves it (t_start back by
    the sessions before)."""
    run = PipelineRun.__new__(PipelineRun)
    t_start = now - startup - USED_S
    run.__dict__.update({"budget_s": BUDGET_S, "t_start": t_start, "last_end": t_start + BUDGET_S, "resume": True,
                         "used": USED_S})
    return run


def test_the_resumed_late_warning_names_the_sessions_start_up_and_ends_where_the_clock_says(monkeypatch, capsys):
    now = rounds_clock(monkeypatch, per_image=0.0, step_s=0.1)
    PipelineRun.warn_if_resumed_late(_resumed(now[0], 26.0), "finetune_labelled", 18.0)
    out = capsys.readouterr().out
    assert "finetune_labelled resumes with 2.0 s of the budget left" in out, out
    assert "this session's start-up and the work before this stage took 26 s of the 28 s the stop left" in out, out
    late = USED_S + 26.0 + 18.0 - BUDGET_S  # the sessions before, this one's start-up, its closing work
    assert re.search(r"end about (\d+) s after its budget", out).group(1) == f"{late:.0f}", out


def test_a_fresh_run_and_a_resume_with_time_left_say_nothing_of_a_start_up(monkeypatch, capsys):
    now = rounds_clock(monkeypatch, per_image=0.0, step_s=0.1)
    PipelineRun.warn_if_resumed_late(_resumed(now[0], 2.0), "finetune", 18.0)  # 26 s left: holds the closing work
    assert capsys.readouterr().out == ""
    PipelineRun.warn_if_resumed_late(SimpleNamespace(last_end=now[0] + 2.0), "finetune", 18.0)  # no session clock
    out = capsys.readouterr().out
    assert "resumes with 2.0 s of the budget left, less than" in out and "start-up" not in out, out


STEP_S = 0.1  # the stopped stage's logged step: its least run is FLOOR_STEPS + 1 of them


def stop_and_jump(monkeypatch, root, out, left: float):
    """Stops a semi-off 1-minute run 2 steps into `finetune`, and sets the resume up so that this session's start-up
    leaves ``left`` seconds before the closing work: the run modules' clock jumps there once the stage has estimated
    that work (last_closing), and the stage's logged step is STEP_S (``left``: a list, [seconds], that a test may change
    between sessions). Returns (the run's command, its global step at
    the stop, the global steps each Engine.fit ends at)."""
    import fewshot.run_stages as run_stages
    import fewshot.train.engine as engine
    from fewshot.train.supervised import SupervisedTask

    cmd = _cmd(root, out, "run.semi_method=off", "--budget-minutes", "1")
    with monkeypatch.context() as mp:
        sigterm_in_stage(mp, "finetune", SupervisedTask, 2)
        rc, _, err = run_main(*cmd)
    assert rc == 128 + signal.SIGTERM, err
    last = out / "finetune" / "checkpoints" / "last.pt"
    before = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    jump = jumpable_run_clock(monkeypatch)
    real_closing, speeds = PipelineRun.last_closing, run_stages.trained_speeds

    def closing(self, task, eval_s, step_s=None):
        need = real_closing(self, task, eval_s, step_s)
        ahead = left[0] if isinstance(left, list) else left
        jump[0] += self.last_end - time.monotonic() - jump[0] - need - ahead  # the start-up took all but ``left``
        return need

    monkeypatch.setattr(PipelineRun, "last_closing", closing)
    monkeypatch.setattr(run_stages, "trained_speeds", lambda *a, **k: (STEP_S, speeds(*a, **k)[1]))
    steps, fit = [], engine.Engine.fit

    def counted(self, *args, **kwargs):
        result = fit(self, *args, **kwargs)
        steps.append(self.global_step)
        return result

    monkeypatch.setattr(engine.Engine, "fit", counted)
    return cmd, before, steps


def _resume_with_left(monkeypatch, root, out, left: float):
    """stop_and_jump, then the resume: (stdout, its global step at the stop, at the end of this session's training,
    summary.json)."""
    cmd, before, steps = stop_and_jump(monkeypatch, root, out, left)
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert len(steps) == 1, steps
    summary = json.loads((out / "summary.json").read_text())
    return stdout, before, steps[0], summary


@pytest.mark.usefixtures("real_least_run_holds")
def test_a_resume_left_less_than_its_least_run_goes_straight_to_its_closing_work(digits_root, tmp_path, monkeypatch):
    left = 4 * STEP_S  # holds 3 steps and the one kept back: under the least run of FLOOR_STEPS + 1
    stdout, before, after, summary = _resume_with_left(monkeypatch, digits_root, tmp_path / "run", left)
    assert re.search(r"\[run\] finetune: this session's start-up and the work before this stage took all but 0.4 s "
                     r"of the \d+ s the stop left before its closing work, less than a stage's least run "
                     rf"\({FLOOR_STEPS + 1} training steps, about 0.6 s at its logged speed of 0.1 s a step\): it "
                     r"trains no further and goes straight to its closing work", stdout), stdout
    assert "finetune: continuing from" not in stdout and "no time is left" not in stdout, stdout
    assert "resuming from" not in stdout, stdout  # the Engine's epoch and step after "trains no further" (rev114 #3)
    assert after == before, (before, after)  # no step trained
    [skipped] = summary["resumed_training_skipped"]  # one record per stage that skipped
    assert skipped["stage"] == "finetune" and skipped["least_s"] == pytest.approx((FLOOR_STEPS + 1) * STEP_S)
    assert skipped["left_s"] == pytest.approx(left, abs=0.05) and "trains no further" in skipped["why"], skipped
    assert summary["predicted_with"] == "finetune", summary


@pytest.mark.usefixtures("real_least_run_holds")
def test_a_resume_left_its_least_run_trains_on_as_before(digits_root, tmp_path, monkeypatch):
    stdout, before, after, summary = _resume_with_left(monkeypatch, digits_root, tmp_path / "run", 15 * STEP_S)
    assert "finetune: continuing from" in stdout and "goes straight to its closing work" not in stdout, stdout
    assert after > before, (before, after)
    assert "resumed_training_skipped" not in summary, summary
