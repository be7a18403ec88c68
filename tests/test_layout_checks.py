"""Layout checks: class order of decomposed Unicode names, train's check of test/, and a file named ROOT/unlabeled."""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from fewshot.config import resolve
from fewshot.data.layout import scan_root
from fewshot.errors import DataLayoutError
from helpers.checks import run_main

NFD_E = "e\u0301"  # "é" as macOS writes it (decomposed)


def _image(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def test_class_order_of_decomposed_names_is_imagefolder_order(tmp_path):
    """Class names were sorted in their NFC form: a decomposed "é" folder (a macOS zip) sorted after "z" where
    torchvision's ImageFolder, whose order pred_all.json and integer answer keys follow, puts it before "shirt"."""
    datasets = pytest.importorskip("torchvision.datasets")
    ds = tmp_path / "root" / "clothes"
    names = ["a b", "\u00e9x", "shirt", "z", NFD_E]  # "éx" composed, "é" decomposed
    for k, name in enumerate(names):
        _image(ds / "train" / name / "0.png", k)
        # val names "é" composed: still the train class, matched by its NFC form
        _image(ds / "val" / unicodedata.normalize("NFC" if name == NFD_E else "NFD", name) / "0.png", k)
    _image(ds / "test" / "0.png")
    want = [unicodedata.normalize("NFC", c) for c in datasets.ImageFolder(ds / "train").classes]
    assert want[1] == "\u00e9" and want[-1] == "\u00e9x"  # the case the NFC sort got wrong
    info = scan_root(tmp_path / "root")[0]
    assert list(info.classes) == want
    for split in (info.train, info.val):  # each image keeps its own folder's class, in class order
        assert [c for _, c in split] == list(range(len(want)))
        assert all(want[c] == unicodedata.normalize("NFC", p.parent.name) for p, c in split)

    # a model trained before this (classes in NFC-sorted order) keeps its own indices: labels follow its list
    from fewshot.eval.predict import _in_model_classes

    old = tuple(sorted(want))
    remapped = _in_model_classes(info, old, "val")
    assert remapped.classes == old
    assert all(old[c] == unicodedata.normalize("NFC", p.parent.name) for p, c in remapped.val)


def _break_test_split(ds: Path, how: str) -> Path:
    test = ds / "test"
    first = sorted(test.iterdir())[0]
    if how == "duplicate":
        bad = test / f"00{first.name}"  # 0.png and 000.png: one test id
        shutil.copy(first, bad)
    else:
        bad = test / "sub"
        bad.mkdir()
        shutil.copy(first, bad / first.name)
    return bad


@pytest.mark.parametrize("command", ["train", "pretrain"])
@pytest.mark.parametrize("how, words", [("duplicate", "duplicate test id"), ("sub", "a sub-folder of test/")])
def test_train_and_pretrain_check_the_test_split_before_any_compute(copy_root, dataset_names, tmp_path, command,
                                                                      how, words):
    """train and pretrain exited 0 on a test/ with duplicate ids or a sub-folder of images; only predict and eval
    refused it, after the training. They now stop at once, with predict's message."""
    bad = _break_test_split(copy_root / dataset_names[0], how)
    out = tmp_path / "run"
    rc, _, err = run_main(command, "--data", copy_root, "--out", out, "--model", "test_resnet", "--img-size", "16",
                          "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress")
    assert rc == 2, err
    assert words in err and str(bad) in err
    assert not (out / "checkpoints").exists() and not (out / "log.jsonl").exists()
    with pytest.raises(DataLayoutError) as predicted:  # predict's scan names the same problem
        scan_root(copy_root, splits=("test",))
    assert any(words in p and str(bad) in p for p in predicted.value.problems)


def test_train_check_passes_over_a_missing_or_empty_test_split(copy_root, dataset_names):
    """A root without test/ (or with an empty one, to be filled later) still trains: predict alone needs test images."""
    first, second = dataset_names
    shutil.rmtree(copy_root / first / "test")
    shutil.rmtree(copy_root / second / "test")
    (copy_root / second / "test").mkdir()
    infos = scan_root(copy_root, splits=("train", "val"), if_present=("test",))
    assert [len(i.test) for i in infos] == [0, 0] and all(i.train for i in infos)
    with pytest.raises(DataLayoutError):  # predict still refuses both
        scan_root(copy_root, splits=("test",))


def test_a_file_named_unlabeled_is_said(copy_root, dataset_names, tmp_path, capfd):
    """A plain file ROOT/unlabeled was passed over without a word: MoCo trained on the train images instead."""
    from fewshot.data.pool import pool_with_sources

    pool = copy_root / "unlabeled"
    shutil.rmtree(pool)
    pool.write_text("not a folder")
    cfg = resolve(flags={"data.root": str(copy_root)})
    capfd.readouterr()
    paths, ids, source, _ = pool_with_sources(cfg, scan_root(copy_root))
    err = capfd.readouterr().err
    assert f"{pool} is a file, not a folder" in err and "--unlabeled" in err
    assert "train images" in source and len(paths) == sum(len(i.train) for i in scan_root(copy_root))
    # a given --unlabeled folder replaces ROOT/unlabeled: nothing to say then
    given = tmp_path / "mine"
    shutil.copytree(copy_root / dataset_names[0] / "train", given)
    pool_with_sources(resolve(flags={"data.root": str(copy_root), "data.unlabeled": [str(given)]}),
                      scan_root(copy_root))
    assert "is a file" not in capfd.readouterr().err
