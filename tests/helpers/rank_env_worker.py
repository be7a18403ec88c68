"""Run `fewshot` (under torchrun) with an environment variable that differs per rank: a mixed cluster.

usage: python rank_env_worker.py VAR VALUE_RANK0,VALUE_RANK1,... fewshot-args...
"""

import os
import sys

from fewshot.cli import main

var, values = sys.argv[1], sys.argv[2].split(",")
os.environ[var] = values[int(os.environ.get("RANK", 0))]
sys.exit(main(sys.argv[3:]))
