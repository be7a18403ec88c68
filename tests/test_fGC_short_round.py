"""A pseudo-labelled round planned under run_stages.SHORT_ROUND_EPOCHS continues the round before's model gently (a
tenth of its lr, no warm-up), as the labelled-only round does: a fresh warm-up and peak lr for 0.3-2 epochs cost round
2 15-45 val points on a 5-shot fashion-mnist root, paired from the same round 1 (docs/recipes.md, "A short round 2")."""

from __future__ import annotations

import pytest
import yaml

from helpers.checks import run_main
from test_fFX_labelled_only_lr import _lrs
from test_run_resume import _cmd


@pytest.mark.parametrize("short", [True, False])
def test_a_short_pseudo_labelled_round_continues_round_1_gently(digits_root, tmp_path, monkeypatch, short):
    from fewshot import run_stages

    monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", 1e9 if short else 0.0, raising=False)  # all or none
    out = tmp_path / "run"
    rc, stdout, err = run_main(*_cmd(digits_root, out))
    assert rc == 0, err
    round1 = yaml.safe_load((out / "finetune_labelled" / "config.yaml").read_text())
    last = yaml.safe_load((out / "finetune" / "config.yaml").read_text())
    assert "pseudo-labelled" in stdout, stdout  # round 2 trained on the pool's pseudo-labels
    if short:
        lr = round1["optim"]["lr"] * 0.1
        assert abs(last["optim"]["lr"] - lr) < 1e-12 and last["sched"]["warmup_epochs"] == 0.0, last
        assert max(_lrs(out / "finetune")) <= lr * (1 + 1e-6)  # the schedule never goes back to round 1's lr
        assert "continuing the previous round's model at a tenth of round 1's lr, without a warm-up" in stdout, stdout
    else:  # a round long enough restarts the schedule at round 1's lr, with its warm-up
        assert last["optim"]["lr"] == round1["optim"]["lr"], last
        assert last["sched"]["warmup_epochs"] == round1["sched"]["warmup_epochs"] > 0, last
        assert "fine-tuning from the previous round" in stdout, stdout
