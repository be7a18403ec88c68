"""In-memory views of the splits: uint8 images from the cache + global targets + dataset ids."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fewshot.data.cache import load_images
from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import DatasetInfo
from fewshot.data.warn_once import warn_once
from fewshot.errors import DataLayoutError, UserError, one_line, quoted
from fewshot.process_state import said_once
from fewshot.train.distributed import launch_rank, several_processes


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
    digests: list[str | None] | None = None  # each image's decode_many.image_digest (warn_split_copies)
    # per dataset, decode_many.digests_fingerprint of its images (None: not known without hashing them): what
    # torchrun's ranks compare of their pixels (distributed.check_same_image_counts); a subset has none
    fingerprints: dict[str, str] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def image_ids(self) -> list[str]:
        """Test image ids from the file stems, as the layout scan names them (pred_all.json keys)."""
        from fewshot.data.test_split import test_id

        return [test_id(Path(p).stem) for p in self.paths]

    def subset(self, mask: torch.Tensor) -> "ImageSet":
        keep = torch.nonzero(mask).flatten()
        rows = keep.tolist()
        return ImageSet(self.images[keep], self.targets[keep], self.dataset_ids[keep], self.ids[keep],
                        [self.paths[i] for i in rows],
                        digests=None if self.digests is None else [self.digests[i] for i in rows])


def load_split(infos: list[DatasetInfo], split: str, space: LabelSpace, size: int, cache_dir: Path | None,
               crop_pct: float = 1.0, skip_bad: bool = False, max_gb: float | None = None,
               bit_depth: int | str = "auto", resize: str = "crop") -> ImageSet:
    """Load `split` (train / val / test) of every dataset, in label-space order (``bit_depth``: data.bit_depth,
    ``resize``: data.resize, see load_images)."""
    paths, targets, dsids, ids = [], [], [], []
    for info in infos:
        d = space.index(info.name)
        if split == "test":
            for _, p in info.test:
                paths.append(p); targets.append(-1); dsids.append(d); ids.append(len(ids))
        else:
            for i, (p, local) in enumerate(getattr(info, split)):
                paths.append(p); targets.append(space.global_label(d, local)); dsids.append(d); ids.append(i)
    # rank 0 warns of copies, and under torchrun every rank compares its pixels (an older entry without digests is
    # hashed once); an entry written, or a decode without one, keeps the digests it takes as it decodes
    cached = load_images(paths, size, cache_dir, crop_pct=crop_pct, skip_bad=skip_bad, desc=f"loading {split} images",
                         max_gb=max_gb, bit_depth=bit_depth, digests=_warns() or several_processes(),
                         entry_digests=True, resize=resize)
    out = ImageSet(cached.images, torch.tensor(targets, dtype=torch.long), torch.tensor(dsids, dtype=torch.long),
                   torch.tensor(ids, dtype=torch.long), paths, digests=cached.digests)
    if not bool(cached.valid.all()):
        # a skipped test image keeps its (black) row: pred_all.json is a submission and must hold every test id,
        # so it gets the model's guess for a blank image (warned by prediction); labelled images are left out
        everything = out
        if split != "test":
            out = out.subset(cached.valid)
        out.skipped = list(cached.bad)
        if split != "test":  # a dataset left without any train or val image cannot be trained or scored
            emptied = [info.name for info in infos if not bool((out.dataset_ids == space.index(info.name)).any())]
            if emptied:
                raise UserError(f"no decodable {split} image is left in {', '.join(emptied)} after "
                                f"--skip-bad-images skipped {len(cached.bad)} file(s); fix or replace those files.")
            _refuse_emptied_classes(split, space, everything, cached.valid)
    out.fingerprints = _fingerprints(infos, space, dsids, cached.known_digests, cached.images,
                                     cached.valid if split != "test" else None)
    return out


def _fingerprints(infos: list[DatasetInfo], space: LabelSpace, dsids: list[int], known: list | None,
                  images: torch.Tensor, valid: torch.Tensor | None) -> dict[str, str] | None:
    """Per dataset, one hash over the known digests of the images kept (``valid``; None: all), in order, a blank one
    by its colour (``images``: decode_many.kept_fingerprint): a node whose copy holds other pixels under the same
    names trained beside the others without a word."""
    if known is None:
        return None
    from fewshot.data.decode_many import kept_fingerprint

    kept = range(len(known)) if valid is None else torch.nonzero(valid).flatten().tolist()
    by_dataset: dict[int, list] = {}
    for i in kept:
        by_dataset.setdefault(dsids[i], []).append(i)
    return {info.name: kept_fingerprint(known, images, by_dataset.get(space.index(info.name), [])) for info in infos}


def _refuse_emptied_classes(split: str, space: LabelSpace, everything: ImageSet, valid: torch.Tensor) -> None:
    """A class whose every image --skip-bad-images left out: in train, refused as an empty class folder is (the
    class was trained with no example of it, exit 0, and its val images scored as certain mistakes); in val, said
    as a class without val images is (trained, not scored on val)."""
    listed = torch.bincount(everything.targets, minlength=space.num_classes)
    kept = torch.bincount(everything.targets[valid], minlength=space.num_classes)
    emptied = torch.nonzero((listed > 0) & (kept == 0)).flatten()
    if not len(emptied):
        return
    problems = []
    for label, d, local in zip(emptied.tolist(), *(t.tolist() for t in space.to_local(emptied))):
        folder = Path(everything.paths[int(torch.nonzero(everything.targets == label)[0])]).parent
        dataset, name, count = space.names[d], space.classes[d][local], int(listed[label])
        if split == "train":
            problems.append(f"{folder}: no decodable image is left in class {quoted(name)} of the dataset "
                            f"{quoted(dataset)}: --skip-bad-images skipped all {count} of its file(s)")
        else:
            problems.append(f"{folder}: --skip-bad-images skipped all {count} val image(s) of class {quoted(name)} "
                            f"of the dataset {quoted(dataset)}, so val scores no image of that class")
    if split != "train":
        warn_once([one_line(p) for p in problems])
        return
    raise DataLayoutError(problems, ["(fix or replace those files; to train without such a class, remove its "
                                     "folder from train/ and val/)"])


def load_splits(infos: list[DatasetInfo], splits: tuple[str, ...], space: LabelSpace, size: int,
                cache_dir: Path | None, crop_pct: float = 1.0, skip_bad: bool = False,
                max_gb: float | None = None, bit_depth: int | str = "auto", resize: str = "crop") -> list[ImageSet]:
    """Load several splits, reporting the undecodable images of all of them in one error (``max_gb``:
    data.cache_max_gb, ``bit_depth``: data.bit_depth, see load_images)."""
    out, problems, hints = [], [], []
    for split in splits:
        try:
            out.append(load_split(infos, split, space, size, cache_dir, crop_pct, skip_bad, max_gb, bit_depth,
                                  resize))
        except DataLayoutError as exc:
            problems += exc.problems
            hints = list(dict.fromkeys(hints + exc.hints))
    if problems:
        raise DataLayoutError(problems, hints)
    if "train" in splits:
        warn_split_copies(out[splits.index("train")], dict(zip(splits, out)), space)
    return out


def _warns() -> bool:
    """Whether this process says warn_split_copies' warnings (rank 0 of a torchrun job); the other ranks take the
    digests too, for the pixels the ranks compare (load_split)."""
    return launch_rank() == 0


COPY_EXAMPLES = 3  # the copies a warning names
# warn_split_copies' messages given in this command: `fewshot run` loads its splits again in each stage
_WARNED: set[str] = said_once(__name__, "_WARNED")


def warn_split_copies(train: ImageSet | None, others: dict[str, ImageSet], space: LabelSpace) -> None:
    """Warn (rank 0, each message once a command) where a dataset's val or test images are exact copies of its train
    images (the same decoded pixels, decode_many.image_digest): val chooses best.pt, the EMA or the raw weights and
    run.balance, and a copied val split scored memorised images, silently. Duplicates within the pool, and pool
    images in val or test, are not warned about: the pool is unlabelled (its images are meant to be the datasets').
    An image found under two or more train classes is a placeholder (a "missing image" picture), not a leak."""
    if train is None or train.digests is None or not _warns():
        return
    seen: dict[tuple[int, str], Path] = {}
    classes: dict[tuple[int, str], set[int]] = {}
    for digest, d, label, path in zip(train.digests, train.dataset_ids.tolist(), train.targets.tolist(), train.paths):
        if digest is not None:
            seen.setdefault((d, digest), path)
            classes.setdefault((d, digest), set()).add(label)
    for shared in [k for k, labels in classes.items() if len(labels) > 1]:
        del seen[shared]
    for split, images in others.items():
        if split == "train" or images.digests is None:
            continue
        copies: dict[int, list[tuple[Path, Path]]] = {}
        totals: dict[int, int] = {}
        for digest, d, path in zip(images.digests, images.dataset_ids.tolist(), images.paths):
            totals[d] = totals.get(d, 0) + 1
            if (d, digest) in seen:
                copies.setdefault(d, []).append((path, seen[(d, digest)]))
        for d, pairs in copies.items():
            examples = ", ".join(f"{p} (= {t})" for p, t in pairs[:COPY_EXAMPLES])
            more = f" and {len(pairs) - COPY_EXAMPLES} more" if len(pairs) > COPY_EXAMPLES else ""
            effect = ("val then scores images the model trained on: its accuracy is inflated, and what it chooses "
                      "(best.pt, the EMA or raw weights, run.balance) follows memorised images; remove the copies "
                      "from val/ (or replace them) for an honest score" if split == "val" else
                      f"the predictions for them come from memorised training images, so a score on them overstates "
                      f"accuracy; remove them only from a held-out {split} set whose labels you have (a submission's "
                      f"{split}/ keeps them: its predictions must hold every {split} image)")
            message = one_line(f"warning: {space.names[d]}: {len(pairs)} of its {totals[d]} {split} images are "
                               f"exact copies of its train images (the same decoded pixels), e.g. {examples}{more}; "
                               f"{effect}.")
            if message not in _WARNED:
                _WARNED.add(message)
                print(message, file=sys.stderr, flush=True)


def held_out_digests(sets: dict[str, ImageSet | None]) -> dict[str, dict[str, Path]]:
    """Per held-out split (val, test), each image's digest and the first file with it (warn_pool_copies): only these
    are kept through the start-up, not the images."""
    return {split: {d: p for d, p in reversed(list(zip(s.digests, s.paths))) if d is not None}
            for split, s in sets.items() if s is not None and s.digests is not None}


def warn_pool_copies(digests: list[str | None] | None, paths: list, held: dict[str, dict[str, Path]]) -> None:
    """Warn (each message once a command) where pool images are exact copies of val or test images (the same decoded
    pixels): self-training and FixMatch train on them with the model's own labels, so val scores (and what it
    chooses: best.pt, the round, run.balance) or the test score count images the model trained on. Only a pool file
    that is a held-out file itself (its path, or a link to it) is left out (pool.without_held_out): a copy is
    warned of, as its digest is free here (taken as the pool decoded) while leaving it out would change the pool
    every stage and a resume reads. A re-encoded or resized copy has other pixels and is not found."""
    if digests is None or not held or not _warns():
        return
    for split, of in held.items():
        pairs = [(p, of[d]) for d, p in zip(digests, paths) if d is not None and d in of]
        if not pairs:
            continue
        examples = ", ".join(f"{p} (= {t})" for p, t in pairs[:COPY_EXAMPLES])
        more = f" and {len(pairs) - COPY_EXAMPLES} more" if len(pairs) > COPY_EXAMPLES else ""
        effect = ("val then scores images the model trained on, and what it chooses (best.pt, the round that "
                  "predicts, run.balance) follows them" if split == "val" else
                  "the test score then counts images the model trained on, and overstates its accuracy")
        message = one_line(f"warning: {len(pairs):,} of the unlabeled pool's {len(digests):,} images are exact copies "
                           f"of {split} images (the same decoded pixels), e.g. {examples}{more}; self-training or "
                           f"FixMatch trains on them with the model's own labels, so {effect}. Remove them from the "
                           f"pool for an honest score.")
        if message not in _WARNED:
            _WARNED.add(message)
            print(message, file=sys.stderr, flush=True)
