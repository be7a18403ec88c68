"""Convolutions on tiny maps, computed as the matrix products they are.

At 32 px a ResNet's last stages see 2x2 and 1x1 maps (at 64 px, 2x2). A 3x3 convolution with
padding 1 on a 1x1 map uses one of its nine taps (the other eight fall on the zero padding); on a
2x2 map each output pixel sees four of them. oneDNN's CPU kernels are slow there, above all in the
backward: the weight gradient of a 512->512 3x3 convolution on 1x1 maps at batch 256 takes ~11 ms
against ~1 ms for the one matmul it amounts to (docs/performance.md). So on the CPU
`TinyMapConv2d` computes

* a convolution with a one-pixel output as ``F.linear`` over the input window its taps reach;
* a convolution whose input map has fewer pixels than its kernel has taps, and where every output
  pixel sees every input pixel (3x3 on 2x2), as ``F.linear`` with the dense matrix that maps the
  input map to the output map, built from the kernel's taps each call (P*Q*Cout*Cin values, kept for
  the backward: 8 MB in bf16 for 512 -> 512 on 2x2). Building it costs the same at any batch size, so
  this one is used where it was measured to pay: under CPU autocast, or from batch 128;

the same sums without the zero terms (equal within float rounding; tests/test_fast_path.py), and
autograd differentiates the matmuls. Every other shape, other devices, groups, dilation and
non-zero padding modes go through `nn.Conv2d` unchanged. ``set_fast_path(False)`` turns the
shortcut off (tests, ablation).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TinyMapConv2d", "swap_tiny_map_convs", "set_fast_path", "plain_convolutions"]

_FAST = True
_MAX_PAIRS = 64         # (output pixel, input pixel) pairs of the dense path: beyond this the maps are not tiny
_DENSE_MIN_BATCH = 128  # in fp32 the dense path lost at batch 64 and won at 256 (docs/performance.md)


def set_fast_path(enabled: bool) -> bool:
    """Switch the matmul shortcuts on or off; returns the previous setting."""
    global _FAST
    old, _FAST = _FAST, bool(enabled)
    return old


@contextmanager
def plain_convolutions():
    """Every convolution through `nn.Conv2d` inside the block: FLOP counts then follow the network's
    definition (the usual convention, and what other tools report), not the zero terms skipped here."""
    old = set_fast_path(False)
    try:
        yield
    finally:
        set_fast_path(old)


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


@lru_cache(maxsize=64)
def _tap_links(in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
               pad: tuple[int, int]) -> tuple[tuple[int, int, int], ...]:
    """The (output pixel, input pixel, kernel tap) triples a convolution links on this map size."""
    (h, w), (kh, kw), (sh, sw), (ph, pw) = in_hw, kernel, stride, pad
    oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    links = []
    for oy in range(oh):
        for ox in range(ow):
            for iy in range(h):
                for ix in range(w):
                    ky, kx = iy - oy * sh + ph, ix - ox * sw + pw
                    if 0 <= ky < kh and 0 <= kx < kw:
                        links.append((oy * ow + ox, iy * w + ix, ky * kw + kx))
    return tuple(links)


class _DenseMatrix(torch.autograd.Function):
    """The [P*Cout, Q*Cin] matrix (pixel-major rows and columns) of a convolution from a Q-pixel map
    to a P-pixel map, in the dtype the matmul will run in (bf16 under autocast: no second cast of the
    matrix). The taps are first laid out as [taps, Cout, Cin], so each linked pixel pair is one copy of
    whole rows forward and one copy or add backward."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx, inputs, output):
        weight, shape, links, _ = inputs
        ctx.links, ctx.weight_shape, ctx.weight_dtype, ctx.shape = links, weight.shape, weight.dtype, shape

    @staticmethod
    def forward(weight: Tensor, shape: tuple[int, int], links: tuple, dtype: torch.dtype) -> Tensor:
        cout, cin, kh, kw = weight.shape
        p, q = shape
        # cast first, then one 3-D re-layout in the matmul's dtype: on the AVX-512 EPYC twice as fast as the 2-D
        # transposing copy with the cast inside it (torch's 2-D transpose copy suits square blocks, not 9 columns)
        taps = weight.to(dtype).reshape(cout, cin, kh * kw).permute(2, 0, 1).contiguous()
        matrix = taps.new_empty(p, cout, q, cin)  # every pixel pair is linked (TinyMapConv2d checks): no zero fill
        for pi, qi, tap in links:
            matrix[pi, :, qi, :] = taps[tap]
        return matrix.view(p * cout, q * cin)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cout, cin, kh, kw = ctx.weight_shape
        grad = grad.reshape(ctx.shape[0], cout, ctx.shape[1], cin)
        return _tap_gradients(grad, ctx.links, kh * kw, ctx.weight_dtype).permute(1, 2, 0).contiguous().view(
            ctx.weight_shape), None, None, None


def _tap_gradients(grad: Tensor, links: tuple, taps: int, dtype: torch.dtype) -> Tensor:
    """[taps, Cout, Cin] sums of the matrix gradient's blocks (grad is [P, Cout, Q, Cin]), in the weight's dtype (fp32
    under bf16 autocast). A tap's first block is copied, not added to zeros: the same sums without a fill of the
    whole gradient; taps no pixel pair links (a 1x2 map's) stay zero."""
    linked = {tap for _, _, tap in links}
    make = grad.new_empty if len(linked) == taps else grad.new_zeros
    out = make(taps, grad.shape[1], grad.shape[3], dtype=dtype)
    done = set()
    for pi, qi, tap in links:
        if tap in done:
            out[tap] += grad[pi, :, qi, :]
        else:
            out[tap].copy_(grad[pi, :, qi, :])
            done.add(tap)
    return out


class TinyMapConv2d(nn.Conv2d):
    """`nn.Conv2d` that computes convolutions on tiny CPU maps as matmuls (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        if (_FAST and x.device.type == "cpu" and x.dim() == 4 and self.groups == 1
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and self.dilation == (1, 1)):
            out = self._as_matmul(x)
            if out is not None:
                return out
        return super().forward(x)

    def _as_matmul(self, x: Tensor) -> Tensor | None:
        batch, _, h, w = x.shape
        if batch == 0:
            return None
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        cout = self.weight.shape[0]
        if oh == ow == 1 and ph < kh and pw < kw:  # one output pixel: a linear layer over its window
            rows, cols = min(kh - ph, h), min(kw - pw, w)
            weight = self.weight[:, :, ph:ph + rows, pw:pw + cols]
            out = F.linear(x[:, :, :rows, :cols].reshape(batch, -1), weight.reshape(cout, -1), self.bias)
            return out.view(batch, cout, 1, 1)
        if (oh >= 1 and ow >= 1 and h * w < kh * kw and oh * ow * h * w <= _MAX_PAIRS
                and (batch >= _DENSE_MIN_BATCH or torch.is_autocast_enabled("cpu"))):
            links = _tap_links((h, w), (kh, kw), (sh, sw), (ph, pw))
            if len(links) < oh * ow * h * w:  # some pixel pairs share no tap: the matrix would multiply zero blocks
                return None
            dtype = self.weight.dtype  # autocast casts fp32 (not float64) matmuls: build the matrix in its dtype
            if torch.is_autocast_enabled("cpu") and dtype == torch.float32:
                low = torch.get_autocast_dtype("cpu")
                dtype = low if x.dtype in (torch.float32, low) else dtype
            matrix = _DenseMatrix.apply(self.weight, (oh * ow, h * w), links, dtype)
            bias = None if self.bias is None else self.bias.repeat(oh * ow)
            # pixel-major: the input flattened channels-last; the output back in the input's memory format
            # (a few hundred KB: models that .view() a convolution's output keep working)
            pixels = x.permute(0, 2, 3, 1).reshape(batch, -1)
            out = F.linear(pixels, matrix, bias).view(batch, oh, ow, cout).permute(0, 3, 1, 2)
            return out if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
                else out.contiguous()
        return None


def swap_tiny_map_convs(model: nn.Module) -> int:
    """Make every plain `nn.Conv2d` of `model` a `TinyMapConv2d` in place; returns how many.

    Only the class changes (same parameters and buffers), so state-dict keys, export and timm
    loading are unaffected.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = TinyMapConv2d
            swapped += 1
    return swapped
