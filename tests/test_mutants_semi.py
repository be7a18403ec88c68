"""Pseudo-label facts the semi tests let through (mutation testing, fAT): FixMatch keeps a weak-view label whose
confidence equals the threshold ("at least"), the chance floor counts the classes of the image's own dataset, and a
dataset's cap keeps its most confident labels."""

from __future__ import annotations

import math

import torch

from fewshot.data.label_space import LabelSpace
from fewshot.train.semi import fixmatch_loss, select_pseudo_labels

SPACE = LabelSpace(("a", "b"), (("a0", "a1"), ("b0", "b1", "b2")))


def test_fixmatch_keeps_a_pseudo_label_exactly_at_the_threshold():
    weak = torch.zeros(2, 5)  # a's two classes tie: 0.5 each, exactly; an unknown-source row: 0.2 each
    strong = torch.zeros(2, 5)
    loss, rate = fixmatch_loss(weak, strong, torch.tensor([0, -1]), SPACE, threshold=0.5)
    assert rate.item() == 0.5
    assert math.isclose(loss.item(), math.log(5) / 2, rel_tol=1e-6)  # mean over both rows, the masked one as 0


def test_the_chance_floor_counts_the_classes_of_the_images_own_dataset():
    """0.7 over a's two classes is below its floor (0.75, halfway to certainty); counted over all five classes the
    floor would be 0.4 and the label kept."""
    logits = torch.zeros(1, 5)
    logits[0, 0] = math.log(0.7 / 0.3)
    idx, _, conf = select_pseudo_labels(logits, torch.tensor([0]), SPACE, torch.full((5,), 5))
    assert len(idx) == 0
    logits[0, 0] = math.log(0.8 / 0.2)
    idx, labels, conf = select_pseudo_labels(logits, torch.tensor([0]), SPACE, torch.full((5,), 5))
    assert idx.tolist() == [0] and labels.tolist() == [0] and math.isclose(conf.item(), 0.8, rel_tol=1e-6)


def test_a_datasets_cap_keeps_its_most_confident_labels():
    logits = torch.zeros(4, 5)
    logits[0, 0], logits[1, 1], logits[2, 0] = 3.0, 5.0, 4.0  # a: confidences ~0.95, ~0.99, ~0.98
    logits[3, 3] = 6.0  # b
    ids = torch.tensor([0, 0, 0, 1])
    idx, labels, _ = select_pseudo_labels(logits, ids, SPACE, torch.full((5,), 5), per_dataset=torch.tensor([2, 1]))
    assert idx.tolist() == [1, 2, 3] and labels.tolist() == [1, 0, 3]
