"""The Engine's checkpoints: what last.pt and best.pt hold, when they are written, and whether the run folder has
room for them.

Apart from the loop (engine.py) because what a checkpoint carries and when the loop pays for writing one is a job of
its own; the file-level work (the atomic write, the load, the RNG state) is checkpoint.py's. SavingMixin's methods
are the Engine's: they read its training state (model, ema, optimizer, scheduler, scaler, epoch, step_in_epoch,
global_step, steps_per_epoch, best_score, last_eval, best_before_stop, best_weights, nonfinite_skipped,
epoch_skips_start, epoch_record, epoch_sums, epoch_steps, epoch_images, _sched_floor, amp) and its setting (task,
cfg, ctx, run_dir, ckpt_dir; reserve_s, _eval_took for budget_reserve), set _saved_step, _saved_at, _save_took,
_written, _cap_unsaved and _best_pending, and call its
epoch_seconds_so_far(), train_seconds(), _check_weights_finite(), _trained_outside_model() and
_task_state_tensors(); the loop calls save(), save_mid_epoch(), publish_best(), _epoch_end_save_due() and
check_disk_space().
"""

from __future__ import annotations

import contextlib
import os
import time

from fewshot.errors import UserError
from fewshot.train.checkpoint import rng_state, save_checkpoint
from fewshot.train.disk_space import check_room
from fewshot.train.distributed import all_gather_object
from fewshot.train.optim import AMP_NAMES
from fewshot.train.resume import BEST_PENDING


class SavingMixin:
    """last.pt and best.pt: their payloads, their writes (mid-epoch on every rank, at an epoch's end when due) and
    the disk-space check before training."""

    _best_pending = False  # save("best") wrote BEST_PENDING, which publish_best() has not put in place yet

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
            **self.reserve_payload(),  # what a plain train budget kept back (budget_reserve)
            "sched_floor": self._sched_floor,  # a resumed stage whose cap rose keeps its lr (_extend_cap)
            "epochs_cap": self.cfg["train"]["epochs"],  # ... and its cap, with last.pt's floor (resume)
            "eval_every": self.task.eval_every,  # ... and the evaluation interval re-spaced after its raise
            "ema_step0": self._ema_step0,  # where the EMA's warm-up counts from after a moved end (_end_moved)
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
        score). Nothing resumes from best.pt: a budget stop's kept-aside copy only replaces best.pt again. "best"
        writes BEST_PENDING: publish_best() makes it best.pt once last.pt and the log row hold its epoch."""
        if self.ctx.is_main:
            path = self.ckpt_dir / (BEST_PENDING if name == "best" else f"{name}.pt")
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
                t0 = time.perf_counter()
                save_checkpoint(path, payload)
                self._save_took[name] = time.perf_counter() - t0  # the budget's reserve (budget_reserve)
                self._best_pending = self._best_pending or name == "best"
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
            self._count_written(path, self._save_took[name])

    def _count_written(self, path: os.PathLike, seconds: float) -> None:
        """A written checkpoint's bytes and seconds, for write_rate. Outside save's write errors: the file is
        written, and a size that cannot be read (an OSError) leaves only the rate untimed, not the run failed."""
        with contextlib.suppress(OSError):
            self._written[0] += os.path.getsize(path)
            self._written[1] += seconds

    def publish_best(self) -> None:
        """The new best (BEST_PENDING) becomes best.pt, after its epoch's last.pt and log row: written before them,
        a kill in between left best.pt ahead of both (a lost epoch's weights for eval and predict, a report that
        blamed the user, and a resume not bit-exact kept them). A kill before this rename leaves best.pt behind,
        never ahead, and resume puts the pending file in place (ResumeMixin._settle_pending_best)."""
        if not self._best_pending:
            return
        self._best_pending = False
        if self.ctx.is_main:
            path = self.ckpt_dir / "best.pt"
            try:
                os.replace(self.ckpt_dir / BEST_PENDING, path)
            except OSError as exc:
                raise UserError(f"cannot write the checkpoint {path}: {exc.strerror or exc}. last.pt is intact; "
                                f"continue with --resume, which puts the new best.pt in place.") from None

    def write_rate(self) -> float | None:
        """Bytes a second of this fit's checkpoint writes, as timed (None: none written). `fewshot run` counts the
        next stage's writes at it: at a guessed 250 MB/s a busy machine's writes (50-190 MB/s) ran past the budget."""
        size, seconds = self._written
        return size / seconds if size and seconds > 0 else None

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
        """Fail before training when the run folder cannot hold the run's checkpoints or its files
        (disk_space.check_room); rank 0 alone asks."""
        if self.ctx.is_main:
            check_room(self.run_dir, self.ckpt_dir, bool(self.cfg["train"].get("budget_minutes")),
                       self.checkpoint_bytes())

    def _epoch_end_save_due(self, last_epoch: bool) -> bool:
        """Epoch-end last.pt: always at the first and last epoch, with --save-every-steps and with a new best.pt,
        otherwise at most every train.save_interval_s seconds. Writing ~180 MB (resnet18 with EMA and AdamW state)
        after every 4-step epoch of a 10-shot set cost a third of the training time; a kill now loses at most that
        interval (resume trims log.jsonl to the checkpoint and redoes the steps after it exactly)."""
        t = self.cfg["train"]
        interval = float(t.get("save_interval_s") or 0.0)
        return (last_epoch or bool(t["save_every_steps"]) or interval <= 0 or self._cap_unsaved
                or time.perf_counter() - self._saved_at >= interval)
