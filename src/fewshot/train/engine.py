"""One training loop for fine-tuning and MoCo pretraining.

The loop owns devices, DDP, AMP, gradient clipping, EMA, the lr schedule, checkpoints, exact
resume, non-finite guards, logging and progress. A task object supplies what differs:

    task.model                       the nn.Module to train (unwrapped)
    task.param_groups()              [{"params": [...], "lr_scale": x, "weight_decay": y}, ...]
    task.plan_epoch(epoch)           this rank's index batches (pure function of seed and epoch)
    task.make_batch(idx, epoch, s)   the batch on the device (augmentation seeded by epoch, step)
    task.training_step(model, b)     (loss, {metric: float tensor}, n_samples)
    task.evaluate(model, epoch)      {"score": x, ...} on the main rank, or None
    task.checkpoint_extra()          plain data saved with every checkpoint
    task.resume_only_extra           keys of checkpoint_extra() that only last.pt keeps, optional
    task.kind, task.supports_ema, task.drop_last
    task.size                        input side in px, optional: train.amp=auto reads it on a CPU

Resume is exact because batches and augmentations depend only on (seed, epoch, step) and the
global RNG state (drop-path, dropout) and the running sums of the epoch's logged means are saved
with each checkpoint. The lr is recomputed from the config and global_step, so `--resume --epochs N`
with a larger N extends the schedule.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

from fewshot.errors import UserError, one_line
from fewshot.progress import track
from fewshot.run_state import is_run_stage
from fewshot.runtime import (CPU_BF16_MIN_SIZE, compile_failure_text, compile_remedy, compiled_modules,
                             cpu_computes_bf16, cpu_fp16_warning, is_compile_failure, uncompile)
from fewshot.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from fewshot.train.distributed import (DistContext, all_gather_object, all_reduce_max, all_reduce_mean, barrier,
                                      broadcast_object, check_same_image_counts)
from fewshot.train.stop_signal import StopRequested, stop_on_signals
from fewshot.utils import atomic_write_text, derive_seed, keep_copy, put_back, unshare_hard_link, write_json


TIMING_KEYS = ("images_per_s", "epoch_time_s", "eval_time_s")  # measurements, not results
_TOLD_TENSORBOARD: set[str] = set()  # the reasons a missing TensorBoard was already told in this process
_TOLD_CPU_FP16: list[bool] = []  # whether the train.amp=fp16-on-a-CPU warning was given in this process
BEST_ASIDE = "best_before_stop.pt"  # best.pt as it was before a budget stop's partial epoch beat it
CAP_SLACK = 0.1  # of a `fewshot run` stage's budget: left at its epoch cap, more raises the cap (_extend_cap)
LATE_POSITION = 0.95  # the schedule's position past which a stage's cap is not raised (_extend_cap)
WARMUP_PEAK_OK = 0.9  # a warmup as long as the run whose last step trains at this share of optim.lr or more: no word


def add_note(exc: BaseException, text: str) -> None:
    """``exc.add_note(text)``, which Python 3.10 lacks (fewshot allows it): there the words go to stderr, so that the
    error a user sees still says what happened before it."""
    if hasattr(exc, "add_note"):
        exc.add_note(text)
    else:
        print(text, file=sys.stderr, flush=True)


class NonFiniteLossError(UserError):
    """Training diverged; the last good checkpoint is kept."""


class CompileFailedError(UserError):
    """torch.compile failed while training where the step cannot be redone eagerly (DDP): the backward graph, which
    compiles inside loss.backward(), or a check in the compiled code."""


def build_optimizer(cfg: dict, groups: list[dict]) -> torch.optim.Optimizer:
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


def empty_epoch_error(task, cfg: dict, world: int) -> UserError:
    """Why an epoch plan holds no batch, and what the user can change."""
    bs = cfg["train"]["batch_size"]
    if task.kind == "moco":
        of = f"{bs * world} ({bs} per process x {world} processes)" if world > 1 else f"{bs}"
        fewer = ", run on fewer processes" if world > 1 else ""
        return UserError(f"the unlabeled pool has {len(task.pool)} images, fewer than one batch of {of} "
                         f"(MoCo drops an incomplete batch): lower --batch-size (`fewshot run`: "
                         f"run.pretrain_batch_size=N){fewer} or add images to the pool.")
    if bs < 2:
        return UserError(f"--batch-size {bs}: BatchNorm needs at least 2 images per batch in training; use 2 or more.")
    return UserError(f"{len(task.train_set)} training images give no batch of at least 2 images per process "
                     f"({world} process(es)): add training images or run on fewer processes.")


def check_same_world(path: Path, ck: dict, world: int) -> None:
    """A run resumes only on the number of processes that wrote it: steps per epoch, the global batch and the
    schedule's length all depend on it."""
    saved = int(ck.get("world", world))
    if saved != world:
        head = (f"{path} was written by a run on {saved} process(es); resume it on {saved} in all "
                f"(nnodes x nproc_per_node: `torchrun --nproc_per_node={saved} ...` on one machine"
                f"{', or without torchrun' if saved == 1 else ''}). "
                f"On {world} the epoch plan differs: the learning-rate schedule would jump and "
                f"a mid-epoch stop would skip or repeat batches.")
        if "joint_moco" in ck and world > 1:  # the advice below would lead to a refusal
            raise UserError(f"{head} (semi.method=moco, its joint MoCo loss, runs on one process only.)")
        raise UserError(f"{head} To continue on {world}, start a "
                        f"new run from this one's weights (`--weights {path}`), with a new schedule and optimizer"
                        + (": `train --weights` takes the pretrained-backbone recipe (lr 1e-4, backbone x0.1) unless "
                           "--lr and optim.backbone_lr_mult repeat the run's config.yaml."
                           if ck.get("kind") == "supervised" else "."))


def check_resume_fits(path: Path, ck: dict, kind: str, world: int) -> None:
    """What a checkpoint must be before its content is compared with the run's: of the task's kind and written
    on this many processes (Engine.resume, and start_job's before the task is built: its settings checks answered
    another process count with advice that leads nowhere, and run_finetune's said "trained on 999 training images"
    of a moco last.pt)."""
    if ck.get("kind") != kind:
        raise UserError(f"{path} is a {ck.get('kind')} checkpoint; cannot resume a {kind} run from it.")
    check_same_world(path, ck, world)


def agree_on_checkpoint(ctx, path: Path, ck: dict | None, unreadable: Exception | None = None) -> None:
    """Every rank resumes from the same last.pt, or none does. Each reads it from its own --out: on nodes with
    node-local disks a rank that saw no last.pt started from scratch beside rank 0's resume, and the ranks'
    collectives met out of step (gloo: "collective mismatch"; nccl: a hang). Called by every rank together (by
    Engine.resume, and by finetune.start_job before its own checks of the file)."""
    if not ctx.enabled:
        return
    # the training time it was written at tells apart two files of one global step (copies of other sessions).
    # Built so that it cannot raise on one rank alone (the others would wait in the gather), and compared as text
    # (a NaN read back is unequal to itself: identical files looked different)
    try:
        view = (("unreadable", str(unreadable)) if unreadable is not None else None if ck is None else
                (int(ck.get("global_step") or 0), repr(float(ck.get("train_seconds") or 0.0))))
    except (TypeError, ValueError, OverflowError) as exc:
        view = ("unreadable", f"global_step or train_seconds is no number: {exc}")
    seen = all_gather_object(ctx, view)
    if len(set(seen)) == 1:
        return  # the same view everywhere (an unreadable file: each rank raises its own error next)
    views: dict = {}
    for rank, view in enumerate(seen):
        views.setdefault(view, []).append(str(rank))
    steps = [view[0] for view in views if view is not None]

    def said_of(view) -> str:
        if view is None:
            return "no last.pt"
        if view[0] == "unreadable":
            return f"an unreadable last.pt ({view[1]})"
        step, seconds = view
        return f"last.pt at global step {step}" + (f" after {float(seconds):.1f} s of training"
                                                    if steps.count(step) > 1 else "")

    said = "; ".join(f"rank{'s' if len(ranks) > 1 else ''} {', '.join(ranks)}: {said_of(view)}"
                     for view, ranks in views.items())
    raise UserError(f"--resume: the processes do not see the same checkpoint {path} ({said}). --out must be a "
                    f"folder on storage that every node shares: each process reads last.pt from it and rank 0 "
                    f"alone writes it. Put the run on a shared file system (or copy it to the same path on "
                    f"every node) and resume again.")


def image_counts(task) -> dict[str, int]:
    """The images a task decoded and trains on, which every rank's epoch plan is built from."""
    counts = {split: len(getattr(task, f"{split}_set")) for split in ("train", "val") if hasattr(task, f"{split}_set")}
    pool = getattr(task, "pool", None)  # MoCo's unlabeled pool
    if pool is None and getattr(task, "unlabeled", None) is not None:  # FixMatch's
        pool = task.unlabeled.images
    if pool is not None:
        counts["unlabeled"] = len(pool)
    return counts


class Engine:
    def __init__(self, task, cfg: dict, run_dir: Path, device: torch.device, ctx: DistContext):
        self.task, self.cfg, self.run_dir, self.device, self.ctx = task, cfg, Path(run_dir), device, ctx
        self.ckpt_dir = self.run_dir / "checkpoints"
        check_same_image_counts(ctx, image_counts(task))  # before DDP's first collective: a mismatch hung there
        self.model = task.model.to(device)
        self.train_model: nn.Module = self.model
        if ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            import inspect

            # no buffer broadcast in forward (BatchNorm statistics stay per rank; the MoCo queue is kept equal by
            # the gathered keys); torch >= 2.13 names it forward_sync_buffers and warns on broadcast_buffers
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                       else {"broadcast_buffers": False})
            self.train_model = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)
        self.optimizer = build_optimizer(cfg, task.param_groups())
        self.steps_per_epoch = len(task.plan_epoch(0))
        if self.steps_per_epoch == 0:
            raise empty_epoch_error(task, cfg, ctx.world)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self._warn_long_warmup()
        self.amp = amp_dtype(cfg, device, getattr(task, "size", None))
        if ctx.enabled:  # each rank detects its own CPU: on a mixed cluster they would gather keys of two dtypes
            self.amp = AMP_BY_NAME[broadcast_object(ctx, AMP_NAMES[self.amp])]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self._warn_cpu_fp16()
        # modules the task compiled (train.compile): their backward graphs compile inside loss.backward() (the first
        # step's, and again after a recompile), which suppress_errors does not cover, and inductor's generated code
        # can fail there too: while modules are compiled, each step keeps what it needs to be redone eagerly
        self._compiled = compiled_modules(self.model)
        self.ema = None
        t = cfg["train"]
        if t["ema"] and task.supports_ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=t["ema_decay"], use_warmup=t["ema_warmup"], device=device)
            self._warn_slow_ema()
        self.best_weights = "ema" if self.ema is not None else "raw"  # the set best.pt holds (see _evaluate)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_score, self.last_eval = -math.inf, None
        self.best_before_stop: float | None = None  # the best score before a partial epoch's evaluation beat it
        self._sched_floor = 0.0  # the schedule's position when a `fewshot run` stage's epoch cap rose (_extend_cap)
        self._cap_unsaved = False  # a raised cap not yet in last.pt and config.yaml (_raise_cap)
        self._eval_took: float | None = None  # seconds of the last evaluation (_eval_interval_wanted)
        self._judged_step_s = 0.0  # the step time the last cap check judged at (_cap_wanted)
        self._speed_mark: tuple[float, int] | None = None  # (clock, global_step) at the last cap check
        self.nonfinite_skipped = 0
        self.step_redone: str | None = None  # why the current step ran eagerly (its compiled run failed), if it did
        self.epoch_skips_start = 0  # nonfinite_skipped when the current epoch began
        self._saved_step: int | None = None  # global step of the last.pt this process wrote last
        self._saved_at = -math.inf  # when (perf_counter) last.pt was written last: the first epoch end always saves
        self.epoch_record: dict | None = None  # the log row an epoch-end last.pt carries
        # Running per-epoch metric sums, checkpointed so that a mid-epoch resume logs whole-epoch means.
        self.epoch_sums: dict[str, float] = {}
        self.epoch_steps = 0
        # and the epoch's training seconds and images before this session's steps in it (a resumed epoch's row
        # counted the steps after the resume only, and the report's training time came short); _epoch_t0: when
        # this session's steps in it began (perf_counter), None outside the step loop
        self.epoch_seconds, self.epoch_images = 0.0, 0
        self._epoch_t0: float | None = None
        self.writer = None
        self._stop_flag = None  # set while fit() runs: a SIGTERM/SIGINT asks for a stop after the step
        self._stop_signum = 0
        self._seconds_before = 0.0  # training time of the sessions before this one (resume)
        self.fit_start: float | None = None
        self._clock_start: float | None = None

    def _warn_long_warmup(self) -> None:
        """A warmup as long as the run, or longer, never lets the lr reach optim.lr: sched.warmup_epochs=100 with
        --epochs 2 trained at a 50th of it, and the default 1-epoch warmup of a 1-epoch run peaked at 75 %, without
        a word. The peak said is the schedule's own lr at the run's last step (a warmup of W steps reaches
        (steps - 1) / W of the way up), not epochs / warmup_epochs. A peak of WARMUP_PEAK_OK or more is left
        unsaid, whoever set the warmup: a last step that short of optim.lr changes little (the default warmup of a
        plain `train --epochs 1` on the demo data reaches 96 %, and was warned about). A time-based schedule
        (`fewshot run`) is left out: its epochs are a cap, not the run's length."""
        warmup, epochs = float(self.cfg["sched"].get("warmup_epochs") or 0.0), self.cfg["train"]["epochs"]
        total = max(1, epochs * self.steps_per_epoch)
        warmup_steps = int(round(warmup * self.steps_per_epoch))  # as build_scheduler counts them
        if not self.ctx.is_main or warmup_steps < total or warmup_steps == 0 or self.cfg["sched"].get("time_based"):
            return
        # the lr timm's schedule gives the last step, as a share of the first group's optim.lr (what log.jsonl says)
        peak = self.scheduler._get_lr(total - 1)[0] / self.scheduler.base_values[0]
        if round(peak, 6) >= WARMUP_PEAK_OK:  # 9 steps of 10 may come out as 0.8999999
            return
        than = "longer than" if warmup_steps > total else "as long as"
        print(f"warning: sched.warmup_epochs={warmup:g} is {than} the run's {epochs} epoch(s) ({total} steps): the "
              f"learning rate climbs for the whole run and never reaches optim.lr (the last step trains at "
              f"{f'{peak:.0%}' if peak >= 0.01 else 'under 1%'} of it). Lower sched.warmup_epochs or raise --epochs.",
              flush=True)

    def _warn_slow_ema(self) -> None:
        """An EMA without decay warm-up averages over about 1/(1 - decay) steps (25,000 at the default 0.99996): on a
        run with fewer optimizer steps it stays near the random initial weights, and a 32-step run was scored at
        chance (val 10.0 at every epoch while the train accuracy climbed), without a word. Told once, at the start
        (best.pt falls back to the raw weights when they score higher, but the EMA's evaluations are wasted)."""
        t = self.cfg["train"]
        decay = float(t["ema_decay"])
        total = max(1, int(t["epochs"]) * self.steps_per_epoch)
        # a time-based schedule (`fewshot run`) plans 4x the epochs that fit as a cap: about a quarter of them run
        planned = (f"about {max(1, total // 4):,}, a quarter of its cap of {t['epochs']} epoch(s) x "
                   f"{self.steps_per_epoch} steps" if self.cfg["sched"].get("time_based") else
                   f"{total:,} ({t['epochs']} epoch(s) x {self.steps_per_epoch} steps)")
        if self.cfg["sched"].get("time_based"):
            total = max(1, total // 4)
        if t["ema_warmup"] or not self.ctx.is_main or decay <= 0.0 or 1.0 / (1.0 - decay) <= total:
            return
        print(one_line(f"warning: train.ema_warmup=false with train.ema_decay={decay:g} averages the weights over "
                       f"about {1.0 / (1.0 - decay):,.0f} optimizer steps, more than this run's {planned}"
                       f": the EMA stays close to the "
                       f"initial weights and scores near chance. Set train.ema_warmup=true (the default), a smaller "
                       f"train.ema_decay, or train.ema=false; meanwhile best.pt keeps the raw weights wherever they "
                       f"score higher."), file=sys.stderr, flush=True)

    def _warn_cpu_fp16(self) -> None:
        """train.amp=fp16 on a CPU was accepted without a word and trained ~15x slower than fp32: said once a
        process (`fewshot run` builds an Engine per stage)."""
        text = cpu_fp16_warning(self.amp, self.device)
        if text and self.ctx.is_main and not _TOLD_CPU_FP16:
            _TOLD_CPU_FP16.append(True)
            print(text, file=sys.stderr, flush=True)

    # ----------------------------------------------------------------- checkpoints
    def payload(self) -> dict:
        return {
            "kind": self.task.kind,
            "config": self.cfg,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,  # the report's fraction of a first epoch stopped part-way
            "best_score": self.best_score, "last_eval": self.last_eval, "best_before_stop": self.best_before_stop,
            "nonfinite_skipped": self.nonfinite_skipped, "epoch_skips_start": self.epoch_skips_start,
            "epoch_record": self.epoch_record,
            "epoch_sums": dict(self.epoch_sums), "epoch_steps": self.epoch_steps,
            "epoch_seconds": self.epoch_seconds_so_far(), "epoch_images": self.epoch_images,
            "rng": rng_state(),
            "train_seconds": self.train_seconds(),
            "sched_floor": self._sched_floor,  # a resumed stage whose cap rose keeps its lr (_extend_cap)
            "epochs_cap": self.cfg["train"]["epochs"],  # ... and its cap, with last.pt's floor (resume)
            "eval_every": self.task.eval_every,  # ... and the evaluation interval re-spaced after its raise
            "amp": AMP_NAMES[self.amp],  # what train.amp resolved to: a resumed `auto` run keeps it
            "world": self.ctx.world,  # the batch plan (per-rank batches, steps per epoch) depends on it
            **self.task.checkpoint_extra(),
        }

    def save_mid_epoch(self, checked: bool = False) -> None:
        """last.pt inside an epoch, on every rank together (a stop, --save-every-steps): under DDP it carries each
        rank's running metric sums, or the resumed epoch's log row would average rank 0's on every rank. The
        epoch-end saves need not agree across ranks (rank 0 alone times them), so they gather nothing. ``checked``:
        the weights were just checked (a budget stop's save, after its partial epoch's check)."""
        if not checked:
            self._check_weights_finite(self.epoch)  # every checkpoint on disk has passed the check
        by_rank = all_gather_object(self.ctx, dict(self.epoch_sums)) if self.ctx.enabled else None
        self.save("last", epoch_sums_by_rank=by_rank)

    def save(self, name: str = "last", epoch_sums_by_rank: list | None = None) -> None:
        """last.pt holds everything resume needs; best.pt only what evaluation and --weights read (no
        optimizer state, nor the task's resume_only_extra: half the bytes, and it is written at every new best
        score). Nothing resumes from best.pt: a budget stop's kept-aside copy only replaces best.pt again."""
        if self.ctx.is_main:
            path = self.ckpt_dir / f"{name}.pt"
            payload = self.payload()
            if epoch_sums_by_rank is not None:
                payload["epoch_sums_by_rank"] = epoch_sums_by_rank
            if name != "last":
                payload["optimizer"] = None
                payload["weights"] = self.best_weights  # what eval, predict, export and --weights read from it
                if self.best_weights == "raw":  # the raw weights scored higher: they are the ones its readers take
                    payload["ema"] = None
                for key in getattr(self.task, "resume_only_extra", ()):  # the joint MoCo loss's key encoder, queue
                    payload.pop(key, None)
            try:
                save_checkpoint(path, payload)
                if name == "last":
                    self._saved_step = self.global_step
                    self._saved_at = time.perf_counter()
                    if self._cap_unsaved:  # after last.pt: config.yaml's cap never runs ahead of last.pt's floor
                        from fewshot.config import save_yaml

                        save_yaml(self.cfg, self.run_dir / "config.yaml")
                        self._cap_unsaved = False
            except OSError as exc:  # disk full, quota, read-only remount: the previous file is intact
                raise UserError(f"cannot write the checkpoint {path}: {exc.strerror or exc}. The previous "
                                f"checkpoint (if any) is intact; free space and continue with --resume.") from None

    def checkpoint_bytes(self) -> int:
        """Size of one checkpoint, as last.pt (the largest) holds it: model (+ EMA) state, the optimizer's
        per-parameter state and the task's state outside the model (the joint MoCo loss's projection head, key
        encoder and queue: +55 % for test_resnet, which the disk-space check left out)."""
        state = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        params = sum(p.numel() * p.element_size() for g in self.optimizer.param_groups for p in g["params"])
        slots = 1 if self.cfg["optim"]["name"] == "sgd" else 2  # SGD momentum; AdamW exp_avg + exp_avg_sq
        task = sum(t.numel() * t.element_size() for t in self._trained_outside_model() + self._task_state_tensors())
        return state * (2 if self.ema is not None else 1) + params * slots + task

    def check_disk_space(self) -> None:
        """Fail before training when the run folder cannot hold last.pt + best.pt + a temp copy, and with a budget
        also the best.pt that a budget stop keeps aside (BEST_ASIDE); or when its file system has too few free
        inodes left for the files a run writes."""
        import errno
        import shutil
        import tempfile

        if not self.ctx.is_main:
            return
        budget = bool(self.cfg["train"].get("budget_minutes"))
        names = ("last.pt", "best.pt", BEST_ASIDE)
        have = sum(p.stat().st_size for p in (self.ckpt_dir / n for n in names) if p.is_file())
        need = (4 if budget else 3) * self.checkpoint_bytes() - have + (1 << 20)
        try:
            free = shutil.disk_usage(self.run_dir).free
        except OSError:
            return
        if free < need:
            raise UserError(f"not enough free space for the checkpoints in '{self.run_dir}': about "
                            f"{need / 2**20:.1f} MiB needed (last.pt, best.pt, a temporary copy"
                            f"{' and the best.pt a budget stop keeps aside' if budget else ''}), "
                            f"{free / 2**20:.1f} MiB free. Free some space or choose another --out.")
        # inodes too: a file system out of them (a tmpfs's nr_inodes, many small files) failed after epoch 1 with
        # "No space left on device" while df showed room. A run writes about run_files files and folders
        # (checkpoints, temporary copies, metrics, logs, plots); those there are only replaced. f_files 0: no limit
        run_files = 24
        try:
            vfs = os.statvfs(self.run_dir)
            there = sum(1 for _ in zip(range(run_files), self.run_dir.rglob("*")))
        except (OSError, AttributeError):  # no statvfs (Windows), or the folder unreadable: the writes will say
            return
        need_files = max(run_files - there, 0) + 2
        # root may use the inodes reserved for it (f_ffree); others only f_favail
        left = vfs.f_ffree if getattr(os, "geteuid", lambda: -1)() == 0 else vfs.f_favail
        if not vfs.f_files or left >= need_files:
            return
        # a FUSE or network file system may count inodes it does not track (f_files set, f_favail 0): refused
        # on every train. Only files that cannot be made are believed: as many as the run needs, removed again,
        # named as atomic writes' temp files (remove_stale_temp_files clears those a kill left)
        made: list[str] = []
        try:
            for _ in range(need_files):
                fd, name = tempfile.mkstemp(prefix=".inode-probe.", suffix=".tmp", dir=self.run_dir)
                made.append(name)
                os.close(fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # not the inodes (a permission): the writes will say
                return
            raise UserError(f"no room for the run's files in '{self.run_dir}': its file system has "
                            f"{left} free inodes (file entries) left, and a run writes about {need_files} "
                            f"more (checkpoints, metrics, logs), though {free / 2**20:.1f} MiB are free: a new "
                            f"file could not be made there ({exc.strerror or exc}). Delete some files on that file "
                            f"system or choose another --out.") from None
        finally:
            for name in made:
                with contextlib.suppress(OSError):
                    os.unlink(name)

    def resume(self) -> bool:
        path = self.ckpt_dir / "last.pt"
        try:
            ck, unreadable = (load_checkpoint(path) if path.is_file() else None), None
        except (UserError, OSError) as exc:  # said after the other ranks heard of it: alone, they waited
            ck, unreadable = None, exc
        self._agree_on_checkpoint(path, ck, unreadable)
        if unreadable is not None:
            raise unreadable
        if ck is None:
            return False
        check_resume_fits(path, ck, self.task.kind, self.ctx.world)
        self._check_same_config(ck)
        self.task.load_checkpoint_extra(ck)  # the classes first: a mismatch is a clear error, not a shape error
        from fewshot.models.classifier import check_head_count

        check_head_count(self.model, ck.get("model"), path, self.cfg["model"]["name"])  # before torch's shape error
        self._check_epochs_left(int(ck["epoch"]))  # after the checks above, as before; before any file changes
        try:
            self.model.load_state_dict(ck["model"])
            if self.ema is not None and ck.get("ema") is not None:
                self.ema.module.load_state_dict(ck["ema"])
            self.optimizer.load_state_dict(ck["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"{path} does not fit the model that the run's settings build (torch: "
                            f"{str(exc).strip().splitlines()[0]}): it may be from another fewshot version or have "
                            f"been altered. Start a new run from its weights with another --out (--weights {path})."
                            ) from None
        # The scheduler is not restored: its lr is a pure function of the config and global_step
        # (step_update), and its saved state would pin the old run length, so that `--resume --epochs N`
        # with a larger N trained the extra epochs at min_lr (0 for the MoCo presets).
        self._keep_resolved_amp(ck.get("amp"))
        if ck.get("scaler"):  # a bf16/fp32 run saved a disabled scaler's empty state (amp may change on resume)
            self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        self.best_score, self.last_eval = ck["best_score"], ck.get("last_eval")
        self.best_before_stop = ck.get("best_before_stop")
        self.nonfinite_skipped = ck.get("nonfinite_skipped", 0)
        self.epoch_skips_start = ck.get("epoch_skips_start", self.nonfinite_skipped)
        by_rank = ck.get("epoch_sums_by_rank")
        sums = by_rank[self.ctx.rank] if by_rank and len(by_rank) == self.ctx.world else ck.get("epoch_sums")
        self.epoch_sums, self.epoch_steps = dict(sums or {}), int(ck.get("epoch_steps", 0))
        # a checkpoint written before they were carried: the row counts this session's steps only, as it did
        self.epoch_seconds = float(ck.get("epoch_seconds") or 0.0)
        self.epoch_images = int(ck.get("epoch_images") or 0)
        gpus_note = set_rng_state(ck["rng"])
        if gpus_note and self.ctx.is_main:
            print(gpus_note, flush=True)
        self._seconds_before = float(ck.get("train_seconds", 0.0))
        self._sched_floor = float(ck.get("sched_floor") or 0.0)
        cap = ck.get("epochs_cap")  # a raised cap whose config.yaml write a crash cut off (_raise_cap)
        if is_run_stage(self.run_dir) and isinstance(cap, int) and cap > self.cfg["train"]["epochs"]:
            self.cfg["train"]["epochs"] = cap
            self.scheduler = build_scheduler(self.cfg, self.optimizer, self.steps_per_epoch)  # built for the cap
        every = ck.get("eval_every")  # re-spaced after a raise: the planned interval evaluated every epoch again
        if is_run_stage(self.run_dir) and self._sched_floor > 0 and isinstance(every, int) and every > 0:
            self.task.eval_every = max(int(self.task.eval_every), every)
        # a budget that stopped the run mid-epoch logged the partial epoch; its steps go on now, and the
        # finished epoch's row replaces that one (log.jsonl held epoch 22 three times)
        reopened = self.step_in_epoch > 0 and not self._budget_spent()
        if reopened and self.best_before_stop is not None:
            self._drop_stop_best(ck["global_step"])
        if self.ctx.is_main:
            self.trim_log(ck.get("epoch_record"), reopened=reopened)
            for tmp in self.ckpt_dir.glob(".*.pt.*.tmp"):  # left by a kill during a checkpoint write
                tmp.unlink(missing_ok=True)
            if self.best_before_stop is None and (self.ckpt_dir / BEST_ASIDE).is_file():
                # a kill between a budget stop's best.pt and its last.pt: this older last.pt's best is that one
                put_back(self.ckpt_dir / BEST_ASIDE, self.ckpt_dir / "best.pt")
        return True

    def _check_epochs_left(self, done: int) -> None:
        """--epochs below the epochs the run already trained is refused before resume changes any file: refused
        after it, log.jsonl had been trimmed and the best.pt a budget stop kept aside put back, for nothing."""
        epochs = self.cfg["train"]["epochs"]
        if done > epochs:
            raise UserError(f"the run being resumed has already trained {done} epochs; --epochs {epochs} would train "
                            f"nothing. Give more epochs than {done} to continue it, or leave --epochs out to keep its "
                            f"plan{self._planned_epochs()}.")

    def _agree_on_checkpoint(self, path: Path, ck: dict | None, unreadable: Exception | None = None) -> None:
        agree_on_checkpoint(self.ctx, path, ck, unreadable)

    def _check_same_config(self, ck: dict) -> None:
        """A resume continues the run as its checkpoint was configured: settings that differ now, beyond what
        --resume may change, are refused as merge_resume_config refuses them on the command line. An edited
        config.yaml (another optim.lr, augmentation, model.name) was used silently, or ended in a load_state_dict
        traceback. model.weights is not compared: last.pt's weights replace the file, which a resumed `fewshot run`
        stage finds where the run folder is now. A deleted config.yaml is said as such: "edited since" named a
        file that does not exist."""
        from fewshot.config import flatten_dotted
        from fewshot.train.finetune import resume_changes, resume_refused, settings_lost

        then, now = (flatten_dotted(c) for c in (ck.get("config") or {}, self.cfg))
        now = {k: v for k, v in now.items() if not k.startswith("_") and k != "model.weights"}
        changed = resume_changes(then, now)
        if changed and not os.path.lexists(self.run_dir / "config.yaml"):
            raise settings_lost(self.run_dir, self.cfg, "is missing")
        if changed:
            raise resume_refused(self.run_dir, self.cfg, f"its config.yaml (edited since {self.ckpt_dir / 'last.pt'} "
                                 f"was written)", changed, "Restore those settings in config.yaml")

    def _drop_stop_best(self, stop_step: int) -> None:
        """Resume reopens an epoch that a budget stop evaluated part-way and whose score made best.pt: that
        evaluation's log row is dropped (the epoch is redone and logged whole), so its best.pt and best score go
        too, and the best.pt it replaced comes back (kept aside by _set_best_aside). The run then goes on as if it
        had never stopped: log.jsonl, best.pt and metrics.json all describe evaluations of the finished epochs.
        last.pt names the stop's best until its next save: a resume that ends before then (an error, a kill) leaves
        it for the next one, so best.pt is touched only while it is the stop's (of ``stop_step``); the first
        resume's restored best.pt was deleted by the second as if the stop's evaluation had been the first best."""
        best, aside = self.ckpt_dir / "best.pt", self.ckpt_dir / BEST_ASIDE
        first_best = self.best_before_stop == -math.inf
        if not first_best and not aside.is_file() and self._best_step(best) == stop_step:
            self.best_before_stop = None  # the old best.pt is gone (removed by hand): the stop's evaluation stays
            return
        self.best_score, self.best_before_stop = self.best_before_stop, None
        if self.ctx.is_main and self._best_step(best) == stop_step:
            if first_best:
                best.unlink(missing_ok=True)
            else:
                put_back(aside, best)

    @staticmethod
    def _best_step(best: Path) -> int | None:
        """The global step of a best.pt (None: none, or unreadable)."""
        try:
            return int(load_checkpoint(best)["global_step"]) if best.is_file() else None
        except Exception:  # noqa: BLE001 - an unreadable best.pt is not the stop's: it is left as it is
            return None

    def _set_best_aside(self) -> None:
        """A budget stop part-way through an epoch evaluates that partial epoch; when it scores a new best, the
        best.pt it replaces is kept as BEST_ASIDE, since a resume that reopens the epoch takes that evaluation back
        (_drop_stop_best). best.pt stays in place until save("best") replaces it: it was renamed aside first, and
        an `eval` or `predict` of the run in that moment found no best.pt."""
        self.best_before_stop = self.best_score
        if self.ctx.is_main:
            best, aside = self.ckpt_dir / "best.pt", self.ckpt_dir / BEST_ASIDE
            if best.is_file():
                keep_copy(best, aside)
            else:
                aside.unlink(missing_ok=True)

    def _keep_resolved_amp(self, saved: str | None) -> None:
        """With ``train.amp=auto`` a resumed run computes as it started, even where this machine (another host,
        FEWSHOT_CPU_BF16) would choose otherwise: resume then continues the same arithmetic. An explicit
        train.amp is the user's change and wins."""
        if saved not in AMP_BY_NAME or self.cfg["train"]["amp"] != "auto" or AMP_BY_NAME[saved] == self.amp:
            return
        if self.ctx.is_main:
            print(f"note: the run started in {saved} (train.amp=auto) and continues in it, though this machine would "
                  f"choose {AMP_NAMES[self.amp]}; set train.amp=bf16 or off to change it.", flush=True)
        self.amp = AMP_BY_NAME[saved]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)

    def _budget_spent(self) -> bool:
        budget = self.cfg["train"].get("budget_minutes")
        # the tolerance: `fewshot run` gives a stage with no time left budget_minutes = trained / 60, and
        # (trained / 60) * 60 comes out a few ulp above `trained` for some values
        return bool(budget) and self._seconds_before >= budget * 60 - 1e-6

    def trim_log(self, epoch_record: dict | None = None, reopened: bool = False) -> None:
        """Make log.jsonl match the resumed checkpoint: rows past its global step are dropped (those steps are
        redone and logged again), a line cut short by a kill is dropped, and the row of the epoch the checkpoint
        ends is added when the kill came between the checkpoint and the log write. ``reopened``: the resumed
        checkpoint lies inside an epoch that was logged as a partial one (a budget stop): that row goes too."""
        from fewshot.utils import loads_run_json

        partial = self.epoch + 1 if reopened else None
        path = self.run_dir / "log.jsonl"
        lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
        keep, steps = [], set()
        for line in lines:
            try:
                row = loads_run_json(line)
                step = int(row.get("step", 0)) if isinstance(row, dict) else None
            except (ValueError, TypeError, OverflowError):  # a torn or too deeply nested line, or a step not a number
                continue
            if step is not None and step <= self.global_step and row.get("epoch") != partial:
                keep.append(line)
                steps.add(step)
        if epoch_record is not None and epoch_record.get("step") not in steps and epoch_record.get("epoch") != partial:
            keep.append(json.dumps(epoch_record))
        if keep != lines:
            atomic_write_text(path, "".join(f"{line}\n" for line in keep))

    # ----------------------------------------------------------------- logging
    def log(self, record: dict) -> None:
        if not self.ctx.is_main:
            return
        path = self.run_dir / "log.jsonl"
        unshare_hard_link(path)  # a hard-linked copy of a run must not append to the original's log
        with open(path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        self._add_scalars(record)

    def _add_scalars(self, record: dict) -> None:
        if self.writer is not None:
            step = record.get("epoch", 0)
            for k, v in _flatten(record).items():
                if isinstance(v, (int, float)) and k not in ("epoch",) and v is not None and math.isfinite(v):
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def _open_tensorboard(self, redo: bool = True) -> None:
        """A resumed run purges the events from its checkpoint's epoch on (the steps after the checkpoint are
        redone, and TensorBoard would draw both copies as a zig-zag) and writes that epoch's row of the trimmed
        log.jsonl again, so the event file shows what log.jsonl holds. ``redo=False``: nothing is redone (the
        evaluation of a budget stop): every row of the trimmed log.jsonl from that epoch on is written again."""
        if self.ctx.is_main and self.cfg["train"]["tensorboard"]:
            resumed = self.global_step > 0
            try:
                from torch.utils.tensorboard import SummaryWriter

                if resumed:
                    wait_for_a_later_event_file_second(self.run_dir / "tensorboard")
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"),
                                            purge_step=self.epoch if resumed else None)
            except Exception as exc:  # tensorboard is optional at run time, but a user who has it on is told
                self.writer = None
                why = ("the tensorboard package is not installed (pip install tensorboard)"
                       if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}")
                if why not in _TOLD_TENSORBOARD:  # once a process: `fewshot run` builds an Engine per stage
                    _TOLD_TENSORBOARD.add(why)
                    print(one_line(f"warning: train.tensorboard is on, but no event files are written to "
                                   f"{self.run_dir / 'tensorboard'}: {why}. log.jsonl and the plots hold the same "
                                   f"figures; train.tensorboard=false silences this."), file=sys.stderr, flush=True)
            if resumed and self.epoch > 0:
                from fewshot.report.runs import read_log

                rows = [r for r in read_log(self.run_dir) if isinstance(r, dict) and isinstance(r.get("epoch"), int)
                        and (r["epoch"] == self.epoch or (not redo and r["epoch"] > self.epoch))]
                for epoch in sorted({r["epoch"] for r in rows}):
                    self._add_scalars([r for r in rows if r["epoch"] == epoch][-1])

    # ----------------------------------------------------------------- the loop
    @property
    def precision(self) -> str:
        """What the run header says: which arithmetic train.amp resolved to on this device."""
        return "fp32" if self.amp is None else f"{str(self.amp).removeprefix('torch.')} autocast"

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _saved_plan(self) -> int | None:
        """The epochs of the run's saved config.yaml (None where unreadable: it only details messages)."""
        from fewshot.config import load_yaml

        try:
            return int(load_yaml(self.run_dir / "config.yaml")["train"]["epochs"])
        except Exception:  # a message detail: the config may be unreadable, the messages stand without it
            return None

    def _planned_epochs(self) -> str:
        """The saved config's epochs, for a message: a stopped run plans more than it trained (the hint "leave
        --epochs out to keep its 62-epoch results" was wrong for a run of 2000 stopped at 62)."""
        plan = self._saved_plan()
        return "" if plan is None else f" ({plan} epochs)"

    def _announce_new_plan(self) -> None:
        """A resume with other --epochs recomputes the schedule: say what that does to the lr. Extending a
        finished 1000-epoch cosine to 2000 jumped the lr 200x (1e-5 to 2e-3) in one epoch without a word."""
        plan = self._saved_plan()
        if plan is None or plan == self.cfg["train"]["epochs"] or self.cfg["sched"].get("time_based"):
            return
        before = self._base_lr()  # restored with the optimizer's state: the lr of the run's last step
        self.scheduler.step_update(self.global_step)  # what the first resumed step sets anyway
        print(f"note: the schedule now spans {self.cfg['train']['epochs']} epochs instead of {plan}; the "
              f"learning rate continues at {self._base_lr():.3g} (it was {before:.3g} at the stop).")

    def epochs_trained(self) -> float:
        """Whole epochs plus the fraction of a stopped one (a budget that held 3 steps of 8 is 0.38 epoch: run's
        summary said 0 while log.jsonl and the report said epoch 1)."""
        part = self.step_in_epoch / self.steps_per_epoch if self.steps_per_epoch else 0.0
        return self.epoch if not part else round(self.epoch + part, 2)

    def _seed_step(self, seed: int) -> None:
        """The generators a step draws from: the CPU's and, on a GPU, this device's. torch.manual_seed does the
        same but asks every backend (CUDA, MPS, XPU...), 170 us per call against 2 us here, on every step."""
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)

    def _base_lr(self) -> float:
        """The lr that log.jsonl records: the first group's, without its layer-decay scale."""
        group = self.optimizer.param_groups[0]
        return group["lr"] / group.get("lr_scale", 1.0)

    def fit(self, resume: bool = False) -> dict | None:
        t = self.cfg["train"]
        if resume and self.resume():
            if self.ctx.is_main:
                self._announce_new_plan()
                # written only now: a resume that fails (other classes, a bad checkpoint) leaves the run's
                # config.yaml as it was, so the next `--resume` does not inherit the failed attempt's settings
                from fewshot.config import save_yaml

                save_yaml(self.cfg, self.run_dir / "config.yaml")
                if self.epoch >= t["epochs"]:  # it said "epoch 6, step 0 of 5" for a finished 5-epoch run
                    print(f"{self.ckpt_dir / 'last.pt'}: the run has trained all its {t['epochs']} epochs; nothing "
                          f"to train (give more --epochs to extend it)")
                else:
                    print(f"resuming from {self.ckpt_dir / 'last.pt'}: epoch {self.epoch + 1}, step "
                          f"{self.step_in_epoch} of {self.steps_per_epoch} (global step {self.global_step})", flush=True)
            # it trained one more step and logged the stopped epoch again. A run that trained all its epochs has
            # nothing the budget stopped: "give a larger train.budget_minutes to continue it" was untrue there
            if self._budget_spent() and self.epoch < t["epochs"]:
                self._open_tensorboard(redo=False)
                try:
                    evaluated = self._evaluate_the_stop()
                finally:
                    self._close_tensorboard()
                if self.ctx.is_main:
                    at = f"epoch {self.epoch + (1 if self.step_in_epoch else 0)}"
                    where = (f"{at} (step {self.step_in_epoch} of {self.steps_per_epoch})" if self.step_in_epoch
                             else at)
                    done = f"; it is evaluated there (log.jsonl: {at})" if evaluated else ""
                    if is_run_stage(self.run_dir):
                        # a `fewshot run` stage: the stage ends, the run goes on with what it has
                        print(f"note: no time is left of the run's budget for this stage (its train.budget_minutes="
                              f"{t['budget_minutes']:g}): it ends where it stopped, at {where}, without training "
                              f"more{done}; the run goes on with what it has (the stages after it, if any, and "
                              f"the closing work every run keeps time for: evaluations, the test predictions and the "
                              f"report).", flush=True)
                    else:
                        print(f"note: the run used its whole budget (train.budget_minutes={t['budget_minutes']:g}) "
                              f"before it stopped, at {where}: nothing is trained{done}; give a larger "
                              f"train.budget_minutes to continue it.", flush=True)
                return self.last_eval
        elif resume and self.ctx.is_main:
            print(f"note: --resume given but {self.ckpt_dir / 'last.pt'} does not exist; starting fresh.")
        if self.epoch < t["epochs"]:
            self.check_disk_space()
        self._open_tensorboard()
        # a resumed run continues its clock: the budget and a time-based schedule count the training time of
        # every session (train_seconds in last.pt), not only this one's
        self.fit_start = time.monotonic() - self._seconds_before
        self._speed_mark = (self.fit_start + self._seconds_before, self.global_step)  # this session's speed (cap)
        self._clock_start = time.perf_counter() - self._seconds_before
        deadline = self.fit_start + t["budget_minutes"] * 60 if t.get("budget_minutes") else None
        try:
            with stop_on_signals(announce=self.ctx.is_main) as self._stop_flag:
                while self.epoch < t["epochs"]:  # read each time: a `fewshot run` stage's cap may rise (_extend_cap)
                    if self._run_epoch(deadline):
                        self._say_budget_stop()
                        break
                    if self.epoch < t["epochs"] and self._stop_requested():
                        self._stop_here()
                if self.epoch >= t["epochs"] and self.ctx.is_main:  # no resume reopens a partial epoch any more
                    (self.ckpt_dir / BEST_ASIDE).unlink(missing_ok=True)
                # a signal in the last step or evaluation must stop the caller too (`fewshot run` would
                # otherwise go on to its next stage, which the scheduler then kills without a checkpoint)
                if self._stop_requested():
                    self._stop_here()
        finally:
            self._stop_flag = None
            self._close_tensorboard()
        return self.last_eval

    def _say_budget_stop(self) -> None:
        """A budget stop ends the run quietly otherwise: the user saw "done" and could not tell a finished
        schedule from a cut one (a `fewshot run` stage is planned to end so, and its run says what it did)."""
        t = self.cfg["train"]
        finished = self.epoch >= t["epochs"] and not self.step_in_epoch  # the budget ran out with the last step
        planned = self.cfg["sched"].get("time_based")  # the schedule ends with the budget: its planned end
        if not self.ctx.is_main or finished or planned or is_run_stage(self.run_dir):
            return
        where = f"epoch {self.epoch + (1 if self.step_in_epoch else 0)} of {t['epochs']}"
        if self.step_in_epoch:
            where += f" (step {self.step_in_epoch} of {self.steps_per_epoch})"
        from fewshot.report.tables import duration  # seconds under a minute: 0.6 s of a 0.01-minute budget

        print(f"note: train.budget_minutes={t['budget_minutes']:g} is used up (training time, "
              f"{duration(self.train_seconds())}): the run stops at {where}; --resume with a larger "
              f"train.budget_minutes continues it.", flush=True)

    def _close_tensorboard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _stop_requested(self) -> bool:
        """A SIGTERM/SIGINT arrived (on any rank: under DDP every rank must stop at the same step, and
        all of them report the same signal)."""
        return self._agreed_stop(None)[0]

    def _agreed_stop(self, deadline: float | None) -> tuple[bool, bool]:
        """(a signal asked for a stop, the budget is spent), the same on every rank: one all-reduce (max) under
        DDP. Each rank's own clock used to decide the deadline alone, so a rank that started a moment later
        left the epoch a step early and its epoch-end all-reduce met the other rank's per-step one."""
        signum = (self._stop_flag.signum or 0) if self._stop_flag is not None else 0
        late = 1.0 if deadline is not None and time.monotonic() > deadline else 0.0
        if self.ctx.enabled:
            signum, late = all_reduce_max(self.ctx, [float(signum), late])
        self._stop_signum = int(signum)
        return self._stop_signum > 0, late > 0

    def epoch_seconds_so_far(self) -> float:
        """The current epoch's training seconds over every session (its steps; not the downtime between them)."""
        running = time.perf_counter() - self._epoch_t0 if self._epoch_t0 is not None else 0.0
        return self.epoch_seconds + running

    def train_seconds(self) -> float:
        """Training time of this run so far, over every session (saved in last.pt)."""
        return time.perf_counter() - self._clock_start if self._clock_start is not None else self._seconds_before

    def _stop_here(self) -> None:
        """Write last.pt at the current step (unless it is already there) and leave through StopRequested."""
        # rank 0 alone knows what it wrote last: its answer decides for every rank (the save gathers from all)
        if broadcast_object(self.ctx, self._saved_step != self.global_step):
            self.save_mid_epoch()
        barrier(self.ctx)
        raise StopRequested(self._stop_signum or signal.SIGTERM, str(self.ckpt_dir / "last.pt"))

    def _schedule_t(self, deadline: float | None) -> int:
        """The schedule's position: the global step, or with sched.time_based (budgeted runs such as
        `fewshot run`) the elapsed fraction of the budget, so the cosine ends when the time does
        whatever the machine's speed. Time-based runs are not bit-exact on resume. The step's own fraction of the
        epoch cap (train.epochs) counts where it is further on: a stage planned from a step timed on a busy
        machine (532 ms measured, 35 ms taken) met its cap in a fraction of its time with the lr at its peak. Where
        the cap rose (_extend_cap), the position then is a floor: the steps' fraction of the new cap is lower."""
        if not (self.cfg["sched"].get("time_based") and deadline is not None):
            return self.global_step
        total = self.cfg["train"]["epochs"] * self.steps_per_epoch
        frac = (time.monotonic() - self.fit_start) / max(1e-9, deadline - self.fit_start)
        if self.ctx.enabled:  # one lr on every rank (their clocks differ by the start-up of each)
            frac = all_reduce_max(self.ctx, frac)
        # the floor: where the schedule was when the cap rose, which the step's fraction of the new cap is not yet
        frac = max(frac, self.global_step / max(1, total), self._sched_floor)
        return int(min(1.0, max(0.0, frac)) * total)

    def _extend_cap(self, deadline: float | None) -> None:
        """Raise a `fewshot run` stage's epoch cap (4x the epochs its start-up timing fitted) where, at the speed it
        has trained so far, the cap would end it with a good part of its time left: a step timed in a busy moment
        (1728 ms timed, ~100 ms trained) ended a stage at its cap after 3.7 s of its 17 s. The new cap is 4x the
        epochs that fit its budget at that speed; the schedule goes on from where it is (its floor), so the lr does
        not rise again. Not during the warmup (there the position of a longer schedule is a higher lr), nor in a
        `fewshot train` run, whose --epochs are the user's. Every rank takes the same decision (one all-reduce)."""
        t = self.cfg["train"]
        if deadline is None or not self.cfg["sched"].get("time_based") or not is_run_stage(self.run_dir):
            return
        now = time.monotonic()
        frac = (now - self.fit_start) / max(1e-9, deadline - self.fit_start)
        wanted = float(self._cap_wanted(now, deadline))
        every = float(self._eval_interval_wanted())
        self._speed_mark = (now, self.global_step)
        if self.ctx.enabled:  # the interval too: every rank must evaluate (a collective) at the same epochs
            frac, wanted, every = all_reduce_max(self.ctx, [frac, wanted, every])
        if every > self.task.eval_every:
            self.task.eval_every = int(every)
        total = t["epochs"] * self.steps_per_epoch
        position = min(1.0, max(frac, self.global_step / max(1, total), self._sched_floor))
        warmup = int(round(float(self.cfg["sched"].get("warmup_epochs") or 0.0) * self.steps_per_epoch))
        # past LATE_POSITION the schedule has ended: a raise would only hold its last lr (review rev47)
        if wanted > t["epochs"] and position * total >= warmup and position < LATE_POSITION:
            self._raise_cap(int(wanted), position, now, deadline)

    def _raise_cap(self, epochs: int, position: float, now: float, deadline: float) -> None:
        """The cap raised to ``epochs`` (_extend_cap) with the schedule's ``position`` as its floor: the scheduler is
        built for the longer cap (its lr at a fraction of the cap is the shorter one's past the warmup); last.pt holds
        both at this epoch's end, and then its config.yaml the cap, which a resumed stage reads."""
        t = self.cfg["train"]
        before, lrs = t["epochs"], [g["lr"] for g in self.optimizer.param_groups]
        t["epochs"], self._sched_floor = epochs, position
        self.scheduler = build_scheduler(self.cfg, self.optimizer, self.steps_per_epoch)
        for group, lr in zip(self.optimizer.param_groups, lrs):  # timm's set-up put the warmup's lr there
            group["lr"] = lr
        # last.pt at this epoch's end (_epoch_end_save_due), then config.yaml (save): a crash between a config.yaml
        # written at once and the next last.pt resumed the raised cap without its floor, the lr back up (rev47)
        self._cap_unsaved = True
        if not self.ctx.is_main:
            return
        print(f"note: this stage trains faster than its start-up timing planned ({self._judged_step_s * 1000:.0f} ms "
              f"a step in its last epoch, evaluations included): its epoch cap rises from {before} to {epochs} epochs, "
              f"so that it trains until its deadline ({max(0.0, deadline - now):.0f} s left) with its time-based "
              f"schedule going on from where it is.", flush=True)

    def _eval_interval_wanted(self) -> int:
        """A stage's evaluation interval once its cap has risen (its floor), from its own speeds: evaluations about a
        tenth of its time, as plan_stage spaces them. Planned from the same busy timing as the cap, a stage evaluated
        after each of its 592 epochs (review rev47). Only ever longer (0: keep it; a rank that does not evaluate)."""
        took = self._eval_took
        if self._sched_floor <= 0 or not took or self.epoch_steps <= 0 or self.epoch_seconds <= 0:
            return 0
        step_s = self.epoch_seconds / self.epoch_steps  # the last epoch's training alone
        return max(1, int(round(10 * took / max(step_s * self.steps_per_epoch, 1e-6))))

    def _per_step(self, now: float) -> float:
        """Seconds per step since the last cap check (about an epoch, its evaluation included), else since the fit
        began: the mean over every step since the start counted a slow start in, so that after a 40 s first step the
        raise came at the cap itself, with the schedule at its end (review rev47)."""
        when, step = self._speed_mark if self._speed_mark is not None else (self.fit_start, 0)
        if self.global_step <= step:
            when, step = self.fit_start, 0
        return (now - when) / max(1, self.global_step - step)

    def _cap_wanted(self, now: float, deadline: float) -> int:
        """The epoch cap the stage needs at the speed it has trained (_extend_cap): its cap where the cap leaves no
        more than a tenth of its budget or two epochs (the longer) unused, else 4x the epochs that fit the budget."""
        epochs = self.cfg["train"]["epochs"]
        if self.global_step <= 0:
            return epochs
        step_s, budget = self._per_step(now), deadline - self.fit_start
        self._judged_step_s = step_s  # for _raise_cap's words: the mark moves on before it (review rev48)
        left_at_cap = deadline - now - (epochs * self.steps_per_epoch - self.global_step) * step_s
        if left_at_cap <= max(CAP_SLACK * budget, 2 * self.steps_per_epoch * step_s):
            return epochs
        return max(epochs, 4 * int(budget / max(1e-9, step_s * self.steps_per_epoch)))

    def _run_epoch(self, deadline: float | None) -> bool:
        t = self.cfg["train"]
        epoch = self.epoch
        batches = self.task.plan_epoch(epoch)
        self.train_model.train()
        start = self.step_in_epoch
        if start == 0:
            self.epoch_sums, self.epoch_steps = {}, 0
            self.epoch_seconds, self.epoch_images = 0.0, 0
        sums = self.epoch_sums  # continues the sums of a resumed epoch, and its seconds and images
        self._epoch_t0 = time.perf_counter()
        if start == 0:  # a resumed epoch keeps its count from last.pt: its row counts the steps before the stop
            self.epoch_skips_start = self.nonfinite_skipped
        # a budgeted run's epochs are a generous cap (4x what fits), not a plan: "epoch 1/1184" misled
        of = "" if self.cfg["sched"].get("time_based") and deadline is not None else f"/{t['epochs']}"
        # counted by hand after each step: a loop left by a budget stop counted its last step out, and a partial
        # epoch of one step printed no line at all
        bar = (track(desc=f"{self.task.kind} epoch {epoch + 1}{of}", total=len(batches) - start)
               if self.ctx.is_main else None)
        stopped = False
        for step in range(start, len(batches)):
            batch = self.task.make_batch(batches[step], epoch, step)
            self.scheduler.step_update(self._schedule_t(deadline))
            # The forward pass itself changes state (BatchNorm running stats; MoCo's key encoder and queue):
            # when skipping is allowed, keep a copy so that a skipped step leaves no trace of a bad batch.
            redo = self._compile_redo_possible()
            before = self._forward_state() if t["skip_nonfinite"] or redo else None
            # drop-path and dropout draw from the global RNG: seeded per step and rank, so that a resume is exact
            # on every rank (last.pt held rank 0's state, which every rank then took: resumed DDP runs with drop-
            # path drifted) and the ranks do not drop the same positions of their batches
            self._seed_step(derive_seed(t["seed"], epoch, step, self.ctx.rank, 3))
            loss, metrics, n, finite = self._forward_backward(batches[step], batch, epoch, step, before, redo)
            batch = None
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                self.nonfinite_skipped += 1
                if self.nonfinite_skipped > t["skip_nonfinite"]:
                    kept = self._last_good_checkpoint()  # every rank is here: _finite agreed across them
                    redone = (f" (this step ran eagerly after its compiled run failed: {self.step_redone})"
                              if self.step_redone else "")
                    raise NonFiniteLossError(
                        f"the loss became {self._nonfinite_loss_text(loss)} at epoch {epoch + 1}, step {step + 1} "
                        f"(global step {self.global_step + 1}){redone}; training stopped after "
                        f"{self.nonfinite_skipped} non-finite loss(es). {kept}.{self._nonfinite_causes()} the "
                        f"learning rate (optim.lr=...), or allow skipping up to N bad steps with "
                        f"train.skip_nonfinite=N (train and pretrain: --skip-nonfinite N; now {t['skip_nonfinite']}).")
                if before is not None:
                    self._restore_forward_state(before)
                self.step_in_epoch = step + 1
                self.global_step += 1
                if bar is not None:
                    bar.update(1)
                continue
            if self.cfg["optim"]["grad_clip"]:
                self.scaler.unscale_(self.optimizer)
                # every trained parameter: a task's own (the joint MoCo loss's projection head) too, after the
                # model's in their order (the norm's sum order: runs clip as they did before the head existed)
                torch.nn.utils.clip_grad_norm_(list(self.model.parameters()) + self._trained_outside_model(),
                                               self.cfg["optim"]["grad_clip"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model, step=self.global_step)
            self.global_step += 1
            self.step_in_epoch = step + 1
            self.epoch_images += n
            self.epoch_steps += 1
            n_steps = self.epoch_steps
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if bar is not None:
                if step % 5 == 0 or step == len(batches) - 1:  # the lr as log.jsonl has it: not a group's
                    # under DDP the loss is rank 0's own (log.jsonl's is the mean over the ranks, reduced once an
                    # epoch): said so, rather than a collective per step
                    loss = "rank 0 loss" if self.ctx.enabled else "loss"
                    bar.set_postfix({loss: f"{sums['loss'] / n_steps:.3f}", "lr": f"{self._base_lr():.2e}"})
                bar.update(1)
            if t["save_every_steps"] and self.global_step % t["save_every_steps"] == 0 and self.step_in_epoch < len(batches):
                self.save_mid_epoch()
            if self.step_in_epoch >= len(batches):  # the epoch's last step looks at the clock after its evaluation
                break
            signalled, late = self._agreed_stop(deadline)
            if signalled:
                if bar is not None:
                    bar.close()
                self._stop_here()
            if late:
                stopped = True
                break
        self.epoch_seconds, self._epoch_t0 = self.epoch_seconds_so_far(), None
        elapsed, n_seen = self.epoch_seconds, self.epoch_images
        if bar is not None:
            bar.close()
        self._check_weights_finite(epoch)
        if not stopped or self.step_in_epoch >= len(batches):
            self.epoch, self.step_in_epoch = epoch + 1, 0
        record = {"epoch": epoch + 1, "step": self.global_step, "lr": self._base_lr()}
        for k, v in sums.items():
            record[k] = all_reduce_mean(self.ctx, v / max(1, self.epoch_steps))
        record["images_per_s"] = n_seen * self.ctx.world / elapsed if elapsed > 0 else None
        record["epoch_time_s"] = elapsed
        skipped = self.nonfinite_skipped - self.epoch_skips_start
        if skipped:  # they were counted only inside the checkpoint: a run could skip every step and exit 0
            record["nonfinite_skipped"] = skipped
            if self.ctx.is_main:
                print(f"warning: epoch {epoch + 1}: {skipped} step(s) skipped for a non-finite "
                      f"loss ({self.nonfinite_skipped} in all, train.skip_nonfinite={t['skip_nonfinite']}); "
                      f"a lower learning rate (optim.lr=...) may be needed.", flush=True)
        if not stopped:  # every rank agreed on the stop
            self._extend_cap(deadline)
        last_epoch = self.epoch >= self.cfg["train"]["epochs"] or stopped
        due = last_epoch or (self.epoch % max(1, self.task.eval_every) == 0)
        # The deadline check of the epoch's last step, made after the epoch's evaluation: a deadline that passed in
        # the evaluation went unseen until the next epoch's first step, which was then evaluated again (11.6 s past
        # a 120 s budget on a busy machine). Now the run stops here, at the epoch's end, as a stop at its last step
        # would; without an evaluation due, before it (a budget stop is evaluated). Every rank agrees, as per step.
        look = deadline is not None and not stopped
        if look and not due:
            stopped = due = last_epoch = self._agreed_stop(deadline)[1]
            look = False
        new_best = self._evaluate(record, epoch) if due else False
        if look:
            stopped = self._agreed_stop(deadline)[1]
            last_epoch = last_epoch or stopped
        # The epoch-end last.pt carries its log row (without the timings), so that a kill between this save
        # and the log write still ends with the row in log.jsonl: resume() appends it when it is missing.
        self.epoch_record = {k: v for k, v in record.items() if k not in TIMING_KEYS}
        if self.step_in_epoch:  # a budget stop inside the epoch (every rank agreed on it): with every rank's sums
            self.save_mid_epoch(checked=True)
        elif new_best or self._epoch_end_save_due(last_epoch):  # last.pt never lags best.pt (exact resume)
            self.save("last")
        self.epoch_record = None
        self.log(record)
        barrier(self.ctx)
        return stopped

    def _compile_redo_possible(self) -> bool:
        """Whether a compile failure in this step's backward can be undone: compiled modules, outside DDP (whose
        reducer is left half-way by a failed backward and whose ranks would have to agree on the fallback). At any
        step, not only the first: an H200 run's compiled backward failed inductor's stride check, and a recompile
        (a new batch shape, a changed guard) compiles a backward again mid-run. Keeping the forward state costs a
        copy of the buffers (and MoCo's key encoder and queue) per step: one foreach copy into the last step's
        copies (_forward_state), a small share of a compiled MoCo step on a GPU."""
        return bool(self._compiled) and not self.ctx.enabled

    def _forward_backward(self, idx: torch.Tensor, batch, epoch: int, step: int, before: list | None, redo: bool):
        """One step's forward and, where its loss is finite, backward. Returns (loss, metrics, n, finite).

        A compile failure in either pass (``redo``: it can be undone) redoes the step eagerly: the compile undone,
        the forward's state changes (BatchNorm statistics, MoCo's key encoder and queue) restored from ``before``,
        gradients dropped, the batch rebuilt (a function of ``idx``, epoch and step) and the step's RNG seeded
        again, so the run goes on as an eager run from this step would (a resume does the same: it compiles,
        fails, and falls back here again)."""
        failure = remedy = self.step_redone = None
        for attempt in ("compiled", "eager"):
            try:
                with self.autocast():
                    loss, metrics, n = self.task.training_step(self.train_model, batch)
                if not self._finite(loss):
                    return loss, metrics, n, False
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                return loss, metrics, n, True
            except Exception as exc:
                if failure is not None:  # the eager redo failed too: the first failure belongs to its story
                    add_note(exc, f"(this step ran eagerly after its compiled run failed: {failure})")
                    raise
                if not (self._compiled and is_compile_failure(exc)):
                    raise
                # the words only: the exception's traceback holds the graph
                failure, remedy = compile_failure_text(exc), compile_remedy(exc)
                if not redo:
                    raise self._compile_failed(failure, remedy, epoch, step) from None
            # out of the except block: the failed attempt's graph and activations are let go before the eager redo
            # builds its own (held during it, the fallback needed twice a step's memory: out of memory where the
            # step itself fit)
            loss = metrics = batch = None
            try:  # restoring the state can fail too (a GPU's sticky error): its error names the first failure
                self._redo_eagerly(failure, remedy, before, epoch, step)
                batch = self.task.make_batch(idx, epoch, step)
            except Exception as exc:
                add_note(exc, f"(while redoing the step eagerly after its compiled run failed: {failure})")
                raise
            self.step_redone = failure
            self._seed_step(derive_seed(self.cfg["train"]["seed"], epoch, step, self.ctx.rank, 3))
        raise AssertionError("unreachable: the eager attempt returns or raises")

    def _redo_eagerly(self, failure: str, remedy: str, before: list, epoch: int, step: int) -> None:
        """Say why, undo the compile and put back the forward state the failed attempt changed."""
        if self.ctx.is_main:
            print(one_line(f"warning: torch.compile (train.compile={self.cfg['train']['compile']}) failed in the "
                           f"compiled training step at epoch {epoch + 1}, step {step + 1} ({failure}); the step is "
                           f"redone without compiling and training continues eagerly (slower on a GPU). "
                           f"{remedy}"), file=sys.stderr, flush=True)
        uncompile(self._compiled)
        self._compiled = []
        self.optimizer.zero_grad(set_to_none=True)
        self._restore_forward_state(before)

    def _compile_failed(self, failure: str, remedy: str, epoch: int, step: int) -> CompileFailedError:
        """The error for a compile failure that cannot be redone eagerly: what failed, and the two remedies. Built
        from this process's own view (no collective: under DDP another rank may not have failed)."""
        last = self.ckpt_dir / "last.pt"
        kept = (f" The last checkpoint is {last}: the same command with --resume and train.compile=false continues "
                f"the run from it."
                if last.is_file() else "")
        return CompileFailedError(one_line(
            f"torch.compile (train.compile={self.cfg['train']['compile']}) failed in the compiled training step "
            f"at epoch {epoch + 1}, step {step + 1}: {failure}. {remedy}{kept}"))

    def _evaluate(self, record: dict, epoch: int) -> bool:
        """Evaluate the model (epoch index ``epoch``) into the log row ``record``; a new best score writes best.pt.
        Returns whether it did."""
        t1 = time.perf_counter()
        result = self._evaluate_weights(epoch) if self.ctx.is_main else None
        result = broadcast_object(self.ctx, result)
        if result is None:
            return False
        record.update(result)
        record["eval_time_s"] = self._eval_took = time.perf_counter() - t1
        self.last_eval = result
        # a tie goes to the later epoch: with one val image per class scores tie often, and the first epoch
        # of the top score (lr still high) became best.pt and the pseudo-label teacher
        if result.get("score") is None or result["score"] < self.best_score:
            return False
        if self.step_in_epoch:  # a budget stop's partial epoch, which a resume may reopen
            self._set_best_aside()
        self.best_score = result["score"]
        self.best_weights = result.get("weights", "ema" if self.ema is not None else "raw")
        self.save("best")
        return True

    def _evaluate_weights(self, epoch: int) -> dict | None:
        """The evaluation of the weights best.pt would hold. With an EMA both the EMA and the raw weights are
        scored: on short runs the EMA lags far behind (32 steps: val 16.8 for the EMA, 43.2 for the raw weights),
        and everything the user gets (best.pt, metrics.json, eval, predict, export) is what best.pt holds. The
        result is the higher-scoring set's (a tie: the EMA's), with ``score_ema``, ``score_raw`` and ``weights``
        ("ema" or "raw") added, so log.jsonl's ``score`` and ``val`` describe the weights best.pt is chosen from.
        Without an EMA only the model is evaluated, as before."""
        if self.ema is None:
            return self.task.evaluate(self.model, epoch)
        ema = self.task.evaluate(self.ema.module, epoch)
        if ema is None or ema.get("score") is None:  # nothing to compare (a task that scores nothing)
            return ema
        raw = self.task.evaluate(self.model, epoch)
        raw_score = raw.get("score") if isinstance(raw, dict) else None
        use_raw = raw_score is not None and math.isfinite(raw_score) and raw_score > ema["score"]
        return {**(raw if use_raw else ema), "score_ema": ema["score"], "score_raw": raw_score,
                "weights": "raw" if use_raw else "ema"}

    def _evaluate_the_stop(self) -> bool:
        """A resume that finds the budget spent trains nothing; where the run stopped on a signal (which saves
        without evaluating), the state it stopped in is evaluated now, as a budget stop there would have done: a
        `fewshot run` stage resumed with no time left ended without a best.pt or a log row of its training, its
        predictions came from the mid-epoch last.pt and its metrics named an epoch log.jsonl did not hold. The
        row is logged (a partial epoch as epoch + 1, which a resume with more budget reopens) or, at an epoch end
        logged without an evaluation, completed. Returns whether it evaluated."""
        path, lines, at = self.run_dir / "log.jsonl", [], None
        if self.ctx.is_main and path.is_file():  # trim_log left only rows, none past this step
            lines = path.read_text(errors="replace").splitlines()
            at = max((i for i, line in enumerate(lines) if json.loads(line).get("step") == self.global_step),
                     default=None)
        row = broadcast_object(self.ctx, json.loads(lines[at]) if at is not None else None)
        if self.global_step == 0 or (row is not None and "score" in row):  # evaluated already (a budget stop)
            return False
        if row is None:
            record = {"epoch": self.epoch + (1 if self.step_in_epoch else 0), "step": self.global_step,
                      "lr": self._base_lr()}
            for k, v in self.epoch_sums.items():
                record[k] = all_reduce_mean(self.ctx, v / max(1, self.epoch_steps))
        else:
            record = dict(row)
        self._evaluate(record, record["epoch"] - 1)
        self.epoch_record = {k: v for k, v in record.items() if k not in TIMING_KEYS}
        if self.step_in_epoch:
            self.save_mid_epoch()  # under DDP with every rank's running sums, as the stop's own save
        else:
            self.save("last")
        self.epoch_record = None
        if row is None:
            self.log(record)
        elif self.ctx.is_main:  # the epoch's row, now with its evaluation
            lines[at] = json.dumps(record)
            atomic_write_text(path, "".join(f"{line}\n" for line in lines))
            self._add_scalars(record)
        barrier(self.ctx)
        return True

    def _epoch_end_save_due(self, last_epoch: bool) -> bool:
        """Epoch-end last.pt: always at the first and last epoch, with --save-every-steps and with a new best.pt,
        otherwise at most every train.save_interval_s seconds. Writing ~180 MB (resnet18 with EMA and AdamW state) after every 4-step
        epoch of a 10-shot set cost a third of the training time; a kill now loses at most that interval
        (resume trims log.jsonl to the checkpoint and redoes the steps after it exactly)."""
        t = self.cfg["train"]
        interval = float(t.get("save_interval_s") or 0.0)
        return (last_epoch or bool(t["save_every_steps"]) or interval <= 0 or self._cap_unsaved
                or time.perf_counter() - self._saved_at >= interval)

    @torch.no_grad()
    def _forward_state(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the tensors a forward pass may change: buffers and parameters that get no gradient. Kept every
        step where a step may be skipped or redone (MoCo: the key encoder and queue too), so the last step's copies
        are reused, refilled by one foreach copy, while they still match (a fresh clone per tensor cost ~200
        allocations a step)."""
        tensors = list(self.model.buffers()) + [p for p in self.model.parameters() if not p.requires_grad]
        tensors += self._task_state_tensors()
        saved = getattr(self, "_saved_forward_state", None)
        if saved is not None and len(saved) == len(tensors) and all(
                x is y and x.shape == c.shape and x.dtype == c.dtype for x, (y, c) in zip(tensors, saved)):
            copies = [c for _, c in saved]
            torch._foreach_copy_(copies, [x.detach() for x in tensors])
        else:
            copies = [x.detach().clone() for x in tensors]
        self._saved_forward_state = list(zip(tensors, copies))
        return self._saved_forward_state

    def _trained_outside_model(self) -> list[torch.Tensor]:
        """Parameters the optimizer trains that the model does not hold (the joint MoCo loss's projection head)."""
        inside = {id(p) for p in self.model.parameters()}
        return [p for g in self.optimizer.param_groups for p in g["params"] if id(p) not in inside]

    def _task_state_tensors(self) -> list[torch.Tensor]:
        """Tensors the task keeps outside the model that a step changes (the joint MoCo loss's key encoder and
        queue: SupervisedTask.forward_state_tensors); none for most tasks."""
        hook = getattr(self.task, "forward_state_tensors", None)
        return list(hook()) if hook is not None else []

    @staticmethod
    @torch.no_grad()
    def _restore_forward_state(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for x, copy in saved:
            x.copy_(copy)

    def _check_weights_finite(self, epoch: int) -> None:
        """Stop before an epoch's evaluation and checkpoints when a weight or BatchNorm statistic is inf/NaN: with
        every loss finite (--lr 1e9) such a model was scored at chance, saved as best.pt and used by eval,
        predict and export without a word. One fused norm per epoch (an inf or NaN anywhere makes it non-finite):
        about 12 ms for a resnet18 and its EMA on one CPU thread, where an isfinite() per tensor took 150 ms."""
        models = [self.model] + ([self.ema.module] if self.ema is not None else [])
        tensors = [x.detach() for m in models for x in (*m.parameters(), *m.buffers()) if x.is_floating_point()]
        tensors += [x.detach() for x in (*self._trained_outside_model(), *self._task_state_tensors())
                    if x.is_floating_point()]
        # an fp16 norm would overflow at 65504; a float32 one only past ~1e19 per value: a diverged model too
        ok = not tensors or bool(
            torch.isfinite(torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32))).all())
        if self.ctx.enabled:
            ok = all_reduce_mean(self.ctx, 1.0 if ok else 0.0) == 1.0
        if ok:
            return
        kept = self._last_good_checkpoint()
        skipped = self.nonfinite_skipped - self.epoch_skips_start  # the same on every rank (_finite agrees)
        losses = (f"after {skipped} non-finite loss(es) were skipped (train.skip_nonfinite) and the others stayed "
                  f"finite" if skipped else "although the loss stayed finite")
        raise NonFiniteLossError(
            f"the model's weights or BatchNorm statistics became inf/NaN in epoch {epoch + 1} {losses}: training "
            f"diverged, and this epoch's model was neither evaluated nor saved. {kept}.{self._nonfinite_causes()} "
            f"the learning rate (optim.lr=...; the last step's was {self._base_lr():g}) and start again.")

    def _nonfinite_causes(self) -> str:
        """The causes this run shows besides the learning rate, in sentences, then " Otherwise lower" (or " Lower"):
        the task's own (MoCo: a tiny moco.temperature) and fp16 autocast's range. "Lower the learning rate" alone
        sent a run with moco.temperature=1e-30 after the wrong setting."""
        hint = getattr(self.task, "nonfinite_hint", None)
        causes = [text for text in ((hint() if hint is not None else None),) if text]
        if self.amp == torch.float16:
            causes.append("This run computes in fp16 autocast, whose values end at 65504: train.amp=bf16, or off "
                          "(fp32), keeps larger values finite")
        said = "".join(f" {text}." for text in causes)
        return f"{said} Otherwise lower" if causes else " Lower"

    def _last_good_checkpoint(self) -> str:
        """Where training can go back to, as rank 0 knows it (it alone writes last.pt), so that every rank's
        message says the same. Called by every rank together."""
        last = self.ckpt_dir / "last.pt"
        text = (f"The last good checkpoint is {last} (global step {self._saved_step})" if self._saved_step is not None
                else (f"The last good checkpoint is {last}" if last.is_file() else "No checkpoint was written"))
        return broadcast_object(self.ctx, text)

    def _nonfinite_loss_text(self, loss: torch.Tensor) -> str:
        """The non-finite loss, naming its rank under DDP: a rank's own loss may be finite when another's was not
        (_finite decides for all of them). Called by every rank together."""
        values = all_gather_object(self.ctx, float(loss.detach().float().mean()))
        bad = [(rank, v) for rank, v in enumerate(values) if not math.isfinite(v)] or list(enumerate(values))
        return f"{bad[0][1]}" + (f" on rank {bad[0][0]}" if self.ctx.enabled else "")

    def _finite(self, loss: torch.Tensor) -> bool:
        ok = bool(torch.isfinite(loss.detach()).all())
        if self.ctx.enabled:
            ok = all_reduce_mean(self.ctx, 1.0 if ok else 0.0) == 1.0
        return ok


def wait_for_a_later_event_file_second(folder: Path, longest_s: float = 2.0) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the second it was opened
    (then host and pid): a resume opened in the same second as the writer before it could sort first, and that
    older writer's purge (at its resumed epoch) then removed the later steps of this one. Waits into the next
    second, at most ``longest_s`` (a file named by a clock that was ahead is not waited for)."""
    seconds = []
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            parts = p.name.split(".")
            if p.name.startswith("events.out.tfevents.") and len(parts) > 3 and parts[3].isdigit():
                seconds.append(int(parts[3]))
    if seconds:
        wait = max(seconds) + 1 - time.time()
        if 0 < wait <= longest_s:
            time.sleep(wait)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def write_metrics(path: Path, metrics: dict) -> None:
    write_json(path, metrics)
