"""Review rev82 of fEN: `fewshot run` moving its own image size to one the model takes only where it costs little
(efficientformer_l1 was decoded at 224 px, 49x the pixels, then refused on the budget with advice of "a smaller
--img-size" it cannot take), the start-up line that says so in one sentence, and a 4-D pos_embed of another width
read in the wrong layout (PiT, VOLO)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from timm.models.pit import PoolingVisionTransformer
from timm.models.volo import VOLO

from fewshot.errors import CheckpointError
from fewshot.models.weights import load_backbone_weights
from helpers.checks import run_main


# --- the size `fewshot run` moves to, and what it says ----------------------------------------------------------


def test_the_nearest_size_taken_breaks_a_tie_to_the_smaller(monkeypatch):
    """64 and 128 are as near 96: the smaller, as the run's own size is chosen for the budget."""
    from fewshot.models import input_sizes
    from fewshot.run_checks import model_size

    monkeypatch.setattr(input_sizes, "size_problem", lambda name, s, o=None: (s != 96, f"{name} cannot take {s} px"))
    monkeypatch.setattr(input_sizes, "patch_size", lambda *a, **k: None)
    for found in ([128, 64], [64, 128]):
        monkeypatch.setattr(input_sizes, "sizes_taken", lambda *a, found=found, **k: found)
        size, why = model_size({"name": "resnet18"}, 96, "chosen for these images and device; --img-size to change")
        assert size == 64, why
        assert why == ("chosen for these images and device at 96 px, then 64 px: the nearest size resnet18 takes "
                       "(0.444x the pixels)"), why


def test_run_prints_one_true_sentence_for_a_size_moved_for_the_model(digits_root, monkeypatch):
    """inception_v3 needs 75 px: the line said "--img-size to change; 96 px, not 32", and with a short budget on
    large images "64 px costs 4x ...; --img-size 64 to override; 96 px", 64 px being a size it cannot take."""
    from fewshot.pipeline import PipelineRun

    def stop(self):
        raise SystemExit(7)  # right after the start-up line: nothing decoded

    monkeypatch.setattr(PipelineRun, "decode_inputs", stop)
    rc, out, err = run_main("run", "--data", digits_root, "--out", "/nonexistent/fEP_out", "--budget-minutes", "1",
                            "--model", "inception_v3", "--device", "cpu", "--no-progress")
    assert rc == 7, err
    line = next(x for x in out.splitlines() if x.startswith("[run] inception_v3"))
    assert line.startswith("[run] inception_v3 at 96px on cpu (chosen for these images and device at 32 px, then "
                           "96 px: the nearest size inception_v3 takes (9x the pixels)): "), line
    assert "--img-size" not in line and "not 32" not in line, line


def test_images_size_advice_is_dropped_once_the_model_moves_the_size():
    """The budget's "64 px costs 4x ...; --img-size 64 to override" argued for 32 px, then 96 px was picked."""
    from fewshot.run_checks import model_size

    why = ("chosen for these images, device and the 1-minute budget: 64 px costs 4x per step and pays on CPU from "
           "--budget-minutes 5; --img-size 64 to override")
    size, said = model_size({"name": "inception_v3"}, 32, why)
    assert size == 96 and said == ("chosen for these images, device and the 1-minute budget at 32 px, then 96 px: "
                                   "the nearest size inception_v3 takes (9x the pixels)"), said


def _hints(name: str, size: int, moco: bool) -> str:
    """ClosingMixin.least_run_hints of a run of ``name`` at ``size`` px (the model and semi method are all it reads)."""
    from fewshot.run_closing import ClosingMixin

    run = SimpleNamespace(cfg={"model": {"name": name, "img_size": size}}, semi="pseudo")
    return ClosingMixin.least_run_hints(run, moco)


def test_the_budget_refusal_advises_a_smaller_size_only_where_the_model_takes_one():
    """efficientformer_l1 takes 224 px only: "or a smaller --model or --img-size" named advice that cannot work."""
    assert _hints("efficientformer_l1", 224, True) == ", or a smaller --model, or no --pretrain"
    assert _hints("resnet18", 64, False) == ", or a smaller --model or --img-size"


# --- a 4-D position grid of another width -----------------------------------------------------------------------


def _pit(heads: tuple) -> torch.nn.Module:
    """A tiny PiT: pos_embed (1, 8 * heads[0], 7, 7) at 32 px."""
    torch.manual_seed(0)
    return PoolingVisionTransformer(img_size=32, patch_size=8, stride=4, base_dims=(8, 8, 8), depth=(1, 1, 1),
                                    heads=heads, mlp_ratio=1.0, num_classes=0)


def _volo(width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return VOLO(layers=(1, 1, 1, 1), img_size=32, embed_dims=(16, width, width, width), num_heads=(1, 2, 2, 2),
                num_classes=0)


def _saved(model: torch.nn.Module, path) -> str:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.mark.parametrize("build, narrow, wide, shapes", [
    (_pit, (1, 2, 4), (2, 4, 8), r"file \(1, 8, 7, 7\) vs model \(1, 16, 7, 7\)"),
    (_volo, 32, 48, r"file \(1, 2, 2, 32\) vs model \(1, 2, 2, 48\)")], ids=["pit", "volo"])
def test_a_position_grid_of_another_width_stays_a_shape_mismatch(build, narrow, wide, shapes, tmp_path):
    """The same grid, another width: the layout was told by the axes the file shares with the model, i.e. the grid,
    so the file was "resampled" along (C, H) to exactly the model's shape and left out of the mismatch report
    (pit_ti weights into pit_xs). Here pos_embed is the one key that differs: it loaded without a word."""
    model = build(wide)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["pos_embed"] = build(narrow).pos_embed.detach().clone()
    save_file(state, str(tmp_path / "w.st"))
    with pytest.raises(CheckpointError, match=f"1 shape/dtype mismatch\\(es\\): pos_embed: {shapes}"):
        load_backbone_weights(model, tmp_path / "w.st", strict=True, load=False)


def test_a_channels_last_grid_is_resampled_to_a_larger_one(tmp_path):
    """VOLO's (1, H, W, C) from 32 px to 64 px (fEN's tests went to a smaller grid only)."""
    from timm.layers import resample_abs_pos_embed_nhwc

    small = _volo(32)
    with torch.no_grad():
        small.pos_embed.normal_()
    torch.manual_seed(1)
    big = VOLO(layers=(1, 1, 1, 1), img_size=64, embed_dims=(16, 32, 32, 32), num_heads=(1, 2, 2, 2), num_classes=0)
    load_backbone_weights(big, _saved(small, tmp_path / "w.st"), strict=True)
    assert big.pos_embed.shape == (1, 4, 4, 32)
    assert torch.allclose(big.pos_embed, resample_abs_pos_embed_nhwc(small.pos_embed.detach(), new_size=[4, 4]))
