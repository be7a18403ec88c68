"""A run being written (its .fewshot.lock held) is told apart from a stopped one; SIGTERM outside training stops
like Ctrl-C; what a kill leaves behind (atomic-write temp files, a half-moved data build) does not block a rerun."""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from fewshot.data.build import build_dataset
from fewshot.run_lock import LOCK_NAME, lock_run_dir
from fewshot.train.checkpoint import save_checkpoint
from helpers import forked_cli as fork
from helpers.checks import run_main
from helpers.tiny import build_digits, dist_env

FAKE_PID = "999999"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("live-data"))


@contextmanager
def held(folder: Path, how: int = fcntl.LOCK_EX):
    """The folder's writer lock held as another process holds it (its own open file; FAKE_PID in the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, f"{FAKE_PID}\n".encode())
    fcntl.flock(fd, how)
    try:
        yield fd
    finally:
        os.close(fd)


def fake_checkpoint(path: Path, kind: str) -> None:
    prefix = "encoder_q.backbone." if kind == "moco" else "backbone."
    save_checkpoint(path, {"kind": kind, "config": {}, "model": {prefix + "w": torch.zeros(2)}, "epoch": 1,
                           "label_space": {}, "img_size": 32, "n_parameters": 2})


@pytest.mark.parametrize("command", ["train", "pretrain", "run"])
def test_the_same_command_again_during_a_run_is_refused_as_the_run_being_written(root, tmp_path, command):
    """It was told "already holds a run ... Pass --resume", and --resume was then refused as being written."""
    out = tmp_path / command
    (out / "checkpoints").mkdir(parents=True)
    fake_checkpoint(out / "checkpoints" / "last.pt", "moco" if command == "pretrain" else "supervised")
    (out / "run_state.json").write_text("{}")
    tiny = ["--model", "test_resnet", "--img-size", "16", "--device", "cpu", "--no-progress"]
    argv = {"train": ["train", "--data", root, "--out", out, *tiny],
            "pretrain": ["pretrain", "--data", root, "--out", out, *tiny],
            "run": ["run", "--data", root, "--out", out, "--budget-minutes", "0.2", *tiny]}[command]
    with held(out):
        rc, _, err = run_main(*argv)
    assert rc == 2 and f"'{out}' is being written by another fewshot process (pid {FAKE_PID})" in err, err


def test_a_writer_waits_out_a_readers_brief_probe(tmp_path):
    """report/compare/export probe the lock with a shared lock for an instant: a writer starting just then was
    refused naming a stale pid."""
    with held(tmp_path, fcntl.LOCK_SH) as fd:
        threading.Timer(0.15, fcntl.flock, (fd, fcntl.LOCK_UN)).start()
        lock_run_dir(tmp_path)


@pytest.mark.parametrize("kind", ["supervised", "moco"])
def test_export_of_a_run_being_written_says_so(tmp_path, kind):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    fake_checkpoint(run / "checkpoints" / "last.pt", kind)
    with held(run):
        rc, _, err = run_main("export", run, "--out", tmp_path / "bb.safetensors")
    assert rc == 0, err
    assert "still being written" in err and "stopped before its first evaluation" not in err, err


def test_compare_of_a_run_being_written(tmp_path):
    started = tmp_path / "started"  # config.yaml and tensorboard/, no checkpoint or log yet
    (started / "tensorboard").mkdir(parents=True)
    (started / "config.yaml").write_text("_task: moco\n")
    with held(started):
        rc, _, err = run_main("compare", started)
    assert rc == 2 and "being written" in err and "holds no run" not in err, err
    live = tmp_path / "live"  # a MoCo run after its first epoch
    live.mkdir()
    (live / "config.yaml").write_text("_task: moco\n")
    (live / "log.jsonl").write_text(json.dumps({"epoch": 1, "loss": 5.0, "contrast_acc1": 10.0,
                                                "knn_acc1": {"digits": 40.0, "mean": 40.0}}) + "\n")
    with held(live):
        rc, out, err = run_main("compare", live)
    assert rc == 0 and "still being written" in out and "up to epoch 1" in out, out + err
    rc, out, err = run_main("compare", live)  # stopped: no such note
    assert rc == 0 and "being written" not in out, out + err


def test_resume_removes_the_temp_files_a_kill_left_in_the_run_folder(tmp_path):
    from fewshot.train.run_dir import prepare_run_dir

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"x")
    import os

    stale = [out / ".metrics.json.k2_x9q0a.tmp", out / ".log.jsonl.abcdefgh.tmp"]
    # an eval/predict --out RUN/x.json writing now (they take no lock) keeps its fresh temp file
    kept = [out / ".notes.tmp", out / "mine.abcdefgh.tmp", out / ".user.file", out / ".x.json.fresh123.tmp"]
    for p in stale + kept:
        p.write_text("x")
        if p in stale:
            os.utime(p, (os.path.getmtime(p) - 3600,) * 2)
    prepare_run_dir(out, True, {"data": {"root": str(tmp_path / "data")}})
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def _sigterm_outside_training(command: str, out: Path, root: Path) -> int:
    """In a process of its own (a fork of this one: its start is not the subject): `fewshot COMMAND` whose work is
    replaced by a real SIGTERM to the process itself, after the training for train."""
    import importlib
    import time

    from fewshot.cli import main

    def stop(*args, **kwargs):
        if command == "train":  # after the last epoch: metrics and plots being written
            (out / "checkpoints").mkdir(parents=True)
            (out / "checkpoints" / "last.pt").write_bytes(b"x")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)

    module, function = {"train": ("fewshot.train.finetune", "run_finetune"),
                        "data": ("fewshot.data.build", "build_dataset")}[command]
    setattr(importlib.import_module(module), function, stop)
    argv = {"train": ["train", "--data", root, "--model", "test_resnet"], "data": ["data", "digits"]}[command]
    return main(argv + ["--out", out, "--no-progress"])


@pytest.mark.parametrize("command", ["train", "data"])
def test_sigterm_outside_training_stops_like_ctrl_c(root, tmp_path, command):
    """It died at once with exit 143 and no word, where Ctrl-C said "interrupted" and what was kept."""
    proc = fork.run(lambda: _sigterm_outside_training(command, tmp_path / "out", root), env=dist_env(),
                    stdout=fork.PIPE, stderr=fork.PIPE, text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert f"fewshot {command}: stopped by SIGTERM" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    if command == "train":
        assert "the same command with --resume continues the run" in proc.stderr


def small_build(out: Path) -> None:
    build_dataset("digits", out, shots=2, val_per_class=1, test_per_class=1, pool_per_class=2, progress=False)


def test_a_data_build_stopped_between_its_renames_leaves_nothing_half_moved(tmp_path, monkeypatch):
    out = tmp_path / "root"
    rename = pathlib.Path.rename

    def stopped_before_the_pool(self, target):
        if Path(target) == out / "unlabeled" / "digits":
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", stopped_before_the_pool)
    with pytest.raises(KeyboardInterrupt):
        small_build(out)
    monkeypatch.undo()
    assert not (out / "digits").exists()
    small_build(out)
    assert (out / "digits" / "train").is_dir() and any((out / "unlabeled" / "digits").iterdir())


def test_a_rerun_builds_again_over_a_build_killed_between_its_renames(tmp_path, capsys):
    out = tmp_path / "root"
    small_build(out)
    stage = out / ".fewshot-build-digits.tmp"
    stage.mkdir()
    (out / "unlabeled" / "digits").rename(stage / "pool")  # what a kill -9 after the first rename leaves
    small_build(out)
    assert "stopped before its pool was moved into place" in capsys.readouterr().out
    assert (out / "digits" / "train").is_dir() and any((out / "unlabeled" / "digits").iterdir())
    assert not stage.exists()
