"""A plain `fewshot train` budget keeps time back for its closing work (hBP's finding 2): the deadline used to be
the budget's end, and the stop's evaluation (raw and EMA weights) and its last.pt / best.pt writes came after it,
so train.budget_minutes=1 reported 1 min 05 s of training time (1 min 07 s under torchrun). Now the training steps
stop the last evaluation's time and the writes earlier. A `fewshot run` stage keeps nothing back: its run plans
the stage's closing work already.

The fake clock (helpers.checks.engine_clock: one "second" per time.monotonic call in the engine) makes the stops
independent of the machine; the evaluation is made to read as taking EVAL_S of those seconds."""

from __future__ import annotations

import pytest

from fewshot.train.checkpoint import load_checkpoint, save_checkpoint
from fewshot.train.finetune import run_finetune
from helpers.checks import engine_clock
from helpers.tiny import build_digits, finetune_cfg
from test_budget_stop import counted

# 40 train images, batch 8: 5 steps per epoch, evaluated after each
FT = {"train.epochs": 3, "model.img_size": 16}
# the deadline at 1 + 9.5 on the fake clock: without a reserve epoch 2 trains to its end (step 10)
BUDGET = {"train.budget_minutes": 9.5 / 60}
EVAL_S = 3.0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("data"))


def timed_as(monkeypatch, eval_s: float) -> dict:
    """Counts the training steps and evaluations; each evaluation reads as taking ``eval_s`` seconds (the clock is
    engine_clock's, so counted's own fake clock is left aside)."""
    return counted(monkeypatch, {"t": 0.0}, reads_as=eval_s)


def test_a_train_budget_stops_its_steps_the_closing_evaluation_and_writes_early(root, tmp_path, monkeypatch, capsys):
    """Epoch 1's evaluation reads as 3 s: the steps' deadline moves from 10.5 to about 7.5, so epoch 2 stops after
    its second step (step 7 reads 8), not after step 9 as before, and the note says what was kept back."""
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        engine_clock(mp)
        seen = timed_as(mp, EVAL_S)
        run_finetune(finetune_cfg(root, **FT, **BUDGET), out)
    assert seen["steps"] == 7 and seen["evals"] == [5, 7]
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (ck["global_step"], ck["step_in_epoch"]) == (7, 2)
    assert EVAL_S < ck["budget_reserve_s"] < EVAL_S + 0.5 and ck["reserve_eval_s"] == EVAL_S
    said = capsys.readouterr().out
    assert "is used up" in said and "before the budget's end to keep time for the closing evaluation" in said


def test_a_fewshot_run_stage_keeps_no_second_reserve(root, tmp_path, monkeypatch, capsys):
    """A stage of a `fewshot run` (its parent folder holds run_state.json) has its closing work planned in its
    budget by the run: it trains to its deadline as before the fix (to step 10 here, as the code before the
    fix did with this fake clock). This passed before the fix too: it guards that the reserve is not counted twice
    there."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run_state.json").write_text("{}")
    out = tmp_path / "run" / "finetune"
    with monkeypatch.context() as mp:
        engine_clock(mp)
        seen = timed_as(mp, EVAL_S)
        run_finetune(finetune_cfg(root, **FT, **BUDGET), out)
    assert seen["steps"] == 10 and seen["evals"] == [5, 10], seen
    assert "budget_reserve_s" not in load_checkpoint(out / "checkpoints" / "last.pt")
    assert "before the budget's end" not in capsys.readouterr().out


def test_a_resume_with_the_same_budget_counts_the_reserve_as_spent(root, tmp_path, monkeypatch):
    """The stop came the reserve early, and its closing work then used that time: a --resume with the same budget
    finds none left and trains nothing (train_seconds made to read 1 s short of the budget, inside the reserve)."""
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        engine_clock(mp)
        timed_as(mp, EVAL_S)
        run_finetune(finetune_cfg(root, **FT, **BUDGET), out)
    last = out / "checkpoints" / "last.pt"
    ck = load_checkpoint(last)
    ck["train_seconds"] = 9.5 - 1.0
    save_checkpoint(last, ck)
    with monkeypatch.context() as mp:
        engine_clock(mp)
        seen = timed_as(mp, EVAL_S)
        run_finetune(finetune_cfg(root, **FT, **BUDGET), out, resume=True)
    assert seen["steps"] == 0 and seen["evals"] == []  # the stop was evaluated when it was made
    assert load_checkpoint(last)["global_step"] == 7
