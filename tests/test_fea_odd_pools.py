"""MoCo on odd pools (bug hunt hBI): the run's queue over a small pool, a refused --resume that wrote before refusing,
a pool folder emptied by leaving out held-out images, and the pool's words."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers.checks import run_main
from helpers.tiny import pretrain_cfg


def pretrain_argv(root: Path, out: Path, *extra) -> list:
    """The cheapest `fewshot pretrain`: 16 px test_resnet, one epoch, batches of 4 in 2 shuffle-BN groups."""
    return ["pretrain", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "4", "--device", "cpu", "--no-progress", "moco.split_bn_groups=2", "train.threads=1",
            "train.tensorboard=false", *extra]


def pool_images(root: Path, name: str) -> list[Path]:
    return sorted((root / "unlabeled" / name).rglob("*.png"))


def infos_of(root: Path):
    from fewshot.data.layout import scan_root

    return scan_root(root, None, splits=("train", "val"), if_present=("test",))


def test_the_stage_queue_is_about_half_a_small_pool_not_two_batches():
    from fewshot.run_stages import moco_queue_size

    r = {"queue_size": None, "pretrain_batch_size": 64}
    assert moco_queue_size(r, 100) == 64  # one step's keys, not 128 (more than the 100 images)
    assert moco_queue_size(r, 300) == 150
    assert moco_queue_size(r, 100, symmetric=True) == 128  # one step's keys: both views'


def test_the_stage_warns_as_pretrain_does_where_its_queue_holds_the_pool(capsys):
    from fewshot.run_stages import warn_stage_queue

    task = SimpleNamespace(pool=torch.zeros(50, 1), model=SimpleNamespace(split_bn_groups=1,
                                                                          encoder_q=torch.nn.BatchNorm2d(3)))
    pcfg = {"moco": {"queue_size": 64, "symmetric": False}, "train": {"batch_size": 64}}
    warn_stage_queue(pcfg, task, 1)
    said = capsys.readouterr().out
    assert "warning: the queue (K=64) holds at least as many keys as the pool has images (50)" in said, said
    assert "run.pretrain_batch_size=N for --batch-size N" in said, said
    task.pool = torch.zeros(200, 1)
    warn_stage_queue(pcfg, task, 1)
    assert capsys.readouterr().out == ""


def test_a_refused_resume_says_no_start_and_keeps_skipped_images_json(copy_root, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    own = pool_images(copy_root, "digits")
    for i, src in enumerate(own[:8]):
        shutil.copyfile(src, pool / f"{i}.png")
    (pool / "bad.png").write_bytes(b"")
    out = tmp_path / "run"
    rc, _, err = run_main(*pretrain_argv(copy_root, out, "--unlabeled", pool))
    assert rc == 0, err
    before = (out / "skipped_images.json").read_bytes()
    shutil.copyfile(own[8], pool / "new.png")  # the pool changed: the resume is refused
    (pool / "bad2.png").write_bytes(b"")
    rc, said, err = run_main(*pretrain_argv(copy_root, out, "--unlabeled", pool, "--resume", "--epochs", "2"))
    assert rc == 2 and "the run being resumed trained on 8 pool images" in err, err
    assert "MoCo (" not in said and "warning: the queue" not in said, said
    assert (out / "skipped_images.json").read_bytes() == before


def test_a_pool_folder_of_only_held_out_images_lets_the_train_images_stand_in(copy_root, capsys):
    from fewshot.data.pool import pool_with_sources

    shutil.rmtree(copy_root / "unlabeled" / "digits")
    os.symlink(copy_root / "digits" / "val", copy_root / "unlabeled" / "digits")
    infos = infos_of(copy_root)
    paths, ids, source, standing = pool_with_sources(pretrain_cfg(copy_root), infos)
    index = [info.name for info in infos].index("digits")
    assert "digits: train images" in source and index in standing, source
    digits = [p for p, i in zip(paths, ids) if i == index]
    assert sorted(digits) == sorted(p for p, _ in infos[index].train)
    err = capsys.readouterr().err
    assert "it holds no other image, so digits has no pool of its own, as with an empty pool folder" in err, err


@pytest.mark.parametrize("n, words", [(0, "holds no images"), (1, "has 1 image, fewer than one batch of 4")])
def test_an_empty_or_one_image_pool_is_worded_as_such(n, words):
    from fewshot.train.start_checks import empty_epoch_error

    task = SimpleNamespace(kind="moco", pool=[0] * n, pool_source="1 --unlabeled folder(s)")
    said = str(empty_epoch_error(task, {"train": {"batch_size": 4}}, 1))
    assert words in said, said
    assert ("lower --batch-size" in said) == (n > 0), said


def test_one_folder_given_three_ways_is_one_folder(copy_root, tmp_path):
    from fewshot.data.pool import pool_with_sources

    pool = tmp_path / "pool"
    pool.mkdir()
    shutil.copyfile(pool_images(copy_root, "digits")[0], pool / "a.png")
    cfg = pretrain_cfg(copy_root)
    cfg["_task"] = "moco"
    cfg["data"]["unlabeled"] = [str(pool), str(pool), f"{pool}/"]
    paths, _, source, _ = pool_with_sources(cfg, infos_of(copy_root))
    assert len(paths) == 1 and source == "1 --unlabeled folder(s)", source
