"""Data config, layout and augmentation fixes: non-finite aug.* numbers, the folder --out hint inside the data,
split folders with other capitals, lists cut short without a word, and the plain blur under bf16 autocast."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from fewshot.config import resolve
from fewshot.data import augment
from fewshot.data.augment import AugmentConfig, BatchAugment
from fewshot.data.layout import scan_root
from fewshot.errors import DataLayoutError, UserError
from helpers.checks import run_main


def _image(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def _root(tmp_path: Path, train=("a", "b"), val=("a", "b"), test=2) -> Path:
    ds = tmp_path / "root" / "ds"
    for split, classes in (("train", train), ("val", val)):
        for k, c in enumerate(classes):
            _image(ds / split / c / "0.png", k)
    for i in range(test):
        _image(ds / "test" / f"{i}.png", i)
    return tmp_path / "root"


# ------------------------------------------------------------------ aug.* numbers that are not finite


@pytest.mark.parametrize("word, slot", [("aug.jitter=[0.4,.nan,0.4,0.1]", "contrast (item 2 of 4) is .nan"),
                                        ("aug.jitter=[.inf,0.4,0.4,0.1]", "brightness (item 1 of 4) is .inf"),
                                        ("aug.jitter=[0.4,0.4,.nan,0.1]", "saturation (item 3 of 4) is .nan"),
                                        ("aug.scale=[0.2,.nan]", "high (item 2 of 2) is .nan"),
                                        ("aug.scale=[-.inf,1.0]", "low (item 1 of 2) is -.inf")])
def test_non_finite_aug_lists_are_refused_naming_the_slot(word, slot):
    """A NaN not first passed min() (contrast jitter silently off, `.nan` in config.yaml); an infinite brightness
    passed every check and stopped the run at its first step as a NaN loss."""
    with pytest.raises(UserError, match=r"aug\.(jitter|scale) must hold finite numbers") as err:
        resolve(overrides=[word])
    assert slot in str(err.value)
    assert resolve(overrides=["aug.jitter=[0.4,0,0.4,0.1]"])["aug"]["jitter"] == [0.4, 0, 0.4, 0.1]  # 0: off


def test_non_finite_jitter_stops_pretrain_before_any_work(tmp_path):
    """The CLI exits 2 with the slot named, before a run folder is written."""
    root = _root(tmp_path)
    rc, _, err = run_main("pretrain", "--data", root, "--out", tmp_path / "r", "--model", "test_resnet",
                          "--img-size", "32", "--epochs", "1", "--device", "cpu", "--no-progress",
                          "aug.jitter=[0.4,.nan,0.4,0.1]")
    assert rc == 2 and "its contrast (item 2 of 4) is .nan" in err, err
    assert not (tmp_path / "r" / "config.yaml").exists()


@pytest.mark.parametrize("field, value", [("jitter", (0.4, math.nan, 0.4, 0.1)), ("jitter", (math.inf, 0, 0, 0)),
                                          ("scale", (0.2, math.inf)), ("ratio", (0.75, math.inf)),
                                          ("blur_sigma", (0.1, math.inf)), ("blur_sigma", (math.nan, 2.0)),
                                          ("std", (0.2, math.nan, 0.2)), ("mean", (0.4, 0.4, math.nan)),
                                          ("gray_p", math.nan)])
def test_augment_config_refuses_non_finite_values(field, value):
    """AugmentConfig (the Python API, and semi's own augmentations) let the same NaN and inf through."""
    with pytest.raises(ValueError, match=f"{field} must be finite numbers"):
        AugmentConfig(out_size=32, **{field: value})


# ------------------------------------------------------------------ --out a folder of the data


@pytest.mark.parametrize("cmd, where, what", [("predict", "ds/test", "the test/ split of ds"),
                                              ("eval", "ds/val", "the val/ split of ds"),
                                              ("predict", "ds/train/a", "the train/ split of ds"),
                                              ("predict", "unlabeled", "the unlabeled pool")])
def test_folder_out_in_the_data_suggests_a_file_outside_it(tmp_path, cmd, where, what):
    """`predict --out ROOT/ds/test` hinted ROOT/ds/test/pred_all.json, which was then refused as data."""
    root = _root(tmp_path)
    _image(root / "unlabeled" / "0.png")
    rc, _, err = run_main(cmd, tmp_path / "no_run", "--data", root, "--out", root / where, "--device", "cpu")
    assert rc == 2 and f"is a folder of the data ({what})" in err, err
    example = "pred_all.json" if cmd == "predict" else "metrics.json"
    assert f"e.g. {root / example}." in err and f"{root / where}/" not in err, err
    # and the suggested file is one the data check lets through
    from fewshot.data.output_guard import check_result_file_is_not_an_input

    check_result_file_is_not_an_input(root / example, root, tmp_path / "no_run", kind="predictions")


def test_folder_out_outside_the_data_keeps_the_plain_hint(tmp_path):
    root = _root(tmp_path)
    rc, _, err = run_main("predict", tmp_path / "no_run", "--data", root, "--out", root / "ds", "--device", "cpu")
    assert rc == 2 and f"is a folder; give a file name in it, e.g. {root / 'ds' / 'pred_all.json'}" in err, err


# ------------------------------------------------------------------ layout messages


def test_split_folders_with_capitals_are_named_with_the_rename(tmp_path):
    root = _root(tmp_path)
    (root / "ds" / "train").rename(root / "ds" / "Train")
    (root / "ds" / "val").rename(root / "ds" / "VAL")
    with pytest.raises(DataLayoutError) as err:
        scan_root(root)
    text = str(err.value)
    assert "missing split folder 'train'" in text and "found 'Train' instead" in text, text
    assert f"mv {root / 'ds' / 'Train'} {root / 'ds' / 'train'}" in text, text
    assert "found 'VAL' instead" in text, text


def test_long_class_lists_say_how_many_more_and_quote_spaced_names(tmp_path):
    """"val classes not in train" listed 10 of 12 without a word, and a class "3 " read as "3"."""
    root = _root(tmp_path, val=("a", "b", "3 ", *(f"extra{i:02d}" for i in range(11))))
    with pytest.raises(DataLayoutError) as err:
        scan_root(root)
    text = str(err.value)
    assert "val classes not in train: '3 ', extra00," in text and "extra08 and 2 more" in text, text


def test_a_test_split_of_non_images_lists_them_all_or_says_how_many_more(tmp_path):
    root = _root(tmp_path, test=0)
    (root / "ds" / "test").mkdir()
    for i in range(7):
        (root / "ds" / "test" / f"notes{i}.txt").write_text("x")
    with pytest.raises(DataLayoutError) as err:
        scan_root(root, splits=("test",))
    assert "notes4.txt and 2 more)" in str(err.value), str(err.value)


def test_sub_folder_lists_say_how_many_more(tmp_path):
    root = _root(tmp_path)
    cls = root / "ds" / "train" / "a"
    shutil.rmtree(cls)
    for name in ("s1", "s2", "s3", "s4", "s5"):
        _image(cls / name / "0.png")
    with pytest.raises(DataLayoutError) as err:
        scan_root(root)
    assert "only in sub-folders (s1, s2, s3 and 2 more)" in str(err.value), str(err.value)


# ------------------------------------------------------------------ plain blur under a caller's bf16 autocast


@pytest.mark.parametrize("blur_p", [0.5, 1.0])
def test_plain_blur_under_bf16_autocast_keeps_float32(blur_p):
    """set_fast_path(False) + autocast: the grouped conv2d gave bf16, which index_copy_ into the float32 batch
    refused ("Float and BFloat16"); with every sample blurred the output silently became bf16."""
    aug = BatchAugment(AugmentConfig(out_size=32, jitter_p=0.0, gray_p=0.0, blur_p=blur_p, mean=(0.0, 0.0, 0.0),
                                     std=(1.0, 1.0, 1.0)))
    x = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    params = aug.sample_params(8, torch.Generator().manual_seed(1), (32, 32))
    assert 0 < int(params["blur"].sum()) <= 8
    old = augment.set_fast_path(False)
    try:
        want = aug.apply(x, params)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = aug.apply(x, params)
    finally:
        augment.set_fast_path(old)
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < 0.05  # bf16 rounding (the plain crop grid and blur run in bf16 there)
