"""hBW #5: predict/eval/export on a `fewshot run` folder still being written said it "did not finish" and steered
to a half-trained stage; hBW #6: test images removed while `predict --skip-bad-images` ran were called undecodable."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

import fewshot.data.decode_many as decode_many
from fewshot.errors import CheckpointError
from fewshot.train.checkpoint import resolve_checkpoint
from helpers.checks import run_main, train_tiny
from helpers.tiny import build_digits, copy_data_root

HOLD = """
import fcntl, os, sys
fds = []
for folder in sys.argv[1:]:
    fd = os.open(os.path.join(folder, ".fewshot.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, f"{os.getpid()} run\\n".encode())
    fcntl.flock(fd, fcntl.LOCK_EX)
    fds.append(fd)
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def held_by_a_run(*folders: Path):
    """The folders' writer locks held by another process, as a `fewshot run` holds them (its pid and command)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, *map(str, folders)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def half_run(tmp_path: Path) -> Path:
    """A `fewshot run` folder mid-run: its state file and one stage's checkpoint, no summary.json yet."""
    run = tmp_path / "rM"
    (run / "finetune_labelled" / "checkpoints").mkdir(parents=True)
    (run / "finetune_labelled" / "checkpoints" / "last.pt").write_bytes(b"")
    (run / "run_state.json").write_text("{}")
    return run


def test_a_run_folder_being_written_is_said_to_be_in_progress(tmp_path):
    run = half_run(tmp_path)
    stage = run / "finetune_labelled"
    with held_by_a_run(run, stage) as pid:
        with pytest.raises(CheckpointError) as exc:
            resolve_checkpoint(run)
        rc, _, err = run_main("export", run, "--out", tmp_path / "bb.safetensors")
    msg = str(exc.value)
    assert f"still being written by another fewshot process (`fewshot run`, pid {pid})" in msg, msg
    assert "did not finish" not in msg and "Wait for it to finish" in msg, msg
    assert f"({stage} is being trained now)" in msg and "as it is now" in msg, msg
    assert rc == 2 and "still being written" in err and "did not finish" not in err, err
    with pytest.raises(CheckpointError, match="did not finish"):  # the run stopped: the advice as before
        resolve_checkpoint(run)


def test_a_run_being_written_before_any_checkpoint_is_said_to_be_in_progress(tmp_path):
    run = tmp_path / "rM"
    run.mkdir()
    (run / "run_state.json").write_text("{}")
    with held_by_a_run(run):
        with pytest.raises(CheckpointError, match="still being written .*Wait for it to finish"):
            resolve_checkpoint(run)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = build_digits(tmp_path_factory.mktemp("fFW-data"))
    return root, train_tiny(root, tmp_path_factory.mktemp("fFW-run") / "run")


def test_test_images_removed_while_predict_runs_are_named_apart(trained, tmp_path, monkeypatch):
    root, run = copy_data_root(trained[0], tmp_path / "root"), trained[1]
    test = root / "digits" / "test"
    gone = sorted(test.iterdir())[:2]
    (test / "9.png").write_bytes(b"not an image")  # one undecodable image beside them
    decode = decode_many.decode_resized

    def removed_after_the_listing(path, *args):
        if Path(path) in gone:
            Path(path).unlink(missing_ok=True)
        return decode(path, *args)

    monkeypatch.setattr(decode_many, "decode_resized", removed_after_the_listing)
    out = tmp_path / "pred_all.json"
    rc, _, err = run_main("predict", run, "--data", root, "--out", out, "--device", "cpu", "--skip-bad-images",
                          "--no-progress")
    assert rc == 0, err
    assert "warning: 2 image(s) were removed while the command ran" in err, err
    assert "skipping 1 undecodable image(s)" in err and "No such file" not in err, err
    assert "1 undecodable test image(s) and 2 removed while the command ran" in err, err
    pred = json.loads(out.read_text())["digits"]
    assert all(p.stem in pred for p in gone) and len(pred) == 30, pred  # every listed id, as before (SPEC)
    cached = [f.read_text() for f in (root / ".fewshot_cache").rglob("*.json")]
    assert not any(gone[0].name in t for t in cached), cached  # no cache entry of a folder that changed


def test_images_removed_without_skip_bad_images_are_said_to_need_a_stable_folder(trained, tmp_path, monkeypatch):
    """Without --skip-bad-images, a removed image stopped predict with the undecodable files' hint (pass
    --skip-bad-images); the folder changing is the cause to fix (review rev99 #7c)."""
    root, run = copy_data_root(trained[0], tmp_path / "root"), trained[1]
    gone = sorted((root / "digits" / "test").iterdir())[0]
    decode = decode_many.decode_resized

    def removed_after_the_listing(path, *args):
        if Path(path) == gone:
            Path(path).unlink(missing_ok=True)
        return decode(path, *args)

    monkeypatch.setattr(decode_many, "decode_resized", removed_after_the_listing)
    rc, _, err = run_main("predict", run, "--data", root, "--out", tmp_path / "p.json", "--device", "cpu",
                          "--no-progress")
    assert rc == 2 and "removed while the command ran" in err, err
    assert "run it again once nothing adds or removes images" in err and "--skip-bad-images" not in err, err
