"""A MoCo stage resumed by `fewshot run --pretrain --resume` with only a few seconds left before its closing work
follows the fine-tuning's decision (run_stages.go_on_resumed): it trains no further where its steady step says the
time left holds less than a least run, and says so in one [run] line. It said "continuing ... on its planned
schedule", trained those steps, then the Engine's "resuming from ...: epoch N" and maybe its "no time is left" note."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from fewshot.run_budget import FLOOR_STEPS
from helpers.checks import run_main
from helpers.run_patch import jumpable_run_clock
from test_run_resume import _cmd, stopped_in_stage

BUDGET_MINUTES = "0.3"  # MoCo's share and the fine-tuning after it: a short run that holds their least runs
STEP_S = 0.1  # the stopped stage's logged step: its least run is FLOOR_STEPS + 1 of them
pytestmark = pytest.mark.usefixtures("real_least_run_holds")  # later_rounds_fit relaxes it for whole runs


def _resume_moco(monkeypatch, root, out, left: float):
    """A BUDGET_MINUTES `--pretrain` run stopped by SIGTERM 2 steps into MoCo, resumed with the clock jumped so that
    this session's start-up left ``left`` seconds before MoCo's closing work (at its cap, cap_resumed_budget), its
    logged step STEP_S. Returns (stdout, MoCo's global step at the stop, at the end of this session's MoCo,
    summary.json)."""
    import fewshot.run_stages as run_stages
    import fewshot.train.engine as engine
    from fewshot.ssl.pretrain import MoCoTask

    cmd = _cmd(root, out, "--pretrain", "run.semi_method=off", "--budget-minutes", BUDGET_MINUTES)
    stopped_in_stage(cmd, "pretrain", MoCoTask)
    last = out / "pretrain" / "checkpoints" / "last.pt"
    before = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    jump = jumpable_run_clock(monkeypatch)
    real_cap, speeds = run_stages.cap_resumed_budget, run_stages.trained_speeds

    def cap(cfg, ck, end_time, step_s=None):  # the start-up took all but ``left`` of the time before its end
        jump[0] += end_time - time.monotonic() - jump[0] - left
        return real_cap(cfg, ck, end_time, step_s)

    monkeypatch.setattr(run_stages, "cap_resumed_budget", cap)
    monkeypatch.setattr(run_stages, "trained_speeds", lambda *a, **k: (STEP_S, speeds(*a, **k)[1]))
    steps, fit = [], engine.Engine.fit

    def counted(self, *args, **kwargs):
        result = fit(self, *args, **kwargs)
        if self.run_dir.name == "pretrain":
            steps.append(self.global_step)
        return result

    monkeypatch.setattr(engine.Engine, "fit", counted)
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert len(steps) == 1 and (out / "backbone.safetensors").is_file(), steps
    return stdout, before, steps[0], json.loads((out / "summary.json").read_text())


def _moco_says(stdout: str) -> list[str]:
    """The lines that speak of the resumed MoCo stage's going on."""
    return [line for line in stdout.splitlines()
            if "pretrain" in line and ("trains no further" in line or "continuing from" in line
                                       or "resuming from" in line)
            or "no time is left of the run's budget for this stage" in line]


def test_a_moco_stage_left_less_than_its_least_run_trains_no_further_and_says_it_once(digits_root, tmp_path,
                                                                                      monkeypatch):
    stdout, before, after, summary = _resume_moco(monkeypatch, digits_root, tmp_path / "run", 4 * STEP_S)
    assert after == before, (before, after, stdout)  # not those few steps, with the loader's start and a warm-up
    said = _moco_says(stdout)
    assert len(said) == 1, said
    assert re.match(r"\[run\] pretrain: this session's start-up cost this stage all but 0\.[34] s of the [\d.]+ s the "
                    r"stop left it before its closing work", said[0]), said
    assert (f"less than a stage's least run ({FLOOR_STEPS + 1} training steps, about 0.6 s at its logged speed of "
            f"0.1 s a step): it trains no further and goes straight to its closing work") in said[0], said
    [skipped] = summary["resumed_training_skipped"]  # the fine-tuning's record, under MoCo's stage name
    assert skipped["stage"] == "pretrain" and skipped["left_s"] == pytest.approx(0.4, abs=0.15), skipped
    assert "[run] fine-tuning from MoCo weights" in stdout, stdout


def test_a_moco_stage_whose_cap_left_nothing_says_one_line_in_the_users_terms(digits_root, tmp_path, monkeypatch):
    stdout, before, after, summary = _resume_moco(monkeypatch, digits_root, tmp_path / "run", -0.5)
    assert after == before, (before, after, stdout)
    said = _moco_says(stdout)
    assert len(said) == 1, said  # no "continuing", no Engine "resuming from ...: epoch" nor its no-time note
    assert "run.pretrain_share=" not in stdout, stdout  # a value, not a setting the user gave
    last = tmp_path / "run" / "pretrain" / "checkpoints" / "last.pt"
    head = (f"[run] pretrain: resumed from {last}: no time is left of MoCo's share (run.pretrain_share: 0.5) of what "
            f"the run's budget of 0.3 minutes had left after this session's start-up, before its closing work (")
    assert re.fullmatch(re.escape(head) + r"0\.[5-9] s past it already\): it trains no further and goes straight to "
                        r"its closing work", said[0]), said
    assert "resumed_training_skipped" not in summary, summary  # no time to judge: the budget ran out, no skip
    assert "[run] fine-tuning from MoCo weights" in stdout, stdout
