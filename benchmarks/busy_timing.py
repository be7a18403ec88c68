"""`fewshot run` whose start-up step timing meets a busy moment, end to end: the first training-step timing of the
run (run_budget.measure_step_seconds) is multiplied by FACTOR, as a CPU hog over those few steps would make it, and
every later timing is the machine's own. Before the re-times of 2026-12-06 a small budget was then refused before any
training, or self-training's later rounds were skipped; now the step is timed again and the run plans at the faster.

    .venv/bin/python benchmarks/busy_timing.py 30 run --data demo_data --out runs/busy --budget-minutes 0.5 --device cpu

Arguments after FACTOR are `fewshot`'s own; the exit status is the command's."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    import fewshot.run_budget as run_budget
    import fewshot.run_closing as run_closing
    import fewshot.run_rounds as run_rounds
    import fewshot.run_stages as run_stages
    from fewshot.cli import main as fewshot_main

    factor, measure, calls = float(argv[0]), run_budget.measure_step_seconds, []

    def busy_once(task, *args, **kwargs):
        calls.append(task)
        seconds = measure(task, *args, **kwargs)
        return seconds * factor if len(calls) == 1 else seconds

    for module in (run_budget, run_stages, run_closing, run_rounds):  # the names each module calls it by
        module.measure_step_seconds = busy_once
    return fewshot_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
