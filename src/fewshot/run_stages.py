"""One stage of `fewshot run` at a time: its plan from the measured speeds (plan_stage), a finished round's speeds
that judge the rounds after it (round_speeds) and the labelled-only round that stands in for one whose pool
labelling does not fit (labelled_only_round), and running it: MoCo pretraining (pretrain_stage) or a fine-tuning
round (finetune_stage), each reused when finished or continued from its last.pt on --resume, on a budget capped to
the run's end (cap_resumed_budget). The start-up checks are in run_checks, what a resume reuses in run_reuse.
Tests fake a speed or the clock by patching measure_step_seconds, measure_eval_seconds or time on this module (and
plan_stage, plan_epochs, trained_speeds or cap_resumed_budget): the stages' calls look the names up here."""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from pathlib import Path

from fewshot.config import CHOSEN, note_chosen, save_yaml
from fewshot.data.cache_files import ensure_writable_dir
from fewshot.data.fit import restore_stage_record
from fewshot.run_budget import (FLOOR_STEPS, eval_passes, fitting_epochs, least_run_holds, least_run_seconds,
                                measure_eval_seconds, measure_step_seconds, plan_epochs, retimed_steps, trained_speeds)
from fewshot.run_reuse import (drop_best_aside, read_finished_json, read_last, reusable_stage, same_training_images,
                               stage_resumes, start_stage_afresh)
from fewshot.run_words import (carried_skip_words, made_of, min_epochs_warning, moco_share_words, overrun_warning,
                               resumed_no_time_words, resumed_short_words, seconds_text, stage_plan_words)
from fewshot.train.budget_reserve import WRITE_BYTES_PER_S
from fewshot.utils import seed_everything


def plan_stage(task, cfg: dict, end_time: float, min_epochs: int, every_field: tuple[str, str],
               closing=None, resumed: bool = False) -> tuple[float, int, float]:
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
    after = closing(task, eval_s, step_s) if closing is not None else 0.0
    # a timing that met a busy moment, timed again by the run's least-run check (PipelineRun.steps_that_fit): the
    # stage plans at the faster speed, its evaluation interval too
    step_s = getattr(task, "retimed_step_s", None) or step_s
    step_s = floor_retimed(task, step_s, end_time - after)
    every = max(1, int(round(10 * training_eval_s / max(step_s * steps, 1e-6))))
    section, key = every_field
    cfg[section][key] = task.eval_every = every
    # at least a few steps, even when the budget is already spent (the run then reports the overrun); the Engine
    # looks at its deadline after each step, so the last one ends up to a step after it: kept back here
    left = end_time - after - time.monotonic() - step_s
    floor = FLOOR_STEPS * step_s
    budget_s = max(floor, left)
    if floor > left:
        print(overrun_warning(floor - left, f"this stage's least time (about {seconds_text(floor)}, {FLOOR_STEPS} "
                              f"training steps at the measured speed) does not fit the "
                              f"{seconds_text(max(0.0, left))} left to it"
                              f"{' (the rest is kept for the work after it)' if after > 0 else ''}", resumed),
              flush=True)
    epochs = plan_epochs(budget_s, step_s, steps, training_eval_s, every, min_epochs)
    cfg["train"].update(epochs=epochs, budget_minutes=budget_s / 60)
    cfg["sched"]["time_based"] = True
    task.step_s, task.eval_s = step_s, eval_s  # for the run's check that a later round still fits
    # at the floor its steps at the measured speed are what the stage trains: the plan line says the warning's time
    # and those steps, not a time's epochs
    fits = FLOOR_STEPS / max(1, steps) if floor > left else fitting_epochs(budget_s, step_s, steps, training_eval_s,
                                                                          every)
    # at the default of 1, or at the floor, the floor's warning says what a short stage is (not twice, nor "about 0.0")
    if min_epochs > 1 and fits < min_epochs and floor <= left:
        print(min_epochs_warning(min_epochs, fits, budget_s, step_s, steps, resumed), flush=True)
    return step_s, fits, budget_s


def floor_retimed(task, step_s: float, ends: float) -> float:
    """The stage's step speed where its floor of steps and the step past its deadline do not fit before ``ends``
    (time.monotonic(): its end, the work after it kept back) at its timing: timed once more and the faster kept
    (retimed_steps; not a task timed twice already). At the floor the stage's time is its steps at the timed speed,
    and a timing that met a busy moment (20 s a step timed, 10 ms trained) gave a later stage 100 s of a 30 s run,
    which it trained to the end at the machine's own speed (review rev49)."""
    def need(steps: list[float]) -> float:
        return (FLOOR_STEPS + 1) * steps[0]

    def left() -> float:
        return ends - time.monotonic()

    return retimed_steps(measure_step_seconds, [(task, step_s)], need, left, lambda need_s, left_s: need_s <= left_s)[0]


# a labelled-only or short round's lr: a tenth of round 1's (gentle_lr, labelled_only_round), which continues the
# round before's model (continue_gently)
LABELLED_ONLY_LR_SCALE = 0.1


# a pseudo-labelled round planned under this many epochs continues the round before's model gently too. Paired from
# the same round-1 model, a fresh warm-up and peak lr cost round 2 15-46 val points at 0.3-1.2 epochs (one round 2 as
# a run planned it, three forced 4 s replays), where continuing gently moved val by at most 2.6; at 3.3-8.1 epochs
# the two tied within 1 point. No pair lies between 1.2 and 3.3 epochs, and a whole run's round 2 still lost 2.6 at
# 4.1: the threshold is a judgement (docs/recipes.md, "A short round 2"), measured only at the scratch recipe
SHORT_ROUND_EPOCHS = 4.0


# round 1's lr at or under which a short round keeps its full schedule (gentle_lr): over 6x below the lrs the rule
# was measured at or given (scratch 4e-3, small-data 2e-3), and the ImageNet recipe's 1e-4 lies under it
GENTLE_MIN_LR = 3e-4


def gentle_lr(cfg: dict) -> float | None:
    """A short round's lr (SHORT_ROUND_EPOCHS): a tenth of round 1's (``cfg``, round 1's config), which every later
    round carries forward undivided, so that a third round after a gentle second is divided once, not twice (review
    rev106 #2). None, the round's full schedule kept, where round 1's lr is gentle already: at most GENTLE_MIN_LR, or
    the backbone under 1x (the ImageNet recipe's lr 1e-4 at 0.1x, whoever chose it). The rule was measured at lr 4e-3
    with the backbone at 1x, and a tenth of such an lr leaves a short round nearly a no-op (review rev106 #6). Decided
    by size, not by the ImageNet recipe's exact values: `--lr 2e-4` at ImageNet weights got a tenth (review rev108
    #4)."""
    o = cfg["optim"]
    lr = float(o["lr"])
    if lr <= GENTLE_MIN_LR or float(o["backbone_lr_mult"]) < 1.0:
        return None
    return lr * LABELLED_ONLY_LR_SCALE


def labelled_only_round(task, k: int, lr: float) -> dict:
    """The last self-training round (``k``) when the time left holds a round's floor but not the pool's labelling:
    no pseudo-labels, the labelled images only, from ``task``'s weights (round ``k`` - 1), continued gently
    (continue_gently) at a tenth of ``lr``, round 1's (a round k - 1 that went gently had a tenth already: a
    hundredth, review rev106 #2). Skipped instead, round 2 left a fifth of a 1-minute budget unused, with round 1 at
    4.5 epochs and val at chance."""
    return {"images": [], "targets": [], "summary": None, "key": None, "labelled_only": True, "after": k - 1,
            "lr": float(lr) * LABELLED_ONLY_LR_SCALE, "state": copy.deepcopy(task.model.state_dict())}


def gently_entry(task) -> dict:
    """summary.json's record of a short round that continued gently (finetune_stage: its lr and planned epochs), for
    the round's entry in ``stages``; {} for any other round. Without it, only the plan line and config.yaml said why
    round 2's val barely moved (review rev106 #4)."""
    gently = getattr(task, "continued_gently", None)
    return {"continued_gently": gently} if isinstance(gently, dict) else {}


RECIPE_FIELDS = ("optim.lr", "optim.backbone_lr_mult")  # resolve_finetune_defaults' choices for --weights


def round_recipe(task) -> dict:
    """The lr fields round k - 1 chose by rule (resolve_finetune_defaults: the small-data recipe of fewshot's own
    --weights file, or the ImageNet one), for round k (take_round_recipe). Chosen again for a round a resumed
    session starts, they followed the --weights file as it was then: moved or deleted after the stop, a fewshot
    export was taken for other weights and round 2 trained at lr 1e-4, the backbone at 0.1x, where round 1 had
    trained at 2e-3 and 1x (hunt hBX #1). A field the user gave is the same in every round and is left out."""
    chosen = task.cfg.get(CHOSEN) or {}
    return {f: task.cfg["optim"][f.split(".")[1]] for f in RECIPE_FIELDS if f in chosen}


def take_round_recipe(fcfg: dict, recipe: dict) -> None:
    """Round k's lr fields as round k - 1 chose them (round_recipe), where round k chose them by rule too."""
    for dotted, value in recipe.items():
        if dotted in (fcfg.get(CHOSEN) or {}):
            fcfg["optim"][dotted.split(".")[1]] = value
            note_chosen(fcfg, dotted)


def continue_gently(fcfg: dict, lr: float) -> None:
    """A labelled-only or short round's schedule: round k - 1's model continued at a tenth of round 1's lr (``lr``,
    set by labelled_only_round or gentle_lr from round 1's config: a stage started over at --resume from its stopped
    config divided it twice, review rev99 #1, and a round after a gentle one too, rev106 #2), without a warm-up. The
    full schedule again (a fresh warm-up, then lr 0.004) on the same 10-shot images for a few seconds took val from
    76.8 to 25.8 (hunt hBW #3); measured on val in
    docs/recipes.md (the labelled-only round), where skipping the round (the rest of the budget unused) tied it."""
    fcfg["optim"]["lr"] = lr
    fcfg["sched"]["warmup_epochs"] = 0.0


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


def stage_config(sdir: Path, cfg: dict) -> dict:
    """A stopped stage's own config.yaml (its planned epochs, budget and evaluation interval), with this
    session's device, data location and output settings (what a resumed run may change). The device's record
    follows this session's: a stage begun with auto on a GPU and resumed with auto on a CPU kept `cuda` as chosen
    beside `device: cpu`, and the cpu was then taken for the user's (and the reverse for --device cpu). An emptied
    (or `false`) stage config.yaml is refused as lost settings: merged into the defaults, the engine refused it as
    "changing" model.name."""
    from fewshot.config import get_dotted, set_dotted, with_defaults
    from fewshot.run_state import RUN_RESUME_MAY_CHANGE
    from fewshot.train.resume_config import ABSENT_MEANS, resumed_settings

    scfg = with_defaults(resumed_settings(sdir, cfg, stage=True), ABSENT_MEANS)  # a stage written by an older fewshot
    # and the backbone file's current path (the run folder may have moved; last.pt's weights replace it anyway),
    # and the pool as given now (an older stage recorded a relative --unlabeled; RunState.resume compared them)
    for dotted in (*RUN_RESUME_MAY_CHANGE, "model.weights", "data.unlabeled"):
        keys = dotted.split(".")
        set_dotted(scfg, keys, get_dotted(cfg, keys))
    chosen = scfg.get(CHOSEN)
    if isinstance(chosen, dict):  # an older stage's without a record is judged by the rules (chosen_by_rule)
        # model.weights too: a moved run's stage kept the old export's path as chosen beside the new one, and `run
        # --config` of its file then took the new export for the user's and fine-tuned from it (review rev64)
        for dotted in ("train.device", "model.weights"):
            chosen.pop(dotted, None)
            if dotted in (cfg.get(CHOSEN) or {}):
                chosen[dotted] = cfg[CHOSEN][dotted]
    restore_stage_record(scfg, cfg, sdir, read_last)  # data.resize=auto's entries deleted from its config.yaml
    return scfg


def cap_resumed_budget(cfg: dict, last: Path | dict, end_time: float,
                       step_s: float | None = None) -> tuple[float, int]:
    """A stopped stage continues on its own plan, but ends no later than ``end_time`` on the run's clock: the
    new session's start-up and the work redone before the stage come out of its time, not on top of the
    budget (its time-based schedule then moves on faster). Like plan_stage it keeps back one step: the Engine
    looks at its deadline after each step (a resumed 2-minute run ended 9 s late). The step is ``step_s``, the
    stage's logged speed (trained_speeds), else the mean of its steps so far, which counts its evaluations and
    warm-up too. Returns the stage's training seconds and global step so far (its last.pt is read once; ``last``
    may be the checkpoint the caller read already)."""
    ck = read_last(last)
    trained = float(ck.get("train_seconds", 0.0))
    steps = int(ck.get("global_step", 0) or 0)
    if step_s is None:
        step_s = trained / steps if steps > 0 else 0.0
    planned = float(cfg["train"]["budget_minutes"] or 0.0) * 60
    allowed = trained + max(0.0, end_time - time.monotonic() - step_s)
    cfg["train"]["budget_minutes"] = max(1e-3, min(planned, allowed)) / 60
    return trained, steps


def resumed_keep_back(entry: dict, end_time: float, run_end: float | None) -> float:
    """What a resumed MoCo stage keeps back from its share (ending at ``end_time``), counted as its plan counted it
    (refuse_unless_pretrain_run_fits): the seconds its plan needed after MoCo's deadline (``after_s``: its closing
    work, the fine-tuning's timing and least run) less those this session leaves after ``end_time``. The recorded
    kept_s was the first session's, against half of its whole budget: 0 s, and a resume left the fine-tuning 0 s.
    A stage recorded without after_s (an older run) keeps its kept_s."""
    after = entry.get("after_s")
    if after is None or run_end is None:  # check_state_fields found any after_s a number of seconds
        return float(entry.get("kept_s", 0.0))
    return max(0.0, float(after) - (run_end - end_time))


def trains_no_further(cfg: dict, trained: float) -> bool:
    """Whether a resumed stage's budget, as cap_resumed_budget set it, holds no more than the ``trained`` seconds it
    had (its deadline passed, or closer than the step kept back): it goes straight to its closing work."""
    return float(cfg["train"]["budget_minutes"]) * 60 <= max(trained, 1e-3) + 1e-6


def skip_short_resumed_training(cfg: dict, planned_s: float, trained: float, left: float, step_s: float | None,
                                logged: bool = True, startup: float | None = None,
                                ends: str | None = None, stop_left: float | None = None) -> dict | None:
    """A resumed stage (its budget capped by cap_resumed_budget, ``planned_s`` before it) whose ``left`` seconds
    before its end (``ends``: round 1's share; None: its closing work) hold neither a fresh stage's least run
    (plan_stage's FLOOR_STEPS and the step past the deadline, least_run_seconds) nor, where that is shorter, the rest
    of its own plan and the step past it: it trains no further and goes straight to its closing work. Those few
    steps came at the end of its schedule, and the loader's start and the first step's warm-up came on top of them,
    outside the estimate (hunt hBX #2). One measure for both ends: a plan with fewer steps left than the least run
    trains them where they fit, whichever sets the cap (review rev112 #3). ``step_s``: its steady step, log.jsonl's
    (``logged``) or its planning's timing; None: no skip, since the mean of its steps so far counts the first step's
    warm-up and its evaluations (1.2 s a step where 0.35 s steps ran, review rev112 #2). It is the earlier session's
    speed: a faster machine now would have held up to FLOOR_STEPS more steps, a bounded loss (rev112 #6).
    ``stop_left``: what the stop left a stage whose end was set after the start-up (resumed_short_words). Returns the
    record for summary.json (``resumed_training_skipped``), else None."""
    if not step_s or trains_no_further(cfg, trained):
        return None  # no steady speed known, or no time given (the resumed-late warning said so)
    least, rest = least_run_seconds(step_s, 0.0), max(0.0, planned_s - trained)
    need = min(least, rest + step_s)
    if least_run_holds(need, left):
        return None
    cfg["train"]["budget_minutes"] = max(trained, 1e-3) / 60
    plan_steps = None if need >= least else max(1, math.ceil(rest / step_s - 1e-6))
    return {"left_s": round(left, 2), "least_s": round(need, 2), "step_s": round(step_s, 4),
            "why": resumed_short_words(left, need, step_s, logged, startup, ends, plan_steps, stop_left)}


def go_on_resumed(task, fcfg: dict, state, name: str, last: Path, planned_s: float, trained_before: float,
                  end_s: float, step_logged: float | None, run, t_start: float, share: str | None = None,
                  stop_left: float | None = None) -> None:
    """How a stopped stage (fine-tuning or MoCo) goes on at --resume, its budget capped already (cap_resumed_budget):
    trains on, trains no further for want of time (skip_short_resumed_training, or a cap that left nothing), or keeps
    the record of an earlier session's skip; records it in run_state.json and says it in one [run] line. ``end_s``:
    the monotonic time its closing work must start by; ``planned_s``: its budget before the cap; ``share``: the
    stage's share of the run's budget where that, not the run's, ends it (resumed_no_time_words); ``stop_left``: what
    the stop left such a stage, its end set after the start-up (moco_stop_left)."""
    from fewshot.run_closing import session_seconds  # run_closing imports this module
    no_time = trains_no_further(fcfg, trained_before)  # the cap left it nothing: no skip to judge
    # its steady step: the mean of its steps so far (cap_resumed_budget's fallback) counts the warm-up
    steady, now = step_logged or state.stage(name).get("planned_step_s"), time.monotonic()
    startup = session_seconds(run, now) if run is not None else None
    ends = getattr(task, "resumed_end_words", None)
    skipped = skip_short_resumed_training(fcfg, planned_s, trained_before, end_s - now, steady,
                                          logged=step_logged is not None, startup=startup, ends=ends,
                                          stop_left=stop_left)
    # kept in run_state.json: a second stop before the stage's summary entry lost it (review rev112 #1). The
    # session before's is kept only where this one trains no further too: a stop between its record and
    # Engine.fit's save of the capped config.yaml left a stage that trains now after all (review rev114 #1)
    carried = task.resumed_training_skipped if no_time and skipped is None else None
    task.resumed_training_skipped = skipped or carried
    if task.resumed_training_skipped is None:
        state.stage(name).pop("resumed_training_skipped", None)
    # its [run] line says it trains no further: no "resuming from ...: epoch 1, step 2 of 5" after it (rev115 #2)
    task.no_training_said = skipped is not None or no_time
    # a skip's line says why, with time left: the Engine's "no time is left of the run's budget" would contradict it
    task.no_time_said = skipped is not None or carried is not None
    now = time.monotonic() - t_start  # this session's start-up counts: a second stop must not lose it
    state.record(name, "began", now, fit_at=now - trained_before,
                 **({"resumed_training_skipped": task.resumed_training_skipped}
                    if task.resumed_training_skipped is not None else {}))
    if skipped is not None:  # said instead of "continuing ... on its planned schedule"
        print(f"[run] {name}: {skipped['why']}", flush=True)
    elif no_time:  # "continuing ... on its planned schedule" before the Engine's "no time is left" (rev114 #4)
        # the capped config.yaml cannot tell a skip's cap from a plain no-time session's: the carried record can
        left = end_s - time.monotonic()
        words = (carried_skip_words(carried, ends) if carried is not None
                 else resumed_no_time_words(left, getattr(run, "budget_minutes", None), ends, share))
        print(f"[run] {name}: resumed from {last}: {words}", flush=True)
    else:
        print(f"[run] {name}: continuing from {last} on its planned schedule")


def moco_stop_left(run, entry: dict, run_end: float | None, read_s: float) -> float | None:
    """The seconds the stop left a resumed MoCo stage before its closing work: its end taken at this session's start
    (PipelineRun.moco_end) less its keep-back (resumed_keep_back) and last.pt's read. Its end is re-split from what
    the run's budget has left once the start-up is done, so the start-up takes only MoCo's share of its seconds from
    it: the time left plus the start-up named 17 s where the stop had left MoCo 12 s (review rev117 #1). It counts
    this session's re-estimate of the stages' time (``stage_s``, its closing reserve re-timed), not the stopped
    session's own figure, which the run does not keep (review rev119 #4). None for a fresh run or a stand-in without
    the run's clock."""
    from fewshot.run_closing import session_seconds  # run_closing imports this module
    now = time.monotonic()
    startup, moco_end = session_seconds(run, now), getattr(run, "moco_end", None)
    if startup is None or moco_end is None:
        return None
    start = now - startup
    end = moco_end(start)
    return end - resumed_keep_back(entry, end, run_end) - read_s - start


def finetune_stage(fcfg: dict, infos, device, ctx, fdir: Path, end_time: float, what: str, pseudo: dict | None = None,
                   closing=None, state=None, t_start: float = 0.0, timing_s: float | None = None,
                   run=None):
    """One fine-tuning run that ends at ``end_time``; with ``pseudo`` it starts from the previous round's
    model and adds the pseudo-labelled pool images. With a RunState that knows the stage (``fewshot run
    --resume``), a finished stage is reused and a stopped one continues from its last.pt on its planned
    schedule. ``timing_s``: the planning's timing estimated at the round before's speeds, for its line. ``run``:
    the PipelineRun, for a resumed stage's words (this session's clock, session_seconds, and the budget given).
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
    given, fcfg = fcfg, stage_config(fdir, fcfg) if resuming else copy.deepcopy(fcfg)
    ensure_writable_dir(fdir, "fine-tuning run")
    if not resuming:
        start_stage_afresh(fdir)
    seed_everything(fcfg["train"]["seed"])
    # a resumed stage's checkpoint, or a later round's previous model, replaces model.weights: the file is not
    # read (it may be gone); check_model gave the model.strict=false warning once for the whole run
    pool_limit = fixmatch_pool_limit(fcfg, state)
    task = SupervisedTask(fcfg, infos, device, ctx, resuming=resuming or pseudo is not None, quiet_weights=True,
                          pool_limit=pool_limit)
    task.reused, task.fit_seconds = False, 0.0
    # a short round's record, planned so before the stop, for every way a resumed stage goes on (reused, evaluated
    # after its training, continued): the evaluated one lost it from summary.json (review rev108 #1)
    task.continued_gently = state.stage(name).get("continued_gently") if resuming else None
    task.resumed_training_skipped = state.stage(name).get("resumed_training_skipped") if resuming else None
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
    # last.pt of a stopped stage, read once for the check and cap_resumed_budget: each read was a whole model's
    ck_last = read_last(last) if resuming and status == "began" else last
    if (resuming and status == "began"
            and not same_training_images(task, ck_last, state.stage(name).get("pseudo_key"), key)):
        # the pool was labelled differently this time (another device's float results can move a threshold):
        # its checkpoint belongs to other training images, so the stage starts over from the previous round
        why = ("the training images differ (the labelled images, or the pool's pseudo-labels)" if pseudo is not None
               else "the labelled images differ")
        print(f"[run] {name}: {why} from the stopped run's ({len(task.train_set)} training images now); the stage "
              f"starts over")
        shutil.rmtree(fdir)
        ensure_writable_dir(fdir, "fine-tuning run")
        resuming, status, task.resumed_training_skipped = False, None, None
        state.stage(name).pop("resumed_training_skipped", None)  # the stopped stage's: saved with its "began" below
        # planned anew from the run's schedule, not the stopped plan's: a short round's lr (a tenth) and warm-up (none)
        # were kept by a round now planned long, which trained at full lr without a warm-up (review rev106 #3)
        fcfg = task.cfg = copy.deepcopy(given)
        if pseudo is None:  # round 1 starts from model.weights again, with its head initialised
            seed_everything(fcfg["train"]["seed"])
            task = SupervisedTask(fcfg, infos, device, ctx, quiet_weights=True, pool_limit=pool_limit)
            task.reused, task.fit_seconds = False, 0.0
    if pseudo is not None and not resuming:  # a resumed stage's weights come from its last.pt
        task.model.load_state_dict(pseudo["state"])
    if resuming and status == "trained":
        print(f"[run] {name}: trained before the stop; evaluating its best checkpoint")
    elif resuming:
        # the closing estimate takes the stage's evaluation time from its log.jsonl where it has one (its own speed):
        # an evaluation timed again costs this session's time, and from end_time - after on the stage trains nothing
        # anyway (cap_resumed_budget gives it no time), not only once end_time has passed. The logged step speed is
        # the step kept back (the resumed-late warning's too): train_seconds / global_step counts evaluations
        step_logged, eval_logged = trained_speeds(fdir / "log.jsonl", eval_passes(task, fcfg))
        task.resumed_step_s = step_logged
        after = (closing(task, measure_eval_seconds(task) if eval_logged is None else eval_logged)
                 if closing is not None else 0.0)
        # steps_before: the steps fit() resumes from
        planned_s = float(fcfg["train"]["budget_minutes"] or 0.0) * 60
        trained_before, steps_before = cap_resumed_budget(fcfg, ck_last, end_time - after, step_logged)
        go_on_resumed(task, fcfg, state, name, last, planned_s, trained_before, end_time - after, step_logged,
                      run, t_start)
    else:
        if pseudo is not None:  # a later round's timing went unsaid: 20-36 s without a line on a loaded machine
            about = f" (about {seconds_text(timing_s)} at the round before's speed)" if timing_s else ""
            print(f"[run] {name}: timing its training steps, an evaluation and a prediction batch to plan "
                  f"it{about}", flush=True)
        labelled_only = pseudo is not None and pseudo.get("labelled_only")
        if pseudo is not None and pseudo.get("recipe"):  # saved with the stage's config.yaml below
            take_round_recipe(fcfg, pseudo["recipe"])
        if labelled_only:  # saved with the stage's config.yaml below: a resumed round keeps it
            continue_gently(fcfg, pseudo["lr"])
        step_s, epochs, remaining = plan_stage(task, fcfg, end_time, fcfg["run"]["min_epochs"],
                                               ("train", "eval_every"), closing, getattr(state, "resumed", False))
        # the round's lr from round 1's (pseudo["lr"], gentle_lr; None where round 1's is gentle already), never from
        # round k - 1's or a stopped config.yaml's, either of which may be divided already
        short = (pseudo is not None and not labelled_only and pseudo.get("lr") is not None
                 and epochs < SHORT_ROUND_EPOCHS)
        if short:
            continue_gently(fcfg, pseudo["lr"])
        task.continued_gently = {"lr": fcfg["optim"]["lr"], "planned_epochs": round(float(epochs), 2),
                                 "under_epochs": SHORT_ROUND_EPOCHS} if short else None
        save_yaml(fcfg, fdir / "config.yaml")
        weights = fcfg["model"]["weights"]
        # the user's own model.weights are not MoCo's: which recipe their lr took is said (hunt hBW #2)
        from fewshot.train.supervised import recipe_words

        recipe = recipe_words(fcfg) if weights and not fcfg["run"]["pretrain"] else ""
        start = ("from random init" if not weights else "from MoCo weights" if fcfg["run"]["pretrain"]
                 else f"from {weights}{f' ({recipe})' if recipe else ''}")
        # a tenth of round 1's lr (carried forward undivided): "its" of a round 2 that went gently read as a hundredth
        of = "its" if labelled_only and pseudo["after"] == 1 else "round 1's"
        head = (f"continuing round {pseudo['after']}'s model at a tenth of {of} lr, without a warm-up"
                f"{' ' + what if what else ''}" if labelled_only else
                f"continuing the previous round's model at a tenth of {of} lr, without a warm-up (a short round: under "
                f"{SHORT_ROUND_EPOCHS:g} epochs){' ' + what if what else ''}" if short else
                f"fine-tuning {'from the previous round' if pseudo else start}{' ' + what if what else ''}")
        print(f"[run] {head}: {len(task.train_set)} training images{made_of(task, pseudo, fcfg)}, "
              f"{step_s * 1000:.0f} ms/step x {len(task.plan_epoch(0))} steps/epoch, "
              f"{stage_plan_words(step_s, remaining, epochs)}, lr {fcfg['optim']['lr']:g}")
        if state is not None:
            # planned_step_s: its planning's steady step, which judges a resumed stage whose log.jsonl has no epoch
            state.record(name, "began", time.monotonic() - t_start, fit_at=time.monotonic() - t_start,
                         pseudo_key=key, continued_gently=task.continued_gently, planned_step_s=round(step_s, 6))
    seed_everything(fcfg["train"]["seed"])
    engine = Engine(task, fcfg, fdir, device, ctx)
    if status == "trained":  # stopped after its training, before its metrics
        task.epochs_run = state.stage(name).get("epochs", 0)
    else:
        fit_start = time.monotonic()
        engine.fit(resume=resuming and last.is_file())
        task.fit_seconds = time.monotonic() - fit_start + (trained_before if resuming else 0.0)
        task.epochs_run = engine.epochs_trained()
        task.write_bps = engine.write_rate()  # the run counts the next stage's checkpoint writes at it
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


def fixmatch_pool_limit(fcfg: dict, state) -> int | None:
    """The share of a cold pool that start-up decoded for FixMatch (run_state.json's fixmatch_pool_decoded), which its
    stage trains on in every session; None: the whole pool (no FixMatch, no run state, or a state without it)."""
    from fewshot.run_checks import recorded_limit

    if fcfg["semi"]["method"] != "fixmatch" or state is None:
        return None
    return recorded_limit(state.data, "fixmatch_pool_decoded")


def moco_queue_size(r: dict, pool_size: int | None, symmetric: bool = False) -> int:
    """The MoCo stage's queue: run.queue_size, else about half the pool (``pool_size`` images; None: not counted yet)
    capped at 4096, and never under one step's keys (2 x the batch with ``symmetric``): a batch above 4096 (2048
    symmetric) got the 4096 queue that resolve_pretrain_defaults refuses, after the folder began. No floor of two
    batches: it gave a 100-image pool K=128, so most queries met their own image's older key as a negative."""
    from fewshot.ssl.pretrain_settings import keys_per_step

    if r["queue_size"] is not None:
        return r["queue_size"]
    batch = int(r["pretrain_batch_size"])
    keys = keys_per_step(batch, symmetric)
    if pool_size is None:
        return max(4096, keys)
    return int(max(keys, min(4096, pool_size // 2)))


def warn_stage_queue(pcfg: dict, task, world: int) -> None:
    """`fewshot pretrain`'s warning for a queue of at least the pool's images (a pool under two steps' keys, or a
    run.queue_size that large), with the stage's own fields for the flags its advice names."""
    from fewshot.ssl.pretrain import queue_warning

    said = queue_warning(pcfg, task, world)
    if said:
        print(f"{said} (`fewshot run`: run.pretrain_batch_size=N for --batch-size N, run.queue_size=K for "
              f"--queue-size K){_share_words(task)}", flush=True)


def _share_words(task) -> str:
    """The queue warning's word on a pool that is a share of the pool (a cold pool's decode cap, run_checks'
    moco_decode_limit): run.queue_size=4096 met a 485-image share of a 10k pool, and the advice never said why."""
    if not getattr(task, "pool_share", ""):  # MoCoTask's (a test's stand-in may have none)
        return ""
    return (f". The pool is {task.pool_share}: a pool the decode cache does not hold is decoded only as far as a "
            f"quarter of MoCo's share of the budget allows. A larger --budget-minutes decodes more of it, a warm "
            f"cache (the whole pool decoded by an earlier command) gives MoCo all of it, or give a smaller "
            f"run.queue_size.")


def pretrain_stage(cfg: dict, infos, device, ctx, out: Path, end_time: float, state, t_start: float, check=None,
                   pool_size: int | None = None, writes=None, run_end: float | None = None, run=None):
    """MoCo on the pool until ``end_time``, then its backbone exported to OUT/backbone.safetensors. ``check(task,
    eval_s, step_s)``: called with MoCo's measured speeds before it trains (the run's least-run refusal); a resumed
    stage that cap_resumed_budget leaves no training calls ``check(task, eval_s)`` (its evaluation time logged, else
    measured), for the run's word where its closing work no longer fits (PipelineRun.pretrain_closing).
    ``pool_size``: the decodable pool images start-up counted (check_pool_images), which size the queue.
    ``writes(rate)``: called with the stage's checkpoint write rate as timed (Engine.write_rate) once it trained.
    ``run_end``: the run's budget end (time.monotonic()), from which a resumed stage counts its keep-back again.
    ``run``: the PipelineRun, for a resumed stage's words (go_on_resumed: this session's start-up, the budget given).
    Returns (weights path, the stage's summary, seconds in its training loop). With a RunState that knows
    the stage, a finished one is reused and a stopped one continues from its last.pt."""
    from fewshot.report.plots import plot_pretrain_curves
    from fewshot.run_checks import recorded_moco_limit
    from fewshot.ssl.export import export_backbone
    from fewshot.ssl.pretrain import MoCoTask, write_knn_metrics
    from fewshot.ssl.pretrain_settings import resolve_pretrain_defaults
    from fewshot.train.engine import Engine

    r = cfg["run"]
    pool_limit = recorded_moco_limit(state.data)  # the share of a cold pool start-up decoded, in every session
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
    if not resuming:
        start_stage_afresh(pdir)
    if resuming:
        pcfg = stage_config(pdir, cfg)
        # what its plan kept back for its closing work and the fine-tuning's least run is kept back again. A run
        # planned before pretrain/metrics.json was written kept back the same closing work (metrics.json reuses the
        # stop's evaluation); one planned while it was a second evaluation and a checkpoint read keeps back more,
        # which the fine-tuning gets. Resumed with the stop evaluated before the kill, metrics.json's evaluation
        # takes the stop's place in this session's closing time
        kept = resumed_keep_back(state.stage("pretrain"), end_time, run_end)
        step_logged, eval_logged = trained_speeds(pdir / "log.jsonl")
        seed_everything(pcfg["train"]["seed"])
        # last.pt replaces model.weights
        task = MoCoTask(pcfg, infos, device, ctx, resuming=True, pool_limit=pool_limit)
        # capped once the task is built, with last.pt's read kept back: the build, its pool's decode and the read
        # came on top of a cap taken before them, and a resumed 1-minute run ended at 67 s (hunt hBU #1)
        read_s = last.stat().st_size / WRITE_BYTES_PER_S
        planned_s = float(pcfg["train"]["budget_minutes"] or 0.0) * 60
        end_s = end_time - kept - read_s  # its closing work's start: the cap's and the go-on decision's (rev117 #6)
        stop_left = moco_stop_left(run, state.stage("pretrain"), run_end, read_s)
        trained_before, steps = cap_resumed_budget(pcfg, last, end_s, step_logged)
        # the fine-tuning's decision (go_on_resumed): trains on, or trains no further (a time left under its least
        # run, or a cap that left nothing) and says so in one line. It said "continuing ... on its planned
        # schedule" and trained those few steps, the loader's start and a warm-up on top, then the Engine's
        # "resuming from ...: epoch N" and its "no time is left" note. The time it leaves goes to the fine-tuning,
        # which plans from the run's clock (PipelineRun.fine_tune)
        task.resumed_training_skipped = state.stage("pretrain").get("resumed_training_skipped")
        share = moco_share_words(r["pretrain_share"])
        go_on_resumed(task, pcfg, state, "pretrain", last, planned_s, trained_before, end_s, step_logged, run,
                      t_start, share, stop_left)
        # its [run] line said why it trains no further: the Engine's own note on the stop would say it again
        task.no_time_said = task.no_training_said
        if check is not None and task.no_training_said:  # the run's word on its closing work
            # a stage stopped before its first kNN evaluation logged none: 0 s stands in (the checkpoint writes and
            # the export alone), since timing one evaluation here, only to word the warning, would spend more of a
            # budget that is already past its end
            check(task, 0.0 if eval_logged is None else eval_logged)
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
        pcfg["moco"]["queue_size"] = moco_queue_size(r, pool_size, bool(pcfg["moco"].get("symmetric")))
        task = MoCoTask(pcfg, infos, device, ctx, quiet_weights=True, pool_limit=pool_limit)  # check_model warned
        k = moco_queue_size(r, len(task.pool), bool(pcfg["moco"].get("symmetric")))
        if k != task.model.K:
            pcfg["moco"]["queue_size"] = k
            seed_everything(pcfg["train"]["seed"])
            task = MoCoTask(pcfg, infos, device, ctx, quiet_weights=True, pool_limit=pool_limit)
        resolve_pretrain_defaults(pcfg, 1)
        kept = {"s": 0.0}

        def keep_back(*speeds) -> float:  # the check's keep-back, recorded for a resumed session's cap
            kept["s"] = check(*speeds) if check is not None else 0.0
            return kept["s"]

        step_s, epochs, pre_budget = plan_stage(task, pcfg, end_time, r["min_epochs"], ("moco", "knn_every"),
                                                keep_back, getattr(state, "resumed", False))
        save_yaml(pcfg, pdir / "config.yaml")
        # a dataset without a pool lends its train images (labels unused): "85 unlabeled images" counted them too
        images = f"{len(task.pool)} unlabeled images" if ": train images" not in task.pool_source else \
            f"{len(task.pool)} images ({task.pool_source}, their labels unused)"
        images += f" ({task.pool_share})" if getattr(task, "pool_share", "") else ""
        print(f"[run] MoCo pretraining: {images} at {task.size}px, K={task.model.K}, "
              f"{step_s * 1000:.0f} ms/step x {len(task.plan_epoch(0))} steps/epoch, "
              f"{stage_plan_words(step_s, pre_budget, epochs)}")
        warn_stage_queue(pcfg, task, ctx.world)
        # after_s: what its plan kept time for after MoCo's deadline, from which a resume counts its keep-back again
        after = {} if getattr(task, "after_moco_s", None) is None else {"after_s": task.after_moco_s}
        state.stage("pretrain").pop("resumed_training_skipped", None)  # a stage begun again: not its skip
        # planned_step_s: its planning's steady step, which judges a resumed stage whose log.jsonl has no epoch
        state.record("pretrain", "began", time.monotonic() - t_start, fit_at=time.monotonic() - t_start,
                     kept_s=kept["s"], planned_step_s=round(step_s, 6), **after)
    seed_everything(pcfg["train"]["seed"])
    engine = Engine(task, pcfg, pdir, device, ctx)
    fit_start = time.monotonic()
    result = engine.fit(resume=resuming)
    fit_s = time.monotonic() - fit_start + (trained_before if resuming else 0.0)
    if writes is not None:
        writes(engine.write_rate())
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
    if weights and str(weights) != str(cfg["model"]["weights"]):
        record_own_export(fcfg, weights, cfg["model"]["weights"])
    fcfg["semi"]["method"] = "fixmatch" if semi == "fixmatch" else "off"
    if r["pretrain"]:
        o = fcfg["optim"]
        for field, rule in (("lr", "finetune_lr"), ("backbone_lr_mult", "finetune_backbone_mult")):
            if o[field] is None:
                o[field] = r[rule]
                if same_value(r[rule], DEFAULTS["run"][rule]):  # the run's choice: `train --config` chooses it again
                    note_chosen(fcfg, f"optim.{field}")
    return resolve_finetune_defaults(fcfg, resuming=not read_weights)  # resuming: the network is not adopted


def record_own_export(fcfg: dict, weights, given) -> None:
    """The run's own MoCo export (``weights``) as the stages' model.weights: absolute, as resolve() records paths (a
    relative --out left `runs/x/backbone.safetensors`, not found from another folder), and recorded as chosen, with
    the weights the run was given (``given``, MoCo's start): `fewshot run --config` given the stage's config.yaml
    starts MoCo from those again, not from this export (config.RUN_CHOSEN_FIELDS)."""
    from fewshot.config import GIVEN_WEIGHTS

    fcfg["model"]["weights"] = os.path.abspath(weights)
    note_chosen(fcfg, "model.weights")
    if given:
        fcfg[GIVEN_WEIGHTS] = given
