"""`fewshot run`: pool -> MoCo pretraining -> export -> fine-tuning -> prediction -> report, in a budget.

Stage lengths are planned from measured step times on this machine (a few timed steps on a
throwaway copy of the model), so the same command fits a laptop CPU and a GPU. The cosine
schedules then run to completion inside their share; the engine's wall-clock guard only
catches mis-estimates.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from fewshot.config import (CHOSEN, RECHOSEN, canonical_value, note_chosen, note_rechosen, same_recorded_path,
                            save_yaml)
from fewshot.data.cache import default_cache_dir, ensure_writable_dir, write_skipped
from fewshot.data.layout import check_output_is_not_in_data, scan_root
from fewshot.errors import DataLayoutError, UserError, one_line, printable
from fewshot.eval.evaluate import format_table
from fewshot.progress import set_enabled
from fewshot.run_budget import (CLOSING_SHARE, FIGURE_S, FLOOR_STEPS, LEAST_RUN_S, after_round1_seconds,
                                calibration_seconds, eval_passes, figure_seconds, fitting_epochs, free_device_memory,
                                hopeless_budget_error, later_rounds_seconds, least_run_holds, least_run_seconds,
                                measure_eval_seconds, measure_prediction_seconds, measure_step_seconds, plan_epochs,
                                pretrain_closing_seconds, pretrain_least_seconds, report_seconds, round1_leaves,
                                stop_timing_when, time_holds, too_short_budget_error, trained_speeds)
from fewshot.run_lock import lock_run_dir, refuse_if_being_written
from fewshot.utils import (atomic_write_text, derive_seed, loads_run_json, missing_parents, refuse_links_in_run_dir,
                           resolve_device, resolved, seed_everything, write_json)


def pseudo_label_line(per_dataset: dict, unknown: int) -> str:
    """What self-training kept, per dataset. Datasets with neither pool images nor kept labels are counted,
    not listed: with 14 datasets the line ran past 1,000 characters of "0/0 (mean confidence None)"."""
    def conf(v):
        return "" if v["mean_confidence"] is None else f" (mean confidence {v['mean_confidence']})"

    def of(v, sep="/"):  # a pool labelled in a share: "305/1390" read as 1390 pool images where the pool held 8000
        labelled = v.get("labelled", v["pool"])
        return f"{sep}{v['pool']}" if labelled == v["pool"] else f" of {labelled} labelled (of {v['pool']} in the pool)"

    shown = {n: v for n, v in per_dataset.items() if v["pool"] or v["kept"]}
    if unknown:  # "2266/0" read as more kept than pool: the unknown-source images are counted apart
        head = (f"[run] pseudo-labels kept (of them from the {unknown} pool images of unknown source, each counted "
                f"for the dataset of its class) / the dataset's own pool images: ")
        parts = [f"{n} {v['kept']} ({v['kept_from_unknown_source']}){of(v, ' / ')}{conf(v)}" for n, v in shown.items()]
    else:
        head = "[run] pseudo-labels kept / pool images of the dataset: "
        parts = [f"{n} {v['kept']}{of(v)}{conf(v)}" for n, v in shown.items()]
    rest = len(per_dataset) - len(shown)
    tail = f"; {rest} dataset{'s' if rest != 1 else ''} without pool images" if rest else ""
    return one_line(head + (", ".join(parts) or "none") + tail)  # dataset names: their escapes stay inert


def made_of(task, pseudo: dict | None, fcfg: dict) -> str:
    """What a self-training round's training images are: "558 training images" for a round that kept no
    pseudo-label read as 558 images where 186 labelled ones were repeated 3 times."""
    if pseudo is None or pseudo.get("labelled_only"):
        return ""
    n_pseudo, repeat = len(pseudo["targets"]), max(1, int(fcfg["run"]["pseudo_labelled_repeat"]))
    n_labelled = (len(task.train_set) - n_pseudo) // repeat
    labelled = f"{n_labelled} labelled" + (f" x{repeat}" if repeat > 1 else "")
    return f" ({labelled} + {n_pseudo} pseudo-labelled)"


def about_epochs(n: float) -> str:
    """'about 74 epochs', 'about 0.4 epoch': the plan line said "about 2 epochs" (its 8-epoch floor / 4)
    for a budget that held 3 steps of 8."""
    return f"about {n:.0f} epochs" if n >= 1.5 else f"about {n:.1g} epoch" if n < 1 else "about 1 epoch"


def epochs_estimate(n: float) -> str:
    """The plan line's epoch count (fitting_epochs: the timed steps and the planned evaluations), worded as the
    estimate it is: the timed step leaves out the optimizer's own update, EMA, logging and checkpoint writes, and a
    busy machine times slower or faster than it trains ("about 129 epochs" read as a promise for a stage that
    then trained 36; another round planned 38 and trained 78). The schedule follows the clock, not this count."""
    return f"{about_epochs(n)} at the speeds timed at start-up; the schedule follows the clock"


def overrun_warning(seconds: float, why: str) -> str:
    """The start-up warning of a run that cannot keep its budget: it overran silently until its end."""
    return one_line(f"[run] warning: {why}: the run will likely end about {max(1.0, seconds):.0f} s after its budget. A larger "
                    f"--budget-minutes, or a smaller --img-size or --model, lets it fit.")


def plan_stage(task, cfg: dict, end_time: float, min_epochs: int, every_field: tuple[str, str],
               closing=None) -> tuple[float, int, float]:
    """Size one stage to end at ``end_time`` (time.monotonic()): measure its step and evaluation
    times, space evaluations so they cost about 10 % of an epoch's time (``every_field``: where the
    task reads its interval), and put the stage on a time-based schedule. ``closing(task, eval_s, step_s)``:
    seconds the run still needs after this stage's last step (the last stage: evaluation, prediction,
    report), taken off its training time.
    Returns (seconds per step, the epochs expected to fit, the stage's budget in seconds)."""
    step_s = measure_step_seconds(task)
    eval_s = measure_eval_seconds(task)
    steps = len(task.plan_epoch(0))
    training_eval_s = eval_s * eval_passes(task, cfg)
    every = max(1, int(round(10 * training_eval_s / max(step_s * steps, 1e-6))))
    section, key = every_field
    cfg[section][key] = task.eval_every = every
    after = closing(task, eval_s, step_s) if closing is not None else 0.0
    # at least a few steps, even when the budget is already spent (the run then reports the overrun); the Engine
    # looks at its deadline after each step, so the last one ends up to a step after it: kept back here
    left = end_time - after - time.monotonic() - step_s
    floor = FLOOR_STEPS * step_s
    budget_s = max(floor, left)
    if floor > left:
        print(overrun_warning(floor - left, f"this stage's least time (about {seconds_text(floor)}, {FLOOR_STEPS} "
                              f"training steps at the measured speed) does not fit the "
                              f"{seconds_text(max(0.0, left))} left to it"
                              f"{' (the rest is kept for the work after it)' if after > 0 else ''}"), flush=True)
    epochs = plan_epochs(budget_s, step_s, steps, training_eval_s, every, min_epochs)
    cfg["train"].update(epochs=epochs, budget_minutes=budget_s / 60)
    cfg["sched"]["time_based"] = True
    task.step_s, task.eval_s = step_s, eval_s  # for the run's check that a later round still fits
    # at the floor its steps at the measured speed are what the stage trains: the plan line says the warning's time
    # and those steps, not a time's epochs
    fits = FLOOR_STEPS / max(1, steps) if floor > left else fitting_epochs(budget_s, step_s, steps, training_eval_s,
                                                                          every)
    return step_s, fits, budget_s


def seconds_text(x: float) -> str:
    """Seconds in words, a tenth below 10 s: fast steps printed "least 5 training steps (0 s) do not fit the 0 s
    left"."""
    return f"{x:.1f} s" if x < 9.95 else f"{x:.0f} s"


def seconds_apart(left: float, need: float) -> tuple[str, str]:
    """``left`` and ``need`` in words that differ where the numbers do: a skipped round said "6 s were left ... round
    2 needs at least 6 s" (5.6 and 6.4, both rounded to 6)."""
    left, need = max(0.0, left), max(0.0, need)
    words = seconds_text(left), seconds_text(need)
    digits = 0
    while words[0] == words[1] and left != need and digits < 3:
        digits += 1
        words = f"{left:.{digits}f} s", f"{need:.{digits}f} s"
    return words


def stage_plan_words(step_s: float, budget_s: float, epochs: float) -> str:
    """The plan line's length of a stage (plan_stage's budget and epochs): at the floor, the warning's seconds and
    steps ("least 5 steps (9 s) do not fit the 7 s left" came before "0.2 min ... about 2 epochs", and elsewhere
    "0.0 min ... about 6 epochs"); under a minute in seconds, else in minutes. The floor is a time, not a count
    (the Engine stops at its deadline): "its least 5 training steps (3.6 s)" on a machine that got busy trained 2,
    and "at least about 3.6 s" claimed a least the deadline does not keep."""
    if budget_s <= FLOOR_STEPS * step_s * (1 + 1e-9):
        return (f"about {seconds_text(budget_s)}, its floor ({FLOOR_STEPS} training steps at the measured speed, "
                f"{about_epochs(epochs)})")
    length = seconds_text(budget_s) if budget_s < 60 else f"{budget_s / 60:.1f} min"
    return f"{length} on a time-based schedule ({epochs_estimate(epochs)})"


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


# docs/recipes.md: at a 3-minute budget on CPU 64 px scored below 32 (4x the cost per step, fewer epochs); 64 px
# gained at 5 minutes on 56-px images
CPU_64PX_MIN_MINUTES = 5.0


def auto_img_size(infos, device: torch.device, budget_minutes: float) -> tuple[int, str]:
    """The image size for these images, device and budget, and why, for the line that reports it. Small native
    images (digits, MNIST-like) train at 32 px; larger ones at 160 on GPU, and on CPU at 64 px from
    CPU_64PX_MIN_MINUTES of budget, else at 32 (at 64 px a short budget buys too few steps)."""
    from PIL import Image

    sides = []
    for info in infos:
        for p, _ in info.train[:20]:
            try:
                with Image.open(p) as im:
                    sides.append(min(im.size))
            except (OSError, ValueError, Image.DecompressionBombError):
                continue  # an unreadable file is reported (or skipped) by the image loader, not here
    median = sorted(sides)[len(sides) // 2] if sides else 224
    chosen = "chosen for these images and device; --img-size to change"
    if median <= 40:
        return 32, chosen
    if device.type != "cpu":
        return 160, chosen
    if budget_minutes < CPU_64PX_MIN_MINUTES:
        return 32, (f"chosen for these images, device and the {budget_minutes:g}-minute budget: 64 px costs 4x per "
                    f"step and pays on CPU from --budget-minutes {CPU_64PX_MIN_MINUTES:g}; --img-size 64 to override")
    return 64, chosen


def check_model(cfg: dict, load_weights: bool = True):
    """Build the backbone once and run a blank image through it, before the run folder is written: an unknown
    model, an option it does not take (small_stem on a ViT), weights that do not fit or an image size it cannot
    take would otherwise stop the first stage and leave a run that neither a rerun nor --resume can use.
    The model.strict=false warning is given here, once; the stages load the file quietly. ``load_weights``
    False: a resumed stage's checkpoint replaces model.weights (weights_replaced_by), which are not read."""
    from fewshot.models.backbone import (adopt_weights_architecture, backbone_options, check_input_size,
                                         create_backbone, input_size)
    from fewshot.models.weights import load_backbone_weights

    m = adopt_weights_architecture(copy.deepcopy(cfg["model"]))
    backbone = create_backbone(m["name"], **backbone_options(m))
    if m.get("weights") and load_weights:
        load_backbone_weights(backbone, m["weights"], strict=m["strict"])
    check_input_size(backbone, input_size(backbone, m["img_size"]), m["name"])
    return backbone


def weights_replaced_by(state, out: Path, pretrain: bool) -> Path | None:
    """On --resume: the folder of the stage that starts from model.weights (MoCo, else round 1 of fine-tuning)
    when it holds a checkpoint that replaces them, so that the file need not exist any more (as for `fewshot
    train --resume`); None when that stage starts from the file again. The conditions are the stages' own."""
    if state is None:
        return None
    if pretrain:
        sdir, status = out / "pretrain", state.status("pretrain")
        done = status == "done" and (out / "backbone.safetensors").is_file()
        began = status is not None and (sdir / "checkpoints" / "last.pt").is_file()
        # a stopped one without its config.yaml resumes too (run_pretrain), refused as lost settings
        return sdir if (done and (sdir / "config.yaml").is_file()) or (began and not done) else None
    for name in ("finetune_labelled", "finetune"):  # round 1 is `finetune` when self-training is off
        sdir = out / name
        if stage_resumes(state.status(name), sdir):
            return sdir
    return None


def stage_resumes(status: str | None, sdir: Path) -> bool:
    """Whether fine-tuning stage ``sdir`` (RunState ``status``) is reused or continued on --resume. One with its
    last.pt is, with or without its config.yaml: stage_config refuses a missing one as lost settings, where the
    stage started over from random init and overwrote its last.pt without a word."""
    if status in ("began", "trained", "done") and (sdir / "checkpoints" / "last.pt").is_file():
        return True
    # a finished stage whose last.pt is gone is reused from its config.yaml and best.pt
    return status in ("trained", "done") and (sdir / "config.yaml").is_file()


def adopt_stage_architecture(cfg: dict, sdir: Path) -> None:
    """The width and stem that stage ``sdir`` took from model.weights (a fewshot export records them), for the
    stages not begun yet when the file is no longer read: they rebuild the network the checkpoint holds. A stage
    config.yaml with no run's settings in it is refused as lost (resumed_settings), not read as no width."""
    from fewshot.train.finetune import resumed_settings

    model = resumed_settings(sdir, cfg, stage=True).get("model") or {}
    for key in ("width", "small_stem"):
        if key in model:
            cfg["model"][key] = model[key]


def check_pool_images(cfg: dict, infos, semi: str) -> tuple[list[tuple[str, str]], int | None]:
    """Decode the pool as the MoCo and FixMatch stages will (their cache entries), before the run folder is
    started: a broken file under data.skip_bad_unlabeled=false stopped those stages in a started folder that
    a rerun then refused. Returns the files left out and the images MoCo can use (None: no MoCo); the images
    are not kept (only the cache is)."""
    from fewshot.data.cache import load_images
    from fewshot.ssl.pretrain import pool_paths
    from fewshot.train.semi import POOL_SKIP_NOTE, pool_files

    d = cfg["data"]
    # MoCo decodes whole images (crop 1.0) of its pool, where train images stand in for a dataset without one;
    # FixMatch decodes as fine-tuning does (data.crop_pct) and only real pool images (the cache entry it reads)
    jobs = ([("moco", 1.0, pool_paths(cfg, infos)[0])] if cfg["run"]["pretrain"] else []) + \
        ([("fixmatch", d["crop_pct"], pool_files(cfg, infos, exclude_train=True)[0])] if semi == "fixmatch" else [])
    skipped, n_moco, seen = [], None, set()
    for stage, crop, paths in jobs:
        cached = load_images(paths, cfg["model"]["img_size"], default_cache_dir(d["root"], d["cache_dir"]),
                             crop_pct=crop, skip_bad=d["skip_bad_images"] or d["skip_bad_unlabeled"],
                             desc="loading unlabeled pool", skip_note=POOL_SKIP_NOTE, max_gb=d.get("cache_max_gb"),
                             bit_depth=d.get("bit_depth", "auto"))
        skipped += [b for b in cached.bad if b[0] not in seen]
        seen.update(b[0] for b in cached.bad)
        if stage == "moco":
            n_moco = int(cached.valid.sum())
        del cached
    return skipped, n_moco


def check_pretrain_settings(cfg: dict, backbone) -> None:
    """The MoCo stage's batch against its queue and shuffle-BN groups, before the run folder is started: found by
    the stage, a bad pair left a folder that only deleting freed (a rerun wanted --resume, and --resume refused
    the corrected setting)."""
    from fewshot.ssl.pretrain import split_groups

    r = cfg["run"]
    batch = int(r["pretrain_batch_size"])
    if r["queue_size"] is not None and int(r["queue_size"]) < batch:
        raise UserError(f"run.queue_size={r['queue_size']} is smaller than the MoCo batch (run.pretrain_batch_size="
                        f"{batch}): the queue could not hold one batch of keys. Raise run.queue_size or lower "
                        f"run.pretrain_batch_size.")
    try:
        split_groups({"moco": cfg["moco"], "train": {"batch_size": batch}}, 1, backbone)
    except UserError as exc:
        raise UserError(f"the MoCo stage's batch: {exc} (in `fewshot run` the MoCo batch size is "
                        f"run.pretrain_batch_size)") from None


def preload_images(cfg: dict, infos, test_infos):
    """Decode the train, val and test images before the stages are planned (into the caches the stages and
    prediction read): every undecodable file is listed in one error now, before the run folder is started,
    rather than the test split's first and the labelled splits' after a rerun (which then needed --resume);
    decoding (slow for large photos) is paid up front instead of overrunning the end. Returns the test
    ImageSet, which prediction reuses, the files --skip-bad-images left out of the three splits, and the
    labelled train ImageSet (its epoch plan is checked before the run folder is started)."""
    from fewshot.data.label_space import LabelSpace
    from fewshot.data.sets import load_splits, warn_split_copies
    from fewshot.eval.predict import prediction_cache_dir, warn_about_blank_test_images

    d, size, space = cfg["data"], cfg["model"]["img_size"], LabelSpace.from_infos(infos)
    problems, hints, skipped, test_set, train_set = [], [], [], None, None
    for splits, cache, sources in ((("train", "val"), default_cache_dir(d["root"], d["cache_dir"]), infos),
                                   (("test",), prediction_cache_dir(d["root"]), test_infos)):
        try:
            sets = load_splits(sources, splits, space, size, cache, d["crop_pct"], d["skip_bad_images"],
                               d.get("cache_max_gb"), d.get("bit_depth", "auto"))
        except DataLayoutError as exc:
            problems += exc.problems
            hints = list(dict.fromkeys(hints + exc.hints))
            continue
        skipped += [bad for one in sets for bad in one.skipped]
        test_set = sets[0] if splits == ("test",) else test_set
        train_set = sets[0] if splits == ("train", "val") else train_set
    if problems:
        raise DataLayoutError(problems, hints)
    warn_about_blank_test_images(test_set)
    warn_split_copies(train_set, {"test": test_set}, space)  # val's were said by load_splits
    return test_set, skipped, train_set


def check_finetune_batches(cfg: dict, train_set) -> None:
    """The fine-tuning stages' epoch plan on the labelled images, before the run folder is started: found by the
    first stage (train.batch_size=1, a single training image), the error left a folder that blocked the rerun
    (not empty) and --resume (the corrected setting)."""
    from fewshot.train.supervised import plan_training_batches

    if plan_training_batches(cfg, train_set, 0):  # the later rounds add pseudo-labelled images, never fewer
        return
    bs, n = cfg["train"]["batch_size"], len(train_set)
    if bs < 2:
        raise UserError(f"train.batch_size={bs}: BatchNorm needs at least 2 images per batch in training; use 2 "
                        f"or more.")
    if cfg["data"]["sampler"] == "grouped":
        raise UserError(f"data.sampler=grouped keeps each dataset's batches apart, and no dataset has 2 training "
                        f"images (BatchNorm cannot train on 1): use data.sampler=shuffle or add training images.")
    raise UserError(f"{n} training image{'s give' if n != 1 else ' gives'} no batch of at least 2 images, which "
                    f"BatchNorm needs in training: add training images.")


def stage_config(sdir: Path, cfg: dict) -> dict:
    """A stopped stage's own config.yaml (its planned epochs, budget and evaluation interval), with this
    session's device, data location and output settings (what a resumed run may change). The device's record
    follows this session's: a stage begun with auto on a GPU and resumed with auto on a CPU kept `cuda` as chosen
    beside `device: cpu`, and the cpu was then taken for the user's (and the reverse for --device cpu). An emptied
    (or `false`) stage config.yaml is refused as lost settings: merged into the defaults, the engine refused it as
    "changing" model.name."""
    from fewshot.config import get_dotted, set_dotted, with_defaults
    from fewshot.run_state import RUN_RESUME_MAY_CHANGE
    from fewshot.train.finetune import ABSENT_MEANS, resumed_settings

    scfg = with_defaults(resumed_settings(sdir, cfg, stage=True), ABSENT_MEANS)  # a stage written by an older fewshot
    # and the backbone file's current path (the run folder may have moved; last.pt's weights replace it anyway),
    # and the pool as given now (an older stage recorded a relative --unlabeled; RunState.resume compared them)
    for dotted in (*RUN_RESUME_MAY_CHANGE, "model.weights", "data.unlabeled"):
        keys = dotted.split(".")
        set_dotted(scfg, keys, get_dotted(cfg, keys))
    chosen = scfg.get(CHOSEN)
    if isinstance(chosen, dict):  # an older stage's without a record is judged by the rules (chosen_by_rule)
        chosen.pop("train.device", None)
        if "train.device" in (cfg.get(CHOSEN) or {}):
            chosen["train.device"] = cfg[CHOSEN]["train.device"]
    return scfg


def cap_resumed_budget(cfg: dict, last: Path, end_time: float) -> float:
    """A stopped stage continues on its own plan, but ends no later than ``end_time`` on the run's clock: the
    new session's start-up and the work redone before the stage come out of its time, not on top of the
    budget (its time-based schedule then moves on faster). Returns the stage's training seconds so far."""
    from fewshot.train.checkpoint import load_checkpoint

    trained = float(load_checkpoint(last).get("train_seconds", 0.0))
    planned = float(cfg["train"]["budget_minutes"] or 0.0) * 60
    allowed = trained + max(0.0, end_time - time.monotonic())
    cfg["train"]["budget_minutes"] = max(1e-3, min(planned, allowed)) / 60
    return trained


def same_training_images(task, last: Path, key_then: str | None, key_now: str | None) -> bool:
    """Whether a stopped stage's last.pt trained on the images the task holds now: as many, and the same
    pseudo-labels (their fingerprint, recorded when the stage began)."""
    from fewshot.train.checkpoint import load_checkpoint

    n_run = load_checkpoint(last).get("n_train")
    return (n_run is None or int(n_run) == len(task.train_set)) and key_then == key_now


def better_earlier_round(earlier: dict[str, dict], last_val: float | None) -> str | None:
    """The val guard of self-training: the stage (of ``earlier``, name -> val metrics) that scores higher on val
    than the last round, the best of them (the earliest of equals), or None. Only round 1 was compared: with
    run.pseudo_rounds=3 a round 2 of 83.9 lost to round 1's 83.5 after the last round's 81.5."""
    scored = {name: m["mean_acc1"] for name, m in earlier.items() if m.get("mean_acc1") is not None}
    best = max(scored, key=scored.get, default=None)
    return best if best is not None and last_val is not None and scored[best] > last_val else None


def drop_best_aside(sdir: Path) -> None:
    """A finished stage is never resumed: the best.pt that its closing budget stop kept aside for a resume
    (engine.BEST_ASIDE) is a whole checkpoint of wasted disk."""
    from fewshot.train.engine import BEST_ASIDE

    (sdir / "checkpoints" / BEST_ASIDE).unlink(missing_ok=True)


def finetune_stage(fcfg: dict, infos, device, ctx, fdir: Path, end_time: float, what: str, pseudo: dict | None = None,
                   closing=None, state=None, t_start: float = 0.0, timing_s: float | None = None):
    """One fine-tuning run that ends at ``end_time``; with ``pseudo`` it starts from the previous round's
    model and adds the pseudo-labelled pool images. With a RunState that knows the stage (``fewshot run
    --resume``), a finished stage is reused and a stopped one continues from its last.pt on its planned
    schedule. ``timing_s``: the planning's timing estimated at the round before's speeds, for its line.
    Returns (task with the best weights loaded, ``epochs_run``, ``fit_seconds``, ``reused`` and the speeds it trained
    at set, val metrics)."""
    from fewshot.train.engine import Engine
    from fewshot.train.finetune import final_metrics, load_best_checkpoint
    from fewshot.train.supervised import SupervisedTask

    name = fdir.name
    status = state.status(name) if state is not None else None
    last = fdir / "checkpoints" / "last.pt"
    # a stage that began but left no last.pt (killed in its first steps) starts over and is planned anew
    resuming = stage_resumes(status, fdir)
    # each round plans its own epochs and evaluation interval; a resumed one keeps what it planned
    fcfg = stage_config(fdir, fcfg) if resuming else copy.deepcopy(fcfg)
    ensure_writable_dir(fdir, "fine-tuning run")
    seed_everything(fcfg["train"]["seed"])
    # a resumed stage's checkpoint, or a later round's previous model, replaces model.weights: the file is not
    # read (it may be gone); check_model gave the model.strict=false warning once for the whole run
    task = SupervisedTask(fcfg, infos, device, ctx, resuming=resuming or pseudo is not None, quiet_weights=True)
    task.reused, task.fit_seconds = False, 0.0
    if resuming and reusable_stage(state, fdir):
        load_best_checkpoint(task.model, fdir)
        task.model.to(device)  # the Engine would have moved it; the pseudo-labelling that follows needs it there
        metrics = read_finished_json(fdir / "metrics.json", f"the finished stage {name}'s metrics", ("mean_acc1",))
        task.reused, task.epochs_run = True, state.stage(name).get("epochs", 0)
        print(f"[run] {name}: finished before the stop; its best checkpoint is reused")
        return task, metrics
    if pseudo is not None and not pseudo.get("labelled_only"):  # a labelled-only round: the images as they are
        task.add_pseudo_labelled(pseudo["images"], pseudo["targets"], pseudo["dataset_ids"],
                                 fcfg["run"]["pseudo_labelled_repeat"], soft=pseudo.get("soft"))
    key = pseudo.get("key") if pseudo is not None else None
    if resuming and status == "began" and not same_training_images(task, last, state.stage(name).get("pseudo_key"), key):
        # the pool was labelled differently this time (another device's float results can move a threshold):
        # its checkpoint belongs to other training images, so the stage starts over from the previous round
        why = ("the training images differ (the labelled images, or the pool's pseudo-labels)" if pseudo is not None
               else "the labelled images differ")
        print(f"[run] {name}: {why} from the stopped run's ({len(task.train_set)} training images now); the stage "
              f"starts over")
        shutil.rmtree(fdir)
        ensure_writable_dir(fdir, "fine-tuning run")
        resuming, status = False, None
        if pseudo is None:  # round 1 starts from model.weights again, with its head initialised
            seed_everything(fcfg["train"]["seed"])
            task = SupervisedTask(fcfg, infos, device, ctx, quiet_weights=True)
            task.reused, task.fit_seconds = False, 0.0
    if pseudo is not None and not resuming:  # a resumed stage's weights come from its last.pt
        task.model.load_state_dict(pseudo["state"])
    if resuming and status == "trained":
        print(f"[run] {name}: trained before the stop; evaluating its best checkpoint")
    elif resuming:
        from fewshot.train.checkpoint import load_checkpoint

        # the closing estimate takes the stage's evaluation time from its log.jsonl where it has one (its own speed):
        # an evaluation timed again costs this session's time, and from end_time - after on the stage trains nothing
        # anyway (cap_resumed_budget gives it no time), not only once end_time has passed
        logged = trained_speeds(fdir / "log.jsonl", eval_passes(task, fcfg))[1] if closing is not None else None
        after = closing(task, measure_eval_seconds(task) if logged is None else logged) if closing is not None else 0.0
        trained_before = cap_resumed_budget(fcfg, last, end_time - after)
        steps_before = int(load_checkpoint(last, mmap=True).get("global_step", 0))  # the steps fit() resumes from
        now = time.monotonic() - t_start  # this session's start-up counts: a second stop must not lose it
        state.record(name, "began", now, fit_at=now - trained_before)
        print(f"[run] {name}: continuing from {last} on its planned schedule")
    else:
        if pseudo is not None:  # a later round's timing went unsaid: 20-36 s without a line on a loaded machine
            about = f" (about {seconds_text(timing_s)} at the round before's speed)" if timing_s else ""
            print(f"[run] {name}: timing its training steps, an evaluation and a prediction batch to plan "
                  f"it{about}", flush=True)
        step_s, epochs, remaining = plan_stage(task, fcfg, end_time, fcfg["run"]["min_epochs"],
                                               ("train", "eval_every"), closing)
        save_yaml(fcfg, fdir / "config.yaml")
        weights = fcfg["model"]["weights"]
        start = ("from random init" if not weights else "from MoCo weights" if fcfg["run"]["pretrain"]
                 else f"from {weights}")  # the user's own model.weights are not MoCo's
        print(f"[run] fine-tuning {'from the previous round' if pseudo else start}{' ' + what if what else ''}: "
              f"{len(task.train_set)} training images{made_of(task, pseudo, fcfg)}, {step_s * 1000:.0f} ms/step x "
              f"{len(task.plan_epoch(0))} "
              f"steps/epoch, {stage_plan_words(step_s, remaining, epochs)}, lr {fcfg['optim']['lr']:g}")
        if state is not None:
            state.record(name, "began", time.monotonic() - t_start, fit_at=time.monotonic() - t_start,
                         pseudo_key=key)
    seed_everything(fcfg["train"]["seed"])
    engine = Engine(task, fcfg, fdir, device, ctx)
    if status == "trained":  # stopped after its training, before its metrics
        task.epochs_run = state.stage(name).get("epochs", 0)
    else:
        fit_start = time.monotonic()
        engine.fit(resume=resuming and last.is_file())
        task.fit_seconds = time.monotonic() - fit_start + (trained_before if resuming else 0.0)
        task.epochs_run = engine.epochs_trained()
        if state is not None:
            trained_at = time.monotonic() - t_start  # on the run's clock: summary.json's closing_seconds counts from it
            # a resumed stage that trained nothing (no time left, or all its epochs done: a stop in the last epoch's
            # evaluation) ended its training in the session before: this session's start-up is no late training
            # (closing_seconds.training_late said 50.8 s of it). Steps, not clocks: fit() starts its clock even
            # where it runs no loop, so train_seconds() came out microseconds above trained_before
            trained = not resuming or engine.global_step > steps_before
            state.record(name, "trained", trained_at, epochs=engine.epochs_trained(),
                         **({"trained_at": round(trained_at, 2)} if trained else {}))
    # the speeds the stage trained and evaluated at, which judge a later round before its work (check_later_rounds)
    task.trained_step_s, task.trained_eval_s = trained_speeds(fdir / "log.jsonl", eval_passes(task, fcfg))
    metrics = final_metrics(engine, task, fdir)
    if state is not None:
        state.record(name, "done", time.monotonic() - t_start)
    drop_best_aside(fdir)
    return task, metrics


def read_finished_json(path: Path, what: str, numbers: tuple[str, ...] = ()) -> dict:
    """A JSON object that `fewshot run --resume` reuses as the run wrote it: one altered (nested 100,000 deep, or
    no JSON) ended in a RecursionError or JSONDecodeError, an internal error (exit 1). ``numbers``: its keys that
    are compared or printed as numbers (a stage's mean_acc1), each a number or null where present: `"x"` ended in
    a TypeError in the val guard."""
    try:
        data = loads_run_json(path.read_text(encoding="utf-8"))
    except OSError as exc:  # its text names the path, which the message names once
        why = printable(one_line(exc.strerror or str(exc)))[:200]
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        why = printable(one_line(str(exc)))[:200]
    else:
        wrong = next((k for k in numbers if isinstance(data, dict) and not _number_or_null(data.get(k))), None)
        if isinstance(data, dict) and wrong is None:
            return data
        why = (f"it holds a JSON {type(data).__name__}, not an object" if not isinstance(data, dict) else
               f"its {wrong} is {printable(one_line(json.dumps(data[wrong])))[:60]}, not a number or null")
    raise UserError(f"{path} ({what}) cannot be read: {why}. It was altered or cut short after the run wrote it: "
                    f"restore it, or start the run anew with another --out.")


def _number_or_null(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def reusable_stage(state, sdir: Path) -> bool:
    """Whether ``fewshot run --resume`` reuses stage ``sdir`` as it is (finetune_stage's test): it finished before
    the stop and its folder holds its config.yaml."""
    return state is not None and state.status(sdir.name) == "done" and (sdir / "config.yaml").is_file()


def recorded_pseudo_labels(record: Path) -> dict | None:
    """The pseudo-labels a finished round trained on, as its record (pseudo_labels_round<k>.json) holds them: a
    resumed run whose round was done labelled the whole pool again (and rewrote the record) only for the summary
    of it, inside the budget. The images stay on disk (``images``: the kept files' entries, not tensors; the
    round is reused, not trained). None when the record cannot be read: the pool is labelled again."""
    try:
        saved = loads_run_json(record.read_text())
        kept = list(saved["images"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(saved, dict):
        return None
    summary = {k: v for k, v in saved.items() if k not in ("pool_key", "images")}
    return {"images": kept, "summary": summary, "key": None, "recorded": True}


def pool_share_in_time(task, images: torch.Tensor, seconds: float, record: Path, seed: int,
                       pool_key: str | None = None) -> torch.Tensor | None:
    """Which pool images a round can afford to label: all of them (None), unless labelling them would take more
    than ``seconds`` (a 100k-image pool took 5 minutes of a 1-minute budget); then a seeded random share that
    fits. A resumed run takes the count its first session chose (the round's record), so that it labels the same
    images and the stopped round's checkpoint continues on the same training set; unless the pool changed since
    (its size or ``pool_key``, the fingerprint of its files): the saved count, applied to another pool, labelled
    8000 of 9000 images without a word, so the time decides again and the run says so."""
    n_pool = len(images)
    n = None
    if record.is_file():  # a record without the count: a version that labelled the whole pool wrote it (review)
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            saved = loads_run_json(record.read_text())
            then, key = saved.get("pool_size"), saved.get("pool_key")
            if then not in (None, n_pool) or (pool_key is not None and key not in (None, pool_key)):
                sizes = f"{int(then):,} images then, {n_pool:,} now" if then is not None else f"{n_pool:,} images now"
                print(f"[run] the unlabeled pool changed since the run started ({sizes}): this round labels what "
                      f"its time allows, not the stopped session's share", flush=True)
            else:
                n = int(saved.get("pool_labelled", n_pool))
    if n is None:
        if n_pool <= 256:  # one batch: not worth timing (nor cutting)
            return None
        per_image = measure_prediction_seconds(task, images)
        if per_image * n_pool <= seconds:
            return None
        per_image = measure_prediction_seconds(task, images)  # the first batch paid the warm-up (review)
        if per_image * n_pool <= seconds:
            return None
        n = max(256, int(seconds / per_image))  # one batch at least: the time measuring it took
        print(f"[run] labelling {n:,} of the {n_pool:,} pool images, a random share: the whole pool would take "
              f"about {per_image * n_pool:.0f} s, more than a quarter of the time left ({seconds:.0f} s)", flush=True)
    if n >= n_pool:
        return None
    order = torch.randperm(n_pool, generator=torch.Generator().manual_seed(seed))
    return order[:n].sort().values


def pool_decode_limit(cfg: dict, paths: list, seconds: float, n: int = 256) -> int | None:
    """How many pool files self-training decodes: all (None) when the decode cache holds them or decoding them
    takes at most ``seconds`` at the rate timed on a seeded ``n`` of them; else a seeded random share that fits (``n`` at
    least; semi.pool_subset). A cold 100k-file pool was decoded whole before the stages were planned, inside the
    budget, though the rounds label only the share their time allows (pool_share_in_time). A share an earlier run
    decoded (cache.subsets_record) is reused when at least half as large: the timing varies from run to run (564 to
    972 files for the same time), and each new count decoded another share into a cache entry of its own."""
    from fewshot.data.cache import add_to_subsets_record, decode_seconds_per_image, is_cached, subsets_record
    from fewshot.train.semi import pool_subset

    d, size, seed = cfg["data"], cfg["model"]["img_size"], int(cfg["train"]["seed"])
    cache_dir, bits = default_cache_dir(d["root"], d["cache_dir"]), d.get("bit_depth", "auto")
    if len(paths) <= 2 * n or is_cached(paths, size, cache_dir, d["crop_pct"], bits):
        return None
    # timed on files from every dataset of the pool (its first n are one dataset's: other sizes, other formats)
    sample = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:n]
    per_file = decode_seconds_per_image([paths[i] for i in sample.tolist()], size, d["crop_pct"], bit_depth=bits)
    if per_file * len(paths) <= seconds:
        return None
    limit = max(n, int(seconds / max(per_file, 1e-9)))
    record, decoded = subsets_record(paths, size, cache_dir, d["crop_pct"], seed, bits), []
    if record is not None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            decoded = sorted({int(m) for m in loads_run_json(record.read_text())}, reverse=True)  # no record: none
    for m in (m for m in decoded if limit / 2 <= m < len(paths)):
        if is_cached([paths[i] for i in pool_subset(len(paths), m, seed).tolist()], size, cache_dir, d["crop_pct"],
                     bits):
            print(f"[run] the {len(paths):,} pool images are not in the decode cache, but a seeded random {m:,} of "
                  f"them are (an earlier run's): the pool the rounds label (decoding all would take about "
                  f"{per_file * len(paths):.0f} s, more than the {seconds:.0f} s that decoding may take)", flush=True)
            return m
    if record is not None:
        with contextlib.suppress(OSError):
            add_to_subsets_record(record, limit)
    print(f"[run] the {len(paths):,} pool images are not in the decode cache: decoding them all would take about "
          f"{per_file * len(paths):.0f} s ({per_file * 1000:.1f} ms each, timed on {n}), more than the {seconds:.0f} s "
          f"that decoding may take (a quarter of the time after round 1); decoding a seeded random {limit:,} of them, "
          f"the pool the rounds label", flush=True)
    return limit


def pseudo_label_pool(task, cfg: dict, infos, r: dict, record: Path, seconds: float = math.inf,
                      seed: int = 0, pool_limit: int | None = None) -> dict:
    """Label the pool with the round-1 model (best val checkpoint, EMA weights): the most confident
    images of every class, class-balanced, become training images of round 2. ``seconds``: the time the
    labelling may take (a larger pool is labelled in a random share: pool_share_in_time); ``pool_limit``: the
    files decoded at start-up (pool_decode_limit). The pool stays in its cache file: only the share is read (in
    batches), and the returned images are the kept ones' rows, read once by the next round."""
    from fewshot.eval.evaluate import compute_logits
    from fewshot.train.semi import (calibrated_thresholds, class_quota, labelled_counts, load_pool, root_relative,
                                    select_pseudo_labels, teacher_probabilities)

    images, dataset_ids, paths, source, _ = load_pool(cfg, infos, task.size, exclude_train=True, limit=pool_limit)
    n_pool, pool_ids = len(images), dataset_ids
    # which files the pool holds: a resumed round labels the stopped session's share only of the same pool (named
    # relative to the data root: a resume from a moved root relabelled and retrained a stopped round)
    root = cfg["data"]["root"]
    pool_key = hashlib.sha1(json.dumps(root_relative(paths, root)).encode()).hexdigest()
    share = pool_share_in_time(task, images, seconds, record, seed, pool_key) if n_pool else None
    if share is not None:
        images, dataset_ids, paths = images.select(share), dataset_ids[share], [paths[i] for i in share.tolist()]
    if len(images) == 0:
        print("[run] no unlabeled pool (ROOT/unlabeled/ or --unlabeled DIR): the next round trains on "
              "the labelled images only")
    logits = compute_logits(task.model, images, task.normalize, task.device, channels_last=task.channels_last,
                            desc="pseudo-labelling the pool") if len(images) else torch.zeros(0, task.space.num_classes)
    quota = class_quota(dataset_ids, task.space, r["pseudo_keep"], labelled_counts(infos, task.space),
                        r["pseudo_max_per_shot"])
    threshold = torch.tensor(float(r["pseudo_threshold"]))
    if float(r["pseudo_precision"]) > 0:
        val = task.val_set
        val_probs = teacher_probabilities(task.val_logits(task.model), val.dataset_ids, task.space)
        threshold = calibrated_thresholds(val_probs, val.targets, float(r["pseudo_precision"]),
                                          unmeasured=float(threshold)).clamp(min=threshold)
    idx, labels, conf = select_pseudo_labels(logits, dataset_ids, task.space, quota.per_class, threshold,
                                             quota.per_dataset)
    owner = task.space.owner()[labels]
    from_unknown = dataset_ids[idx] < 0
    per_dataset = {name: {"kept": int((owner == d).sum()),
                          "kept_from_unknown_source": int(((owner == d) & from_unknown).sum()),
                          "pool": int((pool_ids == d).sum()), "labelled": int((dataset_ids == d).sum()),
                          "mean_confidence": round(float(conf[owner == d].mean()), 4) if bool((owner == d).any()) else None}
                   for d, name in enumerate(task.space.names)}
    summary = {"source": source, "pool_size": n_pool, "pool_labelled": len(images),
               "keep_frac": r["pseudo_keep"], "max_per_shot": r["pseudo_max_per_shot"],
               "threshold": r["pseudo_threshold"],
               "precision": r["pseudo_precision"], "targets": r["pseudo_targets"],
               "unknown_source_pool": int((dataset_ids < 0).sum()),
               "datasets": per_dataset}
    if float(r["pseudo_precision"]) > 0:  # per class: the confidence needed (null: the class keeps nothing)
        for d, name in enumerate(task.space.names):
            per_dataset[name]["class_thresholds"] = {
                cls: (round(float(t), 4) if torch.isfinite(t) else None)
                for cls, t in zip(task.space.classes[d], threshold[task.space.offsets[d]:][:task.space.sizes[d]])}
    local = task.space.to_local(labels)[1]
    # dataset: the image's own, or for an unknown-source image (source_known false) the predicted one
    kept = [{"path": paths[i], "dataset": task.space.names[d], "class": task.space.classes[d][c],
             "confidence": round(float(p), 4), "source_known": bool(dataset_ids[i] >= 0)}
            for i, d, c, p in zip(idx.tolist(), owner.tolist(), local.tolist(), conf.tolist())]
    # per image: which file became which class, how sure; the pool's fingerprint for a resumed round
    write_json(record, {**summary, "pool_key": pool_key, "images": kept})
    print(pseudo_label_line(per_dataset, summary["unknown_source_pool"]))
    soft = teacher_probabilities(logits[idx], dataset_ids[idx], task.space) if r["pseudo_targets"] == "soft" else None
    # which file became which class: a resumed run continues a stopped stage only on the same labels
    names = root_relative([k["path"] for k in kept], root)
    key = hashlib.sha1(json.dumps([(n, k["dataset"], k["class"]) for n, k in zip(names, kept)]).encode()).hexdigest()
    return {"images": images.select(idx), "targets": labels, "soft": soft, "dataset_ids": owner, "summary": summary,
            "state": copy.deepcopy(task.model.state_dict()), "key": key}


def precision_cap(infos, precision: float) -> tuple[str | None, str | None]:
    """run.pseudo_precision against what the val split can certify (certifiable_precision: (n + 1) / (n + 2) for a
    class with n val images): (refusal, warning). Asked above it for every class, every threshold was inf and
    every later round trained on the labelled images again ("kept 0/N"), silently. A class without val images
    is not closed (it takes run.pseudo_threshold). Counts from the scan: skipped bad files only lower them."""
    from fewshot.train.semi import certifiable_precision, val_images_needed

    best, closed, sizes, caps = {}, {}, {}, []
    for info in infos:
        counts = torch.bincount(torch.tensor([label for _, label in info.val], dtype=torch.long),
                                minlength=len(info.classes))
        full = certifiable_precision(counts)
        cap = full[counts > 0]  # compared as tensors, as calibrated_thresholds compares (float32)
        closed[info.name] = [c for c, shut in zip(info.classes, ((counts > 0) & (full < precision)).tolist()) if shut]
        sizes[info.name], caps = len(info.classes), caps + cap.tolist()
        if len(cap):
            best[info.name] = (float(cap.max()), int(counts.max()))
    if not any(closed.values()):
        return None, None
    rule = (f"run.pseudo_precision={precision:g} is more than this val split can certify for {{}}: a class with n "
            f"val images certifies at most (n + 1) / (n + 2) (the estimate of the thresholds), so {precision:g} needs "
            f"{val_images_needed(precision)} val images of a class")
    if all(len(closed[name]) == sizes[name] for name in closed):  # every class has val images and is closed
        per = "; ".join(f"{name}: at most {cap:.3f}, {n} val images in its largest class"
                        for name, (cap, n) in best.items())
        return (f"{rule.format('any class')} ({per}). Every round after the first would keep no pool image and "
                f"train on the labelled images again. Give run.pseudo_precision={math.floor(max(caps) * 1000) / 1000:g}"
                f" or lower (0: no per-class thresholds, the shared rank only), or add val images."), None
    shut = "; ".join(f"{name}: {len(c)} of {sizes[name]} classes"
                     + (f" ({', '.join(c[:3])}{', ...' if len(c) > 3 else ''})" if len(c) < sizes[name] else "")
                     for name, c in closed.items() if c)
    # floored to 3 digits: never above the cap, so the value suggested opens them
    return None, (f"[run] warning: {rule.format('some classes')}. These keep no pool image in the later rounds "
                  f"({shut}); run.pseudo_precision={math.floor(min(caps) * 1000) / 1000:g} or lower keeps every class "
                  f"with val images open, or add val images.")


def labelled_only_round(task) -> dict:
    """The last self-training round when the time left holds a round's floor but not the pool's labelling: no
    pseudo-labels, the labelled images only, from ``task``'s weights (the round before). Skipped instead, round 2
    left a fifth of a 1-minute budget unused, with round 1 at 4.5 epochs and val at chance."""
    return {"images": [], "targets": [], "summary": None, "key": None, "labelled_only": True,
            "state": copy.deepcopy(task.model.state_dict())}


def round_speeds(task, k: int) -> tuple[float, float, str]:
    """Round ``k``'s seconds per step and per evaluation for the check of the rounds after it, and their words:
    the slower of its calibration at its planning and what its training took (trained_speeds). Judged at the
    calibration only, a loaded machine's round 1 (1.6 s a step timed, 7.4 s trained) passed the check, and round
    2 labelled the pool and timed its steps for 36 s before its own planning skipped it. The slower, not the
    training's alone: the later round's own check times it as round 1's planning did, after the labelling."""
    # a round reused in this session was not timed here (a resumed one was, at its planning: round1_closing): its log
    # may come from another machine or load, so it is timed now as well
    timed = [getattr(task, "step_s", None) or measure_step_seconds(task), getattr(task, "trained_step_s", None)]
    step_s = max(x for x in timed if x)
    evals = [getattr(task, "eval_s", None) or measure_eval_seconds(task), getattr(task, "trained_eval_s", None)]
    eval_s = max(x for x in evals if x)
    speed = (f"round {k}'s speed ({step_s * 1000:.0f} ms a step, {eval_s:.1f} s an evaluation: the slower of its "
             f"timing and its training)" if getattr(task, "trained_step_s", None) else "the measured speed")
    return step_s, eval_s, speed


class LaterRoundSkipped(Exception):
    """Raised by plan_stage's hook of an optional later round (PipelineRun.later_round_closing) whose least run does
    not fit the time left: the round loop leaves it untrained and the round before it predicts."""


def labelled_only_why(k: int, left: float, need: float, planned: int) -> str:
    """Why round ``k`` trains on the labelled images only (summary.json and the run's line)."""
    dropped = "" if k >= planned else f" (round {planned} dropped)" if k + 1 == planned else \
        f" (rounds {k + 1}-{planned} dropped)"
    left_s, need_s = seconds_apart(left, need)
    return (f"{left_s} were left of the budget after round {k - 1}: too little for labelling the pool "
            f"and a round (about {need_s} at the measured speed), enough for a short round. Round {k} "
            f"goes on training round {k - 1}'s model on the labelled images until the closing work{dropped}; the "
            f"round that scores highest on val predicts")


def moco_queue_size(r: dict, pool_size: int | None) -> int:
    """The MoCo stage's queue: run.queue_size, else half the pool (``pool_size`` images; None: not counted yet)
    between two batches and 4096."""
    if r["queue_size"] is not None:
        return r["queue_size"]
    if pool_size is None:
        return 4096
    return int(min(4096, max(2 * r["pretrain_batch_size"], pool_size // 2)))


def pretrain_stage(cfg: dict, infos, device, ctx, out: Path, end_time: float, state, t_start: float, check=None,
                   pool_size: int | None = None):
    """MoCo on the pool until ``end_time``, then its backbone exported to OUT/backbone.safetensors. ``check(task,
    eval_s, step_s)``: called with MoCo's measured speeds before it trains (the run's least-run refusal).
    ``pool_size``: the decodable pool images start-up counted (check_pool_images), which size the queue.
    Returns (weights path, the stage's summary, seconds in its training loop). With a RunState that knows
    the stage, a finished one is reused and a stopped one continues from its last.pt."""
    from fewshot.report.plots import plot_pretrain_curves
    from fewshot.ssl.export import export_backbone
    from fewshot.ssl.pretrain import MoCoTask, resolve_pretrain_defaults, write_knn_metrics
    from fewshot.train.engine import Engine

    r = cfg["run"]
    pdir = out / "pretrain"
    weights = out / "backbone.safetensors"
    status = state.status("pretrain")
    if status == "done" and weights.is_file():
        print("[run] pretrain: finished before the stop; its exported backbone is reused")
        entry = ((state.data["summary"] or {}).get("stages") or {}).get("pretrain") or {"epochs": state.stage(
            "pretrain").get("epochs")}
        return weights, entry, 0.0
    last = pdir / "checkpoints" / "last.pt"
    # without a last.pt (killed in its first steps) the stage starts over, planned anew; one without its config.yaml
    # is refused as lost settings (stage_config), not started over from random init over its last.pt
    resuming = status is not None and last.is_file()
    ensure_writable_dir(pdir, "pretrain run")
    if resuming:
        pcfg = stage_config(pdir, cfg)
        # what its plan kept back for its closing work and the fine-tuning's least run is kept back again. A run
        # planned before pretrain/metrics.json was written kept back the same closing work (metrics.json reuses the
        # stop's evaluation); one planned while it was a second evaluation and a checkpoint read keeps back more,
        # which the fine-tuning gets. Resumed with the stop evaluated before the kill, metrics.json's evaluation
        # takes the stop's place in this session's closing time
        trained_before = cap_resumed_budget(pcfg, last, end_time - float(state.stage("pretrain").get("kept_s", 0.0)))
        now = time.monotonic() - t_start  # this session's start-up counts: a second stop must not lose it
        state.record("pretrain", "began", now, fit_at=now - trained_before)
        seed_everything(pcfg["train"]["seed"])
        task = MoCoTask(pcfg, infos, device, ctx, resuming=True)  # last.pt replaces model.weights
        print(f"[run] pretrain: continuing from {pdir / 'checkpoints' / 'last.pt'} on its planned schedule")
    else:
        pcfg = copy.deepcopy(cfg)
        pcfg["_task"] = "moco"
        pcfg["model"]["drop_path"] = 0.0
        pcfg["train"]["batch_size"] = r["pretrain_batch_size"]
        pcfg["train"]["ema"] = False
        lr = 0.06 * r["pretrain_batch_size"] / 256 if r["pretrain_lr"] is None else r["pretrain_lr"]
        pcfg["optim"].update({"name": "sgd", "lr": lr,
                              "weight_decay": 5e-4, "momentum": 0.9, "grad_clip": 0.0, "label_smoothing": 0.0})
        if r["pretrain_lr"] is None:  # the run's choice: `pretrain --config` given this stage's file chooses it again
            note_chosen(pcfg, "optim.lr")
        pcfg["sched"].update({"warmup_epochs": 0.0, "min_lr": 0.0})
        pcfg["moco"]["momentum"] = r["moco_momentum"]
        seed_everything(pcfg["train"]["seed"])
        # the queue sized from the pool that start-up counted (pool_size): the task, its model and its pool were
        # built twice, once to count the pool; a pool that changed since is counted by the task and built again
        pcfg["moco"]["queue_size"] = moco_queue_size(r, pool_size)
        task = MoCoTask(pcfg, infos, device, ctx, quiet_weights=True)  # check_model warned
        k = moco_queue_size(r, len(task.pool))
        if k != task.model.K:
            pcfg["moco"]["queue_size"] = k
            seed_everything(pcfg["train"]["seed"])
            task = MoCoTask(pcfg, infos, device, ctx, quiet_weights=True)
        resolve_pretrain_defaults(pcfg, 1)
        kept = {"s": 0.0}

        def keep_back(*speeds) -> float:  # the check's keep-back, recorded for a resumed session's cap
            kept["s"] = check(*speeds) if check is not None else 0.0
            return kept["s"]

        step_s, epochs, pre_budget = plan_stage(task, pcfg, end_time, r["min_epochs"], ("moco", "knn_every"),
                                                keep_back)
        save_yaml(pcfg, pdir / "config.yaml")
        # a dataset without a pool lends its train images (labels unused): "85 unlabeled images" counted them too
        images = f"{len(task.pool)} unlabeled images" if ": train images" not in task.pool_source else \
            f"{len(task.pool)} images ({task.pool_source}, their labels unused)"
        print(f"[run] MoCo pretraining: {images} at {task.size}px, K={task.model.K}, "
              f"{step_s * 1000:.0f} ms/step x {len(task.plan_epoch(0))} steps/epoch, "
              f"{stage_plan_words(step_s, pre_budget, epochs)}")
        state.record("pretrain", "began", time.monotonic() - t_start, fit_at=time.monotonic() - t_start,
                     kept_s=kept["s"])
    seed_everything(pcfg["train"]["seed"])
    engine = Engine(task, pcfg, pdir, device, ctx)
    fit_start = time.monotonic()
    result = engine.fit(resume=resuming)
    fit_s = time.monotonic() - fit_start + (trained_before if resuming else 0.0)
    plot_pretrain_curves(pdir)
    # pretrain/metrics.json (a run directory holds its metrics) of the weights exported: last.pt's, which the
    # engine ends with and evaluated at its stop (it had scored best.pt next to an export of last.pt). That evaluation
    # is reused: no second one, and no checkpoint read, in the stage's closing time (pretrain_closing_seconds)
    write_knn_metrics(engine, task, pdir, which="last")
    export_backbone(pdir, weights)
    stage = {"epochs": engine.epochs_trained(), "knn_acc1": (result or {}).get("knn_acc1")}
    state.record("pretrain", "done", time.monotonic() - t_start, epochs=engine.epochs_trained())
    drop_best_aside(pdir)
    return weights, stage, fit_s


def finetune_config(cfg: dict, weights, semi: str, read_weights: bool = True) -> dict:
    """The fine-tuning stages' config: from ``weights`` (the MoCo stage's export, the user's file or None), and
    after our own short MoCo run.finetune_lr / run.finetune_backbone_mult where the user set no optim.lr /
    optim.backbone_lr_mult. Unset is None, not any false value: optim.backbone_lr_mult=0 (a frozen backbone, as
    `fewshot train` keeps it) used to be replaced by 1.0. Recorded as chosen only at the run.* default, so a
    user's run.finetune_lr stays theirs unless it equals the default (5e-4 was recorded, and `train --config` given
    the stage's file dropped it). ``read_weights=False``: the network as ``cfg`` builds it, without the width and
    stem the weights file records."""
    from fewshot.config import DEFAULTS, same_value
    from fewshot.train.supervised import resolve_finetune_defaults

    r, fcfg = cfg["run"], copy.deepcopy(cfg)
    fcfg["model"]["weights"] = str(weights) if weights else None
    fcfg["semi"]["method"] = "fixmatch" if semi == "fixmatch" else "off"
    if r["pretrain"]:
        o = fcfg["optim"]
        for field, rule in (("lr", "finetune_lr"), ("backbone_lr_mult", "finetune_backbone_mult")):
            if o[field] is None:
                o[field] = r[rule]
                if same_value(r[rule], DEFAULTS["run"][rule]):  # the run's choice: `train --config` chooses it again
                    note_chosen(fcfg, f"optim.{field}")
    return resolve_finetune_defaults(fcfg, resuming=not read_weights)  # resuming: the network is not adopted


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

    def note_stop(self) -> None:
        """A stop (a signal, Ctrl-C, an error) counts this session's time in the run's state, once the run has one
        and while it is there (a refused start has undone its own: writing it again would leave a run behind). A
        failure to write it leaves the stop's own exception to be reported."""
        from fewshot.run_state import STATE_FILE

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
        from fewshot.run_state import STATE_FILE, RunState

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
        from fewshot.data.layout import datasets_option
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
        from fewshot.eval.predict import load_answer_key

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

            paths, _, source = pool_with_sources(cfg, self.infos)
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
        from fewshot.run_state import RunState

        if self.state is None:  # written once the inputs have passed their checks: a failed start leaves no run behind
            self.state = RunState.start(self.out, self.requested, self.budget_minutes, self.cfg["model"]["img_size"],
                                        time.monotonic() - self.t_start, self.class_names)
        else:
            self.t_start -= self.used  # the budget counts every session's time, this one's start-up included
            done = [n for n, st in self.state.data["stages"].items() if st.get("status") == "done"]
            print(f"[run] resuming {self.out}: {self.used / 60:.1f} of {self.budget_minutes:g} minutes used before "
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
        # the report's image-based parts are left out at the end when they will not fit: beyond half the budget,
        # or where they would leave the last stage less than its floor of steps
        left = self.t_start + budget_s - time.monotonic()
        if need > 0.5 * budget_s or (step_s is not None and least_run_seconds(step_s, need) > left):
            need = report_plan["least"]
        if step_s is not None and self.semi != "pseudo":  # self-training's round 1: round1_closing checks it
            self.refuse_unless_least_run_fits(task, step_s)
        if step_s is not None:  # a stage planned now to train until the closing work (a later round may undo it)
            self.plan_closing(need)
        return need

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
        calibration = calibration_seconds(ft_step, ft_eval, per_image, len(self.test_set))
        # the words of what moco_s counts (pretrain_least_seconds): "5 steps ... and its kNN evaluation" said less
        first = (f"MoCo pretraining's {FLOOR_STEPS + 1} steps at {step_s * 1000:.0f} ms (its floor of {FLOOR_STEPS} "
                 f"and the one past its deadline), its kNN evaluation at the stop and its checkpoint writes and "
                 f"export, then the fine-tuning's timing and ")
        moco_s = pretrain_least_seconds(step_s, eval_s, n_params)
        self.refuse_unless_least_run_fits(probe, ft_step, moco_s + calibration, first)
        del probe  # its model sat on the device next to MoCo's for the whole stage
        free_device_memory(self.device)
        after_moco = self.t_start + self.budget_s - self.pre_end
        fine_tuning = calibration + least_run_seconds(ft_step, self.report_plan["least"])
        return max(0.0, pretrain_closing_seconds(eval_s, n_params) + fine_tuning - after_moco)

    def time_fine_tuning(self) -> tuple:
        """A fine-tuning task as the stage after MoCo builds it (its weights not read: the speed does not depend on
        them), with its step and per-test-image prediction seconds: (task, step_s, per_image). The caller frees
        the task (free_device_memory) once timed."""
        from fewshot.train.supervised import SupervisedTask

        fcfg = finetune_config(self.cfg, self.cfg["model"]["weights"], self.semi)
        probe = SupervisedTask(fcfg, self.infos, self.device, self.ctx, resuming=True, quiet_weights=True)
        return probe, measure_step_seconds(probe), measure_prediction_seconds(probe, self.test_set.images)

    def refuse_unless_least_run_fits(self, task, step_s: float, before_s: float = 0.0, first: str = "") -> None:
        """At the planning of the first stage this session trains (a fresh run): refuse, before any training,
        a budget that cannot hold even the least run (least_run_seconds), and remove what the run wrote.
        ``before_s``: the least time of the work before the last stage (MoCo's, from its planning), ``first`` its
        words for the error."""
        if self.resume or self.fit_seconds:  # a stage has trained (or a resumed run's time is spent): plan_stage warns
            return
        need = before_s + least_run_seconds(step_s, self.report_plan["least"])
        used = time.monotonic() - self.t_start
        if least_run_holds(need, self.budget_s - used):
            return
        cfg = self.cfg
        error = too_short_budget_error(self.budget_s, used, need, step_s,
                                       f"{cfg['model']['name']} at {cfg['model']['img_size']}px",
                                       self.least_run_hints(bool(before_s)), self.locked, first)
        self.undo_start()
        raise error

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

    def undo_start(self) -> None:
        """A fresh run's start that failed (a refused budget, an input found bad after the folder was claimed):
        what it wrote, its folder and the parents --out made go again; only with its lock, else another start may
        be writing there too and what appeared may be its."""
        if self.locked and not self.resume:  # a --resume's folder holds the run it continues
            undo_run_start(self.real_out, self.entries_before, self.out_existed, self.new_parents)
            self.stop_clock = None  # a stop's count would write the removed run's state again
        self.locked = False

    @contextlib.contextmanager
    def undone_if_start_fails(self):
        """The start's phases before its RunState: an error there (a bad input, a stop) undoes the start, so that
        the rerun is not refused as "not empty" nor sent to --resume (undo_start)."""
        try:
            yield
        except BaseException:
            self.undo_start()
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
                                                    self.state, self.t_start, self.refuse_unless_pretrain_run_fits,
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
        does not leave them that, they are skipped and round 1 trains until the closing work."""
        skip, rounds = self.skip, self.rounds
        step_s = measure_step_seconds(task) if step_s is None else step_s  # a resumed round 1: not measured
        # kept as plan_stage keeps its timings: the check before round 2 (round_speeds) timed a resumed round again
        task.step_s, task.eval_s = getattr(task, "step_s", None) or step_s, getattr(task, "eval_s", None) or eval_s
        per_image = measure_prediction_seconds(task, self.test_set.images)  # the pool is labelled at this speed
        closing_s = self.closing(task, eval_s, per_test_image=per_image)
        rest = after_round1_seconds(step_s, eval_s, per_image, self.n_unlabeled, rounds, closing_s,
                                    eval_passes(task) + 1)
        left = self.last_end - time.monotonic()
        own = 5 * step_s + eval_s  # round 1's own least run: what it trains before the later rounds' time
        if skip["skipped_from"] == 2 or (not time_holds(rest + own, left)
                                         and self.state.status("finetune") is None):
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
                self.refuse_unless_least_run_fits(task, step_s)
                print(f"[run] self-training's round{'s 2-' if planned > 2 else ' '}{planned} skipped (planned, not "
                      f"an error): {skip['why']}; round 1 trains until the closing work (about {closing_s:.0f} s) "
                      f"and predicts", flush=True)
            self.plan_closing(closing_s)
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
                                                seconds=0.25 * max(0.0, self.end_time - time.monotonic()),
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
            need = self.closing(task, eval_s, step_s, per_image)
            if step_s is None:  # a resumed round continues: it began before the stop
                return need if last else 0.0
            least, left = least_run_seconds(step_s, need), self.last_end - time.monotonic()
            if least_run_holds(least, left):
                return need if last else 0.0
            left_s, need_s = seconds_apart(left, least)
            later = " and later" if k < self.rounds else ""
            for key in ("labelled_only", "labelled_only_why"):  # a labelled-only round k is skipped too
                self.skip.pop(key, None)
            self.decide(k - 1, k, f"{left_s} were left of the budget when round {k} was planned, and its least "
                                  f"run needs {need_s} at the speed measured then ({FLOOR_STEPS} steps at "
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
                                               self.later_round_closing(self.rounds) if optional else self.closing)
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
        from fewshot.eval.predict import folder_keyed, predict_and_score, score_predictions

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

    def report_skips_images(self) -> str | None:
        """Why the report leaves out its image-based parts (the time left cannot hold them), or None."""
        out = self.out
        base_s, images_s = self.report_plan["seconds"]
        left = self.t_start + self.budget_s - time.monotonic()
        if not (self.r.get("report", True) and images_s and base_s + images_s > left):
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
        # in seconds: tenths of a minute rounded 93 s of a 90 s budget to "1.6 of 1.5 minutes", an overrun to read
        print(f"[run] done in {total_s:.0f} s of {budget_s:.0f} s ({self.budget_minutes:g} minutes): "
              f"{out}/pred_all.json, {out}/metrics.json"
              + (f" (not counted: what {lost} session{'s' if lost > 1 else ''} that ended "
                 f"without a word ran after {'their' if lost > 1 else 'its'} last record)" if lost else ""))
        if total_s > 1.05 * budget_s:
            print(overrun_note(total_s, budget_s, sum(self.fit_seconds)))


# a session that ended with no stop recorded (kill -9, a crash, the machine went down): its last minutes are lost
UNRECORDED = ("the session before ended without recording its time (killed, crashed, or the machine stopped): "
              "what it ran after its last record is not counted")


def overrun_note(total_s: float, budget_s: float, trained_s: float) -> str:
    """The note of a run that took more than 5 % over its budget: what the time went to, and a budget that leaves
    training a fair share, where a larger one would (a 1.5-minute run that overran by 5 s was told that "at least 1
    minute" would do: the work around the training had taken longer than measured at its start, a busy machine)."""
    around = total_s - trained_s
    least = max(1, math.ceil(2 * around / 60))
    words = (f"[run] note: the run took {total_s:.0f} s, longer than its budget of {budget_s:.0f} s: start-up, "
             f"step-time calibration, evaluation, prediction and the report took about {around:.0f} s of it on this "
             f"data and machine")
    if least > budget_s / 60:
        return f"{words}. A budget of at least {least} minute{'s' if least != 1 else ''} leaves training a fair share."
    return (f"{words}, and it ran {total_s - budget_s:.0f} s over although a budget of this size holds that work: "
            f"the speeds measured at its start may have been faster than the machine later was (other work on its "
            f"cores?). A rerun on a quieter machine, or with a little more budget, should end on time.")

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


def holds_finished_run(folder: Path, data: dict | None = None) -> bool:
    """Whether ``folder`` holds a `fewshot run` that finished (run_state.json says finished and summary.json is
    there): one test for a new run's refusal and --resume's "finished already" (PipelineRun.resume_state), which
    passes the ``data`` of the state it read. A state file that cannot be read counts as unfinished: --resume then
    says what is wrong with it."""
    from fewshot.run_state import STATE_FILE

    if data is None:
        try:
            data = loads_run_json((folder / STATE_FILE).read_text())
        except (OSError, ValueError):
            return False
    return isinstance(data, dict) and data.get("finished") is True and (folder / "summary.json").is_file()


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
    """A positive, finite number of minutes (inf and nan used to pass: nan planned nothing, inf crashed)."""
    if minutes is None or not math.isfinite(minutes) or minutes <= 0:
        raise UserError(f"--budget-minutes must be a positive number of minutes, not {minutes!r}.")
