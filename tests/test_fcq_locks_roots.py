"""Folder locks and data roots (fCQ).

A train refused because a `fewshot probe` held its --out was told that two runs would log every epoch twice and to
--resume; a probe left its `.fewshot.lock` in the user's folder; a dataset whose class folders each held a web
folder's index.html was passed over as "fewshot output" instead of having its layout problem named.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from fewshot.data.roots import list_datasets, not_a_dataset
from fewshot.errors import UserError
from fewshot.run_lock import LOCK_NAME, being_written, lock_run_dir, lock_scope
from helpers.checks import run_main

OTHER_PID = "999999"
PNG = b"\x89PNG\r\n\x1a\n"


@contextmanager
def held(folder: Path, content: str):
    """The folder's lock held as another process's command holds it: its own open file, ``content`` in it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, content.encode())
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def probe_argv(root, out) -> list:
    return ["probe", "--weights", "", "--model", "test_resnet", "--img-size", "16", "--data", root, "--head",
            "prototype", "--device", "cpu", "--no-progress", "--out", out]


def train_argv(root, out) -> list:
    return ["train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false"]


# ------------------------------------------------------------------------------ who holds the lock, by name

def test_a_train_refused_by_a_probe_is_told_of_the_probe_not_of_epochs_and_resume(digits_root, tmp_path):
    out = tmp_path / "px"
    with held(out, f"{OTHER_PID} probe\n"):
        rc, _, err = run_main(*train_argv(digits_root, out))
    assert rc == 2 and "Traceback" not in err, err
    assert f"'{out}' is being written by another fewshot process (`fewshot probe`, pid {OTHER_PID})" in err, err
    assert "metrics.json" in err and "Choose another --out" in err, err
    assert "--resume" not in err and "every epoch twice" not in err, err


def test_a_probe_refused_by_a_train_names_the_train(digits_root, tmp_path):
    out = tmp_path / "run"
    with held(out, f"{OTHER_PID} train\n"):
        rc, _, err = run_main(*probe_argv(digits_root, out))
    assert rc == 2 and f"--out {out} is being written by another fewshot process (`fewshot train`, pid {OTHER_PID})" \
        in err, err


def test_each_command_writes_its_name_beside_its_pid(tmp_path):
    """Read back by a later refusal; library code outside a command writes the pid alone, as before."""
    (tmp_path / "a").mkdir()
    with lock_scope("train"):
        lock_run_dir(tmp_path / "a")
        assert (tmp_path / "a" / LOCK_NAME).read_text() == f"{os.getpid()} train\n"
    with lock_scope():
        lock_run_dir(tmp_path)
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_another_command_of_this_process_is_named_too(tmp_path):
    with lock_scope("probe"):
        lock_run_dir(tmp_path)
        with lock_scope("train"), pytest.raises(UserError) as refused:
            lock_run_dir(tmp_path)
    assert "another fewshot command of this Python process (`fewshot probe`; a thread" in str(refused.value)
    assert "--resume" not in str(refused.value)


def test_a_lock_file_naming_no_command_reads_as_before(digits_root, tmp_path):
    """An older fewshot's lock file (the pid alone) or one with an odd word: the pid, and the run's advice."""
    for content in (f"{OTHER_PID}\n", f"{OTHER_PID} <b>odd</b>\n"):
        out = tmp_path / str(len(content))
        with held(out, content):
            rc, _, err = run_main(*train_argv(digits_root, out))
        assert rc == 2 and f"being written by another fewshot process (pid {OTHER_PID}):" in err, err
        assert "then --resume" in err and "<b>" not in err, err


# -------------------------------------------------------------------------- probe's lock file at its end

def test_a_probe_removes_the_lock_file_it_made_in_an_existing_out(digits_root, tmp_path, monkeypatch):
    out = tmp_path / "px"
    out.mkdir()
    seen = []
    import fewshot.eval.probe as probe

    real = probe.run_probe
    monkeypatch.setattr(probe, "run_probe", lambda *a, **k: (seen.append(being_written(out)), real(*a, **k))[1])
    rc, _, err = run_main(*probe_argv(digits_root, out))
    assert rc == 0, err
    assert seen == [True]  # held for its whole run, as before
    assert sorted(os.listdir(out)) == ["metrics.json"]
    assert json.loads((out / "metrics.json").read_text())["protocol"] == "prototype (SimpleShot)"


def test_a_probe_into_a_new_folder_leaves_its_metrics_only(digits_root, tmp_path):
    out = tmp_path / "new" / "px"
    rc, _, err = run_main(*probe_argv(digits_root, out))
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["metrics.json"]


def test_a_probe_that_fails_removes_its_lock_file_too(digits_root, tmp_path, monkeypatch):
    import fewshot.eval.probe as probe

    def fails(*args, **kwargs):
        raise UserError("the probe failed")

    monkeypatch.setattr(probe, "run_probe", fails)
    out = tmp_path / "px"
    out.mkdir()
    rc, _, err = run_main(*probe_argv(digits_root, out))
    assert rc == 2 and "the probe failed" in err, err
    assert os.listdir(out) == []


def test_a_lock_file_there_before_the_probe_stays(digits_root, tmp_path):
    """An earlier command's (a run folder keeps its lock file): not the probe's to remove."""
    out = tmp_path / "px"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{OTHER_PID}\n")
    rc, _, err = run_main(*probe_argv(digits_root, out))
    assert rc == 0, err
    assert sorted(os.listdir(out)) == [LOCK_NAME, "metrics.json"]
    assert not being_written(out)


def test_a_probe_refused_by_a_holder_leaves_the_holders_lock_file(digits_root, tmp_path):
    out = tmp_path / "px"
    with held(out, f"{OTHER_PID} train\n"):
        rc, _, err = run_main(*probe_argv(digits_root, out))
        assert rc == 2, err
        assert (out / LOCK_NAME).read_text() == f"{OTHER_PID} train\n" and being_written(out)


# ------------------------------------------------------------------------------ index.html in a data root

def _class_folders_with_pages(dataset: Path, page: str) -> None:
    """Class folders without split folders above them, each with images and an index.html."""
    for name in ("daisy", "rose"):
        (dataset / name).mkdir(parents=True)
        (dataset / name / "a.png").write_bytes(PNG)
        (dataset / name / "index.html").write_text(page)


def test_class_folders_holding_a_web_folders_index_are_a_dataset_with_a_layout_problem(tmp_path, capfd):
    """`cp -r mirror/daisy mirror/rose ROOT/flowers/` (a `wget -r` mirror): passed over as "fewshot output", and
    the command failed with "no dataset folders found" instead of naming the missing train/ and val/."""
    root = tmp_path / "root"
    _class_folders_with_pages(root / "flowers", "<html><title>Index of /daisy</title></html>")
    assert not_a_dataset(root / "flowers") is None
    assert list_datasets(root) == ["flowers"]
    deeper = root / "photos"
    _class_folders_with_pages(deeper / "all", "<html><title>Gallery</title></html>")  # found by the walk
    assert not_a_dataset(deeper) is None
    assert "fewshot output" not in capfd.readouterr().err


def test_a_report_page_below_a_folder_still_passes_it_over(tmp_path):
    """A report a fewshot without the report mark wrote (index.html and PNGs), one or two levels down."""
    page = "<!DOCTYPE html>\n<html>\n<head>\n<title>fewshot report</title>\n</head></html>"
    _class_folders_with_pages(tmp_path / "runs", page)
    assert not_a_dataset(tmp_path / "runs") == "fewshot output (a run or a report), no train/, val/ or test/"
    _class_folders_with_pages(tmp_path / "deep" / "sweep", page)
    assert not_a_dataset(tmp_path / "deep") == "fewshot output (a run or a report), no train/, val/ or test/"
