"""A lazy view of rows of a decode cache's uint8 image array: rows are read only when indexed.

Apart from data/cache.py because the cache only returns its array; this view is what training keeps of a large
unlabelled pool (train/semi.py, train/supervised.py).
"""

from __future__ import annotations

import torch


class ImageRows:
    """Rows ``rows`` of a uint8 image array [N, 3, S, S] (a decode cache's memory map), read only when indexed:
    indexing the cache with a boolean mask, then a share, then the kept images copied the whole pool into memory
    (100k images at 224 px: 15 GB) where a round reads only the images it uses. Indexing (a slice, an index
    tensor) reads those rows and returns them as a tensor; ``select`` narrows the rows and reads nothing."""

    def __init__(self, images: torch.Tensor, rows: torch.Tensor | None = None):
        self.images = images
        self.rows = torch.arange(len(images)) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.images.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.images.dtype

    def __getitem__(self, idx) -> torch.Tensor:
        return self.images[self.rows[idx]]

    def select(self, idx) -> "ImageRows":
        return ImageRows(self.images, self.rows[idx])
