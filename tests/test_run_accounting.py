"""`fewshot run`'s accounts over stops and resumes: the budget counts every session's time up to its stop, each
stage's summary.json entry holds the stage's own length, a reused stage's training time counts once, and a stage
resumed with no time left ends with outputs that agree (best.pt, log.jsonl, metrics.json, the console)."""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest

from helpers.checks import run_main
from helpers.run_patch import patch_pipeline
from test_run_resume import _cmd, _state, sigterm_in_stage


def stopped_in_finetune(root, out, monkeypatch) -> list:
    """A self-training-free `fewshot run` into ``out`` stopped by SIGTERM in its fine-tuning's second step; returns
    its command line."""
    from fewshot.train.supervised import SupervisedTask

    cmd = _cmd(root, out, "run.semi_method=off")
    with monkeypatch.context() as mp:
        sigterm_in_stage(mp, "finetune", SupervisedTask, 2)
        rc, _, err = run_main(*cmd)
    assert rc == 128 + signal.SIGTERM, err
    return cmd


@pytest.fixture(scope="module")
def stopped(digits_root, tmp_path_factory) -> tuple:
    """One stopped_in_finetune run for the tests that resume a copy of it (stopped_copy): its folder and command."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as mp:
        return out, stopped_in_finetune(digits_root, out, mp)


def stopped_copy(stopped: tuple, out) -> list:
    """A private copy in ``out`` of the ``stopped`` run; returns the command line that names the copy."""
    shutil.copytree(stopped[0], out, symlinks=True)
    cmd = [out if arg == stopped[0] else arg for arg in stopped[1]]
    assert cmd.count(out) == 1, cmd
    return cmd


def test_a_stopped_and_resumed_run_counts_each_session_and_stage_once(digits_root, tmp_path, monkeypatch):
    """Four sessions of one run took 219 s and it reported 200 s: the time from the stage's last record to the
    stop was lost. summary.json's stage `seconds` was the time since the run started, and the reused pretrain
    stage added a 0 s entry to fit_seconds on every resume."""
    from fewshot.train.checkpoint import load_checkpoint
    from fewshot.train.engine import Engine
    from fewshot.train.supervised import SupervisedTask

    out = tmp_path / "run"
    # its own 0.2 minutes (a later --budget-minutes wins): at _cmd's 0.1 its resumed session ran 4x longer
    cmd = _cmd(digits_root, out, "--pretrain", "run.semi_method=off", "--budget-minutes", "0.2")
    check = Engine.check_disk_space

    def slow_start(self):  # the session's work between the stage's record and its training clock
        if self.run_dir.name == "finetune":
            time.sleep(1.0)
        return check(self)

    with monkeypatch.context() as mp:
        sigterm_in_stage(mp, "finetune", SupervisedTask, 2)
        mp.setattr(Engine, "check_disk_space", slow_start)
        rc, _, err = run_main(*cmd)
    assert rc == 128 + signal.SIGTERM, err
    state = _state(out)
    trained = load_checkpoint(out / "finetune" / "checkpoints" / "last.pt")["train_seconds"]
    assert state["seconds"] >= state["stages"]["finetune"]["fit_at"] + 1.0 + trained  # up to the stop
    rc, _, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    state, summary = _state(out), json.loads((out / "summary.json").read_text())
    assert len(state["fit_seconds"]) == 2  # pretrain (reused in the second session) and finetune
    stages = summary["stages"]
    assert set(stages) == {"pretrain", "finetune"}
    assert stages["pretrain"]["seconds"] > 0 and stages["finetune"]["seconds"] > 1.0  # the latter: the sleep
    # each its own length: together no longer than the run (start-up and the closing work are neither's)
    assert stages["pretrain"]["seconds"] + stages["finetune"]["seconds"] < summary["seconds"]


def test_a_resumed_session_stopped_in_its_start_up_counts_its_time(stopped, tmp_path, monkeypatch):
    """The session's time counted only once its start-up had decoded the test images and the pool: a resume
    stopped before then (Ctrl-C while decoding) took its seconds off the budget's books."""
    out = tmp_path / "run"
    cmd = stopped_copy(stopped, out)
    before = _state(out)["seconds"]

    def slow_then_interrupted(name):
        time.sleep(1.5)
        raise KeyboardInterrupt

    patch_pipeline(monkeypatch, "resolve_device", slow_then_interrupted)
    rc, _, err = run_main(*cmd, "--resume")
    assert rc == 130, err
    assert _state(out)["seconds"] >= before + 1.5


def test_a_stage_resumed_with_no_time_left_ends_with_consistent_outputs(stopped, tmp_path):
    """Stopped in its first epoch (no evaluation yet) and resumed when the run's time was up: it said "start a new
    run with a larger --budget-minutes" while the run went on, left no best.pt and no log.jsonl row, predicted
    with the mid-epoch last.pt and its metrics named a best epoch no log row held."""
    from fewshot.train.checkpoint import load_checkpoint

    out = tmp_path / "run"
    cmd = stopped_copy(stopped, out)
    stage = out / "finetune"
    assert not (stage / "checkpoints" / "best.pt").exists()
    state = _state(out)
    state["seconds"] = state["budget_minutes"] * 60  # as if the session had run on to the end of the budget
    (out / "run_state.json").write_text(json.dumps(state))
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert "no time is left of the run's budget for this stage" in stdout and "the run goes on" in stdout
    assert "start a new run" not in stdout
    last = load_checkpoint(stage / "checkpoints" / "last.pt")
    best = load_checkpoint(stage / "checkpoints" / "best.pt")
    assert best["global_step"] == last["global_step"] == 2  # nothing trained; the stop's state evaluated
    rows = [json.loads(line) for line in (stage / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 2)] and "score" in rows[0]
    assert json.loads((stage / "metrics.json").read_text())["best_epoch"] == 1
    assert json.loads((out / "summary.json").read_text())["stages"]["finetune"]["epochs"] < 1
    # TensorBoard holds the stop's evaluation too (it was logged before the event writer was opened)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(stage / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("score")] == [(1, round(rows[0]["score"], 4))]


def test_a_stage_given_its_own_training_time_as_budget_counts_as_spent():
    """`fewshot run` resumes a stage with no time left as budget_minutes = trained / 60; for some values
    (trained / 60) * 60 is a few ulp above trained, and the stage trained one more step instead of ending."""
    from types import SimpleNamespace

    from fewshot.train.engine import Engine

    trained = 486.13034159795376
    assert trained / 60 * 60 > trained  # the float case that broke the comparison
    engine = SimpleNamespace(cfg={"train": {"budget_minutes": trained / 60}}, _seconds_before=trained,
                             _reserve_before=0.0)  # no closing-work reserve (train/budget_reserve.py) in force
    assert Engine._budget_spent(engine)
    engine._seconds_before = trained - 0.01
    assert not Engine._budget_spent(engine)


def test_a_budget_stop_of_train_is_said_with_how_to_continue_it(digits_root, tmp_path):
    """`fewshot train` stopped by train.budget_minutes printed "done" like a finished schedule."""
    out = tmp_path / "ft"
    argv = ["train", "--data", digits_root, "--out", out, "--model", "test_resnet", "--img-size", "32", "--epochs",
            "100000", "--device", "cpu", "--no-progress", "train.tensorboard=false"]
    rc, stdout, err = run_main(*argv, "train.budget_minutes=0.02")
    assert rc == 0, err
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert stdout.count("note: train.budget_minutes=0.02 is used up") == 1, stdout
    assert f"stops at epoch {rows[-1]['epoch']} of 100000" in stdout and "--resume with a larger" in stdout
