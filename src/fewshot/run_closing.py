"""`fewshot run`'s budget arithmetic: the budget's split (plan_budget), the estimate of the closing work that the
stage training until it plans with (closing, closing_seconds) and its record in summary.json, and the least-run
refusals and step re-times that decide whether the budget left holds the run (refuse_unless_least_run_fits,
refuse_if_hopeless).

Apart from the run's phases (pipeline.py) because these methods revise one plan from this machine's measured speeds,
called from the stages' planning hooks (plan_stage's ``closing``) and from self-training's rounds (run_rounds).
ClosingMixin's methods are PipelineRun's. The timings and the clock are looked up in this module's namespace: tests
patch them on every module of the run (tests/helpers/run_patch.py).
"""

from __future__ import annotations

import time

from fewshot.errors import UserError
from fewshot.run_budget import (CLOSING_SHARE, FIGURE_S, FLOOR_STEPS, LEAST_RUN_S, calibration_seconds,
                                checkpoint_write_seconds, eval_passes, figure_scale, figure_seconds, floor_budget_error,
                                free_device_memory, hopeless_budget_error, last_read_seconds, least_run_holds,
                                least_run_seconds, measure_eval_seconds, measure_prediction_seconds,
                                measure_step_seconds, pretrain_closing_seconds, pretrain_least_seconds,
                                report_beyond_cap, report_seconds, resumed_eval_seconds, retimed_steps,
                                too_short_budget_error)
from fewshot.run_checks import cold_decode_total, size_options
from fewshot.run_fallbacks import (EVAL_SHARE, FIXMATCH_LEAST_EPOCHS, PRETRAIN_LEAST_EPOCHS, StageDropped,
                                   epochs_in, fixmatch_dropped_why, fixmatch_refused_words, pretrain_dropped_why)
from fewshot.run_stages import finetune_config
from fewshot.run_words import pretrain_resumed_late_warning, resumed_late_warning, resumed_predicting_warning
from fewshot.train.budget_reserve import WRITE_BYTES_PER_S


# here, not in run_budget: tests patch report_seconds on this module, and only a call from here sees the patch
def closing_seconds(task, eval_s: float, per_test_image: float, n_test: int, report_stages: int,
                    figure_s: float = FIGURE_S, images: bool = True, balance_check: bool = False,
                    write_bps: float = WRITE_BYTES_PER_S) -> float:
    """What a run does after its last training step, estimated from this machine's measured speed: the
    stage's closing evaluations (the stopped epoch's, of both the EMA and the raw weights where there is an EMA:
    eval_passes; the best checkpoint's) and checkpoint writes, one prediction pass over the test images (and one
    over val where ``balance_check``: run.balance reads val to decide and to test for a skew), and the report
    (report_seconds; ``images`` False: without its image-based parts). ``write_bps``: bytes a second of the
    checkpoint writes, the slowest rate a stage of this session timed (note_writes), else a guess."""
    saves = checkpoint_write_seconds(task, write_bps)
    base, drawn = report_seconds(task, eval_s, report_stages, figure_s)
    evaluations = (eval_passes(task) + 1 + int(balance_check)) * eval_s
    return evaluations + saves + per_test_image * n_test + base + (drawn if images else 0.0)


def session_seconds(run, now: float) -> float | None:
    """A resumed session's seconds at ``now``: the run's clock (``t_start``, moved back by the sessions before at
    start_state) less their ``used`` time. None for a fresh run, or a stand-in without that clock."""
    t_start, used = getattr(run, "t_start", None), getattr(run, "used", None)
    if not getattr(run, "resume", False) or t_start is None or used is None:
        return None
    return now - t_start - used


RETIME_STEPS = 2  # a re-time that finds no faster speed stops after its warm-up and one step (retime_step_seconds)
CURVES_S = 0.6  # MoCo's curves plot at FIGURE_S: 1.3-2.2 s timed at 1.3-2.9x that figure speed on 2 busy cores


def _step_words(steps: list[float]) -> str:
    """Step speeds in words: "20000 ms a step", "4000 and 30 ms a step" (MoCo's, then the fine-tuning's)."""
    return f"{' and '.join(f'{s * 1000:.0f}' for s in steps)} ms a step"


class ClosingMixin:
    """PipelineRun's budget: its split, the closing work's estimate and record, the least-run refusals and the
    re-times of a busy timing."""

    def note_writes(self, rate: float | None) -> None:
        """A stage's checkpoint write rate as timed (Engine.write_rate; None: it wrote nothing). The closing work's
        estimate counts the next stage's writes at the slowest rate of the session (``writes_bps``), never above
        WRITE_BYTES_PER_S: on a busy machine round 1's took 3.9 s, counted 1.1 s; and one fast stage (a quiet
        moment, a tmpfs) must not shrink the estimate below what a slower stage timed, or below the old guess. Kept in
        run_state.json (``writes_bps``): a --resume counted the guess again (1.1 s where the run had timed 3.9 s)."""
        if rate and rate < self.writes_bps:
            self.writes_bps = rate
            state = getattr(self, "state", None)
            if state is not None:
                state.data["writes_bps"] = rate
                state.save()

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
        # the slowest checkpoint write rate an earlier session timed (note_writes; an older run_state.json: the guess)
        self.writes_bps = min(self.writes_bps, self.state.data.get("writes_bps") or WRITE_BYTES_PER_S)
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
        report_plan["beyond_cap"] = report_beyond_cap(task, self.report_stages, report_plan["figure_s"])
        need = closing_seconds(task, eval_s, per_test_image, len(self.test_set), self.report_stages,
                               report_plan["figure_s"], balance_check=self.balance != "off",
                               write_bps=self.writes_bps) + CLOSING_SHARE * budget_s
        report_plan["least"] = need - report_plan["seconds"][1]  # the report's image-based parts left out
        if step_s is not None and self.semi == "fixmatch":  # too short to learn: the labelled-only fine-tune instead
            self.drop_fixmatch_unless_it_fits(task, step_s, need)
        if step_s is not None and self.semi != "pseudo":  # self-training's round 1: round1_closing checks it
            step_s = self.refuse_unless_least_run_fits([(task, step_s)])[-1]  # re-timed where it did not fit
        if step_s is not None:
            self.say_fixmatch_dropped()  # FixMatch's fallback passed its least-run check (or had no need of one)
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
        last.pt) whose closing work no longer fits the budget left (warn_if_resumed_late). A resumed stage's
        ``eval_s`` is the earlier session's (its log.jsonl): it counts at this session's speed where that is slower
        (resumed_eval_seconds)."""
        per_image = None
        if step_s is None:
            per_image = measure_prediction_seconds(task, self.test_set.images)
            eval_s = resumed_eval_seconds(task, eval_s, per_image)
        need = self.closing(task, eval_s, step_s, per_image)
        if step_s is None:
            self.warn_if_resumed_late("finetune", need, task)
        return need

    def drop_fixmatch_unless_it_fits(self, task, step_s: float, need: float) -> None:
        """FixMatch dropped (StageDropped) where the time left, less the closing work (``need``), holds fewer than
        FIXMATCH_LEAST_EPOCHS epochs of the labelled images at its step speed: a 5-step FixMatch stage scored 16 %
        where the labelled-only fine-tune scored 83 % in the same minute (hunt hBQ). Checked before the least-run
        refusal, which a budget that holds the labelled-only fine-tune no longer meets. A busy timing is timed again
        only where the fastest step seen would fit: each FixMatch step timed costs a few of the fallback's."""
        steps = len(task.plan_epoch(0))

        def schedule(steps_s: list[float]) -> float:  # the least FixMatch is kept for, and the step past it
            return FIXMATCH_LEAST_EPOCHS * steps * (1 + EVAL_SHARE) * steps_s[0] + steps_s[0] + need

        step_s = getattr(task, "retimed_step_s", None) or step_s  # a busy timing timed again: the faster
        if least_run_holds(schedule([min(step_s, getattr(task, "fastest_step_s", step_s))]), self.left_s()):
            step_s = retimed_steps(measure_step_seconds, [(task, step_s)], schedule, self.left_s, least_run_holds)[0]
        if not least_run_holds(schedule([step_s]), self.left_s()):
            left = self.left_s() - need - step_s
            self.fixmatch_drop = {"least_s": schedule([step_s]), "step_s": step_s}  # for the fallback's refusal
            raise StageDropped(fixmatch_dropped_why(epochs_in(left, step_s, steps), left, step_s))

    def warn_if_resumed_late(self, stage: str, need: float, task=None) -> None:
        """The early word a fresh run gets from its least-run refusal or plan_stage's floor warning, for a stage
        continued on --resume: a warning where the budget left cannot hold its closing work (``need``), the run then
        ending late; a note where it holds that but not the kept-back step too (the task's ``resumed_step_s``, set by
        finetune_stage from its log.jsonl): it trains no further (cap_resumed_budget). Not a refusal: a resume cannot
        change the budget. The need counts Engine.resume()'s read of last.pt, still ahead (last_read_seconds); the
        warning names this session's time so far (session_seconds), which the time left has already lost."""
        step_s = getattr(task, "resumed_step_s", None)
        need += last_read_seconds(task) if task is not None else 0.0
        now = time.monotonic()
        words = resumed_late_warning(stage, self.last_end - now, need, step_s, startup=session_seconds(self, now))
        if words is not None:
            print(words, flush=True)

    def warn_if_predicting_late(self, task, eval_s: float) -> None:
        """A resumed run with no stage left to train (each finished, reused or skipped before the stop) goes
        straight to prediction and the report: where the time left could not hold them it said nothing and ran 8 %
        past its budget (hunt hBX #2). Warned as a resumed stage is, from this machine's speeds now: the test
        prediction, val's for run.balance and the report without its images (report_skips_images leaves them out
        where they do not fit), against what this session's start-up left. The speed is the report's val evaluation
        (``eval_s``, timed already) per image; one prediction batch is timed only where nothing timed one (0): the
        warning's own timing made a late run later (review rev104)."""
        if not self.resume or task is None:
            return
        n_val, images = len(task.val_set), self.test_set.images
        if eval_s > 0 and n_val:
            per_image = eval_s / n_val
        else:  # one batch, one try (measure_prediction_seconds times two where it has more)
            per_image = measure_prediction_seconds(task, images[:256]) if images is not None else 0.0
        need = (per_image * (len(self.test_set) + (n_val if self.balance != "off" else 0))
                + self.report_plan["seconds"][0] + CLOSING_SHARE * self.budget_s)
        now = time.monotonic()
        startup = getattr(self, "startup_s", None)  # set where "[run] resuming" is said (start_state)
        words = resumed_predicting_warning(self.t_start + self.budget_s - now, need,
                                           now - self.t_start - self.used if startup is None else startup,
                                           report=bool(self.report_stages))
        if words is not None:
            print(words, flush=True)

    def plan_closing(self, need: float) -> None:
        """Keep the closing estimate of the stage planned to train until it (``need``, the margin included), and
        where its last step ends at the latest on the run's clock, for summary.json's ``closing_seconds``: the 1-
        and 2-minute runs ended 6-27 s early, and the summary did not say which part of the plan was off."""
        self.closing_plan = {"need": need, "margin": CLOSING_SHARE * self.budget_s,
                             "ends_at": self.last_end - need - self.t_start}
        report_plan = getattr(self, "report_plan", None) or {}
        if report_plan.get("seconds"):  # the report's part of it, and the figure speed its drawing was scaled by
            base, images = report_plan["seconds"]
            self.closing_plan["report"] = {"figure_s": round(report_plan["figure_s"], 3), "base": round(base, 2),
                                           "images": round(images, 2) if need > report_plan.get("least", need) else 0}

    def closing_record(self, total_s: float) -> dict | None:
        """summary.json's ``closing_seconds``: the closing work as the predicting stage planned it (``estimated``,
        and the ``margin`` of the budget kept beyond it), as it took (``real``: from the end of the last stage's
        training, run_state's ``trained_at``, to the run's end), ``training_late`` (that end less the latest end the
        plan gave its last step; negative: early), and the report's part of the estimate (``report``: the figure
        speed its drawing was scaled by, ``base`` and ``images`` seconds, images 0 where planned without them).
        Counted from the planned end, ``real`` took in a stage that ended early or ran past it (its 5-step floor),
        the very thing the record is to tell apart. None where no stage trained until it this session (a resumed
        run with its stages done, or a round that ended at its share before a later one was skipped)."""
        plan = self.closing_plan
        if plan is None:
            return None
        stages = getattr(getattr(self, "state", None), "data", {}).get("stages", {})
        ends = [entry["trained_at"] for entry in stages.values() if isinstance(entry.get("trained_at"), (int, float))]
        record = {"estimated": round(plan["need"] - plan["margin"], 2), "margin": round(plan["margin"], 2),
                  **({"report": plan["report"]} if "report" in plan else {})}
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
        now = time.monotonic()
        words = pretrain_resumed_late_warning(self.t_start + self.budget_s - now, need, session_seconds(self, now))
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
        plans anew (stopped before its last.pt) keeps back; it is refused only where no stage had begun before."""
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

        after_moco = self.t_start + self.budget_s - self.pre_end

        def needed(ft_s: float) -> float:  # MoCo's closing work and the fine-tuning's least time, after its deadline
            fine_tuning = (calibration(ft_s) + self.after_moco_seconds(ft_s)
                           + least_run_seconds(ft_s, self.report_plan["least"]))
            return pretrain_closing_seconds(eval_s, n_params) + fine_tuning

        step_s, ft_step = self.refuse_unless_least_run_fits([(task, step_s), (probe, ft_step)], before, first)
        del probe  # its model sat on the device next to MoCo's for the whole stage
        free_device_memory(self.device)
        keep_s = max(0.0, needed(ft_step) - after_moco)  # past its share
        self.drop_pretrain_unless_it_fits(task, step_s, keep_s)
        task.after_moco_s = needed(ft_step)  # recorded (after_s): a resume counts its keep-back again from it
        return keep_s

    def after_moco_seconds(self, ft_s: float) -> float:
        """What comes between MoCo's last step and the fine-tuning's first that MoCo's closing work and the
        fine-tuning's calibration leave out, at ``ft_s`` a fine-tuning step: MoCo's curves plot (CURVES_S at this
        machine's figure speed), and where self-training's later rounds would be skipped (the case in which MoCo
        keeps back) round 1's re-time of its step (round1_retimed, or plan_stage's floor_retimed), whose warm-up and
        first step find a slow machine slow. Uncounted (1.2-2.9 s), a 1-minute --pretrain run's round 1 found no
        time for its floor and the run took 63-65 s."""
        curves = CURVES_S * figure_scale(self.report_plan["figure_s"])
        later = self.semi == "pseudo" and int(self.r["pseudo_rounds"]) > 1
        return curves + (RETIME_STEPS * ft_s if later else 0.0)

    def drop_pretrain_unless_it_fits(self, task, step_s: float, keep_s: float) -> None:
        """MoCo dropped (StageDropped) where its share, less ``keep_s`` (the fine-tuning's least time and its own
        closing work), cannot hold MoCo's least run: PRETRAIN_LEAST_EPOCHS epochs of its pool, or plan_stage's
        floor of steps where that is more (a pool of 6 batches: 3 steps), and the step past its deadline. At 1
        minute a 0.8-epoch MoCo stage left the fine-tuning 0 s and the run ended 4.5 s past its budget (hunt hBQ);
        a rule of half an epoch alone kept MoCo where its floor then overran (review rev86). Checked after the
        least-run refusal, whose re-time of a busy step (against the whole budget left) it plans with: a budget
        that cannot hold MoCo's floor is still refused, naming no --pretrain. A busy timing is timed again only
        where the fastest step seen would fit, as FixMatch's."""
        per_epoch = len(task.plan_epoch(0))
        least = max(FLOOR_STEPS, PRETRAIN_LEAST_EPOCHS * per_epoch)  # the steps plan_stage trains at the least

        def share(steps_s: list[float]) -> float:  # the least run, the step past its deadline and the keep-back
            return least * steps_s[0] + steps_s[0] + keep_s

        def left() -> float:
            return self.pre_end - time.monotonic()

        step_s = getattr(task, "retimed_step_s", None) or step_s  # a busy timing timed again: the faster
        if least_run_holds(share([min(step_s, getattr(task, "fastest_step_s", step_s))]), left()):
            step_s = retimed_steps(measure_step_seconds, [(task, step_s)], share, left, least_run_holds)[0]
        if least_run_holds(share([step_s]), left()):
            return
        raise StageDropped(pretrain_dropped_why(left() - keep_s - step_s, step_s, per_epoch))

    def time_fine_tuning(self) -> tuple:
        """A fine-tuning task as the stage after MoCo builds it (its weights not read: the speed does not depend on
        them), with its step and per-test-image prediction seconds: (task, step_s, per_image). The caller frees
        the task (free_device_memory) once timed. FixMatch's pool is the share start-up decoded (fixmatch_limit):
        the whole cold pool was decoded here (3,000 slow files, 18 s of a 1-minute run, review of rev76)."""
        from fewshot.train.supervised import SupervisedTask

        fcfg = finetune_config(self.cfg, self.cfg["model"]["weights"], self.semi)
        probe = SupervisedTask(fcfg, self.infos, self.device, self.ctx, resuming=True, quiet_weights=True,
                               pool_limit=self.fixmatch_limit)
        return probe, measure_step_seconds(probe), measure_prediction_seconds(probe, self.test_set.images)

    def refuse_unless_least_run_fits(self, timed: list, before=None, first=None) -> list[float]:
        """At the planning of the first stage this session trains (a fresh run): refuse, before any training,
        a budget that cannot hold even the least run (least_run_seconds), and remove what the run wrote.
        ``timed``: [(task, its step seconds)], the last stage's last; ``before(*steps)``: the least time of the work
        before the last stage (MoCo's, from its planning) at those speeds, ``first(*steps)`` its words for the
        error. Returns the step speeds the check rests on: a timing that did not fit is timed again first
        (steps_that_fit), and a faster one is what the stage plans with."""
        steps = [step_s for _, step_s in timed]
        # a stage has trained (or began, on a resume): plan_stage warns. A resume where none had (run_state.json's
        # `stages: {}`) is refused as a fresh run is: it overran its budget by 58 % with a near-chance model
        if self.fit_seconds or (self.resume and self.training_began()):
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
                                       first(*steps) if first else "",
                                       resumed=(self.out, self.used) if self.resume else None)
        drop = self.fixmatch_drop
        if drop is not None and "least_s" in drop:  # FixMatch dropped for this fallback: what FixMatch would need
            error = fixmatch_refused_words(error, self.budget_s, used, drop["least_s"], drop["step_s"])
        self.undo_start(new_entries=self.resume)
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
        hints = f", or a smaller {smaller_what(self.cfg['model'])}" + (", or no --pretrain" if moco else "")
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
        shown = step_s if step_s is not None else provisional
        if shown is None:  # nothing timed yet (decoding took the budget): no speed to name
            error = hopeless_budget_error(budget_s, used, started=True, undone=self.locked,
                                          cold=cold_decode_total(self.cold_decode))
        elif LEAST_RUN_S >= least_run_seconds(shown, 0.0):  # the floor refused, which no model or size shortens
            error = floor_budget_error(budget_s, used, shown, self.locked)
        else:
            error = _steps_budget_error(self, budget_s, used, shown, timed=step_s is not None)
        self.undo_start()
        raise error

    def training_began(self) -> bool:
        """Whether a stage of this run has recorded "began" (its training started), in its run_state.json."""
        return self.state is not None and any(st.get("status") for st in self.state.data["stages"].values())


def smaller_what(model_cfg: dict) -> str:
    """"--model or --img-size", less --img-size where the model takes no size below its own (input_sizes.
    takes_smaller): efficientformer_l1 at 224 px, the one size it takes, was advised a smaller --img-size."""
    from fewshot.models.input_sizes import takes_smaller

    taken = takes_smaller(model_cfg["name"], int(model_cfg["img_size"]), size_options(model_cfg))
    return "--model or --img-size" if taken else "--model"


def _steps_budget_error(run, budget_s: float, used: float, shown: float, timed: bool) -> UserError:
    """refuse_if_hopeless's refusal where the least run's steps at ``shown`` (``timed``: two or more steps were timed,
    else the fastest before that) are the need it refused on: the words and the budget named follow from it."""
    cfg = run.cfg
    return too_short_budget_error(budget_s, used, least_run_seconds(shown, 0.0), shown,
                                  f"{cfg['model']['name']} at {cfg['model']['img_size']}px",
                                  run.least_run_hints(bool(cfg["run"].get("pretrain"))), run.locked,
                                  untimed="its steps alone, at the fastest step timed: the timing stopped there, as "
                                  "they did not fit" if timed else "its steps alone, at the fastest step before two "
                                  "were timed (a warm-up may be slower than the rest): the budget was spent by then")
