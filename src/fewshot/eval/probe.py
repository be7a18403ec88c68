"""Linear probe: frozen backbone features + BN(affine=False) + linear head, one head over all classes.

The standard evaluation of a self-supervised encoder (MoCo's "linear classification protocol"),
cheap here because features are extracted once and the head trains on them in memory.

For a model with a distillation token (e.g. DeiT, PiT) `fewshot probe` fits one head on the average of the class
and distillation tokens, so its score is not the head that `model.head_init=probe` starts fine-tuning from: that
fits one head per token (train_linear_heads), as the model scores them.
"""

from __future__ import annotations

import sys
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
from fewshot.models.weights import check_before_build, load_backbone_weights, weights_note
from fewshot.train.distributed import launch_rank
from fewshot.utils import seed_everything


def recorded_bit_depth(weights) -> int | str | None:
    """The data.bit_depth a --weights file records: a fewshot checkpoint's config, or an export's ``bit_depth``
    metadata; None where it records none (or is no file these read: loading it says why). As eval and predict take
    a run's from its checkpoint: a backbone that learnt from 12-bit images was probed on them at the 16-bit scale
    (dark) unless the user typed the setting again."""
    from fewshot.errors import CheckpointError
    from fewshot.models.weights_file import is_safetensors, read_tensor_file

    path = Path(weights) if weights else None
    if path is None or not path.is_file():
        return None
    if is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                value = (f.metadata() or {}).get("bit_depth")
        except Exception:  # read_tensor_file reports an unreadable file with its own message
            return None
    else:
        try:
            ck = read_tensor_file(path, mmap=True)
        except CheckpointError:
            return None
        data = ck["config"].get("data") if isinstance(ck.get("config"), dict) else None
        if ck.get("format") != "fewshot-checkpoint" or not isinstance(data, dict):
            return None
        value = data.get("bit_depth")
    if value is None or value == "auto":
        return value
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 8 <= int(text) <= 16:  # a file may come from anyone
        raise UserError(f"--weights {weights} records data.bit_depth {value!r}, not auto or a whole number from 8 to "
                        f"16; give data.bit_depth=N (the bits the data's 16-bit images use) or data.bit_depth=auto.")
    return int(text)


def bit_depth_for(weights, given: int | str | None) -> int | str:
    """The bit depth probe decodes with: the data.bit_depth word typed (``given``), else the one ``weights``
    records (said in a note, with the word that reads the images otherwise), else auto."""
    if given is not None:
        return given
    recorded = recorded_bit_depth(weights)
    if recorded is None:
        return "auto"
    # 16: 16-bit images at their full scale, as auto reads them, so the note has nothing to say (the two differ
    # only for 32-bit images whose values all lie under 256: auto scales them from 255, 16 from 65535)
    if recorded not in ("auto", 16) and launch_rank() == 0:  # a torchrun job says it once
        print(one_line(f"note: 16-bit images are read as {recorded}-bit (data.bit_depth={recorded}), as {weights} "
                       f"records: the scale its features were learnt at; give data.bit_depth=auto to read them at "
                       f"the full 16 bits."), file=sys.stderr, flush=True)
    return recorded


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


def train_linear_heads(feats: torch.Tensor, targets: torch.Tensor, num_classes: int, epochs: int = 300,
                       lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0) -> list[LinearHead]:
    """One head per token of [N, T, D] features, each as train_linear_head fits it alone on feats[:, t] (the same
    start, steps and seed), all T in one loop of batched products on feats' device: T separate 300-epoch fits on
    CPU features held up a GPU run's start. AdamW is elementwise and the summed losses give each head its own
    gradient, so stacking changes only the rounding."""
    n, t, dim = feats.shape
    device = feats.device
    seed_everything(seed)
    start = LinearHead(dim, num_classes)  # where each head alone starts: train_linear_head seeds just before it
    weight = start.fc.weight.detach().to(device).expand(t, -1, -1).clone().requires_grad_()  # [T, C, D]
    bias = start.fc.bias.detach().to(device).expand(t, -1).clone().requires_grad_()  # [T, C]
    norm = torch.nn.BatchNorm1d(t * dim, affine=False).to(device)  # per feature: each token's BN side by side
    opt = torch.optim.AdamW([weight, bias], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    flat, stacked = feats.reshape(n, t * dim), targets.to(device).repeat(t)  # head-major, as the logits below
    if n < 2:  # BatchNorm cannot take batch statistics of one image: centre on it, unit scale
        norm.running_mean.copy_(flat.mean(0))
        norm.eval()
    for _ in range(epochs):
        z = norm(flat).view(n, t, dim).transpose(0, 1)  # [T, N, D]
        logits = torch.baddbmm(bias.unsqueeze(1), z, weight.transpose(1, 2))  # [T, N, C]
        loss = F.cross_entropy(logits.reshape(t * n, num_classes), stacked, reduction="sum") / n  # sum of T means
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    heads = []
    for i in range(t):
        head = LinearHead(dim, num_classes).to(device).eval()
        with torch.no_grad():
            head.fc.weight.copy_(weight[i])
            head.fc.bias.copy_(bias[i])
            head.norm.running_mean.copy_(norm.running_mean.view(t, dim)[i])
            head.norm.running_var.copy_(norm.running_var.view(t, dim)[i])
            head.norm.num_batches_tracked.copy_(norm.num_batches_tracked)
        heads.append(head)
    return heads


def recalibrate_random_init(backbone, images, normalize, device: torch.device) -> None:
    """A random backbone's BatchNorm statistics (mean 0, var 1) describe no data: they are taken from the labelled
    train images first, as `train` does before a model.head_init (SupervisedTask.prepare_norm_statistics). Probe's
    random baseline scored those empty statistics and disagreed with train's."""
    from fewshot.eval.features import recalibrate_norm_statistics

    recalibrate_norm_statistics(backbone, images, normalize, device)


def random_note(backbone: torch.nn.Module, seed: int) -> str:
    """What the random baseline is, for probe's start line: which network, and whose BatchNorm statistics."""
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
    return f" (random init, seed {seed}{'; BatchNorm statistics of the train images' if has_bn else ''})"


def run_probe(weights: str | None, model_name: str, root: str | Path, img_size: int | None, device: torch.device,
              mode: str = "known", epochs: int = 300, datasets=None, head: str = "linear",
              skip_bad: bool = False, bit_depth: int | str = "auto", seed: int = 0, resize: str = "crop",
              resize_given: bool = True) -> dict:
    """Frozen-feature accuracy on val: a trained linear head ("linear") or, without any training, the
    cosine nearest class mean of standardised features ("prototype", SimpleShot). ``bit_depth``: data.bit_depth,
    as the features were learnt from (12-bit images probed at the 16-bit scale came out dark). A distilled model's
    two tokens are averaged into one head (see the module docstring: not model.head_init=probe's heads).
    ``seed``: the random initialisation (without weights) and the head's; unseeded, every baseline scored another
    random network. ``resize``: data.resize, auto decided per dataset as train decides it (data/fit.py); where
    not ``resize_given``, the choices ``weights`` records are taken as `train --weights` takes them."""
    from fewshot.data.fit import fit_of, settle_modes
    from fewshot.data.weights_resize import adopt_weights_resize, mark_weights_resize, note_weights_mismatch

    infos = scan_root(root, datasets, splits=("train", "val"))
    space = LabelSpace.from_infos(infos)
    # the model's name too: a file of another model brings nothing, and loading it names that model (probe
    # said "model.width / model.small_stem apply to timm ResNets", options it does not have)
    arch = backbone_options(adopt_weights_architecture({"name": model_name, "img_size": img_size, "weights": weights}))
    if weights:  # before the model is allocated: a small file naming a giant model is refused on its keys
        check_before_build(lambda: create_backbone(model_name, **arch), weights)
    seed_everything(seed)  # after check_before_build, which builds (and draws) too
    backbone = create_backbone(model_name, **arch)
    loaded = load_backbone_weights(backbone, weights, strict=True) if weights else None  # counts, for the line below
    size = input_size(backbone, arch["img_size"])
    check_input_size(backbone, size, model_name)
    backbone.to(device)
    normalize = Normalize(*mean_std(backbone)).to(device)
    cache = default_cache_dir(root, None)
    fitted = {"data": {"resize": resize, "root": str(root)}}  # its own record of auto's choices, as a run's config
    fitted["model"] = {"weights": weights, "img_size": size}  # the size bounds what auto pads, as train's does
    mark_weights_resize(fitted, resize_given)  # the --weights file's record, as `train --weights` takes it
    pending = adopt_weights_resize(fitted, infos)
    note_weights_mismatch(fitted, infos, pending, settle_modes(fitted, infos) if resize == "auto" else None)
    fit = fit_of(fitted, infos, root)
    train, val = load_splits(infos, ("train", "val"), space, size, cache, skip_bad=skip_bad, bit_depth=bit_depth,
                             resize=fit)
    padded = [i.name for i in infos if resize == "pad" or fitted.get("_resize", {}).get(i.name) == "pad"]
    # the size a weights file chose (an export records its own) was used without a word: `train` says it; and
    # how many of the model's weights the file gave, as `train` does (the file name alone did not say)
    print(one_line(f"probe: {model_name}{weights_note(loaded, weights) or random_note(backbone, seed)} at {size}px "
                   f"on {device}: {', '.join(space.names)}, {len(train)} train / {len(val)} val images"
                   f"{'; padded to a square (data.resize): ' + ', '.join(padded) if padded else ''}"), flush=True)
    if not weights:  # as train's prototype and probe head inits do, so that the two baselines agree
        recalibrate_random_init(backbone, train.images, normalize, device)
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
        classifier = train_linear_head(ftr, train.targets, space.num_classes, epochs=epochs, seed=seed)
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
