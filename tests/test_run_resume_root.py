"""`fewshot run --resume --data OTHER` on a finished run said "finished already" of results made on another root.
Other data is refused naming the root the run used; the same root (typed another way, or through a link) and a
root that moved with the same datasets and classes (as a stopped run's resume takes it) still say finished."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers.checks import run_main

BASE = ("--budget-minutes", "1", "--model", "test_resnet", "--img-size", "32", "--device", "cpu", "--no-progress",
        "run.report=false")


@pytest.fixture
def finished(copy_root, tmp_path, settings_only_run, monkeypatch) -> Path:
    """A `fewshot run` of copy_root whose state says finished (its settings as a real start records them,
    settings_only_run), with the classes it ran on and a summary; the real pipeline reads it from then on."""
    root = copy_root
    out = tmp_path / "run"
    rc, _, err = run_main("run", "--data", root, "--out", out, *BASE)
    assert rc == 0, err
    monkeypatch.undo()
    from fewshot.data.layout import scan_root

    state = json.loads((out / "run_state.json").read_text())
    state["classes"] = {info.name: list(info.classes) for info in scan_root(root, splits=("train", "val", "test"))}
    state["finished"] = True
    (out / "run_state.json").write_text(json.dumps(state))
    (out / "summary.json").write_text(json.dumps({"seconds": 1.0}))
    return out


def _resume(root, out):
    return run_main("run", "--data", root, "--out", out, *BASE, "--resume")


def test_a_finished_run_resumed_on_its_root_typed_another_way_says_finished(finished, tmp_path, monkeypatch):
    root = tmp_path / "root"
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for given in (root, "root", "./root/", tmp_path / "link", "link"):
        rc, out, err = _resume(given, finished)
        assert rc == 0 and "finished already" in out, (given, err)


def test_a_finished_run_resumed_on_other_data_is_refused_naming_its_root(finished, tmp_path, dataset_names):
    other = Path(shutil.copytree(tmp_path / "root", tmp_path / "other"))
    shutil.rmtree(other / dataset_names[1])
    rc, out, err = _resume(other, finished)
    assert rc == 2 and "finished already" not in out, err
    assert f"is a finished run of the data root '{tmp_path / 'root'}'" in err, err
    assert "--resume cannot switch it to another root's data" in err and f"{dataset_names[1]} is missing" in err, err
    assert err.count("error:") == 1, err
    rc, out, err = _resume(tmp_path / "none", finished)  # a root that is not there: said, not "finished already"
    assert rc == 2 and "finished already" not in out and f"--data '{tmp_path / 'none'}' cannot be read" in err, err
    assert json.loads((finished / "run_state.json").read_text())["finished"] is True


def test_a_finished_run_whose_data_moved_still_says_finished(finished, tmp_path):
    """data.root is one of the settings a --resume may change (RUN_RESUME_MAY_CHANGE): the same data elsewhere."""
    os.rename(tmp_path / "root", tmp_path / "moved")
    rc, out, err = _resume(tmp_path / "moved", finished)
    assert rc == 0 and "finished already" in out, err
