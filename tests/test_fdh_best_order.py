"""best.pt is never ahead of last.pt and log.jsonl: a new best was written before its epoch's last.pt, and a kill
between the two writes left best.pt of an epoch that no checkpoint a resume starts from, nor any log row, holds
(eval and predict used a lost epoch's weights, the report blamed the user, and a resume not bit-exact kept them).

The kill is a BaseException raised by the second of the two checkpoint writes of the new best's step (save_checkpoint
patched where the engine calls it), whichever order they come in; the resume then starts from the disk alone.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import fewshot.train.saving as saving
from fewshot.ssl.pretrain import MoCoTask, run_pretrain
from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.engine import Engine
from fewshot.train.finetune import run_finetune
from fewshot.train.supervised import SupervisedTask
from helpers.checks import assert_same, engine_clock
from helpers.tiny import build_digits, finetune_cfg, pretrain_cfg

TIMING = {"images_per_s", "epoch_time_s", "eval_time_s"}
FT = {"train.epochs": 3, "train.save_every_steps": 2}  # 40 images, batch 8: 5 steps an epoch
PT = {"train.epochs": 2, "train.save_every_steps": 3}  # 10 steps an epoch


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the code under test can swallow it."""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def ft_ref(root, tmp_path_factory):
    """The uninterrupted fine-tuning run, scored as it scores itself."""
    out = tmp_path_factory.mktemp("ft") / "ref"
    run_finetune(finetune_cfg(root, **FT), out)
    return out


def dies_after_the_row_of(mp, step: int) -> None:
    """A kill right after the log row of global step ``step`` is written (after its last.pt, before best.pt is put
    in place)."""
    log = Engine.log

    def dies_after(self, record):
        log(self, record)
        if record["step"] == step:
            raise Killed(f"killed after the row of step {step}")

    mp.setattr(Engine, "log", dies_after)


def read_log(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def compare_runs(ref: Path, run: Path) -> None:
    """last.pt, best.pt and log.jsonl as the uninterrupted run's, timings aside."""
    for name in ("last", "best"):
        a, b = (load_checkpoint(r / "checkpoints" / f"{name}.pt") for r in (ref, run))
        for ck in (a, b):
            ck.pop("train_seconds"), ck.pop("epoch_seconds")
            ck["config"]["train"].pop("budget_minutes")
        assert_same(a, b, name)
    assert read_log(run) == read_log(ref)


def rising_scores(mp, task_cls, scores: dict | None = None) -> None:
    """Every evaluation a new best (score = epoch index); with ``scores``, the score it gives an epoch index (the
    others keep their own)."""
    evaluate = task_cls.evaluate

    def scored(self, model, epoch):
        result = evaluate(self, model, epoch)
        return {**result, "score": (scores or {}).get(epoch, result["score"] if scores else float(epoch))}

    mp.setattr(task_cls, "evaluate", scored)


def second_write_dies(mp, step: int) -> list[str]:
    """The second checkpoint write of global step ``step`` raises Killed (after the first one was written)."""
    real, names = saving.save_checkpoint, []

    def save(path, payload):
        if payload["global_step"] == step:
            names.append(Path(path).name)
            if len(names) == 2:
                raise Killed(f"killed writing {Path(path).name} of step {step}")
        real(path, payload)

    mp.setattr(saving, "save_checkpoint", save)
    return names


def assert_best_not_ahead(run: Path) -> None:
    """best.pt (where there is one) is of a step no later than last.pt's, and a log row holds its evaluation."""
    best = run / "checkpoints" / "best.pt"
    if not best.is_file():
        return
    step = load_checkpoint(best)["global_step"]
    assert step <= load_checkpoint(run / "checkpoints" / "last.pt")["global_step"]
    assert any(r["step"] == step and "score" in r for r in read_log(run)), (step, read_log(run))


def test_a_kill_between_the_writes_of_a_new_best_leaves_best_pt_behind_and_resume_equals_the_uninterrupted_run(
        root, tmp_path, monkeypatch):
    """Epoch 2 (steps 6-10) scores a new best; the kill comes at the second write of step 10."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    with monkeypatch.context() as mp:
        rising_scores(mp, SupervisedTask)
        run_finetune(finetune_cfg(root, **FT), ref)
        names = second_write_dies(mp, 10)
        with pytest.raises(Killed):
            run_finetune(finetune_cfg(root, **FT), out)
    assert len(names) == 2 and "last.pt" in names
    assert_best_not_ahead(out)
    with monkeypatch.context() as mp:
        rising_scores(mp, SupervisedTask)
        run_finetune(finetune_cfg(root, **FT), out, resume=True)
    compare_runs(ref, out)
    assert [p.name for p in (out / "checkpoints").iterdir() if not p.name.endswith(".pt")] == []


def test_a_resume_whose_replay_scores_lower_keeps_no_best_pt_of_the_killed_session(root, tmp_path, monkeypatch):
    """A resume need not be bit-exact (another thread count): where the replayed epoch does not beat last.pt's
    best score, best.pt stayed the killed session's, an evaluation that no log row or metrics.json holds."""
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        rising_scores(mp, SupervisedTask, {0: 1.0, 1: 2.0})
        second_write_dies(mp, 10)
        with pytest.raises(Killed):
            run_finetune(finetune_cfg(root, **FT), out)
    with monkeypatch.context() as mp:
        rising_scores(mp, SupervisedTask, {0: 1.0, 1: 0.5, 2: 0.6})  # the replay of epoch 2 scores otherwise
        run_finetune(finetune_cfg(root, **FT), out, resume=True)
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    top = max(read_log(out), key=lambda r: r.get("score", -1))
    assert (best["global_step"], best["best_score"]) == (top["step"], top["score"]) == (5, 1.0)
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # nothing pending


def test_a_kill_after_last_pt_and_the_log_row_puts_the_new_best_in_place_on_resume(root, tmp_path, monkeypatch):
    """Killed after the epoch's last.pt and log row, before best.pt was replaced: the resume makes best.pt the
    new best at once, and with a replay that scores lower it stays (last.pt names it as the run's best)."""
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        rising_scores(mp, SupervisedTask, {0: 1.0, 1: 2.0})
        dies_after_the_row_of(mp, 10)
        with pytest.raises(Killed):
            run_finetune(finetune_cfg(root, **FT), out)
    assert_best_not_ahead(out)
    with monkeypatch.context() as mp:
        rising_scores(mp, SupervisedTask, {0: 1.0, 1: 2.0, 2: 0.5})
        run_finetune(finetune_cfg(root, **FT), out, resume=True)
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert (best["global_step"], best["best_score"]) == (10, 2.0)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("kill", [second_write_dies, dies_after_the_row_of], ids=["second_write", "after_the_row"])
def test_a_kill_in_a_budget_stops_writes_leaves_best_pt_behind_and_resume_equals_the_uninterrupted_run(
        root, ft_ref, tmp_path, monkeypatch, kill):
    """A budget stop after step 7 (epoch 2) evaluates its partial epoch, a new best. Killed at the second write of
    step 7 (last.pt is step 6's, from the save every 2 steps), or after the stop's last.pt and log row, before its
    best.pt was put in place (the resume takes the stop's best, then gives it back with its evaluation as it reopens
    the epoch): best.pt is never ahead, and the resume equals the uninterrupted run."""
    ref, out = ft_ref, tmp_path / "run"
    with monkeypatch.context() as mp:
        engine_clock(mp)
        rising_scores(mp, SupervisedTask, {1: 1e9})
        kill(mp, 7)
        with pytest.raises(Killed):
            run_finetune(finetune_cfg(root, **FT, **{"train.budget_minutes": 6.5 / 60}), out)
    assert_best_not_ahead(out)
    run_finetune(finetune_cfg(root, **FT), out, resume=True)
    compare_runs(ref, out)
    assert not (out / "checkpoints" / "best_before_stop.pt").exists()


def test_pretrain_a_kill_between_the_writes_of_a_new_best_resumes_as_the_uninterrupted_run(
        root, tmp_path, monkeypatch):
    """MoCo pretraining's kNN score makes best.pt through the same loop: the last epoch (step 20) is a new best."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    cfg = pretrain_cfg(root, **PT)
    with monkeypatch.context() as mp:
        rising_scores(mp, MoCoTask)
        run_pretrain(copy.deepcopy(cfg), ref)
        second_write_dies(mp, 20)
        with pytest.raises(Killed):
            run_pretrain(copy.deepcopy(cfg), out)
    assert_best_not_ahead(out)
    with monkeypatch.context() as mp:
        rising_scores(mp, MoCoTask)
        run_pretrain(copy.deepcopy(cfg), out, resume=True)
    compare_runs(ref, out)
