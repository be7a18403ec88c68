"""Review rev91 of data.resize=auto's bound and --weights record: predict's note called a cropped run's own 3:1 or
strip images shaped otherwise (#1), probe letterboxed what train crops (#2), `fewshot run` sized strips by their
long side and then cropped them (#3), a --weights pad skipped the bound (#4), a stage of `fewshot run --resume` did
not get its deleted record back (#6), and the --weights mismatch note listed square datasets (#7)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from PIL import Image

from fewshot.config.recorded import WEIGHTS_RESIZE
from fewshot.data.aspect import crop_notes
from fewshot.data.fit import settle_modes
from fewshot.data.layout import scan_root
from fewshot.data.shape_change import shape_change_notes
from fewshot.data.weights_resize import adopt_weights_resize, note_weights_mismatch
from helpers.checks import run_main
from helpers.tiny import tiny_train_argv
from test_fEQ_resize import tall_root


def _root(root: Path, name: str, w: int, h: int, splits=("train", "val")) -> Path:
    """ROOT/<name>/<split>/<class>/ with 4 blank w x h images per class, 2 classes."""
    for split in splits:
        for c in ("a", "b"):
            folder = root / name / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(4):
                Image.new("RGB", (w, h), (60 * i, 0, 200 if c == "a" else 0)).save(folder / f"{c}{i}.png")
    return root


def test_predict_says_nothing_of_the_run_s_own_images_cropped_by_data_resize_crop(tmp_path):
    root = tall_root(tmp_path / "root")
    run = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(root, run, "data.resize=crop"))
    assert rc == 0, err
    rc, _, err = run_main("predict", run, "--data", root, "--out", tmp_path / "pred_all.json", "--device", "cpu")
    assert rc == 0 and "these images are" not in err, err


def test_the_note_compares_with_the_training_images_not_the_decode(tmp_path):
    """Strips cropped by auto's bound at 16 px, predicted as they trained: no note; given to a run that trained on
    square images: the note, saying the training shape."""
    from fewshot.data.fit import record_shapes
    from fewshot.data.shape_change import training_shapes

    root = _root(tmp_path / "root", "strip", 160, 8)
    [info] = scan_root(root, ["strip"], splits=("train",))
    cfg = {"data": {"root": str(root), "resize": "auto"}, "model": {"img_size": 16}}
    assert settle_modes(cfg, [info]) == {"strip": "crop"}  # 16x1 px letterboxed: cropped
    record_shapes(cfg, [info])
    trained = training_shapes(cfg)
    assert trained == {"strip": (160, 8)}
    assert shape_change_notes([info], "crop", "auto", 16, trained) == []
    assert shape_change_notes([info], "crop", "crop", 16, {}) == []  # training shape unknown, crop given: quiet
    [line] = shape_change_notes([info], "crop", "auto", 224, {"strip": (8, 8)})
    assert "(8x8 px typically when it trained)" in line and "dropping 95 % of its columns" in line, line


def test_probe_under_auto_crops_what_train_crops(tmp_path, capsys):
    from fewshot.eval.probe import run_probe

    root = _root(tmp_path / "root", "strip", 160, 8)
    run_probe(None, "test_resnet", root, 16, torch.device("cpu"), head="prototype", resize="auto")
    line = capsys.readouterr().out
    assert "probe: test_resnet" in line and "padded" not in line, line


def test_run_sizes_strips_for_their_crop_not_their_letterbox(tmp_path):
    """1600x32 strips on GPU: sized for pad by their long side (160 px), where the bound crops them (3 px kept)."""
    from fewshot.run_checks import run_img_size

    root = _root(tmp_path / "root", "strip", 1600, 32, splits=("train",))
    infos = scan_root(root, ["strip"], splits=("train",))
    cfg = {"data": {"root": str(root), "resize": "auto"}, "model": {"name": "test_resnet", "img_size": None}}
    size, why = run_img_size(cfg, infos, torch.device("cuda"), 10.0)
    assert size == 32 and why.startswith("chosen for these images"), (size, why)
    assert not cfg.get("_resize") and cfg["model"]["img_size"] is None  # recorded by settle_fit, at the size


def test_a_weights_pad_too_thin_at_the_run_s_size_is_cropped_and_said(tmp_path, capsys):
    root = _root(tmp_path / "root", "strip", 160, 8, splits=("train",))
    infos = scan_root(root, ["strip"], splits=("train",))
    cfg = {"data": {"root": str(root), "resize": "auto"}, "model": {"img_size": 16},
           WEIGHTS_RESIZE: {"resize": "pad", "datasets": {}, "file": "w.safetensors", "given": False}}
    assert adopt_weights_resize(cfg, infos) is None
    err = capsys.readouterr().err
    assert "w.safetensors records pad for strip, but letterboxed at 16 px its images keep under 4 px" in err, err
    modes = settle_modes(cfg, infos)
    assert modes == {"strip": "crop"}
    [line] = crop_notes(infos, "auto", modes, img_size=16)
    assert "data.resize=auto crops" in line and "data.resize=pad letterboxes" not in line, line


def test_the_weights_mismatch_note_leaves_out_square_datasets(tmp_path, capsys):
    root = _root(_root(tmp_path / "root", "square", 8, 8, splits=("train",)), "wide", 24, 8, splits=("train",))
    infos = scan_root(root, None, splits=("train",))
    cfg = {"data": {"root": str(root), "resize": "crop"}, "model": {"img_size": 16}}
    note_weights_mismatch(cfg, infos, {"resize": "pad", "datasets": {}, "file": "w.pt"}, None)
    err = capsys.readouterr().err
    assert "wide (crop now, pad there)" in err and "square" not in err, err


def test_a_stage_resumed_without_its_record_gets_it_back_from_last_pt(tmp_path, capsys):
    """`fewshot run --resume`: a stage's config.yaml without its _resize entry, the images now square (auto would
    crop): the stage's last.pt says pad, as train's --resume restores it."""
    from fewshot.run_stages import stage_config

    root = tall_root(tmp_path / "root")
    stage = tmp_path / "round1"
    rc, _, err = run_main(*tiny_train_argv(root, stage))
    assert rc == 0, err
    assert (stage / "checkpoints" / "last.pt").is_file()
    saved = yaml.safe_load((stage / "config.yaml").read_text())
    assert saved.pop("_resize") == {"digits": "pad"}
    (stage / "config.yaml").write_text(yaml.safe_dump(saved))
    run_cfg = {**saved, "_resize": {"digits": "crop"}}  # the run's record, decided again this session
    capsys.readouterr()
    scfg = stage_config(stage, run_cfg)
    assert scfg["_resize"] == {"digits": "pad"}
    err = capsys.readouterr().err
    assert f"{stage / 'config.yaml'} has no _resize entry for digits" in err, err
