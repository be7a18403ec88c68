"""The note for torchrun ranks that share a CPU's cores (hunt hBP: 2 ranks on 2 busy cores trained no faster than
one process, and with --batch-size per process a budget held half the steps, without a word)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from fewshot.train import start_warnings
from fewshot.train.distributed import DistContext
from fewshot.train.start_warnings import shared_cores_note


def test_the_note_is_given_only_when_the_ranks_threads_exceed_the_free_cores():
    assert shared_cores_note(1, 8, 2) is None  # one process: nothing shared
    assert shared_cores_note(2, 1, 4) is None and shared_cores_note(2, 2, 4) is None
    words = shared_cores_note(2, 2, 2)
    assert "2 torchrun processes on this machine share its 2 usable CPU cores (2 thread(s) each)" in words
    assert "will not be faster" in words and "--batch-size is per process" in words and "fewer" in words
    # 2 ranks x 1 thread on 2 cores that other work keeps busy: shared too
    assert shared_cores_note(2, 1, 2) is None
    busy = shared_cores_note(2, 1, 2, busy=1.6)
    assert busy is not None and "other work keeps about 1 of them busy" in busy


def test_rank_0_says_it_once_on_a_cpu(monkeypatch, capsys):
    monkeypatch.setattr(start_warnings, "usable_cores", lambda: 2)
    monkeypatch.setattr(start_warnings, "_TOLD_SHARED_CORES", set())
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cpu = SimpleNamespace(type="cpu")
    start_warnings.warn_shared_cores(cpu, DistContext(rank=1, world=2))
    start_warnings.warn_shared_cores(SimpleNamespace(type="cuda"), DistContext(rank=0, world=2))
    assert capsys.readouterr().out == ""
    start_warnings.warn_shared_cores(cpu, DistContext(rank=0, world=2))
    start_warnings.warn_shared_cores(cpu, DistContext(rank=0, world=2))
    assert capsys.readouterr().out.count("share its 2 usable CPU cores") == 1
