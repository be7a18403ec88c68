"""`fewshot run --pretrain moco.symmetric=true run.queue_size=K` with the MoCo batch <= K < 2x the batch passed
start-up (which compared K with the batch alone) and was refused by the MoCo stage (resolve_pretrain_defaults: a
symmetric step enqueues both views' keys) after the pool was decoded and the run folder started."""

from __future__ import annotations

import pytest

from fewshot.config import resolve
from fewshot.errors import UserError
from fewshot.run_checks import check_model, check_pretrain_settings
from helpers.checks import run_main


def _cfg(root, queue: int, symmetric: bool) -> dict:
    return resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16,
                          "run.pretrain": True, "run.pretrain_batch_size": 64, "run.queue_size": queue,
                          "moco.symmetric": symmetric})


@pytest.mark.parametrize("queue, symmetric, refused", [(96, True, True), (127, True, True), (128, True, False),
                                                      (64, False, False), (63, False, True)])
def test_the_queue_is_checked_against_the_keys_a_step_enqueues(digits_root, queue, symmetric, refused):
    cfg = _cfg(digits_root, queue, symmetric)
    backbone = check_model(cfg)
    if not refused:
        check_pretrain_settings(cfg, backbone)
        return
    with pytest.raises(UserError) as caught:
        check_pretrain_settings(cfg, backbone)
    text = str(caught.value)
    assert f"run.queue_size={queue}" in text
    if symmetric:
        assert "moco.symmetric=true" in text and "128 or more" in text


def test_run_refuses_a_symmetric_queue_under_two_batches_before_the_run_starts(digits_root, tmp_path):
    out = tmp_path / "x"
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "0.2", "--pretrain",
                          "--model", "test_resnet", "--img-size", "16", "moco.symmetric=true", "run.queue_size=96")
    assert rc == 2 and "run.queue_size=96" in err and "moco.symmetric=true" in err, err
    assert not out.exists()  # refused before the pool was decoded and the folder started


@pytest.mark.parametrize("batch, pool, symmetric, queue", [
    (64, 1000, False, 500), (64, 1000, True, 500), (64, 100, False, 64),    # half the pool, at least one step's
    (64, 100, True, 128), (64, 200, False, 100),                            # keys (no floor of two batches)
    (2049, 90000, False, 4096), (2049, 90000, True, 4098),                  # 4096 at most, but one step's keys
    (4097, 90000, False, 4097), (3000, None, True, 6000), (64, None, False, 4096)])
def test_the_default_queue_holds_one_steps_keys(batch, pool, symmetric, queue):
    """With no run.queue_size, a batch above 2048 with moco.symmetric=true (4096 without) got the 4096 cap, which
    the MoCo stage then refused after the pool was decoded and the run folder started."""
    from fewshot.run_stages import moco_queue_size

    r = {"queue_size": None, "pretrain_batch_size": batch}
    assert moco_queue_size(r, pool, symmetric) == queue
    assert moco_queue_size({**r, "queue_size": 77}, pool, symmetric) == 77  # a given queue is checked, not changed
