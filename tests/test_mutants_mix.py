"""CutMix's box covers about 1 - lam of the image (mutation testing, fAT): the mix tests read lam back from the
box as it was clipped, so a box sized by lam instead kept targets and pixels consistent and passed them."""

from __future__ import annotations

from fewshot.data.mix import cutmix_box


class CentreRng:
    """Draws the centre of the image, so the box is not clipped."""

    def integers(self, n: int) -> int:
        return n // 2


def test_cutmix_box_covers_one_minus_lam_of_the_image():
    y0, y1, x0, x1 = cutmix_box(100, 80, 0.75, CentreRng())
    assert (y0, y1, x0, x1) == (25, 75, 20, 60)  # sqrt(1 - 0.75) = half of each side, centred
    assert (y1 - y0) * (x1 - x0) / (100 * 80) == 0.25
    y0, y1, x0, x1 = cutmix_box(100, 80, 1.0, CentreRng())
    assert (y1 - y0) * (x1 - x0) == 0  # lam 1: nothing of the partner
