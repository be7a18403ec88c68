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


def _process_batches(n: int, batch_size: int, world: int) -> list[list[tuple[int, int]]]:
    """Each training step of an epoch of ``n`` as the (start, stop) positions of every process's batch, cut as
    epoch_batches cuts a global batch and with the steps plan_training_batches drops (a share under 2) left out."""
    global_bs = batch_size * world
    steps = []
    for s in range(0, n, global_bs):
        stop = min(s + global_bs, n)
        per = -(-(stop - s) // world)
        shares = [(s + r * per, min(s + (r + 1) * per, stop)) for r in range(world)]
        shares = [(a, b) if a < b else (stop - 1, stop) for a, b in shares]  # an empty share repeats the last image
        if min(b - a for a, b in shares) >= 2:
            steps.append(shares)
    return steps


def repeats_warning(n: int, batch_size: int, world: int, repeats: int) -> str | None:
    """What data.repeats does to an epoch of the repeat sampler when it defeats repeated augmentation, or None: an
    epoch stays n long, so it holds about n / repeats different images, and a run of copies as long as a process's
    batch (train.batch_size, or its share of a smaller epoch: under DDP each process normalises its own) fills that
    batch with one image. Warned, not refused: few-shot training sets of 2-5 images and small batches are normal,
    and a run saved with such a setting must still resume."""
    share = min(batch_size, -(-n // world))  # rank 0's batch of the first step
    limit = share if batch_size >= 2 else n  # a batch of 1 is one image whatever the repeats
    if n < 2 or repeats < max(2, limit):
        return None
    distinct = -(-n // repeats)
    steps = _process_batches(n, batch_size, world)
    shares = [part for step in steps for part in step]
    single = sum(1 for a, b in shares if a // repeats == (b - 1) // repeats)
    lengths = [b - a for a, b in steps[-1]] if steps else []
    if not shares:  # a batch of 1 (or shares of 1 under DDP): BatchNorm trains on none, said where the plan is
        copies = ""
    elif world == 1:
        last = f"the last of {lengths[0]}" if len(steps) > 1 and lengths[0] != batch_size else ""
        # "4 of its 7 batches of 32" counted the last, short batch as one of 32
        copies = (f", its one batch {lengths[0]} copies of one image" if len(steps) == 1 and single else
                  f", each batch of {batch_size} copies of one image{f' ({last})' if last else ''}"
                  if single == len(shares) else
                  f", {single} of its {len(shares)} batches (of {batch_size}{f', {last}' if last else ''}) all "
                  f"copies of one image")
    else:
        sizes = " and ".join(map(str, lengths))
        short = f" (the last step's {sizes} images)" if len(steps) > 1 and set(lengths) != {batch_size} else ""
        of = (f"({batch_size} per process x {world} processes)" if len(steps) > 1 else
              f"of its one step ({sizes} images on its {world} processes)")
        copies = (f", each process's batch {of} copies of one image{short}" if single == len(shares) else
                  f", {single} of its {len(shares)} process batches {of} all copies of one image")
    fits = "data.repeats=1" if limit <= 2 else f"data.repeats={limit - 1} or less"
    batch = "a batch" if world == 1 else "a process's batch"
    fewer = (f"the {n} images" if batch_size < 2 or (world == 1 and n < batch_size) else
             f"the {limit} images of {batch}" if limit < n else f"the {n} images, which {batch} holds")
    return (f"data.repeats={repeats} with data.sampler=repeat: an epoch stays as long as the {n} training images, so "
            f"it holds {distinct} distinct image{'s' if distinct != 1 else ''}{copies}. {fits} avoids that (fewer "
            f"repeats than {fewer}), as does data.sampler=shuffle.")


def warn_repeats(n: int, batch_size: int, world: int, repeats: int) -> None:
    """Print repeats_warning with the data's other warnings (warn_once.py: once a process, rank 0 only), not
    once an epoch: every epoch plans anew."""
    from fewshot.data.warn_once import warn_once

    text = repeats_warning(n, batch_size, world, repeats)
    if text:
        warn_once([text])


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
