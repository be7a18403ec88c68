"""In-memory views of the splits: uint8 images from the cache + global targets + dataset ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fewshot.data.cache import load_images
from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import DatasetInfo
from fewshot.errors import DataLayoutError, UserError


@dataclass
class ImageSet:
    """images [N,3,S,S] uint8; targets: global class (-1 when unlabelled); ids: positions in the split
    (a test image's own id is its file's stem: `image_ids`)."""

    images: torch.Tensor
    targets: torch.Tensor
    dataset_ids: torch.Tensor
    ids: torch.Tensor
    paths: list[Path]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) left out by --skip-bad-images

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def image_ids(self) -> list[str]:
        """Test image ids from the file stems, as the layout scan names them (pred_all.json keys)."""
        from fewshot.data.layout import test_id

        return [test_id(Path(p).stem) for p in self.paths]

    def subset(self, mask: torch.Tensor) -> "ImageSet":
        keep = torch.nonzero(mask).flatten()
        return ImageSet(self.images[keep], self.targets[keep], self.dataset_ids[keep], self.ids[keep],
                        [self.paths[i] for i in keep.tolist()])


def load_split(infos: list[DatasetInfo], split: str, space: LabelSpace, size: int, cache_dir: Path | None,
               crop_pct: float = 1.0, skip_bad: bool = False, max_gb: float | None = None,
               bit_depth: int | str = "auto") -> ImageSet:
    """Load `split` (train / val / test) of every dataset, in label-space order (``bit_depth``: data.bit_depth,
    see load_images)."""
    paths, targets, dsids, ids = [], [], [], []
    for info in infos:
        d = space.index(info.name)
        if split == "test":
            for _, p in info.test:
                paths.append(p); targets.append(-1); dsids.append(d); ids.append(len(ids))
        else:
            for i, (p, local) in enumerate(getattr(info, split)):
                paths.append(p); targets.append(space.global_label(d, local)); dsids.append(d); ids.append(i)
    cached = load_images(paths, size, cache_dir, crop_pct=crop_pct, skip_bad=skip_bad, desc=f"loading {split} images",
                         max_gb=max_gb, bit_depth=bit_depth)
    out = ImageSet(cached.images, torch.tensor(targets, dtype=torch.long), torch.tensor(dsids, dtype=torch.long),
                   torch.tensor(ids, dtype=torch.long), paths)
    if not bool(cached.valid.all()):
        # a skipped test image keeps its (black) row: pred_all.json is a submission and must hold every test id,
        # so it gets the model's guess for a blank image (warned by prediction); labelled images are left out
        if split != "test":
            out = out.subset(cached.valid)
        out.skipped = list(cached.bad)
        if split != "test":  # a dataset left without any train or val image cannot be trained or scored
            emptied = [info.name for info in infos if not bool((out.dataset_ids == space.index(info.name)).any())]
            if emptied:
                raise UserError(f"no decodable {split} image is left in {', '.join(emptied)} after "
                                f"--skip-bad-images skipped {len(cached.bad)} file(s); fix or replace those files.")
    return out


def load_splits(infos: list[DatasetInfo], splits: tuple[str, ...], space: LabelSpace, size: int,
                cache_dir: Path | None, crop_pct: float = 1.0, skip_bad: bool = False,
                max_gb: float | None = None, bit_depth: int | str = "auto") -> list[ImageSet]:
    """Load several splits, reporting the undecodable images of all of them in one error (``max_gb``:
    data.cache_max_gb, ``bit_depth``: data.bit_depth, see load_images)."""
    out, problems, hints = [], [], []
    for split in splits:
        try:
            out.append(load_split(infos, split, space, size, cache_dir, crop_pct, skip_bad, max_gb, bit_depth))
        except DataLayoutError as exc:
            problems += exc.problems
            hints = list(dict.fromkeys(hints + exc.hints))
    if problems:
        raise DataLayoutError(problems, hints)
    return out
