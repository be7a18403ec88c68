"""`torchrun --nproc_per_node=2 SCRIPT ARGS` (or `-m MODULE ARGS`) with the ranks as forks of the test process.

For DDP tests whose subject is what the ranks do together (a refusal, a message said once, a stop agreed on), not
the launch: a fork keeps this process's torch/timm imports, where a launch spends seconds of interpreter start per
rank. Unlike helpers.tiny.cli_in_forked_ranks, a rank runs a worker script as __main__ (its patches apply in its
fork only), and gets torchrun's environment: TORCHELASTIC_RUN_ID makes rank 1 a quiet rank (cli_ranks._quiet_rank), and
the job's store is served by this process as by torchrun's agent (a rank 0 that exits first keeps no store away
from rank 1). What only a real launch shows stays with torchrun: the agent's exit codes and signals, a rank's look
for its siblings in /proc (a fork's /proc/PID/environ is the test process's).
"""

from __future__ import annotations

import contextlib
import os
import runpy
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Optional, Union

from helpers.forked_cli import as_a_started_process
from helpers.tiny import free_port, run_forked_ranks

AGENT_ENV = {"TORCHELASTIC_RUN_ID": "forked", "TORCHELASTIC_USE_AGENT_STORE": "True",
             "TORCHELASTIC_RESTART_COUNT": "0"}  # what torchrun's agent sets beside the rank variables


def _agent_store(port: int):
    """The job's TCPStore, served here as torchrun's agent serves it, until the ranks are done."""
    from torch.distributed import TCPStore

    return TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))


def _run_as_main(target: str, args: list) -> int:
    """``python TARGET ARGS`` (a .py path) or ``python -m TARGET ARGS`` in this process: its exit code."""
    sys.argv = [target, *args]
    try:
        if target.endswith(".py"):
            runpy.run_path(target, run_name="__main__")
        else:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _rank(rank: int, world: int, port: int, target: str, args: list, cwd: str, said: str, env: dict) -> None:
    """One forked rank: torchrun's rank variables and ``env``, then the target, its output to a file."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **env})
    os.chdir(cwd)
    as_a_started_process()  # one torch thread (OpenMP after fork), the default signal handlers, visible warnings
    with open(Path(said, f"rank{rank}.out"), "w", buffering=1) as fh:
        os.dup2(fh.fileno(), 1)  # what torch or gloo writes to the descriptors lands there too
        os.dup2(fh.fileno(), 2)
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            code = _run_as_main(target, args)
    Path(said, f"rank{rank}.rc").write_text(str(code))


def forked_torchrun(target: Union[Path, str], args: list, cwd: Path, env: Optional[dict] = None, world: int = 2,
                    timeout: float = 240, agent: bool = True) -> tuple[list[int], str]:
    """``target`` (a script's path, or a module name as after -m) with ``args`` on ``world`` forked ranks. With
    ``agent``, torchrun's environment and store (AGENT_ENV); without it, only ``env`` beside the rank variables and
    rank 0 serving the store (ranks started by hand). Each rank's exit code and the ranks' output, rank 0's first."""
    said, port = Path(tempfile.mkdtemp(prefix=".ranks-", dir=cwd)), free_port()
    store = _agent_store(port) if agent else None
    env = {**(AGENT_ENV if agent else {}), **(env or {})}
    try:
        run_forked_ranks(_rank, (world, port, str(target), [str(a) for a in args], str(cwd), str(said), env), world,
                         timeout, f"the ranks of {Path(str(target)).name}")
    finally:
        del store
    codes = [int((said / f"rank{r}.rc").read_text()) for r in range(world)]
    out = "".join((said / f"rank{r}.out").read_text() for r in range(world))
    shutil.rmtree(said)
    return codes, out
