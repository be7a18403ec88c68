"""Review of the model-weights code: a (1, H, W, C) position grid (VOLO, SAM) loaded at another image size, and
`fewshot run` picking a size the model takes where neither multiple of 32 next to its own choice works."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed_nhwc
from timm.models.volo import VOLO

from fewshot.errors import CheckpointError, UserError
from fewshot.models.weights import load_backbone_weights


def _saved(model: torch.nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def _volo(size: int) -> torch.nn.Module:
    """A tiny VOLO (timm's volo_* builders fix their depths): pos_embed (1, size/16, size/16, 32)."""
    torch.manual_seed(size)
    return VOLO(layers=(1, 1, 1, 1), img_size=size, embed_dims=(16, 32, 32, 32), num_heads=(1, 2, 2, 2),
                num_classes=0)


def _sam(size: int) -> torch.nn.Module:
    torch.manual_seed(size)
    return timm.create_model("samvit_base_patch16", img_size=size, embed_dim=32, depth=1, num_heads=2,
                             global_attn_indexes=(), num_classes=0)


@pytest.mark.parametrize("build", [_volo, _sam], ids=["volo", "samvit"])
def test_a_channels_last_position_grid_is_resampled_over_its_grid(build, tmp_path):
    """VOLO's and SAM's pos_embed is (1, H, W, C): read as PiT's (1, C, H, W), the file was refused ("(1, 4, 4, 32)
    vs (1, 2, 2, 32)") or, where H matched, interpolated along W and C."""
    big, small = build(64), build(32)
    with torch.no_grad():
        big.pos_embed.normal_()  # SAM starts it at zeros: a resample of those would prove nothing
    assert big.pos_embed.shape == (1, 4, 4, 32) and small.pos_embed.shape == (1, 2, 2, 32)
    load_backbone_weights(small, _saved(big, tmp_path / "w.st"), strict=True)
    expected = resample_abs_pos_embed_nhwc(big.pos_embed.detach(), new_size=[2, 2])
    assert torch.allclose(small.pos_embed, expected)
    assert not torch.allclose(expected, build(32).pos_embed)  # the values came from the file


class _Grid(torch.nn.Module):
    """A model of no timm class whose (1, 4, 4, 4) grid reads the same in both layouts."""

    def __init__(self):
        super().__init__()
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 4, 4, 4))


def test_a_grid_whose_width_axis_cannot_be_told_is_left_to_the_mismatch_report(tmp_path):
    """(1, 4, 8, 4) into (1, 4, 4, 4): an 8x4 grid of width 4 or a 4x8 one; neither the model's shape nor its class
    tells which, so it is not resampled along axes guessed (PiT's layout was assumed)."""
    save_file({"pos_embed": torch.randn(1, 4, 8, 4)}, str(tmp_path / "w.st"))
    with pytest.raises(CheckpointError, match=r"pos_embed: file \(1, 4, 8, 4\) vs model \(1, 4, 4, 4\)"):
        load_backbone_weights(_Grid(), tmp_path / "w.st", strict=True, load=False)


def test_timm_s_class_tells_the_layout_where_the_grid_s_shape_cannot(tmp_path):
    """A VOLO whose width equals its grid, (1, 4, 4, 4): square both ways, it is (1, H, W, C) by its class."""
    def volo(size):
        torch.manual_seed(size)
        return VOLO(layers=(1, 1, 1, 1), img_size=size, embed_dims=(4, 4, 4, 4), num_heads=(1, 1, 1, 1),
                    num_classes=0)

    big, small = volo(128), volo(64)
    with torch.no_grad():
        big.pos_embed.normal_()
    load_backbone_weights(small, _saved(big, tmp_path / "w.st"), strict=True)
    assert torch.allclose(small.pos_embed, resample_abs_pos_embed_nhwc(big.pos_embed.detach(), new_size=[4, 4]))


def _digits(root):
    from fewshot.data.layout import scan_root

    return scan_root(root)


def test_run_picks_the_nearest_size_a_model_without_patches_takes(digits_root):
    """inception_v3 needs 75 px: `fewshot run` chose 32 px for the digits, then refused its own choice, naming 96
    (neither 32 nor 64 works)."""
    from fewshot.run_checks import auto_img_size

    size, why = auto_img_size(_digits(digits_root), torch.device("cpu"), 1.0, {"name": "inception_v3"})
    assert size == 96 and why == ("chosen for these images and device at 32 px, then 96 px: the nearest size "
                                  "inception_v3 takes (9x the pixels)"), why


def test_run_still_refuses_where_no_size_near_its_choice_is_confirmed(digits_root, monkeypatch):
    from fewshot.models import input_sizes
    from fewshot.run_checks import auto_img_size

    monkeypatch.setattr(input_sizes, "sizes_taken", lambda *a, **k: [])
    with pytest.raises(UserError, match="no size near it could be confirmed to work. Give --img-size N"):
        auto_img_size(_digits(digits_root), torch.device("cpu"), 1.0, {"name": "inception_v3"})
