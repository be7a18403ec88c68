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


# `python -m fewshot` whose main() says where descriptor 2 points as it starts and once it has returned: the
# process's torch, DataLoader workers and interpreter write there, whatever sys.stderr is
_SAYS_FD2 = """import os, sys
import fewshot.cli as cli
real = cli.main
def where():
    try:
        st, null = os.fstat(2), os.stat(os.devnull)
        return "/dev/null" if (st.st_dev, st.st_ino) == (null.st_dev, null.st_ino) else "another file"
    except OSError:
        return "closed"
def main(*args, **kwargs):
    print("descriptor 2:", where(), flush=True)
    try:
        return real(*args, **kwargs)
    finally:
        print("descriptor 2 after:", where(), flush=True)
cli.main = main
sys.argv = ["fewshot", *sys.argv[1:]]
raise SystemExit(cli.console_main())
"""


def _saying_fd2_without_stderr(*argv, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", _SAYS_FD2, *map(str, argv)], cwd=cwd, env=env, timeout=300,
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
    done = _saying_fd2_without_stderr("train", "--data", digits_root, "--out", tmp_path / "r", "--model",
                                      "test_resnet", "--img-size", "16", "--epochs", "1", "--batch-size", "8",
                                      "--device", "cpu", "train.threads=1", "train.tensorboard=false", cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    assert (tmp_path / "r" / "metrics.json").is_file()
    # closed, descriptor 2 went to the next file opened (a checkpoint, a JSON file), which then received what torch
    # or the interpreter writes to stderr: /dev/null holds its place, from the command's start to its end
    assert done.stdout.startswith(b"descriptor 2: /dev/null\n"), done.stdout
    assert done.stdout.endswith(b"descriptor 2 after: /dev/null\n"), done.stdout
    assert b"Traceback" not in done.stdout and b"epoch 1/1" not in done.stdout  # no progress line went to stdout


def test_a_reader_gone_points_stdout_at_dev_null_without_leaking_a_descriptor(monkeypatch, tmp_path):
    """`fewshot models | head`: stdout went to /dev/null through a descriptor that stayed open, one per call."""
    from fewshot import cli

    def reader_gone(args, extra):
        raise BrokenPipeError

    monkeypatch.setitem(cli.COMMANDS, "models", reader_gone)
    with open(tmp_path / "out.txt", "w") as out:
        monkeypatch.setattr(sys, "stdout", out)
        before = sorted(os.listdir("/proc/self/fd"))
        assert cli.main(["models"]) == 141
        assert sorted(os.listdir("/proc/self/fd")) == before
        null = os.stat(os.devnull)
        assert (os.fstat(out.fileno()).st_ino, os.fstat(out.fileno()).st_dev) == (null.st_ino, null.st_dev)
        monkeypatch.undo()


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
def test_repeats_that_defeat_repeated_augmentation_are_said_with_the_numbers():
    """data.repeats=1000 over 100 images trained every epoch on a single image; repeats equal to the batch filled
    every batch with copies of one image, and passed."""
    from fewshot.data.samplers import repeats_warning

    text = repeats_warning(100, 32, 1, 1000)
    assert "data.repeats=1000" in text and "100 training images" in text and "holds 1 distinct image," in text
    assert "each batch of 32 copies of one image (the last of 4)" in text and "data.repeats=31 or less" in text
    text = repeats_warning(100, 32, 1, 32)  # copies of one image fill every batch, beside 4 images an epoch
    assert "holds 4 distinct images, each batch of 32 copies of one image" in text, text
    text = repeats_warning(100, 32, 1, 40)  # runs of 40 straddle some batches: only those are copies of one image
    assert "2 of its 4 batches (of 32, the last of 4) all copies of one image" in text, text
    assert "each batch" not in text
    text = repeats_warning(3, 64, 1, 3)
    assert "holds 1 distinct image, its one batch 3 copies of one image" in text and "data.repeats=2 or" in text
    text = repeats_warning(5, 2, 1, 3)  # train.batch_size=2: pairs of copies
    assert "1 of its 2 batches (of 2) all copies" in text and "data.repeats=1 avoids" in text, text
    assert "\n" not in text
    # the course configs' repeats=3 on a few-shot training set, and the largest value the warning gives
    for args in [(5, 64, 1, 3), (4, 64, 1, 3), (100, 32, 1, 31), (100, 128, 2, 49), (1, 64, 1, 3), (100, 32, 1, 1),
                 (100, 8, 2, 7)]:
        assert repeats_warning(*args) is None, args


def test_repeats_are_judged_by_each_processs_batch_under_ddp():
    """Each DDP process normalises its own share of a global batch (train.batch_size): repeats of 8 on 8 per process
    x 2 filled every batch of both processes with one image and said nothing, as the global batch of 16 was
    judged; repeats of 16 were advised down to 15, which still left every batch of rank 0 one image."""
    from fewshot.data.samplers import epoch_batches, repeats_warning

    for repeats in (8, 16):
        text = repeats_warning(100, 8, 2, repeats)
        assert "each process's batch (8 per process x 2 processes) copies of one image" in text, text
        assert "(the last step's 2 and 2 images)" in text and "data.repeats=7 or less" in text, text
        for rank in range(2):  # what the plan trains: every full batch of each process is one image
            batches = epoch_batches(100, 8, 0, 1, kind="repeat", rank=rank, world=2, repeats=repeats)
            assert all(len(set(b.tolist())) == 1 for b in batches if len(b) == 8)
    # 7 is what it advises: every process's batch of 8 then holds 2 images at least
    assert all(len(set(b.tolist())) > 1 for r in range(2)
               for b in epoch_batches(100, 8, 0, 1, kind="repeat", rank=r, world=2, repeats=7) if len(b) == 8)
    text = repeats_warning(100, 8, 2, 12)
    assert "10 of its 14 process batches (8 per process x 2 processes) all copies of one image" in text, text
    # 100 images on 2 processes of 128: one step of 50 and 50, so repeats of 51 leave rank 0's batch one image
    text = repeats_warning(100, 128, 2, 51)
    assert "1 of its 2 process batches of its one step (50 and 50 images on its 2 processes)" in text, text
    assert "data.repeats=49 or less avoids that (fewer repeats than the 50 images of a process's batch)" in text
    # the last global batch of 3 is split 2 + 1 and dropped (a share under 2): it is no "last of 3"
    text = repeats_warning(99, 8, 2, 16)
    assert "copies of one image." in text and "last" not in text, text


def test_repeats_with_a_batch_of_one_name_the_images_only():
    """A batch of 1 is one image whatever the repeats: the advice said "fewer than the images and than a batch" with
    data.repeats=99, and named no batch."""
    from fewshot.data.samplers import repeats_warning

    for world in (1, 2):
        text = repeats_warning(100, 1, world, 100)
        assert "holds 1 distinct image. data.repeats=99 or less avoids that (fewer repeats than the 100 images)," \
            in text, text
        assert "batch" not in text
    assert repeats_warning(100, 1, 1, 99) is None


def test_repeats_beyond_an_epoch_are_warned_once_and_never_refused(monkeypatch, capsys):
    """Once a process with the data's other warnings (layout.warn_once: stderr, rank 0), not once an epoch."""
    from fewshot.data import samplers, warn_once

    monkeypatch.setattr(warn_once, "_TOLD_GAPS", set())
    for epoch in range(3):
        order = torch.cat(samplers.epoch_batches(100, 32, epoch, 1, kind="repeat", repeats=1000)).tolist()
        assert len(order) == 100 and len(set(order)) == 1  # what was asked for, trained as asked
    err = capsys.readouterr().err
    assert err.count("warning: data.repeats=1000") == 1, err
    samplers.epoch_batches(100, 32, 0, 1, kind="shuffle", repeats=1000)  # repeats only for repeat
    samplers.epoch_batches(100, 32, 0, 1, kind="repeat", repeats=3)
    monkeypatch.setattr(warn_once, "_TOLD_GAPS", set())
    monkeypatch.setenv("RANK", "1")  # torchrun's other processes plan the same epochs: rank 0 alone says it
    monkeypatch.setenv("WORLD_SIZE", "2")  # one process ignores RANK, as init_distributed does
    samplers.epoch_batches(100, 16, 0, 1, kind="repeat", rank=1, world=2, repeats=1000)
    assert capsys.readouterr() == ("", "")


def _five_train_images(root: Path) -> Path:
    """ROOT/digits with 5 classes of 1 training image each: a normal few-shot training set."""
    import json
    import shutil

    from tests.helpers.tiny import build_digits

    build_digits(root, shots=1)
    digits = root / "digits"
    for split in ("train", "val"):
        for name in "56789":
            shutil.rmtree(digits / split / name)
    labels = json.loads((digits / "test_labels.json").read_text())
    for name in [k for k, v in labels.items() if v >= 5]:
        (digits / "test" / f"{name}.png").unlink()
        del labels[name]
    (digits / "test_labels.json").write_text(json.dumps(labels))
    return root


def test_a_course_config_trains_on_five_images_and_warns_of_repeats_only_beyond_them(tmp_path, monkeypatch):
    """configs/course_*.yaml say data.sampler=repeat with the default repeats=3: refused on 5 training images (an
    epoch of 2 of them), a normal few-shot set."""
    from fewshot.data import warn_once

    monkeypatch.setattr(warn_once, "_TOLD_GAPS", set())
    root = _five_train_images(tmp_path / "data")
    config = Path(__file__).resolve().parents[1] / "configs" / "course_resnet50.yaml"
    argv = ["train", "--config", config, "--data", root, "--model", "test_resnet", "--img-size", "16", "--device",
            "cpu", "--no-progress", "train.tensorboard=false", "train.threads=1", "sched.warmup_epochs=0"]
    rc, out, err = run_main(*argv, "--out", tmp_path / "r", "--epochs", "1")
    assert rc == 0, err
    assert "5 train" in out and "data.repeats" not in out + err and (tmp_path / "r" / "metrics.json").is_file()
    rc, out, err = run_main(*argv, "--out", tmp_path / "r2", "--epochs", "2", "data.repeats=5")
    assert rc == 0, err
    assert err.count("warning: data.repeats=5 with data.sampler=repeat") == 1, err
    assert "5 training images, so it holds 1 distinct image" in err and "data.repeats=4 or less" in err, err


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
