"""A MoCo resume on a pool whose files changed but whose count did not (it resumed without a word, drawing other
images by position), and the kNN monitor's k as metrics.json states it (the k used, not the one asked for)."""

from __future__ import annotations

import json

import pytest

from fewshot.errors import UserError
from fewshot.ssl.pretrain import run_pretrain
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
    pool[0].with_name("renamed_" + pool[0].name).rename(pool[0])  # restored: it resumes
    run_pretrain(pretrain_cfg(root, **{"train.epochs": 2, "model.img_size": 16, "moco.knn_k": 100}), out, resume=True)
