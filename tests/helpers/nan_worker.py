"""Run `fewshot` (under torchrun) with a NaN loss on one rank at one training step.

usage: python nan_worker.py RANK STEP fewshot-args...   (RANK: the rank whose loss becomes NaN)
"""

import os
import sys

from fewshot.cli import main
from fewshot.train.supervised import SupervisedTask

rank, step = int(sys.argv[1]), int(sys.argv[2])
orig, calls = SupervisedTask.training_step, {"n": 0}


def training_step(self, model, batch):
    loss, metrics, n = orig(self, model, batch)
    calls["n"] += 1
    if calls["n"] == step and int(os.environ.get("RANK", 0)) == rank:
        loss = loss * float("nan")
    return loss, metrics, n


SupervisedTask.training_step = training_step
sys.exit(main(sys.argv[3:]))
