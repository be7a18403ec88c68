"""`fewshot run`'s self-training choices on hand-made numbers (mutation testing, round 4): which pool images the
round-1 teacher's labels keep (the calibrated thresholds never below run.pseudo_threshold, the per-shot and
per-dataset caps), the per-class thresholds recorded for each dataset, and the MoCo stage's queue. The end-to-end
runs let these through: on the demo data their outcome held with a cap or a floor left out."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fewshot import run_pseudo
from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import DatasetInfo
from fewshot.eval import evaluate
from fewshot.run_reuse import same_training_images
from fewshot.run_stages import moco_queue_size
from fewshot.ssl.pretrain_settings import keys_per_step
from fewshot.train import semi

SPACE = LabelSpace(("a", "b"), (("a0", "a1", "a2"), ("b0", "b1")))  # global classes: a0 a1 a2 b0 b1 (3, 4)


def rows(*probs) -> torch.Tensor:
    """Logits whose softmax over their dataset's own classes gives ``probs`` (the other columns are masked)."""
    out = torch.full((len(probs), SPACE.num_classes), -9.0)
    for i, (d, p) in enumerate(probs):
        lo = SPACE.offsets[d]
        out[i, lo:lo + len(p)] = torch.tensor(p).log()
    return out


# the teacher's confidences: a's image 0 says a0 at 0.8; images 2 and 3 say b0 at 0.97 and b1 at 0.96; the others
# are at or below chance_floor (2/3 for a's 3 classes, 0.75 for b's 2) and never kept
POOL_IDS = torch.tensor([0, 0, 1, 1, 1, 1])
POOL = rows((0, [0.8, 0.1, 0.1]), (0, [0.4, 0.3, 0.3]), (1, [0.97, 0.03]), (1, [0.04, 0.96]), (1, [0.6, 0.4]),
            (1, [0.4, 0.6]))
# val: a0 at 0.7 (right) and an a1 image called a0 at 0.6: a0's threshold for precision 0.6 is 0.7 ((1+1)/(1+2)),
# a1 is never predicted (inf), a2 and b have no val images (unmeasured: run.pseudo_threshold)
VAL = SimpleNamespace(dataset_ids=torch.tensor([0, 0]), targets=torch.tensor([0, 1]))
VAL_LOGITS = rows((0, [0.7, 0.15, 0.15]), (0, [0.6, 0.2, 0.2]))


class Rows(list):
    def select(self, idx):
        return Rows(self[i] for i in torch.as_tensor(idx).tolist())


def label_pool(monkeypatch, tmp_path: Path, shots: dict, **r) -> dict:
    """pseudo_label_pool on POOL with ``shots`` labelled train images per class (name -> count) and settings ``r``."""
    paths = [str(tmp_path / "unlabeled" / f"{i}.png") for i in range(len(POOL))]
    monkeypatch.setattr(semi, "load_pool", lambda *a, **k: (Rows(range(len(POOL))), POOL_IDS, paths, "ROOT", []))
    monkeypatch.setattr(evaluate, "compute_logits", lambda *a, **k: POOL.clone())
    infos = []
    for name in SPACE.names:
        classes = SPACE.classes[SPACE.index(name)]
        train = tuple((tmp_path / f"{c}{n}.png", k) for k, c in enumerate(classes) for n in range(shots.get(c, 0)))
        infos.append(DatasetInfo(name=name, root=tmp_path / name, classes=classes, train=train))
    task = SimpleNamespace(model=torch.nn.Linear(1, 1), normalize=None, device=torch.device("cpu"),
                           channels_last=False, size=32, space=SPACE, val_set=VAL, val_logits=lambda m: VAL_LOGITS)
    settings = {"pseudo_keep": 1.0, "pseudo_max_per_shot": 100.0, "pseudo_threshold": 0.0, "pseudo_precision": 0.0,
                "pseudo_targets": "hard", **r}
    record = tmp_path / f"pseudo_{len(list(tmp_path.glob('pseudo_*')))}.json"
    return run_pseudo.pseudo_label_pool(task, {"data": {"root": str(tmp_path)}}, infos, settings, record)


EVERY_SHOT = {c: 5 for cs in SPACE.classes for c in cs}


def test_calibrated_thresholds_never_fall_below_the_shared_threshold(monkeypatch, tmp_path):
    out = label_pool(monkeypatch, tmp_path, EVERY_SHOT, pseudo_threshold=0.9, pseudo_precision=0.6)
    # a0's calibrated 0.7 is raised to 0.9: a's image at 0.8 is not kept; b's two at 0.97 and 0.96 are
    assert out["targets"].tolist() == [3, 4]
    per = out["summary"]["datasets"]
    assert per["a"]["class_thresholds"] == {"a0": 0.9, "a1": None, "a2": 0.9}
    assert per["b"]["class_thresholds"] == {"b0": 0.9, "b1": 0.9}  # b's own classes, not a's first two


def test_a_dataset_keeps_at_most_its_share_of_the_pool_in_all(monkeypatch, tmp_path):
    """pseudo_keep 0.25 of b's 4 pool images: one image in all, though each class may take one (the floor)."""
    out = label_pool(monkeypatch, tmp_path, {**EVERY_SHOT, "b0": 1, "b1": 1}, pseudo_keep=0.25, pseudo_max_per_shot=1.0)
    assert out["targets"].tolist() == [0, 3]  # a0 (0.8), and b0 (0.97) before b1 (0.96)
    assert out["summary"]["datasets"]["b"]["kept"] == 1


def test_a_class_keeps_at_most_max_per_shot_times_its_labelled_images(monkeypatch, tmp_path):
    """b0 has no labelled image: with run.pseudo_max_per_shot=1 it keeps none, and b's one image goes to b1."""
    out = label_pool(monkeypatch, tmp_path, {**EVERY_SHOT, "b0": 0, "b1": 1}, pseudo_keep=0.25, pseudo_max_per_shot=1.0)
    assert out["targets"].tolist() == [0, 4]


@pytest.mark.parametrize("pool, want", [(None, 4096), (20000, 4096), (1000, 500), (100, 64), (400, 200)])
def test_the_moco_queue_is_half_the_pool_between_one_steps_keys_and_4096(pool, want):
    assert keys_per_step(64, False) == 64  # one step's keys: the floor under half of a 100-image pool
    assert moco_queue_size({"queue_size": None, "pretrain_batch_size": 64}, pool) == want
    assert moco_queue_size({"queue_size": 77, "pretrain_batch_size": 64}, pool) == 77  # run.queue_size as given


def test_a_stopped_stage_continues_only_on_the_same_number_of_images_and_the_same_pseudo_labels():
    task = SimpleNamespace(train_set=[0] * 5)
    assert same_training_images(task, {"n_train": 5}, "k", "k")
    assert same_training_images(task, {}, "k", "k")  # a last.pt without the count
    assert not same_training_images(task, {"n_train": 5}, "k", "other")  # the same count, other labels
    assert not same_training_images(task, {"n_train": 6}, "k", "k")


def test_precision_cap_reads_only_classes_with_val_images(tmp_path):
    """c0 has no val image (never closed, and no cap of 0.5 to suggest), c1 one (cap 2/3), c2 eight (cap 0.9)."""
    val = ((tmp_path / "x.png", 1),) + tuple((tmp_path / f"{i}.png", 2) for i in range(8))
    info = DatasetInfo(name="d", root=tmp_path, classes=("c0", "c1", "c2"), val=val)
    refusal, warning = run_pseudo.precision_cap([info], 0.8)
    assert refusal is None and "d: 1 of 3 classes (c1)" in warning
    assert f"run.pseudo_precision={math.floor(2 / 3 * 1000) / 1000:g} or lower" in warning
