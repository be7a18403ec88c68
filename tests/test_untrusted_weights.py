"""Weights whose values are no weights (NaN, int, complex), float8 exports, a small file naming a giant model, and
the messages around them: each refused (exit 2, naming the file and the first bad tensor) or loaded, never a crash
or a silent cast."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file

from fewshot.errors import CheckpointError
from fewshot.models.backbone import create_backbone
from fewshot.models.weights import load_backbone_weights
from helpers.checks import run_main
from helpers.tiny import build_digits


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("weights-data"))


@pytest.fixture(scope="module")
def run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights-run") / "run"
    rc, _, err = run_main("train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16",
                          "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
                          "train.tensorboard=false", "train.threads=1")
    assert rc == 0, err
    return out


def _altered(run, path, change):
    """The run's best.pt with ``change`` applied to its loaded state (ema when kept), saved at ``path``."""
    ck = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    field = "ema" if ck.get("ema") is not None else "model"
    change(ck[field])
    torch.save(ck, path)
    return path


def _nan(state):
    for v in state.values():
        if v.is_floating_point():
            v.fill_(float("nan"))


def _int_conv(state):
    k = next(k for k, v in state.items() if v.ndim == 4)
    state[k] = state[k].to(torch.int64)


def _complex_conv(state):
    k = next(k for k, v in state.items() if v.ndim == 4)
    state[k] = state[k].to(torch.complex64)


@pytest.mark.parametrize("change, words", [(_nan, "NaN or infinite"), (_int_conv, "file dtype int64 vs model"),
                                           (_complex_conv, "file dtype complex64 vs model")])
@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_bad_values_in_a_checkpoint_are_refused(run, root, tmp_path, change, words, command):
    path = _altered(run, tmp_path / "bad.pt", change)
    out = tmp_path / ("o.safetensors" if command == "export" else "o.json")
    argv = {"predict": ["predict", path, "--data", root, "--out", out, "--device", "cpu"],
            "eval": ["eval", path, "--data", root, "--device", "cpu"],
            "export": ["export", path, "--out", out]}[command]
    rc, _, err = run_main(*argv)
    assert rc == 2 and str(path) in err and words.split()[0] in err, err
    assert ("NaN or infinite" in err) if change is _nan else ("dtype" in err and words.split()[2] in err)
    assert not out.exists()


def test_a_refused_best_pt_offers_last_pt_only_when_it_is_usable(run, root, tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    _altered(run, ckpts / "best.pt", _nan)
    (ckpts / "last.pt").write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    rc, _, err = run_main("predict", ckpts / "best.pt", "--data", root, "--out", tmp_path / "p.json")
    assert rc == 2 and "pass" in err and "last.pt instead" in err, err
    _altered(run, ckpts / "last.pt", _nan)
    rc, _, err = run_main("predict", ckpts / "best.pt", "--data", root, "--out", tmp_path / "p.json")
    assert rc == 2 and "last.pt instead" not in err and "last.pt cannot be used either" in err, err


def _backbone_file(path, dtype=None, metadata=None):
    state = {k: v.clone().contiguous() for k, v in create_backbone("test_resnet", img_size=16).state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(path), metadata=metadata)
    return state


def test_float8_weights_load_upcast(tmp_path):
    state = _backbone_file(tmp_path / "f8.safetensors", torch.float8_e4m3fn)
    model = create_backbone("test_resnet", img_size=16)
    counts = load_backbone_weights(model, tmp_path / "f8.safetensors")
    assert counts["loaded"] == counts["total"]
    k = next(k for k, v in state.items() if v.ndim == 4)
    assert torch.equal(model.state_dict()[k], state[k].float())


def test_float8_nan_is_named(tmp_path):
    state = {k: v.clone().contiguous() for k, v in create_backbone("test_resnet", img_size=16).state_dict().items()}
    k = next(k for k, v in state.items() if v.ndim == 4)
    state[k] = torch.full_like(state[k], float("nan")).to(torch.float8_e4m3fn)
    save_file(state, str(tmp_path / "f8.safetensors"))
    with pytest.raises(CheckpointError, match=f"NaN or infinite.*{k}"):
        load_backbone_weights(create_backbone("test_resnet", img_size=16), tmp_path / "f8.safetensors")


def test_a_small_file_naming_a_giant_model_is_refused_before_it_is_built(root, tmp_path, monkeypatch):
    import fewshot.eval.probe as probe

    path = tmp_path / "giant.safetensors"
    _backbone_file(path, metadata={"model": "vit_giant_patch14_dinov2"})
    real = probe.create_backbone

    def only_on_meta(*args, **kwargs):
        assert torch.empty(()).device.type == "meta", "the model was built for real before its keys were checked"
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "create_backbone", only_on_meta)
    start = time.monotonic()
    rc, _, err = run_main("probe", "--weights", path, "--data", root, "--device", "cpu")
    assert rc == 2 and str(path) in err and "does not fit" in err, err
    assert time.monotonic() - start < 60


def test_a_corrupt_safetensors_without_model_is_called_corrupt(root, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": garbage!!" + b"0" * 100)
    rc, _, err = run_main("probe", "--weights", path, "--data", root)
    assert rc == 2 and "cannot read" in err and "--model is required" not in err, err


def test_a_huge_fine_tuning_batch_is_blamed_not_the_queue(root, tmp_path):
    rc, _, err = run_main("train", "--data", root, "--out", tmp_path / "o", "train.batch_size=100000000000")
    assert rc == 2 and "train.batch_size 100000000000" in err and "smaller queue" not in err, err


@pytest.mark.parametrize("name, told", [("...", True), (".hidden_class", True), (".ipynb_checkpoints", False)])
def test_a_dot_class_folder_with_images_is_named_not_dropped_silently(digits_root, tmp_path, capsys, name, told):
    import shutil

    from fewshot.data import layout

    root = tmp_path / "data"
    shutil.copytree(digits_root, root)
    ds = next(d for d in sorted(root.iterdir()) if (d / "train").is_dir())
    for split in ("train", "val"):
        src = next(c for c in sorted((ds / split).iterdir()) if c.is_dir())
        shutil.copytree(src, ds / split / name)
    layout._TOLD_GAPS.clear()
    infos = layout.scan_root(root, None, splits=("train", "val"))
    err = capsys.readouterr().err
    assert name not in next(i for i in infos if i.name == ds.name).classes  # still no class
    hidden = [ds / split / name for split in ("train", "val")]
    assert all((str(h) in err) == told for h in hidden), err
    assert ("hidden folder" in err) == told, err
