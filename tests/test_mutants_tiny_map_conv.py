"""TinyMapConv2d facts the tests let through (mutation testing, fBB): a grouped convolution goes through
`nn.Conv2d` (the matmul paths assume one group), with its outputs and gradients those of F.conv2d."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.models.tiny_map_conv import TinyMapConv2d


@pytest.mark.parametrize("hw", [1, 2])
def test_grouped_tiny_map_conv_equals_conv2d(hw):
    torch.manual_seed(0)
    conv = TinyMapConv2d(4, 6, 3, padding=1, groups=2)
    x = torch.randn(128, 4, hw, hw, requires_grad=True)  # batch 128: the dense path would be taken on 2x2
    out = conv(x)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = F.conv2d(ref_x, conv.weight, conv.bias, padding=1, groups=2)
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    weight_grad = conv.weight.grad.clone()
    conv.weight.grad = None
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)
    torch.testing.assert_close(weight_grad, conv.weight.grad)
