"""Backbones of every family through timm's tiny test models, the heads, and safe weights loading."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from fewshot.errors import CheckpointError, UserError
from fewshot.models.backbone import create_backbone, extract_features, feature_dim, num_feature_tokens
from fewshot.models.classifier import FewShotClassifier, build_classifier, n_parameters
from fewshot.models.weights import load_backbone_weights

FAMILIES = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit", "test_maxvit", "test_byobnet"]
NUM_CLASSES = 7
SIZE = 32


def cfg(name: str, img_size: int = SIZE, drop_path: float = 0.0) -> dict:
    return {"model": {"name": name, "img_size": img_size, "drop_path": drop_path}}


def images(n: int = 3, size: int = SIZE) -> torch.Tensor:
    """Smooth, structured inputs (gradients + a square), not noise; normalized-ish scale."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for i in range(n):
        img = torch.stack([x * (i + 1) / n, y, (x * y)]).clone()
        img[:, size // 4: size // 2, size // 4 + i: size // 2 + i] = 1.5
        out.append(img)
    return torch.stack(out)


# ------------------------------------------------------------------ families

@pytest.mark.parametrize("name", FAMILIES)
def test_family_forward_backward(name):
    torch.manual_seed(0)
    model = build_classifier(cfg(name, drop_path=0.1), NUM_CLASSES)
    assert isinstance(model, FewShotClassifier)
    assert len(model.heads) == 1
    head = model.heads[0]
    assert isinstance(head.norm, torch.nn.BatchNorm1d) and not head.norm.affine
    assert head.fc.in_features == feature_dim(model.backbone) and head.fc.out_features == NUM_CLASSES
    model.train()
    x = images()
    logits = model(x)
    assert logits.shape == (3, NUM_CLASSES) and torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[:1]) and any(g is not None and g.abs().sum() > 0 for g in grads)
    assert model.heads[0].fc.weight.grad.abs().sum() > 0
    feats = model.features(x)
    assert feats.shape == (3, 1, feature_dim(model.backbone))
    assert n_parameters(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_features_are_timm_pre_logits(name):
    """Pooling comes from timm's own forward_head(pre_logits=True), per family."""
    backbone = create_backbone(name, img_size=SIZE).eval()
    x = images(2)
    with torch.no_grad():
        want = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
        got = extract_features(backbone, x)
    assert torch.allclose(got[:, 0], want)


def test_head_width_is_the_pre_logits_width_not_num_features():
    """MobileNetV3's head has its own 1x1 conv: pre-logits are 1024 wide though num_features is 288."""
    model = build_classifier(cfg("mobilenetv3_small_050"), NUM_CLASSES).train()
    assert model.backbone.num_features != model.backbone.head_hidden_size
    logits = model(images(2))
    assert logits.shape == (2, NUM_CLASSES) and model.heads[0].fc.in_features == model.backbone.head_hidden_size


def test_distilled_deit_has_two_heads_and_averages_them():
    torch.manual_seed(0)
    model = build_classifier(cfg("deit_tiny_distilled_patch16_224"), NUM_CLASSES)
    assert num_feature_tokens(model.backbone) == 2
    assert len(model.heads) == 2
    x = images(2)
    model.train()
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    out.sum().backward()
    assert all(h.fc.weight.grad is not None and h.fc.weight.grad.abs().sum() > 0 for h in model.heads)
    model.eval()
    with torch.no_grad():
        tokens = model.backbone.forward_features(x)
        feats = model.features(x)
        assert feats.shape == (2, 2, feature_dim(model.backbone))
        assert torch.allclose(feats[:, 0], tokens[:, 0]) and torch.allclose(feats[:, 1], tokens[:, 1])
        l_cls = model.heads[0](feats[:, 0])
        l_dist = model.heads[1](feats[:, 1])
        assert not torch.allclose(l_cls, l_dist)  # two different heads on two different tokens
        assert torch.allclose(model(x), (l_cls + l_dist) / 2, atol=1e-6)


def test_img_size_is_passed_to_models_that_need_it():
    vit = create_backbone("test_vit", img_size=48)
    assert vit.patch_embed.img_size == (48, 48)
    with torch.no_grad():
        assert extract_features(vit, images(1, 48)).shape[0] == 1


def test_small_stem_and_width_keep_resolution_at_the_same_cost():
    """resnet18 at 32 px ends at 1x1; the stride-1 stem ends at 2x2 (4x the positions everywhere) and
    half width brings the FLOPs back to about the plain network's."""
    from fewshot.report.flops import count_flops

    plain, small = create_backbone("resnet18"), create_backbone("resnet18", width=0.5, small_stem=True)
    assert (small.conv1.kernel_size, small.conv1.stride) == ((3, 3), (1, 1))
    with torch.no_grad():
        assert plain.forward_features(images(2)).shape == (2, 512, 1, 1)
        assert small.forward_features(images(2)).shape == (2, 256, 2, 2)
    assert feature_dim(small) == 256
    assert 0.8 < count_flops(small, SIZE) / count_flops(plain, SIZE) < 1.3
    # a deep stem (timm's resnet*d, test_resnet) gets its first convolution at stride 1 instead
    deep = create_backbone("test_resnet", small_stem=True)
    assert deep.conv1[0].stride == (1, 1)
    with torch.no_grad():
        assert deep.forward_features(images(2)).shape[-1] == 2 * create_backbone("test_resnet").forward_features(
            images(2)).shape[-1]


def test_width_scales_each_stage_of_any_resnet():
    wide = create_backbone("test_resnet", width=2.0)
    assert [f["num_chs"] for f in wide.feature_info[1:]] == [64, 96, 384, 192]  # test_resnet: 32, 48, 192, 96
    m = build_classifier({"model": {"name": "test_resnet", "img_size": SIZE, "width": 0.5, "small_stem": True}}, 3)
    assert m(images(2)).shape == (2, 3)


@pytest.mark.parametrize("opts", [{"width": 0.5}, {"small_stem": True}])
def test_width_and_small_stem_are_refused_outside_resnets(opts):
    with pytest.raises(UserError, match="apply to timm ResNets"):
        create_backbone("test_vit", **opts)


def test_width_out_of_range_is_a_user_error():
    with pytest.raises(UserError, match="model.width"):
        create_backbone("resnet18", width=0.0)


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="resnet_does_not_exist"):
        create_backbone("resnet_does_not_exist")


@pytest.mark.parametrize("typo, meant", [("test_resnett", "test_resnet"), ("ResNett18", "resnet18"),
                                         ("vit_smal_patch16_224", "vit_small_patch16_224")])
def test_a_mistyped_model_name_suggests_the_closest_name_first(typo, meant):
    """The first 8 names of a `*test*` glob came alphabetically: `test_resnett` got test_byobnet, test_coatnet, ...
    and not test_resnet."""
    with pytest.raises(UserError) as info:
        create_backbone(typo)
    similar = str(info.value).split("Similar names: ")[1].split(".")[0].split(", ")
    assert similar[0] == meant and len(similar) <= 8, str(info.value)


# ------------------------------------------------------------------ weights files

@pytest.fixture(scope="module")
def source():
    """A test_resnet backbone with non-default weights (so a successful load is visible)."""
    torch.manual_seed(1)
    b = create_backbone("test_resnet")
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.5)
    return b


def fresh():
    torch.manual_seed(2)
    return create_backbone("test_resnet")


def assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def assert_differs(a, b):
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_load_safetensors(source, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = fresh()
    assert_differs(source, target)
    info = load_backbone_weights(target, path)
    assert_same(source, target)
    assert info["missing"] == [] and info["unexpected"] == []


def test_load_plain_state_dict(source, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    target = fresh()
    load_backbone_weights(target, path)
    assert_same(source, target)


def test_load_wrapped_state_dict_with_module_prefix(source, tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3, "arch": "test_resnet",
                "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = fresh()
    load_backbone_weights(target, path)
    assert_same(source, target)


def test_the_official_moco_checkpoint_loads_its_query_encoder(source, tmp_path):
    """moco/main_moco.py saves {'state_dict': module.encoder_q.*, module.encoder_k.*, module.queue, ...}: the key
    encoder and the queue were 96 unexpected keys under strict loading, and probe has no strict switch."""
    state = source.state_dict()
    wrapped = {**{f"module.encoder_q.{k}": v for k, v in state.items()},
               **{f"module.encoder_k.{k}": v + 1 for k, v in state.items()},
               "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = tmp_path / "checkpoint_0199.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": wrapped}, path)
    target = fresh()
    load_backbone_weights(target, path)
    assert_same(source, target)


def test_nested_wrapper_prefixes_and_a_torch_file_named_safetensors_load(source, tmp_path):
    """Lightning's `model.backbone.` was stripped once (`backbone.` stayed) and refused; a torch.save file named
    .safetensors failed with "header too large"."""
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in source.state_dict().items()}}, path)
    target = fresh()
    load_backbone_weights(target, path)
    assert_same(source, target)
    misnamed = tmp_path / "w.safetensors"
    torch.save(source.state_dict(), misnamed)
    target = fresh()
    load_backbone_weights(target, misnamed)
    assert_same(source, target)


def test_imagenet_classifier_is_dropped(source, tmp_path):
    torch.manual_seed(3)
    full = timm.create_model("test_resnet", num_classes=1000)
    full.load_state_dict(source.state_dict(), strict=False)
    state = full.state_dict()
    assert "fc.weight" in state and state["fc.weight"].shape[0] == 1000
    path = tmp_path / "imagenet.pth"
    torch.save(state, path)
    target = fresh()
    info = load_backbone_weights(target, path)
    assert_same(source, target)
    assert info["unexpected"] == []


def test_wrong_architecture_names_file_and_keys(tmp_path):
    other = create_backbone("test_efficientnet")
    path = tmp_path / "effnet.pt"
    torch.save(other.state_dict(), path)
    target = fresh()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(target, path)
    msg = str(info.value)
    assert str(path) in msg
    assert "conv_stem.weight" in msg            # a key only the file has
    assert "conv1" in msg                        # a key only the model has
    assert "missing" in msg and "unexpected" in msg
    for k, v in target.state_dict().items():     # nothing half-loaded
        assert torch.equal(v, before[k])


def test_shape_mismatch_is_refused_even_when_not_strict(source, tmp_path):
    state = dict(source.state_dict())
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(fresh(), path, strict=False)
    assert key in str(info.value) and str(path) in str(info.value)


def test_not_strict_loads_the_matching_part(source, tmp_path):
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4.")}
    state["extra.weight"] = torch.ones(3)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError):
        load_backbone_weights(fresh(), path)
    target = fresh()
    info = load_backbone_weights(target, path, strict=False)
    assert info["unexpected"] == ["extra.weight"]
    assert info["missing"] and all(k.startswith("layer4.") for k in info["missing"])
    assert torch.equal(target.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])


NBT = "num_batches_tracked"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_file_cast_whole_to_fp16_loads_with_its_step_counters_as_counts(source, tmp_path, suffix):
    """`{k: v.half() for k, v in state_dict().items()}` casts BatchNorm's step counters too: "bn1.num_batches_tracked:
    file dtype float16 vs model int64" refused the file, even with model.strict=false."""
    state = dict(source.state_dict())
    counter = next(k for k in state if k.endswith(NBT))
    state[counter] = torch.tensor(7)
    half = {k: v.half().contiguous() for k, v in state.items()}
    path = tmp_path / f"fp16{suffix}"
    if suffix == ".safetensors":
        save_file(half, str(path))
    else:
        torch.save(half, path)
    target = fresh()
    assert load_backbone_weights(target, path)["missing"] == []
    loaded = target.state_dict()
    assert loaded[counter].dtype == torch.int64 and int(loaded[counter]) == 7
    assert torch.equal(loaded["conv1.0.weight"], half["conv1.0.weight"].float())


def test_the_strict_error_offers_model_strict_false_only_when_some_weight_would_load(source, tmp_path):
    """A file with lightly's keys (`backbone.0.weight`: an nn.Sequential's numbers) matched nothing, yet the error
    suggested model.strict=false, which then failed with "none of its tensors matches"."""
    state = source.state_dict()
    numbered = tmp_path / "lightly.pth"
    torch.save({f"backbone.{i}.{k}": v for i, (k, v) in enumerate(state.items())}, numbered)
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(fresh(), numbered)
    assert "model.strict=false to load the matching part" not in str(info.value)
    assert "model.strict=false would load nothing" in str(info.value)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("layer1.")}, partial)
    with pytest.raises(CheckpointError, match="model.strict=false to load the matching part"):
        load_backbone_weights(fresh(), partial)


def test_non_strict_counts_weights_without_step_counters_and_counters_alone_load_nothing(source, tmp_path, capsys):
    """Loading layer1.* said "loaded 24 of the model's 120 tensors; 80 left at random init" (24 counted the step
    counters, and 24 + 80 != 120); a file whose only matches were step counters passed as "loaded 20"."""
    state = source.state_dict()
    weights = [k for k in state if not k.endswith(NBT)]
    path = tmp_path / "layer1.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("layer1.")}, path)
    info = load_backbone_weights(fresh(), path, strict=False)
    n = sum(k.startswith("layer1.") for k in weights)
    assert (info["loaded"], info["total"], len(info["missing"])) == (n, len(weights), len(weights) - n)
    assert f"loaded {n} of the model's {len(weights)} weights" in capsys.readouterr().err
    counters = tmp_path / "counters.pth"
    torch.save({k: v for k, v in state.items() if k.endswith(NBT)} | {"foo.weight": torch.zeros(3)}, counters)
    with pytest.raises(CheckpointError, match="only BatchNorm step counters match"):
        load_backbone_weights(fresh(), counters, strict=False)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(source, tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    if suffix == ".pt":
        torch.save(source.state_dict(), good)
    else:
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(good))
    data = good.read_bytes()
    bad = tmp_path / f"truncated{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(fresh(), bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".pth"])
def test_zero_byte_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(fresh(), path)
    assert str(path) in str(info.value)


def test_missing_and_non_dict_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_weights(fresh(), tmp_path / "nope.pt")
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_backbone_weights(fresh(), path)


class _RunsCode:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "pickle", "pickle-in-state-dict"])
def test_malicious_pickle_is_refused_without_running(source, tmp_path, how):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pth"
    payload = _RunsCode(marker)
    if how == "torch.save":
        torch.save({"state_dict": {"conv1.0.weight": payload}}, path)
    elif how == "pickle":
        with open(path, "wb") as fh:
            pickle.dump({"conv1.0.weight": payload}, fh)
    else:
        state = dict(source.state_dict())
        state["evil"] = payload
        torch.save(state, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(fresh(), path)
    assert str(path) in str(info.value)
    assert not marker.exists(), "loading the file ran code"


def test_prototype_head_is_the_cosine_nearest_class_mean_of_standardised_features():
    from fewshot.models.classifier import LinearHead

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(30, 6, generator=g) * torch.tensor([1.0, 5.0, 0.1, 2.0, 1.0, 3.0]) + 4.0
    targets = torch.arange(30) % 3
    head = LinearHead(6, 4).eval().set_prototypes(feats, targets, scale=10.0)  # class 3 has no images
    # the same classifier written directly: standardise, L2-normalise, cosine to normalised class means
    z = (feats - feats.mean(0)) / (feats.var(0, unbiased=False) + 1e-5).sqrt()  # BatchNorm's eps
    zn = torch.nn.functional.normalize(z, dim=1)
    means = torch.stack([zn[targets == c].mean(0) for c in range(3)])
    direct = zn @ torch.nn.functional.normalize(means, dim=1).T
    logits = head(feats)
    assert torch.equal(logits[:, :3].argmax(1), direct.argmax(1))
    # logits are the cosines times scale / mean feature norm; the empty class scores 1 below the lowest logit a
    # train feature can get (-scale x max norm / mean norm), so it is never predicted on them
    scale = 10.0 / z.norm(dim=1).mean()
    torch.testing.assert_close(logits[:, :3], direct * z.norm(dim=1, keepdim=True) * scale, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[:, 3], torch.full((30,), -float(scale * z.norm(dim=1).max()) - 1.0))
    assert torch.all(logits[:, 3] < logits[:, :3].min(1).values)


def test_linear_probe_fits_a_single_image():
    """BatchNorm's batch statistics need two images; a probe (model.head_init=probe) of one labelled image
    used to fail inside BatchNorm. It now fits that image."""
    from fewshot.eval.probe import train_linear_head

    feats = torch.tensor([[3.0, -1.0, 2.0]])
    head = train_linear_head(feats, torch.tensor([2]), num_classes=3, epochs=50)
    assert head(feats).argmax(1).item() == 2


@pytest.mark.parametrize("head_init", ["prototype", "probe"])
def test_a_head_fitted_at_start_survives_the_first_batchnorm_updates(digits_root, head_init):
    """model.head_init on a random-init backbone fitted the head to eval-mode features made with BatchNorm
    statistics of no data (mean 0, var 1); training's first forward passes replaced those statistics and
    eval accuracy fell to chance even at lr 0. The statistics are now taken from the labelled images first."""
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.distributed import DistContext
    from fewshot.train.supervised import SupervisedTask

    torch.manual_seed(0)
    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 32,
                         "train.device": "cpu", "model.head_init": head_init, "model.drop_path": 0.0})
    task = SupervisedTask(cfg, scan_root(digits_root, None, splits=("train", "val")), torch.device("cpu"),
                          DistContext())
    model, train = task.model, task.train_set

    def train_accuracy() -> float:
        model.eval()
        with torch.no_grad():
            return (model(task.normalize(train.images)).argmax(1) == train.targets).float().mean().item()

    at_init = train_accuracy()
    assert at_init > 0.5  # the head fits the labelled images
    model.train()
    with torch.no_grad():  # what training at lr 0 does: only the norm statistics move
        for _ in range(20):
            model(task.normalize(train.images[torch.randperm(len(train))[:32]]))
    assert train_accuracy() > at_init - 0.1


@pytest.mark.parametrize("name", ["test_coatnet", "test_maxvit"])
def test_window_attention_weights_load_at_another_image_size(name, tmp_path):
    """A Swin/MaxViT/CoAtNet export made at 32 px was refused at 64 px (relative-position tables follow the
    window) with advice, model.strict=false, that could not help: the tables are now interpolated."""
    from timm.layers import resize_rel_pos_bias_table

    small = timm.create_model(name, num_classes=0, img_size=32)
    large = timm.create_model(name, num_classes=0, img_size=64)
    src = {k: v.contiguous() for k, v in small.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(src, str(path))
    load_backbone_weights(large, path)
    own = large.state_dict()
    resized = [k for k in src if k.endswith("relative_position_bias_table") and src[k].shape != own[k].shape]
    assert resized
    for k in resized:
        window = large.get_submodule(k.rsplit(".", 1)[0]).window_size
        with warnings.catch_warnings():  # torch's notes on timm's interpolation internals
            warnings.simplefilter("ignore", UserWarning)
            want = resize_rel_pos_bias_table(src[k], tuple(window), tuple(own[k].shape))
        assert torch.equal(own[k], want)
    same = [k for k in src if k not in resized and own[k].dtype.is_floating_point]
    assert all(torch.equal(own[k], src[k]) for k in same)


def test_unexpected_weights_are_named_before_batch_norm_step_counters(tmp_path):
    """A list that began with `*.num_batches_tracked` named nothing telling about the file's model."""
    from safetensors.torch import save_file

    from fewshot.errors import UserError
    from fewshot.models.backbone import create_backbone
    from fewshot.models.weights import load_backbone_weights

    backbone = create_backbone("test_resnet")
    state = {f"extra{i}.num_batches_tracked": torch.zeros((), dtype=torch.long) for i in range(8)}
    state["other.conv.weight"] = torch.zeros(3)
    save_file({**backbone.state_dict(), **state}, str(tmp_path / "w.safetensors"))
    with pytest.raises(UserError, match=r"9 unexpected key\(s\): other\.conv\.weight, extra0"):
        load_backbone_weights(backbone, tmp_path / "w.safetensors")


def test_a_vit_size_that_is_not_a_multiple_of_its_patch_size_is_refused():
    """40 px with 16 px patches builds a 2x2 grid whose convolution never sees the last 8 px: refused like 8 px."""
    from fewshot.models.backbone import check_input_size

    for size, sizes in ((40, "--img-size 32 or 48"), (8, "--img-size 16")):
        with pytest.raises(UserError, match=f"multiple of 16 \\({sizes}\\)"):
            check_input_size(create_backbone("test_vit", img_size=size), size, "test_vit")
    check_input_size(create_backbone("test_vit", img_size=48), 48, "test_vit")
    check_input_size(create_backbone("test_resnet"), 40, "test_resnet")  # no patches: any size


def test_a_vit_at_its_own_size_off_the_patch_grid_is_accepted():
    """SigLIP so400m/14 is trained at 384 px (384 % 14 = 6): the patch-grid check refused the model's own size."""
    from fewshot.models.backbone import check_input_size

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, patch_size=14, img_size=40,
                            depth=1)
    vit.pretrained_cfg = {**vit.pretrained_cfg, "input_size": (3, 40, 40)}
    check_input_size(vit, 40, "vit_at_its_own_size")  # the model's own size: taken
    with pytest.raises(UserError, match="multiple of 14"):
        check_input_size(vit, 41, "vit_at_another_size")


def test_a_window_model_given_too_small_an_image_is_a_user_error():
    """A hunt: test_maxvit at 24 px died in timm's window partition with ZeroDivisionError (exit 1, "internal
    error") instead of the message that asks for another --img-size."""
    from fewshot.errors import UserError
    from fewshot.models.backbone import check_input_size

    backbone = timm.create_model("test_maxvit", num_classes=0, img_size=24)
    with pytest.raises(UserError, match="test_maxvit cannot take 24 px inputs"):
        check_input_size(backbone, 24, "test_maxvit")
