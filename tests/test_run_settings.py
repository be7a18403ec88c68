"""`fewshot run` builds each stage's config from the user's: the settings it takes must reach the stage that uses
them. optim.backbone_lr_mult=0 (a frozen backbone) became 1.0 in fine-tuning after --pretrain, and moco.preset=mocov1
was recorded while the MoCo stage trained with v2's temperature, head, schedule and views."""

from __future__ import annotations

import pytest

import fewshot.pipeline as pipeline
import fewshot.run_stages as run_stages
from fewshot.cli import main
from fewshot.config import resolve


class Captured(Exception):
    """Stops the run where the stage under test builds its task: its config is all the test needs."""


def capture_task(monkeypatch, module, name: str) -> list[dict]:
    """Replace ``module.name`` (a task class the pipeline imports when it builds a stage) by one that records the
    stage's config and stops the run."""
    seen: list[dict] = []
    # modules that bind the class by name at import (finetune: `from ...supervised import SupervisedTask`) are
    # imported before the patch: imported under it, they kept the stand-in for every later test in the session
    import fewshot.train.finetune  # noqa: F401

    def build(cfg, *args, **kwargs):
        seen.append(cfg)
        raise Captured

    monkeypatch.setattr(module, name, build)
    return seen


def run_words(root, out, *extra) -> list:
    return ["run", "--data", root, "--out", out, "--budget-minutes", "1", "--model", "test_resnet",
            "--img-size", "32", "--no-progress", *extra]


def test_a_frozen_backbone_stays_frozen_in_fine_tuning_after_pretraining(digits_root, tmp_path, monkeypatch):
    import fewshot.train.supervised as supervised

    # the MoCo stage itself is not under test: no pretraining, no weights
    monkeypatch.setattr(pipeline, "pretrain_stage", lambda *a, **k: (None, {"epochs": 0}, 0.0))
    seen = capture_task(monkeypatch, supervised, "SupervisedTask")
    main(run_words(digits_root, tmp_path / "out", "--pretrain", "optim.backbone_lr_mult=0"))
    assert seen, "the run stopped before fine-tuning"
    assert seen[0]["optim"]["backbone_lr_mult"] == 0
    assert seen[0]["optim"]["lr"] == seen[0]["run"]["finetune_lr"]  # an unset lr still takes run.finetune_lr


def test_the_run_fills_only_the_fine_tuning_rates_the_user_left_unset():
    cfg = resolve(flags={"run.pretrain": True}, overrides=["run.finetune_backbone_mult=0.5"])
    fcfg = run_stages.finetune_config(cfg, None, "pseudo")
    assert (fcfg["optim"]["lr"], fcfg["optim"]["backbone_lr_mult"]) == (2e-3, 0.5)
    cfg = resolve(flags={"run.pretrain": True}, overrides=["optim.lr=1e-3", "optim.backbone_lr_mult=0"])
    fcfg = run_stages.finetune_config(cfg, None, "pseudo")
    assert (fcfg["optim"]["lr"], fcfg["optim"]["backbone_lr_mult"]) == (1e-3, 0)
    assert cfg["optim"]["backbone_lr_mult"] == 0  # the run's own config is left as it was


def test_a_negative_fine_tuning_multiplier_is_refused_at_start_up():
    from fewshot.errors import UserError

    with pytest.raises(UserError, match="run.finetune_backbone_mult must be at least 0"):
        resolve(overrides=["run.finetune_backbone_mult=-1"])


@pytest.mark.parametrize("extra, want", [
    (["moco.preset=mocov1"], {"preset": "mocov1", "temperature": 0.07, "mlp": False, "cos": False}),
    (["moco.preset=mocov1", "moco.temperature=0.1"], {"preset": "mocov1", "temperature": 0.1, "mlp": False}),
    ([], {"preset": "mocov2", "temperature": 0.2, "mlp": True, "cos": True}),
])
def test_the_run_trains_moco_with_the_preset_it_records(digits_root, tmp_path, monkeypatch, extra, want):
    import fewshot.ssl.pretrain as pretrain

    seen = capture_task(monkeypatch, pretrain, "MoCoTask")
    main(run_words(digits_root, tmp_path / "out", "--pretrain", *extra))
    assert seen, "the run stopped before the MoCo stage"
    moco, aug = seen[0]["moco"], seen[0]["aug"]
    assert {k: moco[k] for k in want} == want
    v1 = want["preset"] == "mocov1"
    assert (aug["jitter_p"], aug["blur_p"]) == ((1.0, 0.0) if v1 else (0.8, 0.5))  # the preset's views
    # the stage keeps the run's small-data recipe, not the preset's full-size one
    assert (seen[0]["optim"]["name"], seen[0]["train"]["batch_size"]) == ("sgd", seen[0]["run"]["pretrain_batch_size"])
    assert seen[0]["model"]["name"] == "test_resnet"


def test_a_preset_in_the_run_leaves_the_fine_tuning_recipe_alone(tmp_path):
    cfg = resolve(flags={"run.pretrain": True}, overrides=["moco.preset=mocov1"], default_preset="mocov2",
                  preset_sections=("moco", "aug"))
    plain = resolve(flags={"run.pretrain": True})
    for section in ("optim", "sched", "train", "model"):
        assert cfg[section] == plain[section], section
    assert cfg["moco"]["temperature"] == 0.07
