"""The MoCo module (fewshot.ssl.moco.MoCo) on a tiny timm backbone and real digit images: the key
encoder is moved by momentum only, the queue is a ring buffer of unit-norm keys, poisoned keys
never enter it; plus the config checks of pretrain_settings.py and the kNN monitor by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fewshot.config import resolve
from fewshot.errors import UserError
from fewshot.models.backbone import create_backbone
from fewshot.ssl.functional import shuffle_permutation
from fewshot.ssl.knn import knn_accuracy, knn_predict
from fewshot.ssl.moco import MoCo
from fewshot.ssl.pretrain_settings import resolve_pretrain_defaults, split_groups
from helpers.tiny import view_pair


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_moco(queue_size=10, momentum=0.9, groups=2, symmetric=False, seed=0) -> MoCo:
    torch.manual_seed(seed)
    model = MoCo(create_backbone("test_resnet", img_size=32), dim=16, queue_size=queue_size, momentum=momentum,
                 temperature=0.2, mlp=True, split_bn_groups=groups, symmetric=symmetric)
    return model.train()


def capture_keys(model: MoCo) -> list[torch.Tensor]:
    """Record every output of model.keys (the batch's keys, in batch order)."""
    seen: list[torch.Tensor] = []
    orig = model.keys

    def keys(x, generator):
        k = orig(x, generator)
        seen.append(k.detach().clone())
        return k

    model.keys = keys
    return seen


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------ key encoder


def test_gradients_never_reach_the_key_encoder():
    model = make_moco()
    im_q, im_k = view_pair(4)
    loss, logits = model(im_q, im_k, gen(0))
    assert logits.shape == (4, 1 + 10) and torch.isfinite(loss)
    loss.backward()
    for name, p in model.encoder_k.named_parameters():
        assert not p.requires_grad, name
        assert p.grad is None, name
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert not model.queue.requires_grad and model.queue.grad is None


def test_key_encoder_is_the_momentum_average_after_one_forward():
    m = 0.9
    model = make_moco(momentum=m)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.5)
    im_q, im_k = view_pair(4)
    loss, _ = model(im_q, im_k, gen(0))  # a real step, so that f_q and f_k differ
    opt.zero_grad()
    loss.backward()
    opt.step()
    k_old = [p.detach().clone() for p in model.encoder_k.parameters()]
    q_now = [p.detach().clone() for p in model.encoder_q.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(k_old, q_now))

    model(*view_pair(4, offset=4), gen(1))
    moved = 0
    for (name, k_new), a, b, q_after in zip(model.encoder_k.named_parameters(), k_old, q_now,
                                            model.encoder_q.parameters()):
        torch.testing.assert_close(k_new, m * a + (1 - m) * b, rtol=0, atol=1e-6, msg=name)
        assert torch.equal(q_after, b), f"forward changed the query encoder's {name}"
        moved += not torch.equal(k_new, a)
    assert moved > 0


# ------------------------------------------------------------------------------ queue


@pytest.mark.parametrize("groups", [1, 2])
def test_queue_holds_the_batch_keys_at_the_expected_rows(groups):
    """K=10, B=4 (K not a multiple of B): rows 0-3, 4-7, then 8, 9, 0, 1; the pointer wraps to 2."""
    model = make_moco(queue_size=10, groups=groups)
    seen = capture_keys(model)
    expect_rows = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    for step in range(3):
        im_q, im_k = view_pair(4, offset=4 * step)
        before = model.queue.clone()
        # the keys by hand: momentum update, shuffle, f_k per group, normalise, unshuffle
        ref = copy.deepcopy(model)
        ref.momentum_update()
        perm, inverse = shuffle_permutation(4, gen(step))
        with torch.no_grad():
            expected = F.normalize(ref.encoder_k(im_k[perm]), dim=1)[inverse]

        model(im_q, im_k, gen(step))
        keys = seen[-1]
        torch.testing.assert_close(keys, expected, rtol=0, atol=1e-6)
        rows = expect_rows[step]
        assert torch.equal(model.queue[rows], keys)
        untouched = [r for r in range(10) if r not in rows]
        assert torch.equal(model.queue[untouched], before[untouched])
        assert int(model.queue_ptr) == (4 * (step + 1)) % 10
        assert int(model.queue_filled) == min(10, 4 * (step + 1))
        norms = model.queue.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones(10), rtol=0, atol=1e-5)


def test_symmetric_loss_enqueues_both_key_batches():
    model = make_moco(queue_size=12, symmetric=True)
    seen = capture_keys(model)
    loss, logits = model(*view_pair(4), gen(0))
    assert torch.isfinite(loss) and logits.shape == (4, 13)
    assert int(model.queue_ptr) == 8
    assert torch.equal(model.queue[:8], torch.cat(seen))


def test_keys_enter_the_queue_only_after_the_logits_used_the_old_queue():
    model = make_moco(queue_size=10)
    old = model.queue.clone()
    im_q, im_k = view_pair(4)
    seen = capture_keys(model)
    _, logits = model(im_q, im_k, gen(0))
    q = F.normalize(model.encoder_q(im_q), dim=1)  # BN in train mode: same batch, same statistics
    torch.testing.assert_close(logits[:, 1:], (q @ old.T) / model.T, rtol=0, atol=1e-4)
    torch.testing.assert_close(logits[:, 0], (q * seen[0]).sum(1) / model.T, rtol=0, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 2])
def test_nonfinite_keys_never_enter_the_queue(groups):
    model = make_moco(queue_size=10, groups=groups)
    im_q, im_k = view_pair(4)
    model(im_q, im_k, gen(0))  # a normal step first: the pointer is at 4
    queue, ptr, filled = model.queue.clone(), int(model.queue_ptr), int(model.queue_filled)
    im_q, im_k = view_pair(4, offset=4)
    im_k[1] = float("nan")  # a NaN image among the key views
    seen = capture_keys(model)
    loss, _ = model(im_q, im_k, gen(1))
    assert not torch.isfinite(seen[0]).all()
    assert torch.equal(model.queue, queue)
    assert int(model.queue_ptr) == ptr == 4 and int(model.queue_filled) == filled == 4
    assert torch.isfinite(model.queue).all()


# ------------------------------------------------------------------------------ config checks


def moco_cfg(**flags) -> dict:
    return resolve(preset="mocov2", flags=flags)


def test_resolve_pretrain_defaults_refuses_a_queue_smaller_than_the_global_batch():
    with pytest.raises(UserError, match=r"queue_size \(32\).*global batch \(64 = 16 x 4"):
        resolve_pretrain_defaults(moco_cfg(**{"moco.queue_size": 32, "train.batch_size": 16}), world=4)
    with pytest.raises(UserError):
        resolve_pretrain_defaults(moco_cfg(**{"moco.queue_size": 7, "train.batch_size": 8}), world=1)
    # K equal to the global batch is allowed
    resolve_pretrain_defaults(moco_cfg(**{"moco.queue_size": 32, "train.batch_size": 16}), world=2)


def test_resolve_pretrain_defaults_scales_the_default_lr():
    cfg = moco_cfg(**{"train.batch_size": 64})  # the presets leave lr to the scaling rule
    resolve_pretrain_defaults(cfg, world=2)
    assert cfg["optim"]["lr"] == pytest.approx(0.03 * 128 / 256)
    cfg = moco_cfg(**{"train.batch_size": 64, "optim.lr": 0.1})  # an explicit lr is kept
    resolve_pretrain_defaults(cfg, world=2)
    assert cfg["optim"]["lr"] == 0.1


def test_split_groups():
    def cfg(bs, g, mode="auto"):
        return moco_cfg(**{"train.batch_size": bs, "moco.split_bn_groups": g, "moco.shuffle_bn": mode})

    assert split_groups(cfg(16, 8), world=1) == 8
    assert split_groups(cfg(16, 8), world=2) == 1  # under DDP the cross-rank shuffle does the job
    assert split_groups(cfg(16, 8, "off"), world=1) == 1
    assert split_groups(cfg(9, 1), world=1) == 1
    with pytest.raises(UserError, match="multiple of moco.split_bn_groups=8"):
        split_groups(cfg(12, 8), world=1)
    with pytest.raises(UserError, match="at least 2"):
        split_groups(cfg(8, 8), world=1)  # one sample per group
    for world, g in ((1, 1), (2, 8), (1, 8)):  # one image per BatchNorm batch: a user error, not a crash in forward
        with pytest.raises(UserError, match="at least 2 images per batch"):
            split_groups(cfg(1, g), world=world)
    # a backbone without BatchNorm (a ViT) has no statistics to leak: no groups, and no batch constraint from them
    assert split_groups(cfg(8, 8), world=1, backbone=create_backbone("test_vit")) == 1
    assert split_groups(cfg(16, 8), world=1, backbone=create_backbone("test_resnet")) == 8


# ------------------------------------------------------------------------------ kNN monitor


def test_knn_predict_by_hand():
    # unit vectors a, b, c, d (c given unnormalised as (3, 4)); labels 0, 1, 1, 0
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    test = torch.tensor([[0.8, 0.6], [2.0, 0.0]])
    scores = knn_predict(train, labels, test, num_classes=3, k=2, t=0.1, chunk=1)
    # test 0: cosines a .8, b .6, c .96, d -.8 -> top-2 c (class 1), a (class 0)
    # test 1: cosines a 1, b 0, c .6, d -1   -> top-2 a (class 0), c (class 1)
    # votes exp(cos/t), scaled per test image by exp(-nearest cos/t) (no overflow at small t)
    expected = torch.tensor([[math.exp(8.0 - 9.6), 1.0, 0.0], [1.0, math.exp(6.0 - 10.0), 0.0]])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=0)
    assert scores.argmax(1).tolist() == [1, 0]
    assert knn_accuracy(train, labels, test, torch.tensor([1, 1]), 3, k=2, t=0.1) == pytest.approx(50.0)
    # k larger than the train set uses every train sample
    all4 = knn_predict(train, labels, test[:1], num_classes=2, k=50, t=0.1)
    torch.testing.assert_close(all4, torch.tensor([[math.exp(8.0 - 9.6) + math.exp(-8.0 - 9.6),
                                                    math.exp(6.0 - 9.6) + 1.0]]), rtol=1e-5, atol=0)
    # t = 0.005: exp(1/t) is inf in float32; every class tied and class 0 won
    tiny = knn_predict(train, labels, test, num_classes=3, k=2, t=0.005)
    assert bool(torch.isfinite(tiny).all()) and tiny.argmax(1).tolist() == [1, 0]


def test_the_key_encoder_has_no_stochastic_depth_and_the_query_encoder_keeps_it():
    """MoCo's key encoder, a deep copy of the query one, kept model.drop_path: the same images and shuffle gave keys
    0.29 apart (the joint loss's key encoder already turned it off). Keys are targets."""
    import timm

    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", num_classes=0, drop_path_rate=0.5)
    with torch.no_grad():  # timm zero-initialises the last BN of each block, which hides the residual branches
        for mod in backbone.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.fill_(1.0)
    model = MoCo(backbone, dim=16, queue_size=32, split_bn_groups=2).train()
    x = torch.randn(8, 3, 32, 32)
    first = model.keys(x, torch.Generator().manual_seed(0))
    assert torch.equal(first, model.keys(x, torch.Generator().manual_seed(0)))
    assert max(m.drop_prob for m in model.encoder_q.modules() if hasattr(m, "drop_prob")) == 0.5
    assert {m.drop_prob for m in model.encoder_k.modules() if hasattr(m, "drop_prob")} == {0.0}
