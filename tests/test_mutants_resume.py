"""Resume and the metrics reduced across ranks (mutation testing, round 4). The reductions are called directly with
a stand-in for torch's collective that adds (or takes the largest of) the other ranks' values: only the torchrun
tests reached them, and those did not look at the numbers, so a sum left undivided by the ranks got through."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from fewshot.train import distributed
from fewshot.train.distributed import DistContext, all_reduce_max, all_reduce_mean


@pytest.fixture
def other_ranks(monkeypatch):
    """Returns a setter: the values the other ranks hold; dist.all_reduce then reduces this rank's tensor with them
    as gloo would (SUM by default, or MAX)."""
    held: list = []

    def all_reduce(t, op=dist.ReduceOp.SUM):
        rows = torch.stack([t.clone()] + [torch.tensor(v, dtype=t.dtype).reshape(t.shape) for v in held])
        t.copy_(rows.amax(0) if op == dist.ReduceOp.MAX else rows.sum(0) if op == dist.ReduceOp.SUM else None)

    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda *a: "gloo")
    return lambda *values: held.extend(values)


def test_the_mean_over_ranks_divides_the_sum_by_the_number_of_ranks(other_ranks):
    other_ranks([5.0], [10.0])
    assert all_reduce_mean(DistContext(rank=0, world=3), 3.0) == pytest.approx(6.0)  # (3 + 5 + 10) / 3


def test_the_largest_value_over_ranks_is_taken_element_wise(other_ranks):
    other_ranks([4.0, 2.0])
    assert all_reduce_max(DistContext(rank=0, world=2), [1.0, 7.0]) == [4.0, 7.0]


def test_the_largest_single_value_over_ranks(other_ranks):
    other_ranks([2.5], [0.5])
    assert all_reduce_max(DistContext(rank=1, world=3), 1.0) == 2.5


def test_one_process_reduces_nothing(monkeypatch):
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda *a, **k: pytest.fail("a collective in one process"))
    assert all_reduce_mean(DistContext(), 3.0) == 3.0 and all_reduce_max(DistContext(), [1.0]) == [1.0]


def test_the_epoch_row_is_the_mean_over_ranks_and_counts_every_ranks_images(digits_root, tmp_path, monkeypatch):
    """One process standing for rank 0 of 2 (its collectives off): the row's loss is what the reduction returns for
    this rank's epoch mean, and images_per_s counts both ranks' images (each rank trains as many)."""
    from fewshot.train import engine
    from fewshot.train.checkpoint import load_checkpoint
    from fewshot.train.finetune import run_finetune
    from helpers.tiny import finetune_cfg

    means = []
    monkeypatch.setattr(engine, "all_reduce_mean", lambda ctx, v: (means.append(v), 100.0 + v)[1])
    built = engine.Engine.__init__

    def rank_0_of_2(self, *args, **kwargs):
        built(self, *args, **kwargs)
        self.ctx = SimpleNamespace(rank=0, world=2, local_rank=0, is_main=True, enabled=False)

    monkeypatch.setattr(engine.Engine, "__init__", rank_0_of_2)
    out = tmp_path / "ft"
    run_finetune(finetune_cfg(digits_root, **{"train.epochs": 1, "model.img_size": 16}), out)
    row = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert row["loss"] > 100.0 and row["loss"] - 100.0 == pytest.approx(means[0])  # the reduced mean is logged
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert row["images_per_s"] * row["epoch_time_s"] == pytest.approx(2 * ck["epoch_images"])
