"""Max-pooling through torch's channels_last CPU kernel: the same numbers, a faster kernel.

ResNet stems max-pool the largest activation of the network (e.g. [64, 64, 32, 32] at 64 px).
On the CPU, torch's NCHW `max_pool2d_with_indices` walks that tensor at under 1 GB/s while its
channels_last kernel vectorises over channels: converting to channels_last, pooling and
converting back is ~4x faster forward and ~1.3x forward + backward, with bit-identical output
(docs/performance.md). Only the pooling goes through channels_last; the convolutions stay NCHW,
where oneDNN is faster on this class of CPU. On CUDA, and for inputs that already are
channels_last, it is plain `nn.MaxPool2d`. ``set_fast_path(False)`` restores the plain kernel
everywhere (tests, ablation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["NHWCMaxPool2d", "swap_max_pools", "set_fast_path"]

_FAST = True


def set_fast_path(enabled: bool) -> bool:
    """Switch the channels_last detour on or off; returns the previous setting."""
    global _FAST
    old, _FAST = _FAST, bool(enabled)
    return old


class NHWCMaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d` whose CPU forward runs the channels_last kernel on NCHW inputs."""

    def forward(self, x: Tensor) -> Tensor:
        if (_FAST and x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous()
                and not x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return super().forward(x)


def swap_max_pools(model: nn.Module) -> int:
    """Replace every plain `nn.MaxPool2d` of `model` in place; returns how many were replaced.

    The replacement has no parameters or buffers, so state-dict keys (export, timm loading) do
    not change.
    """
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.MaxPool2d and not child.return_indices:
                setattr(parent, name, NHWCMaxPool2d(child.kernel_size, child.stride, child.padding,
                                                    child.dilation, ceil_mode=child.ceil_mode))
                swapped += 1
    return swapped
