"""Which input sizes a timm model takes, tried on the meta device (shapes only: no memory, no weight init, about
0.1 s a try), so that advice names only sizes that work and `fewshot run` picks one (run_checks.auto_img_size).

Apart from backbone.py because these are searches over builds; backbone.check_input_size is the one check. A meta
try that cannot tell (a model that will not build there, an op the meta device cannot run) claims nothing.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

# sizes near the asked one that sizes_taken tries (the model's own size besides): each try builds the model
NEAR_TRIES = 7
# the step of the sizes tried for a model without a patch embedding (window and fixed-size models)
PLAIN_STEP = 32


def meta_backbone(name: str, size: int, options: dict | None = None) -> nn.Module | None:
    """``name`` built for ``size`` px on the meta device, with create_backbone's ``options``; None where it cannot
    be built there (an unknown name is create_backbone's to report, on a real build)."""
    from fewshot.models.backbone import create_backbone

    try:
        with torch.device("meta"):
            return create_backbone(name, **{**(options or {}), "img_size": size})
    except Exception:  # noqa: BLE001 - any failure here only means "no answer": the real build reports it
        return None


def size_problem(name: str, size: int, options: dict | None = None) -> tuple[bool | None, str | None]:
    """(takes, why not) for ``name`` built at ``size``, tried on the meta device: takes None where the try cannot
    tell (then why is None too)."""
    from fewshot.models.backbone import input_size_problem

    backbone = meta_backbone(name, size, options)
    if backbone is None:
        return None, None
    try:
        problem = input_size_problem(backbone, size, name)
    except Exception:  # noqa: BLE001 - an error check_input_size does not expect: the real check reports it
        return None, None
    if problem is not None and "meta" in problem.lower():  # an op the meta device cannot run: no answer
        return None, None
    return problem is None, problem


def patch_size(name: str, size: int, options: dict | None = None) -> int | None:
    """The image patch of ``name`` (backbone._image_patch_size) on a meta build; None without one."""
    from fewshot.models.backbone import _image_patch_size

    backbone = meta_backbone(name, size, options)
    return _image_patch_size(backbone) if backbone is not None else None


def own_size(name: str) -> int | None:
    """The input size of the model's timm config (224 for efficientformer_l1), None where timm records none."""
    try:
        cfg = timm.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an unknown or odd name: nothing to add
        return None
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None


def candidate_sizes(near: int, step: int, own: int | None) -> list[int]:
    """Multiples of ``step`` nearest ``near`` first (ties: the smaller), NEAR_TRIES of them, then ``own``."""
    top = max(near, own or 0, 256) // step + 2
    grid = sorted((step * k for k in range(1, top)), key=lambda s: (abs(s - near), s))
    sizes = [s for s in grid if s != near][:NEAR_TRIES]
    return sizes + ([own] if own and own not in sizes and own != near else [])


def sizes_taken(name: str, near: int, options: dict | None = None, count: int = 2) -> list[int]:
    """Up to ``count`` sizes other than ``near`` that ``name`` takes, nearest first, each checked on the meta
    device: multiples of its patch (of PLAIN_STEP without one) near ``near``, and its own size. Empty where none
    could be confirmed."""
    step = patch_size(name, near, options) or PLAIN_STEP
    found = []
    for size in candidate_sizes(near, step, own_size(name)):
        if size_problem(name, size, options)[0]:
            found.append(size)
            if len(found) == count:
                break
    return found


def takes_smaller(name: str, size: int, options: dict | None = None) -> bool:
    """Whether ``name`` may take a size below ``size``: False only where each multiple of its patch (of PLAIN_STEP
    without one) below it that sizes_taken would try was refused on the meta device. The budget refusal advised
    "a smaller --img-size" for efficientformer_l1 at 224 px, the one size it takes."""
    step = patch_size(name, size, options) or PLAIN_STEP
    below = [s for s in candidate_sizes(size, step, None) if s < size]
    return not below or any(size_problem(name, s, options)[0] is not False for s in below)


def patch_sizes(name: str, size: int, patch: int, options: dict | None = None) -> list[int]:
    """The multiples of ``patch`` around ``size`` (the one above alone under one patch) that a meta try does not
    refuse (a window model with patches may refuse them too), else sizes_taken's."""
    around = [s for s in (size // patch * patch, (size // patch + 1) * patch) if s]
    kept = [s for s in around if size_problem(name, s, options)[0] is not False]
    return kept or sizes_taken(name, size, options)
