"""Two-token (distilled) backbones: how many heads, and head initialisation (model.head_init) per token."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fewshot.models.backbone import create_backbone, extract_features, feature_dim, num_feature_tokens
from fewshot.models.classifier import build_classifier

DISTILLED = "deit_tiny_distilled_patch16_224"  # the smallest timm model with a dist_token; random init
SIZE = 32


def make_task(root, head_init: str):
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.distributed import DistContext
    from fewshot.train.supervised import SupervisedTask

    torch.manual_seed(0)
    cfg = resolve(flags={"data.root": str(root), "model.name": DISTILLED, "model.img_size": SIZE,
                         "train.device": "cpu", "model.head_init": head_init, "model.drop_path": 0.0})
    return SupervisedTask(cfg, scan_root(root, None, splits=("train", "val")), torch.device("cpu"), DistContext())


def token_features(task) -> torch.Tensor:
    """[N, 2, D] eval-mode train features, by hand."""
    task.model.eval()
    with torch.no_grad():
        return extract_features(task.model.backbone, task.normalize(task.train_set.images))


def standardised(feats: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    return (feats - train.mean(0)) / (train.var(0, unbiased=False) + 1e-5).sqrt()


def class_means(z: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised class means of the normalised features; a class without images stays zero."""
    proto = torch.zeros(num_classes, z.shape[1])
    proto.index_add_(0, targets, F.normalize(z, dim=1))
    return F.normalize(proto, dim=1)


def test_prototype_init_fits_each_head_to_the_token_it_scores(digits_root):
    """model.head_init=prototype built both DeiT-distilled heads from the average of the class and distillation
    tokens, while head 0 scores the class token and head 1 the distillation token: each head standardised with
    statistics of features it never sees, and 1-2 % of the step-0 predictions were not the nearest class mean."""
    task = make_task(digits_root, "prototype")
    model, y, n_classes = task.model, task.train_set.targets, task.space.num_classes
    feats = token_features(task)
    assert len(model.heads) == 2
    present = torch.bincount(y, minlength=n_classes) > 0
    scores = torch.zeros(len(y), n_classes)
    for i, head in enumerate(model.heads):
        f = feats[:, i]
        assert torch.allclose(head.norm.running_mean, f.mean(0), atol=1e-4)
        assert torch.allclose(head.norm.running_var, f.var(0, unbiased=False), rtol=1e-3, atol=1e-5)
        z = standardised(f, f)
        proto = class_means(z, y, n_classes)
        cos = F.cosine_similarity(head.fc.weight[present], proto[present], dim=1)
        assert cos.min() > 1 - 1e-5
        with torch.no_grad():  # each head alone: the cosine nearest class mean of its own token
            own = head(f).argmax(1)
        assert torch.equal(own, (F.normalize(z, dim=1) @ proto.T).argmax(1))
        scores += z @ proto.T / z.norm(dim=1).mean()  # the head's logits up to its scale
    with torch.no_grad():
        logits = model(task.normalize(task.train_set.images))
    pred, want = logits.argmax(1), scores.argmax(1)
    differ = pred != want  # only where two classes tie to rounding
    gap = (scores[differ, want[differ]] - scores[differ, pred[differ]]).abs()
    assert differ.sum() == 0 or gap.max() < 1e-4, f"{int(differ.sum())} of {len(y)} step-0 predictions differ"


def test_probe_init_fits_each_head_to_the_token_it_scores(digits_root):
    """model.head_init=probe trained one head on the token average and copied it to both heads."""
    from fewshot.eval.probe import train_linear_head

    task = make_task(digits_root, "probe")
    feats, y = token_features(task), task.train_set.targets
    assert len(task.model.heads) == 2
    for i, head in enumerate(task.model.heads):
        assert torch.allclose(head.norm.running_mean, feats[:, i].mean(0), atol=1e-4)
        want = train_linear_head(feats[:, i], y, task.space.num_classes, seed=task.cfg["train"]["seed"])
        for name, value in want.state_dict().items():
            assert torch.allclose(head.state_dict()[name], value, atol=1e-4), f"head {i} {name}"
    assert not torch.allclose(task.model.heads[0].fc.weight, task.model.heads[1].fc.weight)


def test_pit_distilled_keeps_both_tokens_in_cls_token_and_gets_two_heads():
    """PiT keeps its class and distillation tokens in one `cls_token` [1, 2, C], no `dist_token`: it got one head,
    fitted to the class token alone, and the distillation token was never used."""
    torch.manual_seed(0)
    model = build_classifier({"model": {"name": "pit_ti_distilled_224", "img_size": SIZE}}, 5).eval()
    backbone = model.backbone
    assert num_feature_tokens(backbone) == 2 and len(model.heads) == 2
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens = backbone.forward_features(x)
        feats = extract_features(backbone, x)
        assert feats.shape == (2, 2, feature_dim(backbone))
        assert torch.equal(feats, tokens[:, :2])
        # timm's own pre-logits average the two tokens its two heads read: the same two
        assert torch.allclose(backbone.forward_head(tokens, pre_logits=True), feats.mean(1), atol=1e-6)
        # the classifier against timm's own forward with our heads in its `head` / `head_dist`: timm picks each
        # head's token and averages their logits itself (heads made unlike, so a swap of tokens would show)
        for head in model.heads:
            head.norm.running_mean.normal_()
            head.norm.running_var.uniform_(0.5, 2.0)
        reference = copy.deepcopy(backbone)
        reference.head, reference.head_dist = copy.deepcopy(model.heads[0]), copy.deepcopy(model.heads[1])
        want = reference.eval()(x)
        assert want.shape == (2, 5) and torch.allclose(model(x), want, atol=1e-5)
        reference.head, reference.head_dist = reference.head_dist, reference.head
        assert not torch.allclose(model(x), reference(x), atol=1e-3)


@pytest.mark.parametrize("name", ["pit_ti_224", "levit_128s", "test_vit"])
def test_one_head_without_distillation_tokens(name):
    """Plain PiT (one class token), LeViT (a distillation head on the one pooled feature), ViT: one head."""
    backbone = create_backbone(name, img_size=SIZE).eval()
    assert num_feature_tokens(backbone) == 1
    with torch.no_grad():
        assert extract_features(backbone, torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 1, feature_dim(backbone))


@pytest.mark.parametrize("n", [24, 1])
def test_batched_probe_heads_equal_each_head_fitted_alone(n):
    """train_linear_heads fits T heads in one loop: each equals train_linear_head fitted alone on its token (same
    seed, start and steps), also for a single image (BatchNorm centred on it)."""
    from fewshot.eval.probe import train_linear_head, train_linear_heads

    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(n, 3, 8, generator=gen) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1)
    targets = torch.randint(0, 4, (n,), generator=gen)
    heads = train_linear_heads(feats, targets, 4, epochs=50, seed=7)
    assert len(heads) == 3
    for i, head in enumerate(heads):
        want = train_linear_head(feats[:, i], targets, 4, epochs=50, seed=7)
        assert not head.training
        for name, value in want.state_dict().items():
            assert torch.allclose(head.state_dict()[name], value, atol=1e-5), f"head {i} {name}"


def test_probe_init_fits_the_heads_together_on_the_task_device(digits_root, monkeypatch):
    """Probe init ran one 300-epoch fit per head, each on CPU features even for a GPU run: one batched fit of all
    the heads, on the features of every token, on the task's device."""
    import fewshot.eval.probe as probe

    calls = []
    fit = probe.train_linear_heads

    def spy(feats, *args, **kwargs):
        calls.append((tuple(feats.shape), feats.device))
        return fit(feats, *args, **kwargs)

    monkeypatch.setattr(probe, "train_linear_heads", spy)
    task = make_task(digits_root, "probe")
    dim = feature_dim(task.model.backbone)
    assert calls == [((len(task.train_set.targets), 2, dim), task.device)]


@pytest.fixture(scope="module")
def one_head_pit_run(digits_root, tmp_path_factory):
    """A PiT-distilled run as a version that gave it one head wrote it: its checkpoints without heads.1."""
    from fewshot.cli import main

    out = tmp_path_factory.mktemp("pit") / "run"
    assert main(["train", "--data", str(digits_root), "--out", str(out), "--model", "pit_ti_distilled_224",
                 "--img-size", str(SIZE), "--datasets", "digits", "--epochs", "1", "--device", "cpu",
                 "--no-progress"]) == 0
    for name in ("best.pt", "last.pt"):
        path = out / "checkpoints" / name
        ck = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "ema"):
            if ck.get(key) is not None:
                ck[key] = {k: v for k, v in ck[key].items() if not k.startswith("heads.1.")}
        torch.save(ck, path)
    return out


def assert_one_paragraph_about_heads(err: str, path) -> None:
    message = err.strip()
    assert "\n" not in message and "\t" not in message, err
    assert f"{path} has 1 head, but this version scores pit_ti_distilled_224 with 2 heads (one each for its class " \
           f"and distillation tokens)" in message, err
    assert f"Start a new run from it with --weights {path}, which keeps its backbone" in message, err
    assert "Missing key" not in message and "may be whole" not in message, err


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_checkpoint_with_fewer_heads_says_so_in_eval_and_predict(one_head_pit_run, digits_root, tmp_path, capsys,
                                                                  command):
    """A one-head PiT-distilled checkpoint failed as torch's two-line "Missing key(s) ... heads.1 ..." and offered
    the run's last.pt, which has the same heads: one paragraph with the head counts and --weights."""
    from fewshot.cli import main

    more = ["--out", str(tmp_path / "pred.json")] if command == "predict" else []
    capsys.readouterr()
    assert main([command, str(one_head_pit_run), "--data", str(digits_root), "--device", "cpu", *more]) == 2
    assert_one_paragraph_about_heads(capsys.readouterr().err.split("error: ", 1)[-1],
                                     one_head_pit_run / "checkpoints" / "best.pt")


def test_a_resume_from_a_checkpoint_with_fewer_heads_says_so(one_head_pit_run, digits_root, tmp_path, capsys):
    """`train --resume` showed torch's first line only ("Error(s) in loading state_dict for FewShotClassifier:")."""
    import shutil

    from fewshot.cli import main

    out = shutil.copytree(one_head_pit_run, tmp_path / "run")
    capsys.readouterr()
    assert main(["train", "--data", str(digits_root), "--out", str(out), "--resume", "--no-progress"]) == 2
    assert_one_paragraph_about_heads(capsys.readouterr().err.split("error: ", 1)[-1],
                                     out / "checkpoints" / "last.pt")


def test_weights_from_a_checkpoint_with_fewer_heads_keep_its_backbone(one_head_pit_run):
    """What the message offers: --weights takes every backbone weight of the one-head checkpoint."""
    from fewshot.models.weights import load_backbone_weights

    path = one_head_pit_run / "checkpoints" / "best.pt"
    backbone = create_backbone("pit_ti_distilled_224", img_size=SIZE)
    loaded = load_backbone_weights(backbone, path, strict=True, quiet=True)
    assert loaded["loaded"] == loaded["total"] > 0
    ck = torch.load(path, map_location="cpu", weights_only=True)
    saved = ck["ema"] if ck.get("ema") is not None else ck["model"]
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, saved[f"backbone.{name}"]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_batched_probe_heads_fit_on_the_gpu_features_device():
    """On a GPU run the heads are fitted where the features are, and still equal each head fitted alone on CPU."""
    from fewshot.eval.probe import train_linear_head, train_linear_heads

    gen = torch.Generator().manual_seed(4)
    feats, targets = torch.randn(32, 2, 16, generator=gen), torch.randint(0, 5, (32,), generator=gen)
    heads = train_linear_heads(feats.cuda(), targets, 5, epochs=50)
    for i, head in enumerate(heads):
        assert head.fc.weight.is_cuda
        want = train_linear_head(feats[:, i], targets, 5, epochs=50)
        for name, value in want.state_dict().items():
            assert torch.allclose(head.state_dict()[name].cpu(), value, atol=1e-4), f"head {i} {name}"
