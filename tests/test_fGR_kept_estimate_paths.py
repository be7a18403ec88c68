"""The start-up estimate of a cold pool's decode (run_checks.cold_pool_limit) with a stopped decode's kept part, each
path on its own: rows MoCo's entry holds too were subtracted twice (review rev111 #1), and the tests of fGP let a
kept part be dropped from the recorded-rate path, the timed path, their words or the early whole-pool answer
without failing (rev111 #2). The note that a large keep can take a while is said by each process that keeps (#3)."""

from __future__ import annotations

from pathlib import Path

import pytest

import fewshot.data.cache_words as cache_words
import fewshot.run_checks as run_checks
from fewshot.data.cache import load_images, rows_held_at
from test_fGD_stopped_decode_kept import SIZE, copied_pool, stopped_load
from test_fGP_kept_part_one_rank import as_rank
from test_fGP_kept_rows_estimate import config


@pytest.fixture
def pool(digits_root, tmp_path) -> list[Path]:
    return copied_pool(digits_root, tmp_path)


def estimate(monkeypatch, tmp_path: Path, paths: list[Path], seconds: float, floor: int = 1, **moco):
    """cold_pool_limit's (limit, words) at 1 s a file, and how many times the pool was timed for it."""
    timed: list[int] = []

    def rate(*args, **kwargs):
        timed.append(1)
        return 1.0, 0.0

    monkeypatch.setattr(run_checks, "_timed_rate", rate)
    limit, words, _ = run_checks.cold_pool_limit(config(tmp_path), paths, 1.0, seconds, floor=floor, n=2, **moco)
    return limit, words, len(timed)


def moco_entry(pool: list[Path], cache_dir: Path, within: list[Path]) -> dict:
    """MoCo's entry of ``within`` written, and cold_pool_limit's arguments for it (``held``: the rows it holds, as
    share_source hands them on)."""
    load_images(within, SIZE, cache_dir, threads=1)
    return {"within": within, "held": frozenset(rows_held_at(pool, SIZE, cache_dir, within))}


def test_rows_kept_before_mocos_entry_was_written_count_once(pool, tmp_path, monkeypatch):
    """The reviewer's probe: rows 0-3 kept, then MoCo's entry of the same 4 files: 4 s are still to decode."""
    cache_dir = tmp_path / "cache"
    stopped_load(monkeypatch, pool, cache_dir, after=4)
    moco = moco_entry(pool, cache_dir, pool[:4])
    assert moco["held"] == {0, 1, 2, 3}
    limit, words, _ = estimate(monkeypatch, tmp_path, pool, seconds=3, **moco)
    assert limit is not None  # none of the kept rows is outside MoCo's entry: 4 files left (rev113 #1: not 8 s)
    assert "decoding the 4 of them that MoCo's entry does not hold would take about 4 s" in words, words
    limit, _, _ = estimate(monkeypatch, tmp_path, pool, seconds=4, **moco)
    assert limit is None  # its 4 files left fit 4 s


def test_kept_rows_outside_mocos_entry_still_count(pool, tmp_path, monkeypatch):
    """Rows 0-3 kept, MoCo's entry of files 2-5: rows 0 and 1 are read from the part, 2-5 from the entry, and only
    6 and 7 (2 s) are decoded, by position (the larger of the two counts would leave 4 s)."""
    cache_dir = tmp_path / "cache"
    stopped_load(monkeypatch, pool, cache_dir, after=4)
    moco = moco_entry(pool, cache_dir, pool[2:6])
    limit, words, _ = estimate(monkeypatch, tmp_path, pool, seconds=2, **moco)
    assert limit is None, words


def test_a_pool_left_under_two_floors_is_decoded_whole_without_timing(pool, tmp_path, monkeypatch):
    stopped_load(monkeypatch, pool, tmp_path / "cache", after=4)
    limit, words, timed = estimate(monkeypatch, tmp_path, pool, seconds=1, floor=2)  # 4 left: no share is smaller
    assert (limit, words, timed) == (None, "", 0)


def test_the_timed_path_counts_the_kept_rows(pool, tmp_path, monkeypatch):
    stopped_load(monkeypatch, pool, tmp_path / "cache", after=4)
    limit, words, timed = estimate(monkeypatch, tmp_path, pool, seconds=5)  # no rate recorded yet: timed
    assert timed == 1 and limit is None, words


def test_the_recorded_rate_path_counts_the_kept_rows(pool, tmp_path, monkeypatch):
    stopped_load(monkeypatch, pool, tmp_path / "cache", after=4)
    estimate(monkeypatch, tmp_path, pool, seconds=3)  # timed, its rate recorded
    limit, words, timed = estimate(monkeypatch, tmp_path, pool, seconds=5)
    assert (limit, words, timed) == (None, "", 0)  # the whole pool at the recorded rate, not timed again


def test_a_reused_share_says_only_the_rows_still_to_decode(pool, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    stopped_load(monkeypatch, pool, cache_dir, after=4)
    limit, _, _ = estimate(monkeypatch, tmp_path, pool, seconds=3)
    load_images(run_checks._share_of(config(tmp_path), pool)(limit), SIZE, cache_dir, threads=1)  # that share run
    again, words, timed = estimate(monkeypatch, tmp_path, pool, seconds=3)
    assert (again, timed) == (limit, 0) and "timed by an earlier run" in words
    assert "decoding the 4 of them that an earlier, stopped decode did not keep would take about 4 s" in words


def test_another_nodes_first_process_says_its_keep_can_take_a_while(pool, tmp_path, monkeypatch, capsys):
    """It keeps its rows (its node's cache folder may be its own): it says so, as rank 0 does."""
    monkeypatch.setattr(cache_words, "KEEP_NOTE_BYTES", 1)
    as_rank(monkeypatch, 2, 0, 4)
    capsys.readouterr()
    stopped_load(monkeypatch, pool, tmp_path / "cache", after=3)
    assert "keeping up to 3 decoded images in the image cache" in capsys.readouterr().err


def test_a_quiet_rank_keeps_nothing_and_says_nothing_of_it(pool, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cache_words, "KEEP_NOTE_BYTES", 1)
    as_rank(monkeypatch, 1, 1, 2)
    capsys.readouterr()
    stopped_load(monkeypatch, pool, tmp_path / "cache", after=3)
    assert "keeping" not in capsys.readouterr().err
