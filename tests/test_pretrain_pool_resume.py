"""A MoCo resume on a pool whose files changed but whose count did not (it resumed without a word, drawing other
images by position), and the kNN monitor's k as metrics.json states it (the k used, not the one asked for)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewshot.errors import UserError
from fewshot.ssl.pretrain import run_pretrain
from fewshot.train.checkpoint import load_checkpoint, save_checkpoint
from helpers.tiny import build_digits, pretrain_cfg


def test_a_pool_with_other_files_of_the_same_count_is_refused_on_resume(tmp_path):
    root = build_digits(tmp_path / "data")
    out = tmp_path / "run"
    run_pretrain(pretrain_cfg(root, **{"train.epochs": 1, "model.img_size": 16, "moco.knn_k": 100}), out)
    metric = json.loads((out / "metrics.json").read_text())["metric"]
    assert metric.startswith("kNN (k=40: moco.knn_k=100 capped at the train images, t="), metric  # 4 shots x 10

    pool = sorted((root / "unlabeled" / "digits").rglob("*.png"))
    pool[0].rename(pool[0].with_name("renamed_" + pool[0].name))  # the same count, another file
    with pytest.raises(UserError, match="has other files now"):
        run_pretrain(pretrain_cfg(root, **{"train.epochs": 2, "model.img_size": 16, "moco.knn_k": 100}), out,
                     resume=True)
    # a checkpoint of an older version records no fingerprint: the count alone is checked, as before
    last = out / "checkpoints" / "last.pt"
    ck = load_checkpoint(last)
    ck.pop("pool_key")
    for key in ("format", "version"):
        ck.pop(key, None)
    save_checkpoint(last, ck)
    run_pretrain(pretrain_cfg(root, **{"train.epochs": 2, "model.img_size": 16, "moco.knn_k": 100}), out, resume=True)


def test_a_pool_outside_the_root_is_one_pool_however_its_path_is_typed(tmp_path, monkeypatch):
    from fewshot.train.semi import pool_key

    root, pool = tmp_path / "data", tmp_path / "pool"
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    typed = [Path("..") / "pool" / "a.png", root / "unlabeled" / "x" / "b.png"]
    absolute = [pool / "a.png", root / "unlabeled" / "x" / "b.png"]
    assert pool_key(typed, root, True) == pool_key(absolute, root, True)
    assert pool_key(typed, root) != pool_key(absolute, root)  # FixMatch's key keeps its older checkpoints' form
