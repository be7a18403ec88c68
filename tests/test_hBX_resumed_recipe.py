"""Hunt hBX #1: `fewshot run --weights EXPORT` stopped in round 1, the export moved or deleted, then `--resume`:
round 1 continued at its own config.yaml's lr (the small-data recipe, 2e-3, the backbone at 1x), but round 2, a
stage the resumed session started, chose its lr again from a --weights file no longer there and took the ImageNet
recipe (1e-4, 0.1x) without a word; its val fell below round 1's. Later rounds now take round 1's choice."""

from __future__ import annotations

import shutil
import signal

import pytest
import yaml

from helpers.checks import run_main
from helpers.tiny import tiny_train_argv
from test_run_resume import _cmd, sigterm_in_stage


def _optim(stage_dir) -> dict:
    return yaml.safe_load((stage_dir / "config.yaml").read_text())["optim"]


def resumed_after_the_weights_moved(digits_root, tmp_path) -> tuple[dict, dict, str]:
    """`run --weights EXPORT` stopped in round 1, the export moved, then `--resume`: round 1's and the last round's
    optim sections, and the resumed session's output."""
    from fewshot.train.supervised import SupervisedTask

    rc, _, err = run_main(*tiny_train_argv(digits_root, tmp_path / "src"))
    assert rc == 0, err
    weights = tmp_path / "w.safetensors"
    rc, _, err = run_main("export", tmp_path / "src", "--out", weights)
    assert rc == 0, err
    out, argv = tmp_path / "run", _cmd(digits_root, tmp_path / "run", "--weights", weights, "--img-size", "16")
    with pytest.MonkeyPatch.context() as mp:
        sigterm_in_stage(mp, "finetune_labelled", SupervisedTask, 2)
        rc, _, err = run_main(*argv)
    assert rc == 128 + signal.SIGTERM, err
    shutil.move(weights, tmp_path / "moved.safetensors")
    rc, stdout, err = run_main(*argv, "--resume")
    assert rc == 0, err
    return _optim(out / "finetune_labelled"), _optim(out / "finetune"), stdout


def test_round_2_keeps_round_1s_recipe_when_the_weights_file_is_gone_at_resume(digits_root, tmp_path, monkeypatch):
    """Round 2 long enough to restart the schedule (a short one divides the lr: test_fGJ_gentle_rounds)."""
    from fewshot import run_stages

    monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", 0.0)
    first, last, stdout = resumed_after_the_weights_moved(digits_root, tmp_path)
    assert first["lr"] == 2e-3 and first["backbone_lr_mult"] == 1.0, first  # the export's small-data recipe
    assert (last["lr"], last["backbone_lr_mult"]) == (first["lr"], first["backbone_lr_mult"]), (last, stdout)
