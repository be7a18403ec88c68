"""Crash and resume with real processes: `fewshot train` / `fewshot pretrain` are SIGKILLed at several
points (after a checkpoint, before the rename of a complete temp file, in the middle of a checkpoint
write, between the epoch-end checkpoint and its log row, and at a moment chosen by the clock from
outside), then continued with `--resume` until they finish. The result must equal an uninterrupted run
bit for bit (every tensor of last.pt and best.pt, metrics.json, the log values), every kill must leave a
last.pt that loads, each resume redoes only the steps after that checkpoint, and the temp files a kill
leaves behind must not matter.

The kills are injected by tests/helpers/faults.py, which wraps the real CLI from the outside (nothing
in src/ knows about it); `fewshot.cli.main` in this process gives the uninterrupted reference and runs each
last session, which no kill ends. A process that is killed is a fork of this one (helpers.forked_cli): a process
of its own that a real signal ends, without the seconds of an interpreter start and torch's import.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from fewshot.cli import main as fewshot_main
from fewshot.train.checkpoint import load_checkpoint
from helpers.tiny import REPO, build_digits
from helpers import forked_cli as fork
from helpers.checks import assert_same, run_main

TIMING = {"images_per_s", "epoch_time_s", "eval_time_s"}
STATE = ("model", "ema", "optimizer", "scaler", "epoch", "step_in_epoch", "global_step", "best_score",
         "last_eval", "nonfinite_skipped", "epoch_sums", "epoch_steps", "rng", "label_space")
COMMON = ["--model", "test_resnet", "--img-size", "16", "--batch-size", "8", "--device", "cpu", "--no-progress",
          "train.deterministic=true", "train.save_every_steps=1", "train.tensorboard=false", "train.threads=1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("crash-data"))  # 40 train, 30 val, 80 unlabeled digits


def argv(command: str, root: Path, out: Path, *extra: str) -> list[str]:
    more = ["--queue-size", "52", "moco.split_bn_groups=2", "moco.knn_k=5"] if command == "pretrain" else []
    return [command, "--data", str(root), "--out", str(out), *COMMON, *more, *extra]


def env(note: Path, **faults: int) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("FEWSHOT_FAULT_")}
    e.update({"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "src"), e.get("PYTHONPATH", "")]),
              "OMP_NUM_THREADS": "1", "FEWSHOT_FAULT_NOTE": str(note)})
    e.update({f"FEWSHOT_FAULT_{k.upper()}": str(v) for k, v in faults.items()})
    return e


def _faulty_main(args: list[str]) -> int:
    """`python -m helpers.faults ARGS` in the fork: its faults read the environment the fork was given."""
    from helpers import faults

    sys.argv = ["helpers.faults", *args]
    return faults.main()


def start(args: list[str], note: Path, **faults: int) -> fork.Forked:
    return fork.start(lambda: _faulty_main(args), env=env(note, **faults), stdout=fork.PIPE, stderr=fork.STDOUT,
                      text=True, cwd=REPO)


def killed(args: list[str], note: Path, **faults: int) -> str:
    proc = start(args, note, **faults)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL death, got {proc.returncode}:\n{out[-3000:]}"
    return out


def finished(args: list[str], note: Path) -> str:
    """The last session, to the end, in this process: only a kill needs a process of its own (no fault is set
    here, and helpers.faults is inert without one), and an interpreter start with torch's import costs seconds."""
    rc, out, err = run_main(*args)
    assert rc == 0, (out + err)[-3000:]
    return out + err


def killed_from_outside(args: list[str], note: Path, after_writes: int) -> tuple[str, bool]:
    """SIGKILL the process from here once last.pt has been replaced `after_writes` times (seen by inode)."""
    last = Path(args[args.index("--out") + 1]) / "checkpoints" / "last.pt"
    proc = start(args, note)
    seen, before = 0, _inode(last)
    while proc.poll() is None:
        now = _inode(last)
        if now != before and now is not None:
            seen, before = seen + 1, now
            if seen >= after_writes:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.002)
    out, _ = proc.communicate(timeout=300)
    with open(note, "a") as fh:
        fh.write(f"from outside after {seen} observed last.pt write(s)\n")
    return out, proc.returncode == -signal.SIGKILL


def _inode(path: Path):
    try:
        st = os.stat(path)
        return st.st_ino, st.st_mtime_ns
    except OSError:
        return None


# ------------------------------------------------------------------------------ checks


def log_rows(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def position(run: Path) -> tuple[int, int, int]:
    """(epoch, step_in_epoch, global_step) of last.pt, which must load after every kill."""
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    return ck["epoch"], ck["step_in_epoch"], ck["global_step"]


def temp_files(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob(".*.tmp"))


def resumed_at(output: str) -> int:
    """The global step a resumed process started from (the engine prints it)."""
    m = re.search(r"resuming from \S+last\.pt: epoch \d+, step \d+ of \d+ \(global step (\d+)\)", output)
    assert m, output[-2000:]
    return int(m.group(1))


def compare(ref: Path, run: Path, metrics: bool) -> None:
    for name in ("last", "best"):
        a, b = load_checkpoint(ref / "checkpoints" / f"{name}.pt"), load_checkpoint(run / "checkpoints" / f"{name}.pt")
        for key in STATE:
            assert_same(a.get(key), b.get(key), f"{name}.{key}")
    assert log_rows(run) == log_rows(ref)
    if metrics:
        assert json.loads((run / "metrics.json").read_text()) == json.loads((ref / "metrics.json").read_text())


# ------------------------------------------------------------------------------ fine-tuning

# 40 train images, batch 8: 5 steps per epoch, 2 epochs. last.pt is written after global steps 1-4 (mid-epoch)
# and at the end of the epoch (step 5, after best.pt), then 6-9 and 10.


def test_train_survives_sigkill_at_four_points(root, tmp_path):
    ref = tmp_path / "ref"
    assert fewshot_main(argv("train", root, ref, "--epochs", "2")) == 0
    run, note = tmp_path / "run", tmp_path / "kills.txt"
    args = argv("train", root, run, "--epochs", "2")

    # 1. after 4 mid-epoch checkpoints, the epoch-end one (the 5th write) is complete and fsynced but the
    #    rename never happens
    killed(args, note, kill_before_rename=5)
    assert position(run) == (0, 4, 4)  # the previous last.pt, intact
    assert len(temp_files(run)) == 1 and temp_files(run)[0].stat().st_size > 0
    assert log_rows(run) == []

    # 2. right after the epoch-end checkpoint, before its row reaches log.jsonl
    out = killed(args + ["--resume"], note, kill_after_save=1)
    assert resumed_at(out) == 4  # only step 5 is redone
    assert temp_files(run) == []  # resume cleared the leftover
    assert position(run) == (1, 0, 5)
    assert log_rows(run) == []  # the kill came before the log write ...

    # 3. in the middle of writing the 2nd checkpoint: half a temp file, never renamed
    out = killed(args + ["--resume"], note, kill_mid_write=2)
    assert resumed_at(out) == 5
    assert [r["epoch"] for r in log_rows(run)] == [1]  # ... and the resume restored the row from last.pt
    assert position(run) == (1, 1, 6)
    (tmp,) = temp_files(run)
    assert 0 < tmp.stat().st_size < (run / "checkpoints" / "last.pt").stat().st_size

    # 4. to the end
    out = finished(args + ["--resume"], note)
    assert resumed_at(out) == 6
    assert temp_files(run) == []
    compare(ref, run, metrics=True)
    assert len(note.read_text().splitlines()) == 3


# ------------------------------------------------------------------------------ MoCo pretraining

# 80 pool images, batch 8: 10 steps per epoch, 1 epoch, K=52.


def test_pretrain_survives_sigkill_from_outside_and_mid_write(root, tmp_path):
    ref = tmp_path / "ref"
    assert fewshot_main(argv("pretrain", root, ref, "--epochs", "1")) == 0
    run, note = tmp_path / "run", tmp_path / "kills.txt"
    args = argv("pretrain", root, run, "--epochs", "1")

    # 1. at a moment chosen from outside: after the 2nd last.pt write was seen (the process may be anywhere:
    #    in a step, in a checkpoint write, ...)
    _, was_killed = killed_from_outside(args, note, after_writes=2)
    assert was_killed, "the run finished before the kill (too fast to interrupt?)"
    epoch, step, g = position(run)
    assert 2 <= g < 10 and (epoch, step) == (0, g)

    # 2. in the middle of this process's first checkpoint write
    out = killed(args + ["--resume"], note, kill_mid_write=1)
    assert resumed_at(out) == g
    assert position(run) == (0, g, g)  # the kill destroyed only the new temp file

    # 3. to the end
    out = finished(args + ["--resume"], note)
    assert resumed_at(out) == g
    compare(ref, run, metrics=False)
    last, want = load_checkpoint(run / "checkpoints" / "last.pt"), load_checkpoint(ref / "checkpoints" / "last.pt")
    assert int(last["model"]["queue_ptr"]) == int(want["model"]["queue_ptr"]) == (10 * 8) % 52
    assert len(note.read_text().splitlines()) == 2


# ------------------------------------------------------------------------------ SIGTERM from outside


def test_train_stops_on_a_real_sigterm_with_a_fresh_checkpoint_and_resumes(root, tmp_path):
    """What a cluster does at a time limit: SIGTERM from outside, mid-run. The process must finish its step,
    write last.pt there (epoch-end saves are spaced an hour apart here, so any newer last.pt is the stop's),
    exit 143 with the message, and `--resume` must finish the run. 40 epochs: the stop comes after the 3rd, and the
    37 left (~2 s) are the margin for a test process held off a loaded CPU while the run goes on."""
    run = tmp_path / "run"
    args = ["train", "--data", str(root), "--out", str(run), "--model", "test_resnet", "--img-size", "16",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "--epochs", "40", "train.tensorboard=false",
            "train.threads=1", "train.save_interval_s=3600", "train.eval_every=100"]
    e = env(tmp_path / "note.txt")
    proc = fork.start(lambda: fork.console(*args), env=e, stdout=fork.PIPE, stderr=fork.STDOUT, text=True, cwd=REPO)
    log = run / "log.jsonl"
    while proc.poll() is None and (not log.is_file() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "stopped by SIGTERM after a whole step" in out and "--resume" in out
    epoch, step, g = position(run)
    assert g >= 3 * 5 and g < 40 * 5  # past the 3 logged epochs (the first epoch's last.pt is step 5)
    rows = log_rows(run)
    out = finished(args + ["--resume"], tmp_path / "note.txt")
    assert resumed_at(out) == g
    assert position(run) == (40, 0, 40 * 5)
    assert log_rows(run)[: len(rows)] == rows and [r["epoch"] for r in log_rows(run)] == list(range(1, 41))


# ------------------------------------------------------------------------------ TensorBoard after resume


def _tensorboard_loss(run: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("loss")]


def test_tensorboard_after_kills_and_resumes_holds_each_epoch_once(root, tmp_path):
    """The steps after the checkpoint are redone on resume: their first events must be purged (else the
    curves zig-zag back), and an epoch whose row the resume restored from last.pt must be there too."""
    run, note = tmp_path / "run", tmp_path / "kills.txt"
    # last.pt at the end of epoch 1 (the first epoch) and epoch 3 (the last) only: no val before the end,
    # no interval save
    args = [a for a in argv("train", root, run, "--epochs", "3", "train.eval_every=100", "train.save_interval_s=1000")
            if a not in ("train.save_every_steps=1", "train.tensorboard=false")]
    killed(args, note, kill_after_save=1)  # epoch 1's last.pt is written, its row and event are not
    killed(args + ["--resume"], note, kill_mid_write=1)  # epoch 2 is logged, epoch 3's last.pt is torn
    finished(args + ["--resume"], note)  # redoes epochs 2 and 3 from epoch 1's last.pt
    rows = log_rows(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    events = _tensorboard_loss(run)
    assert [step for step, _ in events] == [1, 2, 3]
    assert [v for _, v in events] == pytest.approx([r["loss"] for r in rows], rel=1e-6)


def test_a_resume_in_the_same_second_names_its_event_file_after_the_last_one(tmp_path, monkeypatch):
    """TensorBoard sorts event files by name (second, host, pid): a resume opened in the second of the writer before
    it, with a smaller pid, sorted first, and the older file's purge removed the resume's later epochs (a flaky
    test showed it). The resume waits into the next second; a file named by a clock far ahead is not waited for."""
    from fewshot.train import tensorboard_log

    slept: list[float] = []
    monkeypatch.setattr(tensorboard_log.time, "sleep", slept.append)
    now = 1_800_000_000.25
    monkeypatch.setattr(tensorboard_log.time, "time", lambda: now)
    folder = tmp_path / "tensorboard"
    folder.mkdir()
    tensorboard_log.wait_for_a_later_event_file_second(folder)  # no event file yet
    (folder / "events.out.tfevents.1799999990.host.9.0").write_bytes(b"")
    tensorboard_log.wait_for_a_later_event_file_second(folder)  # an older second
    assert slept == []
    (folder / "events.out.tfevents.1800000000.host.99999.0").write_bytes(b"")
    tensorboard_log.wait_for_a_later_event_file_second(folder)
    assert slept == [pytest.approx(0.75)]
    (folder / "events.out.tfevents.1800003600.host.9.0").write_bytes(b"")  # an hour ahead: not waited for
    tensorboard_log.wait_for_a_later_event_file_second(folder)
    assert slept == [pytest.approx(0.75)]
