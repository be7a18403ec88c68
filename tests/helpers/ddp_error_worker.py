"""One of 2 ranks started by hand with torchrun's environment (no agent: the test signals and waits on each one).

usage: python ddp_error_worker.py CASE FOLDER
  own_error    rank 1 alone meets a user error once the process group exists; rank 0 waits in a barrier for it
  later        rank 1 meets a user error at once, rank 0 the same one after rank 1's wait for it has ended
  twice        `later` in two cli.main calls of one process, the process group kept between them
  sigterm      rank 0 waits in the rendezvous for rank 1, which runs Python: the test sends both SIGTERM
  clean_stop   both ranks train until SIGTERM (stop_on_signals), then stop cleanly through a slow shutdown
  usage_all    every rank is given a bogus flag: rank 0 says it and exits at once, nobody ends rank 1, which
               looks 1.5 s later (rank 0 has exited: a zombie whose environment cannot be read)
  usage_rank_1 rank 1 alone is given a bogus flag; rank 0 runs (Python) until the test sends it SIGTERM
  usage_rank_1_killed_0 rank 1 alone is given a bogus flag; rank 0 is killed (SIGKILL, as by the OOM killer) at
               the start of its command, before any process group, and says nothing
"""

import os
import signal
import sys
import time

from fewshot import cli, cli_ranks
from fewshot.errors import UserError
from fewshot.train import stop_signal

case, folder = sys.argv[1], sys.argv[2]
if case in ("later", "twice"):
    cli_ranks.SPEAKER_WAIT_S = 0.5
if case == "usage_rank_1":
    cli_ranks.SPEAKER_EXIT_WAIT_S = 1.5


def command(args, extra):
    import torch

    from fewshot.train import distributed
    from fewshot.train.distributed import barrier, init_distributed

    if case == "usage_rank_1_killed_0":  # only rank 0 gets here: rank 1's flag ended it in argparse
        os.kill(os.getpid(), signal.SIGKILL)
    if case in ("sigterm", "usage_rank_1"):
        print(f"ready {os.environ['RANK']}", flush=True)
        if os.environ["RANK"] == "1" or case == "usage_rank_1":
            while True:  # Python runs here: the handler acts at once
                time.sleep(0.05)
        init_distributed(torch.device("cpu"))  # rank 1 never joins: waits in C, where no Python handler runs
        return 0
    ctx, _ = init_distributed(torch.device("cpu"))
    if case == "clean_stop":
        real = distributed.shutdown_distributed

        def slow_shutdown():  # NCCL's shutdown can take seconds, while sigterm_as_interrupt's handler is back
            time.sleep(4.5)
            real()

        distributed.shutdown_distributed = slow_shutdown
        with stop_signal.stop_on_signals(announce=False) as flag:
            print(f"ready {ctx.rank}", flush=True)
            while not flag:
                time.sleep(0.02)
        raise stop_signal.StopRequested(flag.signum, os.path.join(folder, "last.pt"))
    if ctx.rank == 1 or case in ("later", "twice"):
        time.sleep((cli_ranks.SPEAKER_WAIT_S + 2.0) * (ctx.rank == 0))
        raise UserError(f"a broken image in the pool ({case})")
    barrier(ctx)
    return 0


cli.COMMANDS["train"] = command
argv = ["train", "--data", folder, "--out", os.path.join(folder, "run")]
if case == "usage_all" and os.environ["RANK"] == "1":
    time.sleep(1.5)
if case == "usage_all" or (case.startswith("usage_rank_1") and os.environ["RANK"] == "1"):
    argv.append("--bogus")
if case == "twice":
    codes = [cli.main(argv) for _ in range(2)]
    sys.exit(codes[-1])
sys.exit(cli.main(argv))
