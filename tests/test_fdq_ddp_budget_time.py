"""A budget stop under DDP is agreed as the max over the ranks (Engine._agreed_stop), so a rank whose clock started
earlier can stop the run while rank 0's clock still reads below the budget. last.pt stored rank 0's train_seconds
(2.972 s of a 3 s budget), and a --resume with the same budget trained one more step and rewrote a log row. The
ranks' clocks are faked here: engine.all_reduce_max answers for "the other rank", which found the time up."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fewshot.train import engine
from fewshot.train.engine import Engine

BUDGET_S = 3.0


def started_engine(enabled: bool) -> Engine:
    """An Engine just past fit()'s clock start, as far as _agreed_stop and train_seconds() look."""
    eng = Engine.__new__(Engine)
    eng.ctx = SimpleNamespace(enabled=enabled, rank=0, world=2 if enabled else 1, is_main=True)
    eng._stop_flag, eng._seconds_before = None, 0.0
    eng.fit_start, eng._clock_start = time.monotonic(), time.perf_counter()
    return eng


def other_rank(late: float):
    """all_reduce_max over this rank and one whose clock says ``late`` (1.0: the budget is spent there)."""
    def reduce(ctx, value):
        return [max(v, o) for v, o in zip(value, [0.0, late])]
    return reduce


def test_a_budget_stop_decided_by_another_ranks_clock_records_the_whole_budget(monkeypatch):
    monkeypatch.setattr(engine, "all_reduce_max", other_rank(1.0))
    eng = started_engine(enabled=True)
    signalled, late = eng._agreed_stop(eng.fit_start + BUDGET_S)  # this rank's own clock is far from the deadline
    assert (signalled, late) == (False, True)
    # what last.pt saves: a resume with the same budget must find it spent (resume.py's _budget_spent)
    assert eng.train_seconds() >= BUDGET_S - 1e-6, eng.train_seconds()
    eng.cfg = {"train": {"budget_minutes": BUDGET_S / 60}}
    eng._seconds_before = eng.train_seconds()
    assert eng._budget_spent()


def test_no_budget_stop_leaves_the_ranks_clock_alone(monkeypatch):
    monkeypatch.setattr(engine, "all_reduce_max", other_rank(0.0))
    eng = started_engine(enabled=True)
    start = eng._clock_start
    assert eng._agreed_stop(eng.fit_start + BUDGET_S) == (False, False)
    assert eng._agreed_stop(None) == (False, False)
    assert eng._clock_start == start and eng.train_seconds() < BUDGET_S


def test_one_process_keeps_its_own_clock_at_a_budget_stop(monkeypatch):
    """One process: the clock that decided the stop is the one saved; its figures do not move."""
    monkeypatch.setattr(engine, "all_reduce_max", lambda *a: pytest.fail("a collective in one process"))
    eng = started_engine(enabled=False)
    start = eng._clock_start
    assert eng._agreed_stop(eng.fit_start - 1.0) == (False, True)  # the deadline passed on its own clock
    assert eng._clock_start == start


def test_a_two_rank_budget_stop_resumed_with_the_same_budget_trains_nothing(tmp_path):
    """2 forked gloo ranks: rank 1's clock alone finds the 5-minute budget spent after step 2 (helpers/budget_worker).
    last.pt held rank 0's few seconds, so a --resume with the same budget trained both epochs to their end; now it
    says nothing is trained and leaves last.pt and log.jsonl as they were."""
    import torch

    from helpers.forked_torchrun import forked_torchrun
    from helpers.tiny import build_digits

    root, run = build_digits(tmp_path / "data"), tmp_path / "run"
    args = ["train", "--data", str(root), "--model", "test_resnet", "--img-size", "32", "--epochs", "2",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.threads=1",
            "train.deterministic=true", "train.budget_minutes=5", "--out", run]
    worker = Path(__file__).parent / "helpers" / "budget_worker.py"
    codes, text = forked_torchrun(worker, ["1", "2", *args], tmp_path)
    assert codes == [0, 0] and text.count("is used up") == 1, text[-6000:]
    last, log = run / "checkpoints" / "last.pt", run / "log.jsonl"
    assert torch.load(last, weights_only=True)["train_seconds"] >= 300 - 1e-6
    before = (last.read_bytes(), log.read_bytes())
    codes, text = forked_torchrun(worker, ["1", str(10**9), *args, "--resume"], tmp_path)  # no clock faked now
    assert codes == [0, 0] and "nothing is trained" in text and "is used up" not in text, text[-6000:]
    assert (last.read_bytes(), log.read_bytes()) == before
