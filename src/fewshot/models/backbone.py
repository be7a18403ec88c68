"""timm backbones as feature extractors, for any model family.

Features come from timm's own `forward_features` + `forward_head(pre_logits=True)`, which
already pool the way each family should (class token for DeiT, token mean for Swin, global
channel pooling for CNNs and hybrids). The one capability check is the distillation token:
DeiT-distilled exposes two tokens, and SPEC wants one head per token with logits averaged.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from fewshot.errors import UserError
from fewshot.models.fast_pool import swap_max_pools


def create_backbone(name: str, drop_path: float = 0.0, img_size: int | None = None) -> nn.Module:
    """timm model without classifier (num_classes=0), random init (no hub access).

    Its max-pool layers use the faster CPU kernel (`fast_pool`); the math is unchanged.
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise UserError(f"unknown timm model '{name}'.{hint} List models with `fewshot models PATTERN`.")
    kwargs: dict = {"pretrained": False, "num_classes": 0}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    default_size = timm.get_pretrained_cfg(name).input_size[-1] if timm.get_pretrained_cfg(name) else None
    if img_size and img_size != default_size:
        kwargs["img_size"] = img_size
    # Not every family takes img_size / drop_path_rate: drop the ones it refuses.
    for optional in ([], ["img_size"], ["drop_path_rate"], ["img_size", "drop_path_rate"]):
        attempt = {k: v for k, v in kwargs.items() if k not in optional}
        try:
            model = timm.create_model(name, **attempt)
        except TypeError:
            continue
        swap_max_pools(model)
        return model
    raise UserError(f"timm could not build '{name}' with num_classes=0.")


def num_feature_tokens(backbone: nn.Module) -> int:
    """2 for models with a distillation token (one head each), else 1."""
    return 2 if getattr(backbone, "dist_token", None) is not None else 1


def extract_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, T, D] pooled features; T = num_feature_tokens(backbone)."""
    feats = backbone.forward_features(x)
    if num_feature_tokens(backbone) == 2:
        return feats[:, :2]
    return backbone.forward_head(feats, pre_logits=True).unsqueeze(1)


def feature_dim(backbone: nn.Module) -> int:
    return int(getattr(backbone, "num_features", 0) or getattr(backbone, "head_hidden_size", 0))


def input_size(backbone: nn.Module, override: int | None = None) -> int:
    if override:
        return int(override)
    cfg = timm.data.resolve_model_data_config(backbone)
    return int(cfg["input_size"][-1])


def mean_std(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = timm.data.resolve_model_data_config(backbone)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
