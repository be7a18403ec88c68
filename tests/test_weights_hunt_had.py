"""Loading weights (hunt had): a model whose pretrained cfg records no classifier, a state dict beside a metadata
dict under 'model', fewshot's own MoCo module saved whole, a device or pipe given as the file, an image smaller
than one patch, and an export's img_size that is a digit to str.isdigit() but no number."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from fewshot.cli import main
from fewshot.errors import CheckpointError, UserError
from fewshot.models.backbone import check_input_size, create_backbone
from fewshot.models.weights import (architecture_of, backbone_state_from, check_weights_path, classifier_keys,
                                    load_backbone_weights)
from fewshot.ssl.moco import MoCo

NAME = "test_resnet"


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A plain state dict of a 32 px test_resnet backbone, and the backbone it came from."""
    torch.manual_seed(0)
    backbone = create_backbone(NAME, img_size=32)
    path = tmp_path_factory.mktemp("had") / "plain.pt"
    torch.save(backbone.state_dict(), path)
    return path, backbone


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    own = b.state_dict()
    return all(torch.equal(v, own[k]) for k, v in a.state_dict().items())


def test_a_model_recording_no_classifier_loads_weights(plain):
    """timm's qwen3_vit_*_enc and deepseek_vit_412m_enc record classifier=None: any --weights file was a TypeError
    (None + ".") and "internal error"."""
    path, source = plain
    backbone = create_backbone(NAME, img_size=32)
    backbone.pretrained_cfg = {**backbone.pretrained_cfg, "classifier": None}
    assert classifier_keys(backbone, {"fc.weight": torch.zeros(1)}) == []
    loaded = load_backbone_weights(backbone, path)
    assert loaded["loaded"] == loaded["total"] > 0 and _same_weights(backbone, source)
    backbone.pretrained_cfg = {**backbone.pretrained_cfg, "classifier": ("fc", None, "")}  # the names it has kept
    assert classifier_keys(backbone, {"fc.weight": torch.zeros(1), "x.weight": torch.zeros(1)}) == ["fc.weight"]


def test_tensors_at_the_top_beside_a_metadata_dict_under_model(plain, tmp_path):
    """{**state_dict, 'model': {'arch': ...}} was "holds no tensors": the dict under 'model' was searched alone."""
    path, source = plain
    out = tmp_path / "x.pt"
    torch.save({**torch.load(path, weights_only=True), "model": {"arch": NAME}}, out)
    backbone = create_backbone(NAME, img_size=32)
    assert load_backbone_weights(backbone, out)["loaded"] > 0 and _same_weights(backbone, source)


def test_the_level_with_more_tensors_wins(plain, tmp_path):
    """A checkpoint's weights under 'model' (or two wrappers down) beside a step count tensor stay the wrapper's;
    one tensor under 'state_dict' beside a whole state dict is not the backbone."""
    path, _ = plain
    state = torch.load(path, weights_only=True)
    obj = {"model": {"state_dict": state, "epoch": torch.tensor(3)}, "step": torch.tensor(7)}
    assert set(backbone_state_from(obj, path)) == set(state)
    assert set(backbone_state_from({**state, "state_dict": {"version": torch.tensor(1)}}, path)) == set(state)


def test_fewshot_moco_module_saved_whole_loads_its_query_backbone(tmp_path):
    """torch.save(MoCo(...).state_dict()) was refused: queue_filled and the query encoder's projection head
    (encoder_q.head.*) were "unexpected keys"; a DDP 'module.' prefix around it too."""
    torch.manual_seed(0)
    moco = MoCo(create_backbone(NAME, img_size=32), dim=16, queue_size=32)
    for name, state in (("m.pt", moco.state_dict()), ("ddp.pt", {f"module.{k}": v for k, v in
                                                                  moco.state_dict().items()})):
        torch.save(state, tmp_path / name)
        backbone = create_backbone(NAME, img_size=32)
        loaded = load_backbone_weights(backbone, tmp_path / name)
        assert loaded["loaded"] == loaded["total"] and _same_weights(backbone, moco.encoder_q.backbone)


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_device_or_pipe_is_named_as_one(tmp_path, kind, digits_root, capsys):
    """/dev/null (or <(...), a pipe) was "weights file not found"; a pipe cannot be seeked or mapped, so it is
    refused as one without being opened (which would wait for a writer)."""
    if kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    else:
        path = "/dev/null"
    with pytest.raises(CheckpointError, match="exists but is a (character device|pipe)") as info:
        check_weights_path(path)
    assert "not found" not in str(info.value)
    assert main(["probe", "--weights", str(path), "--model", NAME, "--img-size", "32", "--data", str(digits_root),
                 "--device", "cpu"]) == 2
    assert "exists but is a" in capsys.readouterr().err


def test_an_image_smaller_than_one_patch_is_worded_as_such():
    """`--img-size 8` for 16 px patches said "so all of it of every image would never be seen"."""
    with pytest.raises(UserError, match="image of 8 px is smaller than one patch") as info:
        check_input_size(create_backbone("test_vit", img_size=16), 8, "test_vit")
    assert "all of it" not in str(info.value) and "--img-size 16)" in str(info.value)


def test_an_img_size_of_unicode_digits_drops_that_field_alone(plain, tmp_path):
    """The img_size "²" passed str.isdigit(), then int() raised ValueError and the whole record was lost ("records
    no model")."""
    _, source = plain
    out = tmp_path / "bb.safetensors"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    for size in ("²", "٣٢"):  # a superscript two, Arabic-Indic 32
        save_file(state, str(out), metadata={"model": NAME, "img_size": size, "width": "1.0"})
        assert architecture_of(out) == {"model": NAME, "width": 1.0}
    save_file(state, str(out), metadata={"model": NAME, "img_size": "0032"})
    assert architecture_of(out) == {"model": NAME, "img_size": 32}
    save_file(state, str(out), metadata={"model": NAME, "img_size": "9" * 5000})  # past int()'s 4300 digits
    with pytest.raises(CheckpointError, match="records img_size 9{20}\\.\\.\\. \\(5000 digits\\), more than"):
        architecture_of(out)
