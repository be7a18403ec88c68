"""Split (ghost) batch norm: shuffle-BN for a single device.

MoCo's positive pair can "cheat" through BatchNorm: when query i and key i are
normalised with statistics of the same samples, the batch statistics carry
information that identifies the pair. The official code shuffles the keys
across GPUs so each key is normalised with other samples than its query. On one
device we emulate G GPUs: the batch is normalised as G independent groups, each
with its own statistics, and the keys are shuffled across groups before the key
encoder (see ``functional.shuffle_permutation``).

Group g holds samples n with n % G == g: that is what viewing a contiguous
[N, C, H, W] batch as [N/G, G*C, H, W] gives, so one ``F.batch_norm`` call over
G*C "channels" computes all groups at once. BatchNorm1d is split the same way, on
[N, C] and [N, C, L]; a model that flattens its tokens into the batch before a
BatchNorm1d (LeViT: ``bn(x.flatten(0, 1))``, N*T rows, sample-major) is grouped by
the sample each row belongs to (row r is sample r // T), so every layer uses the same
G groups of samples: groups that differ from layer to layer would mix the whole batch
again. T comes from the batch size at the converted model's input, recorded by a
forward pre-hook (``convert_split_bn``).

The result is returned as a fresh tensor, not as a view of the [N/G, G*C, H, W] output:
ResNets apply in-place ops right after BatchNorm (``ReLU(inplace=True)``, ``x += shortcut``),
and an in-place op on a *view* makes autograd record CopySlices/AsStrided nodes that clone and
scatter the whole activation in backward (about 10 % of a CPU MoCo step at 64 px, see
docs/performance.md). ``_unsafe_view`` is the same reshape without the view bookkeeping; the
numbers are identical. ``set_fast_path(False)`` restores the plain view (tests, ablation).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

try:  # timm's fused BN + activation (+ drop) layer, used by e.g. efficientnet/byobnet
    from timm.layers import BatchNormAct2d
except ImportError:  # pragma: no cover - timm is a dependency, but keep this module usable without it
    BatchNormAct2d = None

__all__ = ["SplitBatchNorm1d", "SplitBatchNorm2d", "split_batch_norm", "convert_split_bn", "unsplit_batch_norms",
           "set_fast_path"]

_FAST = True  # see the module docstring; False: the reshape result is returned as a plain view


def set_fast_path(enabled: bool) -> bool:
    """Turn the alias-free output on/off (for tests and the ablation); returns the old setting."""
    global _FAST
    old, _FAST = _FAST, bool(enabled)
    return old


def _reshape_out(y: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``y.reshape(shape)`` for a contiguous y, returned as a non-view when the fast path is on."""
    if _FAST:
        return torch.ops.aten._unsafe_view(y, shape)
    return y.reshape(shape)


class _Samples:
    """The batch size at the converted model's input, shared by its split layers (set by ``_RecordSamples``)."""

    __slots__ = ("n", "hooked")

    def __init__(self):
        self.n = None
        self.hooked = False  # set by convert_split_bn: a layer then needs n, which only the model's forward sets


class _RecordSamples:
    """Hooks on the converted model: the batch size at its input, for the forward pass only (a stale size would
    group the rows of a later call of one of its parts)."""

    def __init__(self, samples: _Samples):
        self.samples = samples

    def record(self, module: nn.Module, args: tuple) -> None:
        self.samples.n = args[0].shape[0] if args and isinstance(args[0], Tensor) else None

    def forget(self, module: nn.Module, args: tuple, output) -> None:
        self.samples.n = None


def split_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, num_splits: int,
                     samples: int | None = None) -> Tensor:
    """Batch-norm ``x`` with ``bn``'s parameters, as ``num_splits`` independent groups of samples.

    When batch statistics are used (training, or no running buffers) each group
    n % G == g gets its own mean/var. The running stats (size C) are repeated G
    times for the call and then set to the mean over the G updated copies, as
    lightly does. When running stats are used (eval) this is plain BatchNorm.
    ``x`` is [R, C, *]; ``samples`` is the model's batch size N when the R = N*T rows
    are its samples' tokens, sample-major (None: the rows are the samples).
    """
    if x.ndim < 2:
        raise ValueError(f"expected input [N, C, ...], got {x.ndim}D")
    use_batch_stats = bn.training or bn.running_mean is None
    if num_splits == 1 or not use_batch_stats:
        return nn.modules.batchnorm._BatchNorm.forward(bn, x)

    rows, c, rest = x.shape[0], x.shape[1], tuple(x.shape[2:])
    g = num_splits
    n = rows if samples is None else samples
    if n % g or rows % n:
        raise ValueError(
            f"split batch norm needs the batch size to be a multiple of the number of splits: "
            f"got N={n}, G={g}" + (f", {rows} rows" if rows != n else "") + " (drop short batches when split BN is on)"
        )
    t = rows // n  # rows per sample
    update = bn.training and bn.track_running_stats
    factor = 0.0
    if update:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    running_mean = bn.running_mean.repeat(g) if update else None
    running_var = bn.running_var.repeat(g) if update else None
    weight = bn.weight.repeat(g) if bn.weight is not None else None
    bias = bn.bias.repeat(g) if bn.bias is not None else None

    # A channels_last batch cannot be viewed as [N/G, G*C, H, W]: reshape copies it.
    channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if t == 1:
        grouped = x.reshape(n // g, g * c, *rest)
    else:  # row b*T + s of sample b = b'*G + group: [N/G, G, T, C, *] -> [N/G * T, G*C, *] (a copy)
        grouped = x.reshape(n // g, g, t, c, *rest).transpose(1, 2).reshape(n // g * t, g * c, *rest)
    y = F.batch_norm(grouped, running_mean, running_var, weight, bias, True, factor, bn.eps)
    if update:
        with torch.no_grad():
            bn.running_mean.copy_(running_mean.view(g, c).mean(dim=0))
            bn.running_var.copy_(running_var.view(g, c).mean(dim=0))
    if t > 1:  # the transpose back copies: a fresh tensor anyway
        return y.reshape(n // g, t, g, c, *rest).transpose(1, 2).reshape(x.shape)
    if channels_last:  # the copy back to channels_last is a fresh tensor anyway
        return y.reshape(x.shape).contiguous(memory_format=torch.channels_last)
    return _reshape_out(y, tuple(x.shape))


class _Split:
    """What the split layers add to their BatchNorm class: ``num_splits`` and the shared record of samples."""

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits
        self.samples = _Samples()  # replaced by the converted model's shared record

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


class SplitBatchNorm1d(_Split, nn.BatchNorm1d):
    """BatchNorm1d whose batch statistics are computed per group of samples (see module doc).

    Input [N, C], [N, C, L], or [N*T, C] rows of N samples' tokens (sample-major) once
    ``convert_split_bn`` has hooked the model's input. State dicts are nn.BatchNorm1d's.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.samples.hooked and self.samples.n is None:
            # rows of N samples' tokens grouped as if each row were a sample would mix every sample into every
            # group, silently: the layer was called outside its model's forward (or the input came as a keyword)
            raise RuntimeError("a split BatchNorm1d trained outside the forward of the model convert_split_bn "
                               "converted: the samples its rows belong to are unknown")
        return split_batch_norm(self, x, self.num_splits, self.samples.n)


class SplitBatchNorm2d(_Split, nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics are computed per group of the batch (see module doc).

    Parameters and buffers have the usual size C, so state dicts are
    interchangeable with nn.BatchNorm2d. In training, N must be a multiple of
    ``num_splits``; eval mode is plain BatchNorm2d with the running stats.
    """

    def forward(self, x: Tensor) -> Tensor:
        return split_batch_norm(self, x, self.num_splits, self.samples.n)


if BatchNormAct2d is not None:

    class SplitBatchNormAct2d(_Split, BatchNormAct2d):
        """timm's BatchNormAct2d (BN, then drop, then activation) with split batch statistics."""

        def forward(self, x: Tensor) -> Tensor:
            return self.act(self.drop(split_batch_norm(self, x, self.num_splits, self.samples.n)))

    __all__.append("SplitBatchNormAct2d")


def _split_copy(bn: nn.modules.batchnorm._BatchNorm, num_splits: int, samples: _Samples) -> nn.Module:
    """A split version of ``bn`` sharing its parameter and buffer tensors."""
    kwargs = dict(eps=bn.eps, momentum=bn.momentum, affine=bn.affine, track_running_stats=bn.track_running_stats)
    if type(bn) is nn.BatchNorm1d:
        new = SplitBatchNorm1d(bn.num_features, num_splits, **kwargs)
    elif type(bn) is nn.BatchNorm2d:
        new = SplitBatchNorm2d(bn.num_features, num_splits, **kwargs)
    else:  # timm BatchNormAct2d: keep its drop and activation modules
        new = SplitBatchNormAct2d(bn.num_features, num_splits, apply_act=False, **kwargs)
        new.drop, new.act = bn.drop, bn.act
    new.samples = samples
    # Share (not copy) the tensors: optimizers and EMA copies holding them stay valid.
    for name in ("weight", "bias"):
        new._parameters[name] = bn._parameters[name]
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        new._buffers[name] = bn._buffers[name]
    new.train(bn.training)
    return new


def _convertible(module: nn.Module) -> bool:
    return type(module) in (nn.BatchNorm1d, nn.BatchNorm2d) or (
        BatchNormAct2d is not None and type(module) is BatchNormAct2d)


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every nn.BatchNorm1d, nn.BatchNorm2d and timm BatchNormAct2d by its split version, in place.

    Returns ``module`` (or its replacement when ``module`` itself is a BN layer),
    like ``nn.SyncBatchNorm.convert_sync_batchnorm``. The new layers share the
    old parameters and buffers, so eval-mode outputs are unchanged. Only those
    exact types are converted: other BatchNorm subclasses (e.g. timm's AugMix
    SplitBatchNorm2d) have their own forward that a split version could not
    reproduce faithfully, so they are left as they are (``unsplit_batch_norms``
    names them). Existing split layers get the new ``num_splits``. ``num_splits=1``
    returns ``module`` as is. A forward pre-hook on ``module`` records its batch size
    for layers fed the samples' tokens (or windows) as rows (module doc).
    """
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    if num_splits == 1:
        return module
    samples = _Samples()
    new = _convert(module, num_splits, samples)
    if new is module and any(getattr(m, "samples", None) is samples for m in module.modules()):
        hooks = _RecordSamples(samples)
        samples.hooked = True
        module.register_forward_pre_hook(hooks.record)
        module.register_forward_hook(hooks.forget)
    return new


def _convert(module: nn.Module, num_splits: int, samples: _Samples) -> nn.Module:
    if isinstance(module, _Split):
        module.num_splits = num_splits
        return module
    if _convertible(module):
        return _split_copy(module, num_splits, samples)
    for name, child in module.named_children():
        new = _convert(child, num_splits, samples)
        if new is not child:
            setattr(module, name, new)
    return module


def unsplit_batch_norms(module: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that still normalise over the whole batch (types split BN cannot convert)."""
    return [name or type(m).__name__ for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _Split)]
