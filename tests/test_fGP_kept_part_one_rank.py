"""Under torchrun every process decodes the same pool into its own file: a stop made each of them move and sync its
rows into the kept part (KEY.part.u8), and the last rename threw the others' away. Only the first process of each
node keeps its rows now; the others leave nothing behind and say nothing of it in their stop line."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import fewshot.data.cache_partial as cache_partial
import fewshot.data.decode_many as decode_many
from fewshot.data.cache import load_images
from helpers.forked_torchrun import forked_torchrun
from test_fGD_stopped_decode_kept import SIZE, copied_pool, parts, stopped_load
from test_fGF_kept_part_size import trailer


@pytest.fixture
def pool(digits_root, tmp_path) -> list[Path]:
    return copied_pool(digits_root, tmp_path)


def as_rank(monkeypatch, rank: int, local_rank: int, world: int) -> None:
    """torchrun's environment for one of its processes (its agent sets TORCHELASTIC_RUN_ID beside the ranks)."""
    for name, value in {"RANK": rank, "LOCAL_RANK": local_rank, "WORLD_SIZE": world,
                        "TORCHELASTIC_RUN_ID": "fGP"}.items():
        monkeypatch.setenv(name, str(value))


def test_a_quiet_rank_keeps_nothing_and_leaves_no_file(pool, tmp_path, monkeypatch):
    paths, cache_dir = pool, tmp_path / "cache"
    cache_partial._KEPT.clear()
    as_rank(monkeypatch, 1, 1, 2)
    stopped_load(monkeypatch, paths, cache_dir, after=3)
    assert parts(cache_dir) == [] and sorted(p.name for p in cache_dir.iterdir()) == []  # nor its temporary file
    assert cache_partial.kept_note() == ""  # its stop line says nothing was kept by it


@pytest.mark.parametrize("rank, local_rank, world", [(0, 0, 2), (2, 0, 4)])
def test_the_first_process_of_a_node_keeps_its_rows(pool, tmp_path, monkeypatch, rank, local_rank, world):
    """Rank 0, and the first process of another node (its cache folder may be that node's own)."""
    paths, cache_dir = pool, tmp_path / "cache"
    cache_partial._KEPT.clear()
    as_rank(monkeypatch, rank, local_rank, world)
    stopped_load(monkeypatch, paths, cache_dir, after=3)
    (part,) = parts(cache_dir)
    assert trailer(part)[1]["rows"] == [0, 1, 2]
    assert cache_partial.kept_note().startswith("up to 3 of the 8 images decoded while decoding images are kept")


def _rank_main(pool_dir: str, cache_dir: str) -> None:
    """One forked rank: rank 0 is stopped after 3 decoded images; rank 1 after 4, once rank 0's stop has kept its
    part (without the fix, rank 1 then renamed its own rows over it, 4 or 7 of them: the last rename won). Rank 1
    may copy rank 0's 3 rows first: 4 is fewer than the 5 left then."""
    rank = int(os.environ["RANK"])
    paths = sorted(Path(pool_dir).glob("*.png"))
    real, seen = decode_many.decode_resized, []

    def decode(path, *args):
        if len(seen) >= (3 if rank == 0 else 4):
            deadline = time.monotonic() + 60
            while rank == 1 and not list(Path(cache_dir).glob("*.part.u8")) and time.monotonic() < deadline:
                time.sleep(0.02)
            raise KeyboardInterrupt
        seen.append(path)
        return real(path, *args)

    decode_many.decode_resized = decode
    try:
        load_images(paths, SIZE, Path(cache_dir), threads=1)
    except KeyboardInterrupt:
        print(f"rank {rank} stopped; kept: {cache_partial.kept_note() or 'nothing'}", flush=True)


def test_two_forked_ranks_stopped_keep_rank_0s_part_only(pool, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_partial._KEPT.clear()  # the forks start from this process's: an earlier test's keep is not theirs
    codes, out = forked_torchrun(Path(__file__), [pool[0].parent, cache_dir], tmp_path, timeout=120)
    assert codes == [0, 0], out
    assert len(parts(cache_dir)) == 1, (out, sorted(cache_dir.iterdir()))
    (part,) = parts(cache_dir)
    assert trailer(part)[1]["rows"] == [0, 1, 2], out  # rank 0's rows, not rank 1's renamed over them
    assert sorted(p.name for p in cache_dir.iterdir()) == [part.name], out  # no temporary file of rank 1's
    assert "rank 0 stopped; kept: up to 3 of the 8 images" in out and "rank 1 stopped; kept: nothing" in out, out


if __name__ == "__main__":  # a forked rank of test_two_forked_ranks_stopped_keep_rank_0s_part_only
    _rank_main(*sys.argv[1:3])
