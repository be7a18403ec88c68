"""Split batch norm (single-device shuffle-BN) against per-group nn.BatchNorm2d forwards."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn as nn

from fewshot.ssl.functional import shuffle_permutation
from fewshot.ssl.split_bn import SplitBatchNorm1d, SplitBatchNorm2d, convert_split_bn, unsplit_batch_norms


def _randomise_bn(bn: nn.BatchNorm2d, seed: int = 0) -> None:
    """Non-trivial weights and running stats, so that sharing/copying them matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if bn.affine:
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g))
        if bn.track_running_stats:
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)


def _per_group_forward(bn: nn.BatchNorm2d, x: torch.Tensor, groups: int) -> tuple[torch.Tensor, list[nn.Module]]:
    """Reference: G independent copies of ``bn``, copy g normalising samples n % G == g."""
    copies = [copy.deepcopy(bn) for _ in range(groups)]
    out = torch.empty_like(x)
    for g, layer in enumerate(copies):
        out[g::groups] = layer(x[g::groups])
    return out, copies


# ----------------------------------------------------------------------------- the layer


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_split_bn_equals_separate_batchnorms(groups, affine, momentum):
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3, affine=affine, momentum=momentum)
    _randomise_bn(plain)
    split = SplitBatchNorm2d(3, groups, affine=affine, momentum=momentum)
    split.load_state_dict(plain.state_dict())
    refs = [copy.deepcopy(plain) for _ in range(groups)]

    for step in range(2):  # two steps: the running stats keep agreeing
        x = torch.randn(8, 3, 4, 5) * 2 + step
        y = split(x)
        expected = torch.empty_like(x)
        for g, ref in enumerate(refs):
            expected[g::groups] = ref(x[g::groups])
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
        # running stats = mean over the G groups' updated stats (lightly's convention)
        mean = torch.stack([r.running_mean for r in refs]).mean(0)
        var = torch.stack([r.running_var for r in refs]).mean(0)
        torch.testing.assert_close(split.running_mean, mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(split.running_var, var, atol=1e-5, rtol=1e-5)
        assert split.num_batches_tracked.item() == step + 1
        # every reference copy ends the step where the split layer is (EMA is linear)
        for r in refs:
            r.running_mean.copy_(mean)
            r.running_var.copy_(var)

    # the split layer really differs from BN over the whole batch
    assert not torch.allclose(split(x), nn.BatchNorm2d(3, affine=False)(x), atol=1e-3)


def test_split_bn_gradients_equal_separate_batchnorms():
    torch.manual_seed(1)
    plain = nn.BatchNorm2d(3)
    _randomise_bn(plain)
    split = SplitBatchNorm2d(3, 2)
    split.load_state_dict(plain.state_dict())
    x = torch.randn(6, 3, 2, 2)
    w = torch.randn(6, 3, 2, 2)

    x1 = x.clone().requires_grad_(True)
    (split(x1) * w).sum().backward()

    x2 = x.clone().requires_grad_(True)
    out, refs = _per_group_forward(plain, x2, 2)
    (out * w).sum().backward()

    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.weight.grad, sum(r.weight.grad for r in refs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.bias.grad, sum(r.bias.grad for r in refs), atol=1e-5, rtol=1e-5)


def test_split_bn_eval_is_plain_batchnorm():
    plain = nn.BatchNorm2d(3)
    _randomise_bn(plain)
    split = SplitBatchNorm2d(3, 4)
    split.load_state_dict(plain.state_dict())
    plain.eval(), split.eval()
    x = torch.randn(5, 3, 4, 4)  # any N in eval, even N % G != 0
    assert torch.equal(split(x), plain(x))
    assert torch.equal(split.running_mean, plain.running_mean)  # eval never updates the stats


def test_split_bn_without_running_stats_splits_in_eval_too():
    split = SplitBatchNorm2d(2, 2, track_running_stats=False).eval()
    ref = nn.BatchNorm2d(2, track_running_stats=False).eval()
    x = torch.randn(4, 2, 3, 3)
    expected, _ = _per_group_forward(ref, x, 2)
    torch.testing.assert_close(split(x), expected, atol=1e-5, rtol=1e-5)


def test_split_bn_rejects_indivisible_batch_in_training():
    split = SplitBatchNorm2d(3, 4)
    with pytest.raises(ValueError, match=r"N=6, G=4"):
        split(torch.randn(6, 3, 2, 2))


def test_split_bn_channels_last():
    torch.manual_seed(2)
    split = SplitBatchNorm2d(3, 2)
    _randomise_bn(split)
    twin = copy.deepcopy(split)
    x = torch.randn(4, 3, 5, 6)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y_cl = split(x_cl)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, twin(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(split.running_var, twin.running_var)
    expected, _ = _per_group_forward(nn.BatchNorm2d(3).train(), x, 2)
    twin2 = SplitBatchNorm2d(3, 2)
    torch.testing.assert_close(twin2(x_cl), expected, atol=1e-5, rtol=1e-5)


def test_split_bn_channels_last_gradients_equal_the_group_calls():
    """A channels_last batch (CUDA's train.channels_last path) gets the G-call reference's
    output, input and parameter gradients and running stats, and the output keeps the input's layout."""
    torch.manual_seed(3)
    split = SplitBatchNorm2d(5, 4).train()
    _randomise_bn(split)
    ref_bn = nn.BatchNorm2d(5).train()
    ref_bn.load_state_dict({k: v for k, v in split.state_dict().items()})
    x = torch.randn(8, 5, 6, 7)
    gy = torch.randn(8, 5, 6, 7)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y_cl = split(x_cl)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    (y_cl * gy).sum().backward()
    x_ref = x.clone().requires_grad_()
    y_ref = torch.empty_like(x)
    bns = [copy.deepcopy(ref_bn) for _ in range(4)]
    for g, bn in enumerate(bns):  # the plain reference: one BatchNorm call per group n % G == g, same stats
        y_ref[g::4] = bn(x_ref[g::4])
    (y_ref * gy).sum().backward()
    means, vars_ = [bn.running_mean for bn in bns], [bn.running_var for bn in bns]
    torch.testing.assert_close(y_cl, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_cl.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.weight.grad, sum(bn.weight.grad for bn in bns), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.bias.grad, sum(bn.bias.grad for bn in bns), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack(vars_).mean(0))


# ----------------------------------------------------------------------------- timm models


def _bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("name", ["resnet18", "test_resnet", "test_efficientnet"])
def test_convert_split_bn_on_timm_models(name):
    """resnets use nn.BatchNorm2d, test_efficientnet uses timm's BatchNormAct2d (BN + act)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0)
    for i, bn in enumerate(_bn_layers(model)):
        _randomise_bn(bn, seed=i)
    original = copy.deepcopy(model)
    groups = 2
    weights_before = [bn.weight for bn in _bn_layers(model)]

    model = convert_split_bn(model, groups)
    layers = _bn_layers(model)
    assert len(layers) == len(weights_before)
    assert all(getattr(bn, "num_splits", None) == groups for bn in layers)
    assert all(a is b for a, b in zip(weights_before, (bn.weight for bn in layers)))  # shared, not copied

    x = torch.randn(4, 3, 32, 32)
    # eval: the converted model is the same function, bit for bit
    original.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), original(x))

    # train: the same as running the original model on each group separately
    original.train(), model.train()
    with torch.no_grad():
        y = model(x)
        refs = [copy.deepcopy(original) for _ in range(groups)]
        expected = torch.empty_like(y)
        for g, ref in enumerate(refs):
            expected[g::groups] = ref(x[g::groups])
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
    # and every layer's running stats are the mean of the per-group models' stats
    per_group = [_bn_layers(r) for r in refs]
    for i, bn in enumerate(_bn_layers(model)):
        mean = torch.stack([p[i].running_mean for p in per_group]).mean(0)
        torch.testing.assert_close(bn.running_mean, mean, atol=1e-4, rtol=1e-4)


def test_convert_split_bn_identity_and_top_level():
    model = timm.create_model("test_resnet", num_classes=0)
    assert convert_split_bn(model, 1) is model
    assert all(type(m) is nn.BatchNorm2d for m in _bn_layers(model))
    bn = nn.BatchNorm2d(4)
    new = convert_split_bn(bn, 2)
    assert isinstance(new, SplitBatchNorm2d) and new.weight is bn.weight
    assert convert_split_bn(new, 4) is new and new.num_splits == 4


# ----------------------------------------------------------------------------- leakage


def _changed(out_a: torch.Tensor, out_b: torch.Tensor) -> list[bool]:
    """Per sample: did its output change at all (bitwise)?"""
    return [not torch.equal(a, b) for a, b in zip(out_a, out_b)]


def _influence(layer, x: torch.Tensor) -> list[set[int]]:
    """influence[i] = the samples j != i whose input changes sample i's output."""
    n = x.shape[0]
    with torch.no_grad():
        base = layer(x)
        result = [set() for _ in range(n)]
        for j in range(n):
            x_j = x.clone()
            x_j[j] += 3.0  # change sample j only
            for i, changed in enumerate(_changed(base, layer(x_j))):
                if changed and i != j:
                    result[i].add(j)
    return result


N, G = 8, 2


def _batch():
    return torch.randn(N, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def test_plain_batchnorm_leaks_between_samples():
    """Why shuffle-BN exists: with BN over the whole batch, every output depends on every sample."""
    influence = _influence(nn.BatchNorm2d(3).train(), _batch())
    assert all(influence[i] == set(range(N)) - {i} for i in range(N))


def test_split_bn_groups_are_independent():
    """With G groups (n % G), sample i only sees the statistics of its own group."""
    influence = _influence(SplitBatchNorm2d(3, G).train(), _batch())
    for i in range(N):
        assert influence[i] == {j for j in range(N) if j != i and j % G == i % G}


def test_shuffled_keys_are_normalised_with_other_samples_than_their_query():
    """MoCo's key path: k = f_k(x[perm])[inverse], with split BN inside f_k.

    The query q_i is normalised together with its query group Q(i) = {j : j % G == i % G}.
    Without the shuffle, k_i is normalised with exactly the same samples, so the positive
    pair shares batch statistics (the "cheat" channel). With the shuffle, sample i sits at
    position inverse[i] of the key batch, so k_i depends exactly on its key group
    K(i) = {j : inverse[j] % G == inverse[i] % G}; a query-group mate j in Q(i) \\ K(i) can be
    changed freely without changing k_i.
    """
    x = _batch()
    split = SplitBatchNorm2d(3, G).train()

    def query_group(i):
        return {j for j in range(N) if j != i and j % G == i % G}

    # no shuffle: k_i sees exactly q_i's group
    assert _influence(split, x) == [query_group(i) for i in range(N)]

    perm, inv = shuffle_permutation(N, torch.Generator().manual_seed(0))

    def key_encoder(batch):
        return split(batch[perm])[inv]

    def key_group(i):
        return {j for j in range(N) if j != i and inv[j] % G == inv[i] % G}

    influence = _influence(key_encoder, x)
    for i in range(N):
        assert influence[i] == key_group(i)
        # the query-group mates outside i's key group have no effect on k_i at all
        assert not (influence[i] & (query_group(i) - key_group(i)))
    # this seed really mixes the groups: no key group is the query group
    # (with G = 2 the key partition either equals the query partition or differs for every i)
    assert all(key_group(i) != query_group(i) for i in range(N))


# ----------------------------------------------------------------------------- BatchNorm1d (LeViT-style models)


@pytest.mark.parametrize("shape", [(8, 3), (8, 3, 5)])
def test_split_bn1d_equals_separate_batchnorms(shape):
    torch.manual_seed(3)
    plain = nn.BatchNorm1d(3)
    _randomise_bn(plain)
    split = SplitBatchNorm1d(3, G)
    split.load_state_dict(plain.state_dict())
    x = torch.randn(*shape)
    expected, refs = _per_group_forward(plain, x, G)
    torch.testing.assert_close(split(x), expected, atol=1e-5, rtol=1e-5)
    mean = torch.stack([r.running_mean for r in refs]).mean(0)
    torch.testing.assert_close(split.running_mean, mean, atol=1e-5, rtol=1e-5)


class _TokenNet(nn.Module):
    """Conv + BatchNorm2d stem, then LeViT's LinearNorm: BatchNorm1d over the tokens flattened into the batch."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn2d = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.linear, self.bn1d = nn.Linear(4, 4), nn.BatchNorm1d(4)

    def forward(self, x):
        x = self.bn2d(self.conv(x)).flatten(2).transpose(1, 2)  # [B, T, C]
        x = self.linear(x)
        return self.bn1d(x.flatten(0, 1)).reshape_as(x)


def test_split_bn1d_over_flattened_tokens_keeps_the_groups_independent():
    """Every BatchNorm of the model is split into the same G groups of samples: a BatchNorm1d fed [B*T, C]
    (LeViT) groups each row with its sample, so sample i's output depends only on its own group."""
    torch.manual_seed(4)
    model = convert_split_bn(_TokenNet(), G).train()
    assert unsplit_batch_norms(model) == []
    influence = _influence(model, _batch())
    for i in range(N):
        assert influence[i] == {j for j in range(N) if j != i and j % G == i % G}
    # the same function as running each group through its own copy of the model
    torch.testing.assert_close(model(_batch()), _per_group_token_net(model, _batch()), atol=1e-5, rtol=1e-5)
    # a deep copy (MoCo's key encoder) records its own batch size, and only during its forward pass
    twin, x = copy.deepcopy(model), torch.randn(4, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), _per_group_token_net(twin, x), atol=1e-5, rtol=1e-5)
    assert twin.bn1d.samples is twin.bn2d.samples and twin.bn1d.samples is not model.bn1d.samples
    assert twin.bn1d.samples.n is None
    # the layer alone, in training, cannot know the rows' samples: an error, not groups that mix every sample
    with pytest.raises(RuntimeError, match="outside the forward"):
        twin.bn1d(torch.randn(2 * N, 4))
    twin.bn1d.eval()(torch.randn(2 * N, 4))  # running statistics: no groups needed


def _per_group_token_net(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    expected = torch.empty(x.shape[0], 16, 4)
    with torch.no_grad():
        for g in range(G):
            ref = _TokenNet().train()
            ref.load_state_dict(model.state_dict())
            expected[g::G] = ref(x[g::G])
    return expected


def test_levit_every_batchnorm_is_split():
    model = convert_split_bn(timm.create_model("levit_128s", num_classes=0, img_size=32), G).train()
    assert unsplit_batch_norms(model) == []
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(x)
        x[0] += 3.0
        changed = _changed(base, model(x))
    assert changed == [True, False, True, False]  # sample 0 moves its group {0, 2} only


def test_unconvertible_batchnorm_is_named_at_startup():
    from types import SimpleNamespace

    from fewshot.ssl.pretrain_settings import bn_protection, shared_bn_warning

    encoder = convert_split_bn(nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm3d(3)), G)
    model = SimpleNamespace(encoder_q=encoder, split_bn_groups=G)
    assert unsplit_batch_norms(encoder) == ["1"]
    assert "except 1 BatchNorm layer(s)" in bn_protection(model) and "(1)" in bn_protection(model)
    assert "(1)" in shared_bn_warning(model)
    assert shared_bn_warning(SimpleNamespace(encoder_q=encoder, split_bn_groups=1)) is None
