"""Two-token (distilled) backbones: how many heads, and head initialisation (model.head_init) per token."""

from __future__ import annotations

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
        assert torch.allclose(model(x), (model.heads[0](feats[:, 0]) + model.heads[1](feats[:, 1])) / 2, atol=1e-6)


@pytest.mark.parametrize("name", ["pit_ti_224", "levit_128s", "test_vit"])
def test_one_head_without_distillation_tokens(name):
    """Plain PiT (one class token), LeViT (a distillation head on the one pooled feature), ViT: one head."""
    backbone = create_backbone(name, img_size=SIZE).eval()
    assert num_feature_tokens(backbone) == 1
    with torch.no_grad():
        assert extract_features(backbone, torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 1, feature_dim(backbone))
