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


_TOLD_REPEATS: set[tuple] = set()  # the data.repeats warnings given in this process (every epoch plans anew)


def repeats_warning(n: int, batch_size: int, world: int, repeats: int) -> str | None:
    """What data.repeats does to an epoch of the repeat sampler when it defeats repeated augmentation, or None: an
    epoch stays n long, so it holds about n / repeats different images, and a run of copies as long as the (global)
    batch fills a batch with one image. Warned, not refused: few-shot training sets of 2-5 images and small
    batches are normal, and a run saved with such a setting must still resume."""
    global_bs = batch_size * world
    limit = min(n, global_bs) if global_bs >= 2 else n  # a batch of 1 is one image whatever the repeats
    if n < 2 or repeats < max(2, limit):
        return None
    distinct = -(-n // repeats)
    starts = range(0, n, global_bs) if global_bs >= 2 else range(0)
    sized = [s for s in starts if min(s + global_bs, n) - s >= 2]  # a last batch of 1 is dropped (BatchNorm)
    single = sum(1 for s in sized if s // repeats == (min(s + global_bs, n) - 1) // repeats)
    size = f"{global_bs} ({batch_size} per process x {world} processes)" if world > 1 else f"{global_bs}"
    if sized and single == len(sized):
        short = f" (the last of {n % global_bs})" if n > global_bs and n % global_bs >= 2 else ""
        copies = f", its one batch {n} copies of one image" if n <= global_bs else \
            f", each batch of {size} copies of one image{short}"
    elif single:
        copies = f", {single} of its {len(sized)} batches of {size} all copies of one image"
    else:
        copies = ""
    fits = "data.repeats=1" if limit <= 2 else f"data.repeats={limit - 1} or less"
    return (f"warning: data.repeats={repeats} with data.sampler=repeat: an epoch stays as long as the {n} training "
            f"images, so it holds {distinct} distinct image{'s' if distinct != 1 else ''}{copies}. {fits} avoids that "
            f"(fewer repeats than the images and than a batch), as does data.sampler=shuffle.")


def warn_repeats(n: int, batch_size: int, world: int, repeats: int) -> None:
    """Print repeats_warning once a process, from rank 0 only: every rank plans every rank's epoch."""
    import torch.distributed as dist

    key = (n, batch_size, world, repeats)
    if key in _TOLD_REPEATS or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        return
    _TOLD_REPEATS.add(key)
    text = repeats_warning(n, batch_size, world, repeats)
    if text:
        print(text, flush=True)


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
            warn_repeats(n, batch_size, world, repeats)
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
