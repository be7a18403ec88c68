"""Frozen-backbone features for uint8 images (kNN monitor, linear probe, embedding maps)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from fewshot.models.backbone import extract_features


@torch.no_grad()
def backbone_features(backbone: nn.Module, images: torch.Tensor, normalize: nn.Module, device: torch.device,
                      batch_size: int = 256, amp: torch.dtype | None = None, per_token: bool = False) -> torch.Tensor:
    """[N, D] pooled features (token-averaged for two-token models), norm layers in eval mode. ``per_token``: [N, T, D],
    each token's own (extract_features), for fitting one head per token: the class and distillation heads score
    different tokens, and a head fitted to their average standardised and scored features it never sees."""
    was = backbone.training
    backbone.eval()
    ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    outs = []
    for s in range(0, len(images), batch_size):
        with ctx:
            x = normalize(images[s:s + batch_size].to(device, non_blocking=True))
            feats = extract_features(backbone, x)
            outs.append((feats if per_token else feats.mean(1)).float().cpu())
    backbone.train(was)
    return torch.cat(outs) if outs else torch.zeros((0, 0, 0) if per_token else (0, 0))


@torch.no_grad()
def recalibrate_norm_statistics(backbone: nn.Module, images: torch.Tensor, normalize: nn.Module,
                                device: torch.device, batch_size: int = 256) -> None:
    """Set the BatchNorm running statistics to these images' (torch's ``update_bn``: a cumulative
    average over one pass in train mode). A randomly initialised backbone's statistics (mean 0, var 1)
    describe no data: features taken in eval mode before training differ from the ones training makes,
    so a head fitted to them (``model.head_init``) would be undone by the first epoch's BN updates."""
    from torch.optim.swa_utils import update_bn

    n = len(images)
    if n < 2:  # train-mode BN needs two values per channel
        return
    chunks = torch.tensor_split(torch.arange(n), max(1, -(-n // batch_size)))  # near-equal: none of size 1
    update_bn((normalize(images[idx].to(device, non_blocking=True)) for idx in chunks), backbone)
