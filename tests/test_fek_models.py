"""Bug hunt hBN, findings 3 and 5: CaiT and PiT weights of another image size, and the wording of model names
(`hf-hub:` names, an empty --model, non-square default inputs in `fewshot models`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fewshot.models.backbone import create_backbone, note_pretrained_tag
from fewshot.models.catalog import input_words, list_models
from fewshot.models.weights import check_before_build, load_backbone_weights
from helpers.checks import run_main


def _saved(model: torch.nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def cait(tmp_path_factory):
    """timm's CaiT, random init, at 64 px (a 4x4 grid, saved) and 32 px (2x2): built once for the module."""
    big = create_backbone("cait_xxs24_224", img_size=64)
    return big, create_backbone("cait_xxs24_224", img_size=32), _saved(big, tmp_path_factory.mktemp("cait") / "c.st")


@pytest.fixture(scope="module")
def pit(tmp_path_factory):
    """timm's PiT, random init, at 64 px (a 7x7 grid of its (1, C, H, W) pos_embed, saved) and 32 px (3x3)."""
    big = create_backbone("pit_ti_224", img_size=64)
    return big, create_backbone("pit_ti_224", img_size=32), _saved(big, tmp_path_factory.mktemp("pit") / "p.st")


def test_cait_weights_of_another_size_load_with_a_resampled_position_embedding(cait):
    """CaiT's pos_embed holds no class-token row though num_prefix_tokens is 1: 16 tokens were resampled as 1 + 15,
    and the file was refused ("pos_embed: file (1, 16, 192) vs model (1, 4, 192)")."""
    from timm.layers import resample_abs_pos_embed

    big, small, path = cait
    assert small.pos_embed.shape == (1, 4, 192) and big.pos_embed.shape == (1, 16, 192)
    load_backbone_weights(small, path, strict=True)
    expected = resample_abs_pos_embed(big.pos_embed.detach(), new_size=[2, 2], num_prefix_tokens=0)
    assert torch.allclose(small.pos_embed, expected)
    assert torch.equal(small.cls_token, big.cls_token)
    assert torch.equal(small.patch_embed.proj.weight, big.patch_embed.proj.weight)


def test_cait_file_passes_the_meta_check_before_the_build(cait):
    """probe and eval check a file against the model built on the meta device first: the same resample there."""
    check_before_build(lambda: create_backbone("cait_xxs24_224", img_size=32), cait[2])


def test_pit_weights_of_another_size_load_with_an_interpolated_position_grid(pit):
    """PiT's pos_embed is (1, C, H, W): it was skipped, and the file refused ("(1, 64, 7, 7) vs (1, 64, 3, 3)")."""
    big, small, path = pit
    assert small.pos_embed.shape == (1, 64, 3, 3) and big.pos_embed.shape == (1, 64, 7, 7)
    load_backbone_weights(small, path, strict=True)
    expected = F.interpolate(big.pos_embed.detach(), size=(3, 3), mode="bicubic", antialias=True)
    assert torch.allclose(small.pos_embed, expected)
    assert torch.equal(small.patch_embed.conv.weight, big.patch_embed.conv.weight)


def test_a_position_grid_of_another_width_is_still_refused(pit, tmp_path):
    """Only the grid is resampled: another embedding width stays a shape mismatch, named as before."""
    from fewshot.errors import CheckpointError

    big, small, _ = pit
    state = {k: v.clone() for k, v in big.state_dict().items()}
    state["pos_embed"] = torch.zeros(1, 32, 7, 7)
    save_file(state, str(tmp_path / "w.st"))
    with pytest.raises(CheckpointError, match=r"pos_embed: file \(1, 32, 7, 7\) vs model \(1, 64, 3, 3\)"):
        load_backbone_weights(small, tmp_path / "w.st", strict=True, load=False)


def test_no_random_init_note_for_a_name_timm_refuses(capsys):
    """`--model hf-hub:timm/resnet18.a1_in1k` said "the hf-hub:timm/resnet18 network starts from random init",
    then refused the name as unknown."""
    note_pretrained_tag({"name": "hf-hub:timm/resnet18.a1_in1k", "weights": None})
    assert capsys.readouterr().err == ""
    note_pretrained_tag({"name": "test_resnet.r160_in1k", "weights": None})  # a name timm knows: still said
    assert "random init" in capsys.readouterr().err


def test_an_empty_model_name_is_called_empty(tmp_path):
    """`--model ''` said "--model : model.name must be text, not ''"; '' is text."""
    rc, _, err = run_main("train", "--data", tmp_path, "--out", tmp_path / "r", "--model", "")
    assert rc == 2 and "--model '': model.name is empty: give a timm model name" in err, err
    assert "must be text" not in err


def test_models_lists_a_non_square_default_input_as_height_by_width():
    """sapiens2's default input is 1024x768: the table said 768."""
    assert input_words("vit_base_patch16_sapiens2") == "1024x768" and input_words("test_resnet") == "160"
    row = list_models("vit_base_patch16_sapiens2", limit=1).splitlines()[1]
    assert row.split()[0] == "vit_base_patch16_sapiens2" and row.split()[-1] == "1024x768", row
