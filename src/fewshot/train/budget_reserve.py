"""The time a plain `fewshot train` / `fewshot pretrain` budget keeps back for its closing work. After its budget stop
the Engine still evaluates the stopped weights (raw and EMA) and writes last.pt and best.pt: with the deadline at the
budget's end, train.budget_minutes=1 reported 1 min 05 s of training time (1 min 07 s under torchrun). The training
steps' deadline now comes that much earlier: the last evaluation's time (as timed in the run, or carried in last.pt
by a resume) and the checkpoint writes (as timed, else at ~250 MB/s). Before the run's first evaluation nothing is
known of its time, and only the writes are kept back.

A `fewshot run` stage keeps nothing back here: its run plans the stage's closing work in the stage's budget already
(run_stages.plan_stage's ``closing``), and a second reserve would count it twice.

BudgetReserveMixin's methods are the Engine's: they read fit_start, run_dir, _eval_took and checkpoint_bytes(); the
loop asks _deadline() for the steps' deadline, SavingMixin.save() records _save_took, ResumeMixin restores
_reserve_eval_s and _reserve_before from last.pt."""

from __future__ import annotations

from fewshot.run_state import is_run_stage

WRITE_BYTES_PER_S = 250e6  # a checkpoint write not timed yet (run_closing.closing_seconds counts the same rate)


class BudgetReserveMixin:
    """The budget's end, the reserve kept before it and the words the budget note says of it."""

    _budget_end: float | None = None  # fit_start + the budget (time.monotonic), None without a budget
    _reserving = False  # a plain train / pretrain budget: not a `fewshot run` stage
    reserve_s = 0.0  # the reserve in force: the budget's end minus the steps' deadline
    _reserve_has_eval = False  # whether reserve_s holds an evaluation's time (else only the writes)
    _reserve_eval_s: float | None = None  # the last evaluation's seconds of the sessions before (last.pt)
    _reserve_before = 0.0  # the reserve in force when last.pt was written (a resumed run's _budget_spent)
    _write_guess_s = 0.0  # one checkpoint write at WRITE_BYTES_PER_S, until one is timed

    def _start_budget(self, budget_minutes: float | None) -> None:
        """Called by fit() once fit_start is set."""
        self._budget_end = self.fit_start + budget_minutes * 60 if budget_minutes else None
        self._reserving = self._budget_end is not None and not is_run_stage(self.run_dir)
        if self._reserving:
            self._write_guess_s = self.checkpoint_bytes() / WRITE_BYTES_PER_S

    def _deadline(self) -> float | None:
        """The training steps' deadline: the budget's end less the closing work's estimate (read again after each
        evaluation, which times it anew)."""
        if self._budget_end is None:
            return None
        self.reserve_s = self._closing_estimate() if self._reserving else 0.0
        return self._budget_end - self.reserve_s

    def _closing_estimate(self) -> float:
        """Seconds of the work after a budget stop: its evaluation and the last.pt and best.pt writes."""
        eval_s = self._eval_took if self._eval_took is not None else self._reserve_eval_s
        self._reserve_has_eval = bool(eval_s)
        writes = sum(self._save_took.get(name, self._write_guess_s) for name in ("last", "best"))
        return (eval_s or 0.0) + writes

    def reserve_payload(self) -> dict:
        """last.pt's record of the reserve (a budget that keeps one only: measured times, which runs compared
        step for step leave out): a resume with the same budget finds no time left, and a resume before the next
        evaluation keeps time for one as long as the last."""
        if not self._reserving:
            return {}
        eval_s = self._eval_took if self._eval_took is not None else self._reserve_eval_s
        return {"budget_reserve_s": self.reserve_s, "reserve_eval_s": eval_s}

    def _reserve_words(self) -> str:
        """What the budget note says of the reserve ("" without one)."""
        if not self._reserving or self.reserve_s <= 0:
            return ""
        from fewshot.report.tables import duration

        if self._reserve_has_eval:
            return (f"; the training steps stopped {duration(self.reserve_s)} before the budget's end to keep time "
                    f"for the closing evaluation and checkpoint writes (as long as the run's last ones took)")
        return (f"; the training steps stopped {duration(self.reserve_s)} before the budget's end to keep time for "
                f"the checkpoint writes (no evaluation had been timed yet: the closing one ran past the budget)")
