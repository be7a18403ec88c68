"""`fewshot run` fixes: a refused --resume leaves the run's time as it was, a 400-digit budget_minutes is a damaged
state (not an OverflowError), the least-run refusal's "over" is a true bound, a resumed report that draws its images
drops the word that they were left out, and a MoCo stage resumed past the budget says so before its closing work."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.checks import run_main
from test_run_resume import _cmd, stopped_in_stage

from fewshot.pipeline import PipelineRun
from fewshot.run_budget import too_short_budget_error
from fewshot.run_state import STATE_FILE

SHORT = ("--budget-minutes", "0.03")  # after BASE's 0.2, so it wins: the run's length is not the subject (suite time)


def _state(out: Path) -> dict:
    return json.loads((out / STATE_FILE).read_text())


@pytest.fixture(scope="module")
def stopped_run(digits_root, tmp_path_factory) -> Path:
    """A `fewshot run` (no self-training) stopped by SIGTERM in its step 2, made once: the tests resume copies."""
    from fewshot.train.supervised import SupervisedTask

    out = tmp_path_factory.mktemp("stopped") / "run"
    stopped_in_stage(_cmd(digits_root, out, "run.semi_method=off", *SHORT), "finetune", SupervisedTask)
    return out


def _stopped_copy(stopped_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(stopped_run, tmp_path / "run", symlinks=True))


def test_a_resume_refused_over_its_data_leaves_the_runs_time_as_it_was(copy_root, tmp_path, stopped_run):
    """Each refused `run --resume` on a root whose class folder was renamed added its start-up to the run's
    "seconds" (note_stop after open_session); the state is as the stop left it, and the resume on the
    original data then goes on. The run stopped on digits_root (stopped_run) resumes on its copy, copy_root."""
    out = _stopped_copy(stopped_run, tmp_path)
    cmd = _cmd(copy_root, out, "run.semi_method=off", *SHORT)
    before = _state(out)
    assert before["session_open"] is False
    dataset = sorted(p.name for p in copy_root.iterdir() if (p / "train").is_dir())[-1]
    first = sorted(p.name for p in (copy_root / dataset / "train").iterdir() if p.is_dir())[0]
    for split in ("train", "val"):
        (copy_root / dataset / split / first).rename(copy_root / dataset / split / "renamed")
    for _ in range(2):
        time.sleep(0.2)  # time a counted session would add
        rc, _, err = run_main(*cmd, "--resume")
        assert rc == 2 and f"{dataset}'s classes differ" in err, err
        assert _state(out) == before  # its seconds, and no session left open (to be counted as lost)
    for split in ("train", "val"):
        (copy_root / dataset / split / "renamed").rename(copy_root / dataset / split / first)
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert "ended without a word" not in stdout and "not counted" not in stdout
    assert "unrecorded_sessions" not in _state(out)


def test_a_stop_in_a_resumed_start_up_still_counts(digits_root, tmp_path, monkeypatch, stopped_run):
    """Only a refusal is undone: a Ctrl-C while a resumed session checks its data counts its time, as before."""
    from fewshot import pipeline

    out = _stopped_copy(stopped_run, tmp_path)
    cmd = _cmd(digits_root, out, "run.semi_method=off", *SHORT)
    seconds = _state(out)["seconds"]

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.PipelineRun, "check_pseudo_precision", interrupted)
    rc, _, err = run_main(*cmd, "--resume")
    assert rc == 128 + signal.SIGINT, err
    assert _state(out)["seconds"] > seconds


def test_a_budget_of_400_digits_is_a_damaged_state_not_a_traceback(digits_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / STATE_FILE).write_text('{"version": 1, "config": {}, "budget_minutes": 1' + "0" * 400
                                  + ', "stages": {}, "seconds": 0, "finished": false}')
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--resume", "--device", "cpu")
    assert rc == 2, err
    assert "is damaged: budget_minutes must be a number above 0 whose seconds are finite" in err
    assert "Traceback" not in err and "OverflowError" not in err


def test_the_least_run_need_said_over_is_a_true_lower_bound():
    """6 steps at 769 ms need 4.6 s: "over 5 s" rounded the bound up."""
    text = str(too_short_budget_error(12.0, 9.0, 6 * 0.769, 0.769, "test_resnet at 32px", "", untimed="its steps"))
    assert "6 training steps at 769 ms" in text
    assert "needs over 4.6 s more, over 13.6 s in all (its steps;" in text, text
    assert "over 5 s" not in text and "over 14 s" not in text
    whole = str(too_short_budget_error(12.0, 9.0, 18.0, 3.0, "test_resnet at 32px", "", untimed="its steps"))
    assert "over 18 s more, over 27 s in all" in whole
    assert "over 0.9 s more" in str(too_short_budget_error(12.0, 0.0, 0.3 * 3, 0.15, "m", "", untimed="x"))


def test_a_report_that_now_fits_drops_the_word_that_its_images_were_left_out():
    run = SimpleNamespace(out=Path("r"), r={"report": True}, report_plan={"seconds": (1.0, 2.0)},
                          t_start=time.monotonic(), budget_s=600.0,
                          summary={"stages": {}, "report_without_images": "about 0 s of the budget were left"})
    assert PipelineRun.report_skips_images(run) is None
    assert "report_without_images" not in run.summary


def test_a_run_stopped_in_its_report_and_resumed_with_time_draws_and_says_the_images(digits_root, tmp_path,
                                                                                     monkeypatch):
    """The session stopped while drawing a report without its images saved that word in run_state.json's summary
    (note_stop); the resumed session, with time for the images, drew them and still said they were left out."""
    from fewshot.report import build
    from fewshot.train.stop_signal import Terminated

    out = tmp_path / "run"
    cmd = [*_cmd(digits_root, out, "run.semi_method=off", *SHORT), "run.report=true"]
    report = PipelineRun.report

    def short_of_time(self, metrics):
        self.report_plan["seconds"] = (1.0, 1e6)  # the images cannot fit
        return report(self, metrics)

    def stopped(*args, **kwargs):
        raise Terminated(signal.SIGTERM)  # SIGTERM while drawing

    with monkeypatch.context() as mp:
        mp.setattr(PipelineRun, "report", short_of_time)
        mp.setattr(build, "build_report", stopped)
        rc, stdout, err = run_main(*cmd)
    assert rc == 128 + signal.SIGTERM, err
    assert "leaves out its confusion matrices" in stdout
    assert "report_without_images" in _state(out)["summary"]

    def with_time(self, metrics):
        self.budget_s += 1e5  # the time left holds the images now
        return report(self, metrics)

    monkeypatch.setattr(PipelineRun, "report", with_time)
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert "leaves out its confusion matrices" not in stdout
    assert "report_without_images" not in json.loads((out / "summary.json").read_text())
    assert "prediction grid skipped" not in (out / "report" / "index.html").read_text()
