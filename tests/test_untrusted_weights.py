"""Weights whose values are no weights (NaN, int, complex), float8 exports, a small file naming a giant model, and
the messages around them: each refused (exit 2, naming the file and the first bad tensor) or loaded, never a crash
or a silent cast."""

from __future__ import annotations

import math
import time

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fewshot.errors import CheckpointError
from fewshot.models.backbone import create_backbone
from fewshot.models.weights import fit_problems, load_backbone_weights
from helpers.checks import run_main
from helpers.tiny import build_digits


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("weights-data"))


@pytest.fixture(scope="module")
def run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("weights-run") / "run"
    rc, _, err = run_main("train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16",
                          "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
                          "train.tensorboard=false", "train.threads=1")
    assert rc == 0, err
    return out


def _altered(run, path, change):
    """The run's best.pt with ``change`` applied to its loaded state (ema when kept), saved at ``path``."""
    ck = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    field = "ema" if ck.get("ema") is not None else "model"
    change(ck[field])
    torch.save(ck, path)
    return path


def _nan(state):
    """Every float tensor NaN; the first backbone one (which each message names first) is returned."""
    for v in state.values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    return next(k for k, v in state.items() if k.startswith("backbone.") and v.is_floating_point())


def _int_conv(state):
    k = next(k for k, v in state.items() if v.ndim == 4)
    state[k] = state[k].to(torch.int64)
    return k


def _complex_conv(state):
    k = next(k for k, v in state.items() if v.ndim == 4)
    state[k] = state[k].to(torch.complex64)
    return k


@pytest.mark.parametrize("change, words", [(_nan, ["NaN or infinite"]), (_int_conv, ["int64", "float32"]),
                                           (_complex_conv, ["complex64"])])
@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_bad_values_in_a_checkpoint_are_refused(run, root, tmp_path, change, words, command):
    named = []
    path = _altered(run, tmp_path / "bad.pt", lambda state: named.append(change(state)))
    out = tmp_path / ("o.safetensors" if command == "export" else "o.json")
    argv = {"predict": ["predict", path, "--data", root, "--out", out, "--device", "cpu"],
            "eval": ["eval", path, "--data", root, "--device", "cpu"],
            "export": ["export", path, "--out", out]}[command]
    rc, _, err = run_main(*argv)
    tensor = named[0].removeprefix("backbone.")  # export names the backbone's key, eval/predict the model's
    assert rc == 2 and str(path) in err and tensor in err, err
    assert all(w in err for w in words), err  # the problem: NaN, or the file's dtype against the model's
    assert "dtype" in err or change is _nan, err
    assert not out.exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_checkpoint_cast_whole_to_half_is_evaluated_and_exported(run, root, tmp_path, dtype):
    """{k: v.half()} makes the BatchNorm step counters floats too (past 65504 steps, inf in fp16): eval and export
    refused the file as "file dtype float16 vs model int64", though the load turns counters back into ints."""
    ck = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    for field in ("model", "ema"):
        if ck.get(field) is not None:
            counters = [k for k in ck[field] if k.endswith("num_batches_tracked")]
            assert counters
            ck[field][counters[0]].fill_(100000)  # a long run's count: inf in fp16
            ck[field] = {k: v.to(dtype) for k, v in ck[field].items()}
    path = tmp_path / "half.pt"
    torch.save(ck, path)
    rc, _, err = run_main("eval", path, "--data", root, "--device", "cpu")
    assert rc == 0, err
    out = tmp_path / "bb.safetensors"
    rc, _, err = run_main("export", path, "--out", out)
    assert rc == 0, err
    model = create_backbone("test_resnet", img_size=16)
    counts = load_backbone_weights(model, out)  # what the export's message promised train --weights does
    assert counts["loaded"] == counts["total"]
    assert all(not v.is_floating_point() for k, v in model.state_dict().items() if k.endswith("num_batches_tracked"))


class _Clipped(nn.Module):
    """Like timm's Gemma4ClippableLinear: bounds that start at -inf/+inf on purpose (no clipping until set)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("input_min", torch.tensor(-math.inf))
        self.register_buffer("input_max", torch.full((2,), math.inf))

    def forward(self, x):
        return self.linear(x.clamp(self.input_min, self.input_max[0]))


@pytest.mark.parametrize("change, refused", [
    (lambda s: None, None),                                                # the model's own infinities: healthy
    (lambda s: s["input_max"].__setitem__(0, 5.0), None),                  # a bound that was set: finite
    (lambda s: s["linear.weight"].__setitem__((0, 0), math.inf), "linear.weight"),  # inf where the model is finite
    (lambda s: s["input_min"].fill_(math.inf), "input_min"),               # +inf where the model starts at -inf
    (lambda s: s["input_max"].__setitem__(1, math.nan), "input_max"),      # NaN is refused anywhere
])
def test_infinities_the_model_starts_with_are_kept(tmp_path, monkeypatch, change, refused):
    import fewshot.models.backbone as backbone
    from fewshot.models.state_checks import check_export_state, check_state_fits, state_value_problem

    state = {k: v.clone() for k, v in _Clipped().state_dict().items()}
    change(state)
    path = tmp_path / "clipped.safetensors"
    save_file(state, str(path))
    model = _Clipped()
    monkeypatch.setattr(backbone, "create_backbone", lambda *a, **k: _Clipped())  # what export builds the model of
    ck = {"model_name": "clipped", "config": {"model": {"name": "clipped"}}}
    checks = [lambda: load_backbone_weights(model, path), lambda: check_state_fits(state, model.state_dict(), path,
              "model"), lambda: check_export_state(state, ck, path)]
    for check in checks:
        if refused is None:
            check()
        else:
            with pytest.raises(CheckpointError, match=refused) as exc:
                check()
            assert "NaN or infinite" in str(exc.value)
    if refused is None:
        assert torch.equal(model.input_max, state["input_max"]) and state_value_problem(state) is None


def test_the_meta_pass_compares_no_values_and_the_load_tests_each_once(root, tmp_path, monkeypatch):
    """probe checked every tensor for NaN/inf against the meta-device model, then again in the real load."""
    from fewshot.models import state_checks
    from fewshot.models.weights import fit_problems

    state = {k: v.clone() for k, v in create_backbone("test_resnet", img_size=16).state_dict().items()}
    k = next(k for k, v in state.items() if v.ndim == 4)
    state[k].fill_(math.nan)
    with torch.device("meta"):
        own = create_backbone("test_resnet", img_size=16).state_dict()
    assert fit_problems(state, own) == ([], [])  # keys, shapes and dtypes fit: values are for the real load
    path = tmp_path / "bb.safetensors"
    _backbone_file(path, metadata={"model": "test_resnet", "img_size": "16"})
    tested = []
    real = state_checks._bad_values
    monkeypatch.setattr(state_checks, "_bad_values", lambda v, mine: tested.append(mine.is_meta) or real(v, mine))
    rc, _, err = run_main("probe", "--weights", path, "--model", "test_resnet", "--img-size", "16", "--data", root,
                          "--device", "cpu", "--epochs", "2", "--out", tmp_path / "probe")
    floats = sum(v.is_floating_point() for v in own.values())
    assert rc == 0 and tested == [False] * floats, err


def test_probe_falls_back_to_the_real_build_where_the_meta_device_cannot_build(root, tmp_path, monkeypatch):
    import fewshot.eval.probe as probe

    path = tmp_path / "bb.safetensors"
    _backbone_file(path, metadata={"model": "test_resnet", "img_size": "16"})
    real = probe.create_backbone

    def no_meta(*args, **kwargs):
        if torch.empty(()).device.type == "meta":
            raise NotImplementedError("an init step the meta device cannot run")
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "create_backbone", no_meta)
    rc, _, err = run_main("probe", "--weights", path, "--model", "test_resnet", "--img-size", "16", "--data", root,
                          "--device", "cpu", "--epochs", "2", "--out", tmp_path / "probe")
    assert rc == 0, err
    bad = tmp_path / "other.safetensors"  # the real load still compares the file with the model
    save_file({"w": torch.zeros(2)}, str(bad))
    rc, _, err = run_main("probe", "--weights", bad, "--model", "test_resnet", "--img-size", "16", "--data", root,
                          "--device", "cpu", "--epochs", "2", "--out", tmp_path / "probe2")
    assert rc == 2 and str(bad) in err, err


def _inf(state):
    """One infinity in a backbone weight, where the model never holds one."""
    k = next(k for k, v in state.items() if k.startswith("backbone.") and v.ndim == 4)
    state[k].view(-1)[0] = math.inf
    return k


@pytest.mark.parametrize("change", [_nan, _inf])
def test_a_refused_best_pt_offers_last_pt_only_when_it_is_usable(run, root, tmp_path, change):
    """An infinity in last.pt was judged without the model (no sign of damage there): it was offered as whole."""
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    _altered(run, ckpts / "best.pt", change)
    (ckpts / "last.pt").write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    rc, _, err = run_main("predict", ckpts / "best.pt", "--data", root, "--out", tmp_path / "p.json")
    assert rc == 2 and "pass" in err and "last.pt instead" in err, err
    _altered(run, ckpts / "last.pt", change)
    rc, _, err = run_main("predict", ckpts / "best.pt", "--data", root, "--out", tmp_path / "p.json")
    assert rc == 2 and "last.pt instead" not in err and "last.pt cannot be used either" in err, err


def _backbone_file(path, dtype=None, metadata=None):
    state = {k: v.clone().contiguous() for k, v in create_backbone("test_resnet", img_size=16).state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(path), metadata=metadata)
    return state


def test_float8_weights_load_upcast(tmp_path):
    state = _backbone_file(tmp_path / "f8.safetensors", torch.float8_e4m3fn)
    model = create_backbone("test_resnet", img_size=16)
    counts = load_backbone_weights(model, tmp_path / "f8.safetensors")
    assert counts["loaded"] == counts["total"]
    k = next(k for k, v in state.items() if v.ndim == 4)
    assert torch.equal(model.state_dict()[k], state[k].float())


def test_float8_nan_is_named(tmp_path):
    state = {k: v.clone().contiguous() for k, v in create_backbone("test_resnet", img_size=16).state_dict().items()}
    k = next(k for k, v in state.items() if v.ndim == 4)
    state[k] = torch.full_like(state[k], float("nan")).to(torch.float8_e4m3fn)
    save_file(state, str(tmp_path / "f8.safetensors"))
    with pytest.raises(CheckpointError, match=f"NaN or infinite.*{k}"):
        load_backbone_weights(create_backbone("test_resnet", img_size=16), tmp_path / "f8.safetensors")


def test_a_small_file_naming_a_giant_model_is_refused_before_it_is_built(root, tmp_path, monkeypatch):
    import fewshot.eval.probe as probe

    path = tmp_path / "giant.safetensors"
    _backbone_file(path, metadata={"model": "vit_giant_patch14_dinov2"})
    real = probe.create_backbone

    def only_on_meta(*args, **kwargs):
        assert torch.empty(()).device.type == "meta", "the model was built for real before its keys were checked"
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "create_backbone", only_on_meta)
    start = time.monotonic()
    rc, _, err = run_main("probe", "--weights", path, "--data", root, "--device", "cpu")
    assert rc == 2 and str(path) in err and "does not fit" in err, err
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("key", ["not.in.the.model", "blocks.0.norm1.bias"])
def test_an_infinity_in_a_small_file_naming_a_giant_model_is_judged_without_building_it(monkeypatch, key):
    """export built the named model for real to compare a file's infinities with its values: a tiny checkpoint
    naming a giant ViT allocated gigabytes. An unknown key or one of another shape is damage without any build,
    and a file far smaller than its model is no whole backbone."""
    import fewshot.models.backbone as backbone
    from fewshot.models.state_checks import check_export_state

    real = backbone.create_backbone

    def only_on_meta(*args, **kwargs):
        assert torch.empty(()).device.type == "meta", "the model was built for real"
        return real(*args, **kwargs)

    monkeypatch.setattr(backbone, "create_backbone", only_on_meta)
    state = {"blocks.0.norm1.weight": torch.ones(1536), key: torch.full((1536,), math.inf)}
    ck = {"model_name": "vit_giant_patch14_dinov2", "config": {"model": {"name": "vit_giant_patch14_dinov2"}}}
    with pytest.raises(CheckpointError, match=f"{key} holds NaN or infinite"):
        check_export_state(state, ck, "giant.pt")


def test_an_infinity_under_a_key_the_model_lacks_is_refused(tmp_path, monkeypatch):
    """It passed export silently: only infinities under the model's own keys were compared with its values."""
    import fewshot.models.backbone as backbone
    from fewshot.models.state_checks import check_export_state

    state = {k: v.clone() for k, v in _Clipped().state_dict().items()}
    monkeypatch.setattr(backbone, "create_backbone", lambda *a, **k: _Clipped())
    ck = {"model_name": "clipped", "config": {"model": {"name": "clipped"}}}
    check_export_state(state, ck, "clipped.pt")  # the model's own infinities
    state["extra"] = torch.full((2,), -math.inf)
    with pytest.raises(CheckpointError, match="extra holds NaN or infinite"):
        check_export_state(state, ck, "clipped.pt")


def test_a_corrupt_safetensors_without_model_is_called_corrupt(root, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": garbage!!" + b"0" * 100)
    rc, _, err = run_main("probe", "--weights", path, "--data", root)
    assert rc == 2 and "cannot read" in err and "--model is required" not in err, err


def test_a_huge_fine_tuning_batch_is_blamed_not_the_queue(root, tmp_path):
    rc, _, err = run_main("train", "--data", root, "--out", tmp_path / "o", "train.batch_size=100000000000")
    assert rc == 2 and "train.batch_size 100000000000" in err and "smaller queue" not in err, err
    assert "MoCo's scores alone" not in err and "activations and logits of one batch" in err, err  # no MoCo here


@pytest.mark.parametrize("name, told", [("...", True), (".hidden_class", True), (".ipynb_checkpoints", False),
                                        (".AppleDouble", False), (".@__thumb", False), (".cache", False),
                                        (".Trash-1000", False), (".Trash-x", False)])
def test_a_dot_class_folder_with_images_is_named_not_dropped_silently(digits_root, tmp_path, capsys, name, told):
    import shutil

    from fewshot.data import layout, warn_once

    root = tmp_path / "data"
    shutil.copytree(digits_root, root)
    ds = next(d for d in sorted(root.iterdir()) if (d / "train").is_dir())
    for split in ("train", "val"):
        src = next(c for c in sorted((ds / split).iterdir()) if c.is_dir())
        shutil.copytree(src, ds / split / name)
    warn_once._TOLD_GAPS.clear()
    infos = layout.scan_root(root, None, splits=("train", "val"))
    err = capsys.readouterr().err
    assert name not in next(i for i in infos if i.name == ds.name).classes  # still no class
    hidden = [ds / split / name for split in ("train", "val")]
    assert all((str(h) in err) == told for h in hidden), err
    assert ("hidden folder" in err) == told, err


def _expanded_conv(state):
    """A conv weight replaced by one stored value shown in its shape (zero strides): torch.load keeps the view."""
    k = next(k for k, v in state.items() if v.ndim == 4)
    state[k] = torch.zeros(1).expand(state[k].shape)
    return k


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_zero_stride_tensor_in_a_checkpoint_is_refused(run, root, tmp_path, command):
    named = []
    path = _altered(run, tmp_path / "view.pt", lambda state: named.append(_expanded_conv(state)))
    out = tmp_path / "o.safetensors"
    argv = {"eval": ["eval", path, "--data", root, "--device", "cpu"], "export": ["export", path, "--out", out]}
    rc, _, err = run_main(*argv[command])
    assert rc == 2 and str(path) in err and named[0].removeprefix("backbone.") in err, err
    assert "zero-stride or overlapping view" in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_zero_stride_tensor_in_a_weights_file_does_not_fit(tmp_path):
    """The shared check (train --weights, probe): a view passes load_state_dict, which copies it out whole."""
    model = create_backbone("test_resnet", img_size=16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = _expanded_conv(state)
    path = tmp_path / "view.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=f"{key} is shaped .* over a storage of 1 value"):
        load_backbone_weights(create_backbone("test_resnet", img_size=16), path)
    mismatched, _ = fit_problems(state, create_backbone("test_resnet", img_size=16).state_dict())
    assert mismatched == [f"{key} is shaped {tuple(state[key].shape)} over a storage of 1 value(s) (a zero-stride or "
                          f"overlapping view), a view that a model's saved weights never are"]


@pytest.mark.parametrize("factory", [lambda n: torch.arange(n), lambda n: torch.linspace(0, 1, n),
                                     lambda n: torch.logspace(0, 1, n), lambda n: torch.eye(int(math.isqrt(n))),
                                     lambda n: torch.normal(0.0, 1.0, size=(n,)), lambda n: torch.randperm(n),
                                     lambda n: torch.randint_like(torch.zeros(1).expand(n), 3),
                                     lambda n: torch.zeros(1).new(n), lambda n: torch.zeros(1).new(torch.Size([n]))],
                         ids=["arange", "linspace", "logspace", "eye", "normal", "randperm", "randint_like", "new",
                              "new-size"])
def test_the_build_limit_stops_every_factory_before_it_allocates(factory):
    """A model's build under a byte limit was stopped only for torch.empty/zeros/rand...: torch.arange, linspace,
    eye, normal and the legacy `t.new(n)` allocated past it in full (16x the limit here) before anything counted."""
    from fewshot.models.state_checks import _size_limited, _TooLarge

    with pytest.raises(_TooLarge), _size_limited(1 << 20):
        factory(1 << 22)
    with _size_limited(1 << 20):  # under the limit: built as asked
        assert factory(1 << 10).numel() >= 1 << 5


def _expanded_pos_embed(tmp_path):
    """A vit_tiny file whose pos_embed is one stored value shown as a 256x256 grid (+ the class token)."""
    state = {k: v.clone() for k, v in create_backbone("vit_tiny_patch16_224", img_size=32).state_dict().items()}
    state["pos_embed"] = torch.zeros(1).expand(1, 65537, 192)
    path = tmp_path / "view.pt"
    torch.save(state, path)
    return path


def test_a_zero_stride_pos_embed_is_refused_before_it_is_resampled(tmp_path, monkeypatch):
    """pos_embed was resampled to the model's grid before fit_problems looked at it: the view was materialised
    (13 GiB at a grid of 4096) and the result, a plain tensor, loaded without error."""
    import timm.layers

    def never(*args, **kwargs):
        raise AssertionError("the view was resampled")

    monkeypatch.setattr(timm.layers, "resample_abs_pos_embed", never)
    path = _expanded_pos_embed(tmp_path)
    with pytest.raises(CheckpointError, match=r"pos_embed is shaped \(1, 65537, 192\) over a storage of 1 value"):
        load_backbone_weights(create_backbone("vit_tiny_patch16_224", img_size=32), path)


def test_probe_refuses_a_zero_stride_pos_embed_in_its_meta_check(root, tmp_path, monkeypatch):
    import fewshot.eval.probe as probe

    built = []
    real = probe.create_backbone
    monkeypatch.setattr(probe, "create_backbone", lambda *a, **k: built.append(torch.empty(()).device.type)
                        or real(*a, **k))
    path = _expanded_pos_embed(tmp_path)
    rc, _, err = run_main("probe", "--weights", path, "--model", "vit_tiny_patch16_224", "--img-size", "32",
                          "--data", root, "--device", "cpu", "--epochs", "1", "--out", tmp_path / "probe")
    assert rc == 2 and str(path) in err and "pos_embed is shaped (1, 65537, 192)" in err, err
    assert "Traceback" not in err and built == ["meta"], (built, err)


class _BigClipped(nn.Module):
    """A 256 MiB weight (on the meta device: no memory) beside bounds that start at inf."""

    def __init__(self):
        super().__init__()
        self.big = nn.Parameter(torch.empty(1 << 26))
        self.register_buffer("clip", torch.full((2,), math.inf))


def test_a_file_is_sized_by_its_stored_bytes_not_its_shapes(monkeypatch):
    """numel * element_size counted a 1.7 KB file holding `torch.zeros(1).expand(1 << 28)` as 1 GiB, which let it
    have an 8 GiB model built for real to compare its infinities with."""
    import fewshot.models.backbone as backbone
    from fewshot.models.state_checks import infinity_problem

    def only_on_meta(*args, **kwargs):
        assert torch.empty(()).device.type == "meta", "the model was built for real"
        return _BigClipped()

    monkeypatch.setattr(backbone, "create_backbone", only_on_meta)
    state = {"big": torch.zeros(1).expand(1 << 26), "clip": torch.full((2,), math.inf)}
    ck = {"model_name": "big", "config": {"model": {"name": "big"}}}
    assert infinity_problem(state, ck) == "clip holds NaN or infinite values"


class _ManyWeights(nn.Module):
    """Eight 16 MiB weights (128 MiB), built once per instance; the meta device cannot build it."""

    built: list = []

    def __init__(self, n: int = 8):
        super().__init__()
        if torch.empty(()).device.type == "meta":
            raise RuntimeError("an init step the meta device cannot run")
        self.weights = nn.ParameterList()
        for _ in range(n):
            self.weights.append(nn.Parameter(torch.empty(1 << 22)))
            _ManyWeights.built.append(1)
        self.register_buffer("clip", torch.full((2,), math.inf))


@pytest.mark.parametrize("n, refused", [(8, True), (1, False)])
def test_a_model_the_meta_device_cannot_build_is_built_for_real_only_within_the_limit(monkeypatch, n, refused):
    """Where the meta build failed, the model was built for real whatever its size: the build now stops once its
    weights pass the limit a file's bytes allow, and the infinities are then no values of the model's own."""
    import fewshot.models.backbone as backbone
    from fewshot.models.state_checks import infinity_problem

    _ManyWeights.built.clear()
    monkeypatch.setattr(backbone, "create_backbone", lambda *a, **k: _ManyWeights(n))
    state = {"clip": torch.full((2,), math.inf)}
    ck = {"model_name": "many", "config": {"model": {"name": "many"}}}
    assert infinity_problem(state, ck) == ("clip holds NaN or infinite values" if refused else None)
    # stopped before allocating the fourth: 64 MiB with its device probe's 4 bytes, over the limit of 64 MiB
    assert len(_ManyWeights.built) == (3 if refused else 1)


class _OneHuge(nn.Module):
    """One 128 MiB weight; the meta device cannot build it. ``allocated`` notes each time its storage was taken."""

    allocated: list = []

    def __init__(self):
        super().__init__()
        if torch.empty(()).device.type == "meta":
            raise RuntimeError("an init step the meta device cannot run")
        weight = torch.empty(1 << 25)
        _OneHuge.allocated.append(weight.numel())
        self.weight = nn.Parameter(weight)
        self.register_buffer("clip", torch.full((2,), math.inf))


def test_one_huge_weight_is_refused_before_it_is_allocated(monkeypatch):
    """The registration hooks saw a weight only once it existed: one Parameter past the limit was allocated whole
    first. Each factory call is sized before it allocates."""
    import fewshot.models.backbone as backbone
    from fewshot.models.state_checks import infinity_problem

    _OneHuge.allocated.clear()
    monkeypatch.setattr(backbone, "create_backbone", lambda *a, **k: _OneHuge())
    state = {"clip": torch.full((2,), math.inf)}
    ck = {"model_name": "huge", "config": {"model": {"name": "huge"}}}
    assert infinity_problem(state, ck) == "clip holds NaN or infinite values"
    assert _OneHuge.allocated == []
