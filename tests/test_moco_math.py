"""MoCo math checked against hand computations on tiny tensors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fewshot.ssl.functional import (
    all_finite_rows,
    enqueue_,
    infonce_logits,
    infonce_loss,
    momentum_update_,
    shuffle_permutation,
    topk_accuracy,
)

# ----------------------------------------------------------------------------- momentum update


@pytest.mark.parametrize(
    "m, expected_a, expected_b",
    [
        # key a = [1, 2], query a = [3, -2]; key b = [[4]], query b = [[0]]
        (0.0, [3.0, -2.0], [[0.0]]),  # m = 0: the key becomes the query
        (1.0, [1.0, 2.0], [[4.0]]),  # m = 1: the key never moves
        (0.5, [2.0, 0.0], [[2.0]]),  # 0.5*1 + 0.5*3 = 2, 0.5*2 + 0.5*(-2) = 0, 0.5*4 = 2
        (0.75, [1.5, 1.0], [[3.0]]),  # 0.75*1 + 0.25*3 = 1.5, 0.75*2 - 0.25*2 = 1, 0.75*4 = 3
    ],
)
def test_momentum_update_by_hand(m, expected_a, expected_b):
    key = [torch.tensor([1.0, 2.0]), torch.tensor([[4.0]])]
    query = [torch.tensor([3.0, -2.0]), torch.tensor([[0.0]])]
    momentum_update_(key, query, m)
    assert torch.equal(key[0], torch.tensor(expected_a))
    assert torch.equal(key[1], torch.tensor(expected_b))
    # the query is read, never written
    assert torch.equal(query[0], torch.tensor([3.0, -2.0]))


def test_momentum_update_paper_value():
    key, query = [torch.tensor([1.0])], [torch.tensor([2.0])]
    momentum_update_(key, query, 0.999)
    assert key[0].item() == pytest.approx(0.999 * 1.0 + 0.001 * 2.0, abs=1e-7)


def test_momentum_update_rejects_bad_input():
    with pytest.raises(ValueError):
        momentum_update_([torch.zeros(1)], [torch.zeros(1)], 1.5)
    with pytest.raises(ValueError):
        momentum_update_([torch.zeros(1)], [], 0.9)


def test_key_encoder_gets_no_gradient_and_follows_query():
    """The key encoder is moved only by the momentum update, never by backward()."""
    torch.manual_seed(0)
    f_q = nn.Linear(3, 2)
    f_k = copy.deepcopy(f_q)
    for p in f_k.parameters():
        p.requires_grad_(False)

    x_q, x_k = torch.randn(4, 3), torch.randn(4, 3)
    q = F.normalize(f_q(x_q), dim=1)
    with torch.no_grad():
        k = F.normalize(f_k(x_k), dim=1)
    loss = infonce_loss(infonce_logits(q, k, F.normalize(torch.randn(5, 2), dim=1), 0.2))
    loss.backward()

    assert all(p.grad is None for p in f_k.parameters())
    assert all(p.grad is not None for p in f_q.parameters())

    # an SGD step on f_q, then f_k trails it: θk = 0.9 θk + 0.1 θq
    before = [p.clone() for p in f_k.parameters()]
    with torch.no_grad():
        for p in f_q.parameters():
            p -= 0.1 * p.grad
    momentum_update_(list(f_k.parameters()), list(f_q.parameters()), 0.9)
    for old, new, pq in zip(before, f_k.parameters(), f_q.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * pq)
        assert not torch.equal(new, old)


# ----------------------------------------------------------------------------- queue


def _keys(start: int, count: int) -> torch.Tensor:
    """Keys whose single feature is their global index, so queue rows are readable."""
    return torch.arange(start, start + count, dtype=torch.float32).view(-1, 1)


def _rows(queue: torch.Tensor) -> list[int]:
    return [int(v) for v in queue[:, 0].tolist()]


def test_enqueue_wraps_k5_b2():
    queue = torch.full((5, 1), -1.0)
    ptr = 0
    # (pointer after the write, queue contents) listed by hand; -1 = never written
    expected = [
        (2, [0, 1, -1, -1, -1]),
        (4, [0, 1, 2, 3, -1]),
        (1, [5, 1, 2, 3, 4]),  # key 4 at row 4, key 5 wraps to row 0
        (3, [5, 6, 7, 3, 4]),
        (0, [5, 6, 7, 8, 9]),
        (2, [10, 11, 7, 8, 9]),
    ]
    for step, (ptr_after, rows) in enumerate(expected):
        ptr = enqueue_(queue, ptr, _keys(2 * step, 2))
        assert ptr == ptr_after
        assert _rows(queue) == rows


def test_enqueue_k7_b3_then_short_batch():
    queue = torch.full((7, 2), -1.0)
    ptr = enqueue_(queue, 0, _keys(0, 3).expand(3, 2))
    assert ptr == 3 and _rows(queue) == [0, 1, 2, -1, -1, -1, -1]
    ptr = enqueue_(queue, ptr, _keys(3, 3).expand(3, 2))
    assert ptr == 6 and _rows(queue) == [0, 1, 2, 3, 4, 5, -1]
    ptr = enqueue_(queue, ptr, _keys(6, 3).expand(3, 2))  # rows 6, 0, 1
    assert ptr == 2 and _rows(queue) == [7, 8, 2, 3, 4, 5, 6]
    ptr = enqueue_(queue, ptr, _keys(9, 1).expand(1, 2))  # short last batch, B = 1
    assert ptr == 3 and _rows(queue) == [7, 8, 9, 3, 4, 5, 6]
    assert torch.equal(queue[:, 0], queue[:, 1])  # whole rows were written


def test_enqueue_batch_larger_than_queue():
    # K = 3, B = 5 from ptr 1: written in order, key j would land on row (1 + j) % 3,
    # so the last three survive: key 2 -> row 0, key 3 -> row 1, key 4 -> row 2
    queue = torch.full((3, 1), -1.0)
    ptr = enqueue_(queue, 1, _keys(0, 5))
    assert ptr == 0
    assert _rows(queue) == [2, 3, 4]
    # K = 3, B = 4 from ptr 2: key j -> row (2 + j) % 3: key 1 -> row 0, key 2 -> row 1, key 3 -> row 2
    queue = torch.full((3, 1), -1.0)
    ptr = enqueue_(queue, 2, _keys(0, 4))
    assert ptr == 0
    assert _rows(queue) == [1, 2, 3]
    # B = K from ptr 1: key 0 -> row 1, key 1 -> row 2, key 2 -> row 0
    queue = torch.full((3, 1), -1.0)
    assert enqueue_(queue, 1, _keys(0, 3)) == 1
    assert _rows(queue) == [2, 0, 1]


def test_enqueue_matches_row_by_row_reference():
    """Any K, B, ptr: same as writing the keys one row at a time."""
    for size in range(1, 8):
        for batch in range(1, 11):
            for ptr in range(size):
                fast = torch.full((size, 1), -1.0)
                slow = fast.clone()
                new_ptr = enqueue_(fast, ptr, _keys(0, batch))
                p = ptr
                for j in range(batch):
                    slow[p] = j
                    p = (p + 1) % size
                assert new_ptr == p
                assert torch.equal(fast, slow), (size, batch, ptr)


def test_enqueue_rejects_bad_input():
    with pytest.raises(ValueError):
        enqueue_(torch.zeros(4, 3), 0, torch.zeros(2, 2))  # feature dims differ
    with pytest.raises(ValueError):
        enqueue_(torch.zeros(4, 3), 4, torch.zeros(2, 3))  # pointer out of range


# ----------------------------------------------------------------------------- InfoNCE


def _tiny_inputs():
    q = F.normalize(torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, -4.0]]), dim=1)
    k = F.normalize(torch.tensor([[2.0, 1.0, 2.0], [0.0, 4.0, -3.0]]), dim=1)
    queue = F.normalize(
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]), dim=1
    )
    return q, k, queue


def test_infonce_logits_and_loss_by_explicit_loops():
    q, k, queue = _tiny_inputs()
    t = 0.07
    logits = infonce_logits(q, k, queue, t)
    assert logits.shape == (2, 5)

    # the same with explicit loops: column 0 = q_b·k_b, column 1+j = q_b·queue_j
    def dot(a, b):
        return sum(a[d].item() * b[d].item() for d in range(3))

    expected = [[dot(q[b], k[b]) / t] + [dot(q[b], queue[j]) / t for j in range(4)] for b in range(2)]
    torch.testing.assert_close(logits, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    # one value by hand: q0 = (1,2,2)/3, k0 = (2,1,2)/3 -> q0·k0 = 8/9
    assert logits[0, 0].item() == pytest.approx(8 / 9 / t, rel=1e-6)

    # loss = mean over rows of -log softmax(row)[0]
    rows = []
    for b in range(2):
        z = expected[b]
        log_sum = math.log(sum(math.exp(v) for v in z))
        rows.append(log_sum - z[0])
    assert infonce_loss(logits).item() == pytest.approx(sum(rows) / 2, rel=1e-5)
    log_softmax = F.log_softmax(logits, dim=1)[:, 0]
    assert infonce_loss(logits).item() == pytest.approx(-log_softmax.mean().item(), rel=1e-6)


def test_infonce_queue_is_detached():
    q, k, queue = _tiny_inputs()
    q = q.clone().requires_grad_(True)
    queue = queue.clone().requires_grad_(True)
    infonce_loss(infonce_logits(q, k, queue, 0.2)).backward()
    assert q.grad is not None
    assert queue.grad is None


def test_infonce_loss_is_small_when_positive_dominates():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    loss = infonce_loss(logits).item()
    # row 0: log(e^10 + 2) - 10 ≈ 9.1e-5; row 1: log(e^10 + 2) - 0 ≈ 10.0001
    assert loss == pytest.approx((math.log(math.exp(10) + 2) - 10 + math.log(math.exp(10) + 2)) / 2, rel=1e-6)


def test_topk_accuracy_by_hand():
    logits = torch.tensor(
        [
            [5.0, 1.0, 2.0, 3.0],  # target 0 is top-1
            [1.0, 5.0, 4.0, 3.0],  # target 2 is 2nd
            [1.0, 2.0, 3.0, 4.0],  # target 0 is last (4th)
            [0.0, 0.0, 9.0, 1.0],  # target 3 is 2nd
        ]
    )
    target = torch.tensor([0, 2, 0, 3])
    assert topk_accuracy(logits, target, ks=(1, 2, 3)) == [25.0, 75.0, 75.0]
    # k = 5 > 4 columns is clipped to 4: everything is a hit
    assert topk_accuracy(logits, target, ks=(1, 5)) == [25.0, 100.0]
    # MoCo's contrastive accuracy: the target is always column 0
    assert topk_accuracy(logits, torch.zeros(4, dtype=torch.long), ks=(1,)) == [25.0]


def test_topk_accuracy_is_an_exact_fraction():
    """4 of 5 is written 80.0, not the float32 mean's 80.0000011920929 (a long-run hunt saw the noise in
    pretrain metrics.json, where the best epoch is picked by a strict "greater than")."""
    logits = torch.eye(5)
    target = torch.tensor([0, 1, 2, 3, 0])
    assert topk_accuracy(logits, target, ks=(1,)) == [80.0]
    assert topk_accuracy(torch.eye(10)[:3], torch.tensor([0, 1, 0]), ks=(1,))[0] == 200.0 / 3


# ----------------------------------------------------------------------------- shuffle / finite


def test_shuffle_permutation_inverts_and_is_seeded():
    x = torch.arange(10) * 10
    perm, inv = shuffle_permutation(10, torch.Generator().manual_seed(3))
    assert sorted(perm.tolist()) == list(range(10))
    assert torch.equal(x[perm][inv], x)
    assert torch.equal(perm[inv], torch.arange(10))
    assert torch.equal(inv[perm], torch.arange(10))
    again, _ = shuffle_permutation(10, torch.Generator().manual_seed(3))
    assert torch.equal(perm, again)
    other, _ = shuffle_permutation(10, torch.Generator().manual_seed(4))
    assert not torch.equal(perm, other)
    assert not torch.equal(perm, torch.arange(10))


def test_all_finite_rows():
    x = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [0.0, float("inf")], [-3.0, 0.0]])
    assert all_finite_rows(x).tolist() == [True, False, False, True]
    # only finite keys go to the queue
    queue = torch.zeros(4, 2)
    ptr = enqueue_(queue, 0, x[all_finite_rows(x)])
    assert ptr == 2 and torch.isfinite(queue).all()
    assert all_finite_rows(torch.ones(3, 2, 2)).tolist() == [True, True, True]
