"""Run `fewshot` (under torchrun) with the budget (train.budget_minutes) spent on one rank from one training step on.

usage: python budget_worker.py RANK STEP fewshot-args...   (RANK: the rank whose clock says the time is up)
"""

import os
import sys

from fewshot.cli import main
from fewshot.train.engine import Engine
from fewshot.train.supervised import SupervisedTask

rank, step = int(sys.argv[1]), int(sys.argv[2])
orig_step, orig_stop, calls = SupervisedTask.training_step, Engine._agreed_stop, {"n": 0}


def training_step(self, model, batch):
    calls["n"] += 1
    return orig_step(self, model, batch)


def agreed_stop(self, deadline):
    """The deadline passed on this rank once STEP steps ran: a stop at a known step, whatever the machine's speed."""
    if deadline is not None and calls["n"] >= step and int(os.environ.get("RANK", 0)) == rank:
        deadline = float("-inf")
    return orig_stop(self, deadline)


SupervisedTask.training_step = training_step
Engine._agreed_stop = agreed_stop
sys.exit(main(sys.argv[3:]))
