"""A `fewshot run --pretrain` stage's config.yaml given back as --config. Its model.weights, the run's own MoCo
export, is recorded absolute and as chosen (with the weights the run was given), so `fewshot run --config` starts
MoCo as the original run did (random init, or those weights) instead of silently continuing from the old export, and
the values the run planned itself draw no "is replaced by" warning; `fewshot train --config` keeps fine-tuning from
the export (it has no MoCo stage), also from another folder. Before, the export was recorded relative to the run's
cwd and as the user's setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import fewshot.train.finetune as finetune
from fewshot import run_stages
from fewshot.cli import main
from fewshot.cli_warnings import warn_replaced_config_fields
from fewshot.config import resolve, save_yaml

EXPORT = "runs/rp1/backbone.safetensors"  # as pretrain_stage forms it from a relative --out


class Captured(BaseException):
    """Stops `fewshot train` where its task is built: the resolved config is all these tests need."""


def exported_weights(path: Path) -> str:
    """A safetensors file recording its model as `fewshot export` does (never loaded as a model here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(1)}, str(path), metadata={"model": "test_resnet", "img_size": "32"})
    return str(path)


def stage_file(tmp_path: Path, monkeypatch, given: str | None = None, pretrain: bool = True) -> Path:
    """The fine-tuning stage's config.yaml of `fewshot run --out runs/rp1 [--pretrain] [--weights given]` started in
    ``tmp_path``, as finetune_config and plan_stage fill it in."""
    monkeypatch.chdir(tmp_path)
    exported_weights(tmp_path / EXPORT)
    flags = {"run.pretrain": pretrain, "model.name": "test_resnet", "model.img_size": 32, "train.device": "cpu",
             "model.weights": given}
    cfg = resolve(flags=flags)
    weights = Path(EXPORT) if pretrain else cfg["model"]["weights"]
    fcfg = run_stages.finetune_config(cfg, weights, "pseudo", read_weights=False)
    fcfg["sched"]["time_based"] = True  # plan_stage's plan
    fcfg["train"].update(epochs=300, eval_every=2, budget_minutes=0.07)
    path = tmp_path / "runs" / "rp1" / "finetune" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_yaml(fcfg, path)
    return path


def test_the_runs_own_export_is_recorded_absolute_and_as_chosen(tmp_path, monkeypatch):
    saved = yaml.safe_load(stage_file(tmp_path, monkeypatch).read_text())
    export = str(tmp_path / EXPORT)
    assert saved["model"]["weights"] == export  # was runs/rp1/backbone.safetensors: not found from another folder
    assert saved["_chosen"]["model.weights"] == export
    assert "_given_weights" not in saved  # MoCo started from random init


def test_the_weights_a_pretraining_run_was_given_are_recorded_beside_its_export(tmp_path, monkeypatch):
    given = exported_weights(tmp_path / "mine.safetensors")
    saved = yaml.safe_load(stage_file(tmp_path, monkeypatch, given=given).read_text())
    assert saved["_chosen"]["model.weights"] == str(tmp_path / EXPORT) and saved["_given_weights"] == given


def test_a_users_weights_without_pretraining_stay_theirs(tmp_path, monkeypatch):
    given = exported_weights(tmp_path / "mine.safetensors")
    saved = yaml.safe_load(stage_file(tmp_path, monkeypatch, given=given, pretrain=False).read_text())
    assert saved["model"]["weights"] == given and "model.weights" not in saved["_chosen"]


@pytest.mark.parametrize("given", [False, True])
def test_run_from_a_stage_file_starts_moco_as_the_original_did(tmp_path, monkeypatch, settings_only_run, capsys,
                                                                digits_root, given):
    weights = exported_weights(tmp_path / "mine.safetensors") if given else None
    path = stage_file(tmp_path, monkeypatch, given=weights)
    assert main(["run", "--data", str(digits_root), "--out", "runs/rp2", "--config", str(path),
                 "--budget-minutes", "1"]) == 0
    assert settings_only_run[-1]["model"]["weights"] == weights  # not runs/rp1's export: MoCo starts anew
    assert "is replaced by" not in capsys.readouterr().err  # sched.time_based, train.epochs ... are the run's own


def test_train_from_a_stage_file_in_another_folder_fine_tunes_from_the_export(tmp_path, monkeypatch, digits_root):
    path = stage_file(tmp_path, monkeypatch)
    seen = []

    def build(cfg, *args, **kwargs):
        seen.append(cfg)
        raise Captured

    monkeypatch.setattr(finetune, "SupervisedTask", build)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    with pytest.raises(Captured):
        main(["train", "--data", str(digits_root), "--out", "t1", "--config", str(Path("..") / path.relative_to(
            tmp_path)), "--no-progress"])
    assert seen[0]["model"]["weights"] == str(tmp_path / EXPORT)


def test_a_stage_files_own_plan_draws_no_replaced_warning(tmp_path, monkeypatch, capsys):
    warn_replaced_config_fields(str(stage_file(tmp_path, monkeypatch)))
    assert capsys.readouterr().err == ""
    recipe = tmp_path / "recipe.yaml"  # a recipe of the user's: its epochs are replaced, time_based on is kept
    recipe.write_text("sched:\n  time_based: true\ntrain:\n  epochs: 5\n")
    warn_replaced_config_fields(str(recipe))
    err = capsys.readouterr().err
    assert "train.epochs: 5 in" in err and "sched.time_based" not in err
