"""fewshot.cli.main called from a notebook whose torch state is not the shell's: a float64 default dtype and a caller
inside no_grad or inference_mode failed every model command with "internal error", and the data-quality warnings
said "once per process" went silent from the second call on. Each command now runs in the state it assumes, gives
the caller's back, and says what the same command says from the shell."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types

import pytest
import torch

from fewshot import process_state
from helpers.checks import run_main
from helpers.tiny import tiny_train_argv


def test_a_float64_default_dtype_trains_and_is_given_back(copy_root, tmp_path):
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        rc, _, err = run_main(*tiny_train_argv(copy_root, tmp_path / "run"))
        after = torch.get_default_dtype()
        failed, _, _ = run_main(*tiny_train_argv(tmp_path / "no-such-root", tmp_path / "run2"))
        after_failure = torch.get_default_dtype()
    finally:
        torch.set_default_dtype(before)
    assert rc == 0, err
    assert after == torch.float64
    assert failed == 2 and after_failure == torch.float64


GRAD_OFF = {
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
    "set_grad_enabled(False)": lambda: torch.set_grad_enabled(False),
}


@pytest.mark.parametrize("mode", list(GRAD_OFF))
def test_training_inside_a_callers_no_grad_works_and_gives_the_mode_back(copy_root, tmp_path, mode):
    with GRAD_OFF[mode]():
        rc, _, err = run_main(*tiny_train_argv(copy_root, tmp_path / "run"))
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    assert rc == 0, err
    assert not grad and inference == (mode == "inference_mode")
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_predict_inside_a_callers_inference_mode_still_works(copy_root, tmp_path):
    rc, _, err = run_main(*tiny_train_argv(copy_root, tmp_path / "run"))
    assert rc == 0, err
    with torch.inference_mode():
        rc, _, err = run_main("predict", tmp_path / "run", "--data", copy_root, "--out", tmp_path / "p.json",
                              "--device", "cpu", "--no-progress")
        assert torch.is_inference_mode_enabled()
    assert rc == 0, err


def test_data_quality_warnings_are_said_again_by_a_second_call(copy_root, dataset_names, tmp_path):
    """The shell says them on every run; a notebook's second call said none (its sets lasted for the process)."""
    first = dataset_names[0]
    (copy_root / first / "test" / "notes.txt").write_text("x")  # test_split: no prediction for it
    shutil.rmtree(copy_root / first / "val" / "3")  # warn_once: a class without val images
    bad = next((copy_root / first / "train").iterdir()) / "bad.png"
    bad.write_text("not an image")  # skipped: listed
    said = []
    for call in range(2):
        rc, _, err = run_main(*tiny_train_argv(copy_root, tmp_path / f"run{call}", "--skip-bad-images"))
        assert rc == 0, err
        said.append(err)
    for err in said:
        assert "ignoring 1 file(s) that are not images" in err and "notes.txt" in err, err
        assert err.count("no val images for 1 class(es)") == 1, err
        assert err.count("undecodable image(s)") == 1 and "bad.png" in err, err


@pytest.fixture
def told(monkeypatch):
    """A module with a said-once set, registered alone (the real modules' sets are left as they are)."""
    module = types.ModuleType("fdt_said_once_probe")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(process_state, "_SAID_ONCE", [])
    module.TOLD = process_state.said_once(module.__name__, "TOLD")
    return module


def test_said_once_lasts_one_command_with_its_nested_calls(told):
    told.TOLD.add("before")  # the library used directly
    with process_state.kept():
        assert not told.TOLD  # a command says it again
        told.TOLD.add("a")
        with process_state.kept():  # a call inside the command is part of it
            assert told.TOLD == {"a"}
            told.TOLD.add("b")
        assert told.TOLD == {"a", "b"}
    with process_state.kept():
        assert not told.TOLD


def test_said_once_clears_the_set_put_in_the_modules_place(told, monkeypatch):
    """A test's own set (monkeypatch) is the one the module uses: it is the one a command clears."""
    monkeypatch.setattr(told, "TOLD", {"earlier"})
    with process_state.kept():
        assert not told.TOLD


def test_kept_loads_no_torch():
    """kept() sets torch's state only where torch is loaded: a command that needs none does not pay its import."""
    code = ("import sys\nfrom fewshot import process_state\nwith process_state.kept():\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch loaded'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_callers_torch_state_is_back_after_an_interrupt():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            with pytest.raises(KeyboardInterrupt), process_state.kept():
                assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()
                raise KeyboardInterrupt
            assert torch.get_default_dtype() == torch.float64 and not torch.is_grad_enabled()
    finally:
        torch.set_default_dtype(before)
