"""The pool check with foreign images that the model puts into one class (review rev88, #1): weighing the pool in
val's mix of predicted classes gave that class val's share only, and hid them. Val is now weighed in the pool's mix,
and each class with enough pool images is also compared with val's images of the same class."""

from __future__ import annotations

import torch

from fewshot.train import semi


def _classes(*counts: int) -> torch.Tensor:
    return torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])


def test_foreign_images_crowding_into_one_class_are_flagged():
    """10 classes, val 10 each at 0.9-1.0; the pool: 10 sure images per class, plus 60 foreign ones at 0.5-0.8 that
    the model all calls class 0. Weighed in val's mix, class 0 counted for a tenth: not flagged."""
    val = torch.linspace(0.9, 1.0, 100)
    val_pred = torch.arange(100) % 10
    pool = torch.cat([torch.linspace(0.9, 1.0, 100), torch.linspace(0.5, 0.8, 60)])
    pool_pred = torch.cat([torch.arange(100) % 10, torch.zeros(60, dtype=torch.long)])
    check = semi.pool_classes_check(pool, val, 100, pool_pred, val_pred)
    assert check["suspect"] is True and check["classes_far_below"] == [0], check
    assert check["pool_share_below"] - check["val_share_below"] >= check["margin"]


def test_a_weak_model_in_class_pool_stays_quiet():
    """hBQ's case: a weak model, pool and val drawn alike, in many seeds; no more alarms than a few."""
    g = torch.Generator().manual_seed(0)

    def drawn(n):
        cls = torch.randint(0, 10, (n,), generator=g)
        z = torch.randn(n, 10, generator=g)
        z[torch.arange(n), cls] += 1.5
        return z.softmax(1).max(1)
    alarms = 0
    for _ in range(100):
        p, v = drawn(200), drawn(50)
        alarms += semi.pool_classes_check(p.values, v.values, 100, p.indices, v.indices)["suspect"]
    assert alarms <= 8, alarms
