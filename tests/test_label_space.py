"""The joint label space: offsets, global<->local labels, known/unknown-source prediction."""

from __future__ import annotations

import json

import pytest
import torch

from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import scan_root
from fewshot.eval.evaluate import score

# three datasets of different sizes, so an offset or size mix-up shows
SPACE = LabelSpace(("a", "b", "c"), (("a0", "a1", "a2"), ("b0", "b1", "b2", "b3", "b4"), ("c0", "c1")))


def test_sizes_offsets_and_count():
    assert SPACE.sizes == (3, 5, 2)
    assert SPACE.offsets == (0, 3, 8)
    assert SPACE.num_classes == 10
    assert SPACE.index("b") == 1
    assert SPACE.owner().tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]


def test_global_label_and_back():
    assert SPACE.global_label(0, 0) == 0
    assert SPACE.global_label(1, 4) == 7
    assert SPACE.global_label(2, 1) == 9
    ds, local = SPACE.to_local(torch.arange(10))
    assert ds.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert local.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1]
    for g in range(10):
        assert SPACE.global_label(int(ds[g]), int(local[g])) == g


@pytest.mark.parametrize("d,local", [(0, 3), (1, 5), (2, 2), (0, -1)])
def test_global_label_out_of_range(d, local):
    with pytest.raises(ValueError):
        SPACE.global_label(d, local)


def test_mask_and_restrict():
    ids = torch.tensor([0, 1, 2])
    mask = SPACE.mask(ids)
    assert mask.shape == (3, 10)
    assert mask[0].tolist() == [True] * 3 + [False] * 7
    assert mask[1].tolist() == [False] * 3 + [True] * 5 + [False] * 2
    assert mask[2].tolist() == [False] * 8 + [True] * 2
    logits = torch.randn(3, 10)
    r = SPACE.restrict(logits, ids)
    assert torch.equal(r[mask], logits[mask])
    assert torch.isneginf(r[~mask]).all()


def test_known_source_never_predicts_outside_the_dataset():
    gen = torch.Generator().manual_seed(0)
    n = 300
    ids = torch.randint(0, 3, (n,), generator=gen)
    logits = torch.randn(n, 10, generator=gen)
    # make another dataset's class the global argmax for every sample
    other_class = torch.where(ids == 0, 9, 0)
    logits[torch.arange(n), other_class] = 100.0
    ds, local = SPACE.predict(logits, "known", ids)
    assert torch.equal(ds, ids)
    sizes = torch.tensor(SPACE.sizes)
    assert ((local >= 0) & (local < sizes[ids])).all()
    for i in range(n):  # the argmax among the sample's own classes
        d = int(ids[i])
        lo, hi = SPACE.offsets[d], SPACE.offsets[d] + SPACE.sizes[d]
        assert int(local[i]) == int(logits[i, lo:hi].argmax())


def test_unknown_source_routes_to_the_owner_of_the_argmax():
    logits = torch.zeros(4, 10)
    logits[0, 9] = 5.0   # c1
    logits[1, 3] = 5.0   # b0
    logits[2, 7] = 5.0   # b4
    logits[3, 2] = 5.0   # a2
    given = torch.tensor([0, 0, 2, 1])  # the true sources, deliberately not the argmax owners
    ds, local = SPACE.predict(logits, "unknown", given)
    assert ds.tolist() == [2, 1, 1, 0]
    assert local.tolist() == [1, 0, 4, 2]
    ds2, local2 = SPACE.predict(logits, "unknown")  # dataset ids are not needed
    assert torch.equal(ds, ds2) and torch.equal(local, local2)


def test_unknown_source_local_label_always_in_range():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 10, generator=gen)
    ds, local = SPACE.predict(logits, "unknown")
    sizes = torch.tensor(SPACE.sizes)
    assert (local >= 0).all() and (local < sizes[ds]).all()
    g = logits.argmax(1)
    assert torch.equal(torch.tensor(SPACE.offsets)[ds] + local, g)


def test_predict_argument_errors():
    with pytest.raises(ValueError, match="dataset ids"):
        SPACE.predict(torch.zeros(2, 10), "known")
    with pytest.raises(ValueError, match="mode"):
        SPACE.predict(torch.zeros(2, 10), "routing", torch.zeros(2, dtype=torch.long))


def test_dict_round_trip_through_json():
    d = json.loads(json.dumps(SPACE.to_dict()))
    back = LabelSpace.from_dict(d)
    assert back == SPACE
    assert back.sizes == SPACE.sizes and back.offsets == SPACE.offsets
    assert LabelSpace.from_dict(SPACE.to_dict()).to_dict() == SPACE.to_dict()
    other = LabelSpace(("a", "b", "c"), (("a0", "a1", "a2"), ("b0", "b1", "b2", "b3"), ("c0", "c1")))
    assert other != SPACE


def test_from_real_infos(digits_root, dataset_names):
    infos = scan_root(digits_root)
    space = LabelSpace.from_infos(infos)
    assert space.names == tuple(dataset_names)
    assert space.sizes == (10, 10) and space.offsets == (0, 10)
    assert space.classes[1] == infos[1].classes
    # a training sample's global target maps back to its folder's class name
    for d, info in enumerate(infos):
        path, local = info.train[-1]
        ds, loc = space.to_local(torch.tensor([space.global_label(d, local)]))
        assert space.names[int(ds)] == info.name
        assert space.classes[int(ds)][int(loc)] == path.parent.name


def test_score_modes_and_routing():
    """Known mode restricts before scoring and has no routing; unknown mode reports routing."""
    targets = torch.tensor([1, 4, 9, 0])            # a1, b1, c1, a0
    ids = torch.tensor([0, 1, 2, 0])
    logits = torch.full((4, 10), -1.0)
    logits[0, 1] = 3.0                               # right, in its dataset
    logits[1, 4] = 1.0; logits[1, 8] = 3.0           # right only when restricted to b; routed to c
    logits[2, 9] = 3.0                               # right
    logits[3, 2] = 3.0                               # wrong class, right dataset
    known = score(logits, targets, ids, SPACE, "known", n_parameters=7)
    unknown = score(logits, targets, ids, SPACE, "unknown", n_parameters=7)
    assert known["routing_acc"] is None and known["mode"] == "known" and known["n_parameters"] == 7
    assert known["datasets"]["a"] == pytest.approx({"acc1": 50.0, "acc5": 100.0, "n": 2})
    assert known["datasets"]["b"]["acc1"] == 100.0 and unknown["datasets"]["b"]["acc1"] == 0.0
    assert known["mean_acc1"] == pytest.approx((50 + 100 + 100) / 3)
    assert unknown["routing_acc"] == pytest.approx(75.0)
    assert set(known) >= {"mode", "n_parameters", "mean_acc1", "datasets", "routing_acc"}


def test_class_names_from_older_checkpoints_are_read_in_composed_unicode():
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "café")
    space = LabelSpace.from_dict({"names": ["a"], "classes": [[decomposed, "tea"]]})
    assert space.classes == (("café", "tea"),) and space.classes[0][0] == unicodedata.normalize("NFC", "café")


def test_accuracies_are_exact_fractions():
    """A float32 mean wrote 11.999999731779099 for 3 of 25 into metrics.json."""
    space = LabelSpace(("a",), (("x", "y"),))
    targets = torch.tensor([0] * 3 + [1] * 22)
    logits = torch.zeros(25, 2)
    logits[:, 0] = 1.0  # predicts class x for all: 3 of 25 right
    m = score(logits, targets, torch.zeros(25, dtype=torch.long), space, "unknown")
    assert m["datasets"]["a"]["acc1"] == 12.0 and m["mean_acc1"] == 12.0 and m["routing_acc"] == 100.0


def test_acc5_is_never_below_acc1_when_logits_tie():
    """argmax (acc@1, the predictions) and topk (acc@5) broke exact ties differently: with 10 classes all at the
    same logit, argmax took class 0 and topk five others, so acc@5 was 0 % beside acc@1 100 %."""
    space = LabelSpace(("a",), (tuple("abcdefghij"),))
    logits = torch.zeros(4, 10)  # e.g. a collapsed or untrained head
    targets = torch.zeros(4, dtype=torch.long)
    for mode in ("known", "unknown"):
        m = score(logits, targets, torch.zeros(4, dtype=torch.long), space, mode)["datasets"]["a"]
        assert m["acc1"] == 100.0 and m["acc5"] == 100.0, (mode, m)
