"""`fewshot models`: timm models with parameter counts and default input size, to pick similar sizes."""

from __future__ import annotations

import fnmatch

import timm
import torch


def describe(name: str) -> tuple[int, int]:
    """(parameters, default input size), counted on a meta-device model: no memory, no weights. Without the
    classifier (num_classes=0), as create_backbone builds it: ImageNet's 1000-class head is not fewshot's."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0)
    n = sum(p.numel() for p in model.parameters())
    size = timm.get_pretrained_cfg(name).input_size[-1] if timm.get_pretrained_cfg(name) else 224
    return n, size


def input_words(name: str) -> str:
    """The default input as the table shows it: `224`, or HxW where it is not square (sapiens2's 1024x768 was
    listed as "768", its width alone)."""
    cfg = timm.get_pretrained_cfg(name)
    height, width = cfg.input_size[-2:] if cfg else (224, 224)
    return str(width) if height == width else f"{height}x{width}"


def list_models(pattern: str = "*", limit: int = 60) -> str:
    from fewshot.errors import one_line
    from fewshot.progress import track

    notes = []
    base, dot, tag = pattern.partition(".")
    if dot and base:  # resnet18.a1_in1k: timm lists architectures, the tag only names pretrained weights
        notes.append(one_line(f"(matching the architecture '{base}': '.{tag}' names pretrained weights, which "
                              f"fewshot never downloads (model.weights=FILE loads local ones); every tag has the "
                              f"same network)"))  # the pattern as typed: an ESC in it would reach the terminal
        pattern = base
    pattern = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    names = [n for n in timm.list_models() if fnmatch.fnmatch(n.lower(), pattern.lower())]  # RESNET18 too
    rows = [f"{'model':<44} {'params (M)':>10} {'input':>9}"]
    for name in track(names[:limit], desc="counting parameters"):  # ~1 s a model: progress on stderr
        try:
            n, _ = describe(name)
            rows.append(f"{name:<44} {n / 1e6:10.2f} {input_words(name):>9}")
        except Exception as exc:  # a model timm lists but cannot build here
            rows.append(f"{name:<44} {'?':>10} {'?':>9}  ({type(exc).__name__})")
    if len(names) > limit:
        rows.append(f"... {len(names) - limit} more (use --limit or a narrower pattern)")
    if not names:
        rows.append(one_line(f"(no timm model matches '{pattern}')"))
    return "\n".join(rows + notes)
