"""`fewshot run`: pool -> MoCo pretraining -> export -> fine-tuning -> prediction -> report, in a budget.

Stage lengths are planned from measured step times on this machine (a few timed steps on a
throwaway copy of the model), so the same command fits a laptop CPU and a GPU. The cosine
schedules then run to completion inside their share; the engine's wall-clock guard only
catches mis-estimates.

Here: the run's phases in their order (PipelineRun.run), the stages it trains, the val guard, the prediction, the
report and the run's end. PipelineRun's other method groups are mixins by job: the start-up checks and refusals in
run_startup, the budget's split, the closing work's estimate and the least-run refusals in run_closing,
self-training's rounds before the last in run_rounds. One stage's plan and training are in run_stages, the start-up
checks of its settings and images in run_checks, what --resume reuses of a stage in run_reuse, the pool's
pseudo-labelling in run_pseudo, the wording of the run's lines in run_words, the time arithmetic in run_budget
and the record of how far it got in run_state.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path

from fewshot.config import CHOSEN, MAX_BUDGET_MINUTES, RECHOSEN
from fewshot.data.cache import shared_stat_pass
from fewshot.errors import UserError, one_line
from fewshot.eval.evaluate import format_table
from fewshot.eval.routing import routing_words
from fewshot.run_budget import (calibration_seconds, free_device_memory, measure_eval_seconds, report_beyond_cap,
                                report_seconds, stop_timing_when)
from fewshot.run_closing import ClosingMixin
from fewshot.run_fallbacks import FallbacksMixin, StageDropped
from fewshot.run_guard import round_loss_note
from fewshot.run_rounds import LaterRoundSkipped, RoundsMixin
from fewshot.run_reuse import better_earlier_round
from fewshot.run_stages import finetune_config, finetune_stage, gently_entry, pretrain_stage
from fewshot.run_startup import StartupMixin
from fewshot.run_state import STATE_FILE, resumed_skip_records
from fewshot.run_words import labelled_passes, minutes_text, near_chance_finding, near_chance_why, overrun_note
from fewshot.train.budget_reserve import WRITE_BYTES_PER_S
from fewshot.utils import write_json


def run_pipeline(cfg: dict, out: Path, budget_minutes: float | None, started: float | None = None,
                 resume: bool = False) -> dict:
    """The whole pipeline within ``budget_minutes``, counted from ``started`` (time.monotonic(); the CLI passes
    the process start, so that imports and start-up are inside the budget) or from this call.
    ``resume``: continue the `fewshot run` that a signal stopped in ``out`` (its run_state.json): finished
    stages are reused, the stopped one continues from its last.pt, and the budget counts the time it had
    used (``budget_minutes`` None: the run's own)."""
    run = PipelineRun(cfg, out, budget_minutes, started, resume)
    try:
        return run.run()
    except BaseException:  # a signal's stop (StopRequested), a second Ctrl-C, an error: the session's time counts
        run.note_stop()
        raise


class PipelineRun(StartupMixin, ClosingMixin, RoundsMixin, FallbacksMixin):
    """One session of `fewshot run`, phase by phase (run() lists them). The attributes are what the phases share:
    the run's clock (``t_start``, moved back on --resume by the time of the sessions before, and ``budget_s``),
    its RunState and summary, the inputs checked at start-up, and the plan that later phases revise as they time
    this machine (self-training's ``rounds`` and ``skip`` decision, the ``report_stages`` the report draws, the
    report's estimate in ``report_plan``). Every input is checked before the run folder is started, so that a
    refused start leaves no run behind."""

    def __init__(self, cfg: dict, out: Path, budget_minutes: float | None, started: float | None, resume: bool):
        self.t_start = time.monotonic() if started is None else started
        self.cfg, self.out, self.budget_minutes, self.resume = cfg, Path(out), budget_minutes, resume
        self.rechosen = cfg.pop(RECHOSEN, None)  # for note_run_rechosen; not a setting the run records
        # what the command chose (the weights' model), for the stages' config.yaml: kept out of the settings that
        # run_state.json records and a --resume must repeat, and back in cfg once those are taken (start_up)
        self.chosen = cfg.pop(CHOSEN, None)
        self.state = None
        self.stop_clock: tuple | None = None  # (state, t_start) once the run has them: what a stop counts
        self.pool_limit = None  # the pool files self-training decodes and labels (None: all)
        self.n_unlabeled = None  # what round 1 leaves time to label
        self.n_moco = None  # the decodable images of MoCo's pool, counted at start-up (None: no MoCo)
        self.fixmatch = None  # FixMatch's settings and pool, for summary.json
        self.task = self.pseudo = self.skip = self.rounds = self.round1_val = None
        self.earlier: dict = {}  # self-training's rounds before the last, for the val guard
        self.skipped = False
        self.speeds_before = None  # check_later_rounds: the speeds of the round before a later one, for its timing
        self.closing_plan: dict | None = None  # plan_closing: the closing work of the stage that trains until it
        self.locked = False  # claim_output: whether this start holds the folder's lock (then it may undo its start)
        self.timed_step_s: float | None = None  # refuse_if_hopeless: the last step speed the start-up timed
        self.session_before_lost = False  # a resumed run's session before ended without recording its time
        self.state_as_read: dict | None = None  # a resumed run's state before this session opened (undo_start)
        # checkpoint writes' bytes a second (note_writes): a guess until a stage writes; a --resume starts from the
        # rate run_state.json kept (plan_budget), and a reused or "trained" stage sets none
        self.writes_bps = WRITE_BYTES_PER_S
        self.startup_s: float | None = None  # a resumed session's start-up seconds (start_state), for its warnings

    def note_stop(self) -> None:
        """A stop (a signal, Ctrl-C, an error) counts this session's time in the run's state, once the run has one
        and while it is there (a refused start has undone its own: writing it again would leave a run behind). A
        failure to write it leaves the stop's own exception to be reported."""
        if self.stop_clock is not None:
            state, t_start = self.stop_clock
            if (state.out / STATE_FILE).is_file():
                with contextlib.suppress(Exception):
                    state.note_stop(time.monotonic() - t_start)

    def run(self) -> dict:
        """The phases in their order; a --resume of a run that finished returns its summary as it is."""
        finished = self.start_up()
        if finished is not None:
            return finished
        with stop_timing_when(self.refuse_if_hopeless):  # the timings until the first stage trains
            with self.undone_if_start_fails():
                self.check_test_split()
                self.check_pseudo_precision()
                self.pretrain_kept_off()  # a resume after MoCo's drop: its pool is not decoded
                self.fixmatch_kept_off()  # a resume after FixMatch's drop: its pool is not decoded
                self.choose_model()
                with shared_stat_pass():  # the pool's files are stat'ed once for the cache, not by each check
                    self.decode_inputs()
                    if self.semi == "pseudo":
                        self.check_self_training_pool()
                    if self.semi == "fixmatch":
                        self.check_fixmatch_pool()
                self.start_state()
                self.say_kept_off()  # after "[run] resuming"
            self.plan_budget()
            self.dropped_before()
            self.pretrain()
            self.fine_tune()
        self.guard_on_val()
        metrics = self.predict()
        self.report(metrics)
        self.finish()
        return self.summary

    def keep(self, stage: str, entry: dict, fit_s: float) -> None:
        """A stage's summary entry (with its own length) and training time, kept in the run's state."""
        now = time.monotonic() - self.t_start
        self.summary["stages"][stage] = {**entry, "seconds": self.state.stage_seconds(now)}  # the stage's own length
        self.fit_seconds.append(fit_s)
        self.state.keep_summary(self.summary, self.fit_seconds, now)

    def finetune(self, fdir: Path, end_time: float, what: str, *args, **kwargs):
        """finetune_stage with the run's config, data, device and clock (``args``: pseudo, closing)."""
        task, metrics = finetune_stage(self.fcfg, self.infos, self.device, self.ctx, fdir, end_time, what, *args,
                                       **kwargs, state=self.state, t_start=self.t_start,
                                       timing_s=calibration_seconds(*self.speeds_before, len(self.test_set))
                                       if self.speeds_before else None,
                                       run=self)
        self.note_writes(getattr(task, "write_bps", None))  # a reused stage wrote nothing
        self.note_resumed_skip(fdir.name, getattr(task, "resumed_training_skipped", None))
        return task, metrics

    def note_resumed_skip(self, stage: str, skipped: dict | None) -> None:
        """summary.json's records of the resumed stages that trained no further (go_on_resumed), one per stage, kept
        with the stage's summary entry (keep). One record for the run lost MoCo's skip to a fine-tuning's skip in a
        later session (review rev117 #2)."""
        if skipped is not None:
            record = {"stage": stage, **skipped}
            records = resumed_skip_records(self.summary.get("resumed_training_skipped"))
            # a stage's own later record takes its place in the list (review rev119 #4)
            records = [record if r["stage"] == stage else r for r in records]
            self.summary["resumed_training_skipped"] = records if record in records else [*records, record]

    def moco_end(self, at: float) -> float:
        """MoCo's end (run.pretrain_share) where its share is taken at monotonic ``at``: its share of the time the
        stages have left then (start-up and the test decoding came out of the whole)."""
        return at + (self.t_start + self.stage_s - at) * self.r["pretrain_share"]

    def pretrain(self) -> None:
        """MoCo pretraining (run.pretrain), in its share of the time the stages have left."""
        self.weights = self.cfg["model"]["weights"]
        if not self.r["pretrain"]:
            return
        self.pre_end = self.moco_end(time.monotonic())
        why = None
        try:
            self.weights, entry, fit_s = pretrain_stage(self.cfg, self.infos, self.device, self.ctx, self.out,
                                                        self.pre_end, self.state, self.t_start, self.pretrain_closing,
                                                        pool_size=self.n_moco, writes=self.note_writes,
                                                        run_end=self.t_start + self.budget_s, run=self)
        except StageDropped as dropped:  # its share cannot hold MoCo's least run once the fine-tuning's is kept back
            why = dropped.why  # said after the block: its traceback holds MoCo's task (model, pool)
        if why is not None:
            free_device_memory(self.device)
            return self.drop_pretrain(why)
        if fit_s or "pretrain" not in self.summary["stages"]:  # reused (0 s): kept before, its time counted once
            if fit_s:  # a resumed stage's skip, in run_state.json since go_on_resumed (a reused one kept it before)
                self.note_resumed_skip("pretrain", self.state.stage("pretrain").get("resumed_training_skipped"))
            self.keep("pretrain", entry, fit_s)

    def fine_tune(self) -> None:
        """The fine-tuning stages: self-training's rounds before the last, then the last stage (the report's
        estimate made after it when no stage was planned this session)."""
        self.fcfg = finetune_config(self.cfg, self.weights, self.semi)  # after a drop of MoCo or FixMatch: without it
        self.fdir = self.out / "finetune"
        self.end_time = self.t_start + self.stage_s
        self.last_end = self.t_start + self.budget_s  # the last stage ends where its measured closing work still fits
        if self.semi == "pseudo":
            self.self_train()
        self.last_stage()
        if self.report_plan["seconds"] is None:  # a resumed run with no stage left to train: the report's own estimate
            task, stages = self.task, self.report_stages
            eval_s = measure_eval_seconds(task) if stages else 0.0  # the warning's speed too (0: it times a batch)
            self.report_plan["seconds"] = report_seconds(task, eval_s, stages, self.report_plan["figure_s"])
            self.report_plan["beyond_cap"] = report_beyond_cap(task, stages, self.report_plan["figure_s"])
            self.warn_if_predicting_late(task, eval_s)
            del task
        self.task = None

    def last_stage(self) -> None:
        """The stage that predicts, unless the val guard prefers an earlier round: `finetune` (the only stage
        without self-training, its last round with it), trained until the closing work; or, where self-training's
        later rounds were skipped, the last round that trained. Self-training's changes of plan go into the
        summary."""
        r, skip, summary, semi = self.r, self.skip, self.summary, self.semi
        if semi == "pseudo" and skip.get("reduced_why"):  # middle rounds dropped: the last round came sooner
            summary["self_training_reduced"] = {"planned": int(r["pseudo_rounds"]),
                                                "kept": skip.get("reduced_to", self.rounds), "why": skip["reduced_why"]}
        if semi == "pseudo" and skip.get("labelled_only"):  # the last round trained without pseudo-labels
            summary["self_training_labelled_only"] = {"round": skip["labelled_only"],
                                                      "planned": int(r["pseudo_rounds"]),
                                                      "why": skip["labelled_only_why"]}
        self.skipped = semi == "pseudo" and skip["skipped_from"] is not None
        if not self.skipped:
            why = None
            try:
                return self.train_last_stage()
            except StageDropped as dropped:  # FixMatch's schedule too short to learn: the labelled-only fine-tune
                why = dropped.why  # trained after the block: its traceback holds FixMatch's task (model, pool)
            except LaterRoundSkipped:  # planned with its own speeds, its least run did not fit: the round before
                self.skipped = True
                summary.pop("self_training_labelled_only", None)
                shutil.rmtree(self.fdir, ignore_errors=True)  # made for it, nothing trained
            if why is not None:
                free_device_memory(self.device)  # FixMatch's model, moved there by its timing, is gone with it
                self.drop_fixmatch(why)
                return self.train_last_stage()
        if self.skipped:  # the last round that finished predicts (or an earlier one the val guard prefers)
            summary["self_training_skipped"] = {"rounds": list(range(skip["skipped_from"],
                                                                     int(r["pseudo_rounds"]) + 1)),
                                                "why": skip["why"]}
            last_name = "finetune_labelled" if self.rounds == 1 else f"finetune_round{self.rounds}"
            self.fdir, self.val_metrics = self.out / last_name, self.earlier.pop(last_name)

    def train_last_stage(self) -> None:
        """last_stage's `finetune`, trained until the closing work; a later self-training round's planning may skip
        it (later_round_closing: LaterRoundSkipped)."""
        pseudo, semi, summary = self.pseudo, self.semi, self.summary
        has_pool = pseudo is not None and len(pseudo["images"]) > 0
        optional = semi == "pseudo" and pseudo is not None  # a later round: the round before can predict
        task, self.val_metrics = self.finetune(self.fdir, self.last_end,
                                               "with FixMatch on the unlabeled pool" if semi == "fixmatch" else
                                               "on labelled + pseudo-labelled pool images" if has_pool else
                                               "on the labelled images again" if pseudo else "", pseudo,
                                               self.later_round_closing(self.rounds) if optional else
                                               self.last_closing)
        self.task = task
        if not task.reused or "finetune" not in summary["stages"]:
            labels = pseudo.get("summary") if pseudo is not None else None  # none: a round on the labelled images
            self.keep("finetune", {"epochs": task.epochs_run,
                                   **({"pseudo_labels": labels} if labels is not None else {}), **gently_entry(task)},
                      task.fit_seconds)

    def guard_on_val(self) -> None:
        """Self-training's val guard: the stage that predicts is the round that scores highest on val."""
        summary, earlier = self.summary, self.earlier
        summary.pop("last_round_lost", None)  # a resumed run's, from its first session: decided again here
        if self.pseudo is not None or self.skipped:
            # a guard chosen on val: if pseudo-labels hurt (an earlier round scores higher on val than the last),
            # predict with the best of them; a middle round that beat both round 1 and the last was passed over
            summary["stages"]["finetune_labelled"]["val_mean_acc1"] = self.round1_val
            last_val = self.val_metrics.get("mean_acc1")
            if self.fdir.name in ("finetune", *(n for n in summary["stages"] if n.startswith("finetune_round"))):
                summary["stages"][self.fdir.name]["val_mean_acc1"] = last_val
            self.note_scores_compared({**earlier, self.fdir.name: self.val_metrics})
            best = better_earlier_round(earlier, last_val)
            if best is not None:
                which = "round 1" if best == "finetune_labelled" else f"round {best.removeprefix('finetune_round')}"
                line = (f"[run] {which} scores highest on val ({earlier[best]['mean_acc1']:.2f} vs {last_val:.2f} "
                        f"for the last round): predicting with it")
                lost = self.last_round_lost(earlier[best])
                if lost is not None:  # lost by more than val's noise: its pseudo-labels are the likely cause
                    summary["last_round_lost"] = lost
                    line += f". {lost['why']}"
                print(one_line(line), flush=True)
                self.fdir, self.val_metrics = self.out / best, earlier[best]
        summary["predicted_with"] = self.fdir.name

    def last_round_lost(self, best: dict) -> dict | None:
        """run_guard.round_loss_note of the last round (``self.fdir``) against the ``best`` earlier one's val
        metrics, with the pseudo-labels it trained on (its summary entry's pseudo_labels) and how it trained."""
        name = self.fdir.name
        which = f"round {self.rounds}" if name == "finetune" else f"round {name.removeprefix('finetune_round')}"
        entry = self.summary["stages"].get(name) or {}
        return round_loss_note(which, best, self.val_metrics, entry.get("pseudo_labels"),
                               {**entry, "lr": self.round_lr()})

    def round_lr(self) -> float | None:
        """The last round's lr (``self.fdir``'s config.yaml), which the guard's words name; None where unread."""
        from fewshot.config.yaml_io import load_yaml_or_none
        from fewshot.errors import UserError

        path = self.fdir / "config.yaml"
        try:
            cfg = load_yaml_or_none(path) if path.is_file() else None
        except (UserError, OSError):
            return None
        lr = ((cfg or {}).get("optim") or {}).get("lr")
        return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None

    def note_scores_compared(self, metrics: dict) -> None:
        """Beside each round's val_mean_acc1 in summary.json, how many val scores it is the best of (its
        metrics.json's val_scores_compared): a maximum of many scores on a small val is optimistic."""
        for name, entry in self.summary["stages"].items():
            compared = (metrics.get(name) or {}).get("val_scores_compared")
            if "val_mean_acc1" in entry and compared is not None:
                entry["val_scores_compared"] = compared

    def predict(self) -> dict:
        """The test images predicted (pred_all.json) and scored where answer keys allow (metrics.json); returns
        the metrics for summary.json."""
        from fewshot.eval.predict import by_folder, folder_keyed, predict_and_score, score_predictions

        out, test_infos = self.out, self.test_infos
        val_metrics = folder_keyed(self.val_metrics, test_infos)  # named as pred_all.json and the test scores are
        root = self.root = Path(self.cfg["data"]["root"])
        balanced: dict = {}  # per dataset: whether its predictions were evened out, and on what val evidence
        pred, _, scores = predict_and_score(self.fdir, root, self.device, preloaded=(test_infos, self.test_set),
                                            unscorable=self.unscorable, balance=self.balance, balanced=balanced,
                                            who="run", setting="run.balance")
        if balanced:
            self.summary["balanced_prediction"] = {"setting": self.balance, "datasets": balanced}
        write_json(out / "pred_all.json", pred)
        self.note_near_chance(pred, folder_keyed(known_source_val(self.fdir, self.val_metrics), test_infos),
                              by_folder({info.name: info for info in test_infos}, test_infos))
        metrics = {"val": val_metrics}
        if scores is not None:
            test, test_unknown = scores["known"], scores["unknown"]
            # metrics.json covers every dataset of the model: the test scores when every dataset has them, else val
            write_json(out / "metrics.json", val_metrics if test.get("not_scored") else test)
            test_ids = {info.name: [i for i, _ in info.test] for info in test_infos}
            metrics.update({"test": test, "test_unknown": test_unknown,
                            "pred_all_score": score_predictions(pred, root, self.class_names, skip=self.unscorable,
                                                                warn=False,  # read_answer_keys warned
                                                                test_ids=test_ids)})
            print(format_table(test, title="test accuracy (scored against test_labels.json)"))
            print(f"unknown-source test: mean acc@1 {test_unknown['mean_acc1']:.2f}, {routing_words(test_unknown)}")
            if test.get("not_scored"):
                print(one_line(f"[run] {', '.join(test['not_scored'])} not scored on test: metrics.json holds the val "
                               f"scores of every dataset, summary.json these test scores."))
        else:
            write_json(out / "metrics.json", val_metrics)
            print("[run] no test split could be scored (no usable answer key): metrics.json holds the val scores.")
        return metrics

    def note_near_chance(self, pred: dict, val_metrics: dict, infos: dict) -> None:
        """summary.json's near_chance, for finish's last warning: the datasets whose val acc@1 is not clearly above
        chance, or whose test predictions fell nearly all in one class (run_words.near_chance_finding). A run that
        ended at chance said "done" and exited 0, and the user found out from the grader. Judged on the predicting
        model's val scores: a dataset without them is passed over. ``infos``: the test datasets as pred_all.json and
        ``val_metrics`` key them."""
        scores = val_metrics.get("datasets") or {}
        found = {}
        for key, info in infos.items():
            acc1 = scores.get(key, {}).get("acc1") if isinstance(scores.get(key), dict) else None
            if not isinstance(acc1, (int, float)) or not isinstance(pred.get(key), dict):
                continue
            finding = near_chance_finding(list(info.classes), [label for _, label in info.val], float(acc1),
                                          list(pred[key].values()))
            if finding is not None:
                found[key] = finding
        if not found:  # a resumed run's summary may hold an earlier session's
            self.summary.pop("near_chance", None)
            return
        repeat = (self.cfg.get("run") or {}).get("pseudo_labelled_repeat", 1)
        why = near_chance_why(found, self.fdir.name, labelled_passes(self.summary["stages"], self.fdir.name, repeat),
                              pred.get("n_parameters"), bool(self.cfg["model"].get("weights")))
        self.summary["near_chance"] = {"datasets": found, "why": why}

    def report_skips_images(self) -> str | None:
        """Why the report leaves out its image-based parts (the time left cannot hold them), or None."""
        out = self.out
        base_s, images_s = self.report_plan["seconds"]
        # at the figure speed as timed: the cap is for planning; a report that draws slower must not end late
        images_s += self.report_plan.get("beyond_cap", 0.0) if images_s else 0.0
        left = self.t_start + self.budget_s - time.monotonic()
        if not (self.r.get("report", True) and images_s and base_s + images_s > left):
            # a session stopped while drawing a report without them kept the word in the run's summary
            self.summary.pop("report_without_images", None)
            return None
        skip_images = (f"about {max(0.0, left):.0f} s of the budget were left for the report, which takes about "
                       f"{base_s + images_s:.0f} s with them here (planned, not an error); `fewshot report {out} "
                       f"--out {out / 'report'}` draws them.")
        self.summary["report_without_images"] = skip_images
        print(one_line(f"[run] the report leaves out its confusion matrices, embedding map and prediction grid: "
                       f"{skip_images}"), flush=True)
        return skip_images

    def report(self, metrics: dict) -> None:
        """summary.json, then the report drawn from it (run.report); a report failure leaves the predictions."""
        out, summary = self.out, self.summary
        skip_images = self.report_skips_images()  # left out when the time left cannot hold them
        summary["seconds"] = time.monotonic() - self.t_start
        summary["metrics"] = metrics
        write_json(out / "summary.json", summary)
        if self.r.get("report", True):
            from fewshot.report.build import build_report

            try:
                index = build_report([out], out / "report", data=str(self.root), device=self.device.type,
                                     skip_images=skip_images,
                                     # the run's own --skip-bad-images: its val images
                                     skip_bad=bool(self.cfg["data"].get("skip_bad_images", False)))
                print(f"[run] report: {index}")
            except Exception as exc:  # the predictions are written; a report failure must not hide them
                print(f"[run] report failed ({type(exc).__name__}: {exc}); predictions and metrics are written.")

    def finish(self) -> None:
        """The run's length in summary.json and its state (finished), and a note where it ran past its budget."""
        out, budget_s = self.out, self.budget_s
        total_s = time.monotonic() - self.t_start
        closing = self.closing_record(total_s)
        if closing is not None:  # the plan's estimate beside the real time, for the next look at the budget
            self.summary["closing_seconds"] = closing
        if self.r.get("report", True) or closing is not None:  # the report read it; `seconds` now counts the report
            self.summary["seconds"] = total_s
            write_json(out / "summary.json", self.summary)
        self.state.finish(total_s)  # after the report: a run stopped while drawing it draws it again on --resume
        lost = int(self.state.data.get("unrecorded_sessions") or 0)
        if self.summary.get("near_chance"):  # last, beside "done": the files are valid, the model is not
            print(one_line(f"[run] warning: {self.summary['near_chance']['why']}"), flush=True)
        # in seconds: tenths of a minute rounded 93 s of a 90 s budget to "1.6 of 1.5 minutes", an overrun to read
        print(f"[run] done in {total_s:.0f} s of {budget_s:.0f} s ({minutes_text(self.budget_minutes)}): "
              f"{out}/pred_all.json, {out}/metrics.json"
              + (f" (not counted: what {lost} session{'s' if lost > 1 else ''} that ended "
                 f"without a word ran after {'their' if lost > 1 else 'its'} last record)" if lost else ""))
        if total_s > 1.05 * budget_s:
            # a resumed run: the sessions before this one, whose start-up and closing work it did again
            print(overrun_note(total_s, budget_s, sum(self.fit_seconds), self.used if self.resume else None))


def known_source_val(fdir: Path, val_metrics: dict) -> dict:
    """The predicting stage's known-source val scores, as pred_all.json predicts: its metrics.json's where
    train.eval_mode is known, else its metrics_known.json; {} where it has none (an older stage). Unknown-source
    scores count an image routed to another dataset as wrong, and compared with 1/classes they called 73-98 %
    test accuracy guessing."""
    if val_metrics.get("mode") != "unknown":
        return val_metrics
    try:
        known = json.loads((fdir / "metrics_known.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return known if isinstance(known, dict) and known.get("mode") == "known" else {}


def check_budget(minutes: float) -> None:
    """A positive, finite number of minutes (inf and nan used to pass: nan planned nothing, inf crashed), at most
    MAX_BUDGET_MINUTES, so that its seconds stay finite."""
    if minutes is None or not math.isfinite(minutes) or minutes <= 0:
        raise UserError(f"--budget-minutes must be a positive number of minutes, not {minutes!r}.")
    if minutes > MAX_BUDGET_MINUTES:
        raise UserError(f"--budget-minutes {minutes:g} is more than any run can use: give at most "
                        f"{MAX_BUDGET_MINUTES:,.0f} minutes (about 19 years).")
