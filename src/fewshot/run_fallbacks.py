"""Stages of `fewshot run` dropped at their planning where the budget cannot give them a useful schedule: FixMatch
(the labelled-only fine-tune trains instead) and MoCo pretraining (the fine-tuning starts without it). Each is said
in one line, kept in summary.json and in the run's state (a --resume plans without the stage again).

At 1 minute on a 21-class root a FixMatch stage planned 5 steps (1.9 s a step) and scored 16 % on test where the
labelled-only fine-tune scored 83 %; a MoCo stage of 0.8 epoch left the fine-tuning 0 s and the run ended 4.5 s past
its budget (hunt hBQ). The checks themselves are ClosingMixin's (run_closing: they read the run's clock)."""

from __future__ import annotations

import shutil

from fewshot.errors import UserError, one_line
from fewshot.run_budget import FLOOR_STEPS, _least_minutes
from fewshot.run_stages import finetune_config

# FixMatch's least schedule, in epochs of the labelled images (its steps draw one labelled batch each). Measured on
# hunt hBQ's root B (3 datasets, 21 classes, resnet18 at 32 px): the labelled-only fine-tune's val acc@1 was 20 %
# after 3 epochs and 52 % after 6 (of a 12-epoch schedule), and FixMatch's unlabeled loss adds nothing before the
# model's predictions clear semi.threshold: a shorter FixMatch schedule cannot learn, the labelled-only one can.
FIXMATCH_LEAST_EPOCHS = 6
# MoCo's least schedule, in epochs of its pool: less leaves the backbone about as it was. Half an epoch, not one: the
# demo's 3-minute --pretrain run gets about 2 epochs on 2 quiet CPU cores and about 1 on a busy machine (fER), where a
# 1-epoch floor would have dropped it
PRETRAIN_LEAST_EPOCHS = 0.5
EVAL_SHARE = 0.1  # of an epoch's time, what plan_stage spaces a stage's evaluations to cost


class StageDropped(Exception):
    """Raised by a stage's planning hook where its schedule would be too short to be of use (``why``, in words)."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def epochs_in(seconds: float, step_s: float, steps_per_epoch: int) -> float:
    """Epochs a stage's schedule of ``seconds`` holds at ``step_s`` a step, its evaluations counted."""
    return seconds / max(step_s * max(1, steps_per_epoch) * (1 + EVAL_SHARE), 1e-9)


FIXMATCH_MORE_BUDGET = " (a larger --budget-minutes keeps FixMatch)"  # fixmatch_dropped_why's advice, its last words
PRETRAIN_MORE_BUDGET = " (a larger --budget-minutes keeps --pretrain)"  # and pretrain_dropped_why's


def fixmatch_dropped_why(epochs: float, left_s: float, step_s: float) -> str:
    """The words of FixMatch's drop: the schedule it would get, and why that is too short."""
    return (f"its schedule would hold about {max(0.0, epochs):.1f} epochs of the labelled images in the "
            f"{max(0.0, left_s):.0f} s left to it ({step_s * 1000:.0f} ms a step), fewer than the "
            f"{FIXMATCH_LEAST_EPOCHS} it needs to learn; the fine-tuning trains on the labelled images only"
            f"{FIXMATCH_MORE_BUDGET}")


def fixmatch_kept_off_line(why: str) -> str:
    """A resume's line of FixMatch's drop in an earlier session (kept_off_line)."""
    return kept_off_line("--semi fixmatch", why, FIXMATCH_MORE_BUDGET, "FixMatch")


def pretrain_kept_off_line(why: str) -> str:
    """A resume's line of MoCo's drop in an earlier session (kept_off_line)."""
    return kept_off_line("--pretrain", why, PRETRAIN_MORE_BUDGET, "--pretrain")


def kept_off_line(flag: str, why: str, advice: str, kept: str) -> str:
    """A resume's line of a stage dropped in an earlier session: the why without its ``advice`` of a larger
    --budget-minutes, which --resume refuses (it keeps the run's budget), and what the user can do instead."""
    return one_line(f"[run] {flag} stays skipped (earlier session): {why.removesuffix(advice)}. A resumed run keeps "
                    f"its budget: a new run (another --out) with a larger --budget-minutes keeps {kept}.")


def pretrain_dropped_why(left_s: float, step_s: float, per_epoch: int) -> str:
    """The words of MoCo's drop: the schedule it would get once the fine-tuning's least time is kept back, in
    epochs, or in steps where plan_stage's floor is more than PRETRAIN_LEAST_EPOCHS epochs ("0.6 epochs ... less
    than the 0.5" read as a contradiction, review rev86)."""
    left_s = max(0.0, left_s)
    steps = left_s / max(step_s, 1e-9)
    if FLOOR_STEPS > PRETRAIN_LEAST_EPOCHS * per_epoch:
        held, least = (f"about {steps:.1f} steps", f"the {FLOOR_STEPS} steps that MoCo trains at the least "
                                                   f"({per_epoch} steps make an epoch of its pool)")
    else:
        held, least = (f"about {steps / max(1, per_epoch):.1f} epochs of its pool",
                       f"the {PRETRAIN_LEAST_EPOCHS:g} epochs a pretraining needs to change the backbone")
    return (f"MoCo's share would hold {held} ({left_s:.0f} s at {step_s * 1000:.0f} ms a step) once the "
            f"fine-tuning's least time is kept back, less than {least}; the fine-tuning gets the whole budget"
            f"{PRETRAIN_MORE_BUDGET}")


def fixmatch_refused_words(error: UserError, budget_s: float, used_s: float, fixmatch_s: float,
                           step_s: float) -> UserError:
    """The least-run refusal of the labelled-only fine-tune that replaced FixMatch, with what FixMatch's own least
    run needs: its "Give --budget-minutes" alone is sized for the fallback, and a rerun with --semi fixmatch at that
    budget dropped FixMatch again (review rev86 #6)."""
    minutes = _least_minutes(budget_s, used_s + fixmatch_s)
    return UserError(one_line(
        f"{error} This is the least run without FixMatch, which the budget cannot give its "
        f"{FIXMATCH_LEAST_EPOCHS} epochs of the labelled images either: --semi fixmatch needs about {fixmatch_s:.0f} "
        f"s more ({step_s * 1000:.0f} ms a step, and the closing work), so give --budget-minutes {minutes:g} or more "
        f"to keep FixMatch."))


class FallbacksMixin:
    """PipelineRun's word and record of a dropped stage, and the plan without it."""

    fixmatch_drop: dict | None = None  # a FixMatch drop not yet said: its why, and its least run's seconds and step
    fixmatch_dropped_before: str | None = None  # a resume's FixMatch drop of an earlier session: its why
    pretrain_dropped_before: str | None = None  # a resume's MoCo drop of an earlier session: its why

    def drop_fixmatch(self, why: str) -> None:
        """The labelled-only fine-tune in FixMatch's place: its config, a fresh stage folder. The note waits for
        the fallback's least-run check (say_fixmatch_dropped): said before a refusal, it told of a fine-tune that
        never ran."""
        self.fixmatch_drop = {**(self.fixmatch_drop or {}), "why": why}
        self.skip_fixmatch_in_summary(why)
        self.state.data["fixmatch_skipped"] = why
        # FixMatch's settings and pool, for a resume's summary: it does not load the pool again (fixmatch_kept_off)
        self.state.data["fixmatch_planned"] = self.summary["fixmatch_skipped"].get("planned")
        self.state.save()
        self.semi = "off"
        self.fcfg = finetune_config(self.cfg, self.weights, "off")
        shutil.rmtree(self.fdir, ignore_errors=True)  # made for FixMatch's stage, nothing trained

    def say_fixmatch_dropped(self) -> None:
        """drop_fixmatch's note, once the labelled-only fine-tune's least run has passed its check."""
        if self.fixmatch_drop is not None and self.fixmatch_drop.get("why"):
            print(one_line(f"[run] --semi fixmatch skipped (planned, not an error): {self.fixmatch_drop['why']}."),
                  flush=True)
        self.fixmatch_drop = None

    def drop_pretrain(self, why: str) -> None:
        """The run without its MoCo stage: the note, the record, and the fine-tuning's settings as without it."""
        print(one_line(f"[run] --pretrain skipped (planned, not an error): {why}."), flush=True)
        self.summary["pretrain_skipped"] = {"why": why}
        self.state.data["pretrain_skipped"] = why
        self.state.save()
        self.r["pretrain"] = False  # the fine-tuning's lr as without MoCo (finetune_config)
        shutil.rmtree(self.out / "pretrain", ignore_errors=True)  # made for MoCo's stage, nothing trained

    def pretrain_kept_off(self) -> None:
        """A resumed run whose MoCo stage was dropped in an earlier session (run_state.json) starts up without it: its
        pool is neither decoded nor held to a MoCo batch (decode_inputs), out of a budget already short. Its share
        (moco_limit) is still read from the state: self-training's and FixMatch's shares were drawn inside it first.
        Said after "[run] resuming" (say_kept_off)."""
        why = self.state.data.get("pretrain_skipped") if self.state is not None else None
        if why and self.r["pretrain"]:
            self.pretrain_dropped_before = why

    def fixmatch_kept_off(self) -> None:
        """A resumed run whose FixMatch was dropped in an earlier session (run_state.json) trains without it from the
        start-up on: its pool neither decoded nor loaded. The resume announced FixMatch on its pool and loaded it,
        out of a budget already short, then trained without it (hunt hBU #3). Said once the run says it resumes
        (say_kept_off): said here, it came before "[run] resuming" (review rev92 #3)."""
        why = self.state.data.get("fixmatch_skipped") if self.state is not None else None
        if why and self.semi == "fixmatch":
            self.semi = "off"
            self.fixmatch_dropped_before = why

    def say_kept_off(self) -> None:
        """pretrain_kept_off's and fixmatch_kept_off's lines, in the stages' order, after start_state's "[run]
        resuming" line."""
        if self.pretrain_dropped_before:
            print(pretrain_kept_off_line(self.pretrain_dropped_before), flush=True)
        if self.fixmatch_dropped_before:
            print(fixmatch_kept_off_line(self.fixmatch_dropped_before), flush=True)

    def dropped_before(self) -> None:
        """A resumed run's stages dropped in an earlier session stay dropped (run_state.json), read at the start-up
        (pretrain_kept_off, fixmatch_kept_off) and recorded here in the summary as the first session recorded them."""
        data = self.state.data
        if self.pretrain_dropped_before:
            self.r["pretrain"] = False
            self.summary["pretrain_skipped"] = {"why": self.pretrain_dropped_before}
        why = self.fixmatch_dropped_before
        if why:
            # a summary kept before the drop (MoCo's stage) is the state's own dict: the drop's save wrote its record
            # there, planned included, and a state from before fixmatch_planned holds planned only there (rev92 #6)
            before = self.summary.get("fixmatch_skipped")
            planned = before.get("planned") if isinstance(before, dict) else None
            self.skip_fixmatch_in_summary(why, planned if planned is not None else data.get("fixmatch_planned"))

    def skip_fixmatch_in_summary(self, why: str, planned: dict | None = None) -> None:
        """summary.json's record of the drop: FixMatch's settings and pool move from ``semi`` (what trained, which a
        reader took FixMatch to have done, review rev86) to ``fixmatch_skipped`` beside the why (``planned``: a
        resume's record of them, whose start-up did not load the pool)."""
        planned = self.summary.pop("semi", None) or planned
        self.summary["fixmatch_skipped"] = {"why": why, **({"planned": planned} if planned is not None else {})}
