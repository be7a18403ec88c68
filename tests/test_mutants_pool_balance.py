"""Facts the fast-path, balance and semi tests let through (mutation testing, fAT): the max-pool swap keeps
ceil_mode and leaves a pool that returns indices alone; the skew test's chi-square has (classes - 1) degrees of
freedom; a one-class dataset's pseudo-labels (confidence 1, its chance floor) are never kept."""

from __future__ import annotations

import math

import torch
from torch import nn

from fewshot.data.label_space import LabelSpace
from fewshot.eval.balance import fits_proportions
from fewshot.models.fast_pool import swap_max_pools
from fewshot.train.semi import select_pseudo_labels


def test_swapped_max_pool_keeps_ceil_mode_and_a_pool_with_indices_is_left_alone():
    model = nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d(2, return_indices=True))
    plain = nn.MaxPool2d(3, 2, ceil_mode=True)
    assert swap_max_pools(model) == 1
    assert type(model[1]) is nn.MaxPool2d
    x = torch.randn(1, 2, 8, 8)
    torch.testing.assert_close(model[0](x), plain(x))  # 4x4 with ceil_mode, 3x3 without
    out, idx = model[1](x)
    assert out.shape == idx.shape == (1, 2, 4, 4)


def test_the_skew_p_value_has_classes_minus_one_degrees_of_freedom():
    """2 classes, val all right (10 each: n_eff 20), test 15/5 of 20: pooled (0.625, 0.375), chi2 = 8/3; one degree
    of freedom: p = erfc(sqrt(chi2 / 2))."""
    val_logits = torch.eye(2).repeat_interleave(10, 0)
    val_targets = torch.arange(2).repeat_interleave(10)
    test_logits = torch.eye(2)[[0] * 15 + [1] * 5]
    p = fits_proportions(val_logits, val_targets, test_logits, torch.tensor([0.5, 0.5]))
    assert math.isclose(p, math.erfc(math.sqrt(4 / 3)), rel_tol=1e-4)


def test_a_one_class_datasets_pseudo_labels_are_never_kept():
    space = LabelSpace(("one", "two"), (("x",), ("a", "b")))
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    idx, labels, _ = select_pseudo_labels(logits, torch.tensor([0, 1]), space, torch.full((3,), 5))
    assert idx.tolist() == [1] and labels.tolist() == [1]  # row 0's confidence is 1 whatever the teacher says
