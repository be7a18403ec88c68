"""Facts about frozen-backbone features and class balancing that the tests let through (mutation testing, fBB):
features are taken in eval mode (running statistics, no dropout) with the backbone's mode restored, two-token
models average their tokens, one image is no batch to recalibrate BatchNorm on, and `auto` keeps the offsets
on a val tie (docs/recipes.md: "a tie keeps them")."""

from __future__ import annotations

import torch
from torch import nn

from fewshot.eval import balance as bal
from fewshot.eval.features import backbone_features, recalibrate_norm_statistics

CPU = torch.device("cpu")


def _as_float(x):
    return x.float()


class _OneToken(nn.Module):
    """forward_features: the first two pixel values through BatchNorm and dropout (train mode changes both)."""

    def __init__(self):
        super().__init__()
        self.bn, self.drop = nn.BatchNorm1d(2), nn.Dropout(0.5)
        with torch.no_grad():
            self.bn.running_mean.fill_(1.0)
            self.bn.running_var.fill_(4.0)

    def forward_features(self, x):
        return self.drop(self.bn(x.flatten(1)[:, :2]))

    def forward_head(self, feats, pre_logits=True):
        return feats


class _TwoTokens(nn.Module):
    """A distillation model's layout: class and distillation tokens lead forward_features' output."""

    def __init__(self):
        super().__init__()
        self.cls_token, self.dist_token = nn.Parameter(torch.zeros(1, 1, 2)), nn.Parameter(torch.zeros(1, 1, 2))
        self.head_dist = nn.Linear(2, 3)

    def forward_features(self, x):
        v = x.flatten(1)[:, :2]
        return torch.stack([v, 3 * v, -v], dim=1)  # [B, 3, 2]: two learnt tokens, then a patch token


def test_features_use_running_statistics_and_restore_the_mode():
    torch.manual_seed(0)
    backbone = _OneToken().train()
    images = torch.tensor([[0, 3], [5, 1], [9, 9], [2, 7]], dtype=torch.uint8).view(4, 1, 1, 2).expand(4, 3, 1, 2)
    out = backbone_features(backbone, images.contiguous(), _as_float, CPU, batch_size=3)
    v = images[:, 0, 0, :].float()
    torch.testing.assert_close(out, (v - 1.0) / (4.0 + 1e-5) ** 0.5)  # eval mode: (x - 1) / 2, nothing dropped
    assert backbone.training  # the caller's mode is back
    assert backbone.bn.running_mean.tolist() == [1.0, 1.0]  # eval mode left the statistics alone


def test_two_token_features_are_the_mean_of_the_learnt_tokens():
    backbone = _TwoTokens()
    images = torch.tensor([2, 4, 6, 8], dtype=torch.uint8).view(2, 1, 1, 2).expand(2, 3, 1, 2).contiguous()
    pooled = backbone_features(backbone, images, _as_float, CPU)
    torch.testing.assert_close(pooled, torch.tensor([[4.0, 8.0], [12.0, 16.0]]))  # (v + 3v) / 2 = 2v
    per_token = backbone_features(backbone, images, _as_float, CPU, per_token=True)
    assert per_token.shape == (2, 2, 2)
    torch.testing.assert_close(per_token[:, 1], torch.tensor([[6.0, 12.0], [18.0, 24.0]]))


def test_one_image_does_not_recalibrate_batchnorm():
    backbone = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    recalibrate_norm_statistics(backbone, torch.full((1, 3, 1, 1), 7, dtype=torch.uint8), _as_float, CPU)
    assert backbone[1].running_mean.tolist() == [0.0, 0.0] and backbone[1].running_var.tolist() == [1.0, 1.0]


def test_a_val_tie_keeps_the_offsets():
    logits = torch.tensor([[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, 2, 1])  # margins of 9: no prediction moves, plain and balanced both 3 of 4
    decision = bal.val_decision(logits, targets)
    assert decision == {"val_plain": 75.0, "val_balanced": 75.0, "used": True}


def test_enough_images_is_min_per_class_per_class_or_more():
    assert bal.enough_images(3 * 4, 4, per_class=3)  # exactly 3 a class: enough
    assert not bal.enough_images(3 * 4 - 1, 4, per_class=3)
