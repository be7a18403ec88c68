"""Weighted kNN classifier on frozen features (the MoCo/InstDisc monitor): k=200, t=0.1, cosine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, num_classes: int,
                k: int = 200, t: float = 0.1, chunk: int = 1024) -> Tensor:
    """Class scores [N_test, C]: each of the k nearest train samples votes exp(cos/t) for its class (scaled per
    test image by exp(-nearest cos/t), which leaves the argmax and the class ratios unchanged)."""
    train = F.normalize(train_feats.float(), dim=1)
    k = max(1, min(k, train.shape[0]))
    out = []
    for s in range(0, test_feats.shape[0], chunk):
        test = F.normalize(test_feats[s:s + chunk].float(), dim=1)
        sim, idx = (test @ train.T).topk(k, dim=1)
        # exp((cos - nearest)/t): the same ranking of classes as exp(cos/t) (a common factor per test image),
        # without overflow: at t < 0.0113 exp(1/t) is inf in float32, every class tied and class 0 won
        weights = ((sim - sim[:, :1]) / t).exp()
        votes = torch.zeros(test.shape[0], num_classes, device=test.device)
        votes.scatter_add_(1, train_labels[idx], weights)
        out.append(votes)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, num_classes, k=200, t=0.1) -> float:
    scores = knn_predict(train_feats, train_labels, test_feats, num_classes, k, t)
    return 100.0 * float((scores.argmax(1) == test_labels).float().mean()) if len(test_labels) else float("nan")
