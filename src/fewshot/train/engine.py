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

The loop's separate jobs live beside it, one module each: optim (optimizer, schedule, autocast dtype),
start_checks and start_warnings (what is refused or said before training), resume (ResumeMixin: exact resume),
stage_cap (StageCapMixin: a `fewshot run` stage's time-based schedule and epoch cap), compile_fallback
(CompileFallbackMixin: a step redone eagerly after a torch.compile failure), saving (SavingMixin: what last.pt and
best.pt hold and when they are written; checkpoint holds the file-level work), evaluation (EvaluationMixin: the
weights best.pt would hold scored and the best kept), step_state (StepStateMixin: what a step changes besides the
gradients, kept for a skipped or redone step, and the finite checks of the loss and the weights), nonfinite (a
diverged run's check and words), disk_space (room for the checkpoints), tensorboard_log (the event files) and
budget_reserve (BudgetReserveMixin: the closing work a plain train / pretrain budget keeps time for).
The loop, its stops, the budget's words and log.jsonl stay here.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from pathlib import Path

import torch
from torch import nn

from fewshot.progress import track
from fewshot.run_state import is_run_stage
from fewshot.runtime import compiled_modules
from fewshot.train.budget_reserve import BudgetReserveMixin
from fewshot.train.compile_fallback import CompileFallbackMixin
from fewshot.train.distributed import (DistContext, all_reduce_max, all_reduce_mean, barrier, broadcast_object,
                                      check_same_image_counts)
from fewshot.train.evaluation import TIMING_KEYS, EvaluationMixin
from fewshot.train.nonfinite import NonFiniteLossError, last_good_checkpoint, nonfinite_loss_text
from fewshot.train.optim import (AMP_BY_NAME, AMP_NAMES, amp_dtype, amp_to_choose, build_optimizer, build_scheduler,
                                 record_amp)
from fewshot.train.resume import BEST_ASIDE, ResumeMixin
from fewshot.train.saving import SavingMixin
from fewshot.train.stage_cap import StageCapMixin
from fewshot.train.start_checks import empty_epoch_error, image_counts, image_fingerprints
from fewshot.train.start_warnings import warn_cpu_fp16, warn_long_warmup, warn_shared_cores, warn_slow_ema
from fewshot.train.step_state import StepStateMixin
from fewshot.train.stop_signal import StopRequested, say_stop, stop_on_signals
from fewshot.train.tensorboard_log import add_scalars, open_writer, rows_to_write_again
from fewshot.train.thread_tuner import tuner_for
from fewshot.utils import derive_seed, unshare_hard_link


class Engine(ResumeMixin, StageCapMixin, CompileFallbackMixin, SavingMixin, EvaluationMixin, StepStateMixin,
             BudgetReserveMixin):
    """The training loop of one run (the module's docstring). Its methods in other modules: resume (ResumeMixin),
    a `fewshot run` stage's time-based schedule (StageCapMixin), a step's torch.compile fallback
    (CompileFallbackMixin), the checkpoints (SavingMixin), the evaluations (EvaluationMixin), the budget's reserve
    (BudgetReserveMixin) and a step's state
    and finite checks (StepStateMixin)."""

    def __init__(self, task, cfg: dict, run_dir: Path, device: torch.device, ctx: DistContext):
        self.task, self.cfg, self.run_dir, self.device, self.ctx = task, cfg, Path(run_dir), device, ctx
        self.ckpt_dir = self.run_dir / "checkpoints"
        # before DDP's first collective: a mismatch hung there (the pixels too: other contents under the same names)
        check_same_image_counts(ctx, image_counts(task), image_fingerprints(task))
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
        warn_long_warmup(cfg, self.steps_per_epoch, self.scheduler, ctx.is_main)
        amp_to_choose(cfg)  # a resumed run's recorded choice is chosen again: resume keeps its checkpoint's
        self.amp = amp_dtype(cfg, device, getattr(task, "size", None))
        if ctx.enabled:  # each rank detects its own CPU: on a mixed cluster they would gather keys of two dtypes
            self.amp = AMP_BY_NAME[broadcast_object(ctx, AMP_NAMES[self.amp])]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        warn_cpu_fp16(self.amp, device, ctx.is_main)
        warn_shared_cores(device, ctx)
        # modules the task compiled (train.compile): their backward graphs compile inside loss.backward() (the first
        # step's, and again after a recompile), which suppress_errors does not cover, and inductor's generated code
        # can fail there too: while modules are compiled, each step keeps what it needs to be redone eagerly
        self._compiled = compiled_modules(self.model)
        self.ema = None
        t = cfg["train"]
        if t["ema"] and task.supports_ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=t["ema_decay"], use_warmup=t["ema_warmup"], device=device)
            warn_slow_ema(cfg, self.steps_per_epoch, ctx.is_main)
        self.best_weights = "ema" if self.ema is not None else "raw"  # the set best.pt holds (see _evaluate)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best_score, self.last_eval = -math.inf, None
        self.best_before_stop: float | None = None  # the best score before a partial epoch's evaluation beat it
        self._sched_floor = 0.0  # the schedule's position when a `fewshot run` stage's epoch cap rose (_extend_cap)
        self._cap_unsaved = False  # a raised cap not yet in last.pt and config.yaml (_raise_cap)
        self._ema_step0 = 0  # the global step the EMA's warm-up counts from: a moved end's restart (_end_moved)
        self._eval_took: float | None = None  # seconds of the last evaluation (_eval_interval_wanted, budget_reserve)
        self._save_took: dict[str, float] = {}  # seconds of the last write of last.pt / best.pt (budget_reserve)
        self._written = [0, 0.0]  # bytes and seconds of every checkpoint write of this fit (write_rate)
        self._judged_step_s = 0.0  # the step time the last cap check judged at (_cap_wanted)
        self._speed_mark: tuple[float, int] | None = None  # (clock, global_step) at the last cap check
        # 1 thread while other work on the cores makes it faster than all of them (train/thread_tuner.py)
        self.threads = tuner_for(t, device, ctx.enabled, ctx.is_main, compiled=bool(self._compiled))
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
            add_scalars(self.writer, record)

    def _open_tensorboard(self, redo: bool = True) -> None:
        """A resumed run purges the events from its checkpoint's epoch on (the steps after the checkpoint are
        redone, and TensorBoard would draw both copies as a zig-zag) and writes that epoch's row of the trimmed
        log.jsonl again, so the event file shows what log.jsonl holds. ``redo=False``: nothing is redone (the
        evaluation of a budget stop): every row of the trimmed log.jsonl from that epoch on is written again."""
        if self.ctx.is_main and self.cfg["train"]["tensorboard"]:
            resumed = self.global_step > 0
            self.writer = open_writer(self.run_dir, self.epoch if resumed else None)
            if resumed and self.epoch > 0:
                for row in rows_to_write_again(self.run_dir, self.epoch, redo):
                    self._add_scalars(row)

    # ----------------------------------------------------------------- the loop
    @property
    def precision(self) -> str:
        """What the run header says: which arithmetic train.amp resolved to on this device."""
        return "fp32" if self.amp is None else f"{str(self.amp).removeprefix('torch.')} autocast"

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

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

    def _record_amp(self, save: bool, resumed: bool = False) -> None:
        """What train.amp=auto resolved to (a resume: its checkpoint's), recorded in the run's config before its
        first checkpoint, and in its config.yaml where one was written before training (``save``); then the note of
        a --config file whose run chose otherwise (config.note_rechosen left it for now). A resumed run whose
        config.yaml has no record of its choices (an older fewshot's) gets none: a record of train.amp alone made
        its other values (lr, device, network) count as the user's, where the rules had read them as chosen."""
        from fewshot.config import CHOSEN, note_rechosen, save_yaml

        recorded = record_amp(self.cfg, self.amp) if not (resumed and CHOSEN not in self.cfg) else False
        note_rechosen(self.cfg, say=self.ctx.is_main)
        if recorded and save and self.ctx.is_main and (self.run_dir / "config.yaml").is_file():
            save_yaml(self.cfg, self.run_dir / "config.yaml")

    def _base_lr(self) -> float:
        """The lr that log.jsonl records: the first group's, without its layer-decay scale."""
        group = self.optimizer.param_groups[0]
        return group["lr"] / group.get("lr_scale", 1.0)

    def fit(self, resume: bool = False) -> dict | None:
        t = self.cfg["train"]
        resumed = resume and self.resume()
        self._record_amp(save=not resumed, resumed=resumed)  # a resumed run's config.yaml is written below
        if resumed:
            if self.ctx.is_main:
                self._announce_new_plan()
                # written only now: a resume that fails (other classes, a bad checkpoint) leaves the run's
                # config.yaml as it was, so the next `--resume` does not inherit the failed attempt's settings
                from fewshot.config import save_yaml

                save_yaml(self.cfg, self.run_dir / "config.yaml")
                if self.epoch >= t["epochs"]:  # it said "epoch 6, step 0 of 5" for a finished 5-epoch run
                    print(f"{self.ckpt_dir / 'last.pt'}: the run has trained all its {t['epochs']} epochs; nothing "
                          f"to train (give more --epochs to extend it)")
                elif not getattr(self.task, "no_training_said", False):  # the run's line said it trains no further
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
                    if getattr(self.task, "no_time_said", False):
                        pass  # the run's line said why (run_stages.skip_short_resumed_training): time was left
                    elif is_run_stage(self.run_dir):
                        # a `fewshot run` stage: the stage ends, the run goes on with what it has
                        # its train.budget_minutes is the run's plan, capped on --resume: 0.0318105, set by no one
                        print(f"note: no time is left of the run's budget for this stage: it ends where it stopped, "
                              f"at {where}, without training more{done}; the run goes on with what it has (the "
                              f"stages after it, if any, and the closing work every run keeps time for: evaluations, "
                              f"the test predictions and the report).", flush=True)
                    else:
                        print(f"note: the run used its whole budget (train.budget_minutes={t['budget_minutes']:g}) "
                              f"before it stopped, at {where}: nothing is trained{done}; give a larger "
                              f"train.budget_minutes to continue it.", flush=True)
                return self.last_eval
        elif resume:
            self._start_fresh()
        if self.epoch < t["epochs"]:
            self.check_disk_space()
        self._open_tensorboard()
        # a resumed run continues its clock: the budget and a time-based schedule count the training time of
        # every session (train_seconds in last.pt), not only this one's
        self.fit_start = time.monotonic() - self._seconds_before
        self._speed_mark = (self.fit_start + self._seconds_before, self.global_step)  # this session's speed (cap)
        self._clock_start = time.perf_counter() - self._seconds_before
        self._start_budget(t.get("budget_minutes"))
        try:
            with stop_on_signals(announce=self.ctx.is_main, defer_sigterm=self.ctx.enabled) as self._stop_flag:
                while self.epoch < t["epochs"]:  # read each time: a `fewshot run` stage's cap may rise (_extend_cap)
                    if self._run_epoch(self._deadline()):  # read each epoch: its evaluation re-times the reserve
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
            if self.threads is not None:  # the count found faster stays for the command's next stage
                self.threads.finish()
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
              f"{duration(self.train_seconds())}): the run stops at {where}{self._reserve_words()}; --resume with a "
              f"larger train.budget_minutes continues it.", flush=True)

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
            if late and deadline is not None:
                self._count_whole_budget(deadline)
        self._stop_signum = int(signum)
        return self._stop_signum > 0, late > 0

    def _count_whole_budget(self, deadline: float) -> None:
        """An agreed budget stop under DDP: another rank's clock may have found the time up while this one's, which
        started a moment later, read below the budget (rank 0's train_seconds goes into last.pt: 2.972 s of a 3 s
        budget, and a --resume with the same budget trained one more step). Every rank now counts at least the
        budget; one process keeps its own clock, the one that decided."""
        self._clock_start = min(self._clock_start, time.perf_counter() - (deadline - self.fit_start))

    def epoch_seconds_so_far(self) -> float:
        """The current epoch's training seconds over every session (its steps; not the downtime between them)."""
        running = time.perf_counter() - self._epoch_t0 if self._epoch_t0 is not None else 0.0
        return self.epoch_seconds + running

    def train_seconds(self) -> float:
        """Training time of this run so far, over every session (saved in last.pt)."""
        return time.perf_counter() - self._clock_start if self._clock_start is not None else self._seconds_before

    def _stop_here(self) -> None:
        """Write last.pt at the current step (unless it is already there) and leave through StopRequested."""
        if self._stop_flag is not None:  # every rank agreed to stop: the checkpoint follows (a SIGTERM's line)
            say_stop(self._stop_flag)
        # rank 0 alone knows what it wrote last: its answer decides for every rank (the save gathers from all)
        if broadcast_object(self.ctx, self._saved_step != self.global_step):
            self.save_mid_epoch()
        barrier(self.ctx)
        raise StopRequested(self._stop_signum or signal.SIGTERM, str(self.ckpt_dir / "last.pt"))

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
        stopped = moved = False
        for step in range(start, len(batches)):
            step_t0 = time.perf_counter()
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
                    # every rank is here: _finite agreed across them
                    kept = last_good_checkpoint(self.ctx, self.ckpt_dir, self._saved_step)
                    redone = (f" (this step ran eagerly after its compiled run failed: {self.step_redone})"
                              if self.step_redone else "")
                    raise NonFiniteLossError(
                        f"the loss became {nonfinite_loss_text(self.ctx, loss)} at epoch {epoch + 1}, step {step + 1} "
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
                self.ema.update(self.model, step=self.global_step - self._ema_step0)
            if self.threads is not None:
                self.threads.observe(time.perf_counter() - step_t0, n)
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
            if late and self._end_moved({"step": self.global_step, "epoch_time_s": self.epoch_seconds_so_far()}):
                # round 1 trains on (the run skipped the later rounds, StageCapMixin): the epoch ends here, so that
                # the model its old end annealed is evaluated before the warm restart raises the lr (review rev120 #1)
                deadline, moved = self._deadline(), True
                break
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
        due = last_epoch or moved or (self.epoch % max(1, self.task.eval_every) == 0)
        # The deadline check of the epoch's last step, made after the epoch's evaluation: a deadline that passed in
        # the evaluation went unseen until the next epoch's first step, which was then evaluated again (11.6 s past
        # a 120 s budget on a busy machine). Now the run stops here, at the epoch's end, as a stop at its last step
        # would; without an evaluation due, before it (a budget stop is evaluated). Every rank agrees, as per step.
        look = deadline is not None and not stopped
        if look and not due:
            # a budget stop is evaluated, and so is the model a moved end's warm restart leaves behind (rev120 #1)
            due = self._agreed_stop(deadline)[1]
            stopped = last_epoch = due and not self._end_moved(record)
            look = False
        new_best = self._evaluate(record, epoch) if due else False
        if look:
            deadline = self._deadline()  # with the evaluation just timed
            stopped = self._agreed_stop(deadline)[1] and not self._end_moved(record)
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
        self.publish_best()  # a new best.pt only now: never ahead of last.pt and the log (a kill in between)
        barrier(self.ctx)
        return stopped
