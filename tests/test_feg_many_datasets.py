"""A root of many small datasets (bug hunt hBO, fix fEG): a pool folder named exactly after one of two datasets that
differ only in case is that dataset's pool, not a misplaced one; the pool's start-line words, the report's balancing
sentence and `fewshot run`'s refusal of an empty test/ say each thing once and say how to go on."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.checks import run_main


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _dataset(root: Path, name: str, test: int = 2) -> None:
    """ROOT/name with 2 classes of 2 train and 1 val images each, ``test`` keyed test images."""
    for c in ("a", "b"):
        for k in range(2):
            _image(root / name / "train" / c / f"{k}.png", hash((name, c, k)) % 1000)
        _image(root / name / "val" / c / "0.png", hash((name, c, "val")) % 1000)
    (root / name / "test").mkdir(parents=True)
    for i in range(test):
        _image(root / name / "test" / f"{i}.png", i)
    if test:
        (root / name / "test_labels.json").write_text(json.dumps({str(i): i % 2 for i in range(test)}))


def _pool(root: Path, folder: str) -> None:
    for k in range(3):
        _image(root / "unlabeled" / folder / f"p{k}.png", 100 + k)


def _pool_sources(root: Path, datasets=None):
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.data.pool import pool_with_sources

    return pool_with_sources(resolve(flags={"data.root": str(root)}), scan_root(root, datasets))


def test_a_pool_folder_named_exactly_after_a_dataset_is_not_called_misplaced_for_its_case_twin(tmp_path, capfd):
    """Datasets `fashion` and `Fashion`, only unlabeled/fashion: every pretrain and run warned that the folder
    differs from 'Fashion' only in case and should be renamed, which would hand fashion's own pool to Fashion."""
    root = tmp_path / "root"
    for name in ("fashion", "Fashion"):
        _dataset(root, name)
    _pool(root, "fashion")
    capfd.readouterr()
    _, ids, source, _ = _pool_sources(root)
    assert "differs from the dataset name" not in capfd.readouterr().err
    assert "fashion: unlabeled/" in source and "Fashion: train images" in source, source
    _, _, source, _ = _pool_sources(root, ["Fashion"])  # fashion not trained on: the folder stays fashion's
    assert "differs from the dataset name" not in capfd.readouterr().err, source

    _pool(root, "FASHION")  # a folder that names no dataset is still pointed out
    _pool_sources(root, ["Fashion"])
    assert f"{root / 'unlabeled' / 'FASHION'} differs from the dataset name 'Fashion'" in capfd.readouterr().err


def test_names_in_two_unicode_forms_and_cases_keep_their_own_pools_without_a_warning(tmp_path, capfd):
    """The case check compares names as listed: `Über` (composed) beside `über` (decomposed) and only the latter's
    pool folder is neither a case twin of the other nor misplaced (hBO tried one such root)."""
    root = tmp_path / "root"
    composed, decomposed = "Über", unicodedata.normalize("NFD", "über")
    for name in (composed, decomposed):
        _dataset(root, name)
    _pool(root, decomposed)
    capfd.readouterr()
    _, _, source, _ = _pool_sources(root)
    assert "differs from the dataset name" not in capfd.readouterr().err
    assert f"{decomposed}: unlabeled/" in source and f"{composed}: train images" in source, source


def test_the_pool_source_names_datasets_that_share_their_source_together(tmp_path):
    """The MoCo start line listed "X: train images;" once for each of 12 datasets."""
    root = tmp_path / "root"
    for name in ("a", "b b", "c", "d", "e"):
        _dataset(root, name)
    for name in ("c", "e"):
        _pool(root, name)
    _, _, source, _ = _pool_sources(root)
    assert source == "a, 'b b', d: train images; c, e: unlabeled/", source


def test_the_reports_balancing_sentence_names_a_shared_reason_once():
    """`fewshot compare` and the report repeated one long reason for each dataset (7 times with 12 datasets)."""
    from fewshot.report.pipeline_runs import balance_words

    few = "val holds as few as 4 images of a class, too few to tell whether evening out helps"
    words = balance_words({"a": {"used": False, "why": few}, "b 2": {"used": False, "why": few},
                           "c": {"used": False, "why": "3 test images for 2 classes: too few to even out"},
                           "d": {"used": True}, "e": {"used": True}, "f": {"used": False, "why": few}})
    assert words.count(few) == 1, words
    assert words == (f"class-balanced for d, e, plain argmax for a, 'b 2', f ({few}); c (3 test images for 2 "
                     f"classes: too few to even out)")


def test_run_refusing_an_empty_test_split_names_the_datasets_option_that_leaves_it_out(tmp_path):
    """`fewshot run` said only ".../test: no test images"; predict and eval on the same root add the exact
    `--datasets` that leaves the dataset out, and run takes --datasets too."""
    root = tmp_path / "root"
    for name in ("one", "two x"):
        _dataset(root, name)
    _dataset(root, "empty", test=0)
    rc, _, err = run_main("run", "--data", root, "--out", tmp_path / "run", "--budget-minutes", "1", "--model",
                          "test_resnet", "--no-progress")
    assert rc == 2 and f"{root / 'empty' / 'test'}: no test images" in err, err
    assert "to use only those with usable train, val and test splits under this root, pass --datasets " \
           "'one,two x'." in err, err
    assert not (tmp_path / "run").exists()  # a refused start leaves no run behind


def test_the_datasets_hint_for_a_name_with_a_comma_parses_back_to_the_same_datasets():
    """review rev77: the hint's `--datasets a,b,c` for the datasets `a,b` and `c` was refused ("a, b not found"):
    adjacent parts that together name a dataset are that one; plain names split as before."""
    from fewshot.data.names import datasets_option, parse_datasets

    names = ["a,b", "c", "empty", "a", "x y"]
    for usable in (["a,b", "c"], ["c", "a,b"], ["a", "c"], ["x y", "a,b"]):
        value = datasets_option(usable).removeprefix("--datasets ").strip("'")
        assert parse_datasets(value, names) == usable, value
    assert parse_datasets(" c , empty", names) == ["c", "empty"]
    assert parse_datasets("a,b", ["a", "b"]) == ["a", "b"]
