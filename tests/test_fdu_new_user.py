"""A new user's first mistakes (bug hunt hBF): a plain ImageFolder given as --data, images left directly in a
dataset folder, and `--out NEWDIR/` for a command that writes one file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers.checks import run_main

from fewshot.data.roots import list_datasets
from fewshot.errors import UserError
from fewshot.utils import check_output_file


def _image_folder(digits_root: Path, where: Path) -> Path:
    """DIR/<class>/<image>: the class folders of one split copied under a folder not named like a split."""
    where.mkdir(parents=True)
    for cls in sorted((digits_root / "digits" / "train").iterdir()):
        shutil.copytree(cls, where / cls.name)
    return where


def test_an_image_folder_root_is_told_its_folders_are_classes(digits_root, tmp_path):
    """Each class was read as a dataset: two "missing split folder" lines per class, never the layout to make."""
    photos = _image_folder(digits_root, tmp_path / "photos")
    rc, _, err = run_main("train", "--data", photos, "--out", tmp_path / "run", "--model", "test_resnet")
    assert rc == 2, err
    assert "missing split folder" not in err, err
    assert f"--data {photos} looks like a folder of classes" in err, err
    assert f"{photos}/<dataset>/train/" in err and f"{photos}/<dataset>/val/<class>/" in err, err
    assert "ROOT/<dataset>/train/<class>/<image>" in err and err.count("error:") == 1, err
    assert not (tmp_path / "run").exists()


def test_an_image_folder_root_for_predict_is_told_where_test_images_go(digits_root, tmp_path):
    """predict and eval read the same --data check, with the test/ layout added."""
    photos = _image_folder(digits_root, tmp_path / "photos")
    with pytest.raises(UserError, match="folder of classes.*<dataset>/test/"):
        list_datasets(photos, demo=False, tests=True)


def test_a_real_root_missing_a_split_keeps_its_precise_message(copy_root):
    """A multi-dataset root with one dataset lacking val/ is no folder of classes: its own problem is named."""
    shutil.rmtree(copy_root / "digits" / "val")
    (copy_root / "loose").mkdir()
    shutil.copy(next((copy_root / "digits" / "test").iterdir()), copy_root / "loose" / "a.png")
    rc, _, err = run_main("train", "--data", copy_root, "--out", copy_root.parent / "run", "--model", "test_resnet")
    assert rc == 2, err
    assert "folder of classes" not in err, err
    assert f"{copy_root / 'digits' / 'val'}: missing split folder 'val'" in err, err


def test_images_directly_in_a_dataset_folder_are_named(digits_root, tmp_path):
    """ROOT/<ds>/*.png (no split folders) got "missing split folder" lines that said nothing of the images there."""
    ds = tmp_path / "root" / "mine"
    ds.mkdir(parents=True)
    for image in sorted((digits_root / "digits" / "test").iterdir())[:3]:
        shutil.copy(image, ds / image.name)
    rc, _, err = run_main("train", "--data", ds.parent, "--out", tmp_path / "run", "--model", "test_resnet")
    assert rc == 2, err
    assert "folder of classes" not in err, err
    train_line = next(line for line in err.splitlines() if "missing split folder 'train'" in line)
    assert f"found 3 image(s) directly in {ds}" in train_line, err
    assert "train/<class>/ and val/<class>/" in train_line, err
    assert err.count("directly in") == 1, err  # said once, not on the val line too


def _stray_image(digits_root: Path, where: Path) -> None:
    """One image of the demo data copied to ``where`` (a preview.png or a report's plot)."""
    where.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(next((digits_root / "digits" / "test").iterdir()), where)


def test_datasets_with_other_case_splits_and_a_stray_image_keep_their_mv_advice(digits_root, tmp_path):
    """ROOT/ds/{Train,Val}/<class> with a preview.png beside them was "a folder of classes" (move them into
    ROOT/<dataset>/train/, nesting whole datasets as classes), not the `mv ds/Train ds/train` it was told before."""
    root = tmp_path / "root"
    for ds in ("ds1", "ds2"):
        for split in ("Train", "Val"):
            shutil.copytree(digits_root / "digits" / split.lower(), root / ds / split)
        _stray_image(digits_root, root / ds / "preview.png")
    rc, _, err = run_main("train", "--data", root, "--out", tmp_path / "run", "--model", "test_resnet")
    assert rc == 2, err
    assert "folder of classes" not in err, err
    for ds in ("ds1", "ds2"):
        assert f"mv {root / ds / 'Train'} {root / ds / 'train'}" in err, err


def test_a_folder_of_reports_is_passed_over_as_fewshot_output(digits_root, tmp_path):
    """--data on a folder of `fewshot report` folders (PNGs at their top) was told its folders are classes, where
    it was told before that each is no dataset (fewshot output)."""
    root = tmp_path / "reports"
    for name in ("r1", "r2"):
        (root / name).mkdir(parents=True)
        (root / name / "index.html").write_text("<html><head><title>fewshot report</title></head></html>")
        _stray_image(digits_root, root / name / "accuracy_bars.png")
    rc, _, err = run_main("train", "--data", root, "--out", tmp_path / "run", "--model", "test_resnet")
    assert rc == 2, err
    assert "folder of classes" not in err, err
    assert f"{root / 'r1'} is not a dataset (fewshot output" in err, err
    assert "no dataset folders found" in err, err


@pytest.mark.parametrize("command, example", [("predict", "pred_all.json"), ("eval", "metrics.json"),
                                              ("export", "backbone.safetensors")])
def test_out_ending_with_a_slash_is_refused_as_a_folder(tmp_path, command, example):
    """`--out NEWDIR/` wrote a FILE named NEWDIR (the trailing separator was dropped before the folder check)."""
    new = str(tmp_path / "newdir") + os.sep
    data = () if command == "export" else ("--data", tmp_path)
    rc, out, err = run_main(command, tmp_path / "run", *data, "--out", new)
    assert rc == 2, err
    assert f"--out {new} ends with '{os.sep}'" in err, err
    assert f"e.g. {tmp_path / 'newdir' / example}" in err, err
    assert not (tmp_path / "newdir").exists()


@pytest.mark.parametrize("command, example", [("predict", "pred_all.json"), ("eval", "metrics.json"),
                                              ("export", "backbone.safetensors")])
def test_out_dash_is_refused_not_written_as_a_file_named_dash(tmp_path, monkeypatch, command, example):
    """`--out -` (standard output in many tools) wrote a file named "-" in the current folder."""
    monkeypatch.chdir(tmp_path)
    data = () if command == "export" else ("--data", tmp_path)
    rc, out, err = run_main(command, tmp_path / "run", *data, "--out", "-")
    assert rc == 2, err
    assert "--out -: '-' is not read as standard output" in err, err
    assert f"e.g. {example}, or /dev/stdout" in err, err
    assert not (tmp_path / "-").exists()


def test_check_output_file_keeps_a_plain_new_file_and_an_existing_folder_message(tmp_path):
    """Only a raw string ending in a separator is a folder the user meant; a Path or a file name is written."""
    assert check_output_file(str(tmp_path / "new.json")) == tmp_path / "new.json"
    assert check_output_file(tmp_path / "new") == tmp_path / "new"
    with pytest.raises(UserError, match="is a folder; give a file name in it"):
        check_output_file(str(tmp_path) + os.sep)
    with pytest.raises(UserError, match=r"ends with '/'.*e\.g\. .*newdir/out\.json"):
        check_output_file(str(tmp_path / "newdir") + "/")


def test_the_class_folder_refusal_does_not_walk_every_image(tmp_path, monkeypatch):
    """not_a_dataset looked at every entry of every class folder (90k stats for 3 classes of 30k images) before
    the refusal (review rev70, finding 2): the refusal decides on the folders' tops."""
    from fewshot.data import roots

    for cls in ("cat", "dog", "owl"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(b"")
    monkeypatch.setattr(roots, "not_a_dataset", lambda f: pytest.fail("walked the class folders"))
    with pytest.raises(roots.UserError, match="looks like a folder of classes"):
        roots._refuse_class_folders_as_root(tmp_path, sorted(tmp_path.iterdir()))
