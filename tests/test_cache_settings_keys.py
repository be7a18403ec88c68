"""The decode cache keys every setting that changes pixels, by value, and a bad file under two spellings.

- data.bit_depth=16 was keyed as auto, but a 32-bit `I` image whose values all lie under 256 decodes from 255 under
  auto and from 65535 under 16: whichever ran first chose the cached pixels for both;
- data.crop_pct=1 (an int from the override parser) and 1.0 wrote two entries of the same pixels;
- a float (`F`) image of a split with a given depth ignored it when its values all lay under 256 (4x brighter than
  the rest of a 10-bit split);
- 32-bit images with values over 65535 were called "16-bit images" and advised data.bit_depth=auto, which clips
  them the same (and warned nothing);
- a bad file listed as a/bad.png and a/../a/bad.png was skipped under both spellings, then valid (a black image)
  under one of them once the cache answered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fewshot.data.cache_words as cache_words
import fewshot.data.skipped as skipped
from fewshot.data.cache import cache_key, load_images
from fewshot.data.decode import to_rgb_uint8


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(cache_words, "_WARNED", set())
    monkeypatch.setattr(skipped, "_REPORTED", set())


def save_i32(path: Path, values: np.ndarray) -> Path:
    """A 32-bit integer TIFF (Pillow mode I) holding ``values``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.int32), mode="I").save(path)
    return path


@pytest.mark.parametrize("first", ["auto", 16])
def test_bit_depth_16_and_auto_decode_a_dark_32_bit_image_apart_whichever_runs_first(tmp_path, first):
    path = save_i32(tmp_path / "imgs" / "x.tif", np.arange(1024).reshape(32, 32) % 200 + 20)  # 20..219
    fresh = {depth: int(load_images([path], 32, None, bit_depth=depth).images.max()) for depth in ("auto", 16)}
    assert fresh == {"auto": 219, 16: 1}
    second = "auto" if first == 16 else 16
    for depth in (first, second, first, second):  # new entries, then cache hits
        got = load_images([path], 32, tmp_path / "cache", bit_depth=depth)
        assert int(got.images.max()) == fresh[depth], depth
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 2


def test_numbers_in_the_key_are_keyed_by_value(tmp_path):
    paths = [save_i32(tmp_path / "imgs" / "a.tif", np.full((8, 8), 100))]
    assert cache_key(paths, 8, 1, "auto") == cache_key(paths, 8, 1.0, "auto")
    assert cache_key(paths, 8, 1, 12) == cache_key(paths, 8, 1.0, "12")
    assert cache_key(paths, np.int64(8), 0.875) == cache_key(paths, 8, 0.875)
    assert cache_key(paths, 8, 0.875) != cache_key(paths, 8, 1.0)
    load_images(paths, 8, tmp_path / "cache", crop_pct=1.0)
    load_images(paths, 8, tmp_path / "cache", crop_pct=1)  # data.crop_pct=1 typed: the same entry
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1


def test_a_given_depth_scales_dark_float_images_as_the_bright_ones(tmp_path):
    dark = np.full((4, 4), 200, dtype=np.float32)
    bright = dark.copy()
    bright[0, 0] = 1000  # the same value 200 beside a brighter pixel: scaled from 1023
    pixel = {name: int(np.asarray(to_rgb_uint8(Image.fromarray(v, mode="F"), 10))[1, 1, 0])
             for name, v in (("dark", dark), ("bright", bright))}
    assert pixel == {"dark": round(200 / 1023 * 255), "bright": round(200 / 1023 * 255)}
    # auto: an image of values 0..255, as before; float images in [0, 1] stay unit-range under a depth too
    assert np.asarray(to_rgb_uint8(Image.fromarray(dark, mode="F"), "auto"))[1, 1, 0] == 200
    unit = np.full((4, 4), 0.5, dtype=np.float32)
    assert np.asarray(to_rgb_uint8(Image.fromarray(unit, mode="F"), 10))[1, 1, 0] == 128


@pytest.mark.parametrize("depth", ["auto", 16, 12])
def test_32_bit_values_over_65535_are_said_to_clip_whatever_the_depth(tmp_path, capsys, depth):
    values = np.full((32, 32), 1000)
    values.flat[:369] = 102300
    folder = tmp_path / "ds" / "train" / "cells"
    path = save_i32(folder / "x.tif", values)
    got = load_images([path], 32, tmp_path / "cache", desc="loading train images", bit_depth=depth)
    assert int((got.images[0, 0] == 255).sum()) == 369  # clipped, whatever the setting
    err = capsys.readouterr().err
    assert err.count("warning") == 1, err
    assert "32-bit images" in err and str(folder) in err and "102300" in err and "clipped" in err, err
    assert "16-bit images in" not in err and "data.bit_depth=auto" not in err, err
    assert "save them as 16-bit images" in err, err
    cache_words._WARNED.clear()  # a cache hit says it again
    load_images([path], 32, tmp_path / "cache", desc="loading train images", bit_depth=depth)
    assert "32-bit images" in capsys.readouterr().err


def test_a_bad_file_under_two_spellings_is_bad_under_both_on_a_cache_hit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = Path("dup/a")
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (90, 90, 90)).save(folder / "ok.png")
    (folder / "bad.png").write_bytes(b"x")
    paths = [folder / "ok.png", folder / "bad.png", Path("dup/a/../a/bad.png")]
    first = load_images(paths, 8, Path("dup/c"), skip_bad=True)
    again = load_images(paths, 8, Path("dup/c"), skip_bad=True)
    assert first.valid.tolist() == again.valid.tolist() == [True, False, False]
    assert sorted(p for p, _ in first.bad) == sorted(p for p, _ in again.bad) == sorted(map(str, paths[1:]))
    # a caller spelling the root otherwise still finds both copies bad
    other = load_images([p.resolve() for p in paths[:2]] + [tmp_path / paths[2]], 8, Path("dup/c"), skip_bad=True)
    assert other.valid.tolist() == [True, False, False]
