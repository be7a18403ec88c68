"""What a second command in the same process (a notebook's) says again, as the shell would (review rev68): the
unlabeled pool's warnings where the pool's memo is reused, and the train.amp=fp16-on-a-CPU warning."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from fewshot import process_state


def _settled(root) -> None:
    """Every folder of ``root`` changed long ago, so that the pool's memo is kept (pool.STAMP_SETTLE_S)."""
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, (1e9, 1e9))


def test_the_pool_warnings_are_said_again_where_a_later_command_reuses_the_memo(copy_root, monkeypatch, capsys):
    """A later command with the pool's folders unchanged took the memo and said none of the scan's warnings."""
    from fewshot.config import resolve
    from fewshot.data import pool
    from fewshot.data.layout import scan_root

    shutil.rmtree(copy_root / "unlabeled")
    (copy_root / "unlabeled").write_text("not a folder")
    _settled(copy_root)
    cfg, infos = resolve(flags={"data.root": str(copy_root)}), scan_root(copy_root)
    scans = []
    scan = pool._pool_with_sources
    monkeypatch.setattr(pool, "_pool_with_sources", lambda *a: scans.append(a) or scan(*a))
    said = []
    for _ in range(2):
        capsys.readouterr()
        with process_state.kept():
            first = pool.pool_with_sources(cfg, infos)
            assert pool.pool_with_sources(cfg, infos) == first  # a command's stages: said once
        said.append(capsys.readouterr().err)
    assert len(scans) == 1  # the second command took the memo
    for err in said:
        assert err.count(f"{copy_root / 'unlabeled'} is a file, not a folder") == 1, said


def test_fp16_on_a_cpu_is_said_by_each_command(monkeypatch, capsys):
    """train.amp=fp16 on a CPU was said once per process: a notebook's second run went ~15x slower without a word."""
    from fewshot.train import start_warnings

    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: False, raising=False)
    cpu = torch.device("cpu")
    said = []
    for _ in range(2):
        capsys.readouterr()
        with process_state.kept():
            start_warnings.warn_cpu_fp16(torch.float16, cpu, True)
            start_warnings.warn_cpu_fp16(torch.float16, cpu, True)  # `fewshot run`'s next stage: said once
        said.append(capsys.readouterr().err)
    assert [err.count("train.amp=fp16 on a CPU") for err in said] == [1, 1], said


@pytest.mark.parametrize("sub", ["", "batch1"])  # the warning counts images at any depth (review rev72)
def test_a_misplaced_pool_emptied_between_commands_is_not_warned_about_again(copy_root, capsys, sub):
    """ROOT/<dataset>/unlabeled (never read) is warned about while it holds images; the memo's stamp did not cover
    it, so a later command replayed the warning after the user had emptied it (review rev70)."""
    from fewshot.config import resolve
    from fewshot.data import pool
    from fewshot.data.layout import scan_root

    name = sorted(p.name for p in (copy_root / "unlabeled").iterdir())[0]
    misplaced = copy_root / name / "unlabeled" / sub
    misplaced.mkdir(parents=True)
    moved = sorted((copy_root / "unlabeled" / name).iterdir())[0]
    shutil.move(moved, misplaced / moved.name)
    shutil.rmtree(copy_root / "unlabeled" / name)  # the dataset's own pool is gone: its train images stand in
    _settled(copy_root)
    cfg, infos = resolve(flags={"data.root": str(copy_root)}), scan_root(copy_root)
    said = []
    for step in range(2):
        capsys.readouterr()
        with process_state.kept():
            pool.pool_with_sources(cfg, infos)
        said.append(capsys.readouterr().err)
        if step == 0:
            (misplaced / moved.name).unlink()
            os.utime(misplaced, (1e9 + 60, 1e9 + 60))  # emptied long ago too: the stamp sees its new mtime
    warned = f"{copy_root / name / 'unlabeled'} is not read"
    assert warned in said[0], said
    assert warned not in said[1], said
