"""Which classes may be mirrored: a data-driven choice of horizontal-flip augmentation per class.

A flip is label-preserving for a shirt and not for a "3" or for Fashion-MNIST's shoes, which all point
left. When a class's images are as likely mirrored as not, its mean image is left-right symmetric up to
sampling noise; when they are not (digits, letters, shoes in one orientation), the mean is lopsided. So a
class is called mirror-symmetric when ||m - mirror(m)|| is within ``tolerance`` times the gap between the
means of two halves of its images (the noise of a mean of that many images), both relative to m's own
contrast. On the demo data (train + val, 32 px) this opens T-shirt, trouser, pullover, dress, coat, shirt
and bag, keeps sandal, sneaker and ankle boot closed, and of the digits only 8.
"""

from __future__ import annotations

import torch


def mirror_asymmetry(images: torch.Tensor) -> tuple[float, float]:
    """(||m - mirror(m)||, ||mean of even images - mean of odd images||), both over ||m - mean(m)||, for
    uint8 images [N, C, H, W] of one class."""
    x = images.float()
    m = x.mean(0)
    scale = (m - m.mean()).norm().clamp_min(1e-6)
    asym = (m - m.flip(-1)).norm() / scale
    noise = (x[0::2].mean(0) - x[1::2].mean(0)).norm() / scale
    return float(asym), float(noise)


def mirror_symmetric_classes(images: torch.Tensor, targets: torch.Tensor, num_classes: int,
                             tolerance: float = 1.5, min_images: int = 4) -> torch.Tensor:
    """bool [num_classes]: classes whose mean image is left-right symmetric within its sampling noise.
    A class with fewer than ``min_images`` images (no noise estimate) is not."""
    out = torch.zeros(num_classes, dtype=torch.bool)
    for c in range(num_classes):
        mine = images[targets == c]
        if len(mine) >= min_images:
            asym, noise = mirror_asymmetry(mine)
            out[c] = asym <= tolerance * noise
    return out
