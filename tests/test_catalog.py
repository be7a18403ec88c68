"""`fewshot models` (fewshot.models.catalog): counts are of the network fewshot builds."""

from __future__ import annotations

from fewshot.models.backbone import create_backbone
from fewshot.models.catalog import describe, list_models


def test_parameter_count_is_the_backbones_without_imagenet_head():
    """Counted with timm's 1000-class classifier, test_resnet showed 0.47M where metrics say 0.37M."""
    n, size = describe("test_resnet")
    assert n == sum(p.numel() for p in create_backbone("test_resnet").parameters())
    assert size > 0


def test_a_tagged_name_matches_its_architecture_and_says_so():
    out = list_models("test_resnet.r160_in1k", limit=5)
    rows = out.splitlines()
    assert any(r.split()[:1] == ["test_resnet"] for r in rows), out
    assert "pretrained weights" in out and "no timm model matches" not in out
