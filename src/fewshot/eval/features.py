"""Frozen-backbone features for uint8 images (kNN monitor, linear probe, embedding maps)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from fewshot.models.backbone import extract_features


@torch.no_grad()
def backbone_features(backbone: nn.Module, images: torch.Tensor, normalize: nn.Module, device: torch.device,
                      batch_size: int = 256, amp: torch.dtype | None = None) -> torch.Tensor:
    """[N, D] pooled features (token-averaged for two-token models), norm layers in eval mode."""
    was = backbone.training
    backbone.eval()
    ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    outs = []
    for s in range(0, len(images), batch_size):
        with ctx:
            x = normalize(images[s:s + batch_size].to(device, non_blocking=True))
            outs.append(extract_features(backbone, x).mean(1).float().cpu())
    backbone.train(was)
    return torch.cat(outs) if outs else torch.zeros(0, 0)
