"""Fine-tuning transforms on cached uint8 tensors.

Images are already Resize+CenterCrop'ed to the model's input size in the cache, so training
applies SPEC's RandAugment(2, 8) to a random 2/3 of the samples (torchvision v2, per sample),
then (data.gray_p) turns a random share of them grayscale, and both paths end with the model's
mean/std. Randomness comes from a per-batch seed so that a resumed run sees exactly the same
augmentations.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from fewshot.utils import derive_seed, make_generator

# the last seed part of the grayscale draws: their own stream, so that data.gray_p leaves RandAugment's and the
# flips' draws as they were (only the chosen samples change)
GRAY_STREAM = 53
LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601, torchvision's rgb_to_grayscale


class Normalize(torch.nn.Module):
    """uint8 [B,3,H,W] -> float normalised, on whatever device the batch is."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)


class TrainAugment:
    """RandAugment(num_ops, magnitude) with probability p per sample (+ optional flip, then grayscale with
    probability gray_p), uint8 in/out.

    torchvision's RandAugment costs ~10 ms per call on a CPU core whatever the image size, so
    the chosen samples are augmented in groups of `group` (each group draws its own ops and
    magnitudes; group=1 is the strict per-sample version). Grayscale: with few shots per class a network
    keys on colour where colour is a nuisance (a tint per image); dropping it from some samples teaches it not to.
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 8, p: float = 2 / 3, hflip: float = 0.0, group: int = 8,
                 gray_p: float = 0.0):
        self.p = p
        self.hflip = hflip
        self.gray_p = float(gray_p)
        self.group = max(1, int(group))
        self.randaug = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    def __call__(self, batch: torch.Tensor, seed_parts: tuple[int, ...],
                 flip_p: torch.Tensor | None = None) -> torch.Tensor:
        """``flip_p`` [B]: a per-sample flip probability (e.g. by class) that replaces ``hflip`` where larger."""
        out = batch.clone()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(*seed_parts))
            apply = torch.rand(len(batch)) < self.p
            p_flip = torch.full((len(batch),), float(self.hflip))
            if flip_p is not None:
                p_flip = torch.maximum(p_flip, flip_p.float().cpu())
            flip = torch.rand(len(batch)) < p_flip
            chosen = torch.nonzero(apply).flatten()
            for part in chosen.split(self.group):
                out[part] = self.randaug(batch[part])
            if flip.any():
                out[flip] = out[flip].flip(-1)
        if self.gray_p > 0:
            random_grayscale(out, self.gray_p, seed_parts)
        return out


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> the luma in all three channels, rounded (torchvision truncates, which would darken an
    already grey image by one level since the weights sum to 0.9999)."""
    r, g, b = x.float().unbind(dim=-3)
    luma = (r * LUMA[0] + g * LUMA[1] + b * LUMA[2]).round_().clamp_(0, 255).to(x.dtype)
    return luma.unsqueeze(-3).expand_as(x)


def random_grayscale(out: torch.Tensor, p: float, seed_parts: tuple[int, ...]) -> torch.Tensor:
    """In place: each sample of ``out`` [B,3,H,W] turns grayscale with probability ``p``, drawn from the batch's
    seed on a stream of its own (a resumed run sees the same samples turned)."""
    pick = torch.rand(len(out), generator=make_generator(*seed_parts, GRAY_STREAM)) < p
    if bool(pick.any()) and out.shape[-3] == 3:
        out[pick] = to_grayscale(out[pick])
    return out
