"""Epoch batch plans: which sample indices form each batch, per rank.

A plan is a pure function of (seed, epoch) so that resume can skip to any step and DDP ranks
agree without communication. Each global batch holds batch_size * world indices; rank r takes
its contiguous slice, so one process with the whole global batch sees exactly what the ranks
see together (that is what the DDP equivalence tests check).
"""

from __future__ import annotations

import torch

from fewshot.utils import make_generator

KINDS = ("shuffle", "repeat", "grouped")


def _chunk(order: torch.Tensor, size: int, drop_last: bool) -> list[torch.Tensor]:
    batches = list(order.split(size))
    if batches and drop_last and len(batches[-1]) < size:
        batches.pop()
    return batches


def most_repeats(n: int, global_bs: int) -> int:
    """The largest data.repeats that keeps repeated augmentation what it is: an image's copies within one batch,
    beside other images, and an epoch of at least 2 different images (it stays n long, so it holds about
    n / repeats of them)."""
    return max(1, min(n // 2, global_bs))


def check_repeats(n: int, global_bs: int, repeats: int) -> None:
    """Refuse a data.repeats beyond most_repeats: `data.repeats=1000` over 100 images trained every epoch on one
    image, 100 copies of it (the copies past the epoch's n cut off), and said nothing."""
    limit = most_repeats(n, global_bs)
    if n and repeats > limit:
        from fewshot.errors import UserError

        held = -(-n // repeats)
        batch = f", each batch of {global_bs} copies of one image" if repeats >= global_bs else ""
        raise UserError(f"data.repeats={repeats} with data.sampler=repeat: an epoch stays as long as the {n} training "
                        f"image(s), so it would train on {held} of them{batch}. Use data.repeats={limit} or less "
                        f"(at most half the training images and one batch of {global_bs}), or data.sampler=shuffle.")


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, kind: str = "shuffle", rank: int = 0,
                  world: int = 1, drop_last: bool = False, dataset_ids: torch.Tensor | None = None,
                  repeats: int = 3) -> list[torch.Tensor]:
    """This rank's list of index batches for one epoch.

    shuffle: a random permutation. repeat: repeated augmentation (each drawn image appears `repeats`
    times in a row, so one batch holds several augmentations of it; epoch length stays n). grouped:
    every batch comes from a single dataset (known-source training), batches in random order.
    """
    if kind not in KINDS:
        raise ValueError(f"sampler must be one of {KINDS}, not {kind!r}")
    gen = make_generator(seed, epoch, 7919)
    global_bs = batch_size * world
    if kind == "grouped":
        if dataset_ids is None:
            raise ValueError("the grouped sampler needs dataset ids")
        batches = []
        for ds in torch.unique(dataset_ids).tolist():
            members = torch.nonzero(dataset_ids == ds).flatten()
            members = members[torch.randperm(len(members), generator=gen)]
            batches += _chunk(members, global_bs, drop_last)
        order = torch.randperm(len(batches), generator=gen).tolist()
        global_batches = [batches[i] for i in order]
    else:
        order = torch.randperm(n, generator=gen)
        if kind == "repeat":
            check_repeats(n, global_bs, repeats)
            order = order.repeat_interleave(repeats)[:n]
        global_batches = _chunk(order, global_bs, drop_last)
    if world == 1:
        return global_batches
    out = []
    for b in global_batches:
        per = (len(b) + world - 1) // world
        part = b[rank * per:(rank + 1) * per]
        if len(part) == 0:  # a short last global batch: every rank must step the same number of times
            part = b[-1:]
        out.append(part)
    return out
