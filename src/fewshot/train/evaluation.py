"""The Engine's evaluations: the weights best.pt would hold scored (the EMA against the raw weights), a new best
written, and the evaluation a resume owes a run that stopped on a signal with its budget spent.

Apart from the loop (engine.py) because choosing what is scored and kept as best is a job of its own.
EvaluationMixin's methods are the Engine's: they read its state (task, model, ema, ctx, run_dir, epoch,
step_in_epoch, global_step, best_score, epoch_sums, epoch_steps), set last_eval, best_score, best_weights,
_eval_took and epoch_record, and call its save(), save_mid_epoch(), publish_best(), log(), _add_scalars(), _base_lr()
and _set_best_aside(); the loop calls _evaluate(record, epoch) when an evaluation is due (and publish_best() after its
last.pt and log row) and fit() calls _evaluate_the_stop().
"""

from __future__ import annotations

import json
import math
import time

from fewshot.train.distributed import all_reduce_mean, barrier, broadcast_object
from fewshot.utils import atomic_write_text


TIMING_KEYS = ("images_per_s", "epoch_time_s", "eval_time_s")  # measurements, not results


class EvaluationMixin:
    """Engine._evaluate and what it needs: the weights scored and the best kept; the evaluation of a stop."""

    def _evaluate(self, record: dict, epoch: int) -> bool:
        """Evaluate the model (epoch index ``epoch``) into the log row ``record``; a new best score writes the new
        best.pt as BEST_PENDING, which the caller's publish_best() puts in place after last.pt and the log row (best.pt
        is never ahead of them). Returns whether it did."""
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
        self.publish_best()  # after last.pt and the row, as an epoch's end
        barrier(self.ctx)
        return True
