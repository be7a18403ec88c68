"""Budget stops at an epoch's end (found by timing `fewshot run` from outside): the Engine looked at its deadline only
after each step, so a deadline that passed during the epoch-end evaluation went unseen; the loop began another
epoch, trained one step and evaluated again (11.6 s past a 120 s budget). Now the deadline check of the epoch's last
step is made after its evaluation, and the run stops there.

A fake clock (engine's time.monotonic: one "second" per call, as tests/test_resume.py's budget_clock) makes the
stops independent of the machine's speed; the evaluation moves it on by a whole budget."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.engine import Engine
from fewshot.train.finetune import run_finetune
from fewshot.train.supervised import SupervisedTask
from helpers.checks import assert_same, engine_clock
from helpers.run_patch import patch_run
from helpers.tiny import build_digits, finetune_cfg

# 40 train images, batch 8: 5 steps per epoch (16 px: the stops count steps, whatever the image size)
FT = {"train.epochs": 3, "model.img_size": 16}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("data"))


def counted(monkeypatch, clock: dict, eval_s: float = 0.0, reads_as: float | None = None) -> dict:
    """Counts the training steps and the Engine's evaluations; each evaluation takes ``eval_s`` fake seconds and,
    with ``reads_as``, is recorded as having taken that long (the Engine's own timing, _eval_took)."""
    seen = {"steps": 0, "evals": []}
    step, evaluate = SupervisedTask.training_step, Engine._evaluate

    def training_step(self, model, batch):
        seen["steps"] += 1
        return step(self, model, batch)

    def timed_evaluate(self, record, epoch):
        seen["evals"].append(self.global_step)
        clock["t"] += eval_s
        new_best = evaluate(self, record, epoch)
        if reads_as is not None:
            self._eval_took = reads_as
        return new_best

    monkeypatch.setattr(SupervisedTask, "training_step", training_step)
    monkeypatch.setattr(Engine, "_evaluate", timed_evaluate)
    return seen


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def test_a_deadline_passed_in_the_epoch_end_evaluation_stops_the_run_there(root, tmp_path, monkeypatch):
    """The budget holds epoch 1's 5 steps (deadline at 1 + 8.5 on the fake clock); its evaluation takes 100 s.
    Before: epoch 2's first step ran and was evaluated too (2 evaluations, 6 steps)."""
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        clock = engine_clock(mp)
        seen = counted(mp, clock, eval_s=100.0)
        run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": 8.5 / 60}), out)
    assert seen["steps"] == 5  # no step after the evaluation
    assert seen["evals"] == [5]  # one evaluation, of epoch 1's weights
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (1, 0, 5)  # last.pt at the epoch's end
    assert load_checkpoint(out / "checkpoints" / "best.pt")["global_step"] == 5
    assert [(r["epoch"], r["step"], "score" in r) for r in rows(out)] == [(1, 5, True)]


def test_a_deadline_passed_at_an_epoch_end_without_an_evaluation_due_is_evaluated_once(root, tmp_path, monkeypatch):
    """train.eval_every=2: epoch 1 is not evaluated on its own; a budget stop after its last step is (once), and the
    run stops there. The code before the fix passed this too (its last step's check stopped the run there): it
    guards that the check moved to the epoch's end keeps that stop and its one evaluation, not the fix."""
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        clock = engine_clock(mp)
        seen = counted(mp, clock)
        run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": 4.5 / 60, "train.eval_every": 2}), out)
    assert seen["steps"] == 5 and seen["evals"] == [5]
    assert [(r["epoch"], r["step"], "score" in r) for r in rows(out)] == [(1, 5, True)]


def test_a_deadline_not_passed_in_the_evaluation_trains_on(root, tmp_path, monkeypatch):
    """The check after the evaluation stops only a spent budget: with time left epoch 2 trains as before."""
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        clock = engine_clock(mp)
        seen = counted(mp, clock, eval_s=1.0)
        run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": 9.5 / 60}), out)
    # deadline 1 + 9.5: steps 1-4 read 2-5, epoch 1's evaluation (+1) and its check 7, steps 6-9 read 8-11
    assert seen["steps"] == 9 and seen["evals"] == [5, 9]


def test_a_run_stopped_at_an_epoch_end_resumes_as_the_uninterrupted_run(root, tmp_path, monkeypatch):
    """The stop in the evaluation leaves last.pt and best.pt consistent: a resume without the budget ends with the
    uninterrupted run's weights, optimizer state and log. The code before the fix passed this too: it guards the
    resume of the new stop's checkpoints, not the fix."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    run_finetune(finetune_cfg(root, **FT), ref)
    with monkeypatch.context() as mp:
        clock = engine_clock(mp)
        counted(mp, clock, eval_s=100.0)
        run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": 8.5 / 60}), out)
    run_finetune(finetune_cfg(root, **FT), out, resume=True)
    for name in ("last", "best"):
        a, b = (load_checkpoint(run / "checkpoints" / f"{name}.pt") for run in (ref, out))
        for key in ("model", "optimizer", "epoch", "step_in_epoch", "global_step", "best_score"):
            assert_same(copy.deepcopy(a[key]), copy.deepcopy(b[key]), f"{name}.pt {key}")
    timings = {"images_per_s", "epoch_time_s", "eval_time_s"}
    assert [{k: v for k, v in r.items() if k not in timings} for r in rows(out)] == \
        [{k: v for k, v in r.items() if k not in timings} for r in rows(ref)]


@pytest.fixture(scope="module")
def stopped(digits_root, tmp_path_factory) -> tuple[Path, list]:
    """A `fewshot run` stopped in its fine-tuning (test_run_accounting.stopped_in_finetune), stopped once for the
    tests that resume a copy of it; its folder and command line."""
    from test_run_accounting import stopped_in_finetune

    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as mp:
        return out, stopped_in_finetune(digits_root, out, mp)


def resume_stopped_in_finetune(stopped, out, monkeypatch, eval_s: float | None, spent: bool) -> tuple[list, list, str]:
    """A copy in ``out`` of the `fewshot run` ``stopped`` in its fine-tuning, resumed with 30 s left for the stage or
    (``spent``) none; the stage's log.jsonl reads as holding an evaluation time of ``eval_s`` (None: none). Returns
    the tasks whose evaluation was timed, the fit() calls each trained_speeds call came after, and stdout."""
    import shutil
    import sys
    import time

    import fewshot.pipeline as pipeline
    import fewshot.run_reuse as run_reuse
    import fewshot.run_stages as run_stages
    import fewshot.train.checkpoint as checkpoint
    from helpers.checks import run_main

    shutil.copytree(stopped[0], out, symlinks=True)
    cmd = [out if arg == stopped[0] else arg for arg in stopped[1]]
    assert cmd.count(out) == 1, cmd
    if spent:
        state = json.loads((out / "run_state.json").read_text())
        state["seconds"] = state["budget_minutes"] * 60  # as if the session had run on to the end of the budget
        (out / "run_state.json").write_text(json.dumps(state))
    timed, logged, fitted = [], [], []
    fit, stage = Engine.fit, pipeline.finetune_stage

    def stage_with_time_left(fcfg, infos, device, ctx, fdir, end_time, *args, **kwargs):
        # the 0.1-minute run's time is mostly gone on a busy machine: the stage is given time, whatever the clock
        return stage(fcfg, infos, device, ctx, fdir, max(end_time, time.monotonic() + 30.0), *args, **kwargs)

    def measure_eval_seconds(task, *args, **kwargs):
        timed.append(task)
        return 0.5

    def trained_speeds(log_path, passes=1):
        logged.append((Path(log_path), len(fitted)))
        return 0.1, eval_s

    def fit_counted(self, *args, **kwargs):
        fitted.append(self.run_dir.name)
        return fit(self, *args, **kwargs)

    load, reads = checkpoint.load_checkpoint, []

    def load_counted(path, *args, **kwargs):  # the stage's own reads of last.pt (the Engine's resume aside)
        if sys._getframe(1).f_code.co_filename == run_reuse.__file__ and Path(path).name == "last.pt":
            reads.append(kwargs.get("mmap", False))
        return load(path, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(checkpoint, "load_checkpoint", load_counted)
        patch_run(mp, "measure_eval_seconds", measure_eval_seconds)
        mp.setattr(run_stages, "trained_speeds", trained_speeds)
        mp.setattr(Engine, "fit", fit_counted)
        if not spent:
            mp.setattr(pipeline, "finetune_stage", stage_with_time_left)
        rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert fitted == ["finetune"]
    # last.pt is read once before fit(), its tensors mapped: the image check read it whole, then the budget again
    assert reads == [True], reads
    return timed, logged, stdout


def test_a_stage_resumed_with_no_time_left_records_no_late_training_and_times_no_evaluation(
        stopped, tmp_path, monkeypatch):
    """A `fewshot run` stopped in its fine-tuning and resumed when its time was up trains nothing; its run_state.json
    took this session's start-up for the stage's end of training (summary.json: closing_seconds.training_late 50.8 s,
    not late training at all), and the session timed an evaluation again for a closing estimate that changed
    nothing: the stage's log.jsonl holds its evaluation time."""
    out = tmp_path / "run"
    timed, logged, stdout = resume_stopped_in_finetune(stopped, out, monkeypatch, 0.25, spent=True)
    assert "no time is left of the run's budget for this stage" in stdout and "the closing work" in stdout
    stage = json.loads((out / "run_state.json").read_text())["stages"]["finetune"]
    assert stage["status"] == "done" and "trained_at" not in stage
    assert "training_late" not in json.loads((out / "summary.json").read_text()).get("closing_seconds", {})
    assert timed == [] and (out / "finetune" / "log.jsonl", 0) in logged  # read for the estimate, before fit()


@pytest.mark.parametrize("eval_s", [0.25, None])
def test_a_stage_resumed_with_time_left_takes_its_logged_evaluation_time(stopped, tmp_path, monkeypatch, eval_s):
    """The logged evaluation time served only a session past the run's end: with time left the session timed an
    evaluation again, though from end_time less the closing work on the stage trains nothing anyway. Now its
    log.jsonl's time serves whenever it has one (its own speed); a log without one is still timed."""
    out = tmp_path / "run"
    timed, logged, _ = resume_stopped_in_finetune(stopped, out, monkeypatch, eval_s, spent=False)
    assert (out / "finetune" / "log.jsonl", 0) in logged  # read before fit(), for the closing estimate
    assert len(timed) == (0 if eval_s is not None else 1)
    assert json.loads((out / "run_state.json").read_text())["stages"]["finetune"]["status"] == "done"


def test_a_stage_stopped_in_its_last_evaluation_records_no_late_training_on_resume(digits_root, tmp_path,
                                                                                  monkeypatch):
    """Ctrl-C during the final epoch's evaluation leaves last.pt at the stage's last epoch and its status "began"
    ("trained" is never recorded). The resume trains no step, but fit() starts its clock before its (empty) loop, so
    the stage's training seconds came out microseconds above last.pt's and this session's start-up was recorded as
    its end of training (trained_at, read as late training). The resumed session has time left here (its budget
    check does not end fit() early, as it would with none). The stage plans the least epochs (plan_epochs' floor
    of 8): with no budget stop it trained the whole plan, 4x what its time holds (67 s of a 2-core CI run)."""
    import os
    import signal

    import fewshot.run_stages as run_stages
    from fewshot.config import load_yaml
    from fewshot.run_budget import trained_speeds
    from helpers.checks import run_main
    from test_run_resume import _cmd

    out = tmp_path / "run"
    cmd = _cmd(digits_root, out, "run.semi_method=off")
    fit, evaluate, agreed = Engine.fit, Engine._evaluate, Engine._agreed_stop
    armed = {"on": False}

    def fit_watched(self, *args, **kwargs):
        armed["on"] = self.run_dir.name == "finetune"
        try:
            return fit(self, *args, **kwargs)
        finally:
            armed["on"] = False

    def evaluate_stopped(self, record, epoch):
        if armed["on"] and self.epoch >= self.cfg["train"]["epochs"]:  # the last epoch's evaluation
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self, record, epoch)

    def agreed_on_time(self, deadline):  # a busy machine's budget stop does not end the stage before its last epoch
        signalled, late = agreed(self, deadline)
        return signalled, late and not armed["on"]

    with monkeypatch.context() as mp:
        mp.setattr(Engine, "fit", fit_watched)
        mp.setattr(Engine, "_evaluate", evaluate_stopped)
        mp.setattr(Engine, "_agreed_stop", agreed_on_time)
        mp.setattr(run_stages, "plan_epochs", lambda *args, **kwargs: 8)
        # the cap of 8 stays (Engine._extend_cap would raise it towards the deadline this test keeps off: 19 s)
        mp.setattr(Engine, "_extend_cap", lambda self, deadline: None)
        rc, _, err = run_main(*cmd)
    assert rc == 128 + signal.SIGTERM, err
    fdir = out / "finetune"
    planned = load_yaml(fdir / "config.yaml")["train"]["epochs"]
    ck = load_checkpoint(fdir / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"]) == (planned, 0)
    assert json.loads((out / "run_state.json").read_text())["stages"]["finetune"]["status"] == "began"
    cap, steps, kept = run_stages.cap_resumed_budget, [], []
    logged = trained_speeds(fdir / "log.jsonl")[0]  # the stage's own step speed, as the stop left its log

    def cap_with_time_left(cfg, last, end_time, step_s=None):
        kept.append(step_s)
        trained, done = cap(cfg, last, end_time, step_s)
        cfg["train"]["budget_minutes"] = trained / 60 + 10.0  # fit() gets past its budget check, to its empty loop
        return trained, done

    step = SupervisedTask.training_step
    with monkeypatch.context() as mp:
        mp.setattr(run_stages, "cap_resumed_budget", cap_with_time_left)
        mp.setattr(SupervisedTask, "training_step", lambda self, *a: steps.append(1) or step(self, *a))
        rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert steps == [] and "the run has trained all its" in stdout  # nothing trained: the case itself
    assert kept == [logged] and logged > 0  # the logged step is kept back, not the mean (evaluations counted)
    stage = json.loads((out / "run_state.json").read_text())["stages"]["finetune"]
    assert stage["status"] == "done" and "trained_at" not in stage
    assert "training_late" not in json.loads((out / "summary.json").read_text()).get("closing_seconds", {})


# ------------------------------------------------------------------------------ the process's start, hopeless budgets


def test_process_start_is_the_process_s_own_start_on_linux():
    """The interpreter's start-up came before fewshot.PROCESS_START was taken, so summary.json's seconds were
    0.5-1.7 s below the time measured from outside: here 0.5 s spent before the import counts."""
    import subprocess
    import sys

    if not Path("/proc/self/stat").is_file():
        pytest.skip("no /proc: PROCESS_START is the import's time there")
    code = "import time; time.sleep(0.5); import fewshot; print(time.monotonic() - fewshot.PROCESS_START)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0.5 <= float(out.stdout) < 30.0


def test_process_start_falls_back_to_the_import_time_on_odd_answers(tmp_path):
    from fewshot import _process_start

    ticks = __import__("os").sysconf("SC_CLK_TCK")
    stat, uptime = tmp_path / "stat", tmp_path / "uptime"
    fields = ["S"] + ["0"] * 18 + [str(100 * ticks)] + ["0"] * 10  # field 22: started 100 s after boot
    stat.write_text("1234 (a (b) c) " + " ".join(fields))  # a command name with spaces and parentheses
    uptime.write_text("101.50 200.00\n")
    assert _process_start(1000.0, str(stat), str(uptime)) == pytest.approx(998.5)
    uptime.write_text("1000.0 1.0\n")  # imported 900 s after the process started: a long-lived process, not a command
    assert _process_start(1000.0, str(stat), str(uptime)) == 1000.0
    uptime.write_text("50.0 1.0\n")  # before the process started: a clock that cannot be right
    assert _process_start(1000.0, str(stat), str(uptime)) == 1000.0
    assert _process_start(1000.0, str(tmp_path / "none"), str(uptime)) == 1000.0
    stat.write_text("garbage")
    assert _process_start(1000.0, str(stat), str(uptime)) == 1000.0


def _run_cfg(root) -> dict:
    from fewshot.config import resolve

    return resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16,
                          "train.device": "cpu", "train.progress": False, "run.semi_method": "off",
                          "run.report": False})


@pytest.mark.parametrize("minutes, used_s", [(0.01, 2.0), (0.1, 5.0), (0.02, 0.0)])
def test_a_hopeless_budget_is_refused_before_any_work(digits_root, tmp_path, monkeypatch, real_least_run_holds,
                                                      minutes, used_s):
    """`--budget-minutes 0.01` was refused only after 30-38 s of decoding and timing: a budget that the start-up
    (from the process start) has spent, or that leaves less than any run needs, is refused at once. A start-up of
    about 0 s (a call from Python) is not named: "its start-up alone took 0.0 s" blamed nothing."""
    import time

    import fewshot.pipeline as pipeline
    from fewshot.errors import UserError

    def no_work(*args, **kwargs):
        raise AssertionError("the run worked before refusing its budget")

    monkeypatch.setattr(pipeline.PipelineRun, "claim_output", no_work)
    patch_run(monkeypatch, "measure_step_seconds", no_work)
    out = tmp_path / "r"
    with pytest.raises(UserError) as caught:
        pipeline.run_pipeline(_run_cfg(digits_root), out, minutes, started=time.monotonic() - used_s)
    text = str(caught.value)
    assert f"--budget-minutes {minutes:g} ({minutes * 60:.1f} s) cannot hold a run" in text
    assert "larger --budget-minutes" in text
    if used_s:
        assert f"its start-up alone took {used_s:.1f} s, and any run needs at least 2 s more (" in text
    else:
        assert "start-up" not in text and "cannot hold a run: any run needs at least 2 s (" in text
    assert not out.exists()


def test_a_budget_above_the_floor_is_judged_by_the_measured_least_run(digits_root, tmp_path, monkeypatch,
                                                                      real_least_run_holds):
    """The floor refuses only what no run meets: 0.1 minutes with time left goes on to the measured check."""
    import fewshot.pipeline as pipeline
    from fewshot.errors import UserError

    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 30.0)
    with pytest.raises(UserError, match="is too short for test_resnet at 16px"):
        pipeline.run_pipeline(_run_cfg(digits_root), tmp_path / "r", 0.1)


def test_a_stage_resumed_with_no_time_left_says_so_early_without_advising_a_larger_budget(stopped, tmp_path,
                                                                                         monkeypatch):
    """The least-run refusal is a fresh run's (a resume cannot change its budget): a stage continued from its
    last.pt when its closing work no longer fitted the budget left trained nothing and ended late, its only word
    the Engine's note at the end of the stage. Now one warning comes before it, which says the run ends late and
    does not ask for the larger --budget-minutes a resume cannot take."""
    out = tmp_path / "run"
    _, _, stdout = resume_stopped_in_finetune(stopped, out, monkeypatch, 0.25, spent=True)
    lines = [line for line in stdout.splitlines() if "[run] warning: finetune resumes" in line]
    assert len(lines) == 1, stdout
    line = lines[0]
    # the session's start-up came after the budget's end: how far past it, not "0.0 s left"
    assert "past the budget already, and its closing work needs about" in line, line
    assert "it trains no further, and the run will likely end about" in line and "after its budget" in line
    assert "--budget-minutes" not in line and "larger" not in line
    assert stdout.index(line) < stdout.index("no time is left of the run's budget for this stage")
