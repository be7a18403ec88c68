"""The pool check against a pool whose class mix differs from val's (review rev84, #1): compared image for image,
an in-class pool holding more of a class the model is less sure of read as foreign. The pool is now counted in val's
mix of predicted classes; a pool of low-confidence images in every class is still flagged."""

from __future__ import annotations

import torch

from fewshot import run_pseudo
from fewshot.train import semi


def _classes(*counts: int) -> torch.Tensor:
    return torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])


VAL = torch.cat([torch.linspace(0.9, 1.0, 20), torch.linspace(0.5, 0.7, 20)])  # class 0 sure, class 1 less so
VAL_PRED = _classes(20, 20)


def test_an_in_class_pool_with_more_of_the_harder_class_is_not_flagged():
    """Val: half each class; the pool: 80 % of the harder class, each class as sure as in val. Image for image, 48 %
    of the pool sits below val's 0.3 quantile against 30 % (flagged); in val's mix, 30 %."""
    pool = torch.cat([torch.linspace(0.9, 1.0, 20), torch.linspace(0.5, 0.7, 80)])
    pool_pred = _classes(20, 80)
    assert semi.pool_classes_check(pool, VAL, 50)["suspect"]  # the image-for-image count: the false alarm
    check = semi.pool_classes_check(pool, VAL, 50, pool_pred, VAL_PRED)
    assert check["suspect"] is False, check
    assert abs(check["pool_share_below"] - check["val_share_below"]) < 0.02 and check["class_mix"] is True
    assert check["pool"] == 100 and check["pool_effective"] < 100  # the weights cost samples: a wider margin


def test_a_pool_less_sure_in_every_class_is_still_flagged():
    """Most of each predicted class at the foot of val's confidences (images of other classes), in the harder
    class's larger share as above: flagged, and the warning says how the pool was counted."""
    pool = torch.cat([torch.linspace(0.55, 0.6, 14), torch.linspace(0.9, 1.0, 6), torch.linspace(0.5, 0.55, 70),
                      torch.linspace(0.65, 0.7, 10)])
    check = semi.pool_classes_check(pool, VAL, 50, _classes(20, 80), VAL_PRED)
    assert check["suspect"] is True and check["pool_share_below"] >= 0.7, check
    said = run_pseudo.pool_classes_warning("two", check)
    assert "of its 100 pool images (counted in val's mix of predicted classes) have" in said, said


def test_a_class_only_one_side_predicts_is_left_out_of_both():
    """Pool images of a class val never predicts have no val share to be weighed against: left out, as are val
    images of a class the pool lacks. With no class in common, no verdict."""
    pool = torch.cat([torch.linspace(0.9, 1.0, 20), torch.linspace(0.1, 0.2, 30)])
    check = semi.pool_classes_check(pool, VAL, 50, _classes(20, 0, 30), VAL_PRED)
    assert check["suspect"] is False and check["val_share_below"] == 0.0 and check["pool_share_below"] == 0.0
    assert semi.pool_classes_check(pool, VAL, 50, torch.full((50,), 2), VAL_PRED) is None
