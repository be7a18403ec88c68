"""benchmarks/classical_teacher.py: the classical teacher learns, its pool labels are kept as `fewshot run` keeps
them, and a whole run on a tiny demo root scores a real run's best checkpoint as `fewshot eval` does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.data.layout import DatasetInfo
from conftest import SMALL
from helpers.checks import train_tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ct(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import classical_teacher

    return classical_teacher


def _info(n_classes: int = 3, shots: int = 10) -> DatasetInfo:
    classes = tuple(f"c{i}" for i in range(n_classes))
    return DatasetInfo("d", Path("d"), classes, train=tuple((Path(f"{i}.png"), i % n_classes)
                                                           for i in range(shots * n_classes)))


def test_classical_teacher_separates_stripes_from_blobs(ct):
    """Three kinds of 12 px images (horizontal stripes, vertical stripes, a bright square): k-means + HOG features
    and the val-chosen logistic regression get val right, and the probabilities are rows that sum to 1."""
    rng = np.random.default_rng(0)

    def images(n):
        y = np.arange(n) % 3
        x = rng.random((n, 12, 12)).astype(np.float32) * 0.3
        x[y == 0, ::3, :] += 0.7
        x[y == 1, :, ::3] += 0.7
        x[y == 2, 3:9, 3:9] += 0.7
        return x, y

    (tr, ytr), (va, yva), (pool, _) = images(30), images(30), images(60)
    probs, built = ct.classical_teacher({"train": tr, "val": va, "pool": pool}, ytr, yva, k=8, n_patches=400)
    assert (probs["val"].argmax(1) == yva).mean() >= 0.9
    assert probs["pool"].shape == (60, 3) and np.allclose(probs["pool"].sum(1), 1, atol=1e-5)
    assert built["C"] in ct.CS and built["k"] == 8 and built["build_s"] >= built["features_s"]


def test_kept_labels_take_the_product_quota_and_only_the_agreed_images(ct):
    """60 pool images, 3 classes, 10 shots: `fewshot run` keeps 10 a class (pseudo_keep 0.5 of 60 / 3), the most
    confident first, never one at or below the chance floor; an agreement mask keeps none of the others."""
    info = _info()
    rng = np.random.default_rng(1)
    labels = np.arange(60) % 3
    conf = rng.uniform(0.7, 0.99, 60)
    probs = np.full((60, 3), 0.0)
    probs[np.arange(60), labels] = conf
    probs[np.arange(60), (labels + 1) % 3] = 1 - conf
    probs[:3] = 1 / 3  # undecided: never kept
    idx, kept = ct.kept_labels(probs, info)
    assert np.bincount(kept, minlength=3).tolist() == [10, 10, 10] and not set(idx) & {0, 1, 2}
    for c in range(3):  # the most confident of each class
        mine = np.flatnonzero((labels == c) & (np.arange(60) >= 3))
        assert set(idx[kept == c]) == set(mine[np.argsort(-conf[mine])[:10]])
    mask = np.arange(60) % 2 == 0  # 10 even images a class, less the undecided 0 (class 0) and 2 (class 2)
    idx, kept = ct.kept_labels(probs, info, mask)
    assert mask[idx].all() and np.bincount(kept, minlength=3).tolist() == [9, 10, 9]


def test_compare_counts_the_shared_errors_and_the_right_kept_labels(ct):
    info = _info()
    y_val = np.array([0, 1, 2, 0, 1, 2])
    onehot = np.eye(3)[[0, 1, 2, 1, 2, 0]] * 0.9 + 0.1 / 3  # wrong on 3, 4, 5
    other = np.eye(3)[[0, 1, 1, 1, 0, 2]] * 0.6 + 0.4 / 3  # wrong on 2, 3 (as onehot), 4; less sure: the mean is onehot
    truth = np.arange(30) % 3
    cnn_pool = np.eye(3)[truth] * 0.9 + 0.1 / 3
    cls_pool = np.eye(3)[np.where(np.arange(30) < 6, (truth + 1) % 3, truth)] * 0.8 + 0.2 / 3
    res = ct.compare({"val": onehot, "pool": cnn_pool}, {"val": other, "pool": cls_pool}, y_val, truth, info)
    assert res["val"] == {"cnn": 50.0, "classical": 50.0, "mean": 50.0}
    assert res["val_errors"] == {"cnn": 3, "classical": 3, "both": 2, "both_same_class": 1}
    assert res["pseudo"]["cnn"]["right"] == res["pseudo"]["cnn"]["kept"] == 15  # 5 a class: 0.5 of 30 / 3
    assert res["pseudo"]["classical"]["kept"] == 15 and res["pseudo"]["classical"]["right"] < 15
    assert res["pseudo"]["agreement"]["kept"] == 15 and res["pseudo"]["agreement"]["right"] == 15
    assert res["pseudo"]["mean"]["per_class"] == {"c0": "5/5", "c1": "5/5", "c2": "5/5"}


def test_a_run_on_a_tiny_demo_root_scores_the_run_as_eval_does(ct, digits_root, tmp_path):
    """A real 1-epoch run's best checkpoint is the CNN teacher: its val accuracy is `fewshot eval --split val`'s,
    and its pool labels respect the quota of the root's pool (10 a class: 5 kept, 50 in all)."""
    from fewshot.eval.predict import evaluate_run

    run = train_tiny(digits_root, tmp_path / "run")
    sizes = ["--shots", str(SMALL["shots"]), "--val-per-class", str(SMALL["val_per_class"]),
             "--test-per-class", str(SMALL["test_per_class"]), "--pool-per-class", str(SMALL["pool_per_class"])]
    out = tmp_path / "r.json"
    ct.main([str(run), "--data", str(digits_root), "--datasets", "digits", "--k", "8", "--patches", "300",
             *sizes, "--out", str(out)])
    res = json.loads(out.read_text())["datasets"]["digits"]
    got = res["runs"][str(run)]
    want = evaluate_run(run, digits_root, "known", torch.device("cpu"), split="val", datasets="digits")
    assert got["val"]["cnn"] == round(want["datasets"]["digits"]["acc1"], 1)
    assert got["checkpoint"].endswith("best.pt") and res["pool"] == 100
    for teacher, p in got["pseudo"].items():
        assert p["kept"] <= 50 and 0 <= p["right"] <= p["kept"], teacher
        assert all(int(v.split("/")[1]) <= 5 for v in p["per_class"].values()), teacher
    assert got["pseudo"]["agreement"]["kept"] <= got["pseudo"]["mean"]["kept"]


def test_a_root_without_a_pool_is_a_usage_error(ct, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        ct.main([str(tmp_path), "--data", str(tmp_path / "demo_dta")])
    assert stop.value.code == 2 and "no unlabeled/ folder" in capsys.readouterr().err
