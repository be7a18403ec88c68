"""The speed work (issue 5) does not change the math: fast path == plain path, from the same seed.

Each test runs whole MoCo steps (forward q, momentum update, shuffled keys through split BN,
InfoNCE against the queue, backward, SGD, enqueue) twice from the same seed, once with the fast
path and once with the plain one, and compares the losses, every updated weight and buffer
(both encoders, BN running stats, the queue) within float tolerance. Also: CUDA-path settings
that can be checked on a CPU (bf16 autocast dtypes, compile/channels_last resolution, no hard
``.cuda()``), and the process settings of fewshot.runtime.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fewshot.models import fast_pool, tiny_map_conv
from fewshot.models.backbone import create_backbone
from fewshot.runtime import compile_modules, resolve_compile, tune_allocator
from fewshot.ssl import split_bn
from fewshot.ssl.moco import MoCo
from fewshot.train.engine import build_optimizer

REPO = Path(__file__).resolve().parents[1]
BATCH, GROUPS, IMG = 8, 2, 32


def _sgd(model: MoCo, fused) -> torch.optim.Optimizer:
    cfg = {"optim": {"name": "sgd", "lr": 0.06, "momentum": 0.9, "weight_decay": 5e-4, "fused": fused}}
    params = [p for p in model.encoder_q.parameters() if p.requires_grad]
    return build_optimizer(cfg, [{"params": params, "weight_decay": 5e-4, "lr_scale": 1.0}])


def _views(step: int, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x_q, x_k = torch.randn(BATCH, 3, IMG, IMG, generator=g), torch.randn(BATCH, 3, IMG, IMG, generator=g)
    if channels_last:
        x_q, x_k = (x.contiguous(memory_format=torch.channels_last) for x in (x_q, x_k))
    return x_q, x_k


def _run(fast_bn: bool = True, fused="auto", fast_maxpool: bool = True, channels_last: bool = False, compile_backend: str | None = None,
         steps: int = 3, tiny_maps: bool = True) -> tuple[list[float], dict[str, torch.Tensor], torch.optim.Optimizer]:
    """`steps` MoCo steps from seed 0; returns the losses, the final state dict and the optimizer."""
    torch.manual_seed(0)
    model = MoCo(create_backbone("test_resnet"), dim=16, queue_size=32, momentum=0.9, temperature=0.2,
                 mlp=True, split_bn_groups=GROUPS)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_backend:
        assert compile_modules([model.encoder_q, model.encoder_k], True, torch.device("cpu"), backend=compile_backend)
    opt = _sgd(model, fused)
    old, old_pool = split_bn.set_fast_path(fast_bn), fast_pool.set_fast_path(fast_maxpool)
    old_tiny = tiny_map_conv.set_fast_path(tiny_maps)
    losses = []
    try:
        for step in range(steps):
            loss, _ = model(*_views(step, channels_last), torch.Generator().manual_seed(step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        split_bn.set_fast_path(old)
        fast_pool.set_fast_path(old_pool)
        tiny_map_conv.set_fast_path(old_tiny)
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, opt


def _assert_same(a, b, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    losses_a, state_a, _ = a
    losses_b, state_b, _ = b
    assert losses_a == pytest.approx(losses_b, rel=1e-5, abs=1e-6)
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        if state_a[k].is_floating_point():
            torch.testing.assert_close(state_a[k], state_b[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(state_a[k], state_b[k]), k


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny steps gain nothing from more, and on a loaded 2-core
    machine two OpenMP threads waiting on each other make them ~50x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def fast_run(one_thread):
    return _run()


# ----------------------------------------------------------------------------- the whole fast path


def test_fast_path_equals_plain_path(fast_run):
    """Default path (alias-free split BN, fused SGD, channels_last max-pool, tiny-map convolutions as
    matmuls: test_resnet's last stage is 1x1 at 32 px) == plain path (view output, for-loop SGD, NCHW
    max-pool, oneDNN convolutions)."""
    _, _, opt = fast_run
    assert opt.defaults.get("fused") is True  # the fast path really is the fused kernel on the CPU
    plain = _run(fast_bn=False, fused=False, fast_maxpool=False)
    assert not plain[2].defaults.get("fused")
    _assert_same(fast_run, plain)
    # the tiny-map matmuls against oneDNN's convolutions over one step: their rounding differs by ~1e-7, and
    # SGD at lr 0.06 grows that ~20x a step through the stem (6e-3 after 3 steps on an AVX-512 host), so more
    # steps would compare the hosts' convolution kernels, not the paths (test_tiny_map_conv_* check the maths)
    _assert_same(_run(steps=1), _run(fast_bn=False, fused=False, fast_maxpool=False, tiny_maps=False, steps=1))


def test_weights_actually_move(fast_run):
    """Guard against a vacuous comparison: the steps change f_q, f_k, BN stats and the queue."""
    torch.manual_seed(0)
    fresh = MoCo(create_backbone("test_resnet"), dim=16, queue_size=32, momentum=0.9, temperature=0.2,
                 mlp=True, split_bn_groups=GROUPS).state_dict()
    _, state, _ = fast_run
    for key in ("encoder_q.head.0.weight", "encoder_k.head.0.weight", "queue"):
        assert not torch.allclose(state[key], fresh[key]), key
    bn_mean = next(k for k in state if k.startswith("encoder_q.backbone") and k.endswith("running_mean"))
    assert not torch.allclose(state[bn_mean], fresh[bn_mean])


# ----------------------------------------------------------------------------- split BN


def _group_loop_split_bn(bn, x, num_splits, samples=None):
    """Reference: G separate F.batch_norm calls, group g = samples n % G == g, each with its own copy
    of the running stats; the running stats become the mean over the G copies. (A ResNet's rows are its
    samples: ``samples``, the batch size at the encoder's input, is the rows' count or not known.)"""
    assert samples in (None, x.shape[0])
    if num_splits == 1 or not (bn.training or bn.running_mean is None):
        return torch.nn.BatchNorm2d.forward(bn, x)
    n, c, h, w = x.shape
    update = bn.training and bn.track_running_stats
    if update:
        bn.num_batches_tracked.add_(1)
    factor = bn.momentum if update else 0.0
    outs, means, vars_ = [], [], []
    for g in range(num_splits):
        rm = bn.running_mean.clone() if update else None
        rv = bn.running_var.clone() if update else None
        # contiguous: torch's CPU batch norm of a strided slice was off by 3e-4 after one step on an AVX-512
        # host with one thread (the reference, not the fast path, drifted)
        outs.append(F.batch_norm(x[g::num_splits].contiguous(), rm, rv, bn.weight, bn.bias, True, factor, bn.eps))
        means.append(rm)
        vars_.append(rv)
    if update:
        with torch.no_grad():
            bn.running_mean.copy_(torch.stack(means).mean(0))
            bn.running_var.copy_(torch.stack(vars_).mean(0))
    return torch.stack(outs, dim=1).reshape(n, c, h, w)  # sample b*G + g <- group g, row b


def test_split_bn_single_call_equals_group_loop_in_moco_step(fast_run, monkeypatch):
    monkeypatch.setattr(split_bn, "split_batch_norm", _group_loop_split_bn)
    _assert_same(fast_run, _run(fused=False))


def test_fast_maxpool_equals_plain_and_fast_modules_keep_state_dict_keys():
    """The channels_last detour gives bit-identical outputs and gradients, also with the ties
    that ReLU makes (zeros), returns NCHW, and leaves the model's state-dict keys alone."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, 17, 16).relu()  # odd size: ceil/padding edges; half zeros: ties
    pool = fast_pool.NHWCMaxPool2d(3, 2, 1)
    out = []
    for fast in (True, False):
        old = fast_pool.set_fast_path(fast)
        try:
            xi = x.clone().requires_grad_()
            y = pool(xi)
            (y * torch.arange(y.numel()).view_as(y)).sum().backward()
            out.append((y.detach(), xi.grad, y.is_contiguous()))
        finally:
            fast_pool.set_fast_path(old)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert out[0][2], "the fast path must hand NCHW back to the convolutions"
    import timm

    ours, theirs = create_backbone("resnet18"), timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert isinstance(ours.maxpool, fast_pool.NHWCMaxPool2d) and type(theirs.maxpool) is torch.nn.MaxPool2d
    assert type(ours.layer4[1].conv2) is tiny_map_conv.TinyMapConv2d  # the conv swap keeps the keys too
    assert ours.state_dict().keys() == theirs.state_dict().keys()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_maxpool_hands_back_an_nchw_gradient_equal_to_plain(dtype):
    """The detour's backward returns the input's gradient NCHW, like the input: a channels_last one made the
    stem ReLU's backward mix layouts (10x slower, ~20 ms of a 64 px bf16 MoCo step). Same numbers as the plain
    kernel, ties included; stride None (the kernel size), ceil_mode and dilation reach the kernel; torch.func too."""
    torch.manual_seed(0)
    x = torch.randn(3, 8, 17, 16).relu().to(dtype)  # half zeros: ties
    for args in ((3, 2, 1), (2, None, 0, 1, False, True), (3, 2, 1, 2)):
        pool, ref = fast_pool.NHWCMaxPool2d(*args), torch.nn.MaxPool2d(*args)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = pool(xa), ref(xb)
        weights = torch.arange(yb.numel(), dtype=dtype).view_as(yb)
        # autograd.grad: the gradient as the layer before gets it (a leaf's .grad is re-laid out like the leaf)
        (ga,), (gb,) = torch.autograd.grad((ya * weights).sum(), xa), torch.autograd.grad((yb * weights).sum(), xb)
        assert torch.equal(ya, yb) and torch.equal(ga, gb), args
        assert ya.is_contiguous() and ga.is_contiguous(), args
        assert not ga.is_contiguous(memory_format=torch.channels_last), args

    def grad_of(module):
        return torch.func.grad(lambda xi: module(xi).float().square().sum())(x)

    assert torch.equal(grad_of(fast_pool.NHWCMaxPool2d(3, 2, 1)), grad_of(torch.nn.MaxPool2d(3, 2, 1)))


# ----------------------------------------------------------------------------- tiny-map convolutions


def _spy_matmul_paths(monkeypatch) -> list[bool]:
    """Record, per TinyMapConv2d call, whether it went through a matmul."""
    taken: list[bool] = []
    original = tiny_map_conv.TinyMapConv2d._as_matmul

    def spy(self, x):
        out = original(self, x)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(tiny_map_conv.TinyMapConv2d, "_as_matmul", spy)
    return taken


# (in channels, out channels, kernel, stride, padding, input h, w, bias, expected path)
TINY_CASES = [
    (6, 5, 3, 1, 1, 1, 1, False, True),    # 3x3 on 1x1: the centre tap
    (6, 5, 3, 2, 1, 2, 2, True, True),     # resnet's stride-2 3x3, 2x2 -> 1x1: four taps
    (6, 5, 1, 2, 0, 2, 2, False, True),    # the stride-2 1x1 shortcut, 2x2 -> 1x1
    (6, 5, 5, 1, 0, 5, 5, True, True),     # a one-pixel output without padding
    (6, 5, 3, 1, 1, 2, 2, True, True),     # 3x3 on 2x2: the dense matrix
    (6, 5, 3, 1, 1, 1, 2, False, True),    # non-square 1x2
    (6, 5, (3, 1), 1, (1, 0), 2, 1, True, True),  # non-square kernel
    (6, 5, 3, 2, 1, 3, 3, False, False),   # 3x3 map: as many pixels as taps, plain
    (6, 5, 3, 1, 1, 4, 4, False, False),   # 4x4 map: plain
]


@pytest.mark.parametrize("cin,cout,k,s,p,h,w,bias,fast", TINY_CASES)
def test_tiny_map_conv_equals_conv(monkeypatch, cin, cout, k, s, p, h, w, bias, fast):
    """Output and all three gradients equal oneDNN's convolution; the expected shapes take the matmul."""
    monkeypatch.setattr(tiny_map_conv, "_DENSE_MIN_BATCH", 1)
    taken = _spy_matmul_paths(monkeypatch)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, k, s, p, bias=bias)
    ref = torch.nn.Conv2d(cin, cout, k, s, p, bias=bias)
    ref.load_state_dict(conv.state_dict())
    assert tiny_map_conv.swap_tiny_map_convs(conv) == 1 and type(conv) is tiny_map_conv.TinyMapConv2d
    x = torch.randn(3, cin, h, w)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = conv(xa), ref(xb)
    assert taken == [fast]
    assert ya.shape == yb.shape
    torch.testing.assert_close(ya, yb, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, atol=1e-6, rtol=1e-5)
    if bias:
        torch.testing.assert_close(conv.bias.grad, ref.bias.grad, atol=1e-6, rtol=1e-5)


def test_tiny_map_dense_path_waits_for_a_batch_that_pays(monkeypatch):
    """The dense matrix costs the same at any batch: fp32 below batch 128 stays on oneDNN, bf16
    autocast takes it (measured, docs/performance.md); a one-pixel output takes the matmul always."""
    taken = _spy_matmul_paths(monkeypatch)
    conv = torch.nn.Conv2d(4, 4, 3, 1, 1)
    tiny_map_conv.swap_tiny_map_convs(conv)
    conv(torch.randn(2, 4, 2, 2))
    conv(torch.randn(128, 4, 2, 2))
    with torch.autocast("cpu", torch.bfloat16):
        conv(torch.randn(2, 4, 2, 2))
    conv(torch.randn(2, 4, 1, 1))
    assert taken == [False, True, True, True]


def test_tiny_map_conv_under_bf16_autocast_matches_conv(monkeypatch):
    """Under autocast the matmuls compute in bf16 as the convolution does: same dtype out, same
    numbers within bf16 rounding, fp32 gradients for the fp32 weights."""
    monkeypatch.setattr(tiny_map_conv, "_DENSE_MIN_BATCH", 1)
    torch.manual_seed(0)
    for h, s in ((1, 1), (2, 1), (2, 2)):
        conv, ref = torch.nn.Conv2d(16, 8, 3, s, 1), torch.nn.Conv2d(16, 8, 3, s, 1)
        ref.load_state_dict(conv.state_dict())
        tiny_map_conv.swap_tiny_map_convs(conv)
        x = torch.randn(4, 16, h, h)
        with torch.autocast("cpu", torch.bfloat16):
            ya, yb = conv(x), ref(x)
        assert ya.dtype == yb.dtype == torch.bfloat16
        torch.testing.assert_close(ya.float(), yb.float(), atol=0.05, rtol=0.02)
        ya.float().sum().backward()
        yb.float().sum().backward()
        assert conv.weight.grad.dtype == torch.float32
        torch.testing.assert_close(conv.weight.grad, ref.weight.grad, atol=0.05, rtol=0.02)


def _aten_calls(fn) -> list[tuple]:
    """(op name, args) of every aten call fn makes (a dispatch mode below autograd: the kernels that run)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append((str(func.overloadpacket.__name__), args))
            return func(*args, **(kwargs or {}))

    with Log():
        fn()
    return calls


def test_tiny_map_dense_matrix_casts_before_its_relayout_and_fills_no_zeros(monkeypatch):
    """The dense matrix's build (twice a step: both encoders) casts the weight while it is contiguous and re-lays it
    out once in bf16, and its backward fills no zeroed gradient when every tap is linked (3x3 on 2x2): a cast inside
    the transposing copy and a zero fill under the sums cost a 64 px bf16 MoCo step ~5 % on the AVX-512 EPYC.
    A 1x2 map links three taps of nine: the others' gradient is zero (test_tiny_map_conv_equals_conv)."""
    monkeypatch.setattr(tiny_map_conv, "_DENSE_MIN_BATCH", 1)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, 1, 1, bias=False)
    tiny_map_conv.swap_tiny_map_convs(conv)
    x = torch.randn(2, 8, 2, 2)
    with torch.autocast("cpu", torch.bfloat16):
        forward = _aten_calls(lambda: conv(x))
        y = conv(x)
    backward = _aten_calls(lambda: y.float().sum().backward())
    casts = [a for name, a in forward if name == "copy_" and a[0].dtype != a[1].dtype]
    casts += [a[:1] for name, a in forward if name == "_to_copy" and a[0] is conv.weight]
    assert casts and all(a[-1].is_contiguous() for a in casts), "the weight is cast where it lies contiguously"
    fills = [name for name, a in backward if name in ("zeros", "new_zeros", "zero_", "fill_")
             and isinstance(a[0], torch.Tensor) and a[0].numel() >= conv.weight.numel()]
    assert not fills
    assert conv.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize("h,stride", [(1, 1), (2, 2), (2, 1)])
def test_tiny_map_conv_gradcheck_in_float64_and_bf16_weights(monkeypatch, h, stride):
    """Both paths pass torch's numerical gradient check in float64, and a model cast to bf16 (no
    autocast) gets bf16 gradients: the backward keeps the weight's dtype."""
    monkeypatch.setattr(tiny_map_conv, "_DENSE_MIN_BATCH", 1)
    taken = _spy_matmul_paths(monkeypatch)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, stride, 1).double()
    tiny_map_conv.swap_tiny_map_convs(conv)
    x = torch.randn(2, 3, h, h, dtype=torch.float64, requires_grad=True)
    w, b = conv.weight, conv.bias
    assert torch.autograd.gradcheck(lambda x, w, b: torch.func.functional_call(conv, {"weight": w, "bias": b}, (x,)),
                                    (x, w, b))
    assert all(taken)
    conv16 = torch.nn.Conv2d(4, 4, 3, stride, 1).to(torch.bfloat16)
    tiny_map_conv.swap_tiny_map_convs(conv16)
    conv16(torch.randn(2, 4, h, h, dtype=torch.bfloat16)).float().sum().backward()
    assert conv16.weight.grad.dtype == torch.bfloat16 and conv16.bias.grad.dtype == torch.bfloat16


def test_tiny_map_conv_edge_cases_follow_the_plain_convolution(monkeypatch):
    """An empty batch, torch.func transforms through the dense path (per-sample gradients), a float64
    model under bf16 autocast, and maps whose pixel pairs do not all share a tap (plain path)."""
    monkeypatch.setattr(tiny_map_conv, "_DENSE_MIN_BATCH", 1)
    taken = _spy_matmul_paths(monkeypatch)
    torch.manual_seed(0)
    model = create_backbone("test_resnet")
    assert model(torch.zeros(0, 3, 32, 32)).shape == (0, model.num_features)
    conv = torch.nn.Conv2d(4, 5, 3, 1, 1).double()
    ref = torch.nn.Conv2d(4, 5, 3, 1, 1).double()
    ref.load_state_dict(conv.state_dict())
    tiny_map_conv.swap_tiny_map_convs(conv)
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)

    def per_sample_grads(module):
        def loss(w, xi):
            return torch.func.functional_call(module, {"weight": w, "bias": module.bias}, (xi[None],)).square().sum()
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(module.weight, x)

    taken.clear()
    torch.testing.assert_close(per_sample_grads(conv), per_sample_grads(ref))
    assert taken and all(taken)
    with torch.autocast("cpu", torch.bfloat16):
        assert conv(x).dtype == torch.float64
    taken.clear()
    conv(torch.randn(3, 4, 1, 8, dtype=torch.float64))  # 1x8 map, 3x3 kernel: 22 of 64 pixel pairs linked
    assert taken == [False]


def test_resnet18_at_32px_with_tiny_map_convs_equals_plain(monkeypatch):
    """The whole backbone at 32 px (last stage 1x1, the one before 2x2, both matmul paths forced):
    features and every parameter's gradient equal the plain network's."""
    monkeypatch.setattr(tiny_map_conv, "_DENSE_MIN_BATCH", 1)
    taken = _spy_matmul_paths(monkeypatch)
    torch.manual_seed(0)
    model = create_backbone("resnet18", width=0.25)
    x = torch.randn(4, 3, 32, 32)
    grads = []
    for fast in (True, False):
        old = tiny_map_conv.set_fast_path(fast)
        try:
            model.zero_grad()
            feats = model(x)
            (feats * torch.linspace(-1, 1, feats.shape[1])).sum().backward()
            grads.append((feats.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        finally:
            tiny_map_conv.set_fast_path(old)
    assert sum(taken) == 8  # layer3: three 3x3 on 2x2 (dense); layer4: the stride-2 3x3, its shortcut, three 3x3 on 1x1
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-4)
    for name in grads[0][1]:
        torch.testing.assert_close(grads[0][1][name], grads[1][1][name], atol=1e-5, rtol=1e-4,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_split_bn_fast_output_is_not_a_view():
    """The point of the fast path: no view, so in-place ReLU / `x += shortcut` after BN record no
    CopySlices (which clones the activation in backward)."""
    bn = split_bn.SplitBatchNorm2d(4, 2).train()
    x = torch.randn(4, 4, 3, 3, requires_grad=True)
    y = bn(x)
    assert not y._is_view()
    y.relu_()
    assert "CopySlices" not in type(y.grad_fn).__name__
    old = split_bn.set_fast_path(False)
    try:
        assert bn(x)._is_view()
    finally:
        split_bn.set_fast_path(old)


def test_fast_split_bn_gradients_equal_plain(fast_run):
    torch.manual_seed(3)
    bn = split_bn.SplitBatchNorm2d(3, 2).train()
    x = torch.randn(6, 3, 4, 4)
    grads = []
    for fast in (True, False):
        old = split_bn.set_fast_path(fast)
        try:
            xi = x.clone().requires_grad_()
            y = bn(xi)
            y.relu_()  # the in-place op that made the plain path slow
            (y * torch.arange(y.numel()).view_as(y)).sum().backward()
            grads.append(xi.grad)
        finally:
            split_bn.set_fast_path(old)
    torch.testing.assert_close(grads[0], grads[1])


# ----------------------------------------------------------------------------- optimizer, layouts, compile


def test_fused_sgd_equals_for_loop(fast_run):
    _assert_same(fast_run, _run(fused=False))


def test_fused_setting_is_validated():
    model = torch.nn.Linear(2, 2)
    groups = [{"params": list(model.parameters())}]
    cfg = {"optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "fused": "auto"}}
    assert build_optimizer(cfg, groups).defaults.get("fused") is True
    cfg["optim"]["fused"] = False
    assert not build_optimizer(cfg, [{"params": list(model.parameters())}]).defaults.get("fused")
    del cfg["optim"]["fused"]  # configs saved before the option existed
    assert build_optimizer(cfg, [{"params": list(model.parameters())}]).defaults.get("fused") is True


def test_channels_last_step_equals_contiguous(one_thread):
    """One whole step. Over 3 steps on one thread the NHWC kernels chosen on some hosts (AMD EPYC, oneDNN)
    drift from NCHW in the stem's weights (5e-3 after step 3 from 6e-7 after step 1: max-pool ties and
    summation order feed the first convolution's gradient), which no tolerance separates from a bug."""
    _assert_same(_run(steps=1), _run(channels_last=True, steps=1))


def test_compiled_encoders_equal_eager(fast_run):
    """torch.compile on both encoders (graph capture + AOT autograd, buffer mutation of split BN);
    aot_eager keeps the test fast and free of a C++ toolchain; inductor's numerics are torch's."""
    if not hasattr(torch, "compile"):
        pytest.skip("no torch.compile")
    torch._dynamo.reset()
    try:
        _assert_same(fast_run, _run(compile_backend="aot_eager"))
    finally:
        torch._dynamo.reset()


def test_compile_resolution():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile("auto", cpu) is False  # measured: no gain on CPU, minutes to compile
    assert resolve_compile("auto", cuda) is True
    assert resolve_compile(True, cpu) is True
    for off in (False, None, "false", "off"):
        assert resolve_compile(off, cuda) is False
    assert compile_modules([torch.nn.Linear(2, 2)], "auto", cpu) is False


# ----------------------------------------------------------------------------- CUDA path pieces on CPU


def test_bf16_autocast_step_keeps_float32_queue_and_loss():
    """What the CUDA path does (bf16 autocast), run on the CPU: logits/loss in float32, the queue
    stays float32, keys are finite, backward reaches f_q."""
    torch.manual_seed(0)
    model = MoCo(create_backbone("test_resnet"), dim=16, queue_size=32, momentum=0.9, temperature=0.2,
                 mlp=True, split_bn_groups=GROUPS)
    opt = _sgd(model, "auto")
    queue_before = model.queue.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logits = model(*_views(0), torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and logits.dtype == torch.float32
    assert model.queue.dtype == torch.float32 and torch.isfinite(model.queue).all()
    assert not torch.equal(model.queue, queue_before)
    loss.backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters() if p.requires_grad)
    opt.step()


def test_moco_logits_are_fp32_arithmetic_under_bf16_autocast():
    """CPU autocast would compute the negatives q @ queue in bf16 (errors up to 0.008 at T=0.2) while the
    positive stays fp32: contrast() computes all of them in fp32, the same numbers as without autocast."""
    torch.manual_seed(0)
    model = MoCo(create_backbone("test_resnet"), dim=16, queue_size=64, momentum=0.9, temperature=0.2,
                 mlp=True, split_bn_groups=GROUPS)
    q, k = F.normalize(torch.randn(8, 16), dim=1), F.normalize(torch.randn(8, 16), dim=1)
    loss, logits = model.contrast(q, k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_ac, logits_ac = model.contrast(q, k)
    assert logits_ac.dtype == torch.float32
    torch.testing.assert_close(logits_ac, logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss_ac, loss, rtol=1e-6, atol=1e-6)


def test_no_hard_cuda_calls_in_the_package():
    """Devices come from --device; `.cuda()` would break CPU-only machines and multi-GPU ranks.
    Only the NCCL all-reduce may use it: NCCL needs the rank's current device, set by init_distributed."""
    offenders = []
    for p in (REPO / "src" / "fewshot").rglob("*.py"):
        lines = p.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.search(r"\.cuda\(\s*\)", line) and not line.lstrip().startswith("#"):
                if p.name == "distributed.py" and "nccl" in " ".join(lines[max(0, i - 2):i + 1]):
                    continue
                offenders.append(f"{p.relative_to(REPO)}:{i + 1}")
    assert not offenders, offenders


# ----------------------------------------------------------------------------- process settings


def test_tune_allocator_is_idempotent_and_can_be_skipped(monkeypatch):
    first = tune_allocator()
    assert tune_allocator() == first  # idempotent
    assert tune_allocator(False) == first  # "off" never un-tunes nor raises
    monkeypatch.setenv("FEWSHOT_MALLOC_TUNE", "0")
    assert tune_allocator() == first


def test_benchmark_uses_the_real_training_path():
    """benchmarks/moco_speed.py's fewshot side runs MoCoTask's own step code (smoke, tiny model)."""
    spec = importlib.util.spec_from_file_location("moco_speed", REPO / "benchmarks" / "moco_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    old = split_bn._FAST
    try:
        ours = bench.Ours(dict(img=IMG, batch=BATCH, device="cpu", threads=torch.get_num_threads(),
                               recipe={"model": "test_resnet", "hidden": None, "queue": 32, "groups": GROUPS}))
        ours.step_once()
        assert ours.info["optimizer"] == "fused" and ours.info["split_bn_groups"] == GROUPS
        assert bench.count_flops(ours.step_once) > 0
    finally:
        split_bn.set_fast_path(old)


def test_benchmark_ablation_has_an_augmentation_row_that_switches_it():
    """`moco_speed.py --ablation` can measure the augmentation fast path: its row runs e2e (the step's fixed views
    never augment) from a uint8 pool in memory, in a worker whose option turns augment.set_fast_path off."""
    from fewshot.data import augment

    spec = importlib.util.spec_from_file_location("moco_speed", REPO / "benchmarks" / "moco_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    [(label, on, var)] = bench.AUGMENT_ABLATIONS
    assert "augment" in label and on == {} and var == {"fast_augment": False}
    old, old_bn = augment._FAST, split_bn._FAST
    try:
        ours = bench.Ours(dict(img=IMG, batch=BATCH, device="cpu", threads=torch.get_num_threads(), **var,
                               recipe={"model": "test_resnet", "hidden": None, "queue": 32, "groups": GROUPS}))
        assert augment._FAST is False and ours.info["fast_augment"] is False
        assert ours.setup_pool(2 * BATCH) == {"images": 2 * BATCH}
        assert ours.task.pool.shape == (2 * BATCH, 3, IMG, IMG) and ours.task.pool.dtype == torch.uint8
        ours.e2e_once()  # make_batch + step from the pool
    finally:
        augment.set_fast_path(old)
        split_bn.set_fast_path(old_bn)


@pytest.mark.parametrize("env, expected", [
    ({}, None),                                               # default: torch's own (spinning) wait
    ({"FEWSHOT_OMP_WAIT": "passive"}, "PASSIVE"),             # opt-in for shared machines
    ({"FEWSHOT_OMP_WAIT": "passive", "OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),  # the user's setting wins
])
def test_openmp_wait_policy_is_set_before_torch(env, expected):
    """The policy must be in the environment before torch loads libgomp, i.e. at `import fewshot`;
    the default no longer depends on the load average (it misfired after fewshot's own runs)."""
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "FEWSHOT_OMP_WAIT")}
    code = "import os, fewshot, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


def test_thread_count_is_capped_at_the_usable_cores(capsys):
    from fewshot.runtime import configure_cpu, usable_cores

    before = torch.get_num_threads()
    try:
        got = configure_cpu(threads=usable_cores() + 1000, allocator=False)
        assert got["threads"] == usable_cores() == torch.get_num_threads()
        assert "more than the" in capsys.readouterr().out
        assert configure_cpu(threads=1, allocator=False)["threads"] == 1
        assert capsys.readouterr().out == ""
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- compile failures, amp and notes
# A compiled backward graph compiles lazily inside loss.backward(), beyond dynamo's suppress_errors: a broken entry
# of the inductor cache ("main.so: file too short", left by a kill while compiling) crashed `pretrain` as "internal
# error (a bug)". The fake compile below stands for torch.compile without compiling anything: the modules' calls go
# through _compiled_call_impl as with module.compile(), and the backward raises inductor's error when told to.


class _FakeCompiled(torch.autograd.Function):
    """Identity whose backward fails as a broken inductor cache entry makes it fail (on the chosen calls)."""

    calls: list[int] = [0]
    fail_at: set[int] = set()
    saved: list = []  # weak references to a tensor each forward with a graph saves for its backward
    error: BaseException | None = None  # raised instead of the cache error where set
    error_tb = None
    forward_calls: list[int] = [0]
    fail_forward_at: set[int] = set()  # compiled forward calls (of any compiled module) that raise the error

    @staticmethod
    def run_forward(eager, *args, **kwargs):
        _FakeCompiled.forward_calls[0] += 1
        if _FakeCompiled.forward_calls[0] in _FakeCompiled.fail_forward_at:
            raise _FakeCompiled.error.with_traceback(_FakeCompiled.error_tb)
        return _FakeCompiled.apply(eager(*args, **kwargs))

    @staticmethod
    def forward(ctx, x):
        import weakref

        marker = torch.zeros(1)
        ctx.save_for_backward(marker)
        _FakeCompiled.saved.append(weakref.ref(marker))
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _FakeCompiled.calls[0] += 1
        if _FakeCompiled.calls[0] in _FakeCompiled.fail_at:
            from torch._inductor.exc import InductorError

            if _FakeCompiled.error is not None:  # an error raised by real compiled code, its traceback kept
                raise _FakeCompiled.error.with_traceback(_FakeCompiled.error_tb)
            raise InductorError(ImportError("/tmp/torchinductor_u/r2/cr2g.main.so: file too short"), None)
        return grad


def _fake_compile(monkeypatch, fail_at: set[int], error: BaseException | None = None,
                  fail_forward_at: set[int] = frozenset()) -> list:
    """compile_modules replaced by the fake; returns the modules it 'compiled'. ``error``: what the failing
    backward raises (default: inductor's error for a broken cache entry); ``fail_forward_at``: forward calls that
    raise ``error``."""
    import fewshot.runtime

    _FakeCompiled.calls[0], _FakeCompiled.fail_at, _FakeCompiled.saved = 0, set(fail_at), []
    _FakeCompiled.error, _FakeCompiled.error_tb = error, None if error is None else error.__traceback__
    _FakeCompiled.forward_calls[0], _FakeCompiled.fail_forward_at = 0, set(fail_forward_at)
    compiled = []

    def compile_modules(modules, setting, device, backend=None):
        for m in modules:
            eager = m._call_impl
            m._compiled_call_impl = lambda *a, _eager=eager, **k: _FakeCompiled.run_forward(_eager, *a, **k)
            compiled.append(m)
        return True

    monkeypatch.setattr(fewshot.runtime, "compile_modules", compile_modules)
    return compiled


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from helpers.tiny import build_digits

    return build_digits(tmp_path_factory.mktemp("compile-data"))


def _pretrain(root, out, **flags):
    from fewshot.ssl.pretrain import run_pretrain
    from helpers.tiny import pretrain_cfg

    cfg = pretrain_cfg(root, **{"train.epochs": 1, "train.channels_last": True, **flags})
    return run_pretrain(cfg, out)


def test_compile_failure_in_the_first_backward_falls_back_to_eager_exactly(digits, tmp_path, monkeypatch, capsys):
    """The first step's compiled backward fails: the step is redone eagerly and the run equals an eager run bit for
    bit (the forward's changes to BatchNorm statistics, key encoder and queue undone, batch and RNG as before).
    The second backward would fail too if the modules were still compiled."""
    from fewshot.train.checkpoint import load_checkpoint

    _pretrain(digits, tmp_path / "eager")
    capsys.readouterr()
    cache = tmp_path / "inductor-cache"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    compiled = _fake_compile(monkeypatch, fail_at={1, 2})
    _pretrain(digits, tmp_path / "compiled", **{"train.compile": True})
    said = capsys.readouterr()
    assert "channels_last, compiled: the first epoch's speed includes compiling" in said.out  # the start line
    assert "failed in the compiled training step at epoch 1, step 1" in said.err
    assert "main.so: file too short" in said.err and str(cache) in said.err and "train.compile=false" in said.err
    assert compiled and all(m._compiled_call_impl is None for m in compiled) and _FakeCompiled.calls[0] == 1
    eager, fell_back = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("eager", "compiled"))
    for k, v in eager["model"].items():
        assert torch.equal(v, fell_back["model"][k]), k
    logs = [(tmp_path / r / "log.jsonl").read_text().splitlines() for r in ("eager", "compiled")]
    import json

    assert [json.loads(x)["loss"] for x in logs[0]] == [json.loads(x)["loss"] for x in logs[1]]


def test_the_failed_step_s_graph_is_freed_before_the_eager_redo(digits, tmp_path, monkeypatch):
    """The redo ran inside the except block: the failed step's loss (its graph and saved activations) and the
    exception's traceback were alive while the eager step built its own, twice a step's memory."""
    from fewshot.train.engine import Engine

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    _fake_compile(monkeypatch, fail_at={1})
    alive_at_redo = []
    redo = Engine._redo_eagerly

    def watched(self, *args):
        import gc

        gc.collect()  # reference cycles aside: what is still referenced is held by the caller
        alive_at_redo.append(sum(ref() is not None for ref in _FakeCompiled.saved))
        return redo(self, *args)

    monkeypatch.setattr(Engine, "_redo_eagerly", watched)
    _pretrain(digits, tmp_path / "compiled", **{"train.compile": True})
    assert _FakeCompiled.saved and alive_at_redo == [0], alive_at_redo


def test_compile_failure_at_a_later_step_falls_back_to_eager_exactly(digits, tmp_path, monkeypatch, capsys):
    """A backward that fails after optimizer steps (a recompile; inductor's runtime checks) is redone eagerly
    too, and the run equals an eager run bit for bit: it stopped the run before, as a user error to resume."""
    from fewshot.train.checkpoint import load_checkpoint

    _pretrain(digits, tmp_path / "eager")
    compiled = _fake_compile(monkeypatch, fail_at={3, 4})
    _pretrain(digits, tmp_path / "compiled", **{"train.compile": True})
    said = capsys.readouterr().err
    assert "failed in the compiled training step at epoch 1, step 3 (InductorError" in said
    assert all(m._compiled_call_impl is None for m in compiled) and _FakeCompiled.calls[0] == 3
    eager, fell_back = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("eager", "compiled"))
    for k, v in eager["model"].items():
        assert torch.equal(v, fell_back["model"][k]), k


def test_a_check_failing_in_compiled_forward_code_is_redone_eagerly_exactly(
        digits, tmp_path, monkeypatch, capsys, stride_check_failure):
    """Inductor's generated forward code has the same runtime checks: a failure there (a later step's forward,
    here the 7th compiled forward call) is redone eagerly from the restored state, and the run equals an eager one
    bit for bit."""
    from fewshot.train.checkpoint import load_checkpoint

    _pretrain(digits, tmp_path / "eager")
    compiled = _fake_compile(monkeypatch, fail_at=set(), error=stride_check_failure, fail_forward_at={7})
    _pretrain(digits, tmp_path / "compiled", **{"train.compile": True})
    said = capsys.readouterr().err
    assert "failed in the compiled training step at epoch 1, step" in said and "AssertionError: expected" in said
    assert all(m._compiled_call_impl is None for m in compiled)
    eager, fell_back = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("eager", "compiled"))
    for k, v in eager["model"].items():
        assert torch.equal(v, fell_back["model"][k]), k
    for k, v in eager["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], fell_back["optimizer"]["state"][k]["momentum_buffer"]), k


def test_compile_failure_under_ddp_is_a_user_error(digits, tmp_path, monkeypatch, capsys):
    """Where the step cannot be redone (DDP: a failed backward leaves the reducer half-way and the ranks would
    have to agree): a user error (exit 2, not "a bug") that says what failed and names the remedies and the
    real cache folder. DDP stands in here as the Engine's answer that no redo is possible."""
    from fewshot.cli import main
    from fewshot.errors import UserError
    from fewshot.train.compile_fallback import CompileFailedError
    from fewshot.train.engine import Engine

    monkeypatch.setattr(Engine, "_compile_redo_possible", lambda self: False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    _fake_compile(monkeypatch, fail_at={3})
    with pytest.raises(CompileFailedError) as err:
        _pretrain(digits, tmp_path / "run", **{"train.compile": True})
    text = str(err.value)
    assert isinstance(err.value, UserError) and "epoch 1, step 3" in text and "main.so: file too short" in text
    assert "train.compile=false" in text and str(tmp_path / "cache") in text
    _fake_compile(monkeypatch, fail_at={2})
    rc = main(["pretrain", "--data", str(digits), "--out", str(tmp_path / "cli"), "--model", "test_resnet",
               "--epochs", "1", "--batch-size", "8", "model.img_size=16", "train.device=cpu", "train.progress=false",
               "train.tensorboard=false", "train.threads=1", "moco.queue_size=48", "moco.split_bn_groups=2",
               "train.compile=true"])
    said = capsys.readouterr().err
    assert rc == 2 and "epoch 1, step 2: InductorError" in said and "a bug" not in said


@pytest.fixture(scope="module")
def stride_check_failure(tmp_path_factory):
    """A real AssertionError of inductor's stride check, as an H200 run's compiled backward raised it ("expected
    size 512==512, stride 9==1 ... convolution_backward"): here a custom op whose fake kernel promises a
    row-major output and whose real one returns a column-major one, compiled on the CPU. The op alone: its
    check runs in inductor's generated wrapper all the same, and without a kernel of its own around it nothing is
    built with the C++ compiler (a `+ 1` after it cost ~15 s)."""
    import os

    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("inductor-cache"))
    try:
        @torch.library.custom_op("fewshot_tests::column_major", mutates_args=())
        def column_major(x: torch.Tensor) -> torch.Tensor:
            return x.t().contiguous().t() * 1

        @column_major.register_fake
        def _(x):
            return torch.empty_like(x, memory_format=torch.contiguous_format)

        torch._dynamo.reset()
        with pytest.raises(AssertionError) as caught:
            torch.compile(lambda x: column_major(x))(torch.randn(4, 3))
        return caught.value
    finally:
        torch._dynamo.reset()
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def test_an_error_raised_by_compiled_code_is_a_compile_failure(stride_check_failure):
    """Inductor's runtime checks raise plain AssertionErrors: they count as compile failures (the step can run
    eagerly); an AssertionError of plain code, running out of memory inside compiled code, and a user's error
    whose way out passes through inductor's frames do not."""
    import os
    from fewshot.runtime import compile_failure_text, is_compile_failure

    assert is_compile_failure(stride_check_failure)
    assert compile_failure_text(stride_check_failure).startswith("AssertionError: expected size 4==4, stride")
    try:
        raise AssertionError("a check of plain code")
    except AssertionError as plain:
        assert not is_compile_failure(plain)
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory").with_traceback(stride_check_failure.__traceback__)
    assert not is_compile_failure(oom)

    def users_backward():  # a user's error whose traceback passes through inductor's frames on its way out
        raise ValueError("a user's custom op failed")

    import types

    tb, inductor_frames = stride_check_failure.__traceback__, []
    while tb is not None:
        if f"torch{os.sep}_inductor{os.sep}" in tb.tb_frame.f_code.co_filename:
            inductor_frames.append(tb)
        tb = tb.tb_next
    outer = inductor_frames[0]  # an inductor frame that called on: the user's frames below it, innermost last
    try:
        users_backward()
    except ValueError as user:
        user.__traceback__ = types.TracebackType(user.__traceback__, outer.tb_frame, outer.tb_lasti, outer.tb_lineno)
        assert not is_compile_failure(user)


def test_a_stride_check_failing_in_the_first_compiled_backward_falls_back_to_eager(
        digits, tmp_path, monkeypatch, capsys, stride_check_failure):
    """The H200 run's failure: the first step's compiled backward raises inductor's AssertionError. It stopped
    `fewshot run` as "internal error (a bug)"; now the step is redone eagerly and the run goes on."""
    compiled = _fake_compile(monkeypatch, fail_at={1, 2}, error=stride_check_failure)
    _pretrain(digits, tmp_path / "compiled", **{"train.compile": True})
    said = capsys.readouterr().err
    assert "failed in the compiled training step at epoch 1, step 1" in said
    assert "train.channels_last=false" in said and "compile cache" not in said  # a torch bug: no cache to blame
    assert "AssertionError: expected size 4==4" in said and "redone without compiling" in said
    assert all(m._compiled_call_impl is None for m in compiled) and _FakeCompiled.calls[0] == 1
    assert (tmp_path / "compiled" / "checkpoints" / "last.pt").is_file()


def _fail_after_the_redo(monkeypatch, how: str) -> None:
    """After the engine undid the compile, the eager step fails too: its forward raises (``how="raise"``), its loss
    is NaN (``"nan"``), or rebuilding the batch raises (``"batch"``)."""
    from fewshot.ssl.pretrain import MoCoTask
    from fewshot.train.engine import Engine

    redone, undo, step, make_batch = [], Engine._redo_eagerly, MoCoTask.training_step, MoCoTask.make_batch

    def redo(self, *args):
        redone.append(True)
        return undo(self, *args)

    monkeypatch.setattr(Engine, "_redo_eagerly", redo)

    def training_step(self, model, batch):
        loss, metrics, n = step(self, model, batch)
        if redone and how == "raise":
            raise RuntimeError("the eager step failed as well")
        return (loss * float("nan") if redone and how == "nan" else loss), metrics, n

    def rebuilt_batch(self, *args):
        if redone and how == "batch":
            raise RuntimeError("the batch could not be rebuilt")
        return make_batch(self, *args)

    monkeypatch.setattr(MoCoTask, "training_step", training_step)
    monkeypatch.setattr(MoCoTask, "make_batch", rebuilt_batch)


@pytest.mark.parametrize("how, says", [("raise", "the eager step failed as well"),
                                       ("batch", "the batch could not be rebuilt")])
def test_an_eager_redo_that_fails_too_names_the_first_failure(digits, tmp_path, monkeypatch, capsys, how, says):
    """The redo's own error is raised, with a note naming the compiled failure that led to it (a 3.11-only
    add_note called on 3.10 turned it into an AttributeError; rebuilding the batch had no note at all)."""
    _fake_compile(monkeypatch, fail_at={1, 2})
    _fail_after_the_redo(monkeypatch, how)
    with pytest.raises(RuntimeError, match=says) as err:
        _pretrain(digits, tmp_path / "run", **{"train.compile": True})
    notes = getattr(err.value, "__notes__", None) or [capsys.readouterr().err]
    assert any("compiled run failed: InductorError" in n for n in notes), notes


def test_a_note_on_a_python_without_add_note_goes_to_stderr(capsys):
    """fewshot allows Python 3.10, whose exceptions have no add_note: the note is printed instead of turning the
    real error into an AttributeError."""
    from fewshot.train.compile_fallback import add_note

    class Py310Error(Exception):
        add_note = property(lambda self: (_ for _ in ()).throw(AttributeError("add_note")))

    add_note(Py310Error("x"), "the first failure")
    assert "the first failure" in capsys.readouterr().err
    err = ValueError("y")
    add_note(err, "noted")
    assert err.__notes__ == ["noted"]


def test_a_non_finite_loss_in_the_eager_redo_says_the_step_was_redone(digits, tmp_path, monkeypatch):
    """The redo's loss is NaN and no skip is allowed: the error says the step ran eagerly after a compile
    failure (the compiled run of the same batch never got that far), not only to lower the learning rate."""
    from fewshot.train.engine import NonFiniteLossError

    _fake_compile(monkeypatch, fail_at={1, 2})
    _fail_after_the_redo(monkeypatch, "nan")
    with pytest.raises(NonFiniteLossError, match="ran eagerly after its compiled run failed: InductorError"):
        _pretrain(digits, tmp_path / "run", **{"train.compile": True, "train.skip_nonfinite": 0})


def test_the_remedy_follows_where_the_error_was_raised_not_its_type(stride_check_failure):
    """Any error raised by generated code (not only an AssertionError) is a torch bug: compile=false or
    channels_last=false, not the cache; a compile error wrapping an AssertionError is a compile failure: the cache.
    A CUDA error from before torch's AcceleratorError existed is sticky: no eager redo."""
    from torch._inductor.exc import InductorError

    from fewshot.runtime import compile_remedy, is_compile_failure

    generated = RuntimeError("index out of range").with_traceback(stride_check_failure.__traceback__)
    for exc in (stride_check_failure, generated):
        assert "generated code" in compile_remedy(exc) and "cache" not in compile_remedy(exc)
    assert "compile cache" in compile_remedy(InductorError(AssertionError("a compile-time check"), None))
    sticky = RuntimeError("CUDA error: an illegal memory access was encountered")
    assert not is_compile_failure(sticky.with_traceback(stride_check_failure.__traceback__))


def test_compile_failure_cache_folder_is_torchs_own(monkeypatch, tmp_path):
    """The message names the folder inductor reads: TORCHINDUCTOR_CACHE_DIR where set, else torch's default."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from fewshot.runtime import compile_failure_text, inductor_cache_dir, is_compile_failure

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "c"))
    assert inductor_cache_dir() == str(tmp_path / "c") and not (tmp_path / "c").exists()  # not created
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert inductor_cache_dir() == default_cache_dir()
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InductorError

    exc = InductorError(RuntimeError("C++ compile error\n" + "x" * 5000), None)
    assert is_compile_failure(exc) and isinstance(exc, BackendCompilerFailed) and not is_compile_failure(OSError())
    assert compile_failure_text(exc) == "InductorError: RuntimeError: C++ compile error"
    assert len(compile_failure_text(InductorError(RuntimeError("y" * 5000), None))) == 300


class _TinyTask:
    """What Engine needs of a task, for tests of its start-up."""

    kind, supports_ema, drop_last, size, eval_every = "moco", False, True, 32, 1

    def __init__(self):
        self.model = torch.nn.Linear(2, 2)

    def param_groups(self):
        return [{"params": list(self.model.parameters()), "weight_decay": 0.0, "lr_scale": 1.0}]

    def plan_epoch(self, epoch):
        return [torch.arange(2)]


def test_fp16_on_a_cpu_warns_once(tmp_path, monkeypatch, capsys):
    """train.amp=fp16 on a CPU trained ~15x slower than fp32 without a word: one warning per process."""
    import fewshot.train.engine as engine
    import fewshot.train.start_warnings as start_warnings
    from fewshot.config import resolve
    from fewshot.train.distributed import DistContext

    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False, raising=False)
    monkeypatch.setattr(start_warnings, "_TOLD_CPU_FP16", set())
    cpu = torch.device("cpu")
    for amp in ("off", "bf16", "fp16", "fp16"):
        cfg = resolve(flags={"train.amp": amp, "train.device": "cpu", "optim.lr": 0.01})
        engine.Engine(_TinyTask(), cfg, tmp_path, cpu, DistContext())
    err = capsys.readouterr().err
    assert err.count("train.amp=fp16 on a CPU") == 1 and "train.amp=off" in err and "bf16" in err
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: True, raising=False)
    from fewshot.runtime import cpu_fp16_warning

    assert cpu_fp16_warning(torch.float16, cpu) is None  # AMX-FP16 computes it natively
    assert cpu_fp16_warning(torch.float16, torch.device("cuda")) is None


def test_finetune_says_compile_is_for_pretraining_only(digits, tmp_path, capsys):
    """`train ... train.compile=true` ran eagerly without a word: a note says so (auto stays quiet)."""
    from fewshot.train.finetune import run_finetune
    from helpers.tiny import finetune_cfg

    note = "train.compile applies to MoCo pretraining only"
    run_finetune(finetune_cfg(digits, **{"train.epochs": 1, "model.img_size": 16, "train.compile": True}),
                 tmp_path / "on")
    assert note in capsys.readouterr().out
    run_finetune(finetune_cfg(digits, **{"train.epochs": 1, "model.img_size": 16}), tmp_path / "auto")
    assert note not in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch.func's own use of it
def test_fast_maxpool_keeps_forward_mode_autodiff():
    """Review rev46: the channels_last detour as an autograd.Function had no jvp, so torch.func.jvp and forward_ad
    through the fast pool raised where nn.MaxPool2d works."""
    from fewshot.models.fast_pool import NHWCMaxPool2d

    torch.manual_seed(0)
    x, tangent = torch.randn(2, 3, 9, 9), torch.randn(2, 3, 9, 9)
    for kwargs in ({"kernel_size": 3, "stride": 2, "padding": 1}, {"kernel_size": 2, "ceil_mode": True}):
        plain, fast = torch.nn.MaxPool2d(**kwargs), NHWCMaxPool2d(**kwargs)
        want = torch.func.jvp(plain, (x,), (tangent,))
        got = torch.func.jvp(fast, (x,), (tangent,))
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
