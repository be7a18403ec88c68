"""MoCo facts the module tests let through (mutation testing, fAT): the keys come from the key encoder as this
step's momentum update left it (the module tests start with f_k == f_q, where the update is a no-op), and the
symmetric loss is the mean of its two halves, the second contrasting f_q(x_k) with the keys of x_q."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fewshot.models.backbone import create_backbone
from fewshot.ssl.moco import MoCo
from helpers.tiny import view_pair


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def moco_with_distinct_encoders(symmetric: bool = False, momentum: float = 0.5) -> MoCo:
    """One split-BN group (the key batch's order cannot change its statistics) and f_q moved away from f_k, as
    after some training: the momentum update then changes the keys."""
    torch.manual_seed(0)
    model = MoCo(create_backbone("test_resnet", img_size=32), dim=16, queue_size=12, momentum=momentum,
                 temperature=0.2, split_bn_groups=1, symmetric=symmetric).train()
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def capture_keys(model: MoCo) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    orig = model.keys

    def keys(x, generator):
        seen.append(orig(x, generator).detach().clone())
        return seen[-1]

    model.keys = keys
    return seen


@torch.no_grad()
def keys_by_hand(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(encoder(x), dim=1)


def test_keys_come_from_the_key_encoder_after_this_steps_momentum_update():
    model = moco_with_distinct_encoders()
    im_q, im_k = view_pair(4)
    updated = copy.deepcopy(model)
    updated.momentum_update()
    expected = keys_by_hand(updated.encoder_k, im_k)
    stale = keys_by_hand(copy.deepcopy(model).encoder_k, im_k)
    assert (expected - stale).abs().max() > 1e-3  # the update matters for these keys
    seen = capture_keys(model)
    model(im_q, im_k, torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-5)


def test_symmetric_loss_is_the_mean_of_both_directions_and_the_second_keys_are_of_the_query_view():
    model = moco_with_distinct_encoders(symmetric=True)
    im_q, im_k = view_pair(4)
    old_queue = model.queue.clone()
    updated = copy.deepcopy(model)
    updated.momentum_update()
    seen = capture_keys(model)
    loss, logits = model(im_q, im_k, torch.Generator().manual_seed(0))
    k, k2 = seen
    torch.testing.assert_close(k, keys_by_hand(updated.encoder_k, im_k), rtol=0, atol=1e-5)
    torch.testing.assert_close(k2, keys_by_hand(updated.encoder_k, im_q), rtol=0, atol=1e-5)
    with torch.no_grad():
        q, q2 = keys_by_hand(model.encoder_q, im_q), keys_by_hand(model.encoder_q, im_k)
    target = torch.zeros(4, dtype=torch.long)

    def half(a, b):  # both halves contrast with the queue as it was before this step's keys
        return F.cross_entropy(torch.cat([(a * b).sum(1, keepdim=True), a @ old_queue.T], 1) / model.T, target)

    torch.testing.assert_close(loss.detach(), (half(q, k) + half(q2, k2)) / 2, rtol=0, atol=1e-5)
    assert logits.shape == (4, 13)


def test_knn_with_k_past_the_train_set_lets_every_train_sample_vote():
    """k=200 with 3 train samples: all 3 vote (k is clipped to the train set, not below it), weights exp((cos -
    nearest cos) / t); here the two class-0 neighbours outvote the nearest, class-1, sample."""
    from fewshot.ssl.knn import knn_predict

    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])  # unit rows: cos with [1, 0] is 1, 0.8, 0.6
    labels = torch.tensor([1, 0, 0])
    scores = knn_predict(train, labels, torch.tensor([[2.0, 0.0]]), num_classes=2, k=200, t=1.0)
    expected = torch.tensor([[torch.tensor(-0.2).exp() + torch.tensor(-0.4).exp(), 1.0]])
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
    assert int(scores.argmax(1)) == 0
