"""`fewshot run`: pool -> MoCo pretraining -> export -> fine-tuning -> prediction -> report, in a budget.

Stage lengths are planned from measured step times on this machine (a few timed steps on a
throwaway copy of the model), so the same command fits a laptop CPU and a GPU. The cosine
schedules then run to completion inside their share; the engine's wall-clock guard only
catches mis-estimates.

Here: the run's phases (PipelineRun) and its start-up refusals. One stage's checks, plan and training are in
run_stages, the pool's pseudo-labelling in run_pseudo, the wording of the run's lines in run_words, the time
arithmetic in run_budget and the record of how far it got in run_state.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import time
from pathlib import Path

from fewshot.config import (CHOSEN, MAX_BUDGET_MINUTES, RECHOSEN, canonical_value, note_chosen, note_rechosen,
                            same_recorded_path)
from fewshot.data.cache_files import ensure_writable_dir
from fewshot.data.layout import scan_root
from fewshot.data.output_guard import check_output_is_not_in_data
from fewshot.data.skipped import write_skipped
from fewshot.errors import UserError, one_line
from fewshot.eval.evaluate import format_table
from fewshot.progress import set_enabled
from fewshot.run_budget import (CLOSING_SHARE, FIGURE_S, FLOOR_STEPS, LEAST_RUN_S, after_round1_seconds,
                                calibration_seconds, eval_passes, figure_seconds, free_device_memory,
                                hopeless_budget_error, later_rounds_seconds, least_run_holds, least_run_seconds,
                                measure_eval_seconds, measure_prediction_seconds, measure_step_seconds,
                                pretrain_closing_seconds, pretrain_least_seconds, report_seconds, retimed_steps,
                                round1_leaves, stop_timing_when, time_holds, too_short_budget_error)
from fewshot.run_lock import lock_run_dir, refuse_if_being_written
from fewshot.run_pseudo import LABEL_SHARE, pool_decode_limit, precision_cap, pseudo_label_pool, recorded_pseudo_labels
from fewshot.run_stages import (adopt_stage_architecture, auto_img_size, better_earlier_round, check_finetune_batches,
                                check_model, check_pool_images, check_pretrain_settings, finetune_config,
                                finetune_stage, labelled_only_round, preload_images, pretrain_stage,
                                read_finished_json, reusable_stage, round_speeds, weights_replaced_by)
from fewshot.run_state import STATE_FILE, RunState, holds_finished_run
from fewshot.run_words import (UNRECORDED, labelled_only_why, minutes_text, near_chance_finding, near_chance_why,
                               overrun_note, pretrain_resumed_late_warning, resumed_late_warning, seconds_apart,
                               seconds_text)
from fewshot.utils import (derive_seed, loads_run_json, missing_parents, refuse_links_in_run_dir, resolve_device,
                           resolved, write_json)


# here, not in run_budget: tests patch report_seconds on this module, and only a call from here sees the patch
def closing_seconds(task, eval_s: float, per_test_image: float, n_test: int, report_stages: int,
                    figure_s: float = FIGURE_S, images: bool = True, balance_check: bool = False) -> float:
    """What a run does after its last training step, estimated from this machine's measured speed: the
    stage's closing evaluations (the stopped epoch's, of both the EMA and the raw weights where there is an EMA:
    eval_passes; the best checkpoint's) and checkpoint writes, one prediction pass over the test images (and one
    over val where ``balance_check``: run.balance reads val to decide and to test for a skew), and the report
    (report_seconds; ``images`` False: without its image-based parts)."""
    n_params = sum(p.numel() for p in task.model.parameters())
    saves = n_params * 24 / 250e6  # last.pt (weights, EMA, AdamW's two slots) + best.pt (weights, EMA), ~250 MB/s
    base, drawn = report_seconds(task, eval_s, report_stages, figure_s)
    evaluations = (eval_passes(task) + 1 + int(balance_check)) * eval_s
    return evaluations + saves + per_test_image * n_test + base + (drawn if images else 0.0)


class LaterRoundSkipped(Exception):
    """Raised by plan_stage's hook of an optional later round (PipelineRun.later_round_closing) whose least run does
    not fit the time left: the round loop leaves it untrained and the round before it predicts."""


# what the fine-tuning stages take from a --weights file (adopt_weights_architecture), which the note does not read
FROM_WEIGHTS_FILE = ("model.width", "model.small_stem")


def _step_words(steps: list[float]) -> str:
    """Step speeds in words: "20000 ms a step", "4000 and 30 ms a step" (MoCo's, then the fine-tuning's)."""
    return f"{' and '.join(f'{s * 1000:.0f}' for s in steps)} ms a step"


def round1_retimed(run, task, step_s: float, need) -> float:
    """Round 1's step speed where self-training's later rounds and round 1's own least run (``need([step_s])``) do
    not fit the time left at its timing (``step_s``, PipelineRun.round1_closing): timed once more and the faster
    kept (retimed_steps, as the least-run refusal does), on the task too (retimed_step_s: round 1 plans at it). A
    timing that met one busy moment of a shared machine (10-100x slow) skipped the later rounds, self-training's
    gain, of a run that held them at the machine's own speed; a truly slow machine still skips them."""
    faster = retimed_steps(measure_step_seconds, [(task, step_s)], need, lambda: run.last_end - time.monotonic(),
                           least_run_holds)[0]
    if faster < step_s:
        run.keep_faster([step_s], [faster], time_holds(need([faster]), run.last_end - time.monotonic()),
                        "at round 1's planning ({}) left no room for self-training's later rounds; timed again ({}) "
                        "they fit, and round 1 plans at that speed")
    return faster


def note_run_rechosen(cfg: dict, rechosen: dict | None, semi: str) -> None:
    """`fewshot run --config RUN/config.yaml` chose the lr (and the other fields that run chose itself) again
    without the note `train --config` gives: the same note (config.note_rechosen), once, on the fine-tuning stages'
    lr rules (``rechosen``: config.mark_rechosen's record). The weights file is not read for a note (a .pt is
    loaded whole): the fields only it would give are left out."""
    if not rechosen:
        return
    weights = cfg["model"]["weights"]
    if weights:
        rechosen = {**rechosen, "values": {dotted: value for dotted, value in rechosen["values"].items()
                                           if dotted not in FROM_WEIGHTS_FILE}}
    note_rechosen({**finetune_config(cfg, weights, semi, read_weights=False), RECHOSEN: rechosen})


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


class PipelineRun:
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
                self.choose_model()
                self.decode_inputs()
                if self.semi == "pseudo":
                    self.check_self_training_pool()
                if self.semi == "fixmatch":
                    self.check_fixmatch_pool()
                self.start_state()
            self.plan_budget()
            self.pretrain()
            self.fine_tune()
        self.guard_on_val()
        metrics = self.predict()
        self.report(metrics)
        self.finish()
        return self.summary

    def start_up(self) -> dict | None:
        """The settings, the output folder (claimed and locked) and the device. Returns the summary of a resumed run
        that had finished, else None."""
        from fewshot.train.distributed import DistContext

        cfg, out = self.cfg, self.out
        refuse_if_being_written(out)  # before its state is judged: "already used" / "--resume" named the wrong cause
        self.requested = copy.deepcopy(cfg)  # the settings as asked for, which a --resume must repeat
        # always a record, if empty: a stage's config.yaml without one is taken for an older fewshot's, and the
        # user's --lr 0.004 or --device cpu there for values the run chose (chosen_by_rule)
        cfg[CHOSEN] = dict(self.chosen or {})
        if self.resume:
            finished = self.resume_state()
            if finished is not None:
                return finished
        elif self.budget_minutes is None:
            raise UserError("a budget is needed: --budget-minutes N.")
        else:  # before any work: a budget the start-up spent, or below what any run needs, is refused at once
            # one process decides: `fewshot run` never runs under torchrun (cli.refuse_several_processes refuses
            # WORLD_SIZE > 1 before this, and self.ctx is a one-process DistContext), so no rank can go on alone
            used = time.monotonic() - self.t_start
            if not least_run_holds(LEAST_RUN_S, self.budget_minutes * 60.0 - used):
                raise hopeless_budget_error(self.budget_minutes * 60.0, used)
        self.r = cfg["run"]
        self.semi = check_run_settings(self.r)
        self.balance = canonical_value("run.balance", self.r.get("balance", "auto"))  # YAML reads a bare off as false
        set_enabled(bool(cfg["train"]["progress"]))
        check_output_is_not_in_data(out, cfg["data"]["root"], cfg["data"].get("unlabeled"))
        with self.undone_if_start_fails():
            self.claim_output()
            self.used = self.state.seconds_used() if self.state is not None else 0.0  # the sessions before this one
            if self.state is not None:  # a stop in this session's start-up (decoding the test images, the pool) counts
                self.stop_clock = (self.state, self.t_start - self.used)
                # the state as the file holds it once the lock is held (the one resume_state read came before it,
                # and another session may have written since); without a lock there is none to put back (undo_start)
                self.state_as_read = self.state_on_disk() if self.locked else None
                # from here a stop is recorded: a session before that recorded none is counted now, not erased by it
                self.session_before_lost = self.state.open_session()
            self.device = resolve_device(cfg["train"]["device"])
        auto = cfg["train"]["device"] == "auto"
        cfg["train"]["device"] = self.device.type
        if auto:  # the stages' config.yaml record it as chosen: given back as --config, auto chooses again
            note_chosen(cfg, "train.device")
        self.ctx = DistContext()
        return None

    def resume_state(self) -> dict | None:
        """--resume: the stopped run's state, budget and image size; its summary when it had finished."""
        cfg, out = self.cfg, self.out
        if (out / STATE_FILE).is_file():  # a folder that holds no run is refused as such (RunState.resume)
            refuse_links_in_run_dir(out)  # its stages' checkpoints, metrics and state would be written through them
        self.state = RunState.resume(out, self.requested, self.budget_minutes)
        self.budget_minutes = self.state.budget_minutes
        if cfg["model"]["img_size"] is None:  # the size the run chose (it depends on the device, which may change)
            cfg["model"]["img_size"] = self.state.data.get("img_size")
        if holds_finished_run(out, self.state.data):
            self.refuse_other_data_for_finished_run()
            self.refuse_changed_test_split_for_finished_run()
            print(f"[run] {out} finished already: {out}/pred_all.json, {out}/metrics.json")
            return read_finished_json(out / "summary.json", "the finished run's summary")
        return None

    def refuse_other_data_for_finished_run(self) -> None:
        """`--resume --data OTHER` on a finished run said "finished already" of results made on another root. As
        a stopped run's resume (check_test_split), a root that moved is taken when it holds the run's datasets and
        classes; other data is refused, naming the root the run used."""
        run_root = (self.state.data.get("config") or {}).get("data", {}).get("root")
        given = self.cfg.get("data", {}).get("root")
        if not isinstance(run_root, str) or given is None or _same_root(run_root, given):
            return
        try:
            infos = scan_root(given, self.cfg["data"]["datasets"], splits=("train", "val", "test"))
        except UserError as exc:
            why = (f"--data '{given}' cannot be read as its data ({exc}); resume with the run's --data to see its "
                   f"results, or start a new run with another --out.")
        else:
            try:
                self.state.check_same_data({info.name: list(info.classes) for info in infos})
                return
            except UserError as exc:
                why = str(exc)
        raise UserError(one_line(f"'{self.out}' is a finished run of the data root '{run_root}': --resume cannot "
                                 f"switch it to another root's data. {why}"))

    def refuse_changed_test_split_for_finished_run(self) -> None:
        """`--resume` of a finished run whose root gained or lost test images since said "finished already" (exit 0)
        of a pred_all.json without the new ids. Predicting again needs the run's start-up outside its plan (the
        decoding, the balancing on val, the scores, the report): refused, with the counts and the `fewshot predict`
        command that predicts the images there now with the run's final model."""
        from fewshot.data.names import datasets_option
        from fewshot.errors import path_argument

        try:
            pred = loads_run_json((self.out / "pred_all.json").read_text())
            infos = scan_root(self.cfg["data"]["root"], self.cfg["data"]["datasets"], splits=("test",))
        except (OSError, ValueError, UserError):  # no predictions or no test split to compare: as before
            return
        if not isinstance(pred, dict):
            return
        added, removed = {}, {}
        for info in infos:
            # keyed by the folder's name as listed (by_folder): a run recorded `café` composed beside a decomposed
            # folder (macOS) found none of its datasets here and said "finished already" of stale predictions
            before = pred.get(info.root.name, pred.get(info.name))
            if not isinstance(before, dict):  # a dataset the run did not predict: check_same_data judges it
                continue
            now = {i for i, _ in info.test}
            added[info.name], removed[info.name] = len(now - set(before)), len(set(before) - now)

        def counted(counts: dict, what: str) -> str:
            n = sum(counts.values())
            per = ", ".join(f"{name}: {k}" for name, k in counts.items() if k)
            return f"{n} test image{'s' if n != 1 else ''} {what} ({per})" if n else ""

        changes = [c for c in (counted(added, "added"), counted(removed, "removed")) if c]
        if not changes:
            return
        out, root = path_argument(self.out), path_argument(self.cfg["data"]["root"])
        # --datasets=-x,b: a dataset named -x given as `--datasets ./-x,b` (a path's form) named no dataset
        options = "" if self.cfg["data"]["datasets"] is None else f" {datasets_option(i.name for i in infos)}"
        balance = canonical_value("run.balance", self.cfg["run"].get("balance", "auto"))  # YAML's bare off: false
        if balance != "auto":
            options += f" --balance {balance}"
        raise UserError(one_line(
            f"'{self.out}' finished, but its data root now holds other test images: {' and '.join(changes)} since "
            f"the run predicted them, so its pred_all.json does not match them. --resume does not predict again; "
            f"predict the test images there now with the run's final model: `fewshot predict {out} --data {root} "
            f"--out {path_argument(self.out / 'pred_all.json')}{options}` (its metrics.json"
            f"{' and report keep' if self.cfg['run'].get('report', True) else ' keeps'} the scores of the images it "
            f"had)."))

    def claim_output(self) -> None:
        """The output folder: a fresh one (unless --resume), noted as found (what a refused start restores), and
        locked against a second run into it."""
        out = self.out
        # judged on the folder the kernel writes to once the parents are made: `x/../y` with no x named no folder
        # yet, so a y full of the user's files passed as new, and a failed start removed them with it
        self.real_out = resolved(out)
        if not self.resume:
            refuse_used_output(out)
        self.out_existed = self.real_out.is_dir()  # what a refused start leaves as it found it (undo_run_start)
        self.entries_before = set(os.listdir(self.real_out)) if self.out_existed else set()
        self.new_parents = missing_parents(out)  # `x/../y` made x too: a failed start left it behind
        ensure_writable_dir(out, "output")
        # a second `fewshot run` (or --resume) into the folder while this one runs is refused, at once: after the
        # test images and the pool were decoded, the refusal came 24-53 s late
        self.locked = lock_run_dir(out)  # without a lock (a file system without locks) a refused start undoes nothing

    def check_test_split(self) -> None:
        """The datasets, and the answer keys that will score the test split: a key that cannot score its dataset
        costs only that dataset's scores, and the run says so now."""
        from fewshot.eval.answer_keys import load_answer_key

        cfg = self.cfg
        # the test split and its answer keys are checked now, not after the whole budget has been spent; in the same
        # scan, so that one error lists every layout problem (the test split's came only after val's were fixed)
        self.infos = self.test_infos = scan_root(cfg["data"]["root"], cfg["data"]["datasets"],
                                                 splits=("train", "val", "test"))
        class_names = self.class_names = {info.name: list(info.classes) for info in self.infos}
        if self.state is not None:
            self.state.check_same_data(class_names)
        self.unscorable: set[str] = set()
        for info in self.test_infos:  # what scoring after the budget needs: classes in range, every test image keyed
            if info.answer_key is not None:
                try:  # SPEC: the answer key is never needed to predict; a key that cannot score only costs scoring
                    key = load_answer_key(info.answer_key, class_names=class_names[info.name])
                    unkeyed = [i for i, _ in info.test if i not in key]
                    if unkeyed:
                        raise UserError(f"answer key {info.answer_key} has no class for {len(unkeyed)} test image(s) "
                                        f"of {info.name} (ids {', '.join(unkeyed[:5])}"
                                        f"{', ...' if len(unkeyed) > 5 else ''})")
                except UserError as exc:
                    self.unscorable.add(info.name)
                    print(one_line(f"[run] warning: {str(exc).rstrip('.')}. {info.name}'s test images are predicted "
                                   f"as usual; they are not scored."), flush=True)
        not_keyed = [i.name for i in self.test_infos if i.answer_key is None or i.name in self.unscorable]
        if self.test_infos and any(i.answer_key is not None for i in self.test_infos) and not_keyed:
            scored = "is not scored" if len(not_keyed) == len(self.test_infos) else "is scored for the other " \
                                                                                   "datasets only"
            print(one_line(f"[run] note: no usable answer key for {', '.join(not_keyed)}: the test split {scored}."),
                  flush=True)

    def check_pseudo_precision(self) -> None:
        """run.pseudo_precision that the val split cannot certify (precision_cap): refused for a new run, before the
        images are decoded; a resumed run, which must repeat its settings, is warned instead. Not without a pool
        (check_self_training_pool then turns self-training off): nothing would read the setting."""
        from fewshot.train.semi import pool_files

        if self.semi != "pseudo" or float(self.r["pseudo_precision"]) <= 0:
            return
        refusal, warning = precision_cap(self.infos, float(self.r["pseudo_precision"]))
        if (refusal is None and warning is None) or not pool_files(self.cfg, self.infos, exclude_train=True)[0]:
            return
        if refusal is not None and self.state is None:
            raise UserError(refusal)
        print(one_line(warning or f"[run] warning: {refusal}"), flush=True)

    def choose_model(self) -> None:
        """The image size (chosen for the images and device unless given), and the model built once: a mistyped
        --model, or weights that do not fit, is found before the images are decoded."""
        cfg, r = self.cfg, self.r
        why = ""
        if cfg["model"]["img_size"] is None:  # the budget is the whole run's (`fewshot run`'s default without a flag)
            # not recorded as chosen: given back to `train` or `pretrain`, a stage's size was chosen again as the
            # model's default (224 px for resnet18), not for the run's budget (32 or 64 px), at ~12x the cost
            cfg["model"]["img_size"], why = auto_img_size(self.infos, self.device, self.budget_minutes)
        print(one_line(f"[run] {cfg['model']['name']} at {cfg['model']['img_size']}px on {self.device.type}"
                       f"{f' ({why})' if why else ''}: {', '.join(i.name for i in self.infos)}"), flush=True)
        replaced_by = weights_replaced_by(self.state, self.out, r["pretrain"]) if cfg["model"]["weights"] else None
        if replaced_by is not None:
            adopt_stage_architecture(cfg, replaced_by)
        backbone = check_model(cfg, load_weights=replaced_by is None)  # before decoding: a mistyped --model at once
        if r["pretrain"]:
            check_pretrain_settings(cfg, backbone)
        del backbone
        note_run_rechosen(cfg, self.rechosen, self.semi)

    def decode_inputs(self) -> None:
        """The train, val and test images decoded (and the fine-tuning batches checked on them), and the pool MoCo
        and FixMatch read: a broken file or a pool smaller than a MoCo batch is refused before the folder is
        started."""
        cfg, r = self.cfg, self.r
        self.test_set, self.split_skipped, train_set = preload_images(cfg, self.infos, self.test_infos)
        check_finetune_batches(cfg, train_set)
        del train_set
        if r["pretrain"]:
            from fewshot.ssl.pretrain import pool_with_sources

            paths, _, source, _ = pool_with_sources(cfg, self.infos)
            n_pool, batch = len(paths), int(r["pretrain_batch_size"])
            if n_pool < batch:  # found by the MoCo stage, after the run folder was written, it blocked the rerun
                # without a pool the training images stand in: "the pool has 30 images" sent users looking for one
                what = ("the unlabeled pool has" if "train images" not in source else
                        f"MoCo's images ({source}: no unlabeled pool, so the labelled images stand in) are")
                raise UserError(f"{what} {n_pool} images, fewer than one MoCo batch of {batch} (MoCo drops an "
                                f"incomplete batch): lower run.pretrain_batch_size, add images to the pool "
                                f"(ROOT/unlabeled/<dataset>/ or --unlabeled DIR), or leave out --pretrain.")
        self.pool_skipped, n_moco = check_pool_images(cfg, self.infos, self.semi)
        self.n_moco = n_moco  # MoCo's queue is sized from it (pretrain_stage)
        if n_moco is not None and n_moco < int(r["pretrain_batch_size"]):  # the count above was before bad files
            raise UserError(f"the unlabeled pool has {n_moco} decodable images, fewer than one MoCo batch of "
                            f"{r['pretrain_batch_size']}: lower run.pretrain_batch_size or add images to the pool.")

    def check_self_training_pool(self) -> None:
        """The pool self-training labels, decoded now (as far as its time can use it); without one, self-training
        is off and the fine-tuning on the labelled images gets the whole budget."""
        from fewshot.train.semi import load_pool, pool_files

        cfg, r, state = self.cfg, self.r, self.state
        # a cold pool is decoded only as far as the labelling can use it: a quarter of the time after round 1
        # (what pool_share_in_time gives round 2); a resumed run decodes the share its first session chose
        if state is not None and "pool_decoded" in state.data:
            self.pool_limit = state.data["pool_decoded"]
        else:
            self.pool_limit = pool_decode_limit(cfg, pool_files(cfg, self.infos, exclude_train=True)[0],
                                                0.25 * (1 - float(r["pseudo_share"])) * self.budget_minutes * 60)
        # decoded now, as the test images: a broken pool file would otherwise stop the run after round 1;
        # nothing is read into memory (the rounds read the images from the cache)
        pool = load_pool(cfg, self.infos, cfg["model"]["img_size"], exclude_train=True, limit=self.pool_limit)
        n_pool, self.pool_skipped = len(pool.images), self.pool_skipped + pool.skipped
        self.n_unlabeled = n_pool  # what round 1 leaves time to label
        del pool
        if n_pool == 0:
            # round 2 would train on the labelled images again: the whole budget goes to one fine-tuning
            rest = "the time MoCo leaves" if self.r["pretrain"] else "the whole budget"
            print("[run] no unlabeled pool (ROOT/unlabeled/ or --unlabeled DIR): self-training is off, the "
                  f"fine-tuning on the labelled images gets {rest}.", flush=True)
            self.semi = self.r["semi_method"] = "off"

    def check_fixmatch_pool(self) -> None:
        """FixMatch's pool and settings (for the run's line and summary.json); without a pool, FixMatch is off."""
        from fewshot.train.semi import datasets_without_pool, fixmatch_note, fixmatch_summary, load_pool

        cfg = self.cfg
        # only real pool images, as the stage draws them: a dataset's labelled train images do not stand in
        pool = load_pool(cfg, self.infos, cfg["model"]["img_size"], exclude_train=True)
        self.fixmatch, without = fixmatch_summary(cfg, pool), datasets_without_pool(cfg, self.infos, pool)
        del pool
        if self.fixmatch["pool_size"] == 0:
            print("[run] no unlabeled pool (ROOT/unlabeled/<dataset>/ or --unlabeled DIR): FixMatch is off, the "
                  "fine-tuning trains on the labelled images only.", flush=True)
            self.semi = self.r["semi_method"] = "off"
            self.fixmatch = None
        else:
            print(one_line(f"[run] {fixmatch_note(self.fixmatch, without)}"), flush=True)

    def start_state(self) -> None:
        """The run's state: started now that the inputs have passed their checks, or the resumed one, whose
        sessions' time the clock now counts."""
        if self.state is None:  # written once the inputs have passed their checks: a failed start leaves no run behind
            self.state = RunState.start(self.out, self.requested, self.budget_minutes, self.cfg["model"]["img_size"],
                                        time.monotonic() - self.t_start, self.class_names)
        else:
            self.t_start -= self.used  # the budget counts every session's time, this one's start-up included
            done = [n for n, st in self.state.data["stages"].items() if st.get("status") == "done"]
            print(f"[run] resuming {self.out}: {self.used / 60:.1f} of {minutes_text(self.budget_minutes)} used before "
                  f"the stop; finished stages: {', '.join(done) or 'none'}"
                  + (f" ({UNRECORDED})" if self.session_before_lost else ""))
        self.state.data["pool_decoded"] = self.pool_limit
        self.state.save()
        self.stop_clock = (self.state, self.t_start)
        # the files --skip-bad-images (train, val, test) and data.skip_bad_unlabeled (pool) left out, with the reasons
        write_skipped(self.out, self.split_skipped + self.pool_skipped)

    def plan_budget(self) -> None:
        """The budget's split: the stages' time, the reserve for the end, the report's stages and its estimate, and
        the summary (a resumed run's as it was)."""
        r = self.r
        self.budget_s = self.budget_minutes * 60.0
        # kept back for the end by the earlier stages; the last stage replaces it by an estimate from measured
        # speeds (closing_seconds), plus 1.5 % of the budget for what the estimate misses
        reserve_s = min(30.0, 0.03 * self.budget_s) * (2 if r.get("report", True) else 1)
        self.stage_s = self.budget_s - reserve_s
        # the report draws every fine-tuning stage: round 1, the middle rounds and the last
        self.report_stages = (int(r["pseudo_rounds"]) if self.semi == "pseudo" else 1) if r.get("report", True) else 0
        # the report's estimate (page and curves, image-based parts) at the last measured speeds, for its own cut
        # (None: no closing() this session, a resume whose stages were all trained: estimated after the last one)
        self.report_plan = {"figure_s": figure_seconds() if self.report_stages else FIGURE_S, "seconds": None}
        # time spent in training loops, to tell the user what the rest cost
        self.fit_seconds: list[float] = list(self.state.data.get("fit_seconds") or [])
        self.summary: dict = self.state.data.get("summary") or {"budget_minutes": self.budget_minutes,
                                                                "img_size": self.cfg["model"]["img_size"],
                                                                "stages": {}}
        if self.fixmatch is not None:
            self.summary["semi"] = self.fixmatch

    def closing(self, task, eval_s: float, step_s: float | None = None, per_test_image: float | None = None) -> float:
        """The closing work's estimate, all of it: it was capped at half the budget, and the run then planned to
        end after its budget (0.3 minutes with resnet50). A budget that cannot hold it is refused at the first
        stage (refuse_unless_least_run_fits) or, later, told by plan_stage's floor warning."""
        report_plan, budget_s = self.report_plan, self.budget_s
        if per_test_image is None:
            per_test_image = measure_prediction_seconds(task, self.test_set.images)
        report_plan["seconds"] = report_seconds(task, eval_s, self.report_stages, report_plan["figure_s"])
        need = closing_seconds(task, eval_s, per_test_image, len(self.test_set), self.report_stages,
                               report_plan["figure_s"], balance_check=self.balance != "off") + CLOSING_SHARE * budget_s
        report_plan["least"] = need - report_plan["seconds"][1]  # the report's image-based parts left out
        if step_s is not None and self.semi != "pseudo":  # self-training's round 1: round1_closing checks it
            step_s = self.refuse_unless_least_run_fits([(task, step_s)])[-1]  # re-timed where it did not fit
        # the report's image-based parts are left out at the end when they will not fit: beyond half the budget,
        # or where they would leave the last stage less than its floor of steps
        left = self.t_start + budget_s - time.monotonic()
        if step_s is not None and not least_run_holds(least_run_seconds(step_s, need), left):
            step_s = self.images_retimed(task, step_s, need)  # before a busy timing drops the report's images
            left = self.t_start + budget_s - time.monotonic()
        if need > 0.5 * budget_s or (step_s is not None and least_run_seconds(step_s, need) > left):
            need = report_plan["least"]
        if step_s is not None:  # a stage planned now to train until the closing work (a later round may undo it)
            self.plan_closing(need)
        return need

    def images_retimed(self, task, step_s: float, need: float) -> float:
        """The step speed closing() decides the report's images at, where the stage's least run and all of the
        closing work (``need``) do not fit the budget left at its timing: timed once more and the faster kept
        (retimed_steps; on the task for plan_stage). One busy timing left the images out of a report that had the
        time for them at the machine's own speed (review rev51)."""
        def whole(steps: list[float]) -> float:
            return least_run_seconds(steps[0], need)

        def least(steps: list[float]) -> float:  # without the report's images: what the stage itself needs
            return least_run_seconds(steps[0], self.report_plan.get("least", need))

        faster = retimed_steps(measure_step_seconds, [(task, step_s)], whole, self.left_s, least_run_holds, least)[0]
        self.keep_faster([step_s], [faster], least_run_holds(least([faster]), self.left_s()),
                         "at this stage's planning ({}) left no room for its least run and all of the closing work; "
                         "timed again ({}) the stage plans at that speed")
        return faster

    def last_closing(self, task, eval_s: float, step_s: float | None = None) -> float:
        """The last stage's hook (closing), which also warns a resumed one (no ``step_s``: continued from its
        last.pt) whose closing work no longer fits the budget left (warn_if_resumed_late)."""
        need = self.closing(task, eval_s, step_s)
        if step_s is None:
            self.warn_if_resumed_late("finetune", need, task)
        return need

    def warn_if_resumed_late(self, stage: str, need: float, task=None) -> None:
        """The early word a fresh run gets from its least-run refusal or plan_stage's floor warning, for a stage
        continued on --resume: a warning where the budget left cannot hold its closing work (``need``), the run then
        ending late; a note where it holds that but not the kept-back step too (the task's ``resumed_step_s``, set by
        finetune_stage from its log.jsonl): it trains no further (cap_resumed_budget). Not a refusal: a resume cannot
        change the budget."""
        step_s = getattr(task, "resumed_step_s", None)
        words = resumed_late_warning(stage, self.last_end - time.monotonic(), need, step_s)
        if words is not None:
            print(words, flush=True)

    def plan_closing(self, need: float) -> None:
        """Keep the closing estimate of the stage planned to train until it (``need``, the margin included), and
        where its last step ends at the latest on the run's clock, for summary.json's ``closing_seconds``: the 1-
        and 2-minute runs ended 6-27 s early, and the summary did not say which part of the plan was off."""
        self.closing_plan = {"need": need, "margin": CLOSING_SHARE * self.budget_s,
                             "ends_at": self.last_end - need - self.t_start}

    def closing_record(self, total_s: float) -> dict | None:
        """summary.json's ``closing_seconds``: the closing work as the predicting stage planned it (``estimated``,
        and the ``margin`` of the budget kept beyond it), as it took (``real``: from the end of the last stage's
        training, run_state's ``trained_at``, to the run's end), and ``training_late`` (that end less the latest
        end the plan gave its last step; negative: early). Counted from the planned end, ``real`` took in a stage
        that ended early or ran past it (its 5-step floor), the very thing the record is to tell apart. None where
        no stage trained until it this session (a resumed run with its stages done, or a round that ended at its
        share before a later one was skipped)."""
        plan = self.closing_plan
        if plan is None:
            return None
        stages = getattr(getattr(self, "state", None), "data", {}).get("stages", {})
        ends = [entry["trained_at"] for entry in stages.values() if isinstance(entry.get("trained_at"), (int, float))]
        record = {"estimated": round(plan["need"] - plan["margin"], 2), "margin": round(plan["margin"], 2)}
        if not ends:  # no stage recorded its end: counted from the plan's, and no lateness claimed
            return {**record, "real": round(total_s - plan["ends_at"], 2)}
        return {**record, "real": round(total_s - max(ends), 2), "training_late": round(max(ends) - plan["ends_at"], 2)}

    def pretrain_closing(self, task, eval_s: float, step_s: float | None = None) -> float:
        """MoCo's hook (pretrain_stage's check): at its planning the least-run refusal and keep-back
        (refuse_unless_pretrain_run_fits); without ``step_s`` a stage continued from its last.pt with no training
        left, warned where its closing work no longer fits the budget left, as last_closing warns the last stage."""
        if step_s is not None:
            return self.refuse_unless_pretrain_run_fits(task, eval_s, step_s)
        need = pretrain_closing_seconds(eval_s, sum(p.numel() for p in task.model.parameters()))
        words = pretrain_resumed_late_warning(self.t_start + self.budget_s - time.monotonic(), need)
        if words is not None:
            print(words, flush=True)
        return 0.0

    def refuse_unless_pretrain_run_fits(self, task, eval_s: float, step_s: float) -> float:
        """MoCo's plan_stage hook, called with its measured speeds before it trains: a budget that cannot hold
        MoCo's least steps, the fine-tuning's timing and then the least run is refused now, as without --pretrain.
        Left to the fine-tuning's planning, the check came after MoCo had trained (a stage had: no refusal at
        all), and a 0.05-minute budget ran 27 s. Returns the seconds MoCo keeps back from its share so that its
        closing work (the budget stop's kNN evaluation, checkpoints, export), the fine-tuning's timing and its
        least run fit after it (its share alone passed the check and then overran). A resumed run whose MoCo
        plans anew (stopped before its last.pt) is not refused (refuse_unless_least_run_fits) but keeps back."""
        n_params = sum(p.numel() for p in task.model.parameters())
        probe, ft_step, per_image = self.time_fine_tuning()
        ft_eval = measure_eval_seconds(probe)
        self.closing(probe, ft_eval, per_test_image=per_image)  # the report_plan["least"] of the fine-tuning

        def calibration(ft_s: float) -> float:
            return calibration_seconds(ft_s, ft_eval, per_image, len(self.test_set))

        def before(moco_s: float, ft_s: float) -> float:  # MoCo's least run, then the fine-tuning's timing
            return pretrain_least_seconds(moco_s, eval_s, n_params) + calibration(ft_s)

        def first(moco_s: float, ft_s: float) -> str:
            # the words of what before counts (pretrain_least_seconds): "5 steps ... and its kNN evaluation" said less
            return (f"MoCo pretraining's {FLOOR_STEPS + 1} steps at {moco_s * 1000:.0f} ms (its floor of "
                    f"{FLOOR_STEPS} and the one past its deadline), its kNN evaluation at the stop and its checkpoint "
                    f"writes and export, then the fine-tuning's timing and ")

        _, ft_step = self.refuse_unless_least_run_fits([(task, step_s), (probe, ft_step)], before, first)
        del probe  # its model sat on the device next to MoCo's for the whole stage
        free_device_memory(self.device)
        after_moco = self.t_start + self.budget_s - self.pre_end
        fine_tuning = calibration(ft_step) + least_run_seconds(ft_step, self.report_plan["least"])
        return max(0.0, pretrain_closing_seconds(eval_s, n_params) + fine_tuning - after_moco)

    def time_fine_tuning(self) -> tuple:
        """A fine-tuning task as the stage after MoCo builds it (its weights not read: the speed does not depend on
        them), with its step and per-test-image prediction seconds: (task, step_s, per_image). The caller frees
        the task (free_device_memory) once timed."""
        from fewshot.train.supervised import SupervisedTask

        fcfg = finetune_config(self.cfg, self.cfg["model"]["weights"], self.semi)
        probe = SupervisedTask(fcfg, self.infos, self.device, self.ctx, resuming=True, quiet_weights=True)
        return probe, measure_step_seconds(probe), measure_prediction_seconds(probe, self.test_set.images)

    def refuse_unless_least_run_fits(self, timed: list, before=None, first=None) -> list[float]:
        """At the planning of the first stage this session trains (a fresh run): refuse, before any training,
        a budget that cannot hold even the least run (least_run_seconds), and remove what the run wrote.
        ``timed``: [(task, its step seconds)], the last stage's last; ``before(*steps)``: the least time of the work
        before the last stage (MoCo's, from its planning) at those speeds, ``first(*steps)`` its words for the
        error. Returns the step speeds the check rests on: a timing that did not fit is timed again first
        (steps_that_fit), and a faster one is what the stage plans with."""
        steps = [step_s for _, step_s in timed]
        if self.resume or self.fit_seconds:  # a stage has trained (or a resumed run's time is spent): plan_stage warns
            return steps

        def need(steps: list[float]) -> float:
            return (before(*steps) if before else 0.0) + least_run_seconds(steps[-1], self.report_plan["least"])

        steps = self.steps_that_fit(timed, need)
        used = time.monotonic() - self.t_start  # the re-time's seconds count
        if least_run_holds(need(steps), self.budget_s - used):
            return steps
        cfg = self.cfg
        error = too_short_budget_error(self.budget_s, used, need(steps), steps[-1],
                                       f"{cfg['model']['name']} at {cfg['model']['img_size']}px",
                                       self.least_run_hints(bool(before)), self.locked,
                                       first(*steps) if first else "")
        self.undo_start()
        raise error

    def steps_that_fit(self, timed: list, need) -> list[float]:
        """The step speeds of ``timed`` [(task, step seconds)] that the least-run refusal rests on (``need(steps)``
        its seconds): where the least run does not fit at the start-up's timing, each step timed once more and the
        faster kept (retimed_steps): that timing of a few steps can meet one busy moment of a shared machine."""
        first = [step_s for _, step_s in timed]
        steps = retimed_steps(measure_step_seconds, timed, need, self.left_s, least_run_holds)
        self.keep_faster(first, steps, least_run_holds(need(steps), self.left_s()),
                         "at start-up ({}) left the budget no room for the least run; timed again ({}) it fits, and "
                         "the run plans at that speed")
        return steps

    def keep_faster(self, first: list[float], steps: list[float], fits: bool, words: str) -> None:
        """A faster re-time (``steps``, of the timing ``first``) kept: refuse_if_hopeless's speed for a timing after
        this one, and, where the work now fits (``fits``), a note that says why the run plans at it (``words``:
        where the two speeds go, the first timing's first)."""
        if steps[-1] < first[-1]:  # refuse_if_hopeless's speed for a timing after this one: the faster seen
            self.timed_step_s = min(steps[-1], self.timed_step_s or steps[-1])
        if steps != first and fits:
            print(f"[run] note: the step timing {words.format(_step_words(first), _step_words(steps))} (the first "
                  f"timing met a busy moment)", flush=True)

    def left_s(self) -> float:
        """The seconds left of the run's budget now."""
        return self.budget_s - (time.monotonic() - self.t_start)

    def least_run_hints(self, moco: bool) -> str:
        """The ways to a shorter least run besides a larger budget, for too_short_budget_error (``moco``: the MoCo
        stage's least run is in the need: without it the least run is shorter)."""
        hints = ", or a smaller --model or --img-size" + (", or no --pretrain" if moco else "")
        # self-training's later rounds are dropped when they do not fit; FixMatch's steps stay
        if self.semi == "fixmatch":
            hints += ", or --baseline (no FixMatch: shorter steps)"
        return hints

    def refuse_if_hopeless(self, step_s: float | None, provisional: float | None) -> None:
        """stop_timing_when's check, until a fresh run's first stage trains: the timings stop, and the run is
        refused (and undone) as refuse_unless_least_run_fits refuses it, once the budget left cannot hold any run
        (LEAST_RUN_S) or, at the step speed timed so far (``step_s``; None: the last one timed), the least run's
        steps alone. The timing went on past the deadline: 21.5 s of a 12 s budget before the refusal.
        ``provisional``: the fastest step yet (the warm-up included), named where the deadline passed before two
        steps were timed (a step longer than the whole budget passed it). Off once a stage has recorded that it
        began: a refusal then would undo a folder that holds training (fit_seconds is set only when one is saved)."""
        if self.resume or getattr(self, "fit_seconds", None) or self.budget_minutes is None or self.training_began():
            return
        self.timed_step_s = step_s if step_s is not None else self.timed_step_s
        step_s, budget_s = self.timed_step_s, self.budget_minutes * 60.0
        used = time.monotonic() - self.t_start
        if least_run_holds(max(LEAST_RUN_S, least_run_seconds(step_s or 0.0, 0.0)), budget_s - used):
            return
        shown, cfg = step_s if step_s is not None else provisional, self.cfg
        if shown is None:  # nothing timed yet (decoding took the budget): no speed to name
            error = hopeless_budget_error(budget_s, used, started=True, undone=self.locked)
        else:
            error = too_short_budget_error(budget_s, used, least_run_seconds(shown, 0.0), shown,
                                           f"{cfg['model']['name']} at {cfg['model']['img_size']}px",
                                           self.least_run_hints(bool(cfg["run"].get("pretrain"))), self.locked,
                                           untimed="its steps alone, at the fastest step timed: the timing stopped "
                                           "there, as they did not fit" if step_s is not None else "its steps "
                                           "alone, at the fastest step before two were timed (a warm-up may be "
                                           "slower than the rest): the budget was spent by then")
        self.undo_start()
        raise error

    def training_began(self) -> bool:
        """Whether a stage of this run has recorded "began" (its training started), in its run_state.json."""
        return self.state is not None and any(st.get("status") for st in self.state.data["stages"].values())

    def undo_start(self, refused: bool = True) -> None:
        """A fresh run's start that failed (a refused budget, an input found bad after the folder was claimed):
        what it wrote, its folder and the parents --out made go again; only with its lock, else another start may
        be writing there too and what appeared may be its. A --resume ``refused`` over its input (a UserError)
        leaves the run's state as the file held it when the lock was taken (only with the lock, for the same reason):
        each refusal of a renamed class folder added its 17 s of start-up to the run's time. A stop or a crash there
        still counts (note_stop): the start-up's decoding was work."""
        if self.locked and not self.resume:  # a --resume's folder holds the run it continues
            undo_run_start(self.real_out, self.entries_before, self.out_existed, self.new_parents)
            self.stop_clock = None  # a stop's count would write the removed run's state again
        # with the lock too: without one another session may be writing the state, which the copy would overwrite
        elif self.locked and refused and self.state_as_read is not None and self.stop_clock is not None:
            self.stop_clock = None  # nor is this session's time counted after it
            self.state.data = self.state_as_read
            with contextlib.suppress(Exception):  # the refusal is the message (as note_stop)
                self.state.save()
        self.locked = False

    def state_on_disk(self) -> dict | None:
        """run_state.json as the file holds it now (None where it cannot be read): what a refused resume puts back."""
        try:
            data = loads_run_json((self.out / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @contextlib.contextmanager
    def undone_if_start_fails(self):
        """The start's phases before its RunState: an error there (a bad input, a stop) undoes the start, so that
        the rerun is not refused as "not empty" nor sent to --resume (undo_start)."""
        try:
            yield
        except BaseException as exc:
            self.undo_start(refused=isinstance(exc, UserError))
            raise

    def keep(self, stage: str, entry: dict, fit_s: float) -> None:
        """A stage's summary entry (with its own length) and training time, kept in the run's state."""
        now = time.monotonic() - self.t_start
        self.summary["stages"][stage] = {**entry, "seconds": self.state.stage_seconds(now)}  # the stage's own length
        self.fit_seconds.append(fit_s)
        self.state.keep_summary(self.summary, self.fit_seconds, now)

    def finetune(self, fdir: Path, end_time: float, what: str, *args, **kwargs):
        """finetune_stage with the run's config, data, device and clock (``args``: pseudo, closing)."""
        return finetune_stage(self.fcfg, self.infos, self.device, self.ctx, fdir, end_time, what, *args, **kwargs,
                              state=self.state, t_start=self.t_start,
                              timing_s=calibration_seconds(*self.speeds_before, len(self.test_set))
                              if self.speeds_before else None)

    def pretrain(self) -> None:
        """MoCo pretraining (run.pretrain), in its share of the time the stages have left."""
        self.weights = self.cfg["model"]["weights"]
        if not self.r["pretrain"]:
            return
        # its share of the time the stages have left (start-up and the test decoding came out of the whole)
        self.pre_end = time.monotonic() + (self.t_start + self.stage_s - time.monotonic()) * self.r["pretrain_share"]
        self.weights, entry, fit_s = pretrain_stage(self.cfg, self.infos, self.device, self.ctx, self.out, self.pre_end,
                                                    self.state, self.t_start, self.pretrain_closing,
                                                    pool_size=self.n_moco)
        if fit_s or "pretrain" not in self.summary["stages"]:  # reused (0 s): kept before, its time counted once
            self.keep("pretrain", entry, fit_s)

    def fine_tune(self) -> None:
        """The fine-tuning stages: self-training's rounds before the last, then the last stage (the report's
        estimate made after it when no stage was planned this session)."""
        self.fcfg = finetune_config(self.cfg, self.weights, self.semi)
        self.fdir = self.out / "finetune"
        self.end_time = self.t_start + self.stage_s
        self.last_end = self.t_start + self.budget_s  # the last stage ends where its measured closing work still fits
        if self.semi == "pseudo":
            self.self_train()
        self.last_stage()
        if self.report_plan["seconds"] is None:  # a resumed run with no stage left to train: the report's own estimate
            task, stages = self.task, self.report_stages
            self.report_plan["seconds"] = report_seconds(task, measure_eval_seconds(task) if stages else 0.0, stages,
                                                         self.report_plan["figure_s"])
            del task
        self.task = None

    def self_train(self) -> None:
        """Self-training's rounds before the last (`finetune`, trained by last_stage): round 1, then the pool's
        labelling and a round per later round, as many as the time holds."""
        r = self.r
        # round 1 on the labelled images; each later round starts from the previous round's model and
        # trains on the labelled images plus the pool labelled by that model; the last round is `finetune`
        # the later rounds the time cannot hold are skipped (planned): the decision is kept for a --resume
        self.skip = self.state.data.setdefault("self_training", {"rounds": int(r["pseudo_rounds"]),
                                                                 "skipped_from": None})
        self.rounds = self.skip["rounds"]
        self.report_stages = min(self.report_stages, self.rounds)  # a resumed run's report draws the rounds kept
        self.labelled_end = time.monotonic() + (self.end_time - time.monotonic()) * r["pseudo_share"]
        task, round1_metrics = self.finetune(self.out / "finetune_labelled", self.labelled_end,
                                             "on the labelled images (self-training, round 1)",
                                             closing=self.round1_closing)
        self.task = task
        self.round1_val = round1_metrics.get("mean_acc1")
        self.earlier = {"finetune_labelled": round1_metrics}  # the rounds before the last, for the val guard
        if not task.reused or "finetune_labelled" not in self.summary["stages"]:
            self.keep("finetune_labelled", {"epochs": task.epochs_run}, task.fit_seconds)
        del task
        self.later_rounds()

    def decide(self, rounds_now: int, skipped_from: int | None, why: str) -> None:
        """Self-training's new plan (kept for a --resume): ``rounds_now`` rounds, or the rounds from
        ``skipped_from`` on skipped; the report draws only the stages that will train."""
        skip = self.skip
        skip.update(rounds=rounds_now, skipped_from=skipped_from, why=why)
        if skipped_from is None:  # middle rounds dropped: summary.json's self_training_reduced
            skip.update(reduced_why=why, reduced_to=rounds_now)  # a later skip says its own part
        elif "reduced_to" in skip:  # rounds dropped before, then the new last one skipped: it was not kept either
            skip["reduced_to"] = min(skip["reduced_to"], skipped_from - 1)
        self.rounds = rounds_now
        if skipped_from is not None:  # the round before predicts: it ended at its share, not at the closing work
            self.closing_plan = None
        # the stages the report draws
        self.report_stages = min(self.report_stages, (skipped_from or rounds_now + 1) - 1)
        self.state.save()

    def round1_closing(self, task, eval_s: float, step_s: float | None = None) -> float:
        """Round 1 ends at its share of the time, but no later than leaves the later rounds, the pool's
        labelling and the closing work their least time (after_round1_seconds); when even round 1's floor
        does not leave them that, they are skipped and round 1 trains until the closing work. A step timing that
        skips them is timed once more first (round1_retimed), and the decision rests on the faster."""
        skip, rounds = self.skip, self.rounds
        resumed = step_s is None  # finetune_stage's call for a round continued from its last.pt (plan_stage's: timed)
        step_s = measure_step_seconds(task) if step_s is None else step_s  # a resumed round 1: not measured
        per_image = measure_prediction_seconds(task, self.test_set.images)  # the pool is labelled at this speed
        closing_s = self.closing(task, eval_s, per_test_image=per_image)
        evals = eval_passes(task) + 1

        def rest_at(s: float) -> float:  # the later rounds' least time, from round 1's last step on, at s a step
            return after_round1_seconds(s, eval_s, per_image, self.n_unlabeled, rounds, closing_s, evals)

        def need(steps: list[float]) -> float:  # the rest and round 1's own least run (own), as compared below
            return rest_at(steps[0]) + 5 * steps[0] + eval_s

        decides = skip["skipped_from"] != 2 and self.state.status("finetune") is None  # the skip below may come
        if decides and not resumed and not time_holds(need([step_s]), self.last_end - time.monotonic()):
            step_s = round1_retimed(self, task, step_s, need)
        # kept as plan_stage keeps its timings: the check before round 2 (round_speeds) timed a resumed round again
        task.step_s, task.eval_s = getattr(task, "step_s", None) or step_s, getattr(task, "eval_s", None) or eval_s
        rest = rest_at(step_s)
        left = self.last_end - time.monotonic()  # after a re-time: its seconds count
        own = 5 * step_s + eval_s  # round 1's own least run: what it trains before the later rounds' time
        if skip["skipped_from"] == 2 or (decides and not time_holds(rest + own, left)):
            if skip["skipped_from"] != 2:
                planned = rounds
                # the sum compared, not the later rounds' part alone: "47 s were left ... the later round needs
                # about 41 s" read as a skip that should not have happened
                left_s, need_s = seconds_apart(left, rest + own)
                self.decide(1, 2, f"about {left_s} were left for round 1 and what follows it, less than they need at "
                                  f"the measured speed (about {need_s}): round 1's own least run "
                                  f"({seconds_text(own)}: 5 steps and an evaluation) and then the later "
                                  f"round{'s' if planned > 2 else ''} ({seconds_text(rest)}: labelling the pool, "
                                  f"calibration, 5 steps each, evaluations and the closing work)")
                closing_s = self.closing(task, eval_s, per_test_image=per_image)  # the report now draws round 1 only
                self.refuse_unless_least_run_fits([(task, step_s)])  # a re-timed step: task.retimed_step_s
                print(f"[run] self-training's round{'s 2-' if planned > 2 else ' '}{planned} skipped (planned, not "
                      f"an error): {skip['why']}; round 1 trains until the closing work (about {closing_s:.0f} s) "
                      f"and predicts", flush=True)
            self.plan_closing(closing_s)
            if resumed:  # round 1 is the last stage: it trains until the closing work
                self.warn_if_resumed_late("finetune_labelled", closing_s, task)
            return self.labelled_end - (self.last_end - closing_s)  # negative: round 1 ends after its share
        leaves = round1_leaves(rest, left, step_s, eval_s)  # and a margin for round 1's own late end
        cut = max(0.0, self.labelled_end - (self.last_end - leaves))
        if cut > 0:
            print(f"[run] round 1 ends {cut:.0f} s before its share (run.pseudo_share={self.r['pseudo_share']:g}) "
                  f"would: about {leaves:.0f} s are left for labelling the pool, {rounds - 1} later "
                  f"round{'s' if rounds > 2 else ''} and the closing work"
                  + (f" ({leaves - rest:.0f} s of them a margin for round 1 ending late)" if leaves - rest >= 0.5
                     else ""), flush=True)
        return cut

    def later_rounds(self) -> None:
        """Rounds 2 on, each on the pool as the round before labelled it, as far as the time holds them; the last
        one's pseudo-labels are left in ``pseudo`` for last_stage."""
        r, skip, state = self.r, self.skip, self.state
        for k in range(2, int(r["pseudo_rounds"]) + 1):
            if skip["skipped_from"] is None and skip.get("labelled_only") is None and \
                    state.status("finetune") is None and \
                    state.status(f"finetune_round{k}") is None:  # a resumed round that began is continued
                self.check_later_rounds(self.task, k)
            if skip["skipped_from"] is not None and k >= skip["skipped_from"]:  # the rounds before it are reused
                break
            if skip.get("labelled_only") == k:  # the last round (`finetune`), without labelling the pool
                self.pseudo = labelled_only_round(self.task)
                self.task = None
                break
            # a resumed run labels the pool again with the same model: the same images, so that the stopped
            # round's checkpoint (which counts its training images) continues where it stopped; a round that
            # finished before the stop is reused, and its record says what it kept
            record = self.out / f"pseudo_labels_round{k}.json"
            fed = self.out / ("finetune" if k == self.rounds and skip["skipped_from"] is None else f"finetune_round{k}")
            self.pseudo = recorded_pseudo_labels(record) if reusable_stage(state, fed) else None
            if self.pseudo is None:  # at most a quarter of the time left: not planned, and a large pool took it all
                self.pseudo = pseudo_label_pool(self.task, self.fcfg, self.infos, r, record,
                                                seconds=LABEL_SHARE * max(0.0, self.end_time - time.monotonic()),
                                                seed=derive_seed(self.fcfg["train"]["seed"], k, 11),
                                                pool_limit=self.pool_limit)
            self.task = None
            if k == self.rounds and skip["skipped_from"] is None:  # the last round is `finetune`, below
                break
            self.middle_round(k)

    def middle_round(self, k: int) -> None:
        """Round ``k``, neither the first nor the last, on the pool as round ``k`` - 1 labelled it; skipped with the
        rounds after it where its least run does not fit (later_round_closing)."""
        pseudo = self.pseudo
        round_end = time.monotonic() + (self.end_time - time.monotonic()) / (self.rounds - k + 1)
        what = "on labelled + pseudo-labelled pool images" if len(pseudo["images"]) else "on the labelled images again"
        try:
            task, round_metrics = self.finetune(self.out / f"finetune_round{k}", round_end, f"{what} (round {k})",
                                                pseudo, self.later_round_closing(k))
        except LaterRoundSkipped:  # the loop stops at skipped_from; round k - 1 predicts (last_stage)
            shutil.rmtree(self.out / f"finetune_round{k}", ignore_errors=True)  # made for it, nothing trained
            return
        self.task = task
        self.earlier[f"finetune_round{k}"] = round_metrics
        if not task.reused or f"finetune_round{k}" not in self.summary["stages"]:
            # each round's entry: the pseudo-labels it trained on and its val score (the guard compares them)
            self.keep(f"finetune_round{k}", {"epochs": task.epochs_run, "pseudo_labels": pseudo["summary"],
                                             "val_mean_acc1": round_metrics.get("mean_acc1")}, task.fit_seconds)

    def later_round_retimed(self, task, step_s: float, closing_s: float, k: int) -> float:
        """Round ``k``'s step speed where its least run does not fit the time left at its timing (``step_s``,
        later_round_closing): timed once more and the faster kept (retimed_steps, on the task for plan_stage). A
        timing that met one busy moment skipped round 2 after round 1 had trained its share: self-training's gain
        lost and the rest of the budget unused."""
        def need(steps: list[float]) -> float:
            return least_run_seconds(steps[0], closing_s)

        def left() -> float:
            return self.last_end - time.monotonic()

        faster = retimed_steps(measure_step_seconds, [(task, step_s)], need, left, least_run_holds)[0]
        self.keep_faster([step_s], [faster], least_run_holds(need([faster]), left()),
                         f"at round {k}'s planning ({{}}) left no room for its least run; timed again ({{}}) it fits, "
                         f"and the round plans at that speed")
        return faster

    def later_round_closing(self, k: int):
        """plan_stage's hook of round ``k`` (2 on), with the speeds measured for it: the round is optional (round
        k - 1's model can already predict), so where its least run (least_run_seconds: 5 steps, the step past the
        deadline and the closing work) does not fit the time left, it and the rounds after it are skipped
        (LaterRoundSkipped). The check before the labelling counts the round before's speeds: on a busier
        machine round 2 started with 0.4 s left, trained its floor at 4.7 s a step and a 2-minute run took 140 s.
        Returns the closing work for the last round, nothing for a middle one (it ends at its share)."""
        last = k == self.rounds and self.skip["skipped_from"] is None

        def closing(task, eval_s: float, step_s: float | None = None) -> float:
            per_image = measure_prediction_seconds(task, self.test_set.images)
            need = self.closing(task, eval_s, step_s, per_image)  # re-timed there where all of it does not fit
            if step_s is None:  # a resumed round continues: it began before the stop
                if last:
                    self.warn_if_resumed_late("finetune", need, task)
                return need if last else 0.0
            step_s = getattr(task, "retimed_step_s", None) or step_s
            least, left = least_run_seconds(step_s, need), self.last_end - time.monotonic()
            if not least_run_holds(least, left):  # a timing that met a busy moment: timed once more, the faster kept
                step_s = self.later_round_retimed(task, step_s, need, k)
                least, left = least_run_seconds(step_s, need), self.last_end - time.monotonic()
            if least_run_holds(least, left):
                return need if last else 0.0
            left_s, need_s = seconds_apart(left, least)
            later = " and later" if k < self.rounds else ""
            for key in ("labelled_only", "labelled_only_why"):  # a labelled-only round k is skipped too
                self.skip.pop(key, None)
            self.decide(k - 1, k, f"{left_s} were left of the budget when round {k} was planned, and its least "
                                  f"run needs {need_s} at the speed measured then ({FLOOR_STEPS + 1} steps at "
                                  f"{step_s * 1000:.0f} ms, evaluations and the closing work)")
            self.closing(task, eval_s, per_test_image=per_image)  # the report's estimate, for the stages it draws
            print(f"[run] round {k}{later} skipped (planned, not an error): {self.skip['why']}; predicting with "
                  f"round {k - 1}", flush=True)
            raise LaterRoundSkipped(k)

        return closing

    def check_later_rounds(self, task, k: int) -> None:
        """Before round k's labelling: skip it and the rounds after it when the time left cannot hold one more
        round at its floor (later_rounds_seconds): round 1 ran long, or the machine got slower. When it holds
        fewer rounds than planned, the middle rounds that do not fit are dropped (the last comes sooner). When
        it holds a round's floor but not the pool's labelling, round k is the last and trains on the labelled
        images only (labelled_only_round): skipped, the rest of the budget went unused. Judged at round k - 1's
        speeds as it trained (round_speeds), before any of round k's work (the pool's labelling, its timing)."""
        skip, n_unlabeled = self.skip, self.n_unlabeled
        step_s, eval_s, speed = round_speeds(task, k - 1)
        per_image = measure_prediction_seconds(task, self.test_set.images)
        closing_s = self.closing(task, eval_s, per_test_image=per_image)
        self.speeds_before = step_s, eval_s, per_image  # for the next round's timing line
        evals = eval_passes(task) + 1  # a round's closing evaluations, as round1_closing counts them
        left = self.last_end - time.monotonic()
        fits = [n for n in range(self.rounds - k + 1, 0, -1)
                if time_holds(later_rounds_seconds(step_s, eval_s, per_image, n_unlabeled, n, closing_s, evals),
                              left)]
        # a round without the pool's labelling (n_pool 0), with room for twice its floor of steps: a round of 5
        # steps is worth little, and a busier machine's slower steps would take it past the budget
        labelled_only_s = (later_rounds_seconds(step_s, eval_s, per_image, 0, 1, closing_s, evals)
                           + FLOOR_STEPS * step_s)
        if not fits and time_holds(labelled_only_s, left):
            # no time to label the pool, but for a short round: the rest of the budget goes on training round
            # k - 1's model on the labelled images (the val guard still picks the round that predicts)
            need = later_rounds_seconds(step_s, eval_s, per_image, n_unlabeled, 1, closing_s, evals)
            planned = self.rounds
            skip.update(rounds=k, skipped_from=None, labelled_only=k,
                        labelled_only_why=labelled_only_why(k, left, need, planned))
            self.rounds, self.report_stages = k, min(self.report_stages, k)
            self.state.save()
            print(f"[run] round {k} trains on the labelled images only (planned, not an error): "
                  f"{skip['labelled_only_why']}", flush=True)
        elif not fits:
            need = later_rounds_seconds(step_s, eval_s, per_image, n_unlabeled, 1, closing_s, evals)
            left_s, need_s = seconds_apart(left, need)
            self.decide(k - 1, k, f"{left_s} were left of the budget after round {k - 1}, and round "
                                  f"{k} needs at least {need_s} (labelling the pool, calibration, 5 steps, "
                                  f"evaluations and the closing work) at {speed}")
            print(f"[run] round {k}{' and later' if k < self.rounds else ''} skipped (planned, not an error): "
                  f"{skip['why']}; predicting with round {k - 1}", flush=True)
        elif fits[0] < self.rounds - k + 1:
            planned = self.rounds
            self.decide(k + fits[0] - 1, None, f"the {left:.0f} s left after round {k - 1} held {fits[0]} more round"
                                               f"{'s' if fits[0] > 1 else ''} at the measured speed")
            print(f"[run] self-training ends with round {self.rounds} instead of {planned} (planned): {skip['why']}",
                  flush=True)
        else:  # every planned round fits: nothing changed
            return
        self.closing(task, eval_s, per_test_image=per_image)  # the report's estimate, for the stages it now draws

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
            try:
                return self.train_last_stage()
            except LaterRoundSkipped:  # planned with its own speeds, its least run did not fit: the round before
                self.skipped = True
                summary.pop("self_training_labelled_only", None)
                shutil.rmtree(self.fdir, ignore_errors=True)  # made for it, nothing trained
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
                                   **({"pseudo_labels": labels} if labels is not None else {})}, task.fit_seconds)

    def guard_on_val(self) -> None:
        """Self-training's val guard: the stage that predicts is the round that scores highest on val."""
        summary, earlier = self.summary, self.earlier
        if self.pseudo is not None or self.skipped:
            # a guard chosen on val: if pseudo-labels hurt (an earlier round scores higher on val than the last),
            # predict with the best of them; a middle round that beat both round 1 and the last was passed over
            summary["stages"]["finetune_labelled"]["val_mean_acc1"] = self.round1_val
            last_val = self.val_metrics.get("mean_acc1")
            if self.fdir.name in ("finetune", *(n for n in summary["stages"] if n.startswith("finetune_round"))):
                summary["stages"][self.fdir.name]["val_mean_acc1"] = last_val
            best = better_earlier_round(earlier, last_val)
            if best is not None:
                which = "round 1" if best == "finetune_labelled" else f"round {best.removeprefix('finetune_round')}"
                print(f"[run] {which} scores highest on val ({earlier[best]['mean_acc1']:.2f} vs {last_val:.2f} for "
                      f"the last round): predicting with it")
                self.fdir, self.val_metrics = self.out / best, earlier[best]
        summary["predicted_with"] = self.fdir.name

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
        self.note_near_chance(pred, val_metrics, by_folder({info.name: info for info in test_infos}, test_infos))
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
            print(f"unknown-source test: mean acc@1 {test_unknown['mean_acc1']:.2f}, routing "
                  f"{test_unknown['routing_acc']:.2f}")
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
        epochs = self.summary["stages"].get(self.fdir.name, {}).get("epochs")
        why = near_chance_why(found, self.fdir.name, epochs if isinstance(epochs, (int, float)) else None)
        self.summary["near_chance"] = {"datasets": found, "why": why}

    def report_skips_images(self) -> str | None:
        """Why the report leaves out its image-based parts (the time left cannot hold them), or None."""
        out = self.out
        base_s, images_s = self.report_plan["seconds"]
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
                index = build_report([out], out / "report", data=str(self.root),
                                     device=self.device.type, skip_images=skip_images)
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
            print(overrun_note(total_s, budget_s, sum(self.fit_seconds)))


def undo_run_start(out: Path, entries_before: set[str], existed: bool, new_parents: list[Path] = ()) -> None:
    """Remove what a fresh run wrote to ``out`` (refuse_used_output found no entry but hidden ones), for a start
    that is refused before any training: the rerun with a larger budget would be refused as "not empty", or
    asked for a --resume that keeps the old budget. Its lock is given up with its file; errors are swallowed (the
    refusal is the message). ``out`` is the resolved folder (the one written to, whatever `..` the user's path
    held). ``new_parents``: the folders that making it made (missing_parents, deepest first), removed where empty,
    also where ``out`` was there before (`x/../y` with y there made x)."""
    from fewshot.run_lock import LOCK_NAME, unlock_and_remove

    with contextlib.suppress(OSError):
        for name in set(os.listdir(out)) - entries_before - {LOCK_NAME}:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    if LOCK_NAME not in entries_before:
        unlock_and_remove(out)
    made = {*new_parents, *(() if existed else (out,))}
    for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):  # `y/x/..` made y/x inside y
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty one: a file someone else put there keeps it (and its parents)


def refuse_used_output(out: Path) -> None:
    """A second run into the same folder would append to the first one's logs and leave its stage folders
    (a round the new run never trained) for the report to pick up: `fewshot run` wants a fresh folder. The folder
    is the one the kernel will write to: `x/../y` with no x yet names y once x is made."""
    real = resolved(out)
    if real.is_dir():
        try:
            entries = sorted(p.name for p in real.iterdir() if not p.name.startswith("."))  # .DS_Store & co.
        except OSError as exc:
            raise UserError(f"cannot read the output folder '{out}': {exc.strerror or exc}.") from None
        if entries:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            if holds_finished_run(real):  # --resume would only say "finished already"
                raise UserError(f"the output folder '{out}' holds a finished `fewshot run` (its results: "
                                f"{out}/pred_all.json, {out}/metrics.json); `fewshot run` writes a whole new run "
                                f"there. Choose another --out, or delete the folder to run again.")
            stopped = (real / "run_state.json").is_file()
            raise UserError(f"the output folder '{out}' is not empty ({shown}); `fewshot run` writes a whole new "
                            f"run there. Choose another --out, or delete the folder to run again"
                            + (", or add --resume to continue the run it holds." if stopped else "."))


def _same_root(recorded: str, given) -> bool:
    """Whether the data root a run recorded and the --data given now are one folder: as typed (same_recorded_path),
    or reached through a symbolic link."""
    if same_recorded_path(recorded, given):
        return True
    try:
        return os.path.samefile(recorded, given)
    except (OSError, ValueError):
        return False


def check_run_settings(r: dict) -> str:
    """Refuse bad `run.*` values before any stage spends the budget; returns the semi-supervised method."""
    semi = r["semi_method"]
    semi = "off" if semi in (None, False, "off", "none") else semi  # YAML reads a bare `off` as false
    if semi not in ("off", "fixmatch", "pseudo"):
        raise UserError(f"run.semi_method must be off, fixmatch or pseudo, not {semi!r}")
    if semi == "pseudo":
        if not 0.0 < float(r["pseudo_share"]) < 1.0:
            raise UserError(f"run.pseudo_share must lie strictly between 0 and 1, not {r['pseudo_share']}")
        if int(r["pseudo_rounds"]) < 2:
            raise UserError("run.pseudo_rounds must be at least 2 (round 1 trains on the labelled images, later "
                            "rounds on the pseudo-labelled pool too); for no self-training use run.semi_method=off")
        if not 0.0 <= float(r["pseudo_precision"]) < 1.0:
            raise UserError(f"run.pseudo_precision must lie in [0, 1), not {r['pseudo_precision']}")
        if r["pseudo_targets"] not in ("hard", "soft"):
            raise UserError(f"run.pseudo_targets must be hard or soft, not {r['pseudo_targets']!r}")
        if not 0.0 < float(r["pseudo_keep"]) <= 1.0:
            raise UserError(f"run.pseudo_keep must lie in (0, 1], not {r['pseudo_keep']}")
    if not 0.0 < float(r["pretrain_share"]) < 1.0:
        raise UserError(f"run.pretrain_share must lie strictly between 0 and 1, not {r['pretrain_share']}")
    if canonical_value("run.balance", r.get("balance", "auto")) not in ("auto", "on", "off"):
        raise UserError(f"run.balance must be auto, on or off, not {r['balance']!r}")
    return semi


def check_budget(minutes: float) -> None:
    """A positive, finite number of minutes (inf and nan used to pass: nan planned nothing, inf crashed), at most
    MAX_BUDGET_MINUTES, so that its seconds stay finite."""
    if minutes is None or not math.isfinite(minutes) or minutes <= 0:
        raise UserError(f"--budget-minutes must be a positive number of minutes, not {minutes!r}.")
    if minutes > MAX_BUDGET_MINUTES:
        raise UserError(f"--budget-minutes {minutes:g} is more than any run can use: give at most "
                        f"{MAX_BUDGET_MINUTES:,.0f} minutes (about 19 years).")
