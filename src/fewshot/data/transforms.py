"""Fine-tuning transforms on cached uint8 tensors.

Images are already Resize+CenterCrop'ed to the model's input size in the cache, so training
applies SPEC's RandAugment(2, 8) to a random 2/3 of the samples (torchvision v2, per sample),
and both paths end with the model's mean/std. Randomness comes from a per-batch seed so that
a resumed run sees exactly the same augmentations.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from fewshot.utils import derive_seed


class Normalize(torch.nn.Module):
    """uint8 [B,3,H,W] -> float normalised, on whatever device the batch is."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)


class TrainAugment:
    """RandAugment(num_ops, magnitude) with probability p per sample (+ optional flip), uint8 in/out.

    torchvision's RandAugment costs ~10 ms per call on a CPU core whatever the image size, so
    the chosen samples are augmented in groups of `group` (each group draws its own ops and
    magnitudes; group=1 is the strict per-sample version).
    """

    def __init__(self, num_ops: int = 2, magnitude: int = 8, p: float = 2 / 3, hflip: float = 0.0, group: int = 8):
        self.p = p
        self.hflip = hflip
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
        return out
