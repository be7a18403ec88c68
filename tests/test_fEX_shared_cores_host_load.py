"""The shared-cores note on a share of a busy host (review rev84, #4): the load average counts the whole host, so a
container or cluster job granted 4 cores of a host at load 40 read "other work keeps about 38 of them busy". The
note now counts the cores this process may use (affinity, a cgroup CPU quota) and the host's load only where those
cores are the whole host's."""

from __future__ import annotations

import os

import torch

from fewshot import runtime
from fewshot.train import start_warnings
from fewshot.train.distributed import DistContext
from fewshot.train.start_warnings import shared_cores_note


def _host(monkeypatch, affinity: int, host: int, load: float, quota: int | None = None, threads: int = 1) -> None:
    monkeypatch.setattr(start_warnings, "usable_cores", lambda: affinity)
    monkeypatch.setattr(start_warnings, "cpu_quota_cores", lambda: quota, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: host)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(start_warnings, "_TOLD_SHARED_CORES", set())
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def _said(capsys) -> str:
    start_warnings.warn_shared_cores(torch.device("cpu"), DistContext(rank=0, world=2))
    return capsys.readouterr().out


def test_a_job_granted_4_cores_of_a_busy_host_is_told_nothing_about_the_hosts_load(monkeypatch, capsys):
    _host(monkeypatch, affinity=4, host=64, load=40.0)
    assert _said(capsys) == ""  # 2 ranks x 1 thread fit its 4 cores; the host's other jobs run on other cores
    _host(monkeypatch, affinity=64, host=64, load=40.0, quota=4)  # a container: all cores in reach, a quota of 4
    assert start_warnings.cores_and_load(2) == (4, 0.0)
    _host(monkeypatch, affinity=4, host=64, load=40.0, threads=4)  # its own ranks oversubscribe its cores
    said = _said(capsys)
    assert "share its 4 usable CPU cores (4 thread(s) each)" in said and "other work" not in said, said


def test_the_hosts_load_counts_where_the_cores_are_the_whole_host_and_never_past_them(monkeypatch, capsys):
    _host(monkeypatch, affinity=4, host=4, load=40.0)
    assert start_warnings.cores_and_load(2) == (4, 38.0)
    said = _said(capsys)
    assert "share its 4 usable CPU cores (1 thread(s) each, and other work keeps about 4 of them busy)" in said, said
    assert shared_cores_note(2, 1, 2, busy=7.3).count("keeps about 2 of them busy") == 1


def test_the_cgroup_quota_is_read_in_cores_rounded_up(monkeypatch, tmp_path):
    def quota(*files: str) -> int | None:
        paths = []
        for i, text in enumerate(files):
            (tmp_path / f"f{i}").write_text(text)
            paths.append(str(tmp_path / f"f{i}"))
        pair = (paths[0], paths[1] if len(paths) > 1 else None)
        monkeypatch.setattr(runtime, "CGROUP_CPU_FILES", ((str(tmp_path / "missing"), None), pair))
        return runtime.cpu_quota_cores()

    assert quota("400000 100000\n") == 4 and quota("150000 100000\n") == 2 and quota("max 100000\n") is None
    assert quota("200000\n", "100000\n") == 2 and quota("-1\n", "100000\n") is None
    monkeypatch.setattr(runtime, "CGROUP_CPU_FILES", ((str(tmp_path / "missing"), None),))
    assert runtime.cpu_quota_cores() is None
