"""Mixup / CutMix on a training batch, with partners from the same dataset.

Why not timm's ``Mixup``: it pairs sample i with sample B-1-i whatever its dataset, so in a joint
label space a digit would be blended with a shirt and trained towards half a digit class and half a
shirt class, a target no test image ever has. It also draws from numpy's global RNG, which a resumed
run cannot replay. Here each sample's partner is drawn among the batch's samples of its own dataset,
and every draw comes from a seed derived from (seed, epoch, step, rank), like the augmentation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fewshot.utils import derive_seed


def partners_within_groups(groups: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A permutation that maps each position to another position of the same group (itself only when
    the group has one member): the group in a random order, each taking the next one's place."""
    groups = groups.cpu()
    perm = torch.arange(len(groups))
    for g in torch.unique(groups).tolist():
        where = torch.nonzero(groups == g).flatten()
        order = where[torch.randperm(len(where), generator=gen)]
        perm[order] = order.roll(1)
    return perm


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of about (1 - lam) of the image, centred anywhere and clipped to the image (as in CutMix)."""
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)


class BatchMix:
    """Blend each sample with a partner of its dataset: mixup (whole images) or CutMix (a box),
    chosen per batch; targets become the same blend of the two one-hot (or soft) targets."""

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, p: float = 1.0):
        self.mixup_alpha, self.cutmix_alpha, self.p = float(mixup_alpha), float(cutmix_alpha), float(p)

    @property
    def enabled(self) -> bool:
        return self.p > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def draw(self, dataset_ids: torch.Tensor, h: int, w: int, seed_parts: tuple[int, ...]):
        """The batch's draw: None (not mixed) or (lam, partner permutation, box or None for mixup)."""
        rng = np.random.default_rng(derive_seed(*seed_parts, 0x6D6978))
        if not self.enabled or rng.random() >= self.p:
            return None
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        perm = partners_within_groups(dataset_ids, torch.Generator().manual_seed(int(rng.integers(2**62))))
        if not use_cutmix:
            return lam, perm, None
        box = cutmix_box(h, w, lam, rng)
        y0, y1, x0, x1 = box
        return 1.0 - (y1 - y0) * (x1 - x0) / (h * w), perm, box  # lam of the box as it was clipped

    def __call__(self, x: torch.Tensor, y: torch.Tensor, dataset_ids: torch.Tensor, num_classes: int,
                 seed_parts: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B,C,H,W] float, y [B] class indices or [B, num_classes] probabilities -> (x, soft y)."""
        target = y.float() if y.is_floating_point() else F.one_hot(y, num_classes).float()
        drawn = self.draw(dataset_ids, x.shape[-2], x.shape[-1], seed_parts)
        if drawn is None:
            return x, target
        lam, perm, box = drawn
        perm = perm.to(x.device)
        if box is None:
            x = x * lam + x[perm] * (1.0 - lam)
        else:
            y0, y1, x0, x1 = box
            x = x.clone()
            x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        return x, target * lam + target[perm] * (1.0 - lam)
