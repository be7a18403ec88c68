"""Image files a user's folders hold that fewshot passed over, or told badly (a hunt's findings):

- a train class whose every image --skip-bad-images skips is refused as an empty class folder is (train and run);
  a val class so emptied is said, as a class without val images is;
- transparency given by a PNG's tRNS colour (L, RGB, 16-bit) is composited as LA/RGBA/P transparency is;
- files that are not images by their extension in class folders and the pool are said once per split (system
  files aside), as test/ says them;
- a test id holding a control character is warned about; a broken image link is named as one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fewshot.data.cache as cache
from fewshot.data.cache import load_images
from fewshot.data.decode import decode_resized
from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import scan_root
from fewshot.data.pool_scan import find_unlabeled_images
from fewshot.data.sets import load_split
from fewshot.errors import DataLayoutError
from helpers.checks import run_main
from helpers.tiny import build_digits, copy_data_root, tiny_train_argv


@pytest.fixture(scope="module")
def base_root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("image-files"), shots=2)


@pytest.fixture
def root(base_root, tmp_path):
    """A private copy (no image cache) that the test may change."""
    return copy_data_root(base_root, tmp_path / "root")


def _spoil_class(folder: Path) -> int:
    """Every image of a class folder replaced by undecodable files (a zero-byte one, a text file); their count."""
    for p in folder.iterdir():
        p.unlink()
    (folder / "a.jpg").write_bytes(b"")
    (folder / "b.jpg").write_text("not an image\n")
    return 2


# ------------------------------------------------------------------------------ classes emptied by skipping


def test_train_refuses_a_class_whose_every_image_is_skipped(root, tmp_path):
    """It trained with no example of the class ("10 classes, 18 train", exit 0), and scored its val images as sure
    mistakes: refused, as an empty class folder is, naming the dataset, the class and the files skipped."""
    count = _spoil_class(root / "digits" / "train" / "3")
    run = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(root, run, "--skip-bad-images"))
    assert rc == 2 and "Traceback" not in err, err
    assert (f"{root / 'digits' / 'train' / '3'}: no decodable image is left in class '3' of the dataset 'digits': "
            f"--skip-bad-images skipped all {count} of its file(s)") in err, err
    assert not (run / "checkpoints").exists()


def test_run_refuses_a_class_whose_every_image_is_skipped(root, tmp_path):
    _spoil_class(root / "digits" / "train" / "3")
    rc, _, err = run_main("run", "--data", root, "--out", tmp_path / "run", "--budget-minutes", "0.2", "--model",
                          "test_resnet", "--img-size", "16", "--device", "cpu", "--no-progress", "--skip-bad-images",
                          "run.report=false")
    assert rc == 2 and "no decodable image is left in class '3' of the dataset 'digits'" in err, err
    assert "Traceback" not in err


def test_a_val_class_whose_every_image_is_skipped_is_said_and_the_split_loads(root, tmp_path, capsys):
    for p in (root / "digits" / "val" / "4").iterdir():
        p.write_bytes(b"")
    infos = scan_root(root, ["digits"])
    space = LabelSpace.from_infos(infos)
    val = load_split(infos, "val", space, 8, tmp_path / "c", skip_bad=True)
    assert len(val) == 27 and 4 not in val.targets.tolist()
    err = capsys.readouterr().err
    assert "skipped all 3 val image(s) of class '4' of the dataset 'digits', so val scores no image" in err


def test_a_partly_skipped_class_still_trains(root, tmp_path):
    """Only a class left with nothing is refused: one bad file of several is skipped as before."""
    (root / "digits" / "train" / "3" / "bad.png").write_bytes(b"")
    infos = scan_root(root, ["digits"])
    train = load_split(infos, "train", LabelSpace.from_infos(infos), 8, None, skip_bad=True)
    assert len(train) == 20 and len(train.skipped) == 1


# ------------------------------------------------------------------------------ transparency by a tRNS colour


def _sheet(mode: str) -> tuple[Image.Image, dict]:
    """Dark ink (40) on a colour (0) that the file's tRNS chunk makes transparent."""
    arr = np.zeros((8, 8), dtype=np.uint8)
    arr[2:6, 2:6] = 40
    if mode == "L":
        return Image.fromarray(arr, mode="L"), {"transparency": 0}
    if mode == "RGB":
        return Image.fromarray(np.stack([arr] * 3, axis=-1), mode="RGB"), {"transparency": (0, 0, 0)}
    if mode == "P":
        return Image.fromarray(arr, mode="L").convert("P"), {"transparency": 0}
    return Image.fromarray(arr.astype(np.uint16) * 257), {"transparency": 0}  # I;16: 40 * 257 of 65535


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "I;16"])
def test_a_transparent_colour_is_composited_as_an_alpha_channel_is(tmp_path, mode):
    """Dark ink on a sheet made transparent by tRNS decoded black on black in L and RGB (a blank image), while the
    same drawing as P or LA was laid on white."""
    img, kw = _sheet(mode)
    img.save(tmp_path / "sheet.png", **kw)
    with Image.open(tmp_path / "sheet.png") as check:
        assert check.mode == mode and "transparency" in check.info
    out = decode_resized(tmp_path / "sheet.png", 8)
    assert out[:, 0, 0].tolist() == [255] * 3, out[0]  # the transparent sheet: white under dark ink
    assert out[:, 4, 4].tolist() == [40] * 3, out[0]  # the ink as it is


def test_an_opaque_l_image_without_transparency_is_unchanged(tmp_path):
    img, _ = _sheet("L")
    img.save(tmp_path / "plain.png")
    out = decode_resized(tmp_path / "plain.png", 8)
    assert out[:, 0, 0].tolist() == [0] * 3 and out[:, 4, 4].tolist() == [40] * 3


def test_the_cache_key_changed_with_the_decoding(tmp_path, monkeypatch):
    """Entries decoded before the tRNS colour was applied hold the black sheet: the version in the key rebuilds."""
    img, kw = _sheet("L")
    img.save(tmp_path / "sheet.png", **kw)
    key = cache.cache_key([tmp_path / "sheet.png"], 8, 1.0)
    monkeypatch.setattr(cache, "CACHE_VERSION", 4)
    assert cache.cache_key([tmp_path / "sheet.png"], 8, 1.0) != key


# ------------------------------------------------------------------------------ files that are not read


def _add_unread(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).write_bytes(b"x")


SYSTEM = [".DS_Store", "Thumbs.db", "desktop.ini", ".hidden.heic"]


def test_class_folder_files_that_are_not_images_are_said_once_per_split(root, capsys):
    train, val = root / "digits" / "train", root / "digits" / "val"
    _add_unread(train / "0", ["IMG_001.HEIC", "x.avif", "noext"] + SYSTEM)
    _add_unread(train / "1", ["y.avif", "z.avif"])
    _add_unread(val / "2", ["a.heic"] + SYSTEM)
    infos = scan_root(root, ["digits"])
    assert len(infos[0].train) == 20  # still passed over
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "does not read" in line or "are not images" in line]
    assert len(lines) == 2, err  # one a split, not one a file
    assert lines[0].startswith(f"warning: {train}: 4 image file(s) in its class folders are in a format fewshot "
                               f"does not read") and "'0/IMG_001.HEIC', '0/x.avif', '1/y.avif' and 1 more" in lines[0]
    assert "; 1 file(s) in its class folders are not images by their extension and are left out (e.g. '0/noext')" \
        in lines[0], lines
    assert lines[1].startswith(f"warning: {val}: 1 image file(s)") and "'2/a.heic'" in lines[1], lines
    for name in SYSTEM:
        assert name not in err


def test_text_and_metadata_files_are_left_out_without_advice_to_convert_them(root, capsys):
    """A README.md, notes.txt or labels.csv in a class folder was told to be converted to an image format."""
    _add_unread(root / "digits" / "train" / "0", ["README.md", "notes.txt", "labels.csv", "meta.json"])
    scan_root(root, ["digits"])
    lines = [line for line in capsys.readouterr().err.splitlines() if "class folders" in line]
    assert len(lines) == 1, lines
    assert "4 file(s) in its class folders are not images by their extension and are left out" in lines[0], lines
    assert "'0/README.md', '0/labels.csv', '0/meta.json' and 1 more" in lines[0], lines
    assert "convert" not in lines[0] and "image file(s)" not in lines[0], lines


def test_clean_class_folders_say_nothing(root, capsys):
    _add_unread(root / "digits" / "train" / "0", SYSTEM)
    scan_root(root, ["digits"])
    err = capsys.readouterr().err
    assert "not images by their extension" not in err and "does not read" not in err


def test_pool_files_that_are_not_images_are_said_once(root, capsys):
    pool = root / "unlabeled" / "digits"
    (pool / "sub").mkdir()
    _add_unread(pool, ["IMG_001.HEIC", "noext"] + SYSTEM)
    _add_unread(pool / "sub", ["x.avif"])
    found = find_unlabeled_images([pool])
    assert len(found) == 80
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if f"the unlabeled pool {pool}:" in line]
    assert len(lines) == 1 and f"the unlabeled pool {pool}: 2 image file(s) in it" in lines[0], err
    assert "(e.g. 'IMG_001.HEIC', 'sub/x.avif'); convert them" in lines[0], lines
    assert "1 file(s) in it are not images by their extension and are left out (e.g. 'noext')" in lines[0], lines
    for name in SYSTEM:
        assert name not in err


# ------------------------------------------------------------------------------ test ids and links


def test_a_test_id_with_a_control_character_is_warned_about(root, capsys):
    test = root / "digits" / "test"
    shutil.copy(next(test.iterdir()), test / "30\n0.png")
    infos = scan_root(root, ["digits"], splits=("test",))
    assert "30\n0" in [i for i, _ in infos[0].test]  # predicted under its id, as other odd names are
    err = capsys.readouterr().err
    assert "'30\\n0.png' (id '30\\n0': a control character in the id)" in err, err


def test_a_broken_image_link_is_named_as_a_link_with_its_target(tmp_path):
    dangling, loop = tmp_path / "dangling.png", tmp_path / "loop.png"
    dangling.symlink_to(tmp_path / "gone" / "x.png")
    loop.symlink_to("loop.png")
    with pytest.raises(DataLayoutError) as caught:
        load_images([dangling, loop], 8, None)
    problems = caught.value.problems
    assert problems[0] == (f"{dangling}: cannot be decoded as an image (a symbolic link to "
                           f"{tmp_path / 'gone' / 'x.png'}, which does not exist (a dangling link))"), problems
    assert problems[1] == f"{loop}: cannot be decoded as an image (a symbolic link (to loop.png) that goes round a " \
                          f"loop of links)", problems
