"""The queue advice of a MoCo run whose queue holds the whole pool never suggests what pretraining then refuses:
with moco.symmetric a step enqueues both views' keys, and a queue under twice the global batch is refused."""

from __future__ import annotations

import re

import pytest

from fewshot.config import resolve
from fewshot.errors import UserError
from fewshot.ssl.pretrain_settings import queue_advice, resolve_pretrain_defaults, split_groups


def _accepted(batch: int, queue: int, world: int, symmetric: bool, groups: int = 1) -> bool:
    cfg = resolve(overrides=[f"moco.symmetric={str(symmetric).lower()}", f"moco.queue_size={queue}",
                             f"train.batch_size={batch}", "model.name=test_resnet", f"moco.split_bn_groups={groups}"])
    try:
        resolve_pretrain_defaults(cfg, world)
        split_groups(cfg, world)
    except UserError:
        return False
    return True


def test_the_advice_for_a_symmetric_run_names_a_queue_the_check_accepts():
    """A pool of 44 with a batch of 16: "--queue-size 22" was advised, and `moco.symmetric=true` refused it (32 keys
    a step)."""
    said = queue_advice(44, 16, 1, symmetric=True)
    assert "--queue-size 22;" not in said and "--batch-size 5, then --queue-size 22" in said, said
    assert "32 keys a step" in said
    assert "(--queue-size 22;" in queue_advice(44, 16, 1)  # one view's keys: 16 fit in 22


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("pool", [6, 10, 20, 44, 100])
def test_every_suggested_batch_and_queue_is_accepted(pool, world, symmetric, groups):
    """Each suggestion fed back to the checks pretraining makes; fewer shuffle-BN groups aim at the queue of half
    the pool, with --batch-size per process (2 processes, 4 groups, pool 20, symmetric: 4 images a process were
    advised, 16 keys a step for a queue of 10)."""
    for batch in (2, 4, 8, 16, 48):
        if batch % (2 * groups):  # a batch pretraining refuses with these groups: no run to advise
            continue
        said = queue_advice(pool, batch * world, world, groups=groups, symmetric=symmetric)
        if (m := re.search(r"\(--queue-size (\d+);", said)):  # the batch as it is
            assert _accepted(batch, int(m[1]), world, symmetric, groups), said
        if (m := re.search(r"--batch-size (\d+)(?: per process)?[^,;]*, then --queue-size (\d+)", said)):
            assert _accepted(int(m[1]), int(m[2]), world, symmetric, groups), said
        if (m := re.search(r"--queue-size (\d+)(?: to \d+)? \(less than the pool", said)):
            assert _accepted(batch, int(m[1]), world, symmetric, groups), said
        if (m := re.search(r"moco\.split_bn_groups=(\d+) with --batch-size (\d+)", said)):
            assert int(m[1]) < groups and _accepted(int(m[2]), pool // 2, world, symmetric, int(m[1])), said


def test_fewer_groups_are_advised_per_process():
    said = queue_advice(20, 16, 2, groups=4, symmetric=True)
    assert "fewer shuffle-BN groups (moco.split_bn_groups=1 with --batch-size 2 per process)" in said, said
    said = queue_advice(10, 16, 2, groups=4)
    assert "fewer shuffle-BN groups (moco.split_bn_groups=1 with --batch-size 2 per process)" in said, said


def test_a_pool_too_small_for_symmetric_keys_says_so_and_offers_one_view():
    said = queue_advice(6, 2, 1, symmetric=True)
    assert "enqueues 4 keys a step (moco.symmetric enqueues both views'), more than half the pool" in said, said
    assert "moco.symmetric=false (one view's keys a step) with --batch-size 2" in said
    assert "--queue-size 4 to 5 (less than the pool, at least one step's keys)" in said
    assert _accepted(2, 3, 1, False) and not _accepted(2, 3, 1, True)


def test_pretrain_passes_moco_symmetric_to_the_advice(digits_root, tmp_path):
    """The warning of a symmetric run whose queue holds the pool advises a queue its check accepts."""
    from helpers.checks import run_main

    rc, out, err = run_main("pretrain", "--data", digits_root, "--out", tmp_path / "pre", "--model", "test_resnet",
                            "--img-size", "16", "--epochs", "1", "--batch-size", "56", "--queue-size", "100000",
                            "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.threads=1",
                            "moco.symmetric=true")
    said = next((line for line in (out + err).splitlines() if "holds at least as many keys as the pool" in line), "")
    assert rc == 0 and said, out + err
    pool = int(re.search(r"as the pool has images \((\d+)\)", said)[1])
    m = re.search(r"--batch-size (\d+), then --queue-size (\d+)", said)
    assert "keys a step" in said and m and int(m[2]) >= 2 * int(m[1]) and 56 <= pool // 2 < 2 * 56, said
