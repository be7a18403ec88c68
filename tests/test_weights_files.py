"""Weights files from elsewhere given to `--weights` (and `fewshot eval`): a file that loads safely but is not what
it seems (int keys, a fake fewshot checkpoint, a TorchScript archive, a URL) gets one paragraph naming the file and
what to give instead, with exit status 2, never a traceback; `fewshot probe` says how many weights it loaded."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fewshot.errors import CheckpointError
from fewshot.models.backbone import create_backbone
from helpers.checks import run_main
from helpers.tiny import build_digits

FS = "fewshot-checkpoint"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("weights-files-data"))


def _state() -> dict:
    return {k: v.clone().contiguous() for k, v in create_backbone("test_resnet", img_size=16).state_dict().items()}


def _conv() -> str:
    return next(k for k, v in _state().items() if v.ndim == 4)


def probe_argv(root: Path, weights, *extra) -> list:
    return ["probe", "--weights", weights, "--model", "test_resnet", "--img-size", "16", "--data", root,
            "--epochs", "2", "--device", "cpu", *extra]


def train_argv(root: Path, out: Path, weights) -> list:
    return ["train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.threads=1",
            "--weights", weights]


MALFORMED = {  # what the hunt gave --weights: each was an AttributeError or KeyError traceback (exit 1)
    "intkeys": (lambda: {0: torch.zeros(3)}, "holds the key 0 (of type int)"),
    "tuplekeys": (lambda: {(1, 2): torch.zeros(3)}, "holds the key (1, 2) (of type tuple)"),
    "wrapped": (lambda: {"state_dict": {("a", 1): torch.zeros(3)}}, "holds the key ('a', 1)"),
    "fakefs": (lambda: {"format": FS, "kind": "moco"}, "incomplete fewshot checkpoint (missing: model)"),
    "intvalue": (lambda: {"format": FS, "kind": "supervised", "model": {"backbone." + _conv(): 5}},
                 "its model state holds a value of type int under 'backbone."),
    "emakey": (lambda: {"format": FS, "kind": "supervised", "model": {"backbone." + _conv(): torch.zeros(1)},
                        "ema": {3: torch.zeros(1)}}, "its ema state holds the key 3 (of type int)"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_but_safe_weights_are_user_errors(root, tmp_path, name):
    make, words = MALFORMED[name]
    path = tmp_path / f"{name}.pt"
    torch.save(make(), path)
    for argv in (probe_argv(root, path), train_argv(root, tmp_path / "run", path)):
        rc, _, err = run_main(*argv)
        assert rc == 2 and str(path) in err and words in err and "Traceback" not in err, (argv[0], err)
        assert len(err.strip().splitlines()) == 1, err  # one paragraph


def test_fewshot_checkpoint_check_is_the_one_eval_uses(tmp_path):
    """--weights and `fewshot eval` refuse a file that only claims the format in the same words."""
    from fewshot.models.weights import backbone_state_from
    from fewshot.train.checkpoint import load_checkpoint

    path = tmp_path / "fakefs.pt"
    torch.save({"format": FS, "kind": "moco"}, path)
    for read in (lambda: load_checkpoint(path), lambda: backbone_state_from(torch.load(path), path)):
        with pytest.raises(CheckpointError, match="incomplete fewshot checkpoint"):
            read()


def test_eval_of_plain_weights_names_the_commands_that_take_them(root, tmp_path):
    """eval said "use --weights", an option eval and predict do not have."""
    path = tmp_path / "export.safetensors"
    save_file(_state(), str(path))
    rc, _, err = run_main("eval", path, "--data", root, "--device", "cpu")
    assert rc == 2 and "not a fewshot checkpoint" in err, err
    assert f"fewshot probe --weights {path} --model" in err and f"fewshot train --weights {path}" in err, err
    assert "use --weights" not in err


@pytest.mark.parametrize("typed", ["https://x/y.pth", "hf-hub:timm/resnet18.a1_in1k"])
def test_a_url_or_hub_name_as_weights_is_named_as_typed_and_not_fetched(root, tmp_path, typed):
    """`https://x/y.pth` was "weights file not found: https:/x/y.pth" (a Path collapsed the //)."""
    for argv in (probe_argv(root, typed), train_argv(root, tmp_path / "run", typed)):
        rc, _, err = run_main(*argv)
        assert rc == 2 and f"'{typed}'" in err and "never downloads" in err and "give its path" in err, err
        assert "not found" not in err
    rc, _, err = run_main("eval", typed, "--data", root, "--device", "cpu")
    assert rc == 2 and f"'{typed}'" in err and "never downloads" in err, err


def _torchscript(path: Path, stored: bool = False) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script / save are deprecated: still what users have
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    if stored:  # torch.jit.save deflates its code; the same archive stored would pass the compression check
        data = path.read_bytes()
        src = path.with_suffix(".src")
        src.write_bytes(data)
        with zipfile.ZipFile(src) as a, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as b:
            for info in a.infolist():
                b.writestr(info.filename, a.read(info.filename))
    return path


@pytest.mark.parametrize("stored", [False, True])
def test_a_torchscript_file_is_named_as_one_and_never_loaded(root, tmp_path, monkeypatch, stored):
    """It was refused as "holds compressed members", which did not say what the file is or what to save."""
    from fewshot.models.weights import read_tensor_file

    path = _torchscript(tmp_path / "scripted.pt", stored)
    rc, _, err = run_main(*probe_argv(root, path))
    assert rc == 2 and str(path) in err and "TorchScript" in err and "torch.save(model.state_dict()" in err, err

    def no_load(*args, **kwargs):
        raise AssertionError("a TorchScript file was handed to a loader")

    monkeypatch.setattr(torch, "load", no_load)
    monkeypatch.setattr(torch.jit, "load", no_load)
    with pytest.raises(CheckpointError, match="TorchScript"):
        read_tensor_file(path)


def test_a_torch_save_file_is_not_taken_for_torchscript(tmp_path):
    from fewshot.models.weights_file import _torchscript_member, read_tensor_file

    path = tmp_path / "plain.pt"
    torch.save({"code.weight": torch.zeros(1), "constants.pkl": torch.ones(1)}, path)  # names as data, not members
    assert set(read_tensor_file(path)) == {"code.weight", "constants.pkl"}
    assert not any(_torchscript_member(n) for n in zipfile.ZipFile(path).namelist())


def test_probe_says_how_many_weights_it_loaded(root, tmp_path):
    """train said "(N of N weights)"; probe named only the file."""
    path = tmp_path / "backbone.safetensors"
    state = _state()
    save_file(state, str(path))
    n = sum(not k.endswith("num_batches_tracked") for k in state)
    rc, out, err = run_main(*probe_argv(root, path))
    assert rc == 0, err
    assert f"probe: test_resnet from weights {path} ({n} of {n} weights) at 16px" in out, out
