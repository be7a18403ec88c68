"""Under torchrun: one rank stops before the other, and each says why through the CLI's error reporting.

usage: python rank_exit_worker.py CASE
  late_error   rank 1 meets a user error at once, rank 0 the same one 2 s later (a slower pool decode)
  own_error    rank 1 alone meets a user error; rank 0 waits for it in a collective
  interrupted  rank 0 is interrupted (Ctrl-C); rank 1, in a collective, meets the closed connection before
               its own SIGINT (left out here)
"""

import os
import signal
import sys
import time
from types import SimpleNamespace

import torch

from fewshot import cli, cli_ranks
from fewshot.errors import UserError
from fewshot.train.distributed import barrier, init_distributed

case = sys.argv[1]
if case == "own_error":
    cli_ranks.SPEAKER_WAIT_S = 1.0  # rank 1 gives up on rank 0 sooner than the 60 s that wait allows


def command(args, extra):
    if case == "interrupted" and os.environ["RANK"] == "1":
        # torchrun's SIGTERM after rank 0's exit would end rank 1 before it says anything
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx, _ = init_distributed(torch.device("cpu"))
    if case == "interrupted":
        if ctx.rank == 0:
            raise KeyboardInterrupt
    elif ctx.rank == 1 or case == "late_error":
        time.sleep(2 * (ctx.rank == 0))
        raise UserError(f"a broken image in the pool ({case})")
    barrier(ctx)
    return 0


sys.exit(cli._dispatch(SimpleNamespace(command="pretrain", out=None), [], {"pretrain": command}))
