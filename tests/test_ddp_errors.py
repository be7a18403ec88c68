"""Errors and signals under torchrun that one rank meets alone: each job ends in seconds with one message.

The process tests start the 2 ranks by hand with torchrun's environment (TORCHELASTIC_RUN_ID included), which
is faster than a torchrun launch and lets the test signal each rank and read each one's exit status. Cases with no
signal from outside and no look at a sibling's /proc run their ranks as forks of the test process (forked_ranks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.checks import run_main
from helpers.forked_torchrun import forked_torchrun
from helpers.tiny import dist_env, free_port

WORKER = Path(__file__).parent / "helpers" / "ddp_error_worker.py"
TIMEOUT = 120


def start_ranks(case: str, tmp_path: Path, ranks: int = 2) -> list[subprocess.Popen]:
    port, procs = str(free_port()), []
    for rank in range(ranks):
        env = {**dist_env(), "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_PORT": port,
               "TORCHELASTIC_RUN_ID": "test"}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), case, str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def forked_ranks(case: str, tmp_path: Path) -> tuple[list[int], str]:
    """The 2 ranks of a case that needs no signal from outside nor a look at a sibling's /proc, as forks of this
    process (no interpreter start nor torch import per rank), with start_ranks' environment (rank 0 serves the
    store)."""
    return forked_torchrun(WORKER, [case, tmp_path], tmp_path, {"TORCHELASTIC_RUN_ID": "test"}, timeout=TIMEOUT,
                           agent=False)


def finish(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> tuple[list[int], str]:
    outs = []
    for proc in procs:
        try:
            outs.append("".join(proc.communicate(timeout=timeout)))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a rank still running: " + "".join(p.communicate()[1] for p in procs)[-3000:])
    return [p.returncode for p in procs], "".join(outs)


def test_an_error_of_rank_1_alone_is_said_at_once_naming_the_rank(tmp_path):
    """Rank 0 waits in a collective and never reports, so rank 1 waited 60 s for it (SPEAKER_WAIT_S), then printed
    its error without saying that rank 0 had not met it. Rank 0 then adds no line of its own."""
    started = time.monotonic()
    codes, out = forked_ranks("own_error", tmp_path)
    took = time.monotonic() - started
    assert codes[1] == 2 and codes[0] != 0, (codes, out)
    assert out.count("fewshot train: rank 1: error: a broken image in the pool (own_error)") == 1, out
    assert "another process" not in out and "internal error" not in out, out
    assert took < 45, (took, out)  # start-up and the 3 s wait; was 60 s and more


def test_an_error_rank_0_meets_after_rank_1_said_it_is_said_once(tmp_path):
    """Rank 1 said it (its wait for rank 0 ended first); rank 0, alive here (torchrun would end it), meets the same
    error later and keeps quiet instead of saying it a second time."""
    codes, out = forked_ranks("later", tmp_path)
    assert codes == [2, 2], (codes, out)
    assert out.count("error: a broken image in the pool (later)") == 1, out
    assert "rank 1: error: a broken image" in out, out


def test_sigterm_before_training_says_one_line_and_exits_143(tmp_path):
    """Under torchrun SIGTERM was left at its default: `timeout -s TERM` on torchrun before training ended every
    rank silently with -15. Rank 1 (in Python) stops as on Ctrl-C; rank 0, waiting in the rendezvous where no
    Python handler runs, is ended by the watcher thread, which says the stop."""
    procs = start_ranks("sigterm", tmp_path)
    wait_ready(procs)
    time.sleep(0.5)
    started = time.monotonic()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    codes, out = finish(procs)
    assert codes == [143, 143], (codes, out)
    assert out.count("fewshot train: stopped by SIGTERM") == 1, out
    assert time.monotonic() - started < 20, out  # the watcher's 2 s, not the rendezvous' 30 min


def wait_ready(procs: list[subprocess.Popen]) -> None:
    for proc in procs:  # each says it is ready on its own line before the wait
        line = proc.stdout.readline()
        assert line.startswith("ready"), (line, proc.stderr.read() if proc.poll() is not None else "")


def test_an_error_said_in_a_first_call_is_said_again_in_a_second(tmp_path):
    """Two cli.main calls in one process under torchrun (the group kept after the first one's failure): the store
    keys of the first call (rank 0's exit code, rank 1's claim of the message) answered the second one's waits,
    and its error was said by nobody. Each call has its own keys."""
    codes, out = forked_ranks("twice", tmp_path)
    assert codes == [2, 2], (codes, out)
    assert out.count("fewshot train: rank 1: error: a broken image in the pool (twice)") == 2, out


def test_a_clean_stop_with_a_slow_shutdown_is_not_ended_by_the_watcher(tmp_path):
    """SIGTERM and torchrun's copy of it during training: the training loop's handler took it and stopped cleanly,
    but the watcher thread, finding sigterm_as_interrupt's handler back during a slow process-group shutdown
    (NCCL), took the rank for one blocked in a wait: it added a second stop line and cut the shutdown short."""
    procs = start_ranks("clean_stop", tmp_path)
    wait_ready(procs)
    for _ in range(2):  # the signal, then the copy torchrun forwards
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
    codes, out = finish(procs)
    assert codes == [143, 143], (codes, out)
    assert out.count("stopped by SIGTERM") == 1 and "if another process" not in out, out
    assert "fewshot train: stopped by SIGTERM after a whole step; checkpoint written" in out, out


def test_a_usage_error_of_every_rank_is_said_once_without_torchrun_ending_the_others(tmp_path):
    """Before a process group a quiet rank slept 2 s for torchrun to end it, then said the error again: a slow exit
    of rank 0 or a --monitor-interval over 2 s printed it once per process. The quiet rank sees that rank 0, the
    first process of its node, has exited (here nobody ends rank 1). An older child of the same parent, exited and
    not reaped (a test runner's leftover), was taken for rank 0 in CI, found too old, and rank 1 spoke too."""
    leftover = subprocess.Popen([sys.executable, "-c", "pass"])
    while _state(leftover.pid) not in ("Z", "X"):  # exited, unreaped: a zombie child of this process
        time.sleep(0.05)
    time.sleep(1.2)  # older than the second _local_speaker looks back
    try:
        procs = start_ranks("usage_all", tmp_path)
        codes, out = finish(procs[::-1])  # rank 0 left unreaped while rank 1 looks, as torchrun's agent leaves it
    finally:
        leftover.wait()
    assert codes == [2, 2], (codes, out)
    assert out.count("unrecognized arguments: --bogus") == 1 and "rank 1: " not in out, out


def _state(pid: int) -> str:
    """A process's state letter from /proc/PID/stat ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return ""


def test_a_usage_error_of_rank_1_alone_is_said_while_rank_0_runs(tmp_path):
    """Rank 0 is seen running: rank 1 waits for it (SPEAKER_EXIT_WAIT_S, 1.5 s here), then says its own error."""
    procs = start_ranks("usage_rank_1", tmp_path)
    wait_ready(procs[:1])
    codes, out = finish(procs[1:])
    procs[0].send_signal(signal.SIGTERM)
    finish(procs[:1])
    assert codes == [2] and "rank 1: fewshot train: error: unrecognized arguments: --bogus" in out, (codes, out)


def test_a_usage_error_of_rank_1_is_said_when_rank_0_was_killed_before_saying_anything(tmp_path):
    """Rank 0 killed (the OOM killer, SIGKILL) before the process group said nothing, yet rank 1, seeing it exited,
    took it for the speaker of its error and kept quiet: the job ended without a message. Only a first process that
    exited 1 or 2 (it reported an error) has spoken. Rank 0 is left unreaped while rank 1 looks, as in usage_all."""
    procs = start_ranks("usage_rank_1_killed_0", tmp_path)
    codes, out = finish(procs[::-1])
    assert codes == [2, -signal.SIGKILL], (codes, out)
    assert out.count("unrecognized arguments: --bogus") == 1, out
    assert "rank 1: fewshot train: error: unrecognized arguments: --bogus" in out, out


def test_a_first_process_has_said_why_only_where_it_exited_reporting_an_error():
    """What _exited_saying_why reads in a zombie's /proc/PID/stat: exit 1 or 2 said why; a kill or exit 0 did not.
    Where /proc cannot say (the process reaped, another pid), the old answer stands: it did."""
    from fewshot import cli_ranks

    if cli_ranks._proc_stat(os.getpid()) is None or len(cli_ranks._proc_stat(os.getpid())) < 50:
        pytest.skip("no /proc/PID/stat exit_code here (not Linux >= 3.5)")
    procs = {code: subprocess.Popen(["sh", "-c", f"exit {code}"]) for code in (0, 1, 2, 3)}
    procs["killed"] = subprocess.Popen(["sleep", "60"])
    procs["killed"].kill()
    answers, deadline = {}, time.monotonic() + 30
    for name, proc in procs.items():
        while cli_ranks._proc_stat(proc.pid)[0] not in ("Z", "X"):  # exited, and not reaped: Popen.poll() is not called
            assert time.monotonic() < deadline, name
            time.sleep(0.01)
        answers[name] = cli_ranks._exited_saying_why((proc.pid, cli_ranks._proc_stat(proc.pid)[19]))
    assert answers == {0: False, 1: True, 2: True, 3: False, "killed": False}, answers
    reaped = procs[0]
    started = cli_ranks._proc_stat(reaped.pid)[19]
    reaped.wait()
    assert cli_ranks._exited_saying_why((reaped.pid, started)) is True
    for proc in procs.values():
        proc.wait()


@pytest.fixture
def rank_1(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    return monkeypatch


def test_local_rank_set_by_hand_outside_torchrun_still_says_its_error(rank_1, tmp_path):
    """`WORLD_SIZE=2 LOCAL_RANK=1 fewshot eval ...` outside torchrun exited 2 without a word: it kept quiet for a
    rank 0 that did not exist. Only torchrun's agent (TORCHELASTIC_RUN_ID) makes a rank quiet."""
    rc, _, err = run_main("eval", tmp_path, "--data", tmp_path)
    assert rc == 2 and "runs in one process, but WORLD_SIZE is 2" in err, err


def test_a_usage_error_rank_1_alone_meets_is_said_with_its_rank(rank_1, tmp_path):
    """A flag given to rank 1 only: rank 1 held argparse's message for rank 0 and exited 2, torchrun ended rank 0,
    and nobody printed anything. A quiet rank that torchrun has not ended within the grace says it itself."""
    from fewshot import cli_ranks

    rank_1.setenv("TORCHELASTIC_RUN_ID", "test")
    rank_1.setattr(cli_ranks, "ARGPARSE_GRACE_S", 0.0)
    rc, out, err = run_main("train", "--data", tmp_path, "--out", tmp_path / "r", "--bogus")
    assert rc == 2 and "rank 1: fewshot train: error: unrecognized arguments: --bogus" in err, (out, err)
    assert all(line.startswith("rank 1: ") for line in err.splitlines()), err
    rc, _, err = run_main("eval", tmp_path, "--data", tmp_path)  # a user error before any process group
    assert rc == 2 and "fewshot eval: rank 1: error: `fewshot eval` runs in one process" in err, err


EXIT_PAST_TEARDOWN = """
import atexit, os, sys, tempfile, threading, time
import torch.distributed as dist
import fewshot.cli as cli

if sys.argv[1] == "group":
    dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
if sys.argv[3] == "fork":  # a test's forked rank: it ends its own way (os._exit), and this process's atexit is not
    pid = os.fork()        # the fork's own
    if pid:
        sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    cli.main = lambda started=None: int(sys.argv[2])
    os.write(1, b"fork returned %d;" % cli.console_main())
    os._exit(0)
# the interpreter's exit waits for this thread (a process that skips it ends before the thread speaks)
threading.Thread(target=lambda: (time.sleep(1.0), os.write(1, b"teardown ran;"))).start()
atexit.register(lambda: print("atexit ran;"))  # not flushed: the exit must
cli.main = lambda started=None: int(sys.argv[2])
sys.stdout.write("written, not flushed;")
raise SystemExit(cli.console_main())
"""


@pytest.mark.parametrize("group, code, fork", [("group", 2, ""), ("none", 2, ""), ("group", 0, ""),
                                               ("group", 2, "fork")])
def test_a_failure_with_its_process_group_up_exits_past_the_interpreters_teardown(group, code, fork, tmp_path):
    """A user error found by rank 0 after the barrier (an --out that is a file) returned with the gloo group still
    up, and the interpreter's teardown destroyed gloo's threads still joinable now and then: SIGABRT after the
    message, torchrun's root cause "exitcode -6". Such a failure now exits past the teardown (what is written is
    flushed, the atexit functions run, and what they print is flushed too); without a group, or on success (the
    group is shut down first; here the stand-in main leaves it up), the interpreter exits as ever. A fork of the
    process (a test's forked rank) returns the code to its caller: its atexit functions are its parent's."""
    env = {k: v for k, v in dist_env().items() if k != "PYTHONUNBUFFERED"}  # buffered, as `make test` runs it
    proc = subprocess.run([sys.executable, "-c", EXIT_PAST_TEARDOWN, group, str(code), fork], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    if fork:
        assert proc.returncode == 0 and proc.stdout == f"fork returned {code};", proc
        return
    assert proc.returncode == code, proc
    assert "written, not flushed;" in proc.stdout and "atexit ran;" in proc.stdout, proc
    assert ("teardown ran;" in proc.stdout) == (group == "none" or code == 0), proc
