"""Disk faults: an output folder that cannot be created, is read-only, is too small, or fills up during
the run. Each fails with exit status 2 and a message naming the folder or file, never a traceback; the
first three before training starts, the last one with the previous last.pt intact.

Real file systems where the machine allows it (a tiny tmpfs and a read-only tmpfs, mounted as root; the
tests skip with the reason otherwise), and the same code paths with a simulated full disk always.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
from pathlib import Path

import pytest

import fewshot.train.checkpoint as checkpoint
from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.engine import Engine
from helpers.tiny import build_digits
from helpers.checks import run_main


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("disk-data"))


def train_argv(root: Path, out: Path, *extra) -> list:
    return ["train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "--save-every-steps", "1",
            "train.tensorboard=false", "train.threads=1", *extra]


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A fresh tmpfs at `path` (root only); skips the test with the reason when mounting is not possible."""
    path.mkdir(parents=True)
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command here; the simulated full-disk tests cover these code paths")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); the simulated "
                    f"full-disk tests cover these code paths")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def assert_clean_failure(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    assert err.startswith("fewshot train: error:") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


# ------------------------------------------------------------------------------ cannot create / read-only


def test_out_below_a_regular_file(root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc, out, err = run_main(*train_argv(root, blocker / "run"))
    assert_clean_failure(rc, err, f"cannot write to the run folder '{blocker / 'run'}'", "Not a directory")
    assert "fine-tuning" not in out  # failed before the model was even built
    rc, _, err = run_main(*train_argv(root, blocker))  # --out is itself a file
    assert_clean_failure(rc, err, f"'{blocker}'", "is a file")
    assert blocker.read_text() == "not a folder"


def test_read_only_output_folder(root, tmp_path):
    with tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        rc, out, err = run_main(*train_argv(root, ro / "run"))
        assert_clean_failure(rc, err, str(ro / "run"), "Read-only file system")
        assert "fine-tuning" not in out


def test_every_writing_command_refuses_a_read_only_output_with_exit_2(root, tmp_path):
    """eval, predict, export, probe and data wrote their output after the work and crashed there (exit 1,
    a traceback) on a read-only folder; now they refuse it first, as train, pretrain and run do."""
    run = tmp_path / "run"
    rc, _, err = run_main(*train_argv(root, run))
    assert rc == 0, err
    rc, _, err = run_main("export", run, "--out", tmp_path / "bb.safetensors")
    assert rc == 0, err
    with tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        for argv in (["eval", run, "--data", root, "--out", ro / "m.json"],
                     ["predict", run, "--data", root, "--out", ro / "p.json"],
                     ["export", run, "--out", ro / "b.safetensors"],
                     ["probe", "--weights", tmp_path / "bb.safetensors", "--model", "test_resnet", "--data", root,
                      "--img-size", "16", "--out", ro / "probe"],
                     ["data", "digits", "--out", ro / "digits"]):
            rc, out, err = run_main(*argv)
            assert rc == 2 and "Traceback" not in err, (argv[0], err)
            assert f"fewshot {argv[0]}: error:" in err and "cannot be written" in err, err


def test_an_environment_os_error_deep_in_a_command_is_a_user_error(root, tmp_path, monkeypatch):
    """Whatever the command, a read-only or full disk met after the up-front checks is the machine's
    answer (exit 2, the path and the reason), not "internal error" with a traceback."""
    import fewshot.utils

    def read_only(path, *a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    run = tmp_path / "run"
    rc, _, err = run_main(*train_argv(root, run))
    assert rc == 0, err
    monkeypatch.setattr(fewshot.utils, "write_json", read_only)
    rc, _, err = run_main("eval", run, "--data", root, "--out", tmp_path / "m.json")
    assert rc == 2 and "Traceback" not in err, err
    assert f"fewshot eval: error: {tmp_path / 'm.json'}: Read-only file system" in err


# ------------------------------------------------------------------------------ too small / full


def test_tiny_tmpfs_fails_before_training(root, tmp_path):
    with tmpfs(tmp_path / "tiny", "size=64k") as tiny:
        rc, out, err = run_main(*train_argv(root, tiny / "run"))
        assert_clean_failure(rc, err, f"not enough free space for the checkpoints in '{tiny / 'run'}'", "MiB free")
        assert not (tiny / "run" / "checkpoints").exists() and not (tiny / "run" / "log.jsonl").exists()


def test_disk_filling_up_during_the_run_keeps_last_pt(root, tmp_path, monkeypatch):
    """A real ENOSPC: a 9 MiB tmpfs holds one 6 MiB checkpoint but not its successor's temp copy. (The
    early space check is switched off so that the run gets as far as the second checkpoint.)"""
    monkeypatch.setattr(Engine, "check_disk_space", lambda self: None)
    with tmpfs(tmp_path / "small", "size=9m") as small:
        run = small / "run"
        rc, _, err = run_main(*train_argv(root, run))
        assert_clean_failure(rc, err, f"cannot write the checkpoint {run / 'checkpoints' / 'last.pt'}",
                             "No space left on device", "--resume")
        assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == 1
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]  # no temp file left


def test_simulated_full_disk_fails_before_training(root, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=64 * 1024))
    rc, out, err = run_main(*train_argv(root, tmp_path / "run"))
    assert_clean_failure(rc, err, "not enough free space", "0.1 MiB free")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_budget_needs_room_for_the_best_pt_a_budget_stop_keeps_aside(root, tmp_path, monkeypatch):
    """With a budget a stop may keep the replaced best.pt aside (BEST_ASIDE) while a new best.pt and last.pt are
    written: four checkpoints at once, not three. Room for 3.5 is enough without a budget and refused with one."""
    mib = 1 << 20
    monkeypatch.setattr(Engine, "checkpoint_bytes", lambda self: 10 * mib)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=35 * mib))
    rc, _, err = run_main(*train_argv(root, tmp_path / "budget"), "train.budget_minutes=5")
    assert_clean_failure(rc, err, "not enough free space", "keeps aside", "41.0 MiB needed")
    rc, _, err = run_main(*train_argv(root, tmp_path / "plain"))
    assert rc == 0, err


def test_simulated_enospc_during_a_checkpoint_write(root, tmp_path, monkeypatch):
    real = checkpoint.atomic_write_bytes
    calls = {"n": 0}

    def write(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", write)
    run = tmp_path / "run"
    rc, _, err = run_main(*train_argv(root, run))
    assert_clean_failure(rc, err, "cannot write the checkpoint", "No space left on device")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == 2
