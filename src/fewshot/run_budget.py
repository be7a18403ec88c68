"""The time arithmetic of `fewshot run`: the speeds it times on this machine (a training step, an evaluation, a
prediction pass, a figure) and the plans and checks made from them (a stage's epochs, the least run, the time
the report and self-training's later rounds need). Apart from the pipeline so that its orchestration
(pipeline.PipelineRun) reads as phases.

The pipeline and its stage modules (run_stages, run_pseudo) import these names and call them from there: tests relax
a check (time_holds, least_run_holds) or fake a speed by patching the name on the module that calls it, which
reaches that module's calls only. So nothing here calls a name that tests patch, but for measure_eval_seconds's call
of measure_prediction_seconds (whose patches fake the pool's labelling only); closing_seconds, which calls
report_seconds, stays in the pipeline for that."""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import math
import time

import torch

from fewshot.errors import UserError, one_line
from fewshot.train.budget_reserve import WRITE_BYTES_PER_S
from fewshot.utils import loads_run_json


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # CUDA runs asynchronously: without this a timer measures only the queueing
        torch.cuda.synchronize(device)


_GUARDS: list = []  # stop_timing_when's check, innermost last


@contextlib.contextmanager
def stop_timing_when(check):
    """While in this block the timings here call ``check(step_s, provisional)`` before they start and after each
    timed training step, and it raises to refuse the run: a fresh run timed its steps, an evaluation and a
    prediction batch past its deadline before refusing (21.5 s of a 12 s budget). ``step_s``: the fastest of the
    steps timed so far, a lower bound (the median of two was the slower: a busy moment refused a run that fit), once
    two are timed (None: fewer, the last known stands), ``provisional``: the fastest step yet, the warm-up
    included, for the words only."""
    _GUARDS.append(check)
    try:
        yield
    finally:
        _GUARDS.remove(check)


def _check_budget(step_s: float | None = None, provisional: float | None = None) -> None:
    if _GUARDS:
        _GUARDS[-1](step_s, provisional)


def measure_step_seconds(task, steps: int = 3, warmup: int = 1) -> float:
    """Median seconds per training step (forward, backward, optimizer) on a copy of the task's model,
    on the task's device and in the Engine's autocast, so that the plan matches what the stage will run; where
    the command's last stage ended on 1 thread (train.adapt_threads), the full count is timed too.
    The copy runs eagerly where the stage compiles (train.compile; torch drops the compile from a copied module):
    it costs no second compile, and the time-based schedule follows the clock from there."""
    from fewshot.train.optim import amp_dtype
    from fewshot.train.start_checks import empty_epoch_error
    from fewshot.train.thread_tuner import carried_one_thread

    device = task.device
    task.model.to(device)  # the tasks build their model on the CPU; the Engine would move it later
    model = copy.deepcopy(task.model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)
    batches = task.plan_epoch(0)
    if not batches:  # found here, before the Engine would say it, since calibration comes first
        raise empty_epoch_error(task, task.cfg, 1)
    amp = amp_dtype(task.cfg, device, getattr(task, "size", None))
    step = functools.partial(_timed_step, task, model, opt, batches, device, amp)
    times, first = [], None
    _check_budget()
    with torch.random.fork_rng(devices=[]):
        for i in range(warmup + steps):
            took = step(i)
            if i >= warmup:
                times.append(took)
            elif first is None:
                first = took
            # the warm-up pays one-time costs and one timed step may have met a busy moment: neither proves the run
            # cannot fit, they only name a speed where the deadline passed before two steps were timed
            _check_budget(min(times) if len(times) >= 2 else None, min(times + [first]))
        full = carried_one_thread(task.cfg["train"], device)
        if full is not None:
            times = _full_count_timed(step, times, full, warmup, steps)
    task.fastest_step_s = min(times)  # the least-run check's word on whether a re-time may fit (steps_that_fit)
    del step, model, opt, params  # every name that holds the copy's tensors (params: its weights and grads)
    free_device_memory(device)  # the copy's weights and gradients, held by the allocator for the stage's own
    return sorted(times)[len(times) // 2]


def _timed_step(task, model, opt, batches: list, device, amp, i: int) -> float:
    """Seconds of one training step of measure_step_seconds' copy (``i``: which planned batch, and its seed)."""
    _sync(device)
    t0 = time.perf_counter()
    batch = task.make_batch(batches[i % len(batches)], 0, i)
    with torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
        loss = task.training_step(model, batch)[0]  # the outputs go at once: nothing holds them
    opt.zero_grad()
    loss.backward()
    opt.step()
    _sync(device)
    return time.perf_counter() - t0


def _full_count_timed(step, times: list[float], full: int, warmup: int, steps: int) -> list[float]:
    """The step times the stage plans at, where the command's last stage ended on 1 thread (``times``, timed there):
    the full count is timed too and kept where its median is clearly faster (thread_tuner's KEEP), since the other
    work may have ended. A step at the full count over twice 1 thread's median stops it at once (the cores are still
    shared: a contended step took 1.2 s against 40 ms); a smaller hiccup does not (one +15 ms step in three kept a
    quiet machine's plan on 1 thread, 1.6x too slow: review rev58). The budget guard is asked after each step, as
    for the first count (a re-time ran past its deadline). The count kept is the one the stage's tuner starts on."""
    from fewshot.train.thread_tuner import KEEP, keep_planned_count

    here = sorted(times)[len(times) // 2]
    keep_planned_count(full)
    other: list[float] = []
    try:
        for j in range(warmup + steps):
            took = step(warmup + steps + j)
            if j >= warmup:
                other.append(took)
            _check_budget(min(times), min(times + other))
            if took > 2 * here:
                break
    except BaseException:  # a refusal or a re-time's stop: the stage had not chosen, the carried count stands
        keep_planned_count(1)
        raise
    if len(other) == steps and sorted(other)[steps // 2] < KEEP * here:
        return other
    keep_planned_count(1)
    return times


class _RetimeStopped(Exception):
    """retime_step_seconds' stop: the fastest step the re-time saw does not fit the least run either."""


def retime_step_seconds(measure, task, step_s: float, fits, left) -> float:
    """The step timed once more where the least run did not fit at the first timing's speed (``step_s``): on a
    shared machine a timing can meet one busy moment (25..3644 ms for one model; 1728 ms timed, ~100 ms trained),
    and a small budget was refused before any training where the machine's own speed fitted it. Returns the faster
    of the two medians (the slower may be the busy moment). ``fits(step_s)``: whether the least run fits the budget
    left at a step speed; ``left()``: the seconds left. After its warm-up (which pays one-time costs) the re-time
    stops where another step at the fastest speed it saw would pass the deadline, and from its first timed step
    on where even that speed does not fit the least run: on a slow machine it ends after two steps, not past the
    deadline, and ``step_s`` stands (the fastest single step seen, the warm-up's perhaps, is no median to plan
    with or to quote: reviews rev49, rev50). ``measure``: measure_step_seconds as the caller looks it up."""
    steps_seen = []

    def check(timed: float | None, provisional: float | None) -> None:
        if provisional is None:  # before the first step
            return
        steps_seen.append(provisional)  # provisional: the fastest step yet (the warm-up included), <= timed
        if provisional > left() or (len(steps_seen) > 1 and not fits(provisional)):
            raise _RetimeStopped(provisional)

    try:
        with stop_timing_when(check):  # the innermost check: the run's own (refuse_if_hopeless) waits for the result
            again = measure(task)
    except _RetimeStopped:  # not even the fastest step seen fits: the decision is the first timing's
        again = step_s
    return min(step_s, again)


def retimed_steps(measure, timed: list, need, left, holds, stop_need=None) -> list[float]:
    """The step speeds of ``timed`` [(task, step seconds)] that a check of the time left rests on (the least-run
    refusal, self-training's skip of its later rounds): as timed where ``holds(need(steps), left())``, else each timed
    once more (retime_step_seconds) and the faster kept, on its task too (``retimed_step_s``, for plan_stage): a
    timing of a few steps can meet one busy moment of a shared machine (10-100x slow), and a run that fitted at the
    machine's own speed was refused with nothing trained, or lost its later rounds. Not re-timed where ``need``
    cannot fit even at no time a step, or one step at the fastest speed timed (measure_step_seconds'
    ``fastest_step_s``) would pass the deadline, nor a task timed twice already (``retimed``: a third timing of a
    slow machine only spends its time); while one step is re-timed, the steps after it count no time, so that only
    what is known stops it. ``measure``: measure_step_seconds as the caller looks it up (tests fake it).
    ``stop_need``: what the re-time must find room for to go on (else ``need``): the report's images are worth a
    re-time, but one stopped because they do not fit at any speed used up the task's re-time, and the checks after
    it (the least run without them) planned at the busy timing (review rev52)."""
    steps = [step_s for _, step_s in timed]
    if holds(need(steps), left()):
        return steps
    stop_need = stop_need or need
    for i, (task, step_s) in enumerate(timed):
        def fits(s: float, i: int = i) -> bool:
            return holds(stop_need(steps[:i] + [s] + [0.0] * (len(steps) - i - 1)), left())

        if not fits(0.0) or min(step_s, getattr(task, "fastest_step_s", step_s)) > left():
            break
        if getattr(task, "retimed", False):  # its re-time stands, whichever caller made it
            steps[i] = min(step_s, getattr(task, "retimed_step_s", step_s))
            continue
        steps[i] = retime_step_seconds(measure, task, step_s, fits, left)
        task.retimed = True
        if steps[i] < step_s:
            task.retimed_step_s = steps[i]
    return steps


def trained_speeds(log_path, passes: int = 1, pending: dict | None = None) -> tuple[float | None, float | None]:
    """A trained stage's own speeds from its log.jsonl: seconds per training step as it ended (its last epochs' step
    time over their steps, the epochs that hold the last quarter of its steps at least: a machine that got busy
    during round 1 trained its last 30 steps at 0.55 s, its first 90 at 0.05) and per evaluation (the evaluation
    rows' mean time over ``passes``, eval_passes: with an EMA it scores both weights). The later rounds were judged
    at round 1's calibration (4 steps timed at its planning): on a loaded machine round 1 trained at 7.4 s a step
    against 1.6 s timed, and round 2 labelled the pool and timed its own steps only to be skipped at its planning.
    None for a speed the log does not hold (no log: a reused stage). ``pending``: the row of the epoch the Engine has
    not logged yet (round1_replan judges at round 1's planned end with the rows the check before round 2 reads)."""
    rows = []
    with contextlib.suppress(OSError, ValueError):
        for line in open(log_path, encoding="utf-8", errors="replace"):
            with contextlib.suppress(ValueError):
                row = loads_run_json(line)
                if isinstance(row, dict):
                    rows.append(row)
    if pending is not None:
        rows.append(pending)
    epochs, before = [], 0  # (steps, seconds) of each epoch's row
    for row in rows:
        step, took = row.get("step"), row.get("epoch_time_s")
        if isinstance(step, int) and isinstance(took, (int, float)) and step > before:
            epochs.append((step - before, float(took)))
        if isinstance(step, int):
            before = step
    steps = step_time = 0.0
    quarter = 0.25 * sum(m for m, _ in epochs)  # summed once: inside the loop it made a long log quadratic
    for n, took in reversed(epochs):  # the latest epochs, up to a quarter of the steps
        if steps and steps >= quarter:
            break
        steps, step_time = steps + n, step_time + took
    evals = [row["eval_time_s"] for row in rows if isinstance(row.get("eval_time_s"), (int, float))]
    return (step_time / steps if steps else None,
            sum(evals) / len(evals) / max(1, passes) if evals else None)


def free_device_memory(device: torch.device) -> None:
    """Give a timing's tensors back (a probe task, a model copy): on CUDA the caching allocator kept them, and they
    sat next to the stage that trains after the timing (MoCo beside the fine-tuning's probe)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_eval_seconds(task, n: int = 256) -> float:
    """Seconds of one evaluation (task.evaluate): timed whole when it reads at most 4 x ``n`` images, else from a
    batch of ``n`` of them scaled to all (the better of two timings: the first pays the warm-up); a 20k-image val
    split was evaluated in full only to be timed, in every stage. Fine-tuning runs its classifier over val; MoCo's
    kNN monitor embeds the labelled train and val images with its backbone."""
    _check_budget()
    moco = getattr(task.model, "encoder_q", None)
    n_images = len(task.val_set) + (len(task.train_set) if moco is not None else 0)
    if n_images > 4 * n:
        net = moco.backbone if moco is not None else None
        per_image = measure_prediction_seconds(task, task.val_set.images, n, net)  # the better of two timings
        return per_image * n_images
    task.model.to(task.device)
    _sync(task.device)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        task.evaluate(task.model, 0)
    _sync(task.device)
    return time.perf_counter() - t0


def resumed_eval_seconds(task, eval_logged: float | None, per_image: float) -> float:
    """A resumed stage's evaluation seconds for its closing estimate: the larger of the earlier session's logged
    time (``eval_logged``) and this session's prediction speed (``per_image``, timed now) over the images an
    evaluation reads (val, and MoCo's labelled train images, as measure_eval_seconds counts them). The logged time
    alone came from a quieter machine: a resumed round 1 warned "14 s late" and ended 24 s late (hunt hBX #2)."""
    moco = getattr(task.model, "encoder_q", None)
    n_images = len(task.val_set) + (len(task.train_set) if moco is not None else 0)
    return max(eval_logged or 0.0, per_image * n_images)


def last_read_seconds(task) -> float:
    """Engine.resume()'s read of a stopped stage's last.pt (weights, EMA, AdamW's two slots) at WRITE_BYTES_PER_S,
    a read that the resumed stage's closing estimate left out (a task without a model, a test's stand-in: 0)."""
    model = getattr(task, "model", None)
    return 0.0 if model is None else sum(p.numel() for p in model.parameters()) * 16 / WRITE_BYTES_PER_S


def plan_epochs(budget_s: float, step_s: float, steps_per_epoch: int, eval_s: float, eval_every: int,
                min_epochs: int = 1) -> int:
    """Epochs that fit the budget at the measured speed. Stages run on a time-based schedule with this
    number as a generous cap (4x), so a slow calibration (a busy machine) cannot shrink a stage; where one was
    slower still (1728 ms timed, ~100 ms trained), the Engine raises the cap from the speed it trains at
    (Engine._extend_cap). ``min_epochs``
    (run.min_epochs) is a floor under that cap, not a promise of epochs: the budget ends the stage first (a hard
    budget has no room for epochs it cannot hold; plan_stage says so where it asks for more than fit)."""
    return max(min_epochs, 4 * int(fitting_epochs(budget_s, step_s, steps_per_epoch, eval_s, eval_every)), 8)


def fitting_epochs(budget_s: float, step_s: float, steps_per_epoch: int, eval_s: float, eval_every: int) -> float:
    """Epochs (a fraction where less than one fits) that the budget holds at the measured speed."""
    per_epoch = step_s * steps_per_epoch + eval_s / max(1, eval_every)
    return budget_s / max(per_epoch, 1e-6)


def eval_passes(task, cfg: dict | None = None) -> int:
    """Evaluations the Engine runs for one of its own (during training, and at the budget stop): with an EMA it
    scores both the EMA and the raw weights, so twice task.evaluate's time (the closing estimate counted the stop's
    once, and 0.3-minute runs ended a whole evaluation late)."""
    cfg = task.cfg if cfg is None else cfg
    return 2 if cfg["train"].get("ema") and getattr(task, "supports_ema", False) else 1


LABEL_SHARE = 0.25  # of the time left, what a round's labelling may take (pipeline passes it as ``seconds``)
FLOOR_STEPS = 5  # plan_stage's least training steps of a stage, even when its time is spent
CLOSING_SHARE = 0.015  # of the budget, kept beyond the closing work's estimate


def least_run_seconds(step_s: float, closing_s: float) -> float:
    """The least time a run's last stage needs from its planning on: plan_stage's floor of steps, the step the
    Engine finishes past its deadline, and the closing work (closing_seconds, without the report's image-based
    parts, which are left out when they do not fit)."""
    return (FLOOR_STEPS + 1) * step_s + closing_s


def pretrain_least_seconds(step_s: float, eval_s: float, n_params: int) -> float:
    """The least time the MoCo stage needs from its planning on: plan_stage's floor of steps and the step past its
    deadline, and its closing work (pretrain_closing_seconds)."""
    return (FLOOR_STEPS + 1) * step_s + pretrain_closing_seconds(eval_s, n_params)


def pretrain_closing_seconds(eval_s: float, n_params: int) -> float:
    """What the MoCo stage does after its deadline, before the fine-tuning can start: the budget stop's kNN
    evaluation, which pretrain/metrics.json reuses (write_knn_metrics of the weights in memory, last.pt's: no
    second evaluation, no checkpoint read), and its checkpoint writes and export (both encoders and SGD's momentum,
    ~250 MB/s)."""
    return eval_s + n_params * 16 / 250e6


def calibration_seconds(step_s: float, eval_s: float, per_image: float, n_test: int) -> float:
    """What a fine-tuning stage's planning spends before its first step (measure_step_seconds' 4 timed steps, an
    evaluation, a prediction batch or two of the test images): after MoCo, the least run pays it once more."""
    return 4 * step_s + eval_s + 2 * per_image * min(n_test, 256)


def too_short_budget_error(budget_s: float, used_s: float, need_s: float, step_s: float, what: str,
                           hints: str, undone: bool = True, first: str = "", untimed: str = "",
                           resumed: tuple | None = None) -> UserError:
    """The refusal of a budget that cannot hold even the least run, found at the first stage's planning (before
    any training): such a run trained its floor of steps and then ran past its budget, silently until its end
    (0.3 minutes with resnet50 on 2 busy cores: 60 s). ``used_s``: the run's time so far (start-up, decoding,
    the timing of the speeds); ``need_s``: least_run_seconds; ``what``: the model and size; ``hints``: the ways
    to a shorter least run besides a larger budget; ``first``: the work before the last stage's steps, in words
    ("MoCo pretraining's ..., then "), where need_s counts it; ``untimed``: why need_s is the steps' alone (the
    timing stopped once they did not fit, stop_timing_when), so that it and the budget named are a least.
    ``resumed``: (folder, seconds used before the stop) of a --resume that no stage had trained in
    (resumed_too_short_error)."""
    if resumed is not None:
        return resumed_too_short_error(budget_s, used_s, need_s, step_s, what, hints, undone, first, *resumed)
    total = used_s + need_s
    least = _least_minutes(budget_s, total)
    return UserError(one_line(
        f"--budget-minutes {budget_s / 60:g} is too short for {what} on this machine: start-up and the timing of "
        f"the speeds took {used_s:.0f} s, and the least run after them ({first}{FLOOR_STEPS + 1} training steps at "
        f"{step_s * 1000:.0f} ms: its floor and the one past its deadline, the closing evaluations, the prediction "
        f"of the test images and the report) needs "
        + (f"over {_tenths_down(need_s)} s more, over {_tenths_down(total)} s in all ({untimed}; measured here, and "
           f"a busy machine needs more)" if untimed else
           f"about {need_s:.0f} s more, {total:.0f} s in all (measured here; a busy machine needs more)") +
        f". Nothing was "
        f"trained{' and the output folder was left as it was' if undone else ''}. Give --budget-minutes {least:g} "
        f"or more (more leaves training a fair share){hints}."))


def resumed_too_short_error(budget_s: float, used_s: float, need_s: float, step_s: float, what: str, hints: str,
                            undone: bool, first: str, out, before_s: float) -> UserError:
    """too_short_budget_error for a --resume of a run that no stage had trained in: it went on, warned, and overran
    its budget by 58 %. A resume keeps its run's budget (RunState.resume), so the budget named is a fresh run's:
    this session's start-up and timing (``used_s`` less the ``before_s`` of the sessions before) and the least run."""
    session_s = max(0.0, used_s - before_s)
    least = max(0.1, _fitting_minutes(budget_s, session_s + need_s))
    return UserError(one_line(
        f"--resume cannot fit the least run of {what} on this machine in what is left of the {budget_s / 60:g} "
        f"minutes of '{out}': the sessions "
        f"before the stop used {before_s:.0f} s, this one's start-up and the timing of the speeds took "
        f"{session_s:.0f} s, and the least run after them ({first}{FLOOR_STEPS + 1} training steps at "
        f"{step_s * 1000:.0f} ms: its floor and the one past its deadline, the closing evaluations, the prediction "
        f"of the test images and the report) needs about {need_s:.0f} s more, {used_s + need_s:.0f} s in all "
        f"(measured here; a busy machine needs more). No stage had trained and nothing was trained now"
        f"{'; the output folder was left as it was' if undone else ''}. A --resume keeps its run's budget: start "
        f"the run afresh (in another --out, or in this one once you have removed it) with --budget-minutes "
        f"{least:g} or more (more leaves training a fair share){hints}."))


def floor_budget_error(budget_s: float, used_s: float, step_s: float, undone: bool = True) -> UserError:
    """too_short_budget_error where LEAST_RUN_S, not the steps, is the need: the steps' words ("6 training steps at
    33 ms ... needs over 2 s more") and its hints did not fit. The total is in tenths, rounded down and said "over"
    (rounded to whole seconds, "0.1 is too short ... 6 s in all" named the budget refused); the start-up before the
    floor depends on the model, the size and --pretrain, so only the floor is said to be the same for all."""
    total = used_s + LEAST_RUN_S
    return UserError(one_line(
        f"--budget-minutes {budget_s / 60:g} is too short for any run on this machine: start-up and the timing of "
        f"the speeds took {_tenths_down(used_s)} s, and any run needs at least {LEAST_RUN_S:g} s more after them, "
        f"over {_tenths_down(total)} s in all (the least any run needs for its closing evaluations, the prediction "
        f"of the test images and the report; its {FLOOR_STEPS + 1} training steps at {step_s * 1000:.0f} ms fit in "
        f"it). Nothing was trained{' and the output folder was left as it was' if undone else ''}. Give "
        f"--budget-minutes {_least_minutes(budget_s, total):g} or more (more leaves training a fair share): the "
        f"{LEAST_RUN_S:g} s after the start-up are the same for any --model or --img-size."))


def _least_minutes(budget_s: float, total_s: float) -> float:
    """The budget a refusal names for a run that needs ``total_s`` in all: the closing reserve grows with the budget
    (1.5 % of it), so the budget named holds the rest at that share, and 10 % more for a machine a little busier
    than at this measurement, in tenths of a minute rounded up (never the refused one: _more_than)."""
    return _more_than(budget_s, _fitting_minutes(budget_s, total_s))


def _fitting_minutes(budget_s: float, total_s: float) -> float:
    """_least_minutes before its floor of more than the refused budget (a fresh start after a refused --resume may
    fit the same budget): tenths of a minute, rounded up."""
    return math.ceil((total_s - CLOSING_SHARE * budget_s) / (1 - CLOSING_SHARE) * 1.1 / 6) / 10


def _more_than(budget_s: float, least: float) -> float:
    """The budget a refusal names, in minutes: ``least``, but never the refused one or less (rounded to tenths, a
    need just above 0.1 minutes named `--budget-minutes 0.1 or more` to a refused 0.1)."""
    return max(least, (math.floor(budget_s / 6 + 1e-9) + 1) / 10)


def _tenths_down(seconds: float) -> str:
    """A least time in tenths of a second rounded down (18 s, 4.6 s), so that "over" stays true: 6 steps at 769 ms
    (4.6 s) were said "over 5 s"."""
    return f"{math.floor(seconds * 10 + 1e-9) / 10:.1f}".removesuffix(".0")  # 0.9 is not 0.8999...


# A conservative floor, not a measurement: less than any run that can work needs after its start-up (decoding the
# images, timing the speeds, its 6 training steps, the closing work), so that only hopeless budgets are refused early
LEAST_RUN_S = 2.0


def hopeless_budget_error(budget_s: float, used_s: float, started: bool = False, undone: bool = True,
                          cold: list = (), decode: tuple[float, int] | None = None) -> UserError:
    """The refusal, before any work, of a budget below LEAST_RUN_S once the start-up (``used_s``) is out of it:
    `--budget-minutes 0.01` was refused only after 30-38 s of decoding and timing. The start-up is named only where
    it is part of the shortfall (from Python it is about 0 s). ``started``: the output folder was claimed before
    the refusal (the start-up timing's), ``undone``: and its start undone (only with the folder's lock), so that
    "Nothing was started" is said only where it is true. ``cold``: (seconds, files) of the pool decodes the cache
    did not hold; where they took much of the start-up they are named (cold_decode_words). ``decode``: (seconds,
    files) of a cold pool's least share still to decode, refused before it (run_checks.cold_pool_limit): named, and
    counted in the budget advised."""
    done = ("Nothing was started" if not started else "Nothing was trained and the output folder was left as it was"
            if undone else "Nothing was trained, but the output folder keeps what this start wrote there (without "
            "the folder's lock the start is not undone: another start may be writing there too)")
    decode_s = sum(s for s, _ in cold) if cold else 0.0
    ahead = decode[0] if decode else 0.0
    cold_words, advice = "", None
    if decode_s >= COLD_DECODE_SHARE * used_s > 0:
        cold_words, advice = cold_decode_words(budget_s, used_s, decode_s, sum(n for _, n in cold), ahead)
    startup = f"its start-up alone took {used_s:.1f} s{cold_words}, and " if used_s >= 0.05 else ""  # 0.1 s or more
    if decode:
        startup += (f"decoding a pool the decode cache does not hold (the rest of its timing and its least share, "
                    f"{decode[1]:,} images, at the speed timed) would take at least {ahead:.1f} s more, and ")
    return UserError(one_line(
        f"--budget-minutes {budget_s / 60:g} ({budget_s:.1f} s) cannot hold a run: {startup}any run needs at least "
        f"{LEAST_RUN_S:g} s{' more' if startup else ''} (reading the images, timing this machine's speeds, "
        f"{FLOOR_STEPS} training steps, the closing evaluations and the prediction). {done}. " + (advice or
        f"Give a larger --budget-minutes ({first_try_minutes(used_s + ahead):g} or more to start with): the run then "
        f"times this machine's speed and names the least budget it needs where that is still too short.")))


COLD_DECODE_SHARE = 0.5  # of the start-up, from which a refusal names the pool's first decoding and its cache


def cold_decode_words(budget_s: float, used_s: float, decode_s: float, files: int,
                      ahead_s: float = 0.0) -> tuple[str, str]:
    """The refusal's words for a start-up spent mostly on decoding the pool the first time (``decode_s`` of
    ``files``): the decoded images are cached, so the same command starts faster; its advice, a budget from the
    start-up without that decoding (a 1-minute run refused after a 59 s cold decode was told 4 minutes, and the
    same command then finished in 59 s: hunt hBK); ``ahead_s``: a decode still to come, which a rerun pays too.
    Returns (the start-up's words, the advice)."""
    rest = max(0.0, used_s - decode_s)
    said = (f" ({decode_s:.1f} s of it decoding {files:,} pool images the decode cache did not hold: they are cached "
            f"now)")
    least = first_try_minutes(rest + ahead_s)
    if least <= budget_s / 60 + 1e-9:
        return said, (f"Run the same command again: without that decoding its start-up took {rest:.1f} s, so the "
                      f"same budget may now hold the run (it times this machine's speed and names the least budget "
                      f"it needs where that is still too short).")
    return said, (f"Give a larger --budget-minutes ({least:g} or more to start with, the start-up without that "
                  f"decoding three times over): the run then times this machine's speed and names the least "
                  f"budget it needs where that is still too short.")


def first_try_minutes(used_s: float) -> float:
    """A budget to try after a refusal before any timing: nothing is measured yet, so a guess that holds the start-up
    three times over, in half minutes, and at least 1 minute (the demo data on 2 CPU cores needs 0.8; 0.1, the next
    try the message's "at least 2 s more" suggested, was refused again after 5 s: hunt hAU)."""
    return max(1.0, math.ceil(3 * used_s / 30) / 2)


def measure_prediction_seconds(task, images: torch.Tensor, n: int = 256, model=None) -> float:
    """Seconds per test image of a prediction pass (one batch of the preloaded test images, timed); ``model``:
    the network to time (the task's model by default). Where the images are more than a batch (the time is scaled
    to all of them), the better of two timings: the first pays the warm-up, and a cold one multiplied by a large
    test split could refuse a normal run as too short for its closing work."""
    from fewshot.eval.evaluate import compute_logits

    sample = images[:n]
    if len(sample) == 0:
        return 0.0
    _check_budget()
    task.model.to(task.device)
    best = math.inf
    for _ in range(2 if len(images) > n else 1):
        with torch.random.fork_rng(devices=[]):
            _sync(task.device)
            t0 = time.perf_counter()
            compute_logits(task.model if model is None else model, sample, task.normalize, task.device, batch_size=n,
                           channels_last=task.channels_last, desc="timing prediction")
            _sync(task.device)
        best = min(best, time.perf_counter() - t0)
    return best / len(sample)


FIGURE_S = 0.06  # figure_seconds() on the 2 idle cores where report_seconds' figures were timed


def figure_seconds() -> float:
    """Seconds to draw and save a small figure now (the median of 3, after one that pays matplotlib's set-up): on a
    busy machine the report drew 3-4x slower than report_seconds' figures, and the closing estimate scales with it."""
    import io

    from fewshot.report.figure import _figure  # the report's own figures (and matplotlib's config folder)

    _check_budget()
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        fig = _figure(2, 1.5)
        fig.add_subplot().plot([0, 1], [0, 1])
        fig.savefig(io.BytesIO(), format="png")
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[1]


# the most the closing estimate scales the report's drawing by: the report drew 3-4x slower than FIGURE_S on a busy
# machine, and a figure timing beyond 3x (3 small figures, under a second) met a busy moment more than it measured the
# report's seconds of drawing; unbounded, a start-up timing of 3.3x made hCA c1 s1's estimate 27 s for a 10-s closing;
# the cap is for planning only: the end decides the images at the speed as timed (report_beyond_cap), so a report
# that does draw slower loses its images there (report_skips_images), it does not run late (review rev121 #1)
FIGURE_SCALE_CAP = 3.0


def figure_scale(figure_s: float, cap: float = FIGURE_SCALE_CAP) -> float:
    """How much slower than report_seconds' idle timing the report draws at ``figure_s`` (figure_seconds), from 1
    to ``cap``."""
    return min(cap, max(1.0, figure_s / FIGURE_S))


STAGE_CURVES_S = 0.6  # a stage's curves drawn at FIGURE_S: 0.56-0.62 s timed at a figure speed of 0.052-0.059 s


def report_stage_seconds(task, figure_s: float = FIGURE_S) -> float:
    """A stage's part of the report: its curves (STAGE_CURVES_S, drawn), its FLOPs count and tables (0.3 s, not
    drawing: not scaled) and a read of its checkpoint."""
    return figure_scale(figure_s) * STAGE_CURVES_S + 0.3 + best_read_seconds(task)


def best_read_seconds(task) -> float:
    """A read of a stage's best.pt (weights and EMA, ~250 MB/s) by the report; 0 for a test's stand-in's task."""
    model = getattr(task, "model", None)
    return 0.0 if model is None else sum(p.numel() for p in model.parameters()) * 8 / 250e6


def report_seconds(task, eval_s: float, report_stages: int, figure_s: float = FIGURE_S) -> tuple[float, float]:
    """The report of a run, estimated: (its page, accuracy bars, and per stage report_stage_seconds; its
    image-based parts: the predicting stage's val predictions, a confusion matrix per dataset, the embedding map and
    the grid). Timed on 2 idle CPU cores with 3 datasets of 3, 7 and 12 classes: page and bars ~0.5 s, per stage
    ~0.9 s and a read of its checkpoint, a confusion matrix 0.15 s + 0.013 s a class (up to 20 classes, 12 datasets
    drawn), embedding and grid ~1.3 s. Only the drawing scales, by figure_scale: on a busy machine it took 3-4x as
    long; scaled whole (the reads, the FLOPs count) and unbounded, the estimate was 2.7x the real closing."""
    if not report_stages:
        return 0.0, 0.0
    scale, read = figure_scale(figure_s), best_read_seconds(task)
    base = scale * 0.5 + report_stages * report_stage_seconds(task, figure_s)
    return base, eval_s + read + scale * image_drawing_seconds(task)


def image_drawing_seconds(task) -> float:
    """The report's image-based parts drawn at FIGURE_S: the confusion matrices, the embedding map and the grid."""
    return confusion_seconds(task) + 1.3


def confusion_seconds(task) -> float:
    """The report's confusion matrices drawn at FIGURE_S: 0.15 s + 0.013 s a class (up to 20), 12 datasets drawn."""
    return sum(0.15 + 0.013 * min(len(c), 20) for c in task.space.classes[:12])


def report_beyond_cap(task, report_stages: int, figure_s: float) -> float:
    """The seconds the report's drawing takes at ``figure_s`` beyond report_seconds' estimate at the capped scale:
    the end decides the images with them (report_skips_images). On the capped estimate, a report drawing 4x slower
    than FIGURE_S kept its images with 1.4 s too little left and ended 3.3 s late (review rev121 #1)."""
    beyond = figure_scale(figure_s, math.inf) - figure_scale(figure_s)
    if not (report_stages and beyond):  # (and a test's stand-in task, drawn below the cap, needs no classes)
        return 0.0
    return beyond * (0.5 + report_stages * STAGE_CURVES_S + image_drawing_seconds(task))  # report_seconds' drawing


def after_round1_seconds(step_s: float, eval_s: float, per_image: float, n_pool: int, rounds: int,
                         last_closing_s: float, close_evals: int = 2, n_test: int = 0) -> float:
    """The least time self-training needs after round 1's last step, at the speeds measured for round 1: a large
    run.pseudo_share planned round 1 up to the end of the budget, and the rest came on top (165 s of a 60 s
    budget). Round 1's closing evaluations (``close_evals``: eval_passes + 1, the stop's of both weights with an
    EMA and the best checkpoint's; 2 were counted, and round 1 ended an evaluation late), then what the check
    before round 2 asks for the later rounds (later_rounds_seconds), so that round 1's cut and that check agree."""
    return close_evals * eval_s + later_rounds_seconds(step_s, eval_s, per_image, n_pool, rounds - 1, last_closing_s,
                                                       close_evals, n_test)


# of the later rounds' least time, left by round 1 beyond it for its own late end; and asked by the check before a
# later round's labelling beyond that round's calibration and least run, for them and the labelling ending late
ROUND1_MARGIN = 0.15


def round1_leaves(rest_s: float, left_s: float, step_s: float, eval_s: float) -> float:
    """The time round 1 leaves after its last step: the later rounds' least time (after_round1_seconds) and a
    margin for round 1 ending late (its stop's evaluations and checkpoint writes, the check's timing, a busier
    machine), as far as round 1 keeps its 5-step floor and an evaluation. Planned exactly, a 1-minute run's round 1
    ended 3 s late, round 2 (29 s left, 33 s needed) was skipped and the run ended at 45.6 s; the margin is not
    lost when round 1 ends on time: the later rounds train it."""
    margin = min(ROUND1_MARGIN * rest_s, max(0.0, left_s - rest_s - (FLOOR_STEPS + 1) * step_s - eval_s))
    return rest_s + margin


def checkpoint_write_seconds(task, write_bps: float) -> float:
    """A stage's checkpoint writes at its end: last.pt (weights, EMA, AdamW's two slots) and best.pt (weights, EMA),
    at ``write_bps`` bytes a second (a task without a model, a test's stand-in, writes nothing)."""
    model = getattr(task, "model", None)
    return 0.0 if model is None else sum(p.numel() for p in model.parameters()) * 24 / write_bps


def round1_end_seconds(step_s: float, per_image: float, n_test: int, saves_s: float, timed: bool = False) -> float:
    """What round 1's end and the check before round 2 (check_later_rounds) take beyond after_round1_seconds: the
    step the Engine finishes past round 1's deadline, its checkpoint writes (``saves_s``) and the check's timing of
    a prediction batch (twice where the test images are more than one; ``timed``: taken already, by round1_replan,
    whose timing the check reuses). Uncounted, they ate round 1's margin: a 1-minute run cut round 1 to leave 25 s,
    its check found 22 s and asked for 23 s, and round 2 trained on the labelled images only after a round 1 cut
    for the pool's labelling (hunt hBV #1)."""
    timing = 0.0 if timed else (2 if n_test > 256 else 1) * per_image * min(n_test, 256)
    return step_s + saves_s + timing


def round1_least_seconds(rest_s: float, step_s: float, eval_s: float) -> float:
    """The least time round 1 needs with the later rounds planned (``rest_s``: after_round1_seconds and
    round1_end_seconds): its 5-step floor, the step past its deadline and an evaluation, the later rounds' least
    time and all of round1_leaves' margin for round 1 ending late. Planned on a squeezed margin, round 1 was cut to
    its floor (2.6 s, val at chance) for a labelling that the check before round 2 then found no time for; without
    the margin the later rounds are skipped at round 1's planning and round 1 trains until the closing work."""
    return (FLOOR_STEPS + 1) * step_s + eval_s + rest_s * (1 + ROUND1_MARGIN)


def later_rounds_seconds(step_s: float, eval_s: float, per_image: float, n_pool: int, n_rounds: int,
                         last_closing_s: float, close_evals: int = 2, n_test: int = 0) -> float:
    """The least time ``n_rounds`` more self-training rounds need, from the pool's labelling for the first of them
    on, at the speeds measured for the round before, counted as each round then spends it: the pool's labelling
    (pool_share_in_time's two timed batches, a val pass for the thresholds and the labelling itself, the whole pool
    or LABEL_SHARE of the time then left, one batch at least), the calibration at its planning (calibration_seconds:
    its task's ``n_test`` test images) and its least run as later_round_closing asks it (the floor, the step past
    it), the closing evaluations of all but the last (``close_evals`` each, as after_round1_seconds counts them),
    then the last stage's closing work; all but the labelling with ROUND1_MARGIN more. Counted as 9 steps, an
    evaluation and a batch, a check with 21 s left passed, the labelling took 5.8 s, the calibration 4.6 s (2.6 s
    estimated), and round 2's planning then skipped it with 11.5 s left against 11.7 s: the labelling was wasted."""
    batch = per_image * min(n_pool, 256)
    label_extra = (2 * batch if n_pool > 256 else 0.0) + (eval_s if n_pool else 0.0)
    per_round = label_extra + calibration_seconds(step_s, eval_s, per_image, n_test) + (FLOOR_STEPS + 1) * step_s
    others = (n_rounds * per_round + (n_rounds - 1) * close_evals * eval_s + last_closing_s) * (1 + ROUND1_MARGIN)
    # the labelling takes LABEL_SHARE of the time left then: of itself and the rest, where the rest just fits
    labelling = min(per_image * n_pool, max(batch, others * LABEL_SHARE / (1 - LABEL_SHARE)))
    return n_rounds * labelling + others


# of the budget: a labelled-only round is asked for FLOOR_STEPS more steps than its least run only where refusing it
# would leave less than this unused (labelled_only_seconds)
IDLE_SHARE = 0.10


def labelled_only_seconds(step_s: float, eval_s: float, per_image: float, last_closing_s: float, n_test: int,
                          spare_share: float) -> float:
    """The time a labelled-only round (no labelling of the pool, check_later_rounds) needs from the check on: its
    calibration (calibration_seconds), its least run as later_round_closing asks it (the floor, the step past it) and
    the closing work with ROUND1_MARGIN more, which also covers a slower calibration (the round's planning checks
    again and, short, skips it: round k - 1 predicts). FLOOR_STEPS more steps (a round of 5 steps is worth little)
    only where refusing it leaves at most IDLE_SHARE of the budget unused (``spare_share``: the time left beyond a
    refusal's closing work, run_rounds.refused_closing, as a share of the budget). Asked for them and the margin on
    all of it, a 1.5-minute run with 32 s left (about 19 s of them the closing work) trained nothing more, and 23 s
    went unused (hunt hCA #2)."""
    least = calibration_seconds(step_s, eval_s, per_image, n_test) + (FLOOR_STEPS + 1) * step_s
    slack = FLOOR_STEPS * step_s if spare_share <= IDLE_SHARE else 0.0
    return least + slack + last_closing_s * (1 + ROUND1_MARGIN)


def time_holds(need_s: float, left_s: float) -> bool:
    """Whether ``left_s`` seconds hold work estimated at ``need_s``: the check that skips self-training's later
    rounds (one place, which tests of the rounds themselves, in budgets of seconds, can relax)."""
    return need_s <= left_s


def least_run_holds(need_s: float, left_s: float) -> bool:
    """Whether the budget left (``left_s``) holds the least run (least_run_seconds), else the run is refused before
    training, or a later self-training round is skipped at its planning: one place, which the tests' runs in
    budgets of seconds relax (as time_holds)."""
    return need_s <= left_s
