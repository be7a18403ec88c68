"""Folder locks and data roots (fCQ).

A train refused because a `fewshot probe` held its --out was told that two runs would log every epoch twice and to
--resume; a probe left its `.fewshot.lock` in the user's folder; a dataset whose class folders each held a web
folder's index.html was passed over as "fewshot output" instead of having its layout problem named.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from fewshot.data.roots import list_datasets, not_a_dataset, split_folders
from fewshot.errors import UserError
from fewshot.run_lock import LOCK_NAME, being_written, lock_run_dir, lock_scope, made_lock_file
from helpers.checks import run_main

OTHER_PID = "999999"
PNG = b"\x89PNG\r\n\x1a\n"
OUTPUT = "fewshot output (a run or a report), no train/, val/ or test/"
REPORT_PAGE = "<!DOCTYPE html>\n<html>\n<head>\n<title>fewshot report</title>\n</head></html>"


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


# ----------------------------------------------------------------- rev59: a FIFO, a mirror's top, probe's lock

def _not_a_dataset_unless_hung(folder: Path, fifo: Path):
    """not_a_dataset(folder) in a thread; a hang on ``fifo`` is ended by opening its other end (fails, no hang)."""
    got = []
    worker = threading.Thread(target=lambda: got.append(not_a_dataset(folder)), daemon=True)
    worker.start()
    worker.join(20)
    hung = worker.is_alive()
    if hung:  # a reader blocked in open() is let go by a writer that opens and closes at once
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(20)
    assert not hung, "not_a_dataset hung on a FIFO named index.html"
    return got[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_named_index_html_below_a_root_hangs_nothing_and_counts_as_before(tmp_path):
    """Opened and read to look for the report title: every command on the root hung (list_datasets)."""
    classes = tmp_path / "x" / "daisy"
    classes.mkdir(parents=True)
    (classes / "a.png").write_bytes(PNG)
    os.mkfifo(classes / "index.html")
    assert _not_a_dataset_unless_hung(tmp_path / "x", classes / "index.html") == OUTPUT
    top = tmp_path / "y"
    _class_folders_with_pages(top, "<title>Index of /</title>")
    os.mkfifo(top / "index.html")  # the dataset folder's own index.html: not read either
    assert _not_a_dataset_unless_hung(top, top / "index.html") == OUTPUT


def test_a_mirror_with_an_index_html_at_its_top_too_is_a_dataset_with_a_layout_problem(tmp_path):
    """`wget -r` mirror copied whole: index.html in the dataset folder itself made it "fewshot output" again."""
    root = tmp_path / "root"
    _class_folders_with_pages(root / "flowers", "<html><title>Index of /daisy</title></html>")
    (root / "flowers" / "index.html").write_text("<html><title>Index of /flowers</title></html>")
    assert not_a_dataset(root / "flowers") is None
    assert list_datasets(root) == ["flowers"]


def test_a_split_folder_holding_a_web_page_is_still_a_split(tmp_path):
    """`--data ROOT/digits` (a dataset, not the root): its train/ with a mirror's index.html was no split folder."""
    dataset = tmp_path / "digits"
    _class_folders_with_pages(dataset / "train", "<title>Index of /train</title>")
    (dataset / "train" / "index.html").write_text("<title>Index of /train</title>")
    _class_folders_with_pages(dataset / "val", "<title>Index of /val</title>")
    assert split_folders(dataset) == [dataset / "train", dataset / "val"]


def test_a_report_page_in_the_folder_itself_still_passes_it_over(tmp_path):
    """As a report written into the root (ROOT/rep: its page and PNGs, from a fewshot without the report mark)."""
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "index.html").write_text(REPORT_PAGE)
    (rep / "curves.png").write_bytes(PNG)
    assert not_a_dataset(rep) == OUTPUT


def test_a_lock_file_unlinked_by_its_holder_while_the_probe_waits_goes_at_the_probes_end(digits_root, tmp_path,
                                                                                          monkeypatch):
    """A probe started while another one held --out saw that one's lock file ("not made"), waited, then locked a
    file of its own and left it behind for good (every later probe saw it there before)."""
    import fewshot.run_lock as run_lock

    out = tmp_path / "px"
    out.mkdir()
    holder = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(holder, f"{OTHER_PID} probe\n".encode())
    fcntl.flock(holder, fcntl.LOCK_EX)
    real, ended = run_lock._flock_retrying, []

    def holder_ends_meanwhile(fd):
        if not ended:  # this probe has opened the holder's file and waits for its lock
            ended.append(os.unlink(out / LOCK_NAME))  # the other probe's unlock_and_remove: unlink, then close
            os.close(holder)
        return real(fd)

    monkeypatch.setattr(run_lock, "_flock_retrying", holder_ends_meanwhile)
    rc, _, err = run_main(*probe_argv(digits_root, out))
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["metrics.json"]


@pytest.mark.parametrize("run_files", [(), ("config.yaml",)])
def test_a_lock_file_that_appears_while_the_probe_runs_is_not_the_probes(digits_root, tmp_path, monkeypatch,
                                                                        run_files):
    """--out new at the probe's start: a train ran there meanwhile (its lock file, maybe its run) and the probe,
    locking it at its end, deleted the lock file as one it had made."""
    import fewshot.eval.probe as probe

    out = tmp_path / "px"
    real = probe.run_probe

    def another_command_meanwhile(*args, **kwargs):
        out.mkdir()
        (out / LOCK_NAME).write_text(f"{OTHER_PID} train\n")
        for name in run_files:
            (out / name).write_text("")
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "run_probe", another_command_meanwhile)
    rc, _, err = run_main(*probe_argv(digits_root, out))
    assert rc == (2 if run_files else 0), err
    assert sorted(os.listdir(out)) == sorted([LOCK_NAME, *(run_files or ["metrics.json"])])
    assert not being_written(out)


def test_a_probe_keeps_the_lock_file_it_made_where_a_run_appeared(digits_root, tmp_path, monkeypatch):
    """A run's files in --out by its end (written where locks do not work, or copied in): the folder is a run's,
    and a run folder keeps its lock file."""
    import fewshot.eval.probe as probe

    out = tmp_path / "px"
    out.mkdir()
    real = probe.run_probe
    monkeypatch.setattr(probe, "run_probe", lambda *a, **k: ((out / "config.yaml").write_text(""), real(*a, **k))[1])
    rc, _, err = run_main(*probe_argv(digits_root, out))
    assert rc == 2 and "a run was started there while the probe ran" in err, err
    assert sorted(os.listdir(out)) == [LOCK_NAME, "config.yaml"]


def test_lock_run_dir_tells_a_lock_file_it_made_from_one_there_before(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / LOCK_NAME).write_text(f"{OTHER_PID}\n")
    (tmp_path / "new").mkdir()
    with lock_scope("probe"):
        assert lock_run_dir(tmp_path / "old") and lock_run_dir(tmp_path / "new")
        assert not made_lock_file(tmp_path / "old") and made_lock_file(tmp_path / "new")
    assert not made_lock_file(tmp_path / "new")  # given up with the command


def test_a_lock_file_made_where_it_cannot_be_locked_is_not_left_behind(tmp_path, monkeypatch):
    """A file system without flock (ENOLCK): the empty lock file guards nothing; one there before stays."""
    import fewshot.run_lock as run_lock

    def no_locks(fd):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock, "_flock_retrying", no_locks)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / LOCK_NAME).write_text(f"{OTHER_PID}\n")
    with lock_scope("probe"):
        assert lock_run_dir(tmp_path) is False and lock_run_dir(tmp_path / "old") is False
    assert sorted(os.listdir(tmp_path)) == ["old"] and os.listdir(tmp_path / "old") == [LOCK_NAME]


def test_a_train_refused_by_a_probe_is_not_told_that_waiting_never_frees_the_folder(digits_root, tmp_path):
    """A probe that fails or is stopped leaves its folder without its lock file: only a finished one's metrics.json
    keeps a run out."""
    out = tmp_path / "px"
    with held(out, f"{OTHER_PID} probe\n"):
        rc, _, err = run_main(*train_argv(digits_root, out))
    assert rc == 2 and "a probe that finishes leaves its metrics.json in that folder" in err, err
    assert "does not free it" not in err, err
