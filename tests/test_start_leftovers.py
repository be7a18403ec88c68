"""A `fewshot train` / `pretrain` whose start fails (a bad --model, a missing weights file) leaves no run folder it
made: the leftover config.yaml and lock file used to make the corrected command refuse (--resume read the bad
config back) or need another --out. Folders and files that were there before the start stay."""

from __future__ import annotations

import threading

from fewshot.run_lock import LOCK_NAME, lock_run_dir, release_all
from helpers.checks import run_main

FAST = ("--datasets", "digits", "--img-size", "32", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress",
        "train.tensorboard=false")


def train(root, out, *extra):
    return run_main("train", "--data", root, "--out", out, *FAST, *extra)


def test_a_bad_model_leaves_no_run_folder_and_the_corrected_command_starts(digits_root, tmp_path):
    run = tmp_path / "new" / "deeper" / "run"
    rc, _, err = train(digits_root, run, "--model", "no_such_model_xyz")
    assert rc == 2 and "no_such_model_xyz" in err, err
    assert not (tmp_path / "new").exists()  # RUN and the parents --out made are gone
    # the corrected command, even with --resume (it read the leftover config's bad model back and refused)
    rc, _, err = train(digits_root, run, "--model", "test_resnet", "--resume")
    assert rc == 0, err
    assert (run / "metrics.json").is_file()


def test_a_failed_start_removes_a_folder_out_made_on_its_way(digits_root, tmp_path):
    """`--out x/../run` with no x: the start made x, which the normalised path (run) does not name, and left it."""
    rc, _, err = train(digits_root, tmp_path / "x" / ".." / "run", "--model", "no_such_model_xyz")
    assert rc == 2 and "no_such_model_xyz" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_start_through_a_link_and_dotdot_undoes_the_folder_written(digits_root, tmp_path):
    """A review: `--out link/../run` writes run beside the link's target, but the undo normalised the text (run
    beside the link) and left config.yaml and the lock in the real folder. The undo now looks where it wrote."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "b")
    rc, _, err = train(digits_root, tmp_path / "link" / ".." / "run", "--model", "no_such_model_xyz")
    assert rc == 2 and "no_such_model_xyz" in err, err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]  # no a/run left with config.yaml, lock
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "link"]


def test_a_failed_start_into_x_dotdot_run_keeps_run_and_removes_x(digits_root, tmp_path):
    """`x/../run` with run there (the user's folder, with a file) and no x: the start made x, which goes again;
    run keeps its file."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    rc, _, err = train(digits_root, tmp_path / "x" / ".." / "run", "--model", "no_such_model_xyz")
    assert rc == 2 and "no_such_model_xyz" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


def test_a_missing_weights_file_leaves_the_users_folder_as_it_was(digits_root, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    rc, _, err = train(digits_root, mine, "--model", "test_resnet", "--weights", tmp_path / "nope.pt")
    assert rc == 2 and "nope.pt" in err, err
    assert mine.is_dir() and list(mine.iterdir()) == []  # made by the user: kept, and emptied of what the start wrote


def test_what_was_there_before_the_start_stays(digits_root, tmp_path):
    """An earlier start's leftovers (a run's config.yaml, its lock file) are not this start's to remove."""
    run = tmp_path / "run"
    rc, _, _ = train(digits_root, run, "--model", "test_resnet", "train.epochs=1")
    assert rc == 0
    for p in list(run.iterdir()):  # what a start that failed in an older fewshot left: config + lock only
        if p.name not in ("config.yaml", LOCK_NAME):
            __import__("shutil").rmtree(p) if p.is_dir() else p.unlink()
    before = (run / "config.yaml").read_text()
    rc, _, err = train(digits_root, run, "--model", "no_such_model_xyz")
    assert rc == 2, err
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "config.yaml"]
    assert (run / "config.yaml").read_text() != before  # rewritten by the failed start, which the next accepts
    rc, _, err = train(digits_root, run, "--model", "test_resnet")
    assert rc == 0, err


def test_a_folder_another_writer_holds_is_left_alone(digits_root, tmp_path):
    """Refused because another command writes there: nothing of that writer's is removed."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {}\ndata: {}\noptim: {}\ntrain: {}\n")
    thread = threading.Thread(target=lock_run_dir, args=(run,))  # library code in another thread: another owner
    thread.start()
    thread.join()
    try:
        rc, _, err = train(digits_root, run, "--model", "test_resnet")
        assert rc == 2 and "being written" in err, err
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "config.yaml"]
    finally:
        release_all()


def test_pretrain_with_a_bad_model_leaves_no_run_folder(digits_root, tmp_path):
    run = tmp_path / "prun"
    rc, _, err = run_main("pretrain", "--data", digits_root, "--out", run, "--model", "no_such_model_xyz",
                          "--device", "cpu", "--no-progress")
    assert rc == 2 and "no_such_model_xyz" in err, err
    assert not run.exists()


def test_a_lock_file_removed_while_waiting_for_it_is_locked_anew(tmp_path, monkeypatch):
    """A failed start removes its lock file while holding it; a command already waiting on that file then got a
    lock on a nameless file, and the next command locked a new file of the same name: two writers in one run.
    The waiter now checks that its file still has the name, and locks the name anew where not."""
    import os

    import fewshot.run_lock as run_lock

    real = run_lock._flock_retrying
    calls = []

    def holder_undoes_itself_meanwhile(fd):
        calls.append(fd)
        if len(calls) == 1:
            os.unlink(tmp_path / LOCK_NAME)  # as unlock_and_remove, while this command waited
        return real(fd)

    monkeypatch.setattr(run_lock, "_flock_retrying", holder_undoes_itself_meanwhile)
    try:
        assert lock_run_dir(tmp_path) is True and len(calls) == 2
        held = run_lock._HELD[str(tmp_path.resolve())][0]
        assert os.fstat(held).st_ino == os.stat(tmp_path / LOCK_NAME).st_ino
    finally:
        release_all()


def test_a_start_without_a_lock_undoes_nothing(digits_root, tmp_path, monkeypatch):
    """Where no lock can be taken (a file system without locks), another command may be writing the folder: a
    failed start must not remove what it finds new there."""
    import fewshot.train.run_dir as run_dir

    monkeypatch.setattr(run_dir, "lock_run_dir", lambda out: False)
    run = tmp_path / "run"
    rc, _, err = train(digits_root, run, "--model", "no_such_model_xyz")
    assert rc == 2 and (run / "config.yaml").is_file(), err


def test_an_out_through_a_loop_of_links_is_a_user_error(digits_root, tmp_path):
    """A review: resolve() raises RuntimeError on a loop of symbolic links, reported as an internal error."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    rc, _, err = train(digits_root, tmp_path / "a" / "run", "--model", "test_resnet")
    assert rc == 2 and "loop of symbolic links" in err and "internal error" not in err, err
    rc, _, err = run_main("run", "--data", digits_root, "--out", tmp_path / "a" / "run", "--budget-minutes", "1",
                          "--model", "test_resnet", "--device", "cpu", "--no-progress")
    assert rc == 2 and "loop of symbolic links" in err, err
