"""MoCo (He et al. 2020; v2: Chen et al. 2020), the whole method in one small class.

    q = normalize(f_q(x_q))                      # queries, trained by gradients
    θk ← m·θk + (1−m)·θq                          # key encoder: momentum only
    k = normalize(f_k(shuffle(x_k)))[unshuffle]  # keys; shuffle defeats BN "cheating"
    logits = [q·k, q·queue] / T ; loss = CE(logits, 0)
    enqueue(k) ; drop the oldest

Shuffle-BN: under DDP the key batch is shuffled across ranks (all_gather + a broadcast
permutation); on one process the encoders use split BatchNorm (G groups with separate
statistics, see split_bn.py) and the keys are shuffled across groups.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.models.backbone import extract_features, feature_dim
from fewshot.ssl.functional import (all_finite_rows, enqueue_, infonce_logits, infonce_loss, momentum_update_,
                                    shuffle_permutation, without_stochastic_depth)
from fewshot.ssl.split_bn import convert_split_bn


class Encoder(nn.Module):
    """Backbone + projection (MLP for v2, linear for v1): x -> [B, dim] embeddings (not normalised)."""

    def __init__(self, backbone: nn.Module, dim: int = 128, mlp: bool = True, hidden: int | None = None):
        super().__init__()
        self.backbone = backbone
        width = feature_dim(backbone)
        hidden = hidden or width
        self.head = (nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
                     if mlp else nn.Linear(width, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(extract_features(self.backbone, x).mean(1))


def _ddp() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """All ranks' tensors concatenated in rank order (no gradient)."""
    if not _ddp():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def batch_shuffle_ddp(x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Shuffle the global key batch across ranks; returns this rank's part and the unshuffle index."""
    local = x.shape[0]
    gathered = concat_all_gather(x)
    perm, inverse = shuffle_permutation(gathered.shape[0], generator)
    perm, inverse = perm.to(x.device), inverse.to(x.device)
    dist.broadcast(perm, src=0)  # every rank must use rank 0's permutation
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm), device=perm.device)
    rank = dist.get_rank()
    return gathered[perm.view(-1, local)[rank]], inverse.view(-1, local)[rank]


@torch.no_grad()
def batch_unshuffle_ddp(x: Tensor, idx_unshuffle: Tensor) -> Tensor:
    return concat_all_gather(x)[idx_unshuffle]


class MoCo(nn.Module):
    def __init__(self, backbone: nn.Module, dim: int = 128, queue_size: int = 4096, momentum: float = 0.999,
                 temperature: float = 0.2, mlp: bool = True, mlp_hidden: int | None = None,
                 split_bn_groups: int = 1, symmetric: bool = False, shuffle_across_ranks: bool = True):
        super().__init__()
        self.K, self.m, self.T, self.symmetric = queue_size, momentum, temperature, symmetric
        self.split_bn_groups = split_bn_groups
        self.shuffle_across_ranks = shuffle_across_ranks  # DDP's shuffle-BN; False: moco.shuffle_bn=off
        self.encoder_q = convert_split_bn(Encoder(backbone, dim, mlp, mlp_hidden), split_bn_groups)
        self.encoder_k = without_stochastic_depth(copy.deepcopy(self.encoder_q))
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros(1, dtype=torch.long))  # keys enqueued so far (capped at K)

    @torch.no_grad()
    def momentum_update(self) -> None:
        momentum_update_(list(self.encoder_k.parameters()), list(self.encoder_q.parameters()), self.m)

    @torch.no_grad()
    def keys(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Keys with shuffle-BN: the key batch is permuted before f_k and restored after (under DDP across the
        processes, unless moco.shuffle_bn=off; on one process the split-BN groups are the guard)."""
        if _ddp() and self.shuffle_across_ranks:
            shuffled, unshuffle = batch_shuffle_ddp(x, generator)
            return batch_unshuffle_ddp(F.normalize(self.encoder_k(shuffled), dim=1), unshuffle)
        perm, inverse = shuffle_permutation(x.shape[0], generator, device=x.device)
        return F.normalize(self.encoder_k(x[perm]), dim=1)[inverse]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Add this step's keys (all ranks', in rank order); skipped entirely if any is non-finite."""
        keys = concat_all_gather(keys.float())
        if not bool(all_finite_rows(keys).all()):
            return
        ptr = enqueue_(self.queue, int(self.queue_ptr), keys)
        self.queue_ptr[0] = ptr
        self.queue_filled[0] = min(self.K, int(self.queue_filled) + keys.shape[0])

    def contrast(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        # fp32 logits even under autocast (CPU autocast would compute q @ queue in bf16): at T=0.2 the
        # negatives' rounding error reaches 0.008, the size of the differences InfoNCE learns from late
        with torch.autocast(q.device.type, enabled=False):
            logits = infonce_logits(q.float(), k.float(), self.queue.clone().detach(), self.T)
        return infonce_loss(logits), logits

    def forward(self, im_q: Tensor, im_k: Tensor, generator: torch.Generator | None = None):
        """(loss, logits) for a batch of view pairs; updates f_k and the queue as side effects."""
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = self.keys(im_k, generator)
        if not self.symmetric:
            loss, logits = self.contrast(q, k)
            self.enqueue(k)
            return loss, logits
        q2 = F.normalize(self.encoder_q(im_k), dim=1)
        with torch.no_grad():
            k2 = self.keys(im_q, generator)
        loss1, logits = self.contrast(q, k)
        loss2, _ = self.contrast(q2, k2)
        self.enqueue(torch.cat([k, k2]))
        return (loss1 + loss2) / 2, logits
