"""The pool check against a pool whose class mix differs from val's (review rev84, #1): compared image for image,
an in-class pool holding more of a class the model is less sure of read as foreign. The pool is now counted in val's
mix of predicted classes; a pool of low-confidence images in every class is still flagged. Since rev88 #1, val is
weighed in the pool's mix instead, so that foreign images the model puts into a few classes are not hidden."""

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
    of the pool sits below val's 0.3 quantile against 30 % (flagged); with val weighed in the pool's mix, 30 %."""
    pool = torch.cat([torch.linspace(0.9, 1.0, 20), torch.linspace(0.5, 0.7, 80)])
    pool_pred = _classes(20, 80)
    assert semi.pool_classes_check(pool, VAL, 50)["suspect"]  # the image-for-image count: the false alarm
    check = semi.pool_classes_check(pool, VAL, 50, pool_pred, VAL_PRED)
    assert check["suspect"] is False, check
    assert abs(check["pool_share_below"] - check["val_share_below"]) < 0.02 and check["class_mix"] is True
    assert check["pool"] == 100 and check["val_effective"] < 40  # the weights cost samples: a wider margin


def test_a_pool_less_sure_in_every_class_is_still_flagged():
    """Most of each predicted class at the foot of val's confidences (images of other classes), in the harder
    class's larger share as above: flagged, and the warning says how the pool was counted."""
    pool = torch.cat([torch.linspace(0.55, 0.6, 14), torch.linspace(0.9, 1.0, 6), torch.linspace(0.5, 0.55, 70),
                      torch.linspace(0.65, 0.7, 10)])
    check = semi.pool_classes_check(pool, VAL, 50, _classes(20, 80), VAL_PRED)
    assert check["suspect"] is True and check["pool_share_below"] >= 0.7, check
    said = run_pseudo.pool_classes_warning("two", check)
    assert "of its 100 pool images (val weighed in the pool's mix of predicted classes) have" in said, said


def test_pool_images_of_a_class_val_never_predicts_are_measured_against_all_of_val():
    """30 of 50 pool images at 0.1-0.2 in a class val never predicts: they were weighed 0 (rev88 #1); now they are
    compared with the whole val, and flagged. Val images of a class the pool lacks do not set the cut-off."""
    pool = torch.cat([torch.linspace(0.9, 1.0, 20), torch.linspace(0.1, 0.2, 30)])
    check = semi.pool_classes_check(pool, VAL, 50, _classes(20, 0, 30), VAL_PRED)
    assert check["suspect"] is True and check["pool_share_below"] == 0.6, check
    assert abs(check["val_share_below"] - 0.3) < 0.05  # the quantile is taken under the same weights as the share
