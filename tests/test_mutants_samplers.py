"""Epoch batch plans (fewshot.data.samplers.epoch_batches) checked directly: until now only a CLI run touched
them, so a plan that dropped a full last batch, sliced ranks by stride or repeated an image in the wrong pattern
passed every test (mutation testing, fAT)."""

from __future__ import annotations

import torch

from fewshot.data.samplers import epoch_batches


def flat(batches) -> list[int]:
    return torch.cat(batches).tolist() if batches else []


def test_shuffle_is_a_permutation_in_batches_of_the_size_and_the_short_one_last():
    batches = epoch_batches(10, 4, epoch=0, seed=1)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(flat(batches)) == list(range(10))
    assert flat(batches) != list(range(10))  # shuffled (10! orders: the identity would be a broken generator)


def test_drop_last_drops_only_a_short_last_batch():
    assert [len(b) for b in epoch_batches(10, 4, 0, 1, drop_last=True)] == [4, 4]
    # a full last batch is a batch like the others: 8 images in batches of 4 keep both
    assert [len(b) for b in epoch_batches(8, 4, 0, 1, drop_last=True)] == [4, 4]


def test_the_plan_depends_on_seed_and_epoch_and_on_nothing_else():
    a = flat(epoch_batches(50, 8, epoch=3, seed=5))
    assert a == flat(epoch_batches(50, 8, epoch=3, seed=5))  # resume replays the same plan
    assert a != flat(epoch_batches(50, 8, epoch=4, seed=5))  # a new epoch: a new order
    assert a != flat(epoch_batches(50, 8, epoch=3, seed=6))


def test_repeat_puts_each_drawn_image_repeats_times_in_a_row():
    order = flat(epoch_batches(12, 5, 0, 2, kind="repeat", repeats=3))
    assert len(order) == 12
    runs = [order[i:i + 3] for i in range(0, 12, 3)]
    assert all(len(set(r)) == 1 for r in runs), order  # [a, a, a, b, b, b, ...], not [a, b, c, ..., a, b, c]
    assert len({r[0] for r in runs}) == 4


def test_ranks_take_contiguous_slices_of_the_one_process_batch():
    """One process with the global batch sees what the ranks see together, rank 0 first (DDP equivalence)."""
    whole = epoch_batches(20, 6, 0, 3, world=1)  # global batch 6 = 3 per rank x 2
    parts = [epoch_batches(20, 3, 0, 3, rank=r, world=2) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for b, p0, p1 in zip(whole, *parts):
        assert torch.cat([p0, p1]).tolist() == b.tolist()


def test_a_rank_left_without_samples_in_the_short_last_batch_still_steps():
    # 7 images, global batch 6: the last global batch holds one image; rank 1 reuses it so both ranks step
    parts = [epoch_batches(7, 3, 0, 3, rank=r, world=2) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 2
    assert parts[1][-1].tolist() == parts[0][-1].tolist() and len(parts[0][-1]) == 1


def test_grouped_batches_hold_one_dataset_each_and_cover_all_its_images():
    ids = torch.tensor([0] * 9 + [1] * 5)
    batches = epoch_batches(14, 4, 0, 4, kind="grouped", dataset_ids=ids)
    assert sorted(flat(batches)) == list(range(14))
    assert all(len(set(ids[b].tolist())) == 1 for b in batches)
    assert sorted(len(b) for b in batches) == [1, 1, 4, 4, 4]
    # the images of a dataset are shuffled within it (for some seed at least), not chunked in folder order
    def first_dataset_chunks(seed):
        return sorted(sorted(b.tolist()) for b in epoch_batches(14, 4, 0, seed, "grouped", dataset_ids=ids) if b[0] < 9)
    assert any(first_dataset_chunks(s) != [[0, 1, 2, 3], [4, 5, 6, 7], [8]] for s in range(5))
