"""FixMatch-style use of the unlabeled pool during fine-tuning (Sohn et al. 2020).

A weak view of each unlabeled image gives a pseudo-label (softmax restricted to the image's
dataset when the pool folder tells it); the strong view is trained towards it when the
confidence clears the threshold. Views come from the batched tensor augmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot.data.augment import BatchAugment, preset
from fewshot.data.cache import default_cache_dir, load_images
from fewshot.utils import make_generator


class UnlabeledStream:
    """Draws `mu * batch` pool images per step, deterministically from (seed, epoch, step)."""

    def __init__(self, cfg: dict, infos, size: int, mean, std, device: torch.device):
        from fewshot.ssl.pretrain import pool_with_sources

        paths, ids, self.source = pool_with_sources(cfg, infos)
        d = cfg["data"]
        cached = load_images(paths, size, default_cache_dir(d["root"], d["cache_dir"]), skip_bad=d["skip_bad_images"],
                             desc="loading unlabeled pool")
        self.images = cached.images[cached.valid]
        self.dataset_ids = torch.tensor(ids, dtype=torch.long)[cached.valid]
        self.weak = BatchAugment(preset("mocov2", size, scale=(0.6, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0,
                                        flip_p=0.5, mean=mean, std=std)).to(device)
        self.strong = BatchAugment(preset("mocov2", size, mean=mean, std=std)).to(device)
        self.device = device

    def draw(self, n: int, seed: int, epoch: int, step: int, rank: int = 0):
        gen = make_generator(seed, epoch, step, rank, 31)
        idx = torch.randint(len(self.images), (n,), generator=gen)
        x = self.images[idx].to(self.device, non_blocking=True)
        hw = tuple(x.shape[-2:])
        weak = self.weak.apply(x, self.weak.sample_params(n, gen, hw))
        strong = self.strong.apply(x, self.strong.sample_params(n, gen, hw))
        return weak, strong, self.dataset_ids[idx].to(self.device)


def fixmatch_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, dataset_ids: torch.Tensor, space,
                  threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked cross-entropy of strong views towards confident weak-view labels, mask rate)."""
    with torch.no_grad():
        weak = logits_weak.detach().float().clone()
        known = dataset_ids >= 0
        if bool(known.any()):
            weak[known] = space.restrict(weak[known], dataset_ids[known])
        probs = weak.softmax(dim=1)
        conf, pseudo = probs.max(dim=1)
        mask = (conf >= threshold).float()
    loss = (F.cross_entropy(logits_strong.float(), pseudo, reduction="none") * mask).mean()
    return loss, mask.mean()
