"""Exact resume: an Engine's state restored from last.pt, and the run folder made to match it (log.jsonl trimmed,
the best.pt a budget stop kept aside put back or dropped).

Apart from the loop (engine.py) because resuming is its own story, told once per session before the loop starts:
what a checkpoint must be to be continued, what it restores, and what it changes in the run folder. ResumeMixin's
methods are the Engine's (they read and set its state); the loop calls resume(), _budget_spent(),
_announce_new_plan(), _set_best_aside() and trim_log().
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from fewshot.errors import CheckpointError, UserError, path_argument
from fewshot.run_state import is_run_stage
from fewshot.train.checkpoint import load_checkpoint, set_rng_state
from fewshot.train.distributed import barrier
from fewshot.train.optim import AMP_BY_NAME, AMP_NAMES, build_scheduler
from fewshot.train.start_checks import agree_on_checkpoint, check_resume_fits
from fewshot.utils import atomic_write_text, keep_copy, put_back


BEST_ASIDE = "best_before_stop.pt"  # best.pt as it was before a budget stop's partial epoch beat it
BEST_PENDING = "best.pt.pending"  # a new best.pt, written before its epoch's last.pt, put in place after it
# What a training session writes into its run folder besides last.pt and config.yaml (which a start rewrites): a
# start without last.pt removes an earlier session's, so that the log, best.pt, metrics and plots are of one run
SESSION_FILES = ("log.jsonl", "checkpoints/best.pt", f"checkpoints/{BEST_ASIDE}", f"checkpoints/{BEST_PENDING}",
                 "metrics.json", "metrics_known.json", "metrics_unknown.json", "plots/finetune_curves.png",
                 "plots/pretrain_curves.png")
TB_EVENTS = "tensorboard/events.out.tfevents.*"


def remove_earlier_session(run_dir: Path) -> list[str]:
    """Remove the files an earlier session of ``run_dir`` wrote (SESSION_FILES, its TensorBoard events) and return
    their names: a fresh start appended to its log.jsonl (epochs 1,2,3,1,2,...) and kept its best.pt and metrics.
    Only those names: a file of the user's in the folder stays (a renamed last.pt among them)."""
    removed = []
    for name in SESSION_FILES:
        path = run_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(name)
    events = [p for p in run_dir.glob(TB_EVENTS) if p.is_file() or p.is_symlink()]
    for path in events:
        path.unlink(missing_ok=True)
    for tmp in run_dir.glob("checkpoints/.*.pt.*.tmp"):  # a kill during a checkpoint write
        tmp.unlink(missing_ok=True)
    return removed + (["the tensorboard/ event files"] if events else [])


def removed_words(removed: list[str]) -> str:
    """``removed`` (remove_earlier_session's names) as a sentence's end: "a, b and c"."""
    return removed[0] if len(removed) == 1 else f"{', '.join(removed[:-1])} and {removed[-1]}"


def unreadable_last(exc: CheckpointError, path: Path, stage: bool = False) -> CheckpointError:
    """A last.pt that --resume cannot read (cut short by a full disk or a copy, damaged) with the way forward: moved
    away, the same command with --resume starts the run (the `fewshot run` stage) over, its earlier files removed.
    A run that finished (its metrics files) is not started over in place (prepare_run_dir refuses it): another
    --out, from its best.pt."""
    path = Path(path)
    ended = [] if stage else run_end_files(path.parent.parent)
    if ended:
        return unreadable_last_of_a_finished_run(exc, path, ended)
    broken = path.with_name(path.name + ".broken")
    what, kept = ("this stage", "; the stages finished before it are kept") if stage else ("this run", "")
    return CheckpointError(f"{str(exc).rstrip('.')}. It cannot be resumed from: move it away (`mv "
                           f"{path_argument(path)} {path_argument(broken)}`) and run the same command with --resume "
                           f"again to start {what} over (its earlier log.jsonl, best.pt and metrics are removed"
                           f"{kept}), or give another --out.")


def run_end_files(run_dir: Path) -> list[str]:
    """The metrics files (run_dir.RUN_END_ENTRIES) of a run that ended in ``run_dir``, sorted."""
    from fewshot.train.run_dir import RUN_END_ENTRIES

    return sorted(name for name in RUN_END_ENTRIES if os.path.lexists(run_dir / name))


def unreadable_last_of_a_finished_run(exc: CheckpointError, path: Path, ended: list[str]) -> CheckpointError:
    """unreadable_last of a run that finished: "move it away and --resume to start over" led to a refusal (a start
    over would delete the finished model), so the way forward is another --out, from the run's best.pt."""
    from fewshot.config import read_run_config
    from fewshot.train.run_dir import run_command, start_from_best

    run = path.parent.parent
    try:
        command = run_command(read_run_config(run / "config.yaml")[0])
    except (UserError, OSError):
        command = "train"
    return CheckpointError(f"{str(exc).rstrip('.')}. It cannot be resumed from, and the run finished "
                           f"({', '.join(ended)}): it is not started over in place, which would delete its best.pt "
                           f"and metrics. Put back an intact copy of last.pt to continue it, or choose another --out"
                           f"{start_from_best(run, command)}.")


class ResumeMixin:
    """Engine.resume and what it needs: the checks of last.pt against the run, the restore, and the run folder's
    files made to match the checkpoint."""

    def resume(self) -> bool:
        """Continue from the run's last.pt where every rank has the same one (False: there is none): its state
        restored, once the checks say it is this run's."""
        path = self.ckpt_dir / "last.pt"
        try:
            ck, unreadable = (load_checkpoint(path) if path.is_file() else None), None
        except CheckpointError as exc:  # said after the other ranks heard of it: alone, they waited
            ck, unreadable = None, unreadable_last(exc, path, is_run_stage(self.ckpt_dir.parent))
        except (UserError, OSError) as exc:
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
        self.keep_resolved_amp(ck.get("amp"))
        self.say_kept_amp()
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
        self._reserve_before = float(ck.get("budget_reserve_s") or 0.0)
        self._reserve_eval_s = ck.get("reserve_eval_s")
        self._sched_floor = float(ck.get("sched_floor") or 0.0)
        self._ema_step0 = int(ck.get("ema_step0") or 0)  # a moved end's restart of the EMA's warm-up (_end_moved)
        cap = ck.get("epochs_cap")  # a raised cap whose config.yaml write a crash cut off (_raise_cap)
        if is_run_stage(self.run_dir) and isinstance(cap, int) and cap > self.cfg["train"]["epochs"]:
            self.cfg["train"]["epochs"] = cap
            self.scheduler = build_scheduler(self.cfg, self.optimizer, self.steps_per_epoch)  # built for the cap
        every = ck.get("eval_every")  # re-spaced after a raise: the planned interval evaluated every epoch again
        if is_run_stage(self.run_dir) and self._sched_floor > 0 and isinstance(every, int) and every > 0:
            self.task.eval_every = max(int(self.task.eval_every), every)
        # a budget that stopped the run mid-epoch logged the partial epoch; its steps go on now, and the
        # finished epoch's row replaces that one (log.jsonl held epoch 22 three times)
        self._settle_pending_best(ck)  # before _drop_stop_best reads best.pt
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

    def _start_fresh(self) -> None:
        """--resume without a last.pt: the run starts from scratch, without what an earlier session of the folder
        wrote (remove_earlier_session). Rank 0 removes; the others wait, so that none writes before it is done."""
        if self.ctx.is_main:
            removed = remove_earlier_session(self.run_dir)
            also = (f": the earlier {removed_words(removed)} of this folder are removed" if removed else "")
            print(f"note: --resume given but {self.ckpt_dir / 'last.pt'} does not exist; starting fresh{also}.",
                  flush=True)
        barrier(self.ctx)

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
        file that does not exist. Under data.resize=auto, each dataset's recorded crop or pad is compared too."""
        from fewshot.config import flatten_dotted
        from fewshot.data.fit import resize_changes
        from fewshot.train.resume_config import resume_changes, resume_refused, settings_lost

        then, now = (flatten_dotted(c) for c in (ck.get("config") or {}, self.cfg))
        now = {k: v for k, v in now.items() if not k.startswith("_") and k != "model.weights"}
        changed = resume_changes(then, now) + resize_changes(ck.get("config") or {}, self.cfg,
                                                             f"checkpoint {self.ckpt_dir / 'last.pt'}")
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

    def _settle_pending_best(self, ck: dict) -> None:
        """A kill between a new best's write and publish_best() left it as BEST_PENDING. Where it is the best that
        last.pt names (its step and best score), last.pt was written after it: it becomes best.pt, what the run had
        next (a resume not bit-exact, with another thread count, would not write it again). Otherwise it goes: that
        evaluation is redone, or was never the run's (a last.pt of its step written before it, by a save every N
        steps or a signal stop)."""
        if self.ctx.is_main:
            pending = self.ckpt_dir / BEST_PENDING
            try:
                held = load_checkpoint(pending, mmap=True) if pending.is_file() else {}
            except Exception:  # noqa: BLE001 - torn or altered: a leftover, never the best last.pt names
                held = {}
            if (held.get("global_step"), held.get("best_score")) == (ck["global_step"], ck["best_score"]):
                os.replace(pending, self.ckpt_dir / "best.pt")
            else:
                pending.unlink(missing_ok=True)
        barrier(self.ctx)  # every rank then reads the same best.pt (_drop_stop_best)

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

    def keep_resolved_amp(self, saved: str | None) -> None:
        """With ``train.amp=auto`` a resumed run computes as it started, even where this machine (another host,
        FEWSHOT_CPU_BF16) would choose otherwise: resume then continues the same arithmetic. An explicit
        train.amp is the user's change and wins. run_finetune and run_pretrain call it before the run's header
        (which names the arithmetic: it said "fp32" above the note that the run continues in bf16), Engine.resume
        again (a no-op by then; where only some ranks resume, the first call). The note that says so waits for
        say_kept_amp, after resume's checks: a resume refused by them had been told that it continues."""
        if saved not in AMP_BY_NAME or self.cfg["train"]["amp"] != "auto" or AMP_BY_NAME[saved] == self.amp:
            return
        # a `fewshot run` stage: run --resume refuses a train.amp word, so none is advised
        change = "" if is_run_stage(self.run_dir) else "; set train.amp=bf16 or off to change it"
        self.kept_amp_note = (f"note: the run started in {saved} (train.amp=auto) and continues in it, though this "
                              f"machine would choose {AMP_NAMES[self.amp]}{change}.")
        self.amp = AMP_BY_NAME[saved]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)

    def say_kept_amp(self) -> None:
        """keep_resolved_amp's note, once, on rank 0."""
        note, self.kept_amp_note = getattr(self, "kept_amp_note", None), None
        if note and self.ctx.is_main:
            print(note, flush=True)

    def _budget_spent(self) -> bool:
        budget = self.cfg["train"].get("budget_minutes")
        # the tolerance: `fewshot run` gives a stage with no time left budget_minutes = trained / 60, and
        # (trained / 60) * 60 comes out a few ulp above `trained` for some values
        # (a plain train budget's stop came the reserve for its closing work early: that time is spent too)
        return bool(budget) and self._seconds_before >= budget * 60 - self._reserve_before - 1e-6

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
