"""Self-training's labelled-only round (the time left holds a round but not the pool's labelling) continues the
round before's model gently: at a tenth of its lr, without a warm-up. The full schedule again (a fresh warm-up, then
lr 0.004) on the same 10-shot images for a few seconds took val from 76.8 to 25.8 (hunt hBW #3)."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers.checks import run_main
from test_run_leftover import SHORT, _no_time_to_label_the_pool, stopped_in_the_labelled_only_round
from test_run_resume import _cmd


def _lrs(stage_dir) -> list[float]:
    return [json.loads(line)["lr"] for line in (stage_dir / "log.jsonl").read_text().splitlines() if '"lr"' in line]


def test_the_labelled_only_round_continues_round_1_at_a_tenth_of_its_lr_without_a_warm_up(
        digits_root, tmp_path, monkeypatch, real_time_holds):
    _no_time_to_label_the_pool(monkeypatch)
    out = tmp_path / "run"
    rc, stdout, err = run_main(*_cmd(digits_root, out, *SHORT))
    assert rc == 0, err
    round1 = yaml.safe_load((out / "finetune_labelled" / "config.yaml").read_text())
    last = yaml.safe_load((out / "finetune" / "config.yaml").read_text())
    lr = round1["optim"]["lr"] * 0.1
    assert abs(last["optim"]["lr"] - lr) < 1e-12 and last["sched"]["warmup_epochs"] == 0.0, last
    trained = _lrs(out / "finetune")
    assert trained and max(trained) <= lr * (1 + 1e-6), trained  # the schedule never goes back to round 1's lr
    assert "[run] continuing round 1's model at a tenth of its lr, without a warm-up" in stdout, stdout
    assert f"lr {lr:g}\n" in stdout.split("continuing round 1's model")[1], stdout


@pytest.mark.parametrize("start_over", [False, True])
def test_a_resumed_labelled_only_round_keeps_a_tenth_of_round_1s_lr(digits_root, tmp_path, monkeypatch,
                                                                     real_time_holds, start_over):
    """Resumed, the stopped round continues at its own config.yaml's lr; started over (its training images differ
    from the stopped run's), it read that config (already a tenth) and divided it again: a hundredth, said to be a
    tenth (review rev99 #1)."""
    from fewshot import run_stages

    out = tmp_path / "run"
    stopped_in_the_labelled_only_round(monkeypatch, digits_root, out)
    if start_over:
        monkeypatch.setattr(run_stages, "same_training_images", lambda *a, **k: False)
    rc, stdout, err = run_main(*_cmd(digits_root, out, *SHORT), "--resume")
    assert rc == 0, err
    assert ("the stage starts over" in stdout) == start_over, stdout
    lr = yaml.safe_load((out / "finetune_labelled" / "config.yaml").read_text())["optim"]["lr"] * 0.1
    assert abs(yaml.safe_load((out / "finetune" / "config.yaml").read_text())["optim"]["lr"] - lr) < 1e-12
    assert max(_lrs(out / "finetune")) <= lr * (1 + 1e-6)
