"""Pure tensor functions for MoCo (He et al. 2020): momentum update, key queue, InfoNCE.

Everything here is stateless so it can be tested against hand computations; the
MoCo module only owns the tensors (encoders, queue, pointer) and calls these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "momentum_update_",
    "enqueue_",
    "infonce_logits",
    "infonce_loss",
    "topk_accuracy",
    "shuffle_permutation",
    "all_finite_rows",
]


@torch.no_grad()
def momentum_update_(key_params: Sequence[Tensor], query_params: Sequence[Tensor], m: float) -> None:
    """θk ← m·θk + (1−m)·θq, in place, for all parameters at once.

    The key encoder is never trained by gradients; it trails the query encoder
    slowly so the keys in the queue stay consistent (m = 0.999 in the paper).
    ``lerp(θk, θq, 1−m)`` is exactly that average, and one ``_foreach`` call
    updates every tensor in a few fused kernels instead of a Python loop with
    two kernels per parameter (hundreds of launches per step for a ResNet).
    m = 1 leaves θk bit-for-bit unchanged; m = 0 copies θq exactly.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m must be in [0, 1], got {m}")
    key_params, query_params = list(key_params), list(query_params)
    if len(key_params) != len(query_params):
        raise ValueError(f"{len(key_params)} key parameters but {len(query_params)} query parameters")
    if not key_params:
        return
    torch._foreach_lerp_(key_params, query_params, 1.0 - m)


@torch.no_grad()
def enqueue_(queue: Tensor, ptr: int, keys: Tensor) -> int:
    """Write ``keys`` into the ring buffer ``queue`` at rows ptr, ptr+1, ... (mod K).

    Returns the new pointer ``(ptr + B) % K``. The newest keys overwrite the
    oldest ones, which is the FIFO dictionary of MoCo. Unlike the official code
    this does not require K % B == 0: the write wraps around with at most two
    slice copies, so a short last batch or any K works. When B > K only the last
    K keys survive, at the rows they would have reached if written in order.
    """
    if queue.ndim != 2 or keys.ndim != 2 or keys.shape[1] != queue.shape[1]:
        raise ValueError(f"expected queue [K, D] and keys [B, D], got {tuple(queue.shape)} and {tuple(keys.shape)}")
    size, batch = queue.shape[0], keys.shape[0]
    if not 0 <= ptr < size:
        raise ValueError(f"queue pointer {ptr} is outside [0, {size})")
    n = min(batch, size)  # keys that survive this write
    start = (ptr + batch - n) % size  # row of the first surviving key
    first = min(n, size - start)  # rows before the wrap-around
    queue[start : start + first] = keys[batch - n : batch - n + first]
    if first < n:
        queue[: n - first] = keys[batch - n + first :]
    return (ptr + batch) % size


def infonce_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Logits ``[q·k, q·queueᵀ] / T`` of shape [B, 1+K]; the positive is column 0.

    q and k are L2-normalised [B, D]; queue holds K normalised keys as rows
    [K, D]. The queue is detached: its keys came from earlier steps and must
    never carry gradients into the query encoder.
    """
    if q.shape != k.shape or q.ndim != 2 or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            f"expected q, k [B, D] and queue [K, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(queue.shape)}"
        )
    positive = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    negatives = q @ queue.detach().t()  # [B, K]
    return torch.cat([positive, negatives], dim=1) / temperature


SAFE_TEMPERATURE = 0.01  # below it the logits reach 1/T (over 100), and the loss's gradients grow as much
FP16_MAX = 65504.0  # fp16's largest value: logits of 1/T pass it below T = 1.5e-5


def temperature_hint(temperature: float) -> str | None:
    """Why a MoCo loss with this temperature went non-finite, in a sentence, where the temperature explains it (None:
    it does not): the engine's message said only "Lower the learning rate" to a run with moco.temperature=1e-30.
    Overflow is named only where the logits pass fp16's range: at T=0.005 they reach 200, finite in fp16 and fp32,
    and it is the gradients, 1/T times larger, that carry the weights to inf."""
    if not 0 < temperature < SAFE_TEMPERATURE:
        return None
    reach = 1 / temperature
    fp32_max = torch.finfo(torch.float32).max
    overflow = (f" (past fp32's largest value, {fp32_max:.1e}: they overflow even in fp32)" if reach > fp32_max else
                f" (past fp16's largest value, {FP16_MAX:g}: they overflow in fp16 autocast)" if reach > FP16_MAX
                else "")
    return (f"The temperature moco.temperature={temperature:g} is below {SAFE_TEMPERATURE:g}: the similarities (at "
            f"most 1) divided by it reach {reach:.0e}{overflow}, and the loss's gradients grow as 1/T, so a step can "
            f"carry the weights to inf or NaN; give a temperature of 0.07 (MoCo v1) to 0.2 (v2)")


def without_stochastic_depth(module: nn.Module) -> nn.Module:
    """``module`` with its stochastic depth (timm's DropPath; DropBlock2d too: every ``drop_prob``) turned off, in
    place (a helper on modules, not a tensor function, kept beside the MoCo math it serves): a key encoder's
    keys are targets, and dropped residual branches only add noise to them (MoCo's key encoder, a deep copy of the
    query one, kept model.drop_path=0.1: the same images and shuffle gave keys 0.29 apart)."""
    for mod in module.modules():
        if hasattr(mod, "drop_prob"):
            mod.drop_prob = 0.0
    return module


HIGH_TEMPERATURE = 1.0  # above it the logits span under 2 and the softmax over K + 1 keys is near uniform


def high_temperature_warning(temperature: float) -> str | None:
    """A warning (for warn_once) for a temperature so high that MoCo learns next to nothing (None: it is
    not): at 1e308 every logit was 0, the loss sat at ln(1 + K) with zero gradients, and the run ended "done" with
    nothing learnt. Given by pretrain, `fewshot run`'s MoCo stage and the joint loss (semi.method=moco)."""
    if not temperature > HIGH_TEMPERATURE:
        return None
    return (f"moco.temperature={temperature:g} is above {HIGH_TEMPERATURE:g}: the similarities (-1 to 1) "
            f"divided by it span at most {2 / temperature:.2g}, so the loss stays near ln(1 + K) and its gradients "
            f"shrink as 1/T: MoCo learns next to nothing. MoCo uses 0.07 (v1) to 0.2 (v2).")


def infonce_loss(logits: Tensor) -> Tensor:
    """InfoNCE: mean cross-entropy with the positive (column 0) as the target of every row."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


@torch.no_grad()
def topk_accuracy(logits: Tensor, target: Tensor, ks: Sequence[int] = (1, 5)) -> list[float]:
    """Percent of rows whose target is among the k largest logits, for each k.

    k is clipped to the number of columns so a tiny queue (or class count)
    still reports a value (100 % when k covers every column).
    """
    if logits.shape[0] == 0:
        return [0.0 for _ in ks]
    ks_clipped = [max(1, min(int(k), logits.shape[1])) for k in ks]
    top = logits.topk(max(ks_clipped), dim=1).indices  # [B, maxk]
    hit = top == target.view(-1, 1)
    # whole counts over n in float64: a float32 mean wrote 80.0000011920929 for 80 % (and could break the
    # strict "better than" of the best-epoch pick between two equal kNN accuracies)
    n = logits.shape[0]
    return [100.0 * int(hit[:, :k].any(dim=1).sum()) / n for k in ks_clipped]


def shuffle_permutation(
    n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """A random permutation and its inverse: ``x[perm][inverse] == x``.

    Used for shuffle-BN: keys are encoded as ``f_k(x[perm])`` and restored with
    ``[inverse]``, so that each key is normalised with batch statistics of
    samples other than its query's group. The permutation is drawn on the
    generator's device (so a seeded CPU generator gives the same permutation
    everywhere) and then moved to ``device``.
    """
    gen_device = generator.device if generator is not None else device
    perm = torch.randperm(n, generator=generator, device=gen_device)
    if device is not None:
        perm = perm.to(device)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n, device=perm.device)
    return perm, inverse


def all_finite_rows(x: Tensor) -> Tensor:
    """Bool [B]: rows without NaN/inf, so the queue never stores a poisoned key.

    One non-finite key in the queue would make every later logit NaN for K steps.
    """
    return torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
