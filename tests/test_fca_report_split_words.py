"""`fewshot report RUN --data ROOT/digits` names the split folders the given folder holds by layout's own rule: a run
folder named like a split beside them (`--out ROOT/digits/val`) is no split, and was listed as one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fewshot.errors import UserError
from helpers.checks import run_main
from helpers.tiny import build_digits, trained_tiny_run


def _layout_words(root: Path) -> str:
    """Training's refusal of ``root`` (layout's message), whose split folders the report must name alike."""
    from fewshot.data.layout import list_datasets

    with pytest.raises(UserError) as told:
        list_datasets(root)
    return str(told.value)


def test_report_names_only_layouts_split_folders_beside_a_run_named_val(tmp_path):
    """ROOT/digits/{train,test} and a finished run in ROOT/digits/val: layout counts train/ and test/ as the splits
    (val/ holds a run); the report's note said "it holds test/, train/ and val/"."""
    root = build_digits(tmp_path / "root", shots=2)
    run = trained_tiny_run(root, tmp_path / "run")
    shutil.rmtree(root / "digits" / "val")
    shutil.copytree(run, root / "digits" / "val")
    assert "(it holds test/ and train/)" in _layout_words(root / "digits")
    rc, out, err = run_main("report", run, "--data", root / "digits", "--out", tmp_path / "r", "--device", "cpu",
                            "--grid", "0")
    assert rc == 0, err
    said = out + err
    assert f"--data {root / 'digits'} looks like a dataset folder itself (it holds test/ and train/), " in said, said
    assert "val/)" not in said and "val/ and" not in said and "val/," not in said, said
