"""data.bit_depth: 10-, 12- or 14-bit data stored in 16-bit PNG/TIFF (microscopy, medical, astronomy).

Scaled from the container's 0..65535, a 12-bit image (values up to 4095) came out as 0..16 of 255: dark, in 17
grey levels. data.bit_depth=12 scales it from 0..4095; auto keeps the 16-bit scale (and the cache entries already
written) and warns once per split, naming the folder and the setting to give, when the values use fewer bits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fewshot.data.cache_words as cache_words
import fewshot.data.decode as decode
from fewshot.config import resolve
from fewshot.data.cache import cache_key, load_images
from fewshot.data.decode import decode_resized
from fewshot.errors import UserError
from helpers.checks import run_main
from helpers.tiny import build_digits


def save_16bit(path: Path, values: np.ndarray) -> Path:
    """A 16-bit grayscale PNG (Pillow mode I;16) holding ``values``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(values.astype(np.uint16))
    assert img.mode == "I;16"
    img.save(path)
    return path


def ramps_12bit(folder: Path, n: int = 3) -> list[Path]:
    """``n`` 16x16 12-bit ramps (0..4095) in ``folder``."""
    ramp = np.linspace(0, 4095, 16 * 16).round().reshape(16, 16)
    return [save_16bit(folder / f"{i}.png", np.roll(ramp, i, axis=1)) for i in range(n)]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(cache_words, "_WARNED", set())  # each test sees its own warnings, not an earlier test's


def test_a_12_bit_image_fills_the_8_bit_range_with_bit_depth_12(tmp_path):
    path = ramps_12bit(tmp_path)[0]
    assert Image.open(path).mode == "I;16"
    dark = decode_resized(path, 16)  # auto: the container's 16 bits, as before
    full = decode_resized(path, 16, 1.0, 12)
    assert dark.max() <= 16 and len(np.unique(dark)) <= 17
    assert full.min() == 0 and full.max() == 255 and len(np.unique(full)) > 200
    # values above 2**bit_depth - 1 are clipped, not wrapped
    over = save_16bit(tmp_path / "over.png", np.full((8, 8), 65535))
    assert decode_resized(over, 8, 1.0, 12).min() == 255
    # 8-bit images are unaffected by the setting
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(gray)
    assert np.array_equal(decode_resized(gray, 8, 1.0, 12), decode_resized(gray, 8))


def test_auto_warns_once_per_split_naming_the_folder_and_the_setting(tmp_path, capsys):
    folder = tmp_path / "ds" / "train" / "cells"
    paths = ramps_12bit(folder)
    got = load_images(paths, 16, tmp_path / "cache", desc="loading train images")
    err = capsys.readouterr().err
    assert err.count("warning") == 1, err
    assert "data.bit_depth=12" in err and str(folder) in err and "4095" in err
    assert int(got.images.max()) <= 16  # auto changed nothing
    # a second load maps the cache entry (nothing decoded) and still knows what the images hold
    cache_words._WARNED.clear()
    load_images(paths, 16, tmp_path / "cache", desc="loading train images")
    assert "data.bit_depth=12" in capsys.readouterr().err
    # the same split again in this process: no second warning
    load_images(paths, 16, tmp_path / "cache", desc="loading train images")
    assert "warning" not in capsys.readouterr().err


def test_no_warning_for_full_16_bit_data_8_bit_images_or_a_given_bit_depth(tmp_path, capsys):
    full = [save_16bit(tmp_path / "full" / "a.png", np.linspace(0, 65535, 64).reshape(8, 8))]
    eight = tmp_path / "eight" / "a.png"
    eight.parent.mkdir()
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(eight)
    load_images(full, 8, tmp_path / "cache")
    load_images([eight], 8, tmp_path / "cache")
    got = load_images(ramps_12bit(tmp_path / "twelve"), 8, tmp_path / "cache", bit_depth=12)
    assert "warning" not in capsys.readouterr().err
    assert int(got.images.max()) > 200  # resized 16 -> 8 px: averaged
    # a bit_depth too small for the data: the clipping is said, with the setting that fits
    load_images(full, 8, tmp_path / "cache", bit_depth=12)
    err = capsys.readouterr().err
    assert "clipped" in err and "data.bit_depth=16" in err


def test_the_cache_key_follows_the_setting_and_auto_keeps_existing_entries(tmp_path):
    paths = ramps_12bit(tmp_path / "imgs")
    keys = {bits: cache_key(paths, 16, 1.0, bits) for bits in ("auto", 12, 14)}
    assert len(set(keys.values())) == 3
    assert keys["auto"] == cache_key(paths, 16, 1.0)  # the key written before data.bit_depth existed
    # a changed setting decodes again rather than serving the other setting's pixels
    assert int(load_images(paths, 16, tmp_path / "cache").images.max()) <= 16
    assert int(load_images(paths, 16, tmp_path / "cache", bit_depth=12).images.max()) == 255
    assert int(load_images(paths, 16, tmp_path / "cache").images.max()) <= 16


@pytest.mark.parametrize("value", ["20", "7", "abc", "true", "12.5"])
def test_a_bad_bit_depth_is_a_user_error(value, tmp_path):
    with pytest.raises(UserError, match="data.bit_depth must be auto or a whole number from 8 to 16 .*not"):
        resolve(overrides=[f"data.bit_depth={value}"])
    rc, _, err = run_main("train", "--data", tmp_path, "--out", tmp_path / "run", f"data.bit_depth={value}")
    assert rc == 2 and "data.bit_depth must be auto or a whole number from 8 to 16" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value, expected", [("12", 12), ("16", 16), ("auto", "auto"), ("AUTO", "auto")])
def test_good_bit_depths_are_read(value, expected):
    assert resolve(overrides=[f"data.bit_depth={value}"])["data"]["bit_depth"] == expected


def test_train_on_12_bit_data_with_bit_depth_12(tmp_path):
    root = build_digits(tmp_path / "root", shots=2)
    for png in (root / "digits").rglob("*.png"):  # the same digits as 12-bit data in 16-bit files
        values = np.asarray(Image.open(png).convert("L"), dtype=np.float64) / 255.0 * 4095.0
        save_16bit(png, values.round())
    shutil.rmtree(root / "unlabeled")
    run = tmp_path / "run"
    rc, _, err = run_main("train", "--data", root, "--out", run, "--model", "test_resnet", "--img-size", "32",
                          "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
                          "train.tensorboard=false", "train.threads=1", "data.bit_depth=12")
    assert rc == 0, err
    assert "data.bit_depth=" not in err  # no warning: the setting fits the data
    assert "bit_depth: 12" in (run / "config.yaml").read_text()
    # predict decodes the test split with the run's setting (it reads the run's config.yaml)
    rc, _, err = run_main("predict", run, "--data", root, "--out", tmp_path / "pred_all.json", "--device", "cpu")
    assert rc == 0, err
    entries = list((root / ".fewshot_cache").glob("*.u8"))
    assert len(entries) == 3  # train, val and test
    assert all(np.fromfile(u8, dtype=np.uint8).max() > 200 for u8 in entries)  # bright, not 0..16
    metas = [json.loads(u8.with_suffix(".json").read_text()) for u8 in entries]
    assert all(0 < m["bits16"]["peak"] <= 4095 for m in metas)


def test_review_16_keys_as_auto_a_dark_i_mode_image_follows_the_depth_and_the_advice_rounds_up(tmp_path, capsys,
                                                                                               monkeypatch):
    """A review: data.bit_depth=16 decoded and cached the same pixels a second time; a 32-bit `I` image whose values
    all lay under 256 ignored a given depth (16x brighter than the rest of its 12-bit split); a split peaking at 2047
    was advised data.bit_depth=11, which would clip the other splits of 12-bit data."""
    paths = ramps_12bit(tmp_path / "a")
    # 16 keyed as auto no longer: the dark `I` image below decodes otherwise under each (test_cache_settings_keys)
    assert cache_key(paths, 16, 1.0, 16) != cache_key(paths, 16, 1.0, "auto")
    dark = Image.fromarray(np.full((4, 4), 200, dtype=np.int32), mode="I")
    assert np.asarray(decode.to_rgb_uint8(dark, 12))[0, 0, 0] == round(200 / 4095 * 255)
    assert np.asarray(decode.to_rgb_uint8(dark, "auto"))[0, 0, 0] == 200  # auto: an 8-bit image, as before
    monkeypatch.setattr(cache_words, "_WARNED", set())
    cache_words.warn_bit_depth("decoding val", {"peak": 2047, "folder": "ds/val"}, "auto")
    assert "data.bit_depth=12" in capsys.readouterr().err
