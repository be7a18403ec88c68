"""predict's balancing and scoring on hand-made logits (mutation testing, round 4): which rows and columns a
dataset's balancing reads and shifts, that the known-source predictions and their scores are balanced once and the
unknown-source ones not at all, and which image ids the answer keys are read for. The CLI tests with a trained model
let these through: its test predictions came out the same either way."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import DatasetInfo
from fewshot.eval import balancing, predict

SPACE = LabelSpace(("a", "b"), (("a0", "a1", "a2"), ("b0", "b1")))  # global classes: a0 a1 a2 b0 b1
CPU = torch.device("cpu")
# a's offsets favour a0 by 0.5; b is left plain
PLAN = {"a": {"used": True, "_offsets": torch.tensor([0.5, 0.0, 0.0])}, "b": {"used": False, "why": "--balance off"}}


def model(space=SPACE) -> SimpleNamespace:
    return SimpleNamespace(space=space, n_parameters=1234, path=Path("run/checkpoints/best.pt"), cfg={})


def data() -> SimpleNamespace:
    return SimpleNamespace(image_ids=["0", "1", "7"], dataset_ids=torch.tensor([0, 0, 1]))


def logits() -> torch.Tensor:
    return torch.tensor([[0.0, 0.6, 0.0, -5.0, -5.0],  # a's image 0: a1, still a1 balanced once (a0 at 0.5)
                         [0.0, 0.4, 0.0, -5.0, -5.0],  # a's image 1: a1 plain, a0 balanced (0.5 > 0.4)
                         [-5.0, -5.0, -5.0, 1.0, 0.0]])  # b's image 7: b0


def infos(root: Path, keyed=("a", "b")) -> list[DatasetInfo]:
    keys = {"a": {"0": 1, "1": 0}, "b": {"7": 0}}  # local classes: the balanced predictions are all right
    out = []
    for name in SPACE.names:
        (root / name).mkdir(parents=True, exist_ok=True)
        key = None
        if name in keyed:
            key = root / name / "test_labels.json"
            key.write_text(json.dumps(keys[name]))
        out.append(DatasetInfo(name=name, root=root / name, classes=SPACE.classes[SPACE.index(name)], answer_key=key))
    return out


@pytest.fixture
def patched(monkeypatch, tmp_path):
    """predict's loading steps replaced by the hand-made model, test logits and balancing plan."""
    found = infos(tmp_path)
    monkeypatch.setattr(predict, "load_trained", lambda run, device: model())
    monkeypatch.setattr(predict, "list_datasets", lambda root, **advice: None)
    monkeypatch.setattr(predict, "say_checkpoint", lambda *a, **k: None)
    monkeypatch.setattr(predict, "say_balance", lambda *a, **k: None)
    monkeypatch.setattr(predict, "chosen_balance", lambda run, typed, who: "on")
    monkeypatch.setattr(predict, "balance_plan", lambda *a, **k: PLAN)
    monkeypatch.setattr(predict, "_test_logits", lambda *a, **k: (found, data(), logits()))
    return found


def test_the_balancing_reads_each_datasets_own_rows_and_columns(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(balancing, "_balance_one", lambda tm, root, name, test, *a: seen.setdefault(name, test))
    scores = torch.arange(15.0).reshape(3, 5)
    predict.balance_plan(model(), tmp_path, infos(tmp_path), data(), scores, "on", CPU)
    assert torch.equal(seen["a"], torch.tensor([[0.0, 1.0, 2.0], [5.0, 6.0, 7.0]]))
    assert torch.equal(seen["b"], torch.tensor([[13.0, 14.0]]))  # b's columns 3-4, not a's first two


def test_the_offsets_shift_only_the_balanced_datasets_rows_and_columns():
    plan = {"a": {"used": False}, "b": {"used": True, "_offsets": torch.tensor([1.0, -1.0])}}
    out = predict.balanced_logits(model(), data(), torch.zeros(3, 5), plan)
    assert torch.equal(out, torch.tensor([[0.0] * 5, [0.0] * 5, [0.0, 0.0, 0.0, 1.0, -1.0]]))


def test_known_source_predictions_and_scores_are_balanced_once(patched, tmp_path):
    pred, _, scores = predict.predict_and_score("run", tmp_path, CPU, mode="known", balance="on")
    # balanced twice, image 0 would go to a0 (1.0 > 0.6); plain, image 1 would stay a1
    assert pred == {"n_parameters": 1234, "a": {"0": 1, "1": 0}, "b": {"7": 0}}
    assert scores["known"]["datasets"]["a"]["acc1"] == 100.0  # scored on the balanced logits, as predicted
    assert scores["unknown"]["datasets"]["a"]["acc1"] == 50.0  # unknown source: plain, image 1 is a1


def test_unknown_source_predictions_are_never_balanced(patched, tmp_path):
    pred, routing, _ = predict.predict_and_score("run", tmp_path, CPU, mode="unknown", balance="on")
    assert pred == {"n_parameters": 1234, "a": {"0": 1, "1": 1}, "b": {"7": 0}}
    assert routing == {"a": {"0": "a", "1": "a"}, "b": {"7": "b"}}
    assert predict.predict_run("run", tmp_path, "unknown", CPU)[0] == pred
    assert predict.predict_run("run", tmp_path, "known", CPU)[0]["a"] == {"0": 1, "1": 0}


def test_the_answer_keys_are_read_for_the_keyed_datasets_own_image_ids(monkeypatch, tmp_path, patched):
    """a has no key: b's only image is row 2, id 7 (the first id, 0, is a's and not in b's key)."""
    found = infos(tmp_path / "b_only", keyed=("b",))
    monkeypatch.setattr(predict, "_test_logits", lambda *a, **k: (found, data(), logits()))
    _, _, scores = predict.predict_and_score("run", tmp_path, CPU, mode="known", balance="on")
    assert scores["known"]["datasets"] == {"b": {"acc1": 100.0, "acc5": 100.0, "n": 1}}
    assert scores["known"]["not_scored"] == ["a"]


def test_a_val_split_lacking_a_class_is_relabelled_by_the_models_class_names():
    info = DatasetInfo(name="a", root=Path("/data/a"), classes=("a0", "a2"), val=((Path("x.png"), 1),))
    out = predict._in_model_classes(info, ("a0", "a1", "a2"), "val", warn=False)
    assert out.classes == ("a0", "a1", "a2") and out.val == ((Path("x.png"), 2),)  # a2 is the model's class 2


def test_floored_shares_give_a_class_estimated_at_zero_one_test_images_share():
    # 100 test images over 3 classes: the floor is 1/100, not 1/3 (which would make every class even)
    out = balancing.floored_shares(torch.tensor([0.0, 0.5, 0.5]), 100)
    assert torch.allclose(out, torch.tensor([0.01, 0.495, 0.495]))


def test_a_single_class_dataset_is_not_balanced_and_nothing_else_is_read():
    single = model(LabelSpace(("s",), (("s0",),)))
    plan = balancing._balance_one(single, Path("/nonexistent"), "s", torch.zeros(50, 1), "on", CPU, "--balance")
    assert plan == {"used": False, "why": "a single class: nothing to even out"}
