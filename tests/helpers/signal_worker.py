"""Run `fewshot` (under torchrun) with a SIGTERM sent to one rank during one training step.

usage: python signal_worker.py RANK STEP fewshot-args...   (RANK: the rank that gets the signal)
"""

import os
import signal
import sys

from fewshot.cli import main
from fewshot.train.supervised import SupervisedTask

rank, step = int(sys.argv[1]), int(sys.argv[2])
orig, calls = SupervisedTask.training_step, {"n": 0}


def training_step(self, model, batch):
    out = orig(self, model, batch)
    calls["n"] += 1
    if calls["n"] == step and int(os.environ.get("RANK", 0)) == rank:
        os.kill(os.getpid(), signal.SIGTERM)
    return out


SupervisedTask.training_step = training_step
sys.exit(main(sys.argv[3:]))
