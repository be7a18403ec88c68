"""`fewshot run --weights` of a `fewshot export` (hunt hBW #1, #2): the run ignored the data.resize the export
records (train, pretrain and probe --weights take it; 68.7 % -> 50.2 % on wide images), and fine-tuned a small-data
export at the ImageNet recipe (lr 1e-4, backbone x0.1: 21.7 % where random init got 91 %)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from helpers.checks import run_main
from helpers.tiny import finetune_cfg, tall_crop_run, tiny_train_argv


@pytest.fixture(scope="module")
def tall_export(tmp_path_factory):
    """The tiny digits root with every image 3x as tall (auto alone pads it), and the export of a run trained on
    it with data.resize=crop."""
    base = tmp_path_factory.mktemp("tall")
    root, _ = tall_crop_run(base)
    rc, _, err = run_main("export", base / "crop", "--out", base / "bb.safetensors")
    assert rc == 0, err
    return root, base / "bb.safetensors"


def _run_argv(root, out, weights, *extra) -> list:
    return ["run", "--data", root, "--out", out, "--weights", weights, "--budget-minutes", "0.2", "--baseline",
            "--img-size", "16", "--device", "cpu", "--no-progress", "run.report=false", "train.batch_size=8",
            "train.threads=1", *extra]


def test_run_weights_takes_the_exports_resize_and_its_small_data_recipe(tall_export, tmp_path):
    root, weights = tall_export
    out = tmp_path / "run"
    rc, got, err = run_main(*_run_argv(root, out, weights))
    assert rc == 0, err
    assert "takes the choice --weights" in err and "crop: digits" in err, err
    stage = yaml.safe_load((out / "finetune" / "config.yaml").read_text())
    assert stage["_resize"] == {"digits": "crop"}  # auto alone letterboxes these 1:3 images
    assert json.loads((out / "run_state.json").read_text())["_resize"] == {"digits": "crop"}
    assert "_weights_resize" not in json.loads((out / "run_state.json").read_text())["config"]
    # a fewshot export fine-tunes as `run --pretrain` fine-tunes its own, and the start line says so
    assert stage["optim"]["lr"] == 2e-3 and stage["optim"]["backbone_lr_mult"] == 1.0
    assert "a fewshot export: the small-data recipe" in got and "lr 0.002 with the backbone at 1x" in got, got


def test_an_explicit_resize_wins_with_the_mismatch_note(tall_export, tmp_path, monkeypatch):
    from fewshot import pipeline
    from fewshot.errors import UserError

    def stop(self):
        raise UserError(f"stopped after choose_model: {self.cfg['data']['resize']} {self.cfg.get('_resize')}")
    monkeypatch.setattr(pipeline.PipelineRun, "decode_inputs", stop)
    root, weights = tall_export
    rc, _, err = run_main(*_run_argv(root, tmp_path / "r", weights, "data.resize=pad"))
    assert rc == 2 and "stopped after choose_model: pad" in err, err
    assert "data.resize=pad decodes digits (pad now, crop there)" in err, err


def _export_like(path, meta=True):
    """A safetensors file with (or without) the metadata every `fewshot export` records."""
    fields = {"model": "test_resnet", "source": "x/checkpoints/last.pt", "epoch": "3", "img_size": "16"}
    save_file({"w": torch.zeros(1)}, str(path), metadata=fields if meta else None)
    return path


@pytest.mark.parametrize("pretrain", [False, True])
def test_finetune_config_of_a_fewshot_export_takes_the_small_data_recipe(tmp_path, pretrain):
    from fewshot.run_stages import finetune_config

    cfg = finetune_cfg(tmp_path)
    cfg["run"]["pretrain"] = pretrain
    fcfg = finetune_config(cfg, _export_like(tmp_path / "ours.safetensors"), "off", read_weights=False)
    assert (fcfg["optim"]["lr"], fcfg["optim"]["backbone_lr_mult"]) == (2e-3, 1.0)
    cfg["run"]["finetune_lr"] = 5e-4  # the user's run.* recipe holds for it too
    fcfg = finetune_config(cfg, _export_like(tmp_path / "ours.safetensors"), "off", read_weights=False)
    assert fcfg["optim"]["lr"] == 5e-4


def test_other_weights_keep_the_imagenet_recipe_and_a_given_lr_stays(tmp_path):
    from fewshot.run_stages import finetune_config
    from fewshot.train.supervised import recipe_words, resolve_finetune_defaults

    cfg = finetune_cfg(tmp_path)
    foreign = _export_like(tmp_path / "timm.safetensors", meta=False)
    fcfg = finetune_config(cfg, foreign, "off", read_weights=False)
    assert (fcfg["optim"]["lr"], fcfg["optim"]["backbone_lr_mult"]) == (1e-4, 0.1)
    assert "not a fewshot export" in recipe_words(fcfg)
    given = finetune_cfg(tmp_path, **{"optim.lr": 0.01, "model.weights": str(_export_like(tmp_path / "o.safetensors"))})
    resolve_finetune_defaults(given, resuming=True)
    assert given["optim"]["lr"] == 0.01 and given["optim"]["backbone_lr_mult"] == 1.0


def test_train_weights_of_a_fewshot_export_agrees_with_run(tall_export, tmp_path):
    root, weights = tall_export
    out = tmp_path / "t"
    rc, got, err = run_main(*tiny_train_argv(root, out, "--weights", weights))
    assert rc == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["optim"]["lr"], saved["optim"]["backbone_lr_mult"]) == (2e-3, 1.0)
    assert "is a fewshot export: the small-data recipe" in got, got
