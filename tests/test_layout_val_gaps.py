"""A val/ whose class folders all lack images: the error names them.

Val classes without images are warnings (held-out data may lack a rare class), printed only when the scan raises
nothing; with every val class folder empty the command stopped on "val: no class folders", and the folders it had
passed over, the real cause, went unsaid.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fewshot.data.layout import scan_root
from fewshot.errors import DataLayoutError
from helpers.checks import run_main
from helpers.tiny import tiny_train_argv


def _empty_classes(split: Path, names: list[str]) -> list[Path]:
    emptied = []
    for name in names:
        shutil.rmtree(split / name)
        (split / name).mkdir()
        emptied.append(split / name)
    return emptied


def test_every_val_class_folder_empty_names_them(copy_root, dataset_names, capsys):
    val = copy_root / dataset_names[0] / "val"
    emptied = _empty_classes(val, sorted(p.name for p in val.iterdir()))
    with pytest.raises(DataLayoutError) as info:
        scan_root(copy_root)
    problems = info.value.problems
    assert all(any(p == f"{folder}: empty class folder" for p in problems) for folder in emptied), problems
    assert not any("no class folders" in p for p in problems), problems
    rc, _, err = run_main(*tiny_train_argv(copy_root, copy_root.parent / "run"))
    assert rc == 2 and f"{emptied[0]}: empty class folder" in err and "no class folders" not in err, err
    assert err.count("empty class folder") == len(emptied), err  # once each, not again as a warning


def test_some_val_class_folders_empty_stay_a_warning(copy_root, dataset_names, capsys):
    val = copy_root / dataset_names[0] / "val"
    emptied = _empty_classes(val, sorted(p.name for p in val.iterdir())[:2])
    infos = scan_root(copy_root)
    err = capsys.readouterr().err
    assert len(infos[0].val) > 0 and all(f"{folder}: empty class folder" in err for folder in emptied), err


def test_a_val_folder_without_class_folders_is_still_said_so(copy_root, dataset_names):
    val = copy_root / dataset_names[0] / "val"
    shutil.rmtree(val)
    val.mkdir()
    with pytest.raises(DataLayoutError) as info:
        scan_root(copy_root)
    assert f"{val}: no class folders" in info.value.problems
