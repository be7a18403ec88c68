"""FixMatch loss: pseudo-labels restricted to the image's dataset, confidence mask, hand-checked."""

import math

import torch

from fewshot.data.label_space import LabelSpace
from fewshot.train.semi import fixmatch_loss

SPACE = LabelSpace(("a", "b"), (("a0", "a1"), ("b0", "b1", "b2")))


def test_pseudo_label_stays_inside_the_known_dataset():
    # Weak logits prefer class 3 (dataset b) but the image comes from dataset a: the pseudo-label must be in a.
    weak = torch.tensor([[2.0, 0.0, 0.0, 9.0, 0.0]])
    strong = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]])
    loss, rate = fixmatch_loss(weak, strong, torch.tensor([0]), SPACE, threshold=0.5)
    p_a0 = math.exp(2) / (math.exp(2) + 1)  # restricted softmax over a's two classes
    assert p_a0 > 0.5 and rate.item() == 1.0
    expected = -(0.0 - math.log(4 + math.exp(1)))  # CE towards class 0 of the strong logits
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_unknown_source_uses_all_classes_and_threshold_masks():
    weak = torch.tensor([[2.0, 0.0, 0.0, 9.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    strong = torch.zeros(2, 5)
    loss, rate = fixmatch_loss(weak, strong, torch.tensor([-1, -1]), SPACE, threshold=0.9)
    # row 0: confident class 3 (over all classes); row 1: uniform, masked out
    assert rate.item() == 0.5
    assert math.isclose(loss.item(), math.log(5) / 2, rel_tol=1e-5)


def test_no_gradient_through_the_weak_view():
    weak = torch.randn(4, 5, requires_grad=True)
    strong = torch.randn(4, 5, requires_grad=True)
    loss, _ = fixmatch_loss(weak, strong, torch.tensor([0, 1, -1, 0]), SPACE, threshold=0.0)
    loss.backward()
    assert weak.grad is None and strong.grad is not None
