"""One of 2 ranks started by hand with torchrun's environment (no agent: the test signals and waits on each one).

usage: python ddp_error_worker.py CASE FOLDER
  own_error  rank 1 alone meets a user error once the process group exists; rank 0 waits in a barrier for it
  later      rank 1 meets a user error at once, rank 0 the same one after rank 1's wait for it has ended
  sigterm    rank 0 waits in the rendezvous for rank 1, which runs Python: the test sends both SIGTERM
"""

import os
import sys
import time

from fewshot import cli
from fewshot.errors import UserError

case, folder = sys.argv[1], sys.argv[2]
if case == "later":
    cli.SPEAKER_WAIT_S = 0.5


def command(args, extra):
    import torch

    from fewshot.train.distributed import barrier, init_distributed

    if case == "sigterm":
        print(f"ready {os.environ['RANK']}", flush=True)
        if os.environ["RANK"] == "1":
            while True:  # Python runs here: the handler acts at once
                time.sleep(0.05)
        init_distributed(torch.device("cpu"))  # rank 1 never joins: waits in C, where no Python handler runs
        return 0
    ctx, _ = init_distributed(torch.device("cpu"))
    if ctx.rank == 1 or case == "later":
        time.sleep((cli.SPEAKER_WAIT_S + 2.0) * (ctx.rank == 0))
        raise UserError(f"a broken image in the pool ({case})")
    barrier(ctx)
    return 0


cli.COMMANDS["train"] = command
sys.exit(cli.main(["train", "--data", folder, "--out", os.path.join(folder, "run")]))
