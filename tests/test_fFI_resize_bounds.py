"""data.resize=auto on mixed and extreme shapes (hunt hBT): the decision sampled a dataset's first two classes only
(#1), letterboxed a 50:1 strip into one row of content (#2), predict decoded a padded dataset by crop when its
folder had the other Unicode form (#3) and said nothing when the images given were shaped otherwise than the run's
(#5); a crop/pad tie for pool files of unknown source went to pad (#7)."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from fewshot.data.aspect import crop_notes, dataset_mode, header_sizes, sample_paths
from fewshot.data.fit import Fit, fit_of, settle_modes
from helpers.checks import run_main
from helpers.tiny import tiny_train_argv
from test_fEQ_resize import tall_root


@pytest.fixture
def image(tmp_path):
    def make(w: int, h: int) -> Path:
        path = tmp_path / "img" / f"{w}x{h}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (w, h)).save(path)
        return path
    return make


def _classes(image, shapes: list[tuple[int, int]], per_class: int = 10):
    """A dataset's train list sorted by class, as scan_root gives it: class c's images all of shapes[c]."""
    return tuple((image(*shape), c) for c, shape in enumerate(shapes) for _ in range(per_class))


def test_auto_samples_every_class_not_the_first_two(image):
    """hBT's classmix: classes 0-1 square, 2-9 wide 3:1. The first 20 files said crop, and 80 % were cropped."""
    info = SimpleNamespace(name="cm", train=_classes(image, [(32, 32)] * 2 + [(96, 32)] * 8))
    sampled = sample_paths(info)
    assert image(96, 32) in sampled and image(32, 32) in sampled
    assert dataset_mode(header_sizes(sampled), 32) == "pad"


def test_a_cropped_dataset_with_many_far_from_square_images_is_named(image):
    """hBT's mixed: half 96x32, half square; the median (low) is square: cropped, and now said."""
    info = SimpleNamespace(name="mixed", train=_classes(image, [(96, 32), (32, 32)] * 5))
    lines = crop_notes([info], "auto")
    assert len(lines) == 1 and lines[0].startswith("mixed: 16 of the 32 images sampled are far from square"), lines
    assert "dropping 67 % of its columns" in lines[0] and "data.resize=pad keeps them whole" in lines[0]
    few = SimpleNamespace(name="few", train=_classes(image, [(96, 32)] + [(32, 32)] * 9))
    assert crop_notes([few], "auto") == []  # a tenth: no note


def test_auto_does_not_letterbox_a_strip_into_one_row(image):
    """hBT's extreme: 1600x32 at 32 px kept 32x1 px of content; cropped, val acc@1 40.8 against 23.9 padded."""
    strips = [image(1600, 32)] * 5
    cfg = {"data": {"resize": "auto", "root": "."}, "model": {"img_size": 32}}
    info = SimpleNamespace(name="strip", train=tuple((p, 0) for p in strips))
    assert settle_modes(cfg, [info]) == {"strip": "crop"}
    assert dataset_mode(header_sizes(strips), 224) == "pad"  # 224x4 px kept: enough at that size
    assert dataset_mode(header_sizes([image(96, 32)]), 32) == "pad"  # 3:1: 32x11 px kept
    [line] = crop_notes([info], "auto", cfg["_resize"], img_size=32)
    assert "data.resize=auto crops" in line and "keep only 32x1 px" in line and "--img-size 200" in line, line
    [line] = crop_notes([info], "pad", img_size=32)
    assert "into 32x1 px of the 32 px square" in line and "data.resize=crop" in line, line


def test_the_padding_note_says_what_is_kept(image):
    info = SimpleNamespace(name="wide", train=((image(96, 32), 0),) * 3)
    [line] = crop_notes([info], "auto", {"wide": "pad"}, img_size=32)
    assert "scaled into 32x11 px of the 32 px square" in line and "whole, rather" not in line, line


def test_a_tie_between_crop_and_pad_crops_pool_files_of_unknown_source(tmp_path):
    cfg = {"data": {"resize": "auto", "root": str(tmp_path)}, "_resize": {"a": "pad", "b": "crop"}}
    fit = fit_of(cfg)
    assert isinstance(fit, Fit) and fit.other == "crop"
    assert fit.of(tmp_path / "a" / "x.png") == "pad" and fit.of(tmp_path / "unlabeled" / "loose.png") == "crop"


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_a_dataset_folder_in_the_other_unicode_form_keeps_its_choice(tmp_path, form):
    """The model's name composed, the folder under the root decomposed (or the other way round)."""
    name = unicodedata.normalize(form, "wïde")
    other = unicodedata.normalize("NFD" if form == "NFC" else "NFC", name)
    cfg = {"data": {"resize": "auto", "root": str(tmp_path)}, "_resize": {name: "pad", "a": "crop", "b": "crop"}}
    infos = [SimpleNamespace(name=name, root=tmp_path / other, test=())]
    fit = fit_of(cfg, infos, tmp_path)
    assert fit.of(tmp_path / other / "test" / "1.png") == "pad"
    assert fit.of(tmp_path / "unlabeled" / other / "u.png") == "pad"
    assert fit.of(tmp_path / "a" / "test" / "1.png") == "crop"


def test_predict_notes_square_images_given_to_a_padded_run(tmp_path):
    """hBT #5: tall trained padded (3:1), given square test images: acc@1 35 -> 13 without a word."""
    root = tall_root(tmp_path / "root")
    run = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(root, run))
    assert rc == 0, err
    for png in (root / "digits" / "test").glob("*.png"):
        Image.new("RGB", (8, 8)).save(png)
    rc, _, err = run_main("predict", run, "--data", root, "--out", tmp_path / "pred_all.json", "--device", "cpu")
    assert rc == 0, err
    assert "note: digits: these images are 8x8 px typically" in err and "another scale" in err, err
    rc, _, err = run_main("eval", run, "--data", root, "--split", "val", "--device", "cpu")
    assert rc == 0 and "these images are" not in err, err  # val is shaped as the training images: no note
