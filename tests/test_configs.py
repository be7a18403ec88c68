"""Every shipped config resolves (no unknown fields) and names a model timm can build."""

from pathlib import Path

import pytest
import timm

from fewshot.config import resolve
from fewshot.errors import UserError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 6


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_resolves(path):
    preset = "mocov2" if path.name.startswith("moco") else None
    cfg = resolve(preset=preset, file=path)
    assert timm.is_model(cfg["model"]["name"])


def test_layering_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\ntrain:\n  epochs: 3\n")
    cfg = resolve(file=f, flags={"train.epochs": 4}, overrides=["optim.lr=3e-4", "data.datasets=[a, b]"])
    assert cfg["optim"]["lr"] == 3e-4 and cfg["train"]["epochs"] == 4 and cfg["data"]["datasets"] == ["a", "b"]


def test_unknown_fields_refused(tmp_path):
    with pytest.raises(UserError, match="optim.lrr"):
        resolve(overrides=["optim.lrr=1"])
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  nope: 1\n")
    with pytest.raises(UserError, match="optim.nope"):
        resolve(file=f)
    with pytest.raises(UserError, match="section"):
        resolve(overrides=["optim=1"])
