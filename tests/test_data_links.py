"""Symbolic links in a data root: the pool's sub-folders, dataset and pool folders that are links, broken class
folder links, test images that are links to where --out writes, and val/test images that are train images.
Each case used to pass silently (exit 0) or to write into the data; each is now said or refused."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from fewshot.data import layout
from fewshot.data.layout import scan_root
from fewshot.data.output_guard import check_output_is_not_in_data, check_result_file_is_not_an_input
from fewshot.data.pool import pool_with_sources
from fewshot.errors import DataLayoutError, UserError
from helpers.checks import run_main


def pool_of(root: Path, datasets: list[str]) -> tuple[list[Path], str]:
    """The pool that pretrain reads from ROOT/unlabeled/ (no --unlabeled)."""
    infos = scan_root(root, datasets)
    paths, _, source, _ = pool_with_sources({"data": {"root": str(root), "unlabeled": None}}, infos)
    return paths, source


def lstat_of_images(monkeypatch) -> list[str]:
    """Records each os.lstat of an image file (os.path.islink and realpath call it): a data root of 200k images
    paid one a file on every scan, and on every rerun of eval or predict."""
    calls, real_lstat = [], os.lstat

    def lstat(path, *args, **kwargs):
        if str(path).endswith(".png"):
            calls.append(str(path))
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)
    return calls


def pool_elsewhere(root: Path, name: str, tmp_path: Path) -> Path:
    """Moves ROOT/unlabeled/<name> out of the root and leaves an empty ROOT/unlabeled/<name>; returns where."""
    moved = tmp_path / "elsewhere" / "more"
    moved.parent.mkdir()
    shutil.move(root / "unlabeled" / name, moved)
    (root / "unlabeled" / name).mkdir()
    return moved


# ------------------------------------------------------------------------------ 1. the pool folder itself


def test_a_pool_folder_of_symlinked_folders_is_said_not_followed_and_not_told_to_rename_itself(
        copy_root, dataset_names, tmp_path, capfd):
    name = dataset_names[0]
    moved = pool_elsewhere(copy_root, name, tmp_path)
    (copy_root / "unlabeled" / name / "more").symlink_to(moved, target_is_directory=True)
    _, source = pool_of(copy_root, [name])
    err = capfd.readouterr().err
    assert f"{name}: train images" in source  # links into the pool are not followed, as everywhere in the pool
    assert "differs from the dataset name" not in err, err
    assert "symlinked folder(s), which the pool scan does not follow" in err, err
    assert str(copy_root / "unlabeled" / name / "more") in err and "train images stand in" in err, err


def test_a_pool_folder_without_images_is_said_once_and_a_case_variant_still_warned(copy_root, dataset_names, capfd):
    name = dataset_names[0]
    pool = copy_root / "unlabeled" / name
    shutil.rmtree(pool)
    pool.mkdir()
    (pool / "readme.txt").write_text("pool to come\n")
    pool_of(copy_root, [name])
    err = capfd.readouterr().err
    assert "differs from the dataset name" not in err, err
    assert f"{pool} holds no images: {name}'s train images stand in" in err, err
    variant = copy_root / "unlabeled" / name.upper()
    variant.mkdir()
    (variant / "x.png").write_bytes(next((copy_root / name / "train").glob("*/*.png")).read_bytes())
    pool_of(copy_root, [name])
    assert f"{variant} differs from the dataset name '{name}' only in case" in capfd.readouterr().err


def test_an_unsorted_pool_folder_of_only_symlinked_folders_is_said(copy_root, dataset_names, capfd):
    other = copy_root / "unlabeled" / "scraped"
    other.mkdir()
    (other / "batch1").symlink_to(copy_root / "unlabeled" / dataset_names[0], target_is_directory=True)
    pool_of(copy_root, dataset_names)
    err = capfd.readouterr().err
    assert f"{other} holds no images of its own, only 1 symlinked folder(s)" in err, err


# ------------------------------------------------------------------------------ 2. --out inside linked data


def test_out_inside_a_linked_dataset_split_or_linked_pool_is_refused(copy_root, dataset_names, tmp_path):
    name = dataset_names[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(copy_root / name, outside / name)
    (copy_root / name).symlink_to(outside / name, target_is_directory=True)
    shutil.move(copy_root / "unlabeled", outside / "unlabeled")
    (copy_root / "unlabeled").symlink_to(outside / "unlabeled", target_is_directory=True)
    with pytest.raises(UserError, match=f"inside the train/ split of dataset {name}"):
        check_output_is_not_in_data(copy_root / name / "train" / "myrun", copy_root)
    with pytest.raises(UserError, match="inside the unlabeled pool"):
        check_output_is_not_in_data(copy_root / "unlabeled" / "myrun", copy_root)
    check_output_is_not_in_data(copy_root / "runs" / "mine", copy_root)  # a folder of its own stays allowed
    check_output_is_not_in_data(copy_root / name / "runs" / "mine", copy_root)


def test_train_into_a_linked_dataset_split_exits_2_and_writes_nothing(copy_root, dataset_names, tmp_path):
    name = dataset_names[0]
    shutil.move(copy_root / name, tmp_path / name)
    (copy_root / name).symlink_to(tmp_path / name, target_is_directory=True)
    rc, _, err = run_main("train", "--data", copy_root, "--out", copy_root / name / "train" / "myrun", "--model",
                          "test_resnet", "--img-size", "32", "--device", "cpu", "--epochs", "1", "--no-progress")
    assert rc == 2 and "split of dataset" in err, err
    assert not (tmp_path / name / "train" / "myrun").exists()


# ------------------------------------------------------------------------------ 3. broken class folder links


def break_last_class(folder: Path) -> Path:
    """Replaces the split's last class folder with a dangling link, and adds a looping one (`loop`)."""
    seven = sorted(p for p in folder.iterdir() if p.is_dir())[-1]
    shutil.rmtree(seven)
    seven.symlink_to("/nonexistent-fewshot-class")
    (folder / "loop").symlink_to("loop")
    return seven


def test_a_dangling_or_looping_class_folder_link_in_train_is_a_layout_problem(copy_root, dataset_names):
    folder = copy_root / dataset_names[0] / "train"
    seven = break_last_class(folder)
    (folder / "St. Bernard").symlink_to("/nonexistent-fewshot-class")  # a dot, but no file's suffix: a class
    with pytest.raises(DataLayoutError) as exc:
        scan_root(copy_root, [dataset_names[0]])
    problems = exc.value.problems
    assert any(p.startswith(f"{seven}: a broken symbolic link (to /nonexistent-fewshot-class") for p in problems)
    assert any(p.startswith(f"{folder / 'loop'}: a broken symbolic link") for p in problems), problems
    assert any(p.startswith(f"{folder / 'St. Bernard'}: a broken symbolic link") for p in problems), problems


def test_a_dangling_class_folder_link_in_val_is_a_warning_as_a_val_class_without_images(copy_root, dataset_names,
                                                                                           capfd):
    folder = copy_root / dataset_names[0] / "val"
    seven = break_last_class(folder)
    info = scan_root(copy_root, [dataset_names[0]])[0]
    err = capfd.readouterr().err
    assert f"warning: {seven}: a broken symbolic link (to /nonexistent-fewshot-class" in err, err
    assert f"warning: {folder / 'loop'}: a broken symbolic link" in err, err
    assert f"no val images for 1 class(es), which are trained but not scored on val: {seven.name}" in err, err
    assert info.val and all(p.parent.name != seven.name for p, _ in info.val)


@pytest.mark.parametrize("split", ["train", "val"])
def test_dangling_links_named_as_files_beside_class_folders_pass_as_files_but_are_named(copy_root, dataset_names,
                                                                                        split, capfd):
    """README.md or labels.csv are passed over, as files beside the class folders are; a review: so was a class
    named U.S.A or e.coli, without a word. Each such link is named in a warning."""
    folder = copy_root / dataset_names[0] / split
    for name in ("README.md", "labels.csv", "U.S.A"):
        (folder / name).symlink_to(f"/nonexistent-fewshot-{name}")
    scan_root(copy_root, [dataset_names[0]])
    err = capfd.readouterr().err
    for name in ("README.md", "labels.csv", "U.S.A"):
        assert f"{folder / name}: a broken symbolic link named like a file, passed over" in err, err


# ------------------------------------------------------------------------------ 4. --out behind a test image link


def test_out_that_a_test_image_links_to_is_refused(copy_root, dataset_names, tmp_path):
    name = dataset_names[0]
    image = sorted((copy_root / name / "test").iterdir())[0]
    target = tmp_path / "x" / "t50.png"
    target.parent.mkdir()
    shutil.move(image, target)
    image.symlink_to(target)
    before = target.read_bytes()
    with pytest.raises(UserError, match="links to"):
        check_result_file_is_not_an_input(target, copy_root, tmp_path / "no-run", kind="predictions")
    rc, _, err = run_main("predict", tmp_path / "no-run", "--data", copy_root, "--out", target, "--device", "cpu")
    assert rc == 2 and f"{image} (read as data) links to" in err, err
    assert target.read_bytes() == before
    check_result_file_is_not_an_input(tmp_path / "x" / "pred.json", copy_root, tmp_path / "no-run", "predictions")


# ------------------------------------------------------------------------------ 5. val/test images that are train's


def test_val_and_test_images_linked_to_train_images_are_warned_once(copy_root, dataset_names, capfd):
    name = dataset_names[0]
    ds = copy_root / name
    cls = sorted(p.name for p in (ds / "train").iterdir())[0]
    train_image = sorted((ds / "train" / cls).iterdir())[0]
    val_images = sorted((ds / "val" / cls).iterdir())[:2]
    test_image = sorted((ds / "test").iterdir())[0]
    for link in (*val_images, test_image):
        link.unlink()
        link.symlink_to(train_image)
    scan_root(copy_root, [name], splits=("train", "val", "test"))
    scan_root(copy_root, [name], splits=("train", "val", "test"))
    err = capfd.readouterr().err
    assert err.count("train images reached through symbolic links") == 1, err
    assert "2 val and 1 test image(s)" in err and f"{val_images[0]} is {train_image}" in err, err
    scan_root(copy_root, [dataset_names[-1]], splits=("train", "val", "test"))  # an untouched dataset: no word
    assert "symbolic links" not in capfd.readouterr().err


def test_a_scan_without_links_lstats_no_image(copy_root, dataset_names, monkeypatch):
    calls = lstat_of_images(monkeypatch)
    info = scan_root(copy_root, [dataset_names[0]], splits=("train", "val", "test"))[0]
    assert info.train and info.val and info.test
    assert calls == []


@pytest.mark.parametrize("link", ["split", "class"])
def test_val_reached_through_a_linked_split_or_class_folder_is_still_warned(copy_root, dataset_names, capfd, link):
    ds = copy_root / dataset_names[0]
    cls = sorted(p.name for p in (ds / "train").iterdir())[0]
    linked = ds / "val" if link == "split" else ds / "val" / cls
    shutil.rmtree(linked)
    linked.symlink_to(ds / "train" / (cls if link == "class" else ""), target_is_directory=True)
    scan_root(copy_root, [dataset_names[0]])
    err = capfd.readouterr().err
    assert "val image(s) are train images reached through symbolic links" in err, err


def test_a_scan_that_raises_does_not_look_for_train_images_among_val(copy_root, dataset_names, monkeypatch):
    ds = copy_root / dataset_names[0]
    cls = sorted(p.name for p in (ds / "train").iterdir())[0]
    shutil.rmtree(ds / "val" / cls)
    (ds / "val" / cls).symlink_to(ds / "train" / cls, target_is_directory=True)
    (ds / "train" / "loose.png").write_bytes(b"")  # a layout problem
    called = []
    monkeypatch.setattr(layout, "_held_out_are_train_images", lambda *args: called.append(args))
    with pytest.raises(DataLayoutError, match="directly in the split folder"):
        scan_root(copy_root, [dataset_names[0]])
    assert called == []


def test_the_out_check_lstats_no_image_of_data_without_links(copy_root, dataset_names, tmp_path, monkeypatch):
    out = tmp_path / "pred.json"
    out.write_text("{}")  # an existing --out, as on every rerun
    calls = lstat_of_images(monkeypatch)
    check_result_file_is_not_an_input(out, copy_root, tmp_path / "no-run", "predictions")
    assert calls == []


@pytest.mark.parametrize("what", ["train image", "class folder", "answer key", "dataset"])
def test_out_behind_any_link_of_the_data_is_refused(copy_root, dataset_names, tmp_path, what):
    ds = copy_root / dataset_names[0]
    cls = sorted((ds / "train").iterdir())[0]
    image = sorted(cls.iterdir())[0]
    moved = {"train image": image, "class folder": cls, "answer key": ds / "test_labels.json", "dataset": ds}[what]
    target = tmp_path / "x" / moved.name
    target.parent.mkdir()
    shutil.move(moved, target)
    moved.symlink_to(target, target_is_directory=target.is_dir())
    out = target / image.relative_to(moved) if what in ("class folder", "dataset") else target
    named = moved if what == "answer key" else image
    with pytest.raises(UserError, match=re.escape(f"is the file that {named} (read as data) links to")):
        check_result_file_is_not_an_input(out, copy_root, tmp_path / "no-run", kind="predictions")
    (tmp_path / "x" / "other.json").write_text("{}")  # beside the data's files, none of them: allowed
    check_result_file_is_not_an_input(tmp_path / "x" / "other.json", copy_root, tmp_path / "no-run", "predictions")
