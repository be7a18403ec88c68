"""best.pt holds whichever of the EMA and the raw weights scored higher on val.

On short runs the EMA lags far behind the raw weights (32 steps: val 16.8 against 43.2), and without its decay
warm-up it stays at chance; everything the user gets (best.pt, metrics.json, eval, predict, export) was the EMA's.
Each evaluation with an EMA now scores both, best.pt holds the better set (a tie: the EMA), log.jsonl records both
scores, and last.pt keeps both sets as before so that resume stays exact.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from fewshot.eval.predict import evaluate_run, load_trained
from fewshot.ssl.export import backbone_state
from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.engine import Engine
from fewshot.train.finetune import run_finetune
from fewshot.train.supervised import SupervisedTask
from helpers.checks import assert_same
from helpers.tiny import build_digits, finetune_cfg

TIMING = {"images_per_s", "epoch_time_s", "eval_time_s"}
# the EMA without warm-up at the default decay (a 25,000-step horizon) over 5 epochs x 5 steps: it stays at chance
SHORT = {"train.epochs": 5, "train.ema_warmup": False}


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the code under test can swallow it."""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def short_run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ema") / "short"
    run_finetune(finetune_cfg(root, **SHORT), out)
    return out


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def test_short_run_where_the_raw_weights_win_gives_them_to_everything_downstream(short_run, root):
    log = rows(short_run)
    assert all({"score_ema", "score_raw", "weights"} <= set(r) for r in log)  # both scored at every evaluation
    assert all(r["score"] == max(r["score_ema"], r["score_raw"]) for r in log)
    assert all(r["weights"] == ("raw" if r["score_raw"] > r["score_ema"] else "ema") for r in log)
    assert max(r["score_raw"] for r in log) > max(r["score_ema"] for r in log)  # the run this test is about

    best = load_checkpoint(short_run / "checkpoints" / "best.pt")
    assert best["weights"] == "raw" and best["ema"] is None  # its readers take "model": the raw weights
    last = load_checkpoint(short_run / "checkpoints" / "last.pt")
    assert last["ema"] is not None  # last.pt keeps both sets (resume)
    if best["global_step"] == last["global_step"]:
        assert_same(best["model"], last["model"], "raw weights")

    metrics = json.loads((short_run / "metrics.json").read_text())
    assert metrics["weights"] == "raw"
    assert metrics["mean_acc1"] == pytest.approx(max(r["score"] for r in log))
    # eval and predict load the same weights and agree with metrics.json
    assert evaluate_run(short_run, root, "known", torch.device("cpu"))["mean_acc1"] == pytest.approx(
        metrics["mean_acc1"])
    assert_same(load_trained(short_run, torch.device("cpu")).model.state_dict(), best["model"], "predict")
    # export writes the raw backbone
    raw_backbone = {k[len("backbone."):]: v for k, v in best["model"].items() if k.startswith("backbone.")}
    assert_same(backbone_state(best), raw_backbone, "export")


def test_when_the_ema_scores_higher_best_pt_keeps_the_ema(root, tmp_path, monkeypatch):
    """The raw weights are made to score 50 points lower: every evaluation and best.pt are the EMA's."""
    orig = SupervisedTask.evaluate

    def evaluate(self, model, epoch):
        out = orig(self, model, epoch)
        if model is self.model:  # the raw weights (the EMA is another module)
            out["score"] -= 50.0
        return out

    monkeypatch.setattr(SupervisedTask, "evaluate", evaluate)
    out = tmp_path / "run"
    run_finetune(finetune_cfg(root, **{"train.epochs": 2}), out)
    log = rows(out)
    assert [r["weights"] for r in log] == ["ema", "ema"]
    assert all(r["score"] == r["score_ema"] > r["score_raw"] for r in log)
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["weights"] == "ema" and best["ema"] is not None
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    if best["global_step"] == last["global_step"]:
        assert_same(best["ema"], last["ema"], "ema weights")
    assert_same(load_trained(out, torch.device("cpu")).model.state_dict(), best["ema"], "predict")
    assert json.loads((out / "metrics.json").read_text())["weights"] == "ema"


def test_a_tie_keeps_the_ema(root, tmp_path):
    """ema_decay=0: the EMA is a copy of the raw weights, the scores tie at every evaluation."""
    out = tmp_path / "run"
    run_finetune(finetune_cfg(root, **{"train.epochs": 2, "train.ema_decay": 0.0}), out)
    assert [(r["weights"], r["score_ema"] == r["score_raw"]) for r in rows(out)] == [("ema", True)] * 2
    assert load_checkpoint(out / "checkpoints" / "best.pt")["weights"] == "ema"


def test_without_an_ema_only_one_evaluation_runs(root, tmp_path, monkeypatch):
    calls = []
    orig = SupervisedTask.evaluate
    monkeypatch.setattr(SupervisedTask, "evaluate", lambda self, m, e: calls.append(e) or orig(self, m, e))
    out = tmp_path / "run"
    run_finetune(finetune_cfg(root, **{"train.epochs": 2, "train.ema": False}), out)
    assert len(calls) == 2 + 1  # one per epoch, and final_metrics'
    assert all("score_raw" not in r for r in rows(out))
    assert json.loads((out / "metrics.json").read_text())["weights"] == "raw"


@pytest.mark.parametrize("flags, warned", [
    ({"train.ema_warmup": False}, True),  # a 25,000-step horizon over a 5-step run
    ({"train.ema_warmup": True}, False),
    ({"train.ema_warmup": False, "train.ema_decay": 0.5}, False),  # a 2-step horizon
    ({"train.ema_warmup": False, "train.ema": False}, False),
    # a 20-step horizon: over 8 epochs x 5 steps not, but a time-based schedule's 8 epochs are a 4x cap (~10 steps)
    ({"train.epochs": 8, "train.ema_warmup": False, "train.ema_decay": 0.95}, False),
    ({"train.epochs": 8, "train.ema_warmup": False, "train.ema_decay": 0.95, "sched.time_based": True,
      "train.budget_minutes": 1.0}, True),
])
def test_an_ema_slower_than_the_run_is_warned_about_at_the_start(root, tmp_path, capsys, flags, warned):
    cfg = finetune_cfg(root, **{"train.epochs": 1, **flags})
    with pytest.raises(Killed):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Engine, "fit", lambda self, resume=False: (_ for _ in ()).throw(Killed()))
            run_finetune(cfg, tmp_path / "run")
    err = capsys.readouterr().err
    assert ("train.ema_warmup=false" in err) == warned
    if warned:
        assert "train.ema_warmup=true" in err and "train.ema=false" in err and err.count("averages the weights") == 1


@pytest.mark.parametrize("kill_epoch", [2, 4])
def test_resume_of_a_run_whose_raw_weights_win_equals_the_uninterrupted_run(root, short_run, tmp_path, monkeypatch,
                                                                             kill_epoch):
    cfg = finetune_cfg(root, **SHORT)
    out = tmp_path / "run"
    orig = Engine.log

    def log(self, record):
        orig(self, record)
        if record.get("epoch") == kill_epoch:
            raise Killed(f"killed after epoch {kill_epoch}")

    with monkeypatch.context() as mp:
        mp.setattr(Engine, "log", log)
        with pytest.raises(Killed):
            run_finetune(copy.deepcopy(cfg), out)
    run_finetune(copy.deepcopy(cfg), out, resume=True)
    for name in ("last", "best"):
        a, b = (load_checkpoint(r / "checkpoints" / f"{name}.pt") for r in (short_run, out))
        for ck in (a, b):
            ck.pop("train_seconds")
            ck.pop("epoch_seconds")  # a measurement, as train_seconds
            ck["config"]["train"].pop("budget_minutes")
        assert_same(a, b, name)
    assert rows(out) == rows(short_run)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((short_run / "metrics.json").read_text())


@pytest.mark.parametrize("ema, supports, every", [(True, True, 80), (False, True, 40), (True, False, 40)])
def test_fewshot_run_plans_two_evaluations_per_interval_while_the_ema_is_on(monkeypatch, ema, supports, every):
    """`fewshot run` spaces evaluations to ~10 % of the training time: with an EMA each one now scores two sets."""
    import time
    from types import SimpleNamespace

    import fewshot.run_stages
    from fewshot.run_stages import plan_stage

    # 0.1 s a step, 5 steps an epoch, 2 s an evaluation (4 s with the EMA's and the raw weights')
    monkeypatch.setattr(fewshot.run_stages, "measure_step_seconds", lambda task: 0.1)
    monkeypatch.setattr(fewshot.run_stages, "measure_eval_seconds", lambda task: 2.0)
    task = SimpleNamespace(plan_epoch=lambda epoch: [0] * 5, supports_ema=supports)
    cfg = {"train": {"ema": ema}, "sched": {}}
    _, epochs, budget_s = plan_stage(task, cfg, time.monotonic() + 110.0, 1, ("train", "eval_every"))
    assert cfg["train"]["eval_every"] == every
    assert epochs == pytest.approx(budget_s / (0.5 + (4.0 if ema and supports else 2.0) / every))
