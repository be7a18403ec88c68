"""pred_all.json content as predict builds it (eval.predict._predictions), on hand-made logits: only a CLI test
with a trained model covered it, and only if that model happened to misroute an image (mutation testing, fAT)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from fewshot.data.label_space import LabelSpace
from fewshot.eval.predict import MISROUTED, _predictions

SPACE = LabelSpace(("a", "b"), (("a0", "a1", "a2"), ("b0", "b1")))


def predictions(mode: str):
    tm = SimpleNamespace(space=SPACE, n_parameters=1234)
    infos = [SimpleNamespace(name=n, root=Path("/data") / n) for n in SPACE.names]
    data = SimpleNamespace(image_ids=["0", "1", "7"], dataset_ids=torch.tensor([0, 0, 1]))
    logits = torch.full((3, 5), -1.0)
    logits[0, 2] = 3.0  # a's image: a2
    logits[1, 0], logits[1, 4] = 2.0, 3.0  # a's image: a0 within a, b1 over all classes
    logits[2, 3] = 3.0  # b's image: b0 (global 3)
    return _predictions(tm, infos, data, logits, mode)


def test_known_source_predictions_are_local_classes_keyed_by_dataset_and_image():
    pred, routing = predictions("known")
    assert pred == {"n_parameters": 1234, "a": {"0": 2, "1": 0}, "b": {"7": 0}}
    assert routing == {"a": {"0": "a", "1": "a"}, "b": {"7": "b"}}


def test_an_image_routed_to_another_dataset_is_misrouted_and_its_routing_names_that_dataset():
    pred, routing = predictions("unknown")
    # image 1 of a went to b's class b1: its local index 1 would be a1 in a, a spurious class
    assert pred == {"n_parameters": 1234, "a": {"0": 2, "1": MISROUTED}, "b": {"7": 0}}
    assert MISROUTED == -1
    assert routing == {"a": {"0": "a", "1": "b"}, "b": {"7": "b"}}
