"""A PipelineRun stand-in for the self-training rounds' planning tests: the plan it starts with (2 rounds, none
skipped) and a ``decide`` that keeps a new plan as run_rounds.RoundsMixin.decide does, recording each decision."""

from __future__ import annotations

from types import SimpleNamespace


def rounds_run(**fields) -> tuple[SimpleNamespace, list[tuple[int, int | None]]]:
    """(the stand-in with ``fields``, its decisions so far as (rounds, skipped_from)): ``run.decide`` updates
    ``run.skip`` and ``run.rounds``, so that what the planning reads after a decision is the new plan."""
    decided = []
    run = SimpleNamespace(skip={"rounds": 2, "skipped_from": None}, rounds=2, **fields)

    def decide(rounds, skipped_from, why):
        decided.append((rounds, skipped_from))
        run.skip.update(rounds=rounds, skipped_from=skipped_from, why=why)
        run.rounds = rounds

    run.decide = decide
    return run, decided


def after_round1(now: float, left: float, *, n_pool: int, n_test: int, closing_s: float, budget_s: float,
                 step_s: float, eval_s: float) -> tuple[SimpleNamespace, SimpleNamespace, list]:
    """(run, round 1's task, decisions) for the check before round 2 (check_later_rounds): ``left`` seconds of a
    ``budget_s`` budget from ``now``, a pool of ``n_pool`` and ``n_test`` test images, the closing work at
    ``closing_s``, round 1 trained at ``step_s`` a step and ``eval_s`` an evaluation, and a re-time that finds the
    same speed."""
    run, decided = rounds_run(n_unlabeled=n_pool, report_stages=2, budget_s=budget_s,
                              test_set=SimpleNamespace(images=[0] * n_test), last_end=now + left,
                              end_time=now + left, closing=lambda *a, **k: closing_s,
                              later_round_retimed=lambda task, step_s, need, k: step_s,
                              state=SimpleNamespace(status=lambda name: None, save=lambda: None))
    task = SimpleNamespace(step_s=step_s, eval_s=eval_s, cfg={"train": {"ema": True}}, supports_ema=True)
    return run, task, decided
