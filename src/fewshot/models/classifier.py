"""The multi-dataset classifier: a timm backbone + BatchNorm1d(affine=False) + Linear over all classes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.errors import CheckpointError, one_line
from fewshot.models.backbone import (backbone_options, count_parameters, create_backbone, extract_features, feature_dim,
                                     num_feature_tokens)


class LinearHead(nn.Module):
    """BN without affine (features on a common scale, as the course did) then a linear layer."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))

    @torch.no_grad()
    def set_prototypes(self, feats: torch.Tensor, targets: torch.Tensor, scale: float = 10.0) -> "LinearHead":
        """Become the cosine nearest-class-mean classifier of these features (see prototype_head)."""
        weight, bias, mean, var = prototype_head(feats, targets, self.fc.out_features, scale)
        self.norm.running_mean.copy_(mean)
        self.norm.running_var.copy_(var)
        self.fc.weight.copy_(weight)
        self.fc.bias.copy_(bias)
        return self


def prototype_head(feats: torch.Tensor, targets: torch.Tensor, num_classes: int, scale: float = 10.0):
    """(weight [C, D], bias [C], BN mean [D], BN var [D]) of a cosine nearest-class-mean classifier
    over standardised features. A class without images has no mean: a zero weight and a bias 1 below the lowest
    logit any class can give a train feature (-scale x max norm / mean norm), so it is never predicted on train-like
    features (its logit 0 beat every class of negative cosine). It goes no lower: -1e4 added ~1e4 x eps / C per
    such class to a label-smoothed loss (6.1 -> 106 for 10 classes), and fine-tuning could never move it back."""
    mean, var = feats.mean(0), feats.var(0, unbiased=False) + 1e-5
    z = (feats - mean) / var.sqrt()
    norm = z.norm(dim=1, keepdim=True).clamp_min(1e-6)
    proto = torch.zeros(num_classes, feats.shape[1])
    proto.index_add_(0, targets, z / norm)
    proto = F.normalize(proto, dim=1)
    weight = scale * proto / norm.mean()
    bias = torch.zeros(num_classes)
    bound = scale * norm.max() / norm.mean()  # |logit| <= |weight| x |z| (Cauchy-Schwarz), on every train feature
    bias[torch.bincount(targets, minlength=num_classes)[:num_classes] == 0] = -(float(bound) + 1.0)
    return weight, bias, mean, var - 1e-5


class FewShotClassifier(nn.Module):
    """Backbone + one head per feature token, logits averaged: two for distilled models with a distillation token
    (e.g. DeiT, PiT), one for all others."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        dim = feature_dim(backbone)
        self.heads = nn.ModuleList(LinearHead(dim, num_classes) for _ in range(num_feature_tokens(backbone)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return extract_features(self.backbone, x)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        logits = [head(feats[:, i]) for i, head in enumerate(self.heads)]
        return torch.stack(logits).mean(0) if len(logits) > 1 else logits[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def build_classifier(cfg: dict, num_classes: int) -> FewShotClassifier:
    m = cfg["model"]
    backbone = create_backbone(m["name"], **backbone_options(m))
    return FewShotClassifier(backbone, num_classes)


def n_parameters(model: nn.Module) -> int:
    return count_parameters(model)


class HeadCountError(CheckpointError):
    """A checkpoint with another number of heads than the model this version builds: its last.pt has the same."""


def check_head_count(model: nn.Module, state, path: str | Path, model_name: str) -> None:
    """Before load_state_dict: a checkpoint from a version that gave this model another number of heads (PiT-distilled
    had one) failed as torch's "Missing key(s) ... heads.1 ..." over two lines, with no way forward. Says what differs
    and that --weights keeps its backbone (the heads are fitted anew). Models without heads are not checked."""
    if not isinstance(model, FewShotClassifier) or not isinstance(state, Mapping):
        return
    found = {int(m.group(1)) for k in state if isinstance(k, str) and (m := re.match(r"heads\.(\d+)\.", k))}
    want = len(model.heads)
    if not found or len(found) == want:
        return  # no heads at all is other damage: load_state_dict names it
    tokens = " (one each for its class and distillation tokens)" if want == 2 else ""
    path, model_name = one_line(str(path)), one_line(str(model_name))  # one paragraph, whatever the names hold
    raise HeadCountError(f"{path} has {_heads(len(found))}, but this version scores {model_name} with "
                         f"{_heads(want)}{tokens}: the checkpoint comes from a version that built {model_name} "
                         f"otherwise. Start a new run from it with --weights {path}, which keeps its backbone (the "
                         f"heads are fitted anew).")


def _heads(n: int) -> str:
    return f"{n} head{'' if n == 1 else 's'}"
