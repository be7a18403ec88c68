"""A closed stderr, an --out that names a descriptor or device, data.repeats beyond an epoch, control characters
in `fewshot models`, empty FEWSHOT_* variables and device names torch cannot parse (hunt fBG)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fewshot
from fewshot.errors import UserError
from tests.helpers.checks import run_main

SRC = str(Path(fewshot.__file__).resolve().parents[1])


def _without_stderr(*argv, cwd) -> subprocess.CompletedProcess:
    """`python -m fewshot ARGV 2>&-`: descriptor 2 closed, so Python starts with sys.stderr None."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "fewshot", *map(str, argv)], cwd=cwd, env=env, timeout=300,
                          stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(2))


def _free_descriptor() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


# ---------------------------------------------------------------------------------------------- closed stderr
def test_a_command_with_stderr_closed_trains_and_lists_without_progress(digits_root, tmp_path):
    """Every command that showed progress ended in AttributeError ('NoneType' has no 'write'), exit 1, and train
    left a half-started run folder."""
    done = _without_stderr("models", "resnet18", "--limit", "1", cwd=tmp_path)
    assert done.returncode == 0 and b"resnet18" in done.stdout and b"Traceback" not in done.stdout, done.stdout
    done = _without_stderr("train", "--data", digits_root, "--out", tmp_path / "r", "--model", "test_resnet",
                           "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                           "train.threads=1", "train.tensorboard=false", cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert (tmp_path / "r" / "metrics.json").is_file()
    assert b"Traceback" not in done.stdout and b"epoch 1/1" not in done.stdout  # no progress line went to stdout


def test_without_stderr_in_process_messages_go_nowhere_not_into_stdout(monkeypatch, tmp_path, capsys):
    """print(file=None) writes to stdout: an error said there would mix into --out /dev/stdout's predictions."""
    from fewshot.cli import main

    monkeypatch.setattr(sys, "stderr", None)
    rc = main(["eval", tmp_path / "no-run", "--data", tmp_path / "no-data"])
    assert rc == 2
    assert sys.stderr is None  # given back as it was
    assert capsys.readouterr().out == ""


def test_progress_without_a_stderr_iterates_silently(monkeypatch):
    from fewshot import progress

    monkeypatch.setattr(sys, "stderr", None)
    bar = progress.track(range(5), desc="x")
    assert list(bar) == list(range(5))
    plain = progress.PlainProgress(range(3), desc="y", heartbeat_s=0.0)  # due at every step
    assert list(plain) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------- descriptors
@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_an_out_naming_a_closed_descriptor_is_refused_before_the_work(command, digits_root, tmp_path, monkeypatch):
    """eval evaluated everything, then failed in a FileNotFoundError traceback (exit 1): /dev/fd passed as a
    writable folder."""
    import fewshot.eval.predict as predict

    def no_work(*args, **kwargs):
        raise AssertionError("the work began")

    monkeypatch.setattr(predict, "evaluate_run", no_work)
    monkeypatch.setattr(predict, "predict_run", no_work)
    fd = _free_descriptor()
    argv = {"eval": ["eval", tmp_path / "run", "--data", digits_root],
            "predict": ["predict", tmp_path / "run", "--data", digits_root],
            "export": ["export", tmp_path / "run"]}[command]
    rc, _, err = run_main(*argv, "--out", f"/dev/fd/{fd}")
    assert rc == 2, err
    assert f"--out /dev/fd/{fd}" in err and f"descriptor {fd} is not open" in err and "Traceback" not in err, err


def test_a_folder_inside_the_descriptor_folder_is_refused():
    from fewshot.utils import check_output_dir

    with pytest.raises(UserError, match="nothing can be created in /dev/fd"):
        check_output_dir(f"/dev/fd/{_free_descriptor()}/sub")
    with pytest.raises(UserError, match="nothing can be created"):
        check_output_dir(f"/proc/self/fd/{_free_descriptor()}")


def test_an_open_descriptor_is_still_an_output(tmp_path):
    from fewshot.utils import check_output_file, write_json

    fd = os.open(tmp_path / "log.json", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        assert check_output_file(f"/dev/fd/{fd}") == Path(f"/dev/fd/{fd}")
        write_json(Path(f"/dev/fd/{fd}"), {"a": 1}, follow_links=True)
    finally:
        os.close(fd)
    assert (tmp_path / "log.json").read_text() == '{\n  "a": 1\n}\n'


def test_unknown_mode_into_a_device_writes_no_routing_file_beside_it(digits_root, tmp_path, monkeypatch):
    """`--out /dev/stdout --mode unknown` created /dev/stdout.routing.json: a device has no folder of the user's.
    The note comes before the prediction work."""
    import fewshot.eval.predict as predict

    said_before = []

    def fake_predict(*args, **kwargs):
        said_before.append("routing" in sys.stderr.getvalue())
        return {"n_parameters": 1, "digits": {"0": 1}}, {"digits": {"0": "digits"}}

    monkeypatch.setattr(predict, "predict_run", fake_predict)
    device = tmp_path / "null"
    device.symlink_to(os.devnull)  # a device by a name whose folder is ours: a derived file would show up here
    rc, out, err = run_main("predict", tmp_path / "run", "--data", digits_root, "--out", device, "--mode", "unknown")
    assert rc == 0, err
    assert said_before == [True]
    assert f"--out {device} is a stream or device" in err and "is not written" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]
    rc, _, err = run_main("predict", tmp_path / "run", "--data", digits_root, "--out", device, "--mode", "known")
    assert rc == 0 and "stream or device" not in err, err


# ---------------------------------------------------------------------------------------------- data.repeats
def test_repeats_beyond_an_epoch_are_refused_with_the_numbers():
    """data.repeats=1000 over 100 images trained every epoch on a single image."""
    from fewshot.data.samplers import epoch_batches, most_repeats

    with pytest.raises(UserError) as caught:
        epoch_batches(100, 32, 0, 1, kind="repeat", repeats=1000)
    message = str(caught.value)
    assert "data.repeats=1000" in message and "100 training" in message and "train on 1 of them" in message
    assert "data.repeats=32 or less" in message
    assert most_repeats(100, 32) == 32 and most_repeats(100, 256) == 50 and most_repeats(1, 8) == 1
    order = torch.cat(epoch_batches(100, 32, 0, 1, kind="repeat", repeats=32)).tolist()
    assert len(order) == 100 and len(set(order)) >= 2
    with pytest.raises(UserError, match="data.repeats=50 or less"):
        epoch_batches(100, 128, 0, 1, kind="repeat", repeats=51, world=2)  # the global batch: 256
    assert len(epoch_batches(100, 32, 0, 1, kind="shuffle", repeats=1000)) == 4  # repeats only for repeat


def test_train_refuses_repeats_beyond_an_epoch_before_the_run_folder(digits_root, tmp_path):
    rc, _, err = run_main("train", "--data", digits_root, "--out", tmp_path / "r", "--model", "test_resnet",
                          "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
                          "train.tensorboard=false", "data.sampler=repeat", "data.repeats=1000")
    assert rc == 2 and "data.repeats=1000" in err and "data.repeats=8 or less" in err, err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------- models
def test_models_escapes_control_characters_of_the_pattern():
    from fewshot.models.catalog import list_models

    text = list_models("re\x1b[31msnet")
    assert "\x1b" not in text and "\\x1b" in text
    text = list_models("re\x1bsnet.a\x1b]0;t\x07b")  # the tag note names the pattern too
    assert "\x1b" not in text and "\x07" not in text and "names pretrained weights" in text


# ---------------------------------------------------------------------------------------------- environment
@pytest.mark.parametrize("name", ["FEWSHOT_MALLOC_TUNE", "FEWSHOT_OMP_WAIT", "FEWSHOT_CPU_BF16"])
def test_an_empty_fewshot_variable_counts_as_unset(name, monkeypatch):
    from fewshot.runtime import check_environment

    monkeypatch.setenv(name, "")
    check_environment()
    monkeypatch.setenv(name, "passiv")
    with pytest.raises(UserError, match=f"{name}='passiv'"):
        check_environment()


# ---------------------------------------------------------------------------------------------- devices
def test_device_names_torch_cannot_parse_are_refused_by_name(monkeypatch):
    """With CUDA available `train.device=cuda:x` reached torch.device: a RuntimeError, an internal error."""
    from fewshot.utils import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for name in ("cuda:x", "cudafoo", "cuda:01", "gpu"):
        with pytest.raises(UserError, match=f"unknown device '{name}' \\(--device / train.device\\)"):
            resolve_device(name)
    with pytest.raises(UserError, match="'cuda:2'.*2 CUDA GPU"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="device 'cuda:0' was asked for \\(--device\\), but no CUDA GPU"):
        resolve_device("cuda:0", "--device")


def test_train_device_typo_is_a_user_error(digits_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    rc, _, err = run_main("train", "--data", digits_root, "--out", tmp_path / "r", "--model", "test_resnet",
                          "--img-size", "16", "--epochs", "1", "--no-progress", "train.device=cuda:x")
    assert rc == 2 and "unknown device 'cuda:x'" in err and "internal error" not in err, err
