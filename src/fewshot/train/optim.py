"""What train.* and optim.* build for the training loop: the optimizer, the lr schedule and the autocast dtype.

Apart from the loop (engine.py) because `fewshot run`'s budget planning and the benchmarks build the same
objects without an Engine, and the loop re-builds the schedule when a stage's epoch cap rises.
"""

from __future__ import annotations

import torch

from fewshot.errors import UserError
from fewshot.runtime import CPU_BF16_MIN_SIZE, cpu_computes_bf16


def build_optimizer(cfg: dict, groups: list[dict]) -> torch.optim.Optimizer:
    """optim.name over the task's parameter groups (each with its own lr_scale and weight_decay)."""
    o = cfg["optim"]
    if o["name"] == "adamw":
        return torch.optim.AdamW(groups, lr=o["lr"], weight_decay=o["weight_decay"])
    if o["name"] == "sgd":
        return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"],
                               **_sgd_impl(o.get("fused", "auto"), groups))
    raise UserError(f"optim.name must be adamw or sgd, not {o['name']!r}")


def _sgd_impl(choice, groups: list[dict]) -> dict:
    """SGD kernel: ``fused`` (one pass per tensor: weight decay, momentum and the update together)
    where torch has it for these parameters, else torch's default. On CPU torch's default is the
    per-parameter for-loop (3-4 elementwise ops per tensor, a memory pass each); the fused kernel
    computes the same update (see tests/test_fast_path.py and docs/performance.md).
    optim.fused: auto (fused where supported) | true | false."""
    if choice in (False, "false", "off"):
        return {}
    params = [p for g in groups for p in g["params"]]
    ok = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16,
                                                                              torch.bfloat16) for p in params)
    if choice in (True, "true", "on") and not ok:
        raise UserError("optim.fused=true needs float32/16 parameters on cpu or cuda; use optim.fused=auto.")
    return {"fused": True} if ok else {}


def build_scheduler(cfg: dict, optimizer, steps_per_epoch: int):
    """timm's per-step schedule of train.epochs x steps_per_epoch steps: a cosine, or MoCo v1's step decay
    (moco.cos=false). Built again, never restored, on resume: its lr is a function of the config and the step."""
    from timm.scheduler import CosineLRScheduler

    s, epochs = cfg["sched"], cfg["train"]["epochs"]
    total = max(1, epochs * steps_per_epoch)
    warmup = int(round(s["warmup_epochs"] * steps_per_epoch))
    cosine = cfg.get("moco", {}).get("cos", True) if cfg.get("_task") == "moco" else True
    # sched.min_lr and warmup_lr are floors for the usual learning rates: a run asked for a smaller lr (a sweep
    # down to 1e-6) would otherwise see its lr climb from the peak to the floor along the cosine
    peak = min(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups)
    if not cosine:  # MoCo v1: step decay at 120/160 of 200 epochs
        from timm.scheduler import MultiStepLRScheduler

        # the steps that first run at a tenth and a hundredth of the peak. timm counts a milestone as passed at
        # t + 1 (so +1 here) and, by default, after the warmup (warmup_prefix: a 1-epoch warmup of a 2-epoch run
        # never decayed at all; of 100 steps with 10 of warmup, at steps 69 and 89)
        milestones = [int(total * 0.6), int(total * 0.8)]
        return MultiStepLRScheduler(optimizer, decay_t=[m + 1 for m in milestones], decay_rate=0.1, warmup_t=warmup,
                                    warmup_lr_init=min(s["warmup_lr"], peak), warmup_prefix=False, t_in_epochs=False)
    # a 1-step run gets the same lr from t_initial 2 (step 0 is the peak), without timm's "will have no effect" log
    return CosineLRScheduler(optimizer, t_initial=max(total, 2), lr_min=min(s["min_lr"], peak), warmup_t=warmup,
                             warmup_lr_init=min(s["warmup_lr"], peak), warmup_prefix=False, t_in_epochs=False)


def amp_dtype(cfg: dict, device: torch.device, img_size: int | None = None) -> torch.dtype | None:
    """The autocast dtype of training (None: fp32). ``auto``: bf16 on CUDA; on a CPU, bf16 only where the
    CPU computes it natively and the images are at least CPU_BF16_MIN_SIZE px, else fp32: smaller steps are
    not bound by convolution arithmetic and gain nothing. With ``model.small_stem`` a ResNet keeps twice
    the resolution through its stages, so its input counts double (32 px: 1.4-1.6x faster in bf16)."""
    amp = cfg["train"]["amp"]
    if amp in (False, None, "off", "false"):  # YAML reads `off` as false
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        stem = 2 if cfg.get("model", {}).get("small_stem") else 1
        big = img_size is not None and img_size * stem >= CPU_BF16_MIN_SIZE
        return torch.bfloat16 if device.type == "cpu" and big and cpu_computes_bf16() else None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    raise UserError(f"train.amp must be auto, bf16, fp16 or off, not {amp!r}")


AMP_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
AMP_BY_NAME = {name: dtype for dtype, name in AMP_NAMES.items()}
AMP_SETTINGS = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}  # the train.amp that gives each


def amp_to_choose(cfg: dict) -> None:
    """train.amp back to auto where the run's own config.yaml records it as the run's choice (config.CHOSEN, a
    --resume's settings): the resume then keeps its checkpoint's arithmetic as an auto run does
    (Engine.keep_resolved_amp, with its note), and record_amp records that again."""
    from fewshot.config import CHOSEN, same_value

    recorded = (cfg.get(CHOSEN) or {}).get("train.amp")
    if recorded is not None and same_value(recorded, cfg["train"]["amp"]):
        cfg["train"]["amp"] = "auto"


def record_amp(cfg: dict, amp: torch.dtype | None) -> bool:
    """train.amp=auto replaced by what it resolved to (``amp``) and recorded as chosen, as train.device is:
    config.yaml kept `auto`, and the file given back as --config on a CPU without native bf16 (or with
    FEWSHOT_CPU_BF16=0) trained in fp32 without a word. Returns whether it recorded."""
    from fewshot.config import note_chosen

    if cfg["train"]["amp"] != "auto":
        return False
    cfg["train"]["amp"] = AMP_SETTINGS[amp]
    note_chosen(cfg, "train.amp")
    return True
