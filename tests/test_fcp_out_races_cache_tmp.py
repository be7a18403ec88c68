"""hAX #3 and #5. probe/eval --out checked their destination at the start and wrote it at the end: a train that
finished into that folder meanwhile had its metrics.json replaced (exit 0 for both). A decode killed by SIGKILL
left its full-size temporary file in the cache for a day, outside data.cache_max_gb.

The other command's states are driven directly: its files written, or its lock held, from inside the probe's or
eval's work (a wrapped run_probe / evaluate_run); decoders are forks stopped at a pipe or killed."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import traceback
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest

from fewshot.data import cache
from fewshot.data.cache import cache_key, load_images
from fewshot.run_lock import LOCK_NAME, being_written, output_state, write_unless_changed
from helpers.checks import run_main, train_tiny
from helpers.tiny import grey_pngs as images

OTHER_PID = "999999"
RUN_METRICS = '{"mean_acc1": 40.0, "best_epoch": 3}\n'


@contextmanager
def held(folder: Path):
    """The folder's writer lock held as a train holds it (an open file of its own, its pid in the file)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, f"{OTHER_PID}\n".encode())
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def finished_train(folder: Path) -> None:
    """What a train leaves in its --out once it ends."""
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"ckpt")
    (folder / "config.yaml").write_text("model: {name: test_resnet}\n")
    (folder / "log.jsonl").write_text('{"epoch": 1}\n')
    (folder / "metrics.json").write_text(RUN_METRICS)


def probe_argv(root, out) -> list:
    return ["probe", "--weights", "", "--model", "test_resnet", "--img-size", "16", "--data", root, "--head",
            "prototype", "--device", "cpu", "--no-progress", "--out", out]


def after_work(monkeypatch, module, name: str, meanwhile) -> None:
    """``module.name`` (the command's work) calls ``meanwhile()`` after it, before the command writes its metrics."""
    real = getattr(module, name)

    def work(*args, **kwargs):
        metrics = real(*args, **kwargs)
        meanwhile()
        return metrics

    monkeypatch.setattr(module, name, work)


def during_probe(monkeypatch, meanwhile) -> None:
    import fewshot.eval.probe as probe

    after_work(monkeypatch, probe, "run_probe", meanwhile)


# ------------------------------------------------------------------------------------------- probe --out

def test_probe_leaves_a_run_that_finished_in_its_out_meanwhile_alone(digits_root, tmp_path, monkeypatch):
    """hAX #3: `probe --out PX & train --out PX`: both exited 0, and PX/metrics.json became the probe's."""
    px = tmp_path / "PX"
    during_probe(monkeypatch, lambda: finished_train(px))
    rc, out, err = run_main(*probe_argv(digits_root, px))
    assert rc == 2 and "a run was started there while the probe ran" in err, err
    assert "were not written" in err and str(px / "probe") in err and "Traceback" not in err, err
    assert "prototype" in out  # the table was printed before the refusal
    assert (px / "metrics.json").read_text() == RUN_METRICS


def test_probe_refuses_at_its_end_a_train_that_started_in_its_new_out(digits_root, tmp_path, monkeypatch):
    """A train started into PX while the probe ran (the folder new at the probe's start), and still running."""
    px = tmp_path / "PX"
    with ExitStack() as train:
        during_probe(monkeypatch, lambda: train.enter_context(held(px)))
        rc, _, err = run_main(*probe_argv(digits_root, px))
    assert rc == 2 and "is being written by another fewshot process" in err, err
    assert "The probe's metrics (the table above) were not written" in err, err
    assert not (px / "metrics.json").exists()


def test_probe_holds_its_existing_out_for_its_whole_run(digits_root, tmp_path, monkeypatch):
    """A train started into PX during the probe is refused at its start: its prepare_run_dir finds the folder
    being written (refuse_if_being_written), by this process."""
    px = tmp_path / "PX"
    px.mkdir()
    seen = []
    lock = px / LOCK_NAME
    during_probe(monkeypatch, lambda: seen.append((being_written(px), lock.is_file() and lock.read_text().strip())))
    rc, _, err = run_main(*probe_argv(digits_root, px))
    assert rc == 0, err
    assert seen == [(True, f"{os.getpid()} probe")], seen
    assert json.loads((px / "metrics.json").read_text())["protocol"] == "prototype (SimpleShot)"
    assert not being_written(px)  # given up as the command ended


def test_a_probe_at_the_very_start_of_a_train_is_refused(digits_root, tmp_path):
    """The train holds PX's lock and has written nothing else yet."""
    px = tmp_path / "PX"
    with held(px):
        rc, _, err = run_main(*probe_argv(digits_root, px))
    assert rc == 2 and f"--out {px} is being written by another fewshot process (pid {OTHER_PID})" in err, err
    assert "The probe's metrics" not in err and not (px / "metrics.json").exists()


# ------------------------------------------------------------------------------------------ eval --out

@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory) -> Path:
    return train_tiny(digits_root, tmp_path_factory.mktemp("fcp") / "run", epochs=1)


def live_copy(trained: Path, where: Path) -> Path:
    """A copy of the run as a train has it before its end: no metrics.json yet."""
    run = Path(shutil.copytree(trained, where))
    (run / "metrics.json").unlink()
    return run


def during_eval(monkeypatch, meanwhile) -> None:
    import fewshot.eval.predict as predict

    after_work(monkeypatch, predict, "evaluate_run", meanwhile)


def test_eval_out_onto_the_metrics_of_a_run_being_trained_is_refused(trained, digits_root, tmp_path):
    run = live_copy(trained, tmp_path / "rE")
    with held(run):
        rc, _, err = run_main("eval", run, "--data", digits_root, "--out", run / "metrics.json", "--device", "cpu")
    assert rc == 2 and f"a run is being trained in {run}" in err and "eval_metrics.json" in err, err
    assert not (run / "metrics.json").exists()


def test_eval_leaves_the_metrics_of_a_run_that_ended_meanwhile(trained, digits_root, tmp_path, monkeypatch):
    """hAX #3: rE/metrics.json became eval's output on another root (no best_epoch)."""
    run = live_copy(trained, tmp_path / "rE")
    during_eval(monkeypatch, lambda: (run / "metrics.json").write_text(RUN_METRICS))
    rc, out, err = run_main("eval", run, "--data", digits_root, "--out", run / "metrics.json", "--device", "cpu")
    assert rc == 2 and "was written by another command while eval ran" in err and "Traceback" not in err, err
    assert (run / "metrics.json").read_text() == RUN_METRICS and "accuracy" in out
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_eval_out_replaced_meanwhile_is_not_written_over(trained, digits_root, tmp_path, monkeypatch):
    out = tmp_path / "m.json"
    rc, _, err = run_main("eval", trained, "--data", digits_root, "--out", out, "--device", "cpu")
    assert rc == 0, err
    during_eval(monkeypatch, lambda: out.write_text('{"other": 1}'))
    rc, _, err = run_main("eval", trained, "--data", digits_root, "--out", out, "--device", "cpu")
    assert rc == 2 and "was written by another command while eval ran" in err, err
    assert out.read_text() == '{"other": 1}'


def test_write_unless_changed_never_replaces_what_appeared(tmp_path):
    def mine(path: Path) -> None:
        path.write_bytes(b"mine")

    new = tmp_path / "sub" / "new.json"
    before = output_state(new)
    assert before is None and write_unless_changed(new, mine, before) and new.read_bytes() == b"mine"
    later = tmp_path / "later.json"
    before = output_state(later)
    later.write_bytes(b"theirs")
    assert not write_unless_changed(later, mine, before) and later.read_bytes() == b"theirs"
    before = output_state(later)
    assert write_unless_changed(later, mine, before) and later.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["later.json", "sub"]  # no temp file left


# ------------------------------------------------------------------------------ the decode cache's temp files



def fork(child) -> int:
    """``child()`` in a forked process (exit 0 when it returns, 1 when it raises); its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        except BaseException:  # noqa: BLE001 - said on stderr, the exit status tells the test
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def temp_files(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_decode_killed_by_sigkill_leaves_a_file_the_next_build_deletes(tmp_path):
    """hAX #5: three kills left 3 x 197 MB beside the rebuilt entry, for a day."""
    paths, cache_dir = images(tmp_path), tmp_path / "cache"

    def killed_while_decoding():
        cache._decode_into = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        load_images(paths, 16, cache_dir, threads=1)

    assert exit_code(fork(killed_while_decoding)) == -signal.SIGKILL
    left = temp_files(cache_dir)
    assert len(left) == 1 and left[0].stat().st_size == 3 * 3 * 16 * 16
    got = load_images(paths, 16, cache_dir, threads=1)  # the same entry, built again
    assert bool(got.valid.all()) and temp_files(cache_dir) == []
    assert sorted(p.suffix for p in cache_dir.iterdir()) == [".json", ".u8"]


def test_a_live_decoders_file_is_never_deleted_however_old(tmp_path):
    """Two builds of one entry at once: the one that ends first prunes the folder while the other still decodes
    (its file aged past KEEP_TEMP_S: a long decode, or a file written only at its end); both end with the entry."""
    paths, cache_dir = images(tmp_path), tmp_path / "cache"
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()

    def paused_decoder():
        os.close(ready_r)
        os.close(go_w)
        real = cache._decode_into

        def decode(*args, **kwargs):
            os.write(ready_w, b"1")
            os.read(go_r, 1)  # until the test lets it go on
            return real(*args, **kwargs)

        cache._decode_into = decode
        got = load_images(paths, 16, cache_dir, threads=1)
        assert bool(got.valid.all())

    pid = fork(paused_decoder)
    os.close(ready_w)
    os.close(go_r)
    try:
        assert os.read(ready_r, 1) == b"1", "the decoder ended before decoding"
        (theirs,) = temp_files(cache_dir)
        day_ago = os.path.getmtime(cache_dir) - 25 * 3600
        os.utime(theirs, (day_ago, day_ago))
        mine = load_images(paths, 16, cache_dir, threads=1, max_gb=1e-9)  # the same key; a cap it is over
        assert theirs.exists() and temp_files(cache_dir) == [theirs]
    finally:
        os.write(go_w, b"1")
        code = exit_code(pid)
    assert code == 0
    assert temp_files(cache_dir) == [] and sorted(p.suffix for p in cache_dir.iterdir()) == [".json", ".u8"]
    again = load_images(paths, 16, cache_dir, threads=1)
    assert np.array_equal(again.images.numpy(), mine.images.numpy())


def test_a_file_without_bytes_is_left_to_its_decoder(tmp_path):
    """A decoder locks its file before giving it any size: an empty one may be a decoder's not yet locked."""
    paths, cache_dir = images(tmp_path), tmp_path / "cache"
    cache_dir.mkdir()
    key = cache_key(paths, 16, 1.0)
    empty = cache_dir / f"{key}.abc123{cache.HELD_SUFFIX}"
    empty.touch()
    (tmp_path / "other").mkdir()
    load_images(images(tmp_path / "other"), 16, cache_dir, threads=1)  # a new entry: the folder pruned
    assert empty.exists()


def test_temporary_files_count_toward_the_cache_cap(tmp_path):
    """data.cache_max_gb summed only the entries: a folder capped at 6 kB held 4.6 kB of entries and 10 kB of a
    build's temporary file, and no entry was pruned."""
    paths, cache_dir = images(tmp_path), tmp_path / "cache"
    cache_dir.mkdir()
    old = cache_dir / ("a" * 20 + ".u8")
    old.write_bytes(b"\0" * 2304)
    old.with_suffix(".json").write_text("{}")
    two_hours_ago = os.path.getmtime(cache_dir) - 2 * 3600
    os.utime(old, (two_hours_ago, two_hours_ago))
    building = cache_dir / f"{cache_key(paths[:1], 16, 1.0)}.recent01.tmp"  # another build's, fresh: kept
    building.write_bytes(b"\0" * 10_000)
    load_images(paths, 16, cache_dir, threads=1, max_gb=6e-6)  # a new entry of 2304 bytes
    assert building.exists() and not old.exists() and not old.with_suffix(".json").exists()
