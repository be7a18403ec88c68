"""MoCo's shuffle-BN across 2 gloo ranks (mutation testing, round 3), on integers that show where each key went:
the shuffled parts of the ranks together hold every key of the global batch once, and the unshuffle gives each
rank its own keys back. The ranks draw from differently seeded generators, so a permutation not broadcast from
rank 0 shows too (the DDP MoCo test seeds every rank alike)."""

from __future__ import annotations

import torch

from helpers.tiny import free_port, run_forked_ranks

WORLD, LOCAL, TIMEOUT = 2, 4, 240  # 23 s on a quiet host; a loaded CI must not fail it


def shuffle_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from fewshot.ssl.moco import batch_shuffle_ddp, batch_unshuffle_ddp

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        keys = torch.arange(LOCAL, dtype=torch.float32).add_(LOCAL * rank).view(LOCAL, 1)
        shuffled, idx = batch_shuffle_ddp(keys, torch.Generator().manual_seed(3 + rank))
        back = batch_unshuffle_ddp(shuffled, idx)
        torch.save({"keys": keys, "shuffled": shuffled, "back": back}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_shuffle_bn_across_ranks_moves_every_key_once_and_gives_each_rank_its_own_back(tmp_path):
    run_forked_ranks(shuffle_rank, (free_port(), str(tmp_path)), WORLD, TIMEOUT, "the shuffle ranks")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    shuffled = torch.cat([r["shuffled"] for r in ranks]).flatten()
    # rank 0's permutation of the 8 keys (seed 3), split between the ranks in order
    perm = torch.randperm(WORLD * LOCAL, generator=torch.Generator().manual_seed(3))
    assert shuffled.tolist() == perm.float().tolist()
    assert sorted(shuffled.tolist()) == list(range(WORLD * LOCAL))  # every key once
    assert shuffled[:LOCAL].tolist() != list(range(LOCAL))  # rank 0 holds others' keys: it was shuffled
    for r in ranks:
        assert torch.equal(r["back"], r["keys"])
