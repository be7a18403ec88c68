"""BatchAugment's random parameters, checked against values worked out by hand (mutation testing, round 3): the
augment tests compared rates and ranges over many draws, so one blur sigma for the whole batch, or crop positions
that never reach the last row, kept every rate and range and passed them."""

from __future__ import annotations

import torch

from fewshot.data.augment import AugmentConfig, BatchAugment, _sample_crops

N_COLS = 31  # sample_params' one uniform draw per sample: 10 scales, 10 log-ratios, 2 positions, then 9 columns


def test_every_parameter_is_its_own_samples_draw():
    """Row b of each parameter comes from row b of the one uniform draw: per-sample, not one value per batch."""
    cfg = AugmentConfig(out_size=16, jitter=(0.4, 0.4, 0.4, 0.1), flip_p=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.5,
                        blur_sigma=(0.1, 2.0))
    p = BatchAugment(cfg).sample_params(64, torch.Generator().manual_seed(11), (16, 16))
    u = torch.rand(64, N_COLS, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    assert torch.equal(p["flip"], u[:, 22] < 0.5)
    assert torch.equal(p["jitter"], u[:, 23] < 0.8)
    lo = torch.tensor([0.6, 0.6, 0.6, -0.1], dtype=torch.float64)
    hi = torch.tensor([1.4, 1.4, 1.4, 0.1], dtype=torch.float64)
    assert torch.allclose(p["jitter_factors"], (lo + (hi - lo) * u[:, 24:28]).float())
    assert torch.equal(p["gray"], u[:, 28] < 0.2)
    assert torch.equal(p["blur"], u[:, 29] < 0.5)
    assert torch.allclose(p["sigma"], (0.1 + 1.9 * u[:, 30]).float())
    assert p["sigma"].unique().numel() == 64  # one sigma per sample


def _crops(u_pos, height=10, width=10):
    """Crop boxes of a 5x5 crop (a quarter of a 10x10 image, square) at the given uniform positions."""
    cfg = AugmentConfig(out_size=8, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    n = len(u_pos)
    half = torch.full((n, 10), 0.5, dtype=torch.float64)
    return _sample_crops(half, half, torch.tensor(u_pos, dtype=torch.float64), cfg, height, width).tolist()


def test_crop_positions_cover_every_offset_uniformly():
    """torch.randint(0, H - h + 1): a 5-pixel crop of 10 pixels starts at 0..5, each with a sixth of the draws."""
    assert _crops([[0.0, 0.0], [0.5, 0.999], [0.999, 0.5], [0.34, 0.17]]) == [
        [0, 0, 5, 5],  # floor(0 * 6)
        [3, 5, 5, 5],  # floor(0.5 * 6) = 3, floor(0.999 * 6) = 5: the last offset is reachable
        [5, 3, 5, 5],
        [2, 1, 5, 5],  # floor(2.04), floor(1.02)
    ]
    offsets = torch.tensor(_crops([[(i + 0.5) / 60, (i + 0.5) / 60] for i in range(60)]))[:, :2]
    for axis in range(2):
        assert torch.bincount(offsets[:, axis], minlength=6).tolist() == [10] * 6
