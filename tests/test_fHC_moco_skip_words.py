"""Review rev117 of a resumed MoCo stage's one [run] line (run_stages.go_on_resumed) and its summary.json record.
#1: the skip line's "N s the stop left" added this session's whole start-up to the time left, but MoCo's end is
re-split from what the budget has left after the start-up (PipelineRun.moco_end): 8 s more start-up named 17 s
where the stop had left MoCo 12 s. #2: one summary record for the run, so a later session's fine-tuning skip
replaced MoCo's. #5: the no-time line named "run.pretrain_share=0.5" as if set, as a share of the whole budget."""

from __future__ import annotations

import json
import re
import shutil
import time
import types
from html import unescape

import pytest

from fewshot.pipeline import PipelineRun
from fewshot.run_state import RunState
from helpers.checks import run_main
from helpers.run_patch import patch_run
from test_fEU_compare_width import _pipeline, _stage_config
from test_run_resume import _cmd, stopped_in_stage

STEP_S = 0.1  # the stopped stage's logged step: its least run is FLOOR_STEPS + 1 of them
pytestmark = pytest.mark.usefixtures("real_least_run_holds")  # later_rounds_fit relaxes it for whole runs


def _stopped_moco(root, out):
    """A 0.3-minute `--pretrain` run stopped by SIGTERM 2 steps into MoCo; returns its command."""
    from fewshot.ssl.pretrain import MoCoTask

    cmd = _cmd(root, out, "--pretrain", "run.semi_method=off", "--budget-minutes", "0.3")
    stopped_in_stage(cmd, "pretrain", MoCoTask)
    return cmd


def _resume(cmd, left: float, pre: float = 0.0) -> str:
    """``cmd`` resumed with ``pre`` seconds more start-up before MoCo's share is taken (PipelineRun.pretrain), then
    the clock jumped at MoCo's cap to leave ``left`` seconds before its closing work; its logged step STEP_S.
    Returns its stdout."""
    import fewshot.run_stages as run_stages

    jump = [0.0]
    real_cap, speeds, real_pretrain = run_stages.cap_resumed_budget, run_stages.trained_speeds, PipelineRun.pretrain

    def pretrain(self):  # the review's sleep before PipelineRun.pretrain, on the run's clock
        jump[0] += pre
        return real_pretrain(self)

    def cap(cfg, ck, end_time, step_s=None):  # the start-up took all but ``left`` of the time before its end
        jump[0] = end_time - time.monotonic() - left
        return real_cap(cfg, ck, end_time, step_s)

    with pytest.MonkeyPatch.context() as mp:
        patch_run(mp, "time", types.SimpleNamespace(monotonic=lambda: time.monotonic() + jump[0],
                                                    perf_counter=time.perf_counter, sleep=time.sleep))
        mp.setattr(PipelineRun, "pretrain", pretrain)
        mp.setattr(run_stages, "cap_resumed_budget", cap)
        mp.setattr(run_stages, "trained_speeds", lambda *a, **k: (STEP_S, speeds(*a, **k)[1]))
        rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    return stdout


def _stop_left(stdout: str) -> tuple[float, str]:
    """The seconds the skip line says the stop left MoCo, and the line."""
    said = [line for line in stdout.splitlines() if line.startswith("[run] pretrain: ")]
    assert len(said) == 1, said
    found = re.search(r"took all but 0\.[34] s of the ([\d.]+) s the stop left", said[0])
    assert found, said
    return float(found.group(1)), said[0]


def test_the_skip_line_names_what_the_stop_left_moco_whatever_the_start_up_took(digits_root, tmp_path):
    """The review's two start-ups of one stopped run: a plain one, and one 8 s longer before MoCo's share is taken.
    The stop left MoCo the same seconds in both; the longer start-up named 4 s more (half of its 8 s)."""
    cmd = _stopped_moco(digits_root, tmp_path / "run")
    out = cmd[cmd.index("--out") + 1]
    state = RunState(out, json.loads((out / "run_state.json").read_text()))
    shutil.copytree(out, tmp_path / "again")
    plain, line = _stop_left(_resume(cmd, 4 * STEP_S))
    longer, _ = _stop_left(_resume([tmp_path / "again" if a == out else a for a in cmd], 4 * STEP_S, pre=8.0))
    assert longer == pytest.approx(plain, abs=1.0), (plain, longer)
    # at most MoCo's half of the budget the stop left (the closing work and last.pt's read are kept back from it)
    used = state.seconds_used()
    assert plain <= 0.5 * (state.data["budget_minutes"] * 60 - used) + 0.05, (plain, used)
    # MoCo is the run's first stage: no "work before this stage"
    assert re.match(r"\[run\] pretrain: this session's start-up took all but 0\.[34] s of the [\d.]+ s the stop left "
                    r"this stage before its closing work, less than a stage's least run", line), line


def test_the_no_time_line_names_moco_s_share_of_the_time_left_as_a_value(digits_root, tmp_path):
    """Its cap left nothing: the line says what MoCo's share is of (the time left after this session's start-up),
    and gives the share as the value it is, not as a setting the user gave (none was)."""
    cmd = _stopped_moco(digits_root, tmp_path / "run")
    stdout = _resume(cmd, -0.5)
    said = [line for line in stdout.splitlines() if line.startswith("[run] pretrain: ")]
    assert len(said) == 1 and "run.pretrain_share=" not in stdout, said
    assert (": no time is left of MoCo's share (0.5 by run.pretrain_share) of what the run's budget of 0.3 minutes "
            "had left after this session's start-up, before its closing work (") in said[0], said


def test_a_later_sessions_fine_tuning_skip_keeps_moco_s_record():
    """Session 2 skipped MoCo's training, session 3 the fine-tuning's (the summary carries over, run_state.json):
    both records stay; a stage's own later record replaces its earlier one."""
    run = types.SimpleNamespace(summary={"stages": {}})
    moco, tune = {"left_s": 0.2, "why": "MoCo's why"}, {"left_s": 0.4, "why": "the fine-tuning's why"}
    PipelineRun.note_resumed_skip(run, "pretrain", moco)
    PipelineRun.note_resumed_skip(run, "finetune", tune)
    assert run.summary["resumed_training_skipped"] == [{"stage": "pretrain", **moco}, {"stage": "finetune", **tune}]
    PipelineRun.note_resumed_skip(run, "finetune", {**tune, "left_s": 0.1})
    assert run.summary["resumed_training_skipped"] == [{"stage": "pretrain", **moco},
                                                       {"stage": "finetune", **tune, "left_s": 0.1}]
    old = types.SimpleNamespace(summary={"resumed_training_skipped": {"stage": "pretrain", **moco}})  # one record
    PipelineRun.note_resumed_skip(old, "finetune", tune)
    assert old.summary["resumed_training_skipped"] == [{"stage": "pretrain", **moco}, {"stage": "finetune", **tune}]


@pytest.mark.parametrize("records", [
    [{"stage": "pretrain", "why": "MoCo's why"}, {"stage": "finetune", "why": "the fine-tuning's why"}],
    {"stage": "pretrain", "why": "MoCo's why"},  # a run summarised with one record
])
def test_the_report_says_each_stage_s_skip(tmp_path, records):
    folder = _pipeline(tmp_path / "r_skip", {"finetune": (42.25, _stage_config("pseudo"))})
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "resumed_training_skipped": records}))
    rc, _, err = run_main("report", folder, "--out", tmp_path / "rep", "--no-progress")
    assert rc == 0, err
    page = unescape((tmp_path / "rep" / "index.html").read_text(encoding="utf-8"))
    moco = "r_skip: the resumed stage pretrain trained no further (planned, not an error): MoCo's why"
    both = f"{moco}; the resumed stage finetune trained no further (planned, not an error): the fine-tuning's why."
    assert (both if isinstance(records, list) else f"{moco}.") in page, page
