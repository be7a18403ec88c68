"""Self-training's rounds before the last (`fewshot run`, run.semi_method=pseudo): round 1 on the labelled images,
the pool's labelling by the round before, the middle rounds, and the decisions that drop or skip the later rounds
the time left cannot hold (decide, round1_closing, check_later_rounds, later_round_closing).

Apart from the run's phases (pipeline.py) because the rounds are the run's one loop of stages, with a plan of their
own kept for a --resume (run_state.json's ``self_training``). RoundsMixin's methods are PipelineRun's; the last round
(`finetune`) is trained by PipelineRun.last_stage, which a LaterRoundSkipped from its planning hook leaves untrained.
"""

from __future__ import annotations

import functools
import shutil
import time

from fewshot.run_budget import (FIGURE_S, FLOOR_STEPS, LABEL_SHARE, ROUND1_MARGIN, after_round1_seconds,
                                checkpoint_write_seconds, eval_passes, figure_seconds, labelled_only_seconds,
                                later_rounds_seconds, least_run_holds, least_run_seconds, measure_prediction_seconds,
                                measure_step_seconds, report_stage_seconds, resumed_eval_seconds, retimed_steps,
                                round1_end_seconds, round1_leaves, round1_least_seconds, time_holds, trained_speeds)
from fewshot.run_pseudo import pseudo_label_pool, recorded_pseudo_labels
from fewshot.run_reuse import reusable_stage
from fewshot.run_stages import gentle_lr, gently_entry, labelled_only_round, round_recipe, round_speeds
from fewshot.run_words import labelled_only_why, seconds_apart, seconds_text
from fewshot.train.budget_reserve import WRITE_BYTES_PER_S
from fewshot.utils import derive_seed


class LaterRoundSkipped(Exception):
    """Raised by plan_stage's hook of an optional later round (PipelineRun.later_round_closing) whose least run does
    not fit the time left: the round loop leaves it untrained and the round before it predicts."""


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


def skip_after_round1(run, task, why: str, eval_s: float, per_image: float, verb: str = "trains",
                      least_step_s: float | None = None) -> float:
    """Self-training's later rounds skipped after round 1 (run.decide, kept for a --resume) for ``why``, and the line
    that says so; round 1 then ``verb`` until the closing work. At round 1's planning (``least_step_s``, its step) a
    budget that cannot hold even the least run is refused first. Returns the closing work's seconds (the report now
    draws round 1 only). One helper for round1_closing and round1_replan (their copies had drifted apart)."""
    planned = run.rounds
    run.decide(1, 2, why)
    closing_s = run.closing(task, eval_s, per_test_image=per_image)
    if least_step_s is not None:
        run.refuse_unless_least_run_fits([(task, least_step_s)])  # a re-timed step: task.retimed_step_s
    print(f"[run] self-training's round{'s 2-' if planned > 2 else ' '}{planned} skipped (planned, not an error): "
          f"{run.skip['why']}; round 1 {verb} until the closing work (about {closing_s:.0f} s) and predicts",
          flush=True)
    return closing_s


def kept_nothing(pseudo: dict) -> bool:
    """Whether the round that labelled the pool kept no pseudo-label (a resumed record counts as kept): the next
    round is then skipped (RoundsMixin.skip_without_pseudo_labels). A function of its own so that the tests, whose
    seconds-long rounds keep nothing, can let the rounds run (conftest's later_rounds_fit)."""
    return not pseudo.get("recorded") and not len(pseudo["images"])


def refused_closing(run, task, closing_s: float, eval_s: float, evals: int, k: int) -> float:
    """The closing work where round ``k`` is refused at its check (``closing_s``: where it trains): round k - 1
    predicts, without a round's closing evaluations (``evals``) and checkpoint writes, and the report draws one stage
    fewer (report_stage_seconds). The time a refusal leaves unused is counted beyond it: counted beyond a trained
    round's (hCA c1 s1: about 27 s estimated, about 10 s real), the idle share was about 8 s low (review rev118 #4)."""
    report_plan = getattr(run, "report_plan", None) or {}
    drawn = getattr(run, "report_stages", 0) >= k
    stage = report_stage_seconds(task, report_plan.get("figure_s", FIGURE_S)) if drawn else 0.0
    saves = checkpoint_write_seconds(task, getattr(run, "writes_bps", WRITE_BYTES_PER_S))
    return max(0.0, closing_s - evals * eval_s - saves - stage)


def say_images_left_out(run, k: int, step_s: float, need: float, left: float) -> None:
    """The line where a labelled-only round ``k``, kept at its planning, plans without the report's image-based parts
    (PipelineRun.closing's ``need`` is its report_plan's ``least``): accepted near the limit, its steps came slower
    than round k - 1's at the check (1.4-2x is routine on a shared machine) and its least run holds only without
    them. The end's line said only that the time left was short, not that a round of a few steps took it (review
    rev118 #1). Not where the images would be left out anyway (more than half the budget)."""
    report_plan = getattr(run, "report_plan", None) or {}
    images = (report_plan.get("seconds") or (0.0, 0.0))[1]
    least = report_plan.get("least")
    if not images or least is None or need > least or least + images > 0.5 * run.budget_s:
        return
    before, out = (getattr(run, "speeds_before", None) or (step_s,))[0], getattr(run, "out", None)
    after = f"`fewshot report {out} --out {out / 'report'}` draws them afterwards" if out else "they can be drawn later"
    print(f"[run] round {k} trains on the labelled images without the report's confusion matrices, embedding map "
          f"and prediction grid (planned, not an error): its steps take {step_s * 1000:.0f} ms, "
          f"{step_s / before:.1f}x round {k - 1}'s {before * 1000:.0f} ms when the round was chosen, and the "
          f"{left:.0f} s left hold its {FLOOR_STEPS + 1} steps and the closing work only without them (about "
          f"{images:.0f} s); {after}", flush=True)


class RoundsMixin:
    """PipelineRun's self-training rounds before the last, and the plan that drops or skips the later ones."""

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
        if getattr(task, "replan_end", None) is not None:  # round 1 has ended: its partial held the task (a cycle
            task.replan_end = None  # that kept round 1's model), and no later Engine of this task asks it
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
        labelling and the closing work their least time (after_round1_seconds), what its own end and the check
        before round 2 take (round1_end_seconds) and a margin; when round 1's floor and all of that margin do not
        leave them that (round1_least_seconds), they are skipped and round 1 trains until the closing work. A
        step timing that skips them is timed once more first (round1_retimed), and the decision rests on the faster."""
        skip, rounds = self.skip, self.rounds
        resumed = step_s is None  # finetune_stage's call for a round continued from its last.pt (plan_stage's: timed)
        step_s = measure_step_seconds(task) if step_s is None else step_s  # a resumed round 1: not measured
        per_image = measure_prediction_seconds(task, self.test_set.images)  # the pool is labelled at this speed
        eval_s = resumed_eval_seconds(task, eval_s, per_image) if resumed else eval_s  # logged: a quieter machine's
        closing_s = self.closing(task, eval_s, per_test_image=per_image)
        evals = eval_passes(task) + 1
        saves_s = checkpoint_write_seconds(task, getattr(self, "writes_bps", WRITE_BYTES_PER_S))
        n_test = 0 if self.test_set.images is None else len(self.test_set.images)  # (None: a test's stand-in)

        def rest_at(s: float, e: float = eval_s, n: int = rounds, close: float | None = None, per: float = per_image,
                    saves: float = saves_s, timed: bool = False) -> float:
            # the later rounds' least time (n - 1 of them), from round 1's last step on, at s a step, e an evaluation
            # and per a predicted image, with what round 1's end and the check before round 2 take beyond it (saves:
            # its checkpoint writes; timed: the check's prediction timing taken already): the check's own count
            close = closing_s if close is None else close
            return (after_round1_seconds(s, e, per, self.n_unlabeled, n, close, evals, n_test)
                    + round1_end_seconds(s, per, n_test, saves, timed))

        def need(steps: list[float]) -> float:  # the rest, its margin and round 1's own least run, as compared below
            return round1_least_seconds(rest_at(steps[0]), steps[0], eval_s)

        decides = skip["skipped_from"] != 2 and self.state.status("finetune") is None  # the skip below may come
        if decides and not resumed and not time_holds(need([step_s]), self.last_end - time.monotonic()):
            step_s = round1_retimed(self, task, step_s, need)
        # kept as plan_stage keeps its timings: the check before round 2 (round_speeds) timed a resumed round again
        task.step_s, task.eval_s = getattr(task, "step_s", None) or step_s, getattr(task, "eval_s", None) or eval_s
        rest = rest_at(step_s)
        left = self.last_end - time.monotonic()  # after a re-time: its seconds count
        own = (FLOOR_STEPS + 1) * step_s + eval_s  # round 1's own least run: its floor, the step past it, an evaluation
        margin = round1_least_seconds(rest, step_s, eval_s) - rest - own  # round1_leaves' whole margin
        # the later rounds are planned only with the whole margin: on less, round 1 was cut to its floor for a
        # labelling that the check before round 2 (check_later_rounds) then found no time for
        if skip["skipped_from"] == 2 or (decides and not time_holds(rest + margin + own, left)):
            if skip["skipped_from"] != 2:
                # the sum compared, not the later rounds' part alone: "47 s were left ... the later round needs
                # about 41 s" read as a skip that should not have happened
                left_s, need_s = seconds_apart(left, rest + margin + own)
                why = (f"about {left_s} were left for round 1 and what follows it, less than they need at the "
                       f"measured speed (about {need_s}): round 1's own least run ({seconds_text(own)}: "
                       f"{FLOOR_STEPS + 1} steps and an evaluation), the later round{'s' if rounds > 2 else ''} "
                       f"({seconds_text(rest)}: round 1's end and checkpoint writes, labelling the pool, calibration, "
                       f"{FLOOR_STEPS + 1} steps each, evaluations, the closing work and a margin for their own late "
                       f"end) and a margin for round 1 ending late ({seconds_text(margin)})"
                       + ("; cut shorter, round 1 would train near chance for a labelling the time then might not "
                          "hold" if time_holds(rest + own, left) else ""))
                closing_s = skip_after_round1(self, task, why, eval_s, per_image, least_step_s=step_s)
            self.plan_closing(closing_s)
            if resumed:  # round 1 is the last stage: it trains until the closing work
                self.warn_if_resumed_late("finetune_labelled", closing_s, task)
            return self.labelled_end - (self.last_end - closing_s)  # negative: round 1 ends after its share
        leaves = round1_leaves(rest, left, step_s, eval_s)  # and a margin for round 1's own late end
        if decides and not resumed:  # the Engine asks at round 1's planned end, at the speed round 1 trained at
            task.replan_end = functools.partial(RoundsMixin.round1_replan, self, task, rest_at)
        cut = max(0.0, self.labelled_end - (self.last_end - leaves))
        later = f"labelling the pool and the later round{'s' if rounds > 2 else ''}"
        # where a resumed round 1 ends, for the line of one that trains no further (skip_short_resumed_training)
        task.resumed_end_words = (f"round 1's end ({later} need the rest of its share)" if cut > 0 else
                                  f"the end of round 1's share (run.pseudo_share={self.r['pseudo_share']:g}; "
                                  f"{later} come after it)")
        if cut > 0:
            print(f"[run] round 1 ends {cut:.0f} s before its share (run.pseudo_share={self.r['pseudo_share']:g}) "
                  f"would: about {leaves:.0f} s are left for labelling the pool, {rounds - 1} later "
                  f"round{'s' if rounds > 2 else ''} and the closing work"
                  + (f" ({leaves - rest:.0f} s of them a margin for round 1 ending late)" if leaves - rest >= 0.5
                     else ""), flush=True)
        return cut

    def round1_replan(self, task, rest_at, budget_end: float, row: dict) -> float:
        """Round 1's training end (``budget_end``, time.monotonic()) judged once, when round 1 reaches it (the Engine's
        task.replan_end; ``row``: its epoch not in log.jsonl yet), with what the check before round 2 will judge at:
        round_speeds' slower of the timing and the whole log's speed (trained_speeds), the prediction timed again (one
        batch, kept on the task: the check reuses it, the same model with only the stop between, so both judge the same
        speed and the check's own timing is not paid a second time; review rev110 #3) and the checkpoint writes at the
        slower of the planned rate and the one round 1's own writes showed so far (``row["write_bps"]``,
        Engine.write_rate, kept by note_writes as the check's closing estimate counts it: the planned rate alone missed
        a machine whose writes slowed during round 1; review rev110 #2). Planned at its timing only, a loaded machine's
        round 1 (352 ms timed, 600 ms trained) was cut for a round 2 that the check then skipped, and a quarter of the
        budget went unused (hunt hBX #3); judged with planning's prediction speed, it stopped as planned and the check,
        timing the prediction on the loaded machine, skipped round 2 (28.2 s left, 28.3 s needed; review rev107). Where
        the later round still fits, round 1 stops as planned; else the later rounds are skipped here and round 1 trains
        on until the closing work. Judged mid-round, one slow first epoch skipped round 2 for good (review rev102).

        The margin is ROUND1_MARGIN on round 1's end alone (its stop's evaluations, the step past the deadline and its
        checkpoint writes; the prediction's timing is taken here, before ``left`` is read), as later_rounds_seconds
        keeps it on the later rounds' work. With the check's own inputs, the check then finds what it needs unless round
        1's end overruns that by more than the margin and the step already taken: "stops as planned" implies "the check
        keeps round 2". Not ROUND1_MARGIN on the whole rest: round 1's planning left exactly that (round1_leaves), so a
        round 1 trained even a little slower than timed would skip a round 2 the check keeps; the part taken here is
        always less than the rest, so a round 1 at its planned speeds always stops as planned. The price (review rev110
        #1): a round 2 that would only just have fitted (the fake-clock sweep: 1.16-1.37x slower than timed, about 1 s
        over its least run of a few steps) is skipped and round 1 trains on; such a round 2 would have had little more
        than its least run, where fGE's judgement (planning's prediction speed, no margin) left round 1 stopped and the
        budget unused in a wider band (1.27-1.52x). Returns the (new) end."""
        if self.skip["skipped_from"] is not None:  # decided already: round 1 is the last stage
            return budget_end
        trained_s, trained_e = trained_speeds(self.out / "finetune_labelled" / "log.jsonl", eval_passes(task), row)
        s, e = max(task.step_s, trained_s or 0.0), max(task.eval_s, trained_e or 0.0)
        per_image = measure_prediction_seconds(task, self.test_set.images)  # as check_later_rounds times it
        task.replan_per_image = per_image  # and reuses: the same model, only the stop between
        self.note_writes(row.get("write_bps"))  # round 1's writes so far, where slower than the rate planned at
        saves_s = checkpoint_write_seconds(task, getattr(self, "writes_bps", WRITE_BYTES_PER_S))
        n_test = 0 if self.test_set.images is None else len(self.test_set.images)
        close = self.closing(task, e, per_test_image=per_image)
        rest = rest_at(s, e, 2, close, per_image, saves_s, timed=True)  # 1 round, least
        end_s = (eval_passes(task) + 1) * e + round1_end_seconds(s, per_image, n_test, saves_s, timed=True)  # its end
        need = rest + ROUND1_MARGIN * end_s
        left = self.last_end - time.monotonic()
        if time_holds(need, left):
            return budget_end
        left_s, need_s = seconds_apart(left, need)
        why = (f"round 1 trained at {s * 1000:.0f} ms a step ({e:.1f} s an evaluation; the slower of its timing, "
               f"{task.step_s * 1000:.0f} ms, and its training): about {left_s} were left when it reached its planned "
               f"end, and the later round needs at least {need_s} after it at that speed (round 1's end and "
               f"checkpoint writes, labelling the pool, calibration, {FLOOR_STEPS + 1} steps, evaluations, the "
               f"closing work and a margin for round 1 ending late)")
        closing_s = skip_after_round1(self, task, why, e, per_image,
                                      "trains on, its lr schedule re-planned over its new end (the lr rises again),")
        self.plan_closing(closing_s)
        return max(budget_end, self.last_end - closing_s - s)  # a step kept back, as plan_stage keeps it

    def later_rounds(self) -> None:
        """Rounds 2 on, each on the pool as the round before labelled it, as far as the time holds them; the last
        one's pseudo-labels are left in ``pseudo`` for last_stage."""
        r, skip, state = self.r, self.skip, self.state
        # round 1's lr fields (self.task is round 1), carried forward undivided: a round k - 1 that went gently (a short
        # round) holds a tenth of them, and its successor was divided again or restarted there (review rev106 #2)
        recipe, lr = round_recipe(self.task), float(self.task.cfg["optim"]["lr"])
        gentle = gentle_lr(self.task.cfg)
        for k in range(2, int(r["pseudo_rounds"]) + 1):
            if skip["skipped_from"] is None and skip.get("labelled_only") is None and \
                    state.status("finetune") is None and \
                    state.status(f"finetune_round{k}") is None:  # a resumed round that began is continued
                self.check_later_rounds(self.task, k)
            if skip["skipped_from"] is not None and k >= skip["skipped_from"]:  # the rounds before it are reused
                break
            if skip.get("labelled_only") == k:  # the last round (`finetune`), without labelling the pool
                self.pseudo = {**labelled_only_round(self.task, k, lr), "recipe": recipe}
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
            if kept_nothing(self.pseudo):
                self.skip_without_pseudo_labels(k)  # round k - 1 (self.task) predicts
                break
            self.pseudo["recipe"] = recipe  # round k fine-tunes at round 1's chosen lr (a moved --weights: hBX #1)
            # a short round k continues round k - 1's model at a tenth of round 1's lr (run_stages.SHORT_ROUND_EPOCHS)
            self.pseudo["lr"] = gentle
            self.task = None
            if k == self.rounds and skip["skipped_from"] is None:  # the last round is `finetune`, below
                break
            self.middle_round(k)

    def skip_without_pseudo_labels(self, k: int) -> None:
        """Round ``k`` and later skipped where round ``k`` - 1 kept no pseudo-label: round ``k`` would only restart
        training on the labelled images at full lr (hunt hBQ: "0/340 kept", 3.6 s that took val from 70 to 25, the
        val guard then chose round 1). The rest of the budget is left unused rather than spent on that. Unlike
        the labelled-only round (check_later_rounds), which continues round ``k`` - 1 where the time left holds a
        round but not the pool's labelling; here the labelling ran and found nothing to add."""
        task, labelled = self.task, (self.pseudo.get("summary") or {}).get("pool_labelled", 0)
        later = " and later" if k < self.rounds else ""
        found = (f"round {k - 1}'s model was not sure enough of any of the {labelled:,} pool images it labelled"
                 if labelled else "no pool image was left to label")  # rev84 #5: "not sure of any of the 0"
        self.decide(k - 1, k, f"no pseudo-label was kept: {found}, and round {k} would only train on the labelled "
                              f"images again, which at short budgets lost val accuracy; the rest of the budget is left "
                              f"unused")
        closing_s = self.closing(task, round_speeds(task, k - 1)[1])  # the report's estimate, for the stages it draws
        spare = max(0.0, self.last_end - time.monotonic() - closing_s)
        print(f"[run] round {k}{later} skipped (planned, not an error): {self.skip['why']} (about "
              f"{seconds_text(spare)} beyond the closing work); predicting with round {k - 1}", flush=True)

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
                                             "val_mean_acc1": round_metrics.get("mean_acc1"), **gently_entry(task)},
                      task.fit_seconds)

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
            if step_s is None:  # resumed: the logged evaluation time, at this session's speed where that is slower
                eval_s = resumed_eval_seconds(task, eval_s, per_image)
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
                if self.skip.get("labelled_only") == k:
                    say_images_left_out(self, k, step_s, need, left)
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
        it holds a round's least run but not the pool's labelling (labelled_only_seconds), round k is the last and
        trains on the labelled images only (labelled_only_round): skipped, the rest of the budget went unused
        (hunt hCA #2: 23-27 s of 90 s, asked for 5 more steps and a margin on all of the round). Judged at round
        k - 1's speeds as it trained (round_speeds), before any of round k's work (the pool's labelling, its
        timing); round 1's prediction speed is the one round1_replan timed at its planned end
        (task.replan_per_image), else timed."""
        skip, n_unlabeled = self.skip, self.n_unlabeled
        step_s, eval_s, speed = round_speeds(task, k - 1)
        per_image = getattr(task, "replan_per_image", None)  # round 1 timed at its planned end (round1_replan)
        if per_image is None:
            per_image = measure_prediction_seconds(task, self.test_set.images)
        report_plan = getattr(self, "report_plan", None)  # (None: a test's stand-in)
        if report_plan is not None and self.report_stages:  # the drawing at the speed now, nearer the report's own
            report_plan["figure_s"] = figure_seconds()  # than start-up's, the run's busiest moment (review rev118 #5)
        closing_s = self.closing(task, eval_s, per_test_image=per_image)
        self.speeds_before = step_s, eval_s, per_image  # for the next round's timing line
        evals = eval_passes(task) + 1  # a round's closing evaluations, as round1_closing counts them
        n_test = 0 if self.test_set.images is None else len(self.test_set.images)  # (None: a test's stand-in)
        left = self.last_end - time.monotonic()
        # counted as the round spends it up to its planning (later_round_closing), with a margin: the labelling, the
        # calibration and its least run, so that a round whose labelling is let run is kept there
        fits = [n for n in range(self.rounds - k + 1, 0, -1)
                if time_holds(later_rounds_seconds(step_s, eval_s, per_image, n_unlabeled, n, closing_s, evals,
                                                   n_test), left)]
        # else a round without the pool's labelling, where the time beyond the closing work holds its least run
        # (with twice its floor of steps where refusing it leaves little unused): labelled_only_seconds
        if not fits and time_holds(labelled_only_seconds(step_s, eval_s, per_image, closing_s, n_test,
                                                         (left - refused_closing(self, task, closing_s, eval_s, evals,
                                                                                 k)) / self.budget_s), left):
            # no time to label the pool, but for a short round: the rest of the budget goes on training round
            # k - 1's model on the labelled images (the val guard still picks the round that predicts)
            need = later_rounds_seconds(step_s, eval_s, per_image, n_unlabeled, 1, closing_s, evals, n_test)
            planned = self.rounds
            skip.update(rounds=k, skipped_from=None, labelled_only=k,
                        labelled_only_why=labelled_only_why(k, left, need, planned))
            self.rounds, self.report_stages = k, min(self.report_stages, k)
            self.state.save()
            print(f"[run] round {k} trains on the labelled images only (planned, not an error): "
                  f"{skip['labelled_only_why']}", flush=True)
        elif not fits:
            need = later_rounds_seconds(step_s, eval_s, per_image, n_unlabeled, 1, closing_s, evals, n_test)
            left_s, need_s = seconds_apart(left, need)
            self.decide(k - 1, k, f"{left_s} were left of the budget after round {k - 1}, and round "
                                  f"{k} needs at least {need_s} (labelling the pool, calibration, {FLOOR_STEPS + 1} "
                                  f"steps, evaluations, the closing work and a margin for them ending late) at "
                                  f"{speed}")
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
