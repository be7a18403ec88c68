"""`fewshot run`'s start-up: the settings, the output folder (claimed and locked), a resumed run's state and the
refusals of a finished one (other data, a changed test split), the test split and its answer keys, the model, the
decoded inputs and the pools, and then the run's state; and the undoing of a start that is refused.

Apart from the run's phases (pipeline.py) because the start-up is its own story, told once per session before any
stage trains: every input is checked before the run folder is started, so that a refused start leaves no run behind
(undo_start, undo_run_start). StartupMixin's methods are PipelineRun's (they read and set its attributes): run()
calls start_up(), then check_test_split() to start_state() inside undone_if_start_fails().
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
from pathlib import Path

from fewshot.config import CHOSEN, RECHOSEN, canonical_value, note_chosen, note_rechosen, same_recorded_path
from fewshot.config.recorded import WEIGHTS_RESIZE
from fewshot.data.fit import settle_fit
from fewshot.data.cache_files import ensure_writable_dir
from fewshot.data.layout import scan_root
from fewshot.data.output_guard import check_output_is_not_in_data
from fewshot.data.sets import warn_pool_copies
from fewshot.data.skipped import write_skipped
from fewshot.errors import DataLayoutError, UserError, one_line
from fewshot.progress import set_enabled
from fewshot.run_budget import LEAST_RUN_S, hopeless_budget_error, least_run_holds
from fewshot.run_lock import lock_run_dir, refuse_if_being_written
from fewshot.run_pseudo import pool_decode_limit, precision_cap
from fewshot.run_checks import (check_finetune_batches, check_fixmatch_images, check_model,
                                check_pool_images, check_pretrain_settings, cold_decode_total, fixmatch_decode_limit,
                                joined_skips, moco_decode_limit, moco_first_limit, note_cold_decode, pool_is_cached,
                                preload_images, recorded_limit, recorded_moco_limit, recorded_share, run_img_size,
                                share_source, MOCO_FIRST_FIELD)
from fewshot.run_fit_record import keep_fit_records, restore_fit_records
from fewshot.run_reuse import adopt_stage_architecture, read_finished_json, weights_replaced_by
from fewshot.run_stages import finetune_config
from fewshot.run_state import STATE_FILE, RunState, holds_finished_run
from fewshot.run_words import UNRECORDED, minutes_text
from fewshot.runtime import configure_cpu
from fewshot.utils import loads_run_json, missing_parents, refuse_links_in_run_dir, resolve_device, resolved


# what the fine-tuning stages take from a --weights file (adopt_weights_architecture), which the note does not read
FROM_WEIGHTS_FILE = ("model.width", "model.small_stem")


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


class StartupMixin:
    """PipelineRun's start-up phases, from the settings to the run's state, and the undoing of a start that is
    refused (undo_start): what run() calls before the budget is planned."""

    def start_up(self) -> dict | None:
        """The settings, the output folder (claimed and locked) and the device. Returns the summary of a resumed run
        that had finished, else None."""
        from fewshot.train.distributed import DistContext

        cfg, out = self.cfg, self.out
        refuse_if_being_written(out)  # before its state is judged: "already used" / "--resume" named the wrong cause
        self.requested = copy.deepcopy(cfg)  # the settings as asked for, which a --resume must repeat
        # not the --weights file's data.resize (cli_run marks it; settle_fit takes it): the run's _resize records it
        self.requested.pop(WEIGHTS_RESIZE, None)
        # always a record, if empty: a stage's config.yaml without one is taken for an older fewshot's, and the
        # user's --lr 0.004 or --device cpu there for values the run chose (chosen_by_rule)
        cfg[CHOSEN] = dict(self.chosen or {})
        self.cold_decode: list = []  # the pool decodes the cache did not hold (note_cold_decode): a refusal names them
        self.fixmatch_limit = None  # the pool files FixMatch decodes and trains on (None: all)
        if self.resume:
            finished = self.resume_state()
            if finished is not None:
                return finished
        elif self.budget_minutes is None:
            raise UserError("a budget is needed: --budget-minutes N.")
        else:  # before any work: a budget the start-up spent, or below what any run needs, is refused at once
            # one process decides: `fewshot run` never runs under torchrun (cli_ranks.refuse_several_processes refuses
            # WORLD_SIZE > 1 before this, and self.ctx is a one-process DistContext), so no rank can go on alone
            used = time.monotonic() - self.t_start
            if not least_run_holds(LEAST_RUN_S, self.budget_minutes * 60.0 - used):
                raise hopeless_budget_error(self.budget_minutes * 60.0, used)
        self.r = cfg["run"]
        self.semi = check_run_settings(self.r)
        self.balance = canonical_value("run.balance", self.r.get("balance", "auto"))  # YAML reads a bare off as false
        set_enabled(bool(cfg["train"]["progress"]))
        # train.threads, as train and pretrain set it (their start_job): `fewshot run` planned and trained on every
        # core with train.threads=1, and the thread tuner took the caller's count for the full one
        configure_cpu(cfg["train"].get("threads"))
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
        try:
            self.infos = self.test_infos = scan_root(cfg["data"]["root"], cfg["data"]["datasets"],
                                                     splits=("train", "val", "test"))
        except DataLayoutError as exc:
            raise self.with_datasets_hint(exc) from None
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

    def with_datasets_hint(self, exc: DataLayoutError) -> DataLayoutError:
        """``exc`` with the `--datasets` that leaves out the datasets whose splits are not usable, as predict and eval
        suggest it: run refused a root with one empty test/ with only the problem. Not for --resume (the run's
        datasets are fixed), nor where every dataset or none scans cleanly on its own (the problem is elsewhere)."""
        from fewshot.data.names import names_list, usable_datasets_hint
        from fewshot.run_state import dataset_names

        root, given = self.cfg["data"]["root"], self.cfg["data"]["datasets"]
        names = dataset_names(given, root)
        if self.resume or not names:
            return exc
        usable = [name for name in names if _scans_alone(root, name)]
        if not usable or len(usable) == len(names):
            return exc
        known = f"The run would use {names_list(names)}"
        hint = usable_datasets_hint(known, usable, "usable train, val and test splits")
        return DataLayoutError(exc.problems, [*exc.hints, hint])

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
            # for the crop or pad each dataset gets at the size chosen; settle_fit records them at it
            cfg["model"]["img_size"], why = run_img_size(cfg, self.infos, self.device, self.budget_minutes)
        # a MoCo stage dropped in an earlier session (its pretrain/ removed) no longer starts from the weights: round 1
        # of fine-tuning does, and its checkpoint replaces them (rev88 #2); read from the state by pretrain_kept_off
        moco = r["pretrain"] and not self.pretrain_dropped_before
        replaced_by = weights_replaced_by(self.state, self.out, moco) if cfg["model"]["weights"] else None
        if replaced_by is not None:
            adopt_stage_architecture(cfg, replaced_by)
        backbone = check_model(cfg, load_weights=replaced_by is None)  # before decoding: a mistyped --model at once
        if r["pretrain"]:
            check_pretrain_settings(cfg, backbone)
        del backbone
        # after the checks: a mistyped --model was named in this line, then refused
        print(one_line(f"[run] {cfg['model']['name']} at {cfg['model']['img_size']}px on {self.device.type}"
                       f"{f' ({why})' if why else ''}: {', '.join(i.name for i in self.infos)}"), flush=True)
        note_run_rechosen(cfg, self.rechosen, self.semi)
        if self.state is not None:  # a resume: the run's own record, not decided again from images changed since
            restore_fit_records(cfg, self.state)
        settle_fit(cfg, self.infos)

    def decode_inputs(self) -> None:
        """The train, val and test images decoded (and the fine-tuning batches checked on them), and the pool MoCo
        and FixMatch read: a broken file or a pool smaller than a MoCo batch is refused before the folder is
        started. Not MoCo's pool where an earlier session dropped MoCo (pretrain_kept_off): nothing reads it."""
        cfg, r = self.cfg, self.r
        self.test_set, self.split_skipped, train_set, self.held_out = preload_images(cfg, self.infos,
                                                                                      self.test_infos)
        check_finetune_batches(cfg, train_set)
        del train_set
        moco = r["pretrain"] and not self.pretrain_dropped_before
        if moco:
            from fewshot.data.pool import pool_with_sources

            paths, _, source, _ = pool_with_sources(cfg, self.infos)
            n_pool, batch = len(paths), int(r["pretrain_batch_size"])
            if n_pool < batch:  # found by the MoCo stage, after the run folder was written, it blocked the rerun
                # without a pool the training images stand in: "the pool has 30 images" sent users looking for one
                what = ("the unlabeled pool has" if "train images" not in source else
                        f"MoCo's images ({source}: no unlabeled pool, so the labelled images stand in) are")
                raise UserError(f"{what} {n_pool} images, fewer than one MoCo batch of {batch} (MoCo drops an "
                                f"incomplete batch): lower run.pretrain_batch_size, add images to the pool "
                                f"(ROOT/unlabeled/<dataset>/ or --unlabeled DIR), or leave out --pretrain.")
        # a dropped MoCo's share still read from the state: self-training's and FixMatch's were drawn inside it first
        self.moco_limit = self.moco_pool_limit() if r["pretrain"] else None
        self.pool_skipped, n_moco = (check_pool_images(cfg, self.infos, "off", self.moco_limit, self.cold_decode)
                                     if moco else ([], None))
        self.n_moco = n_moco  # MoCo's queue is sized from it (pretrain_stage)
        if n_moco is not None and n_moco < int(r["pretrain_batch_size"]):  # the count above was before bad files
            raise UserError(f"the unlabeled pool has {n_moco} decodable images, fewer than one MoCo batch of "
                            f"{r['pretrain_batch_size']}: lower run.pretrain_batch_size or add images to the pool.")
        if self.semi == "fixmatch":  # sized once MoCo's pool is decoded: its refusal counts that decode as spent
            self.fixmatch_limit = self.fixmatch_pool_limit()
            self.pool_skipped = joined_skips(self.pool_skipped, check_fixmatch_images(
                cfg, self.infos, self.fixmatch_limit, self.cold_decode))

    def moco_pool_limit(self) -> int | None:
        """How many of MoCo's pool files the run decodes and MoCo trains on (None: all): a cold pool only as far as
        a quarter of MoCo's share of the budget decodes (moco_decode_limit); a resumed run the share its first
        session chose (its state), so that the stopped MoCo stage continues on the same files."""
        if self.state is not None:
            return recorded_moco_limit(self.state.data)
        return moco_decode_limit(self.cfg, self.infos, self.budget_minutes * 60.0, refuse=self.refuse_unless_fits)

    def fixmatch_pool_limit(self) -> int | None:
        """How many of FixMatch's pool files the run decodes and FixMatch trains on (None: all): a cold pool only as
        far as a quarter of the fine-tuning's time decodes (fixmatch_decode_limit); a resumed run the share its
        first session chose (its state), so that a stopped FixMatch stage continues on the same files."""
        if self.state is not None:
            return recorded_limit(self.state.data, "fixmatch_pool_decoded")
        return fixmatch_decode_limit(self.cfg, self.infos, self.budget_minutes * 60.0, refuse=self.refuse_unless_fits,
                                     moco_limit=self.moco_limit)

    def refuse_unless_fits(self, decode_s: float, files: int) -> None:
        """cold_pool_limit's check, before a cold pool's least share is decoded (``files``, ``decode_s`` at the
        rate timed): a budget whose time left cannot hold that decoding and the least run is refused now, as
        hopeless (exit 2). `--budget-minutes 0.2` on a slow cold pool was refused only after 22.5 s, the timings
        and the two least shares decoded."""
        budget_s = self.budget_minutes * 60.0
        used = time.monotonic() - self.t_start
        if least_run_holds(LEAST_RUN_S, budget_s - used - decode_s):
            return
        raise hopeless_budget_error(budget_s, used, started=True, undone=self.locked,
                                    cold=cold_decode_total(self.cold_decode), decode=(decode_s, files))

    def check_self_training_pool(self) -> None:
        """The pool self-training labels, decoded now (as far as its time can use it); without one, self-training
        is off and the fine-tuning on the labelled images gets the whole budget."""
        from fewshot.train.semi import moco_entry_paths, moco_limit_of, pool_files, read_pool

        cfg, state = self.cfg, self.state
        files = pool_files(cfg, self.infos, exclude_train=True)  # listed once: each listing resolved every file
        # a cold pool is decoded only as far as the labelling can use it: a quarter of the time after round 1
        # (what pool_share_in_time gives round 2); a resumed run decodes the share its first session chose
        if state is not None and "pool_decoded" in state.data:
            self.pool_limit = recorded_share(state.data, state.data["pool_decoded"])
        else:
            self.pool_limit = self.self_training_pool_limit(files[0])
        # decoded now, as the test images: a broken pool file would otherwise stop the run after round 1;
        # nothing is read into memory (the rounds read the images from the cache, or MoCo's where it holds them)
        paths = self.self_training_pool_paths(files[0])
        within = moco_entry_paths(cfg, self.infos, moco_limit_of(self.pool_limit))
        cold, t0 = not pool_is_cached(cfg, paths, cfg["data"]["crop_pct"], within), time.monotonic()
        pool = read_pool(cfg, self.infos, cfg["model"]["img_size"], exclude_train=True, limit=self.pool_limit,
                         files=files, digests=True)[0]
        if cold:
            note_cold_decode(cfg, self.cold_decode, time.monotonic() - t0, paths, cfg["data"]["crop_pct"], within)
        warn_pool_copies(pool.digests, pool.paths, self.held_out)
        n_pool, self.pool_skipped = len(pool.images), self.pool_skipped + pool.skipped
        self.n_unlabeled = n_pool  # what round 1 leaves time to label
        del pool
        if n_pool == 0:
            # round 2 would train on the labelled images again: the whole budget goes to one fine-tuning
            rest = "the time MoCo leaves" if self.r["pretrain"] and not self.pretrain_dropped_before else \
                "the whole budget"
            print("[run] no unlabeled pool (ROOT/unlabeled/ or --unlabeled DIR): self-training is off, the "
                  f"fine-tuning on the labelled images gets {rest}.", flush=True)
            self.semi = self.r["semi_method"] = "off"

    def self_training_pool_limit(self, paths: list) -> int | None:
        """How many of the pool files ``paths`` (semi.pool_files) self-training decodes and labels (None: all):
        pool_decode_limit; where MoCo decoded only its share of a cold pool (moco_limit), a share drawn inside MoCo's
        first (a MocoFirst: the files MoCo decoded are read from its cache entry, only the others decoded)."""
        cfg = self.cfg
        within, order, held = share_source(cfg, self.infos, paths, self.moco_limit)
        limit = pool_decode_limit(cfg, paths, 0.25 * (1 - float(self.r["pseudo_share"])) * self.budget_minutes * 60,
                                  refuse=None if self.resume else self.refuse_unless_fits, within=within, order=order,
                                  held=held)
        return moco_first_limit(limit, paths, self.moco_limit, order)

    def self_training_pool_paths(self, paths: list) -> list:
        """The pool files self-training decodes (its share of ``paths``: pool_limit), as load_pool picks them."""
        from fewshot.train.semi import share_positions

        subset = share_positions(self.cfg, self.infos, paths, self.pool_limit)
        return paths if subset is None else [paths[i] for i in subset.tolist()]

    def check_fixmatch_pool(self) -> None:
        """FixMatch's pool and settings (for the run's line and summary.json); without a pool, FixMatch is off."""
        from fewshot.train.semi import (datasets_without_pool, fixmatch_note, fixmatch_summary, pool_share_of,
                                        read_pool)

        cfg, limit = self.cfg, self.fixmatch_limit
        # only real pool images, as the stage draws them: a dataset's labelled train images do not stand in; a cold
        # pool's seeded share (fixmatch_pool_limit), which summary.json's semi.pool_subset_of names
        pool = read_pool(cfg, self.infos, cfg["model"]["img_size"], exclude_train=True, limit=limit, digests=True)[0]
        warn_pool_copies(pool.digests, pool.paths, self.held_out)
        self.fixmatch = fixmatch_summary(cfg, pool, pool_share_of(cfg, self.infos, limit))
        without = datasets_without_pool(cfg, self.infos, pool)
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
        from fewshot.train.semi import moco_limit_of

        if self.state is None:  # written once the inputs have passed their checks: a failed start leaves no run behind
            self.state = RunState.start(self.out, self.requested, self.budget_minutes, self.cfg["model"]["img_size"],
                                        time.monotonic() - self.t_start, self.class_names)
        else:
            self.t_start -= self.used  # the budget counts every session's time, this one's start-up included
            self.startup_s = time.monotonic() - self.t_start - self.used  # what warn_if_predicting_late names
            done = [n for n, st in self.state.data["stages"].items() if st.get("status") == "done"]
            print(f"[run] resuming {self.out}: {self.used / 60:.1f} of {minutes_text(self.budget_minutes)} used before "
                  f"the stop; finished stages: {', '.join(done) or 'none'}"
                  + (f" ({UNRECORDED})" if self.session_before_lost else ""))
        keep_fit_records(self.state, self.cfg)  # a state from before the record gets it now
        self.state.data["pool_decoded"] = _count(self.pool_limit)
        self.state.data["moco_pool_decoded"] = self.moco_limit  # the MoCo stage trains on it (run_stages)
        self.state.data["fixmatch_pool_decoded"] = _count(self.fixmatch_limit)  # and the FixMatch stage on this one
        # both drawn inside MoCo's share first (recorded_share): a resume and the stages take the same files
        self.state.data[MOCO_FIRST_FIELD] = moco_limit_of(self.pool_limit) is not None or moco_limit_of(
            self.fixmatch_limit) is not None
        self.state.save()
        self.stop_clock = (self.state, self.t_start)
        # the files --skip-bad-images (train, val, test) and data.skip_bad_unlabeled (pool) left out, with the reasons
        write_skipped(self.out, self.split_skipped + self.pool_skipped)

    def undo_start(self, refused: bool = True, new_entries: bool = False) -> None:
        """A fresh run's start that failed (a refused budget, an input found bad after the folder was claimed):
        what it wrote, its folder and the parents --out made go again; only with its lock, else another start may
        be writing there too and what appeared may be its. A --resume ``refused`` over its input (a UserError)
        leaves the run's state as the file held it when the lock was taken (only with the lock, for the same reason):
        each refusal of a renamed class folder added its 17 s of start-up to the run's time. A stop or a crash there
        still counts (note_stop): the start-up's decoding was work. ``new_entries``: a refused --resume also removes
        what this session added to the folder (a stage folder made before the refusal)."""
        if self.locked and not self.resume:  # a --resume's folder holds the run it continues
            undo_run_start(self.real_out, self.entries_before, self.out_existed, self.new_parents)
            self.stop_clock = None  # a stop's count would write the removed run's state again
        # with the lock too: without one another session may be writing the state, which the copy would overwrite
        elif self.locked and refused and self.state_as_read is not None and self.stop_clock is not None:
            self.stop_clock = None  # nor is this session's time counted after it
            self.state.data = self.state_as_read
            if new_entries:
                remove_new_entries(self.real_out, self.entries_before)
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


def _count(limit: int | None) -> int | None:
    """A pool share's count as run_state.json records it (a semi.MocoFirst as the plain number)."""
    return None if limit is None else int(limit)


def undo_run_start(out: Path, entries_before: set[str], existed: bool, new_parents: list[Path] = ()) -> None:
    """Remove what a fresh run wrote to ``out`` (refuse_used_output found no entry but hidden ones), for a start
    that is refused before any training: the rerun with a larger budget would be refused as "not empty", or
    asked for a --resume that keeps the old budget. Its lock is given up with its file; errors are swallowed (the
    refusal is the message). ``out`` is the resolved folder (the one written to, whatever `..` the user's path
    held). ``new_parents``: the folders that making it made (missing_parents, deepest first), removed where empty,
    also where ``out`` was there before (`x/../y` with y there made x)."""
    from fewshot.run_lock import made_lock_file, unlock_and_remove

    remove_new_entries(out, entries_before)
    if made_lock_file(out):  # one this start created (O_EXCL): another command's may appear after the listing
        unlock_and_remove(out)
    made = {*new_parents, *(() if existed else (out,))}
    for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):  # `y/x/..` made y/x inside y
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty one: a file someone else put there keeps it (and its parents)


def remove_new_entries(out: Path, entries_before: set[str]) -> None:
    """Remove what appeared in ``out`` since its listing ``entries_before`` (its lock file aside): a refused start's
    writes (undo_run_start; a resume refused before any stage trained, undo_start)."""
    from fewshot.run_lock import LOCK_NAME

    with contextlib.suppress(OSError):
        for name in set(os.listdir(out)) - entries_before - {LOCK_NAME}:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


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


def _scans_alone(root, name: str) -> bool:
    """Whether dataset ``name``'s train, val and test splits scan cleanly on their own (run's --datasets hint)."""
    try:
        scan_root(root, [name], splits=("train", "val", "test"))
    except UserError:
        return False
    return True


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
