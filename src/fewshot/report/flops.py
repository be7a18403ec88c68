"""FLOPs of one forward pass at the run's input size, counted by torch.utils.flop_counter.

A multiply-add counts as 2 FLOPs (torch's convention); convolutions count their full kernel, also
where `models/tiny_map_conv` skips the taps that fall on the padding. Operators torch has no formula for
(pooling, activations, normalisation) are not counted; convolutions and matmuls dominate.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def count_flops(model: nn.Module, img_size: int, device: torch.device | str = "cpu") -> int | None:
    """FLOPs of model(x) for one 3 x img_size x img_size image, in eval mode; None if it cannot run."""
    from torch.utils.flop_counter import FlopCounterMode

    from fewshot.models.tiny_map_conv import plain_convolutions

    was = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        dev = param.device if param is not None else torch.device(device)
        x = torch.zeros(1, 3, int(img_size), int(img_size), device=dev)
        counter = FlopCounterMode(display=False)
        with counter, plain_convolutions():  # convolutions counted as defined, not as the CPU shortcut computes them
            model(x)
        return int(counter.get_total_flops())
    except Exception:
        return None
    finally:
        model.train(was)


def run_flops(run, model: nn.Module | None = None, size: int | None = None) -> int | None:
    """FLOPs for a Run: the fine-tuned classifier (backbone + head), or a MoCo run's backbone."""
    return run_model_stats(run, model, size)[0]


def run_model_stats(run, model: nn.Module | None = None,
                    size: int | None = None) -> tuple[int | None, int | None, int | None]:
    """(FLOPs, parameters, input size) of a Run's model: the fine-tuned classifier (from its checkpoint, unless the
    loaded `model` is given with its input `size`), or the backbone of a MoCo run (built from its config:
    the counts do not depend on the weights)."""
    size = size or run.img_size
    try:
        if model is None and run.kind == "supervised":
            if run.checkpoint is None:
                return None, None, None
            from fewshot.eval.predict import load_trained

            tm = load_trained(run.checkpoint, torch.device("cpu"))
            model, size = tm.model, tm.size
        elif model is None:
            from fewshot.models.backbone import RECORDED, backbone_options, create_backbone, input_size

            opts = backbone_options(run.config.get("model") or {})
            model = create_backbone(run.model_name, img_size=size, width=opts["width"], small_stem=opts["small_stem"],
                                    source=RECORDED)  # the run's name, read from its files
            size = input_size(model, size)
    except Exception:
        return None, None, None
    return count_flops(model, size or 224), sum(p.numel() for p in model.parameters()), size
