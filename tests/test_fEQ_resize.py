"""data.resize (hunt hBQ #1): non-square images were resized by their short side and centre-cropped to a square
without a word, so a 40x100 image lost 60 % of its rows (an object off-centre: nothing left to see). pad keeps the
whole image (letterbox), the cache keys it apart from crop, predict and eval decode as the run did, and `fewshot
run`/`train` say where a dataset's images are far from square and cropped."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fewshot.config import resolve
from fewshot.data.aspect import crop_notes
from fewshot.data.cache import cache_key, is_cached, load_images
from fewshot.data.decode import decode_resized
from fewshot.data.layout import scan_root
from fewshot.eval.model_data import prediction_cache_dir
from helpers.checks import run_main
from helpers.tiny import build_digits, tiny_train_argv


def off_centre(path: Path, w: int = 40, h: int = 100) -> Path:
    """A ``w`` x ``h`` black image with a white block in its top 20 rows only (hBQ's F/tall: the digit at the top)."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[6:24, 8:32] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_pad_keeps_an_off_centre_object_that_the_crop_drops(tmp_path):
    path = off_centre(tmp_path / "tall.png")
    crop, pad = decode_resized(path, 20, resize="crop"), decode_resized(path, 20, resize="pad")
    assert crop.shape == pad.shape == (3, 20, 20)
    assert crop.max() == 0  # the centre crop keeps rows 30-70: the block is gone
    assert pad.max() > 200  # letterboxed: 8x20 of content, the block in its top rows
    assert pad[:, :, :6].max() < 10 and pad[:, :, 14:].max() < 10  # the pad: the border's colour (near black)
    assert np.array_equal(decode_resized(path, 20, resize="auto"), pad)  # 2.5:1, far from square: padded
    mild = off_centre(tmp_path / "mild.png", 64, 96)  # 1.5:1 (tintfash, mix20): auto crops it
    assert np.array_equal(decode_resized(mild, 20, resize="auto"), decode_resized(mild, 20))


def test_pad_fills_with_the_border_colour(tmp_path):
    arr = np.full((10, 30, 3), 200, dtype=np.uint8)  # light grey background, a dark stroke in the middle
    arr[4:6, 10:20] = 0
    Image.fromarray(arr).save(tmp_path / "wide.png")
    pad = decode_resized(tmp_path / "wide.png", 15, resize="pad")
    assert (pad[:, 0, :] == 200).all() and (pad[:, -1, :] == 200).all()  # no black bars on a light image


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
def test_square_images_decode_as_before_and_each_setting_has_its_key(tmp_path, crop_pct):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(tmp_path / "sq.png")
    p = tmp_path / "sq.png"
    before = decode_resized(p, 16, crop_pct)
    assert np.array_equal(before, decode_resized(p, 16, crop_pct, resize="pad"))  # nothing to pad: the same pixels
    assert np.array_equal(before, decode_resized(p, 16, crop_pct, resize="auto"))
    keys = {fit: cache_key([p], 16, crop_pct, "auto", fit) for fit in ("crop", "pad", "auto")}
    assert len(set(keys.values())) == 3 and keys["crop"] == cache_key([p], 16, crop_pct)  # a direct call: crop
    assert resolve()["data"]["resize"] == "auto"


def test_the_cache_never_serves_a_crop_for_pad(tmp_path):
    paths = [off_centre(tmp_path / "img" / f"{i}.png") for i in range(2)]
    cache = tmp_path / "cache"
    crop = load_images(paths, 20, cache, resize="crop").images.clone()
    pad = load_images(paths, 20, cache, resize="pad").images  # the crop's entry is there: not taken
    assert int(crop.max()) == 0 and int(pad.max()) > 200
    assert is_cached(paths, 20, cache, resize="pad") and is_cached(paths, 20, cache, resize="crop")
    assert int(load_images(paths, 20, cache, resize="crop").images.max()) == 0  # and the crop's is not replaced


def test_the_note_names_far_from_square_datasets_only():
    def info(name, size):
        return SimpleNamespace(name=name, train=[(str(_image(size)), 0)] * 3)

    _image.folder.mkdir(parents=True, exist_ok=True)
    infos = [info("tall", (40, 100)), info("square", (28, 28)), info("photo", (64, 48)), info("wide", (100, 40))]
    lines = crop_notes(infos, "crop")
    assert len(lines) == 2, lines
    assert lines[0].startswith("tall:") and "40x100 px" in lines[0] and "60 % of its rows" in lines[0]
    assert lines[1].startswith("wide:") and "60 % of its columns" in lines[1] and "data.resize=auto" in lines[1]
    lines = crop_notes(infos, "auto")
    assert [line.split(":")[0] for line in lines] == ["tall", "wide"] and "letterboxes them" in lines[0]
    assert crop_notes(infos, "pad") == []


def _image(size: tuple[int, int]) -> Path:
    """An image of ``size`` (w, h) in _image.folder, written once."""
    path = _image.folder / f"{size[0]}x{size[1]}.png"
    if not path.exists():
        Image.new("RGB", size).save(path)
    return path


@pytest.fixture(autouse=True)
def _image_folder(tmp_path):
    _image.folder = tmp_path / "shapes"


def tall_root(root: Path) -> Path:
    """The tiny digits root with every image made 3x as tall, the digit in its top third."""
    build_digits(root, shots=2)
    for png in (root / "digits").rglob("*.png"):
        img = Image.open(png).convert("RGB")
        tall = Image.new("RGB", (img.width, 3 * img.height))
        tall.paste(img, (0, 0))
        tall.save(png)
    return root


def test_train_notes_the_crop_and_predict_decodes_as_the_run_did(tmp_path):
    root = tall_root(tmp_path / "root")
    rc, _, err = run_main(*tiny_train_argv(root, tmp_path / "crop", "data.resize=crop"))
    assert rc == 0, err
    assert "note: digits: its images are far from square" in err and "dropping 67 % of its rows" in err, err
    run = tmp_path / "auto"
    rc, _, err = run_main(*tiny_train_argv(root, run))  # the default: these 3:1 images are letterboxed
    assert rc == 0, err
    assert "data.resize=auto letterboxes them" in err, err
    assert "resize: auto" in (run / "config.yaml").read_text()
    rc, _, err = run_main("predict", run, "--data", root, "--out", tmp_path / "pred_all.json", "--device", "cpu")
    assert rc == 0, err
    test = [p for _, p in scan_root(root, None, splits=("test",))[0].test]
    cache = prediction_cache_dir(root)
    assert is_cached(test, 16, cache, resize="pad")  # decoded letterboxed, as the run's images were (auto decides
    # per dataset and keys the entry by its choice: test_fFB_resize_per_dataset)
    assert not is_cached(test, 16, cache, resize="crop")


def test_an_unknown_resize_is_refused(tmp_path):
    rc, _, err = run_main("train", "--data", tmp_path, "--out", tmp_path / "run", "data.resize=stretch")
    assert rc == 2 and "data.resize must be one of crop, pad, auto" in err, err


def test_a_run_from_before_the_field_resumes_cropping(tmp_path):
    """Its checkpoint learnt from cropped images: the new default (auto) would letterbox the rest of the run."""
    from fewshot.config import save_yaml
    from fewshot.train.resume_config import merge_resume_config

    old = resolve()
    del old["data"]["resize"]
    save_yaml(old, tmp_path / "config.yaml")
    assert merge_resume_config(tmp_path, resolve(), {})["data"]["resize"] == "crop"
