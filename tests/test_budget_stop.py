"""Budget stops at an epoch's end (found by timing `fewshot run` from outside): the Engine looked at its deadline only
after each step, so a deadline that passed during the epoch-end evaluation went unseen; the loop began another
epoch, trained one step and evaluated again (11.6 s past a 120 s budget). Now the deadline check of the epoch's last
step is made after its evaluation, and the run stops there.

A fake clock (engine's time.monotonic: one "second" per call, as tests/test_resume.py's budget_clock) makes the
stops independent of the machine's speed; the evaluation moves it on by a whole budget."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import pytest

from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.engine import Engine
from fewshot.train.finetune import run_finetune
from fewshot.train.supervised import SupervisedTask
from helpers.checks import assert_same
from helpers.tiny import build_digits, finetune_cfg

# 40 train images, batch 8: 5 steps per epoch
FT = {"train.epochs": 3}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("data"))


def fake_clock(monkeypatch) -> dict:
    """engine's time.monotonic gives one "second" per call (fit() reads it once, then once after every step);
    ``clock["t"]`` can be moved on by hand."""
    import fewshot.train.engine as engine_mod

    clock = {"t": 0.0}

    def monotonic():
        clock["t"] += 1.0
        return clock["t"]

    monkeypatch.setattr(engine_mod, "time", types.SimpleNamespace(monotonic=monotonic,
                                                                  perf_counter=engine_mod.time.perf_counter))
    return clock


def counted(monkeypatch, clock: dict, eval_s: float = 0.0) -> dict:
    """Counts the training steps and the Engine's evaluations; each evaluation takes ``eval_s`` fake seconds."""
    seen = {"steps": 0, "evals": []}
    step, evaluate = SupervisedTask.training_step, Engine._evaluate

    def training_step(self, model, batch):
        seen["steps"] += 1
        return step(self, model, batch)

    def timed_evaluate(self, record, epoch):
        seen["evals"].append(self.global_step)
        clock["t"] += eval_s
        return evaluate(self, record, epoch)

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
        clock = fake_clock(mp)
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
    run stops there."""
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        clock = fake_clock(mp)
        seen = counted(mp, clock)
        run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": 4.5 / 60, "train.eval_every": 2}), out)
    assert seen["steps"] == 5 and seen["evals"] == [5]
    assert [(r["epoch"], r["step"], "score" in r) for r in rows(out)] == [(1, 5, True)]


def test_a_deadline_not_passed_in_the_evaluation_trains_on(root, tmp_path, monkeypatch):
    """The check after the evaluation stops only a spent budget: with time left epoch 2 trains as before."""
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        clock = fake_clock(mp)
        seen = counted(mp, clock, eval_s=1.0)
        run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": 9.5 / 60}), out)
    # deadline 1 + 9.5: steps 1-4 read 2-5, epoch 1's evaluation (+1) and its check 7, steps 6-9 read 8-11
    assert seen["steps"] == 9 and seen["evals"] == [5, 9]


def test_a_run_stopped_at_an_epoch_end_resumes_as_the_uninterrupted_run(root, tmp_path, monkeypatch):
    """The stop in the evaluation leaves last.pt and best.pt consistent: a resume without the budget ends with the
    uninterrupted run's weights, optimizer state and log."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    run_finetune(finetune_cfg(root, **FT), ref)
    with monkeypatch.context() as mp:
        clock = fake_clock(mp)
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


def test_a_stage_resumed_with_no_time_left_records_no_late_training_and_times_no_evaluation(
        digits_root, tmp_path, monkeypatch):
    """A `fewshot run` stopped in its fine-tuning and resumed when its time was up trains nothing; its run_state.json
    took this session's start-up for the stage's end of training (summary.json: closing_seconds.training_late 50.8 s,
    not late training at all), and the session timed an evaluation again for a closing estimate that changed
    nothing: the stage's log.jsonl holds its evaluation time."""
    import fewshot.pipeline as pipeline
    from helpers.checks import run_main
    from test_run_accounting import stopped_in_finetune

    out = tmp_path / "run"
    cmd = stopped_in_finetune(digits_root, out, monkeypatch)
    state = json.loads((out / "run_state.json").read_text())
    state["seconds"] = state["budget_minutes"] * 60  # as if the session had run on to the end of the budget
    (out / "run_state.json").write_text(json.dumps(state))
    timed, logged = [], []

    def measure_eval_seconds(task, *args, **kwargs):
        timed.append(task)
        return 0.5

    def trained_speeds(log_path, passes=1):
        logged.append(log_path)
        return 0.1, 0.25

    monkeypatch.setattr(pipeline, "measure_eval_seconds", measure_eval_seconds)
    monkeypatch.setattr(pipeline, "trained_speeds", trained_speeds)
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert "no time is left of the run's budget for this stage" in stdout and "the closing work" in stdout
    stage = json.loads((out / "run_state.json").read_text())["stages"]["finetune"]
    assert stage["status"] == "done" and "trained_at" not in stage
    assert "training_late" not in json.loads((out / "summary.json").read_text()).get("closing_seconds", {})
    assert timed == [] and out / "finetune" / "log.jsonl" in logged


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


@pytest.fixture
def real_least_run(monkeypatch):
    """The package's own check (conftest's later_rounds_fit relaxes it for the runs in budgets of seconds)."""
    import fewshot.pipeline as pipeline

    monkeypatch.setattr(pipeline, "least_run_holds", lambda need_s, left_s: need_s <= left_s, raising=False)


def _run_cfg(root) -> dict:
    from fewshot.config import resolve

    return resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16,
                          "train.device": "cpu", "train.progress": False, "run.semi_method": "off",
                          "run.report": False})


@pytest.mark.parametrize("minutes, used_s", [(0.01, 2.0), (0.1, 5.0), (0.02, 0.0)])
def test_a_hopeless_budget_is_refused_before_any_work(digits_root, tmp_path, monkeypatch, real_least_run,
                                                      minutes, used_s):
    """`--budget-minutes 0.01` was refused only after 30-38 s of decoding and timing: a budget that the start-up
    (from the process start) has spent, or that leaves less than any run needs, is refused at once."""
    import time

    import fewshot.pipeline as pipeline
    from fewshot.errors import UserError

    def no_work(*args, **kwargs):
        raise AssertionError("the run worked before refusing its budget")

    monkeypatch.setattr(pipeline.PipelineRun, "claim_output", no_work)
    monkeypatch.setattr(pipeline, "measure_step_seconds", no_work)
    out = tmp_path / "r"
    with pytest.raises(UserError) as caught:
        pipeline.run_pipeline(_run_cfg(digits_root), out, minutes, started=time.monotonic() - used_s)
    text = str(caught.value)
    assert f"--budget-minutes {minutes:g} ({minutes * 60:.1f} s) cannot hold a run" in text
    assert f"start-up alone took {used_s:.1f} s" in text and "larger --budget-minutes" in text
    assert not out.exists()


def test_a_budget_above_the_floor_is_judged_by_the_measured_least_run(digits_root, tmp_path, monkeypatch,
                                                                      real_least_run):
    """The floor refuses only what no run meets: 0.1 minutes with time left goes on to the measured check."""
    import fewshot.pipeline as pipeline
    from fewshot.errors import UserError

    monkeypatch.setattr(pipeline, "measure_step_seconds", lambda task, *a, **kw: 30.0)
    with pytest.raises(UserError, match="is too short for test_resnet at 16px"):
        pipeline.run_pipeline(_run_cfg(digits_root), tmp_path / "r", 0.1)
