"""fewshot called from Python (`fewshot.cli.main` in a notebook): commands in one process neither share run
folders nor leave their settings behind, and the caller's arguments may be paths and numbers."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from fewshot.cli import main
from fewshot.errors import UserError
from fewshot.run_lock import lock_run_dir, lock_scope
from helpers.checks import run_main
from helpers.tiny import build_digits


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("api-data"))


def train_argv(root, out, *extra) -> list:
    return ["train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", 16, "--epochs", 1,
            "--batch-size", 8, "--device", "cpu", "--no-progress", "train.tensorboard=false", *extra]


def in_another_command(fn):
    """fn() run as another in-process command would (its own lock scope, another thread); its exception."""
    caught = []

    def body():
        with lock_scope():
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - handed back to the test
                caught.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return caught[0] if caught else None


def test_a_folder_locked_by_one_command_is_refused_to_another_of_the_same_process(tmp_path):
    with lock_scope():
        lock_run_dir(tmp_path)
        lock_run_dir(tmp_path)  # the same command again (a `run` and its stages): not a second writer
        refused = in_another_command(lambda: lock_run_dir(tmp_path))
        assert isinstance(refused, UserError) and "this Python process" in str(refused)
    assert in_another_command(lambda: lock_run_dir(tmp_path)) is None  # given up when its command ended


def test_a_command_ending_keeps_the_locks_of_another(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    with lock_scope():
        lock_run_dir(first)
        assert in_another_command(lambda: lock_run_dir(second)) is None  # took second and ended
        assert isinstance(in_another_command(lambda: lock_run_dir(first)), UserError)  # first is still held


@pytest.fixture
def caller_settings():
    """The caller's own settings: 3 threads (not the run's 1, whatever this machine's default), deterministic
    mode off (earlier tests may have left it on: run_finetune called directly sets it)."""
    was = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(3)
    torch.use_deterministic_algorithms(False)
    yield
    torch.set_num_threads(was[0])
    torch.use_deterministic_algorithms(was[1], warn_only=was[2])


def test_a_run_leaves_the_callers_threads_determinism_and_random_state(root, tmp_path, caller_settings):
    torch.manual_seed(1234)
    random.seed(1234)
    expected = torch.rand(3), random.random()
    torch.manual_seed(1234)
    random.seed(1234)
    rc, _, err = run_main(*train_argv(root, tmp_path / "r", "train.threads=1", "train.deterministic=true",
                                      "train.seed=7"))
    assert rc == 0, err
    assert torch.get_num_threads() == 3
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_paths_and_numbers_are_accepted_as_arguments(root, tmp_path, capsys):
    assert main(train_argv(root, tmp_path / "r")) == 0  # pathlib.Path and int, as a Python caller has them
    assert (tmp_path / "r" / "checkpoints" / "best.pt").is_file()


def test_settings_come_back_when_the_last_of_overlapping_commands_returns(caller_settings):
    """Two commands in two threads: the first to return put the caller's settings back under the other."""
    from fewshot import process_state

    with process_state.kept():
        torch.set_num_threads(1)  # command A's setting
        with process_state.kept():  # command B starts while A runs, and returns first
            pass
        assert torch.get_num_threads() == 1  # A still runs with its own
    assert torch.get_num_threads() == 3


def test_a_command_adopts_a_lock_that_library_code_took_outside_any_command(tmp_path):
    """run_finetune called directly, then main(... --resume) on its folder: refused as a command still running."""
    lock_run_dir(tmp_path)  # no command: owner 0
    with lock_scope():
        lock_run_dir(tmp_path)
    assert in_another_command(lambda: lock_run_dir(tmp_path)) is None  # given up with the adopting command


def test_a_lock_that_library_code_holds_in_another_thread_is_not_taken_over(tmp_path):
    """run_finetune called directly in a thread still running: a command in another thread is refused."""
    held, release = threading.Event(), threading.Event()

    def library():
        lock_run_dir(tmp_path)
        held.set()
        release.wait(30)

    thread = threading.Thread(target=library)
    thread.start()
    held.wait(30)
    try:
        assert isinstance(in_another_command(lambda: lock_run_dir(tmp_path)), UserError)
    finally:
        release.set()
        thread.join()
