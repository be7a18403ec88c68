"""Run `fewshot` (under torchrun) with arguments that differ per rank: every ``{rank}`` in them becomes the rank,
as on nodes that each see their own node-local disk.

usage: python rank_out_worker.py fewshot-args...   (e.g. --out RUN{rank})
"""

import os
import sys

from fewshot.cli import main

rank = os.environ.get("RANK", "0")
code = main([a.replace("{rank}", rank) for a in sys.argv[1:]])
print(f"rank {rank} exit status {code}", file=sys.stderr, flush=True)  # torchrun reports one status for all
sys.exit(code)
