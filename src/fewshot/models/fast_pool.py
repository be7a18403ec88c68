"""Max-pooling through torch's channels_last CPU kernel: the same numbers, a faster kernel.

ResNet stems max-pool the largest activation of the network (e.g. [64, 64, 32, 32] at 64 px).
On the CPU, torch's NCHW `max_pool2d_with_indices` walks that tensor at under 1 GB/s while its
channels_last kernel vectorises over channels: converting to channels_last, pooling and
converting back is ~4x faster forward and ~1.3x forward + backward, with bit-identical output
(docs/performance.md); the backward runs the NCHW kernel on the same indices, so the gradient comes back
NCHW too. Only the pooling goes through channels_last; the convolutions stay NCHW,
where oneDNN is faster on this class of CPU. On CUDA, and for inputs that already are
channels_last, it is plain `nn.MaxPool2d`. ``set_fast_path(False)`` restores the plain kernel
everywhere (tests, ablation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

__all__ = ["NHWCMaxPool2d", "swap_max_pools", "set_fast_path"]

_FAST = True


def set_fast_path(enabled: bool) -> bool:
    """Switch the channels_last detour on or off; returns the previous setting."""
    global _FAST
    old, _FAST = _FAST, bool(enabled)
    return old


class _ChannelsLastMaxPool(torch.autograd.Function):
    """Forward through the channels_last kernel, backward through the NCHW one with the same indices (they count
    pixels within a channel, whatever the memory format), so the input's gradient comes back NCHW like the input.
    Plain autograd over the detour handed a channels_last gradient to the layers before the pool: the stem's ReLU
    backward then mixed layouts (about 10x slower, 20 ms of a 64 px bf16 MoCo step on the AVX-512 EPYC) and BN's
    backward copied it back."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, kernel: list, stride: list, padding: list, dilation: list, ceil_mode: bool):
        y, indices = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), kernel,
                                                            stride, padding, dilation, ceil_mode)
        return y.contiguous(), indices

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, *ctx.pool_args = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, output[1])
        ctx.save_for_forward(output[1])

    @staticmethod
    def jvp(ctx, x_tangent: Tensor, *_args):
        """Forward-mode AD (torch.func.jvp, forward_ad), as plain max-pooling has it: each output's tangent is its
        window's maximum's (review rev46: without this the fast path refused forward mode)."""
        indices = ctx.saved_tensors[-1]
        picked = x_tangent.flatten(2).gather(2, indices.flatten(2)).view_as(indices)
        return picked, None

    @staticmethod
    def backward(ctx, grad: Tensor, _indices_grad):
        x, indices = ctx.saved_tensors
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, *ctx.pool_args, indices)
        return grad_x, None, None, None, None, None


class NHWCMaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d` whose CPU forward runs the channels_last kernel on NCHW inputs."""

    def forward(self, x: Tensor) -> Tensor:
        if (_FAST and x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous()
                and not x.is_contiguous(memory_format=torch.channels_last)):
            return _ChannelsLastMaxPool.apply(x, *self._pool_args())[0]
        return super().forward(x)

    def _pool_args(self) -> tuple:
        """The aten call's arguments as nn.MaxPool2d's forward gives them (stride None means the kernel size)."""
        stride = self.stride if self.stride is not None else self.kernel_size
        return (_pair(self.kernel_size), _pair(stride), _pair(self.padding), _pair(self.dilation),
                bool(self.ceil_mode))


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
