"""Linear probe: frozen backbone features + BN(affine=False) + linear head, one head over all classes.

The standard evaluation of a self-supervised encoder (MoCo's "linear classification protocol"),
cheap here because features are extracted once and the head trains on them in memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot.data.cache import default_cache_dir
from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import scan_root
from fewshot.data.sets import load_splits
from fewshot.data.transforms import Normalize
from fewshot.errors import UserError, one_line
from fewshot.eval.evaluate import score
from fewshot.eval.features import backbone_features
from fewshot.models.backbone import (adopt_weights_architecture, backbone_options, check_input_size, create_backbone,
                                     input_size, mean_std)
from fewshot.models.classifier import LinearHead
from fewshot.models.weights import load_backbone_weights, weights_note
from fewshot.utils import seed_everything


def train_linear_head(feats: torch.Tensor, targets: torch.Tensor, num_classes: int, epochs: int = 300,
                      lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0) -> LinearHead:
    """Full-batch AdamW on in-memory features (the few-shot train sets are small)."""
    seed_everything(seed)
    head = LinearHead(feats.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    head.train()
    if len(feats) < 2:  # BatchNorm cannot take batch statistics of one image: centre on it, unit scale
        head.norm.running_mean.copy_(feats.mean(0))
        head.norm.eval()
    for _ in range(epochs):
        loss = F.cross_entropy(head(feats), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return head.eval()


def run_probe(weights: str | None, model_name: str, root: str | Path, img_size: int | None, device: torch.device,
              mode: str = "known", epochs: int = 300, datasets=None, head: str = "linear",
              skip_bad: bool = False, bit_depth: int | str = "auto") -> dict:
    """Frozen-feature accuracy on val: a trained linear head ("linear") or, without any training, the
    cosine nearest class mean of standardised features ("prototype", SimpleShot). ``bit_depth``: data.bit_depth,
    as the features were learnt from (12-bit images probed at the 16-bit scale came out dark)."""
    infos = scan_root(root, datasets, splits=("train", "val"))
    space = LabelSpace.from_infos(infos)
    # the model's name too: a file of another model brings nothing, and loading it names that model (probe
    # said "model.width / model.small_stem apply to timm ResNets", options it does not have)
    arch = backbone_options(adopt_weights_architecture({"name": model_name, "img_size": img_size, "weights": weights}))
    backbone = create_backbone(model_name, **arch)
    loaded = load_backbone_weights(backbone, weights, strict=True) if weights else None  # counts, for the line below
    size = input_size(backbone, arch["img_size"])
    check_input_size(backbone, size, model_name)
    backbone.to(device)
    normalize = Normalize(*mean_std(backbone)).to(device)
    cache = default_cache_dir(root, None)
    train, val = load_splits(infos, ("train", "val"), space, size, cache, skip_bad=skip_bad, bit_depth=bit_depth)
    # the size a weights file chose (an export records its own) was used without a word: `train` says it; and
    # how many of the model's weights the file gave, as `train` does (the file name alone did not say)
    print(one_line(f"probe: {model_name}{weights_note(loaded, weights) or ' (random init)'} at {size}px on {device}: "
                   f"{', '.join(space.names)}, {len(train)} train / {len(val)} val images"), flush=True)
    ftr = backbone_features(backbone, train.images, normalize, device)
    fva = backbone_features(backbone, val.images, normalize, device)
    for split, feats in (("train", ftr), ("val", fva)):
        bad = int((~torch.isfinite(feats)).any(dim=1).sum())
        if bad:  # a probe on NaN features "scores" chance accuracy and exits 0
            raise UserError(f"the backbone gives non-finite features (NaN or inf) for {bad} of {len(feats)} {split} "
                            f"images; the weights {weights or '(random init)'} hold non-finite values or overflow.")
    if head == "prototype":
        classifier = LinearHead(ftr.shape[1], space.num_classes).eval().set_prototypes(ftr, train.targets)
    elif head == "linear":
        classifier = train_linear_head(ftr, train.targets, space.num_classes, epochs=epochs)
    else:
        raise UserError(f"--head must be linear or prototype, not {head!r}")
    with torch.no_grad():
        logits = classifier(fva)
    n_params = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in classifier.parameters())
    metrics = score(logits, val.targets, val.dataset_ids, space, mode, n_params)
    protocol = "linear probe" if head == "linear" else "prototype (SimpleShot)"
    metrics.update({"split": "val", "protocol": protocol, "weights": str(weights) if weights else None,
                    "model": model_name, "img_size": size})
    return metrics
