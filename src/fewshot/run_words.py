"""The words of `fewshot run`'s lines and notes: the plan of a stage, what self-training kept, a skipped or shortened
round, an overrun. Text only, built from numbers the run has already measured or planned: nothing here times,
trains or writes, so the pipeline and its stage modules (run_stages, run_pseudo) share one wording."""

from __future__ import annotations

import math
from collections import Counter

from fewshot.errors import one_line
from fewshot.run_budget import FLOOR_STEPS


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


def overrun_warning(seconds: float, why: str, resumed: bool = False) -> str:
    """The start-up warning of a run that cannot keep its budget: it overran silently until its end. A resumed
    session keeps the run's budget and settings (--resume refuses others), so its advice is a new run's."""
    remedy = ("A larger --budget-minutes, or a smaller --img-size or --model, lets it fit." if not resumed else
              "A resumed run keeps its budget and settings: a new run (another --out) with a larger --budget-minutes, "
              "or a smaller --img-size or --model, would fit.")
    return one_line(f"[run] warning: {why}: the run will likely end about {max(1.0, seconds):.0f} s after its "
                    f"budget. {remedy}")


def resumed_late_warning(stage: str, left: float, need: float, step_s: float | None = None,
                         work: str = "evaluations, prediction and the report", then: str = "",
                         startup: float | None = None) -> str | None:
    """A stopped stage continued from its last.pt (``fewshot run --resume``) with ``left`` seconds of the budget
    (below 0: resumed past it), less than its closing work's ``need``: the least-run refusal is a fresh run's (a
    resume cannot change the budget), so the run ran late without an early word. It trains no further, so no step
    runs past its deadline: the run ends ``need - left`` late (past the budget, 0 s left said "about need s after").
    No larger budget is advised: the resume must repeat it. Where the work fits but not the one step (``step_s``, its
    logged speed) cap_resumed_budget keeps back beside it, only a note that the stage trains no further: a warning
    said so for a margin of 2 ms, and that the run ends "within its budget" in the same line. ``work``: the closing
    work in words; ``then``: the work after it that the lateness leaves out (a stage before the last). ``startup``:
    this session's seconds so far (its start-up and the work before the stage), named beside what the stop left: "0.5
    of 1 minute used before the stop", then "3.5 s left" did not say where 26 s had gone (hunt hBX #2). Else None."""
    if need <= left:
        if not step_s or left >= need + step_s:
            return None
        had, needs = seconds_apart(left, need)
        return one_line(f"[run] note: {stage} resumes with {had} of the budget left, enough for its closing work "
                        f"(about {needs}) but not for a training step besides ({step_text(step_s)} at its logged "
                        f"speed): it trains no further.")
    if left < 0:
        where = (f"{past_text(-left)} past the budget already, and its closing work needs about "
                 f"{seconds_text(need)} more at the measured speed ({work})")
    else:
        had, needs = seconds_apart(left, need)
        where = (f"with {had} of the budget left, less than its closing work needs at the measured speed (about "
                 f"{needs}: {work})")
    late = f"about {need - left:.0f} s" if need - left >= 1.0 else "less than 1 s"
    return one_line(f"[run] warning: {stage} resumes {where}{startup_words(left, startup)}: it trains no further, "
                    f"and the run will likely end {late} after its budget{', plus ' + then if then else ''}.")


def startup_words(left: float, startup: float | None) -> str:
    """What this resumed session has spent so far (``startup``) of the time the stop left (``left`` is what remains
    now), for the resumed-late warning; "" where the session's clock is not known."""
    if startup is None:
        return ""
    took, had = seconds_text(max(0.0, startup)), left + startup
    return (f"; this session's start-up and the work before this stage took {took}"
            + (f" of the {seconds_text(had)} the stop left" if had >= 0.05 else ", and the stop had left none"))


def stop_left_words(stop_left: float, left: float, had: str, end: str) -> str:
    """What this session's start-up cost a stage whose end it set (MoCo's, resumed_short_words): of the
    ``stop_left`` seconds the stop left it, ``left`` remain (``had``, in seconds_apart's words). The cost is the
    printed difference, so that "7.1 s ..., cost it 2.0 s of them, leaving 5.1 s" adds up as read, whatever digits
    seconds_apart gave ``had`` (review rev119 #4)."""
    total = seconds_text(stop_left)
    if max(0.0, stop_left - left) >= 0.5 * stop_left:
        return f"this session's start-up cost this stage all but {had} of the {total} the stop left it before {end}"
    digits = max(len(w.removesuffix(" s").partition(".")[2]) for w in (total, had))
    cost = max(0.0, float(total.removesuffix(" s")) - float(had.removesuffix(" s")))
    return (f"the stop left this stage {total} before {end}, and this session's start-up cost it {cost:.{digits}f} s "
            f"of them, leaving {had}")


def resumed_short_words(left: float, need: float, step_s: float, logged: bool = True, startup: float | None = None,
                        ends: str | None = None, plan_steps: int | None = None,
                        stop_left: float | None = None) -> str:
    """Why a resumed stage trains no further (run_stages.skip_short_resumed_training): ``left`` seconds before its end
    (``ends``: its closing work, else round 1's share), less than the ``need`` of its least run, or of the rest of its
    own plan where that is shorter (``plan_steps`` steps and the one past its end), at its steady step (``step_s``: its
    log.jsonl's where ``logged``, else its planning's timing). This session's start-up (``startup``: its seconds so
    far) is named as the cause only where it took most of what the stop left: a stop near the stage's end leaves it
    little whatever the start-up takes (review rev112 #2). ``stop_left``: the seconds the stop left a stage whose end
    was set after this session's start-up (MoCo's share of the time left, the run's first stage): the start-up took
    only its share's part of its seconds from it, and "took all but 0.2 s of the 17 s the stop left" named more than
    the stop left it (review rev117 #1). So the words say what the start-up cost this stage, not how long it took
    (an 8 s start-up read "took 4 s", review rev119 #3), in numbers that add up as printed (stop_left_words)."""
    end = ends or "its closing work"
    had, needs = seconds_apart(left, need)
    if startup is None:
        cause = f"{had} were left before {end}"
    elif stop_left is not None:  # the first stage: no work came before it
        cause = stop_left_words(stop_left, left, had, end)
    elif startup >= 0.5 * (left + startup):  # "took 14 s of the 14 s ..., leaving 0.1 s" read false (review rev114 #3)
        cause = (f"this session's start-up and the work before this stage took all but {had} of the "
                 f"{seconds_text(left + startup)} the stop left before {end}")
    else:
        cause = (f"the session before the stop used all but {seconds_text(left + startup)} of the time before {end}, "
                 f"and this session's start-up and the work before this stage {seconds_text(startup)} of them, "
                 f"leaving {had}")
    what = (f"a stage's least run ({FLOOR_STEPS + 1} training steps" if plan_steps is None else
            f"the rest of its own plan ({plan_steps} training step{'s' if plan_steps > 1 else ''} and the one past "
            f"its end")
    speed = "its logged speed" if logged else "the speed its planning timed"
    then = "goes straight to its closing work" if ends is None else "ends with its evaluation"
    return one_line(f"{cause}, less than {what}, about {needs} at {speed} of {step_text(step_s)} a step): it trains "
                    f"no further and {then}")


def moco_share_words(share: float) -> str:
    """MoCo's share in resumed_no_time_words, the setting's value at two digits: "(0.5 by run.pretrain_share)" read
    oddly, and a third printed 0.333333 (review rev119 #3)."""
    return f"MoCo's share (run.pretrain_share: {share:.2g})"


def resumed_no_time_words(left: float, budget_minutes: float | None, ends: str | None = None,
                          share: str | None = None) -> str:
    """Why a resumed stage whose budget cap_resumed_budget capped to what it had trained goes on to its closing work
    (``ends``: round 1's share; None: its closing work), said in the user's terms: the budget they gave and the
    ``left`` seconds. It said "continuing ... on its planned schedule", then the Engine's note named the capped
    train.budget_minutes=0.0318105 that no one set (review rev114 #4). ``share``: the stage's share of what that
    budget had left after this session's start-up (moco_share_words): MoCo's end comes where the run's budget
    still has the fine-tuning's, re-split at each session (PipelineRun.moco_end). It named "run.pretrain_share=0.5"
    as if set, and a share of the whole budget (review rev117 #5)."""
    then = "goes straight to its closing work" if ends is None else "ends with its evaluation"
    budget = f" of {minutes_text(budget_minutes)}" if budget_minutes else ""
    whose = (f"{share} of what the run's budget{budget} had left after this session's start-up," if share
             else f"the run's budget{budget}")
    where = (f"{past_text(-left)} past it already" if left < 0 else
             f"{past_text(left)} left, not enough for a training step")
    return one_line(f"no time is left of {whose} before {ends or 'its closing work'} ({where}): "
                    f"it trains no further and {then}")


def carried_skip_words(record: dict, ends: str | None = None) -> str:
    """Why a resumed stage trains no further where a session before the stop skipped its training (run_stages'
    carried ``resumed_training_skipped`` record, its capped config.yaml kept): said from that record, not from the
    capped budget, which every capped session saves ("its planned training time was used" was false where the run's
    budget ran out, review rev115 #1)."""
    then = "goes straight to its closing work" if ends is None else "ends with its evaluation"
    left, need = record.get("left_s"), record.get("least_s")
    if isinstance(left, (int, float)) and isinstance(need, (int, float)):
        had, needs = seconds_apart(left, need)
        why = f"{had} were left before {ends or 'its closing work'}, less than the {needs} it needed to train on"
    else:
        why = "too little time was left"
    return one_line(f"the session before the stop ended its training ({why}): it trains no further and {then}")


def past_text(x: float) -> str:
    """Seconds past the budget in words: "less than 0.1 s" where seconds_text would say "0.0 s"."""
    return seconds_text(x) if x >= 0.05 else "less than 0.1 s"


def resumed_predicting_warning(left: float, need: float, spent: float, report: bool = True) -> str | None:
    """A resumed run with no stage left to train whose prediction and report (``need``, the report without its
    images; ``report`` False: run.report is off, the prediction alone) do not fit the ``left`` seconds of the budget
    that this session's start-up (``spent``) left: it ran late without a word (hunt hBX #2). Nothing trains, so the
    prediction is already the least the run can do. Else None."""
    if need <= left:
        return None
    late = f"about {need - left:.0f} s" if need - left >= 1.0 else "less than 1 s"
    them = "they need" if report else "it needs"
    if left < 0:
        where = f"{past_text(-left)} past the budget already, and {them} about {seconds_text(need)} more"
    else:
        had, needs = seconds_apart(left, need)
        where = f"{had} of the budget left for {'them' if report else 'it'}, less than {them} (about {needs})"
    work = "the prediction and the report (without its images)" if report else "the prediction"
    return one_line(f"[run] warning: no stage is left to train, only {work}, and this session's start-up took "
                    f"{seconds_text(max(0.0, spent))}: {where} at the measured speed, so the run will likely end "
                    f"{late} after its budget.")


MOCO_CLOSING_WORK = "its kNN evaluation at the stop, its checkpoint writes and the backbone's export"


def pretrain_resumed_late_warning(left: float, need: float, startup: float | None = None) -> str | None:
    """resumed_late_warning of the MoCo stage continued from its last.pt with no training time left: its own closing
    work (pretrain_closing_seconds) no longer fits the budget left, and the fine-tuning comes after it. It said
    nothing of its own; the fine-tuning's floor warning came after MoCo's closing work and its own timing."""
    return resumed_late_warning("pretrain", left, need, work=MOCO_CLOSING_WORK,
                                then="the fine-tuning's least run after it (its timing, its floor of training steps "
                                     "and its closing work)", startup=startup)


def step_text(x: float) -> str:
    """A training step's time: in ms under 0.1 s ("a training step (0.0 s ...)" said nothing of a 4 ms step)."""
    return f"{x * 1000:.0f} ms" if x < 0.1 else seconds_text(x)


def min_epochs_warning(min_epochs: int, fits: float, budget_s: float, step_s: float, steps: int,
                       resumed: bool = False) -> str:
    """run.min_epochs above what a stage's time holds: it only keeps the stage's epoch cap from falling below it,
    and `run.min_epochs=30` trained 3 epochs without a word. A resumed session's advice is a new run's."""
    remedy = ("Give a larger --budget-minutes, or a smaller --img-size or --model, for more epochs." if not resumed
              else "A resumed run keeps its budget and settings: a new run (another --out) with a larger "
                   "--budget-minutes, or a smaller --img-size or --model, would train more epochs.")
    return one_line(f"[run] warning: run.min_epochs={min_epochs} asks for more epochs than this stage's "
                    f"{seconds_text(budget_s)} hold at the measured speed (about {fits:.1f}, {steps} steps an epoch at "
                    f"{step_s * 1000:.0f} ms a step): the budget ends the stage first, so it trains about {fits:.1f} "
                    f"(run.min_epochs is the least epoch cap of a stage, not a promise within --budget-minutes). "
                    f"{remedy}")


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


def labelled_only_why(k: int, left: float, need: float, planned: int) -> str:
    """Why round ``k`` trains on the labelled images only (summary.json and the run's line)."""
    dropped = "" if k >= planned else f" (round {planned} dropped)" if k + 1 == planned else \
        f" (rounds {k + 1}-{planned} dropped)"
    left_s, need_s = seconds_apart(left, need)
    return (f"{left_s} were left of the budget after round {k - 1}: too little for labelling the pool "
            f"and a round (about {need_s} at the measured speed), enough for a short round. Round {k} "
            f"goes on training round {k - 1}'s model on the labelled images until the closing work{dropped}; the "
            f"round that scores highest on val predicts")


# a session that ended with no stop recorded (kill -9, a crash, the machine went down): its last minutes are lost
UNRECORDED = ("the session before ended without recording its time (killed, crashed, or the machine stopped): "
              "what it ran after its last record is not counted")


def overrun_note(total_s: float, budget_s: float, trained_s: float, before_s: float | None = None) -> str:
    """The note of a run that took more than 5 % over its budget: what the time went to, and a budget that leaves
    training a fair share, where a larger one would (a 1.5-minute run that overran by 5 s was told that "at least 1
    minute" would do: the work around the training had taken longer than measured at its start, a busy machine).
    ``before_s``: on a resumed run, the time of the sessions before this one (resumed_overrun_note)."""
    if before_s is not None:
        return resumed_overrun_note(total_s, budget_s, trained_s, before_s)
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


# What a resumed session's start-up (imports, the data scan, the checks of the run) adds to a run at most, for the
# overrun note: an overrun past the time before the stop (all a resume can do again) and this is not the resume's
RESUME_START_UP_S = 15.0


def resumed_overrun_note(total_s: float, budget_s: float, trained_s: float, before_s: float) -> str:
    """overrun_note of a run that had more than one session: the resumed session's start-up, and the closing work
    a stop in it left to be done again, count in its time. A run stopped in its report (86 s of 90) and resumed
    ended 118 s with "A budget of at least 3 minutes": the stop, not the budget, made it late. A larger budget is
    advised where the sessions before went past the budget themselves (their work outside training, at least
    their time less all the training, then asks for it), or where the overrun is more than the resume can have
    added (RESUME_START_UP_S): stopped at 20 s of 90 and done at 150 s, the resume was blamed for 60 s over."""
    around = total_s - trained_s
    words = (f"[run] note: the run took {total_s:.0f} s, longer than its budget of {budget_s:.0f} s, in more than one "
             f"session (stopped and resumed): start-up, step-time calibration, evaluation, prediction and the report "
             f"took about {around:.0f} s of it, the resumed session's start-up and the closing work it did again "
             f"after the stop included ({before_s:.0f} s before the stop, {max(0.0, total_s - before_s):.0f} s since)")
    unexplained = total_s - budget_s > before_s + RESUME_START_UP_S
    if unexplained:  # the work outside training that a resume cannot have redone asks for the budget
        least = max(1, math.ceil(2 * max(0.0, around - before_s) / 60))
    else:
        least = max(1, math.ceil(2 * max(0.0, before_s - trained_s) / 60)) if before_s > 1.05 * budget_s else 0
    if least > budget_s / 60:
        return f"{words}. A budget of at least {least} minute{'s' if least != 1 else ''} leaves training a fair share."
    if unexplained:
        return (f"{words}, and it ran {total_s - budget_s:.0f} s over, more than the resume can have added (the "
                f"{before_s:.0f} s before the stop done again at most, and a start-up): the speeds measured at its "
                f"start may have been faster than the machine later was (other work on its cores?).")
    return (f"{words}. The work the resume did again made the run late, not the budget: a run that is not stopped "
            f"should end closer to its budget.")


def minutes_text(minutes: float) -> str:
    """A budget in minutes as said to the user: "1 minute", not "1 minutes" (a hunt read "done in 53 s of 60 s
    (1 minutes)")."""
    return f"{minutes:g} minute{'' if minutes == 1 else 's'}"


# near chance: the run's last word on a model whose predictions are little better than guessing (PipelineRun.predict)
COLLAPSE_SHARE = 0.8  # one class's share of a dataset's test predictions that reads as a collapsed model
COLLAPSE_LEAST_IMAGES = 10  # fewer test images than this say too little about their spread
ENOUGH_EPOCHS = 50  # the course's recipe: a stage that trained fewer may have been stopped before it learned
# the smaller model the near-chance advice names: resnet18 at half width, 2.8M parameters, a training step about
# 2.5x as fast as resnet18's at 32 px on one CPU thread (40 against 98 ms, batch 64); cpu_tiny is resnet18 itself,
# which `fewshot run` already picks for small images, so naming it sent users to the same model
SMALLER_MODEL = "--model resnet18 model.width=0.5"
SMALLER_MODEL_PARAMS = 2_820_000


def chance_level(classes: int, val_shares: list[float]) -> tuple[float, float]:
    """(chance, the val acc@1 a model must pass to be clearly above it), in percent. Chance is what always answering
    val's most common class scores (100/classes on an even val split). Clearly above: 1.5 x chance, at most chance
    plus a quarter of the room up to 100 %: 1.5 x 50 % called a healthy 70 % on 2 classes guessing (2 classes: 62.5,
    3: 50, 5: 30, 10: 15)."""
    chance = 100.0 * max([1.0 / max(1, classes), *val_shares])
    return chance, min(1.5 * chance, chance + (100.0 - chance) / 4)


def collapsed_class(predicted: list[int], val_shares: list[float]) -> tuple[int, int] | None:
    """(class, images) where one class takes COLLAPSE_SHARE or more of a dataset's test predictions while val says
    it is not that common (its val share at most half its share of the predictions), else None. The 176 of 200 of
    one 10-class dataset (88 %, val 10 %) counts; a 2-class dataset only with every image in one class (val 50 %)."""
    if len(predicted) < COLLAPSE_LEAST_IMAGES:
        return None
    (top, n), = Counter(predicted).most_common(1)
    share = n / len(predicted)
    val_share = val_shares[top] if 0 <= top < len(val_shares) else 0.0
    return (top, n) if share >= COLLAPSE_SHARE and val_share <= share / 2 else None


def near_chance_finding(classes: list[str], val_labels: list[int], val_acc1: float,
                        predicted: list[int]) -> dict | None:
    """summary.json's record of a dataset whose val acc@1 is not clearly above chance (chance_level), or whose test
    predictions fall nearly all in one class that val says is not that common (collapsed_class); None for neither,
    and for a dataset without val labels or whose val lacks a class (nothing to judge by: nothing said rather than a
    guess); None for a dataset of one class, whose chance is the 100 % it scores (a perfect model told it guessed)."""
    if not val_labels or len(classes) < 2:
        return None
    val_shares = [val_labels.count(c) / len(val_labels) for c in range(len(classes))]
    if not all(val_shares):  # val lacks a class: its "chance" (the commonest class's share) was 100 % for a one-class
        return None  # val, and a perfect model was told it guessed
    chance, clear = chance_level(len(classes), val_shares)
    collapsed = collapsed_class(predicted, val_shares)
    if val_acc1 > clear and collapsed is None:
        return None
    found = {"classes": len(classes), "val_acc1": round(val_acc1, 2), "chance_acc1": round(chance, 2),
             "clearly_above": round(clear, 2), "val_near_chance": val_acc1 <= clear}
    if collapsed is not None:
        top, n = collapsed
        found["test_collapsed"] = {"class": top, "name": classes[top], "images": n, "of": len(predicted),
                                   "val_share": round(100.0 * val_shares[top], 2)}
    return found


def near_chance_part(name: str, found: dict) -> str:
    """One dataset's words in near_chance_why."""
    words = []
    if found["val_near_chance"]:
        words.append(f"val acc@1 {found['val_acc1']:.2f}, not clearly above its chance of {found['chance_acc1']:.2f} "
                     f"({found['classes']} classes)")
    collapsed = found.get("test_collapsed")
    if collapsed:
        words.append(f"{collapsed['images']} of its {collapsed['of']} test images put in class {collapsed['class']} "
                     f"({collapsed['name']}), which holds {collapsed['val_share']:.0f} % of val")
    return f"{name}: {' and '.join(words)}"


def smaller_model_words(n_parameters, from_weights: bool = False) -> str:
    """", or a smaller, faster model (...)" where SMALLER_MODEL is one against the run's (at least half as many
    parameters), else "": a run of a small model was told to use a model no smaller than its own. None for a run
    started from --weights (``from_weights``): the weights do not fit a smaller model, and adding it was refused."""
    counted = isinstance(n_parameters, int) and not isinstance(n_parameters, bool)
    if not counted or n_parameters < 2 * SMALLER_MODEL_PARAMS or from_weights:
        return ""
    return (f", or a smaller, faster model ({SMALLER_MODEL}: {SMALLER_MODEL_PARAMS / 1e6:.1f}M parameters against "
            f"this run's {n_parameters / 1e6:.1f}M)")


def labelled_passes(stages: dict, predicting: str, repeat: int = 1) -> tuple[float | None, list[str]]:
    """(How many times the predicting model trained on the labelled images, the stages counted): self-training's
    rounds each continue the round before, so `finetune` counts round 1 and the middle rounds too, and a round on
    pseudo-labels holds the labelled images ``repeat`` times (run.pseudo_labelled_repeat) in each of its epochs.
    The last stage's epochs alone said "0.7 epochs" of a model that had seen the labelled images 5.5 times.
    None where a stage counted has no epoch count. An earlier round counts to its last epoch, though the next one
    continues from its best checkpoint (summary.json records no best epoch): a round that peaked early counts a
    little high, which the words' "about" allows."""
    def round_of(name: str) -> int | None:
        k = name.removeprefix("finetune_round")
        return int(k) if name.startswith("finetune_round") and k.isdigit() else None

    if predicting == "finetune_labelled" or (predicting != "finetune" and round_of(predicting) is None) \
            or "finetune_labelled" not in stages:  # no self-training, FixMatch, or round 1 predicts
        chain = [predicting]
    else:
        last = round_of(predicting)
        rounds = sorted(k for k in map(round_of, stages) if k is not None and (last is None or k <= last))
        chain = ["finetune_labelled", *(f"finetune_round{k}" for k in rounds)] + (["finetune"] if last is None else [])
    total = 0.0
    for name in chain:
        entry = stages.get(name) or {}
        epochs = entry.get("epochs")
        if not isinstance(epochs, (int, float)) or isinstance(epochs, bool):
            return None, chain
        total += epochs * (max(1, int(repeat)) if entry.get("pseudo_labels") is not None else 1)
    return total, chain


def _trained_words(epochs: float, over: list[str], few: bool) -> str:
    """"It trained 13.0 epochs" of one stage; "Over finetune_labelled and finetune it trained on the labelled
    images about 5.5 times" of the rounds a model continued."""
    if len(over) <= 1:
        return f"It trained {epochs:.1f} epochs" if few else f"It trained {epochs:.0f} epochs"
    stages = ", ".join(over[:-1]) + f" and {over[-1]}"
    return f"Over {stages} it trained on the labelled images about {epochs:.{1 if few else 0}f} times"


def near_chance_why(found: dict, stage: str, epochs: float | tuple | None, n_parameters: int | None = None,
                    from_weights: bool = False) -> str:
    """The words of the run's near-chance warning (summary.json's near_chance.why): the datasets, that the files are
    still valid, and the advice that fits how long the predicting model trained (``epochs``: one stage's epochs, or
    labelled_passes' (passes, stages)): a model stopped after a few epochs wants more time or a faster model first
    (one only where it is smaller than the run's, ``n_parameters``, and the run did not start from --weights,
    ``from_weights``), one that trained long enough wants more labels."""
    epochs, over = epochs if isinstance(epochs, tuple) else (epochs, [stage])
    parts = "; ".join(near_chance_part(name, f) for name, f in found.items())
    more = (f"a larger --budget-minutes{smaller_model_words(n_parameters, from_weights)} trains more; more labelled "
            f"images per class help too.")
    if epochs is None:
        advice = more[0].upper() + more[1:]
    elif epochs < ENOUGH_EPOCHS:
        advice = f"{_trained_words(epochs, over, True)} in this budget: {more}"
    else:
        advice = (f"{_trained_words(epochs, over, False)}, so more time alone may not help: more labelled images per "
                  f"class (and a look at the train folders' labels), or another --model, may.")
    return (f"the model that predicts ({stage}) is little better than guessing on {len(found)} "
            f"dataset{'s' if len(found) != 1 else ''} ({parts}): pred_all.json is complete and valid, but expect "
            f"{'this dataset' if len(found) == 1 else 'these datasets'} to score near chance on test. {advice}")
