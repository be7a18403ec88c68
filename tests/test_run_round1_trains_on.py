"""`fewshot run`: round 1 is cut to leave the later self-training rounds their least time; where round 1's own speed
shows that they will not fit after its planned end, they are skipped as it trains and round 1 trains on until the
closing work (before, that time went unused: 1-minute runs ended at 41-74 s, a 2.5-minute one at 106 s). The
Engine's deadline moves later through its deadline_hook without moving the time-based schedule back. The clocks and
measured times are patched or written, so the decisions do not follow the machine."""

from __future__ import annotations

import functools
import json
import time
from types import SimpleNamespace

import pytest
import torch

from helpers.checks import run_main


class _TinyTask:
    """What Engine needs of a task to be built."""

    kind, supports_ema, drop_last, size, eval_every = "moco", False, True, 32, 1

    def __init__(self, steps: int = 1):
        self.model, self.steps = torch.nn.Linear(2, 2), steps

    def param_groups(self):
        return [{"params": list(self.model.parameters()), "weight_decay": 0.0, "lr_scale": 1.0}]

    def plan_epoch(self, epoch):
        return [torch.arange(2)] * self.steps


def _engine(tmp_path, monkeypatch, clock, steps: int = 1, **flags):
    """An Engine on a 1,000-step time-based cosine (no warmup; ``steps`` an epoch), its clock the counter ``clock``."""
    from fewshot.config import resolve
    from fewshot.train import engine as engine_mod
    from fewshot.train.distributed import DistContext

    monkeypatch.setattr(engine_mod, "time", SimpleNamespace(monotonic=lambda: clock[0], perf_counter=time.perf_counter))
    cfg = resolve(flags={"train.device": "cpu", "optim.lr": 0.1, "train.epochs": 1000, "sched.time_based": True,
                         "sched.warmup_epochs": 0, "sched.min_lr": 0.0, "train.budget_minutes": 1.0, **flags})
    engine = engine_mod.Engine(_TinyTask(steps), cfg, tmp_path, torch.device("cpu"), DistContext())
    engine.fit_start = 0.0
    return engine


def _lr_at(engine, clock, t: float, deadline: float) -> float:
    clock[0] = t
    engine.scheduler.step_update(engine._schedule_t(deadline))
    return engine.optimizer.param_groups[0]["lr"]


def test_a_later_deadline_continues_the_schedule_from_where_it_was(tmp_path, monkeypatch):
    """At 30 s of a 60 s stage (half-way along its cosine) the hook moves the deadline to 120 s: the schedule goes
    on from half-way to its end at 120 s (three quarters at 75 s), and its lr never rises again; mapped over the
    new budget from the start, it would have gone back to a quarter, near the peak again."""
    clock = [0.0]
    engine = _engine(tmp_path, monkeypatch, clock)
    lrs = [_lr_at(engine, clock, t, 60.0) for t in range(30)]
    clock[0] = 30.0
    engine.deadline_hook = lambda deadline, step_s: 120.0
    assert engine._later_deadline(60.0) == 120.0 and engine.deadline == 120.0
    assert engine._sched_from == (30.0, pytest.approx(0.5))
    assert engine.cfg["train"]["budget_minutes"] == pytest.approx(2.0)  # what last.pt and a resume read
    lrs += [_lr_at(engine, clock, t, 120.0) for t in range(30, 121)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:])), lrs
    assert lrs[30] == pytest.approx(0.05)  # half-way along the cosine at the move, as the 60 s plan had it
    clock[0] = 75.0
    assert engine._schedule_t(120.0) == 750 and lrs[-1] == pytest.approx(0.0, abs=1e-9)
    naive = 30.0 / 120.0  # the elapsed fraction of the new budget from the start
    assert naive * 1000 < 500


def test_a_later_deadline_keeps_the_steps_floor_of_the_position(tmp_path, monkeypatch):
    """The position is the further of the time and the steps taken of the epoch cap: where the steps were further
    on (a stage that trained faster than timed), the schedule goes on from there."""
    clock = [30.0]
    engine = _engine(tmp_path, monkeypatch, clock)
    engine.global_step = 700
    engine.deadline_hook = lambda deadline, step_s: 120.0
    assert engine._later_deadline(60.0) == 120.0
    assert engine._sched_from == (30.0, pytest.approx(0.7))
    assert engine._schedule_t(120.0) == 700  # 70 % at the move, not the time's 50 %
    engine.global_step = 701
    clock[0] = 75.0
    assert engine._schedule_t(120.0) == 850


def test_a_deadline_never_moves_earlier_and_no_hook_changes_nothing(tmp_path, monkeypatch):
    clock = [30.0]
    engine = _engine(tmp_path, monkeypatch, clock)
    assert engine._later_deadline(60.0) == 60.0  # no hook: as before
    for answer in (None, 50.0, 60.0):
        engine.deadline_hook = lambda deadline, step_s, answer=answer: answer
        assert engine._later_deadline(60.0) == 60.0
    assert engine._sched_from == (0.0, 0.0) and engine.cfg["train"]["budget_minutes"] == 1.0
    assert engine._schedule_t(60.0) == 500  # the plain elapsed fraction


@pytest.mark.parametrize("when, moved_at", [("second step", 2.0), ("past the deadline", 11.0)])
def test_fit_asks_the_hook_after_its_steps_and_trains_to_the_later_deadline(tmp_path, monkeypatch, when, moved_at):
    """A whole fit: the clock moves 1 s a step; the hook moves the 10 s deadline to 40 s once it has the epoch's
    second step, or only at the step that ends past it (asked before the look at the deadline): the
    stage trains to 40 s, last.pt keeps the new budget and the schedule's position at the move, and a resumed
    Engine reads them back (a --resume goes on from there, not from the start of the cosine)."""
    from fewshot.train import engine as engine_mod
    from fewshot.train.distributed import DistContext

    clock = [0.0]
    engine = _engine(tmp_path, monkeypatch, clock, 4, **{"train.epochs": 100, "train.save_interval_s": 0})
    task = engine.task
    task.make_batch = lambda idx, epoch, step: None
    asked, lrs = [], []

    def training_step(model, batch):
        clock[0] += 1.0
        lrs.append(engine.optimizer.param_groups[0]["lr"])  # the step's, set before it
        return model(torch.ones(1, 2)).sum(), {}, 1

    def hook(deadline, step_s):
        asked.append((clock[0], deadline, step_s))
        due = clock[0] == 2.0 if moved_at == 2.0 else clock[0] > deadline
        return deadline + 30.0 if due and deadline == 10.0 else None

    task.training_step = training_step
    task.evaluate = lambda model, epoch: {"mean_acc1": 0.0}
    task.checkpoint_extra = lambda: {"label_space": None, "img_size": 32, "n_parameters": 6}
    task.load_checkpoint_extra = lambda ck: None
    engine.deadline_hook = hook
    engine.cfg["train"]["budget_minutes"] = 10.0 / 60
    engine.fit()
    assert [a[:2] for a in asked[:2]] == [(1.0, 10.0), (2.0, 10.0)]
    assert [a[2] is None for a in asked[:10]] == [True] * 8 + [False] * 2  # a speed from 8 steps after the first
    assert engine.deadline == 40.0 and engine.global_step == 41  # to the step past 40 s: not 11, past 10 s
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 1e-3, lrs
    # moved early, the cosine spreads over the 40 s; moved past the deadline, it had ended (min_lr) and stays there
    assert (lrs[20] > 0.02) if moved_at == 2.0 else (lrs[11] == lrs[-1]), lrs
    ck = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ck["config"]["train"]["budget_minutes"] == pytest.approx(40.0 / 60)
    assert ck["sched_from"] == [pytest.approx(moved_at), pytest.approx(min(1.0, moved_at / 10.0))]
    assert engine_mod.saved_sched_from(None) == (0.0, 0.0)  # a last.pt written before the deadline could move
    assert engine_mod.saved_sched_from([1.0, 7.0]) == (0.0, 0.0)
    resumed = engine_mod.Engine(task, engine.cfg, tmp_path, torch.device("cpu"), DistContext())
    assert resumed.resume() and resumed._sched_from == (pytest.approx(moved_at), ck["sched_from"][1])


def test_the_hooks_speed_leaves_out_the_warm_up_step(tmp_path, monkeypatch):
    """A loaded machine's round 1 took 3.5 s for its first step and 35 ms for the next: a speed that counted it
    skipped round 2 at once (at 1.6 s a step), and round 1 then met its epoch cap and the run ended at 28 s of 60.
    The hook gets the median of the latest steps after the first, from STEADY_STEPS (8) of them on: one busy moment
    early in round 1 must not skip round 2."""
    engine = _engine(tmp_path, monkeypatch, [0.0])
    speeds = [engine._steady_step_s(took) for took in (3.5, 0.035, 0.04, 0.03, 0.5, 0.5, 0.03, 0.035, 0.04, 0.5)]
    assert speeds[:8] == [None] * 8
    assert speeds[8:] == [pytest.approx(0.04), pytest.approx(0.04)]  # of 8: the upper middle; of 9: the middle
    for _ in range(40):
        engine._steady_step_s(2.0)  # the machine got busy: its latest steps count
    assert engine._steady_step_s(2.0) == 2.0 and len(engine._step_times) == 17


def test_a_resumed_stage_keeps_the_later_budget_its_last_pt_records(tmp_path):
    """A round 1 stopped after its end moved later: its config.yaml still holds the budget it was planned with
    (rewritten when the stage ends), last.pt the later one: the resumed stage goes on to the later end, not the
    planned one (which would leave the skipped rounds' time unused again)."""
    from fewshot.pipeline import cap_resumed_budget
    from fewshot.train.checkpoint import save_checkpoint

    last = tmp_path / "last.pt"
    save_checkpoint(last, {"kind": "finetune", "model": {}, "epoch": 3, "label_space": None, "img_size": 32,
                           "n_parameters": 6, "train_seconds": 12.0,
                           "config": {"train": {"budget_minutes": 40.0 / 60}}})
    cfg = {"train": {"budget_minutes": 20.0 / 60}}
    assert cap_resumed_budget(cfg, last, time.monotonic() + 1000.0) == 12.0
    assert cfg["train"]["budget_minutes"] == pytest.approx(40.0 / 60)
    cfg = {"train": {"budget_minutes": 20.0 / 60}}
    cap_resumed_budget(cfg, last, time.monotonic() + 10.0)  # never past the run's end for it
    assert cfg["train"]["budget_minutes"] * 60 == pytest.approx(22.0, abs=0.5)


def _round1(tmp_path, monkeypatch, step_s: float, left: float, skipped_from=None):
    """round1_later_end's view of a run at 990 s on its clock: round 1 timed ``step_s`` a step and 1 s an
    evaluation, its deadline at 1000 s and the run's end ``left`` seconds after it, 2,000 pool images; its speed as
    it trains is the hook's argument."""
    from fewshot import pipeline
    from fewshot.pipeline import PipelineRun

    monkeypatch.setattr(pipeline, "time", SimpleNamespace(monotonic=lambda: 990.0))
    run = SimpleNamespace(skip={"rounds": 2, "skipped_from": skipped_from}, rounds=2, report_stages=2,
                          n_unlabeled=2000, out=tmp_path, last_end=1000.0 + left, round1_per_image=0.001,
                          closing=lambda *a, **k: 10.0, closing_plan={"need": 12.0} if skipped_from else None,
                          state=SimpleNamespace(status=lambda name: None, save=lambda: None))
    run.decide = functools.partial(PipelineRun.decide, run)
    run.round1_log_seen, run.round1_log_speeds = None, functools.partial(PipelineRun.round1_log_speeds, run)
    run.plan_closing = lambda need: setattr(run, "closing_plan", {"need": need})
    task = SimpleNamespace(step_s=step_s, eval_s=1.0, cfg={"train": {"ema": False}}, supports_ema=False)
    return run, task


def test_round_1_trains_on_when_its_speed_shows_round_2_will_not_fit(tmp_path, monkeypatch, real_time_holds,
                                                                     capsys):
    """Round 1 timed 100 ms a step and trains at 2 s: round 2's least time at that speed (about 31 s) does not fit
    the 30 s after round 1's planned end (less its step past it and its closing evaluations): round 2 is skipped
    now, recorded as the check before the labelling records it (run_state's skipped_from, the why that
    summary.json and the report give), and round 1's deadline moves to its closing work (a step kept back)."""
    from fewshot import pipeline

    monkeypatch.setattr(pipeline, "measure_prediction_seconds", lambda *a, **k: pytest.fail("timed again"))
    run, task = _round1(tmp_path, monkeypatch, 0.1, 30.0)
    assert pipeline.PipelineRun.round1_later_end(run, task, 1000.0, None) is None  # no steady speed yet
    assert run.skip["skipped_from"] is None
    later = pipeline.PipelineRun.round1_later_end(run, task, 1000.0, 2.0)
    assert later == pytest.approx(1000.0 + 30.0 - 10.0 - 2.0)  # the run's end, the closing work, a step at 2 s
    assert run.skip["skipped_from"] == 2 and run.rounds == 1 and run.report_stages == 1
    why = run.skip["why"]
    assert "round 1's planned end" in why and "round 2 needs at least 31" in why and "2000 ms a step" in why
    assert run.closing_plan == {"need": 10.0}  # summary.json's closing_seconds: round 1 now predicts
    assert "round 2 skipped (planned, not an error)" in capsys.readouterr().out
    # and at the next epoch ends: the same end (the skip is kept), never a second decision
    assert pipeline.PipelineRun.round1_later_end(run, task, later, 2.0) == pytest.approx(1000.0 + 30.0 - 10.0 - 2.0)


@pytest.mark.parametrize("trained_step_s, left", [(0.1, 40.0), (2.0, 40.0), (0.1, 15.1)])
def test_round_1_keeps_its_end_while_round_2_still_fits(tmp_path, monkeypatch, real_time_holds, trained_step_s,
                                                        left):
    """Trained as fast as timed, with time enough at the slower speed, or (15.1 s) too little for labelling the
    pool and a round but enough for a round on the labelled images only, which the check before the labelling
    runs: nothing changes."""
    from fewshot import pipeline

    run, task = _round1(tmp_path, monkeypatch, 0.1, left)
    assert pipeline.PipelineRun.round1_later_end(run, task, 1000.0, trained_step_s) is None
    assert run.skip["skipped_from"] is None and run.rounds == 2


def test_a_round_1_whose_later_rounds_were_skipped_before_trains_until_the_closing_work(tmp_path, monkeypatch):
    """Skipped at round 1's planning, or as it trained in the session before a --resume (whose last.pt may predate
    the move): its end is where the closing work planned for it begins, a step kept back."""
    from fewshot import pipeline

    run, task = _round1(tmp_path, monkeypatch, 0.1, 40.0, skipped_from=2)
    assert pipeline.PipelineRun.round1_later_end(run, task, 1000.0, 2.0) == pytest.approx(1000.0 + 40.0 - 12.0 - 2.0)
    log = tmp_path / "finetune_labelled" / "log.jsonl"  # its log's slower step (warm-up and all) is kept back
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps({"epoch": 1, "step": 4, "epoch_time_s": 12.0}) + "\n")
    assert pipeline.PipelineRun.round1_later_end(run, task, 1000.0, 2.0) == pytest.approx(1000.0 + 40.0 - 12.0 - 3.0)
    run.skip["skipped_from"] = 3  # a later round's skip: not round 1's business
    assert pipeline.PipelineRun.round1_later_end(run, task, 1000.0, 2.0) is None


def test_a_run_whose_round_2_will_not_fit_skips_it_during_round_1_and_trains_round_1_on(
        digits_root, tmp_path, monkeypatch, real_time_holds):
    """The whole run: round 2's least time does not fit (patched): it is skipped as round 1 trains, not after round
    1 at the check before the labelling; the pool is not labelled, round 1 predicts, and its end moves to where its
    closing work begins (its config.yaml says so) where that is later than its planned end (a machine as loaded as
    this one's 2 shared cores can have round 1 past it already: then it ends as planned, never past the budget)."""
    from fewshot import pipeline

    monkeypatch.setattr(pipeline, "after_round1_seconds", lambda *a: -1e6)  # round 1 plans as usual
    monkeypatch.setattr(pipeline, "later_rounds_seconds", lambda *a: 1e6)  # round 2 never fits
    # timed at 2 s a step, round 1's floor of 5 steps gives it 10 s: steps enough for a speed however loaded the
    # machine (the hook's speed counts from the 9th step)
    monkeypatch.setattr(pipeline, "measure_step_seconds", lambda *a, **k: 2.0)
    saved, answers = [], []
    real_save, real_hook = pipeline.save_yaml, pipeline.PipelineRun.round1_later_end
    monkeypatch.setattr(pipeline, "save_yaml", lambda cfg, path: (saved.append((path.parent.name, dict(cfg["train"]))),
                                                                  real_save(cfg, path)))

    def hook(self, task, deadline, step_s=None):
        answers.append((deadline, real_hook(self, task, deadline, step_s)))
        return answers[-1][1]

    monkeypatch.setattr(pipeline.PipelineRun, "round1_later_end", hook)
    out = tmp_path / "on"
    rc, stdout, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "0.4", "--model",
                               "test_resnet", "--device", "cpu", "--no-progress", "run.report=false",
                               "train.batch_size=16", "run.pseudo_share=0.2")
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune_labelled"] and summary["predicted_with"] == "finetune_labelled"
    skipped = summary["self_training_skipped"]
    assert skipped["rounds"] == [2] and "round 1's planned end" in skipped["why"]
    assert "round 1 trains on until the closing work" in stdout
    assert json.loads((out / "run_state.json").read_text())["self_training"]["skipped_from"] == 2
    assert not (out / "pseudo_labels_round2.json").exists()  # skipped before the labelling
    # no speed before its 9th step; from then on, the skip made, the closing work's end (later or not)
    assert [later is None for _, later in answers[:9]] == [True] * 8 + [False]
    assert all(later is not None for _, later in answers[9:])
    budgets = [t["budget_minutes"] for name, t in saved if name == "finetune_labelled"]
    if any(later is not None and later > deadline for deadline, later in answers):  # moved: planned, then as moved
        assert len(budgets) == 2 and budgets[1] > budgets[0]
    else:
        assert len(budgets) == 1
    assert "closing_seconds" in summary  # round 1 planned as the stage that predicts
