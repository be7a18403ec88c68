"""Run `fewshot` (under torchrun) with one argument that differs per rank: a node whose copy of the data differs.

usage: python rank_arg_worker.py TOKEN VALUE_RANK0,VALUE_RANK1,... fewshot-args...   (TOKEN in the args is replaced)
"""

import os
import sys

from fewshot.cli import main

token, values = sys.argv[1], sys.argv[2].split(",")
value = values[int(os.environ.get("RANK", 0))]
sys.exit(main([value if a == token else a for a in sys.argv[3:]]))
