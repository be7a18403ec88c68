"""Review rev94 of the data.resize follow-ups: `fewshot run --resume` decided the run's crop or pad anew from images
changed since, against its stopped stage's (#1); predict and eval re-read the training root for its shape (#2); the
tests could not tell predict's wiring or the explicit-crop fallback from their absence (#3); NEAR_SQUARE's bound
and the stage record's name in a refusal (#5)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from fewshot.data import aspect
from fewshot.data.fit import restore_record, settle_fit
from fewshot.data.layout import scan_root
from fewshot.data.shape_change import shape_change_notes
from fewshot.data.weights_resize import note_weights_mismatch
from fewshot.errors import UserError
from helpers.checks import run_main
from helpers.tiny import build_digits, tiny_train_argv


def _root(root: Path, name: str, w: int, h: int) -> Path:
    """ROOT/<name>/train/<class>/ with 4 blank w x h images per class, 2 classes (rewritten where there)."""
    for c in ("a", "b"):
        folder = root / name / "train" / c
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.new("RGB", (w, h), (60 * i, 0, 200 if c == "a" else 0)).save(folder / f"{c}{i}.png")
    return root


def _settled(root: Path) -> dict:
    cfg = {"data": {"root": str(root), "resize": "auto"}, "model": {"img_size": 16}}
    settle_fit(cfg, scan_root(root, None, splits=("train",)))
    return cfg


def _requested(root: Path) -> dict:
    """A run's settings as requested: the defaults, on ``root``."""
    from fewshot.config import DEFAULTS

    requested = copy.deepcopy(DEFAULTS)
    requested["data"]["root"] = str(root)
    return requested


def _started_run(tmp_path, monkeypatch):
    """A run's state started on 48x16 images (padded at 16 px), whose images are square since."""
    from fewshot.run_fit_record import keep_fit_records
    from fewshot.run_state import RunState

    root = _root(tmp_path / "root", "wide", 48, 16)
    cfg = _settled(root)
    assert cfg["_resize"] == {"wide": "pad"} and cfg["_shapes"] == {"wide": [48, 16]}
    out = tmp_path / "run"
    out.mkdir()
    state = RunState.start(out, _requested(root), 1.0, 16, 0.0)
    keep_fit_records(state, cfg)
    state.save()
    _root(root, "wide", 16, 16)
    monkeypatch.setattr(aspect, "_READ", {})  # the headers as a new process reads them
    return root, out


def test_a_resumed_run_keeps_its_record_where_the_images_changed(tmp_path, monkeypatch, capsys):
    from fewshot.run_fit_record import restore_fit_records
    from fewshot.run_state import RunState

    root, out = _started_run(tmp_path, monkeypatch)
    assert _settled(root)["_resize"] == {"wide": "crop"}  # decided anew: crop, where the stopped stage padded
    state = RunState.resume(out, _requested(root), None)
    cfg = {"data": {"root": str(root), "resize": "auto"}, "model": {"img_size": 16}}
    restore_fit_records(cfg, state)
    capsys.readouterr()
    settle_fit(cfg, scan_root(root, None, splits=("train",)))
    assert cfg["_resize"] == {"wide": "pad"} and cfg["_shapes"] == {"wide": [48, 16]}
    assert "decode as before" not in capsys.readouterr().err


def test_a_run_state_from_before_the_record_takes_its_first_stage_s(tmp_path, monkeypatch):
    from fewshot.run_fit_record import restore_fit_records
    from fewshot.run_state import RunState

    root, out = _started_run(tmp_path, monkeypatch)
    data = json.loads((out / "run_state.json").read_text())
    del data["_resize"], data["_shapes"]
    data["stages"] = {"pretrain": {}, "finetune_labelled": {}}
    (out / "run_state.json").write_text(json.dumps(data))
    (out / "finetune_labelled").mkdir()
    (out / "finetune_labelled" / "config.yaml").write_text(yaml.safe_dump({"_resize": {"wide": "pad"}}))
    cfg = {"data": {"root": str(root), "resize": "auto"}}
    restore_fit_records(cfg, RunState.resume(out, _requested(root), None))
    assert cfg["_resize"] == {"wide": "pad"}


def test_a_hand_edited_record_in_run_state_is_refused(tmp_path, monkeypatch):
    from fewshot.run_state import RunState

    root, out = _started_run(tmp_path, monkeypatch)
    data = json.loads((out / "run_state.json").read_text())
    data["_resize"] = {"wide": "PAD"}
    (out / "run_state.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"--resume: .*run_state\.json is damaged: its _resize entry must map each "):
        RunState.resume(out, _requested(root), None)


def test_predict_compares_with_the_recorded_training_shape_not_the_root_now(tmp_path, monkeypatch):
    """A crop run trained on square digits, whose root then holds 3:1 images: predict notes them, with the shape the
    run trained on (re-read from the root, it took the 3:1 images for the training ones and said nothing)."""
    root = build_digits(tmp_path / "root", shots=2)
    run = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(root, run, "data.resize=crop"))
    assert rc == 0, err
    pngs = sorted((root / "digits").rglob("*.png"))
    with Image.open(pngs[0]) as img:
        w, h = img.size
    assert w == h
    for png in pngs:
        Image.new("RGB", (3 * w, h)).save(png)
    monkeypatch.setattr(aspect, "_READ", {})  # the headers as a new process reads them
    rc, _, err = run_main("predict", run, "--data", root, "--out", tmp_path / "pred_all.json", "--device", "cpu")
    assert rc == 0, err
    assert f"digits: these images are {3 * w}x{h} px typically" in err, err
    assert f"({w}x{h} px typically when it trained)" in err, err


def test_an_explicit_crop_of_unknown_training_shape_says_nothing_of_letterboxable_images(tmp_path):
    """48x16 images at 16 px: auto would letterbox them (5 px kept), so only auto's crop notes them."""
    root = _root(tmp_path / "root", "wide", 48, 16)
    [info] = scan_root(root, ["wide"], splits=("train",))
    assert shape_change_notes([info], "crop", "crop", 16, {}) == []
    [line] = shape_change_notes([info], "crop", "auto", 16, {})
    assert "wide: these images are 48x16 px typically" in line, line


def test_the_weights_mismatch_note_bound_is_five_percent(tmp_path, capsys):
    root = _root(_root(tmp_path / "root", "inside", 21, 20), "outside", 22, 20)
    infos = scan_root(root, None, splits=("train",))
    cfg = {"data": {"root": str(root), "resize": "crop"}, "model": {"img_size": 16}}
    note_weights_mismatch(cfg, infos, {"resize": "pad", "datasets": {}, "file": "w.pt"}, None)
    err = capsys.readouterr().err
    assert "outside (crop now, pad there)" in err and "inside" not in err, err


def test_a_malformed_stage_record_is_named_as_the_stage_s(tmp_path):
    whose = str(tmp_path / "finetune" / "config.yaml")
    scfg = {"data": {"resize": "auto"}, "_resize": {"wide": "PAD"}}
    then = {"data": {"resize": "auto"}, "_resize": {"wide": "pad", "tall": "crop"}}
    with pytest.raises(UserError, match="finetune/config.yaml: its _resize entry"):
        restore_record(scfg, ["wide", "tall"], then, "checkpoint last.pt", whose)


def test_run_resume_decodes_as_its_stopped_stage_where_the_images_changed(tmp_path, monkeypatch):
    """`fewshot run` on 3:1 images (padded), stopped in round 1; the images square since (auto would crop): round 2
    fine-tunes round 1's weights on them padded, as round 1 trained, not cropped (review rev94 #1b)."""
    from fewshot.train.supervised import SupervisedTask
    from test_fEQ_resize import tall_root
    from test_run_resume import _cmd, stopped_in_stage

    root = tall_root(tmp_path / "root")
    out = tmp_path / "run"
    cmd = _cmd(root, out, "--img-size", "16")
    stopped_in_stage(cmd, "finetune_labelled", SupervisedTask)
    assert json.loads((out / "run_state.json").read_text())["_resize"] == {"digits": "pad"}
    for png in (root / "digits").rglob("*.png"):
        with Image.open(png) as img:
            square = img.crop((0, 0, img.width, img.width))
        square.save(png)
    monkeypatch.setattr(aspect, "_READ", {})
    rc, _, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    for stage in ("finetune_labelled", "finetune"):
        assert yaml.safe_load((out / stage / "config.yaml").read_text())["_resize"] == {"digits": "pad"}, stage
