"""The suite's own set-up (tests/conftest.py), where it changes how fast the tests run rather than what they check."""

from __future__ import annotations

import os

import pytest
import torch


def test_each_test_process_runs_torch_on_its_share_of_the_cores():
    """`make test` runs 2 processes on a 2-core CI machine: with torch's default thread count each ran 2 OpenMP
    threads, which spun waiting for each other (the suite took 10.5 minutes). Child processes inherit the share
    (torch reads OMP_NUM_THREADS when it loads)."""
    import conftest

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers < 2:
        pytest.skip("one test process: torch keeps its default thread count")
    if conftest.CALLERS_THREADS is not None:
        pytest.skip(f"OMP_NUM_THREADS={conftest.CALLERS_THREADS} was set by the caller and is kept")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, cores // workers)
    assert torch.get_num_threads() == share and os.environ["OMP_NUM_THREADS"] == str(share)



def test_a_forked_child_shows_warnings_and_log_records_on_its_stderr_as_a_started_process_does():
    """The forks that stand in for `python -m fewshot` (helpers.forked_cli) inherit pytest's per-test warning capture
    and logging handlers: a warning a user would see never reached the child's stderr, so `not in stderr` checks
    passed whatever the command said."""
    import logging
    import warnings

    from helpers import forked_cli

    def say() -> int:
        warnings.warn("a warning the user sees")
        warnings.warn("a deprecation a started interpreter hides", DeprecationWarning)
        logging.getLogger("fewshot.somewhere").warning("a log record the user sees")
        return 3

    proc = forked_cli.run(say, stdout=forked_cli.PIPE, stderr=forked_cli.PIPE, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "UserWarning: a warning the user sees" in proc.stderr and "a log record the user sees" in proc.stderr
    assert "deprecation" not in proc.stderr, proc.stderr
