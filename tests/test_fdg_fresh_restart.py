"""A restart without last.pt (deleted, moved away, or killed before the first one) begins clean: the earlier
session's log rows, best.pt, metrics, plots and TensorBoard events are removed before training, for `fewshot train
--resume` and a `fewshot run --resume` stage; a file of the user's stays. An unreadable last.pt's message says how to
start over, and doing literally what it says works (hunt hBB, findings 1 and 3)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fewshot.train.finetune import val_scores_logged
from helpers.checks import run_main
from helpers.tiny import tiny_train_argv, trained_tiny_run


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory):
    return trained_tiny_run(digits_root, tmp_path_factory.mktemp("fdg") / "run")


def epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def with_users_files(run: Path) -> list[Path]:
    """Files fewshot did not write, in the folders it writes into; and an earlier session's TensorBoard events."""
    (run / "tensorboard").mkdir(exist_ok=True)
    (run / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"old session")
    mine = [run / "checkpoints" / "notes.txt", run / "plots" / "mine.png"]
    for path in mine:
        path.parent.mkdir(exist_ok=True)
        path.write_text("the user's")
    return mine


def assert_one_session(run: Path, mine: list[Path], n_epochs: int = 1) -> None:
    assert epochs(run) == list(range(1, n_epochs + 1))  # not [1, 1]: the dead session's rows appended to
    compared = json.loads((run / "metrics.json").read_text())["val_scores_compared"]
    assert compared == val_scores_logged(run)[0] > 0
    assert not list(run.glob("tensorboard/events.out.tfevents.1.host.*"))
    assert all(path.read_text() == "the user's" for path in mine)


def killed(run: Path) -> Path:
    """``run`` as a session killed before its end left it: no metrics files (a run that finished is not started
    over in place: test_fdn_resume_review)."""
    for path in run.glob("metrics*.json"):
        path.unlink()
    return run


def test_train_resume_without_last_pt_starts_clean(digits_root, trained, tmp_path):
    run = killed(shutil.copytree(trained, tmp_path / "run"))
    (run / "checkpoints" / "last.pt").unlink()
    assert (run / "checkpoints" / "best.pt").is_file() and epochs(run) == [1]
    mine = with_users_files(run)
    rc, out, err = run_main(*tiny_train_argv(digits_root, run, "--resume"))
    assert rc == 0, err
    assert_one_session(run, mine)
    assert "starting fresh: the earlier log.jsonl, checkpoints/best.pt, plots/finetune_curves.png" in out
    assert "the tensorboard/ event files of this folder are removed" in out


def follow_the_advice(err: str, cwd: Path) -> None:
    """The `mv ...` the message gives, run as given in a shell."""
    command = re.search(r"\(`(mv [^`]+)`\)", err)
    assert command, err
    subprocess.run(["bash", "-c", command.group(1)], cwd=cwd, check=True)


def test_a_truncated_last_pt_says_how_to_start_over_and_that_works(digits_root, trained, tmp_path):
    run = killed(shutil.copytree(trained, tmp_path / "run"))
    last = run / "checkpoints" / "last.pt"
    with open(last, "r+b") as fh:
        fh.truncate(last.stat().st_size // 2)
    mine = with_users_files(run)
    rc, _, err = run_main(*tiny_train_argv(digits_root, run, "--resume"))
    assert rc == 2 and "truncated" in err
    assert "run the same command with --resume again to start this run over" in err and "another --out" in err
    follow_the_advice(err, tmp_path)
    assert (run / "checkpoints" / "last.pt.broken").is_file() and not last.exists()
    rc, out, err = run_main(*tiny_train_argv(digits_root, run, "--resume"))
    assert rc == 0, err
    assert_one_session(run, mine)
    assert "starting fresh: the earlier" in out
    assert (run / "checkpoints" / "last.pt.broken").is_file()  # the user's move: not removed


@pytest.fixture(scope="module")
def stopped_run(digits_root, tmp_path_factory):
    """`fewshot run` (one fine-tuning stage) stopped by SIGTERM in its 8th step, after its first log rows."""
    from fewshot.train.supervised import SupervisedTask
    from test_run_resume import _cmd, stopped_in_stage

    out = tmp_path_factory.mktemp("fdg-run") / "run"
    cmd = _cmd(digits_root, out, "run.semi_method=off")
    stopped_in_stage(cmd, "finetune", SupervisedTask, call=8)
    assert epochs(out / "finetune"), "the stopped stage logged no row: the test needs one"
    return out, cmd


def test_run_stage_restarted_without_last_pt_starts_clean(stopped_run, tmp_path):
    src, cmd = stopped_run
    out = shutil.copytree(src, tmp_path / "run")
    stage = out / "finetune"
    last = stage / "checkpoints" / "last.pt"
    with open(last, "r+b") as fh:
        fh.truncate(last.stat().st_size // 2)
    mine = with_users_files(stage)
    cmd = [out if str(a) == str(src) else a for a in cmd]
    rc, _, err = run_main(*cmd, "--resume")
    assert rc == 2 and "truncated" in err
    assert "run the same command with --resume again to start this stage over" in err
    follow_the_advice(err, tmp_path)
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    rows = epochs(stage)
    assert rows == sorted(set(rows)) and rows[0] == 1  # one session's epochs, each once
    assert_one_session(stage, mine, len(rows))
    assert "[run] finetune: no " in stdout and "the stage starts over, and the earlier log.jsonl" in stdout
    assert (stage / "checkpoints" / "last.pt.broken").is_file()
