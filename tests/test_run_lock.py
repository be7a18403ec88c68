"""One writer per run folder: a second process training into a folder that a running process writes is
refused (exit 2) instead of doubling the log and overwriting checkpoints; the lock dies with its holder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fewshot.run_lock import lock_run_dir, release_all
from helpers.checks import run_main
from helpers.run_patch import patch_pipeline
from helpers.tiny import build_digits

HOLD = "import sys; from fewshot.run_lock import lock_run_dir; lock_run_dir(sys.argv[1]); print('locked', flush=True); " \
       "sys.stdin.read()"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("lock-data"))


def train_argv(root: Path, out: Path, *extra) -> list:
    return ["train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.threads=1",
            *extra]


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds the folder's lock until its stdin closes."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.parametrize("command", ["train", "pretrain", "run"])
def test_a_folder_another_process_writes_is_refused_and_free_once_it_exits(root, tmp_path, command, monkeypatch):
    # `fewshot run` is refused before it decodes the test images (the refusal came 24-53 s late)
    patch_pipeline(monkeypatch, "preload_images", lambda *a: pytest.fail("decoded before the lock"))
    out = tmp_path / command
    holder = hold_lock(out)
    try:
        if command == "train":
            argv = train_argv(root, out)
        elif command == "pretrain":
            argv = ["pretrain", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16",
                    "--epochs", "1", "--batch-size", "16", "--queue-size", "32", "--device", "cpu", "--no-progress"]
        else:
            argv = ["run", "--data", root, "--out", out, "--budget-minutes", "0.2", "--model", "test_resnet",
                    "--device", "cpu", "--no-progress"]
        rc, _, err = run_main(*argv)
        assert rc == 2 and "Traceback" not in err, err
        assert f"'{out}' is being written by another fewshot process (pid {holder.pid})" in err
        assert not (out / "log.jsonl").exists() and not (out / "checkpoints").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    if command == "train":  # the holder is gone: its lock went with it
        rc, _, err = run_main(*train_argv(root, out))
        assert rc == 0, err


def test_the_same_process_may_take_its_own_lock_again_and_release_it(tmp_path):
    lock_run_dir(tmp_path)
    lock_run_dir(tmp_path)  # a resume inside one process (tests, notebooks) is not a second writer
    release_all()
    holder = hold_lock(tmp_path)  # released: another process can take it
    holder.stdin.close()
    holder.wait(timeout=30)


def test_a_folder_removed_before_its_lock_is_taken_is_a_user_error(tmp_path):
    """Another start into the same --out failed and removed the folder it made, between this start's mkdir and its
    lock: the lock could not be taken, the start went on unlocked and failed writing config.yaml as "internal error
    (a bug)". Now a user error that says to run again."""
    from fewshot.errors import UserError

    with pytest.raises(UserError, match="was removed while this command started"):
        lock_run_dir(tmp_path / "gone")
    assert not (tmp_path / "gone").exists()
