"""What a budget stop and a resume say and leave: the stop's training time under a minute in seconds (it said "0.0
min"), a finished run resumed with a spent budget told only that it has nothing to train, and --epochs below the
epochs a run trained refused before the resume changes any file of it."""

from __future__ import annotations

import re

import pytest

from fewshot.errors import UserError
from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.engine import BEST_ASIDE
from fewshot.train.finetune import run_finetune
from fewshot.train.supervised import SupervisedTask
from helpers.checks import engine_clock
from helpers.tiny import build_digits, finetune_cfg

# 40 train images, batch 8: 5 steps per epoch


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("data"))


def test_a_finished_run_resumed_with_a_spent_budget_only_says_it_has_nothing_to_train(root, tmp_path, capsys):
    """`--resume train.budget_minutes=0.1` on a run that trained all its epochs also said "the run used its whole
    budget ... give a larger train.budget_minutes to continue it": a larger budget trains nothing more."""
    out = tmp_path / "run"
    run_finetune(finetune_cfg(root, **{"train.epochs": 1}), out)
    log = (out / "log.jsonl").read_text()
    capsys.readouterr()
    # a budget its training time (a second or more) has spent
    run_finetune(finetune_cfg(root, **{"train.epochs": 1, "train.budget_minutes": 1e-4}), out, resume=True)
    said = capsys.readouterr().out
    assert "the run has trained all its 1 epochs; nothing to train" in said, said
    assert "budget" not in said, said
    assert (out / "log.jsonl").read_text() == log


def test_a_refused_resume_with_fewer_epochs_leaves_a_budget_stopped_run_as_it_was(root, tmp_path, monkeypatch,
                                                                                   capsys):
    """A budget stop inside epoch 3 whose evaluation made best.pt; `--resume --epochs 1` was refused only after
    resume() had dropped the stop's log row and put the older best.pt back. The stop's note said its training time
    as "0.0 min" for a budget of seconds."""
    out = tmp_path / "run"
    evaluate = SupervisedTask.evaluate

    def flattering(self, model, e):  # the partial epoch 3's evaluation scores best: best.pt and one kept aside
        result = evaluate(self, model, e)
        return {**result, "score": 1e9} if e == 2 else result

    with monkeypatch.context() as mp:
        engine_clock(mp)
        mp.setattr(SupervisedTask, "evaluate", flattering)
        run_finetune(finetune_cfg(root, **{"train.epochs": 3, "train.budget_minutes": 11.5 / 60}), out)
    said = capsys.readouterr().out
    time_said = re.search(r"is used up \(training time, ([^)]*)\)", said)
    # seconds (or minutes and seconds on a very slow machine), never "0.0 min"
    assert time_said and re.fullmatch(r"\d+(\.\d)? s|\d+ min \d\d s", time_said[1]), said
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (ck["epoch"], ck["step_in_epoch"]) == (2, 2)

    def files() -> list[bytes]:
        return [p.read_bytes() for p in (out / "log.jsonl", out / "checkpoints" / "best.pt",
                                         out / "checkpoints" / BEST_ASIDE)]

    before = files()
    assert b'"epoch": 3' in before[0]  # the stop's partial epoch, evaluated
    with pytest.raises(UserError, match=r"already trained 2 epochs; --epochs 1 would train nothing"):
        run_finetune(finetune_cfg(root, **{"train.epochs": 1, "train.budget_minutes": 5}), out, resume=True)
    assert files() == before
