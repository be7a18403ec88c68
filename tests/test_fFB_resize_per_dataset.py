"""data.resize=auto decided once per dataset and recorded (review rev87): decided per image, a dataset mixing 4:3
and 3:1 photos got two geometries (some letterboxed, a smaller object), and a prediction re-decided from whatever
the folder held then. Also the letterbox's offset (#4), the size choice's side (#5), EXIF in the headers (#7) and
a run from before the field predicting cropped (#3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.config import resolve
from fewshot.data.cache import cache_key, is_cached
from fewshot.data.decode import decode_resized
from fewshot.data.fit import Fit, fit_of
from fewshot.data.layout import scan_root
from fewshot.eval.model_data import prediction_cache_dir
from fewshot.run_checks import images_size
from helpers.checks import run_main
from helpers.tiny import build_digits, tiny_train_argv
from test_fEQ_resize import tall_root


def _reshape(root: Path, shape_of) -> Path:
    """Each image of the tiny digits root redrawn at ``shape_of(i)`` times its size (w, h factors), in sorted order."""
    for i, png in enumerate(sorted((root / "digits").rglob("*.png"))):
        img = Image.open(png).convert("RGB")
        fw, fh = shape_of(i)
        big = Image.new("RGB", (int(fw * img.width), int(fh * img.height)))
        big.paste(img, (0, 0))
        big.save(png)
    return root


def _paths(root: Path, split: str) -> list:
    info = scan_root(root, None, splits=(split,))[0]
    return [p for _, p in info.test] if split == "test" else [p for p, _ in getattr(info, split)]


def test_a_dataset_mostly_near_square_is_cropped_whole_under_auto(tmp_path):
    """A third of its images 3:1, the rest 4:3: every image cropped (one geometry), from crop's own cache entry."""
    root = _reshape(build_digits(tmp_path / "root", shots=2),
                    lambda i: (1, 3) if i % 3 == 0 else (1, 4 / 3))
    run = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(root, run))
    assert rc == 0, err
    cache = root / ".fewshot_cache"
    train = _paths(root, "train")
    assert is_cached(train, 16, cache, resize="crop")  # the 3:1 ones were not letterboxed apart
    assert not is_cached(train, 16, cache, resize="auto") and not is_cached(train, 16, cache, resize="pad")
    assert "px is typical)" not in err, err  # its median image is near square: no note of that
    assert "7 of the 20 images sampled are far from square" in err, err  # but a third cropped is said (hBT #1)
    assert "_resize:\n  digits: crop" in (run / "config.yaml").read_text()


def test_predict_repeats_the_recorded_choice_after_the_folder_changed(tmp_path):
    root = tall_root(tmp_path / "root")  # 3:1: padded
    run = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(root, run))
    assert rc == 0, err
    _reshape(root, lambda i: (1, 1 / 3))  # now every image square: decided afresh, they would be cropped
    rc, _, err = run_main("predict", run, "--data", root, "--out", tmp_path / "pred_all.json", "--device", "cpu")
    assert rc == 0, err
    test = _paths(root, "test")
    assert is_cached(test, 16, prediction_cache_dir(root), resize="pad")
    assert not is_cached(test, 16, prediction_cache_dir(root), resize="crop")


def test_predict_on_a_run_from_before_the_field_crops(tmp_path):
    """The reviewer's (rev87 #3): predict's fallback for a checkpoint without data.resize is crop, not auto."""
    root = tall_root(tmp_path / "root")
    run = tmp_path / "old"
    rc, _, err = run_main(*tiny_train_argv(root, run, "data.resize=crop"))
    assert rc == 0, err
    for pt in (run / "checkpoints").glob("*.pt"):  # as a checkpoint written before data.resize existed
        ck = torch.load(pt, weights_only=False)
        del ck["config"]["data"]["resize"]
        ck["config"].pop("_resize", None)
        torch.save(ck, pt)
    rc, _, err = run_main("predict", run, "--data", root, "--out", tmp_path / "pred_all.json", "--device", "cpu")
    assert rc == 0, err
    test = _paths(root, "test")
    cache = prediction_cache_dir(root)
    assert is_cached(test, 16, cache, resize="crop")
    assert not is_cached(test, 16, cache, resize="auto") and not is_cached(test, 16, cache, resize="pad")


def test_datasets_decided_apart_key_and_decode_each_its_own_way(tmp_path):
    cfg = resolve()
    cfg["data"]["root"] = str(tmp_path)
    cfg["_resize"] = {"square": "crop", "tall": "pad"}
    fit = fit_of(cfg)
    assert isinstance(fit, Fit)
    assert fit.of(tmp_path / "square" / "train" / "a" / "x.png") == "crop"
    assert fit.of(tmp_path / "unlabeled" / "tall" / "x.png") == "pad"
    tall = tmp_path / "tall" / "train" / "a" / "x.png"
    tall.parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 20, 3), dtype=np.uint8)).save(tall)
    assert np.array_equal(decode_resized(tall, 16, resize=fit), decode_resized(tall, 16, resize="pad"))
    both = [tmp_path / "square" / "train" / "a" / "x.png", tall]
    keys = {cache_key(both, 16, 1.0, "auto", r) for r in ("crop", "pad", fit)}
    assert len(keys) == 3
    cfg["_resize"] = {"square": "crop", "photo": "crop"}
    assert fit_of(cfg) == "crop"  # all alike: crop's own key, so old entries serve it
    cfg["data"]["resize"] = "pad"
    assert fit_of(cfg) == "pad"


def test_sixteen_by_nine_is_cropped_under_auto(tmp_path):
    """The threshold is 2:1 (rev87 #2): padding gained at 2.5:1 and was mixed at 1.5:1; 16:9 is left as it was."""
    root = _reshape(build_digits(tmp_path / "root", shots=2), lambda i: (16 / 9, 1))
    cfg = resolve()
    cfg["data"]["root"] = str(root)
    assert fit_of(cfg, scan_root(root, None)) == "crop"


@pytest.mark.parametrize("size", [16, 32, 64])
def test_a_square_image_pads_to_the_crops_pixels(tmp_path, size):
    """round(size/0.875)-size is odd at 32 (37) and 64 (73): the letterbox sat one pixel off the crop (rev87 #4)."""
    p = tmp_path / "sq.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(p)
    assert np.array_equal(decode_resized(p, size, 0.875, resize="pad"), decode_resized(p, size, 0.875))


def test_the_size_choice_reads_the_long_side_of_padded_images(tmp_path):
    """40x100 images letterboxed at 32 px show their content at 13x32 px: their long side chooses the size."""
    root = build_digits(tmp_path / "root", shots=2)
    for png in (root / "digits" / "train").rglob("*.png"):
        Image.open(png).convert("RGB").resize((40, 100)).save(png)
    infos = scan_root(root, None)
    cpu = torch.device("cpu")
    assert images_size(infos, cpu, 10.0, "crop")[0] == 32
    assert images_size(infos, cpu, 10.0, "pad")[0] == 64


def test_headers_count_the_exif_orientation(tmp_path):
    """A phone photo stored 100x40 with "rotate 90" is decoded 40x100: the note said columns where rows went."""
    from fewshot.data.aspect import header_sizes  # here: the file collects against a tree without it

    p = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (100, 40)).save(p, exif=exif)
    assert header_sizes([p]) == [(40, 100)]
    assert decode_resized(p, 16, resize="crop").shape == (3, 16, 16)
