"""data.resize and --weights / --resume (hunt hBT #4, #6): an export recorded the image size and bit depth but not
how its images were fitted to a square, so `train --weights` decided anew without a word; a --resume whose
config.yaml lost its `_resize` record was refused for an edit ("pad in the run, crop now") nobody made."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from helpers.checks import run_main
from helpers.tiny import tall_crop_run, tiny_train_argv


@pytest.fixture(scope="module")
def tall(tmp_path_factory):
    """The tiny digits root, every image 3x as tall (auto pads it), and a run trained on it with data.resize=crop."""
    return tall_crop_run(tmp_path_factory.mktemp("tall"))


def _record(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text()).get("_resize")


def test_export_records_resize_and_train_weights_takes_it(tall, tmp_path):
    from fewshot.data.weights_resize import recorded_resize

    root, crop_run = tall
    rc, _, err = run_main("export", crop_run, "--out", tmp_path / "bb.safetensors")
    assert rc == 0, err
    assert recorded_resize(tmp_path / "bb.safetensors") == {"resize": "crop", "datasets": {}}
    for weights in (tmp_path / "bb.safetensors", crop_run / "checkpoints" / "best.pt"):  # an export, a checkpoint
        out = tmp_path / f"w_{weights.suffix[1:]}"
        rc, _, err = run_main(*tiny_train_argv(root, out, "--weights", weights))
        assert rc == 0, err
        assert "takes the choice --weights" in err and "crop: digits" in err, err
        assert _record(out) == {"digits": "crop"}  # auto alone pads these 3:1 images
    out = tmp_path / "given"
    rc, _, err = run_main(*tiny_train_argv(root, out, "--weights", tmp_path / "bb.safetensors", "data.resize=pad"))
    assert rc == 0, err
    assert "data.resize=pad decodes digits (pad now, crop there)" in err, err
    assert "resize: pad" in (out / "config.yaml").read_text()


def test_auto_choices_round_trip_and_bad_records_are_ignored(tmp_path, capsys):
    from fewshot.data.weights_resize import export_fields, recorded_resize

    fields = export_fields({"data": {"resize": "auto"}, "_resize": {"wide, 2": "pad", "sq": "crop"}})
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"model": "x", **fields})
    assert recorded_resize(path) == {"resize": "auto", "datasets": {"wide, 2": "pad", "sq": "crop"}}
    assert recorded_resize(tmp_path / "missing.safetensors") is None
    save_file({"w": torch.zeros(1)}, str(path), metadata={"model": "x"})  # an older export: today's behaviour
    assert recorded_resize(path) is None and capsys.readouterr().err == ""
    for meta in ({"resize": "PAD"}, {"resize": "auto", "resize_datasets": "{not json"},
                 {"resize": "auto", "resize_datasets": json.dumps({"../x": "pad"})},
                 {"resize": "auto", "resize_datasets": json.dumps({"a": "stretch"})},
                 {"resize": "auto", "resize_datasets": json.dumps([1, 2])}):
        save_file({"w": torch.zeros(1)}, str(path), metadata=meta)
        assert recorded_resize(path) is None, meta
        err = capsys.readouterr().err
        assert "warning:" in err and "is ignored" in err, (meta, err)


def test_resume_restores_a_deleted_record_from_the_checkpoint(tall, tmp_path):
    root, crop_run = tall
    run = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(root, run))  # auto: digits padded
    assert rc == 0, err
    assert _record(run) == {"digits": "pad"}
    squared = tmp_path / "root2"  # the images made square since: decided anew, auto would crop them
    shutil.copytree(root, squared)
    for png in (squared / "digits").rglob("*.png"):
        Image.open(png).resize((16, 16)).save(png)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    del cfg["_resize"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rc, _, err = run_main(*tiny_train_argv(squared, run, "--resume", "--epochs", "2"))
    assert rc == 0, err
    assert "has no _resize entry for digits" in err and "(digits: pad)" in err, err
    assert _record(run) == {"digits": "pad"}


@pytest.mark.parametrize("edit", [("digits: pad", "digits: crop"), ("resize: auto", "resize: crop")])
def test_an_edited_setting_is_refused_without_the_start_up_note(tall, tmp_path, edit):
    root, _ = tall
    run = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(root, run))
    assert rc == 0 and "far from square" in err, err
    text = (run / "config.yaml").read_text()
    assert edit[0] in text
    (run / "config.yaml").write_text(text.replace(edit[0], edit[1]))
    rc, _, err = run_main(*tiny_train_argv(root, run, "--resume", "--epochs", "2"))
    assert rc == 2 and "edited since" in err, err
    assert "far from square" not in err, err  # about a setting the refused resume never used
