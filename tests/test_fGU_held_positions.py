"""The cold-pool estimate (run_checks.cold_pool_limit) with a stopped decode's kept part and MoCo's entry (review
rev113): its words count only the files neither holds (#1), it reads MoCo's entry no second time but takes the
positions share_source found (#2), and kept rows count whole where no rows of MoCo's entry are counted free (#3)."""

from __future__ import annotations

from pathlib import Path

import pytest

import fewshot.data.cache as cache
from test_fGD_stopped_decode_kept import copied_pool, stopped_load
from test_fGR_kept_estimate_paths import estimate, moco_entry


@pytest.fixture
def pool(digits_root, tmp_path) -> list[Path]:
    return copied_pool(digits_root, tmp_path)


def test_the_words_count_the_files_neither_mocos_entry_nor_the_part_holds(pool, tmp_path, monkeypatch):
    """Rows 0-3 kept, MoCo's entry of files 2-5: only files 6 and 7 (2 s) are left; the words said 6 (6 s)."""
    cache_dir = tmp_path / "cache"
    stopped_load(monkeypatch, pool, cache_dir, after=4)
    moco = moco_entry(pool, cache_dir, pool[2:6])
    limit, words, _ = estimate(monkeypatch, tmp_path, pool, seconds=1, **moco)
    assert limit == 5  # the 4 free and the 1 file 1 s decodes
    assert ("decoding the 2 of them that neither MoCo's entry nor an earlier, stopped decode holds would take about "
            "2 s") in words, words


def test_the_positions_handed_on_are_used_without_reading_mocos_entry_again(pool, tmp_path, monkeypatch):
    """share_source found the rows MoCo's entry holds: the estimate takes them as they are (about 1 s of paths
    rebuilt for a 50k pool where it read them again)."""
    cache_dir = tmp_path / "cache"
    stopped_load(monkeypatch, pool, cache_dir, after=4)
    moco = moco_entry(pool, cache_dir, pool[2:6])
    reads: list[int] = []
    real = cache._rows_held
    monkeypatch.setattr(cache, "_rows_held", lambda *a, **k: reads.append(1) or real(*a, **k))
    limit, _, _ = estimate(monkeypatch, tmp_path, pool, seconds=2, **moco)
    assert limit is None and reads == []  # files 6 and 7 fit 2 s; MoCo's entry not opened for it


def test_kept_rows_count_whole_where_none_of_mocos_entry_counts_free(pool, tmp_path, monkeypatch):
    """MoCo's entry holds the 4 kept rows, but none of its rows is counted free (no held positions, as where MoCo
    decoded its whole pool): the kept rows must not be left out, or no file would count for them (8 s, not 4 s)."""
    cache_dir = tmp_path / "cache"
    stopped_load(monkeypatch, pool, cache_dir, after=4)
    moco_entry(pool, cache_dir, pool[:4])
    limit, words, _ = estimate(monkeypatch, tmp_path, pool, seconds=5, within=pool[:4])
    assert limit is None, words  # the 4 files left fit 5 s
    limit, words, _ = estimate(monkeypatch, tmp_path, pool, seconds=3, within=pool[:4])
    assert "decoding the 4 of them that an earlier, stopped decode did not keep would take about 4 s" in words
