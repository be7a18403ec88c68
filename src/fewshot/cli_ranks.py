"""The command line under torchrun: the process count and this process's rank, which process of a node speaks
for the others (the quiet ranks: a user error, argparse's usage, a stop said once per node, not once per
process), how a quiet rank learns that the speaker failed too (the store with a process group, /proc before one),
the numbering of this process's main() calls for the store's keys, and the refusal of the commands that run in one
process only.

Apart from cli.py (the commands and their exit codes) because this is the machinery of several processes, read
only where WORLD_SIZE says there are several: cli.py asks it whether to speak and what another rank reported.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import itertools
import os
import signal
import sys
import time
from pathlib import Path

from fewshot.errors import UserError


_CALLS = itertools.count(1)
# this process's main() call, numbered from 1. sigterm_as_interrupt's watcher and sayer threads start with a context
# of their own and read call 0 there: harmless, as _interrupted(from_watcher=True) asks the store nothing
_CALL = contextvars.ContextVar("fewshot_command_call", default=0)


@contextlib.contextmanager
def _command_call():
    """Numbers this main() call: the store keys of one call (distributed.EXIT_KEY, SAID_KEY) outlived it, and a
    second in-process call under torchrun found the first one's exit codes and claims."""
    token = _CALL.set(next(_CALLS))
    try:
        yield
    finally:
        _CALL.reset(token)


ARGPARSE_GRACE_S = 2.0  # how long a quiet rank leaves the speaker to fail too (no process group yet) before speaking


@contextlib.contextmanager
def _argparse_said_once():
    """Under torchrun every process parses the same command line, and argparse's usage error, --help or --version
    came out once per process. A quiet rank (_quiet_rank) holds what argparse writes and drops it when argparse
    exits, with the same exit code. There is no process group yet to wait for the speaker on (_speaker_spoke): a
    failing quiet rank waits for torchrun to end it (_speaker_failed_too), and says it itself, its lines prefixed
    with its rank, where the speaker did not fail (a flag given to one rank only left every process silent)."""
    if not _quiet_rank():
        yield
        return
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    except SystemExit as exc:
        if exc.code not in (0, None) and not _speaker_failed_too():
            rank = os.environ.get("RANK", "?")
            sys.stderr.write("".join(f"rank {rank}: {line}" for line in err.getvalue().splitlines(keepends=True)))
        raise
    sys.stdout.write(out.getvalue())  # no exit: whatever was written along the way is the command's own
    sys.stderr.write(err.getvalue())


def _process_group_started() -> bool:
    """Whether this process may hold a torch.distributed process group. Not merely "torch.distributed" in
    sys.modules: a Ctrl-C in the first second (while torch is imported) left a half-initialised torch there, and
    importing fewshot.train.distributed from it ended the clean stop in a circular-import traceback (exit 1)."""
    dist = sys.modules.get("torch.distributed")
    try:
        return dist is not None and bool(dist.is_available()) and bool(dist.is_initialized())
    except Exception:  # noqa: BLE001 - a half-imported module lacks its attributes
        return False


DDP_COMMANDS = ("train", "pretrain")  # the commands that share their work among torchrun's processes


def refuse_several_processes(command: str) -> None:
    """Under torchrun every other command did its whole work in every process: eval, predict, export and report
    wrote the same files N times, compare and models printed every table N times, data built into one temporary
    folder from every rank and crashed. All are refused alike, before any work."""
    if command in DDP_COMMANDS or world_size_env() < 2:
        return
    hint = (" (or run its stages under torchrun one by one: `fewshot pretrain`, then `fewshot train`)"
            if command == "run" else "")
    raise UserError(f"`fewshot {command}` runs in one process, but WORLD_SIZE is {world_size_env()} here "
                    f"(torchrun, or a job that starts several processes): run it once, without torchrun{hint}.")


def world_size_env() -> int:
    """WORLD_SIZE as torchrun sets it; 1 where unset or not a number (`int("")` was an internal error)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return 1


def launch_rank() -> int:
    """This process's rank as init_distributed takes it (train.distributed.launch_rank, its one definition): 0 in one
    process, RANK under torchrun, a LaunchError naming RANK where it is missing or bad."""
    from fewshot.train.distributed import launch_rank

    return launch_rank()


def _quiet_rank() -> bool:
    """Under torchrun, a process other than the first of its node: each process meets the same user error, stop
    signal or Ctrl-C, and its message came out once per process, interleaved on one line. The environment says
    so even before (or without) a process group; the first process of each node speaks, as another node may lack
    a file or a GPU. A bad RANK is the message itself: every process prints it. Only torchrun's LOCAL_RANK counts
    (its agent sets TORCHELASTIC_RUN_ID too): a lone process in a pod that sets RANK=1 and WORLD_SIZE (Kubeflow), or
    LOCAL_RANK=1 by hand, exited 2 without a word. (A quiet rank that fails first waits for rank 0 to speak:
    _speaker_spoke.)"""
    if world_size_env() < 2 or not os.environ.get("TORCHELASTIC_RUN_ID"):
        return False
    raw = (os.environ.get("LOCAL_RANK") or "").strip()
    return raw.isdigit() and 0 < int(raw) < world_size_env()


SPEAKER_WAIT_S = 3.0  # the first process of a node meets the same error this much later and still speaks first


def _speaker_spoke(message: str) -> bool:
    """A quiet rank's user error (_quiet_rank): whether the first process of its node has printed why it stops, so
    this one may exit without a word. With a process group it is waited for, up to SPEAKER_WAIT_S (a quiet rank
    that exited first got the speaker ended by torchrun's SIGTERM before its message); not said by then, this rank
    says it and claims the message, so that a speaker meeting the same error later (a slower pool decode) stays
    silent (_first_to_say). The speaker blocked in a collective that this rank never joins held the exit for the
    60 s this wait once was. Before a process group exists: _speaker_failed_too."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return _speaker_failed_too()
    from fewshot.train.distributed import speaker_said

    speaker = dist.get_rank() - int(os.environ["LOCAL_RANK"])  # torchrun numbers a node's processes in a row
    return speaker_said(speaker, message, SPEAKER_WAIT_S, call=_CALL.get())


SPEAKER_EXIT_WAIT_S = 8.0  # before a process group: how long a quiet rank waits for a first process seen running


def _speaker_failed_too() -> bool:
    """Before a process group (no store to claim a message in): whether the first process of this node stopped too,
    and said why. Its process is looked for beside this one (torchrun's agent starts a node's processes): once it
    has exited, it failed, and said why if its exit status says it reported an error (_exited_saying_why; one
    killed by the OOM killer or SIGKILL said nothing, and the job ended without a word); seen running, it is waited
    for up to SPEAKER_EXIT_WAIT_S, as its exit after its message may be slow. A quiet rank that only slept
    ARGPARSE_GRACE_S for torchrun to end it said the same error again behind a slow exit or a --monitor-interval
    over the grace. Not found (no /proc, or reaped already): ARGPARSE_GRACE_S, as before. Still running at the end:
    an error of this rank alone; it says it."""
    speaker = _local_speaker()
    deadline = time.monotonic() + (ARGPARSE_GRACE_S if speaker is None else SPEAKER_EXIT_WAIT_S)
    try:
        while True:
            if speaker is not None and not _running(speaker):
                return _exited_saying_why(speaker)
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
    except KeyboardInterrupt:  # torchrun's SIGTERM (sigterm_as_interrupt) or Ctrl-C: the first process says why
        return True


def _local_speaker() -> tuple[int, str] | None:
    """The first process of this node under torchrun, as (pid, start time): a process of the same parent (the
    agent) with LOCAL_RANK=0 and this job's TORCHELASTIC_RUN_ID. One that has exited (its parent has not reaped it
    yet) shows no environment: the first started of this one's siblings, in the second before it (torchrun starts
    a node's processes in rank order); as that may be another rank (the first one reaped already), its exit status
    is what decides (_exited_saying_why). None where /proc cannot say (not Linux)."""
    run_id, parent, mine = os.environ.get("TORCHELASTIC_RUN_ID", ""), str(os.getppid()), _proc_stat(os.getpid())
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
    except OSError:
        return None
    siblings = [(pid, stat) for pid, stat in ((pid, _proc_stat(pid)) for pid in pids)
                if stat is not None and stat[1] == parent]
    for pid, stat in siblings:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"LOCAL_RANK=0" in environ and f"TORCHELASTIC_RUN_ID={run_id}".encode() in environ:
            return pid, stat[19]
    if mine is None:
        return None
    # among the siblings started in the second before this one only: the parent may hold older children (a test
    # runner's leftover zombies), and the oldest of all was taken for rank 0, found too old, and rank 0 not found
    near = [(pid, stat) for pid, stat in siblings if 0 <= int(mine[19]) - int(stat[19]) <= os.sysconf("SC_CLK_TCK")]
    if not near:
        return None
    pid, stat = min(near, key=lambda item: (int(item[1][19]), item[0]))
    return (pid, stat[19]) if stat[0] in ("Z", "X") else None


def _exited_saying_why(process: tuple[int, str]) -> bool:
    """Whether the process found by _local_speaker, seen exited, reported an error (exit 1 or 2: its message is
    out). Killed by a signal (OOM, SIGKILL) or ended another way, it said nothing of this rank's error, which this
    rank then says. A zombie's /proc/PID/stat field 52 (exit_code, Linux >= 3.5) holds its wait status; where that
    cannot be read (reaped already, an older kernel) it is taken to have said it, as before."""
    stat = _proc_stat(process[0])
    if stat is None or len(stat) < 50 or stat[19] != process[1] or stat[0] not in ("Z", "X") \
            or not stat[49].isdigit():
        return True
    status = int(stat[49])
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) in (1, 2)


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first, then the parent's pid); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def _running(process: tuple[int, str]) -> bool:
    """Whether the process found by _local_speaker still runs: not exited (a zombie its parent has not reaped yet
    has exited), and its pid not reused by another (its start time)."""
    stat = _proc_stat(process[0])
    return stat is not None and stat[0] not in ("Z", "X") and stat[19] == process[1]


def _first_to_say(message: str) -> bool:
    """The speaker's user error: False where a quiet rank of its node has said the same message already."""
    if not _process_group_started():
        return True
    from fewshot.train.distributed import claim_message

    return claim_message(sys.modules["torch.distributed"].get_rank(), message, call=_CALL.get())


def _first_exit(timeout_s: float) -> int | None:
    """The exit code rank 0 reported after its message, if it did (read after a peer's connection closed: rank 0
    reports before it exits, so a short wait covers the report still on its way)."""
    if "torch.distributed" not in sys.modules:
        return None
    from fewshot.train.distributed import reported_exit

    return reported_exit(0, timeout_s, call=_CALL.get())


def _a_peer_said_why() -> bool:
    """Whether another process of this job reported a failure (after its message, if it printed one; _dispatch):
    torchrun then ends this one with SIGTERM, or its collective meets a closed connection, and a line of its own
    ("stopped by SIGTERM", "stopped because another process ended first") only added to the one that says why."""
    if not _process_group_started():
        return False
    from fewshot.train.distributed import reported_exit

    dist = sys.modules["torch.distributed"]
    try:
        others = [r for r in range(dist.get_world_size()) if r != dist.get_rank()]
    except Exception:  # noqa: BLE001 - a group torn down meanwhile
        return False
    stops = (None, 128 + signal.SIGINT, 128 + signal.SIGTERM)  # a stop, not a failure: each rank says its own
    return any(reported_exit(rank, 0.0, call=_CALL.get()) not in stops for rank in others)


def _a_peer_stopped(exc: BaseException) -> bool:
    """A collective failed under torchrun because another rank is gone: rank 0's own checks (the folder's
    lock, free disk space, a checkpoint write) end it with a clear message, and rank 1 then met a closed
    connection and printed gloo's traceback with "internal error (a bug; ...)". Only a connection closed or
    reset by the peer counts: a timeout, a port in use or a bad NCCL setup keep their traceback."""
    if sys.modules.get("torch.distributed") is None or world_size_env() < 2 or not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return any(words in text for words in ("closed by peer", "reset by peer", "connection closed", "broken pipe"))


def exit_past_teardown(code: int) -> None:
    """Ends a command that failed under torchrun here, its process group still up (a failure leaves it: a peer may
    never answer destroy_process_group), with the interpreter's own exit skipped. Left to teardown, gloo's worker
    threads were destroyed still joinable now and then, and the process aborted ("terminate called without an
    active exception", SIGABRT) after its message: torchrun named exit -6 as the root cause of a user error (an
    --out that is a file). The atexit functions run first and the streams are flushed before and after them (what
    they print is kept). Not in a fork of the process that imported fewshot (a test's forked rank): a fork ends its
    own way, and the atexit functions there are its parent's."""
    import fewshot

    if not code or not _process_group_started() or os.getpid() != fewshot.IMPORTED_IN:
        return
    import atexit

    _flush_streams()
    try:
        atexit._run_exitfuncs()
    finally:
        _flush_streams()
        os._exit(code)


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
