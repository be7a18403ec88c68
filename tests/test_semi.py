"""Use of the pool in fine-tuning, hand-checked: FixMatch loss (pseudo-labels restricted to the image's
dataset, confidence mask) and self-training's class-balanced selection of pseudo-labels."""

import math

import torch

from fewshot.data.label_space import LabelSpace
from fewshot.train.semi import class_quota, fixmatch_loss, select_pseudo_labels

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


def test_self_training_keeps_the_most_confident_images_of_each_class_up_to_its_quota():
    # dataset a (classes 0,1): rows 0-3; dataset b (classes 2,3,4): rows 4-6; row 7 unknown source
    logits = torch.tensor([
        [5.0, 0.0, 0.0, 0.0, 9.0],   # a: class 0, very confident (class 4 belongs to b: ignored)
        [3.0, 0.0, 0.0, 0.0, 0.0],   # a: class 0, less confident
        [1.0, 0.0, 0.0, 0.0, 0.0],   # a: class 0, least confident -> over the quota of 2
        [0.0, 2.0, 0.0, 0.0, 0.0],   # a: class 1
        [0.0, 0.0, 0.0, 4.0, 0.0],   # b: class 3
        [0.0, 0.0, 0.1, 0.0, 0.0],   # b: class 2, confidence below the threshold
        [9.0, 0.0, 0.0, 0.0, 0.0],   # b: class 0 is not b's -> restricted argmax is 2,3,4 (uniform: 2, low)
        [0.0, 0.0, 0.0, 0.0, 6.0],   # unknown source: argmax over all classes -> 4
    ])
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, -1])
    quota = torch.tensor([2, 2, 2, 2, 2])
    idx, labels, conf = select_pseudo_labels(logits, ids, SPACE, quota, threshold=0.5)
    assert idx.tolist() == [0, 1, 3, 4, 7]
    assert labels.tolist() == [0, 0, 1, 3, 4]
    p = math.exp(5) / (math.exp(5) + 1)  # row 0's softmax within dataset a
    assert math.isclose(conf[0].item(), p, rel_tol=1e-6)
    assert bool((conf >= 0.5).all())
    # a quota of zero keeps nothing of that class
    idx0, _, _ = select_pseudo_labels(logits, ids, SPACE, torch.tensor([0, 2, 2, 2, 2]), threshold=0.5)
    assert 0 not in idx0.tolist() and 1 not in idx0.tolist()


def test_class_quota_splits_each_datasets_pool_evenly_over_its_classes():
    ids = torch.tensor([0] * 8 + [1] * 6)
    assert class_quota(ids, SPACE, 0.5).tolist() == [2, 2, 1, 1, 1]
    assert class_quota(ids, SPACE, 1.0).tolist() == [4, 4, 2, 2, 2]
    # unknown-source images are shared out in proportion to the classes
    assert class_quota(torch.tensor([-1] * 10), SPACE, 1.0).tolist() == [2, 2, 2, 2, 2]
