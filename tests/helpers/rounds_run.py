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
