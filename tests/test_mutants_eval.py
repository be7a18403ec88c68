"""Scoring facts the evaluation tests let through (mutation testing, fAT): the mean is over the datasets scored
(a dataset with no image in the split is no 0 % in it), and logits are computed in eval mode, the model's own
mode restored after."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.data.label_space import LabelSpace
from fewshot.eval.evaluate import compute_logits, score

SPACE = LabelSpace(("a", "b", "c"), (("a0", "a1", "a2"), ("b0", "b1", "b2", "b3", "b4"), ("c0", "c1")))


def test_the_mean_is_over_the_datasets_with_images_only():
    logits = torch.full((3, 10), -1.0)
    logits[0, 1] = logits[1, 0] = logits[2, 3] = 3.0  # a: a1 right, a0 for a2 wrong (50 %); b: b0 right (100 %)
    targets, ids = torch.tensor([1, 2, 3]), torch.tensor([0, 0, 1])
    known = score(logits, targets, ids, SPACE, "known")
    assert set(known["datasets"]) == {"a", "b"}  # c has no image here
    assert known["mean_acc1"] == pytest.approx((50.0 + 100.0) / 2)


def test_logits_are_computed_in_eval_mode_and_the_models_mode_is_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4)).train()
    with torch.no_grad():
        model[2].running_mean.fill_(1.0)
        model[2].running_var.fill_(4.0)
    images = torch.randint(0, 256, (6, 3, 2, 2), dtype=torch.uint8)
    out = compute_logits(model, images.float(), nn.Identity(), torch.device("cpu"), batch_size=4)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        expected = model(images.float())  # running statistics, the same for a batch of 4 and of 2
    torch.testing.assert_close(out, expected)
