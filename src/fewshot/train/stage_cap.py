"""A `fewshot run` stage's time-based schedule (sched.time_based): the lr follows the elapsed share of the stage's
budget, and the stage's epoch cap rises where the stage trains faster than its start-up timing planned.

Apart from the loop (engine.py) because the cap's arithmetic (the speed a stage trains at, the cap and evaluation
interval it needs, the floor a raised schedule goes on from) is one job of its own. StageCapMixin's methods are
the Engine's (they read and set its state): the loop asks _schedule_t(deadline) for each step's position and
_extend_cap(deadline) at each epoch's end.
"""

from __future__ import annotations

import math
import time

from fewshot.run_state import is_run_stage
from fewshot.train.distributed import all_reduce_max
from fewshot.train.optim import build_scheduler


CAP_SLACK = 0.1  # of a `fewshot run` stage's budget: left at its epoch cap, more raises the cap (_extend_cap)
LATE_POSITION = 0.95  # the schedule's position past which a stage's cap is not raised (_extend_cap)


class StageCapMixin:
    """The schedule's position in a time-based run, and the raise of a `fewshot run` stage's epoch cap."""

    _end_asked = False  # whether task.replan_end was asked (_end_moved: once, at the stage's first deadline)

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
        before = self.cfg["train"]["epochs"]
        self._set_cap(epochs, position)
        # last.pt at this epoch's end (_epoch_end_save_due), then config.yaml (save): a crash between a config.yaml
        # written at once and the next last.pt resumed the raised cap without its floor, the lr back up (rev47)
        self._cap_unsaved = True
        if not self.ctx.is_main:
            return
        print(f"note: this stage trains faster than its start-up timing planned ({self._judged_step_s * 1000:.0f} ms "
              f"a step in its last epoch, evaluations included): its epoch cap rises from {before} to {epochs} epochs, "
              f"so that it trains until its deadline ({max(0.0, deadline - now):.0f} s left) with its time-based "
              f"schedule going on from where it is.", flush=True)

    def _set_cap(self, epochs: int, position: float) -> None:
        """The epoch cap set to ``epochs`` with the schedule's ``position`` as its floor (_raise_cap, _end_moved): the
        scheduler is built for the new cap, and the optimizer keeps its lr until the next step sets it."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.cfg["train"]["epochs"], self._sched_floor = epochs, position
        self.scheduler = build_scheduler(self.cfg, self.optimizer, self.steps_per_epoch)
        for group, lr in zip(self.optimizer.param_groups, lrs):  # timm's set-up put the warmup's lr there
            group["lr"] = lr

    def _end_moved(self, row: dict) -> bool:
        """Whether the run moved a `fewshot run` stage's end later when its deadline passed (``task.replan_end(end,
        row)``, asked once: self-training's round 1, cut for the later rounds at its timing, is judged at its planned
        end at the speed it trained at; ``row`` is its epoch not in log.jsonl yet, with ``write_bps``, the rate of
        this fit's checkpoint writes so far). Asked at each epoch's end, it read
        the whole log every time and decided on the first epochs alone (review rev102). An end moved later re-plans
        the schedule as if it had been planned to that end: its position becomes the elapsed fraction of the new end
        (the lr rises again, a warm restart) and the epoch cap rises in proportion. Held at the old end's position,
        the lr stayed at its minimum for the whole extension: 15 of 16 epochs at 1e-5, test 35.5 against the
        baseline's 74.0 (hunt hCA #1). last.pt (with the new floor and cap) and then config.yaml are written at the
        epoch's end, after its evaluation, so that a kill and --resume keep the new end, cap and position. Not under
        DDP, where every rank must take the same end (`fewshot run` trains on one process)."""
        replan = getattr(self.task, "replan_end", None)
        if replan is None or self.ctx.enabled or self._end_asked:
            return False
        self._end_asked = True
        end = replan(self._budget_end, {**row, "write_bps": self.write_rate()})  # round 1's writes so far (None: none)
        if end <= self._budget_end + 1e-6:
            return False
        old_s, new_s = max(1e-9, self._budget_end - self.fit_start), max(1e-9, end - self.fit_start)
        epochs = max(1, math.ceil(self.cfg["train"]["epochs"] * new_s / old_s - 1e-9))  # the cap in proportion
        # the position as if planned to the new end: the elapsed fraction of it. The old end has passed (a run
        # stage keeps no reserve: its deadline is the budget's end), so that fraction is at least old_s / new_s, at
        # or above any floor a raise set (at most 1) rescaled to the new end: that term never bound (rev120 #4)
        position = max((time.monotonic() - self.fit_start) / new_s, self.global_step / (epochs * self.steps_per_epoch))
        self._set_cap(epochs, min(1.0, position))
        self._budget_end = end
        self.cfg["train"]["budget_minutes"] = max(1e-3, end - self.fit_start) / 60
        # the EMA's warm-up counts again from here: with the decay of the whole stage's steps (0.94 at step 76) it
        # held the restart's high-lr weights and scored 11 points below the raw ones to the end (review rev120 #2).
        # Only with train.ema_warmup: timm's decay is 0 at steps 0 and 1 whatever the warm-up, so a restart without
        # it would copy the raw weights into the EMA, not keep the constant decay the user set (review rev121 #4)
        if self.cfg["train"].get("ema_warmup", True):
            self._ema_step0 = self.global_step
        # config.yaml after last.pt: never ahead of its floor (rev47); the Engine's save follows at the epoch's end,
        # which a move inside an epoch ends, after the epoch's evaluation (review rev120 #1)
        self._cap_unsaved = True
        return True

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
