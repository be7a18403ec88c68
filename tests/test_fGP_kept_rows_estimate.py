"""`fewshot run` estimates, before it decodes a cold pool, whether decoding it whole fits the time decoding may take
(run_checks.cold_pool_limit). A stopped decode's kept part (KEY.part.u8) was not counted: a Ctrl-C at 90 % of the
pool was estimated as the whole pool again, and the run decoded only a random share of it. Only the rows still to
decode count now, read from the part's record; a part that cannot be read as one of these files counts none."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import fewshot.data.cache as cache
import fewshot.run_checks as run_checks
from test_fGD_stopped_decode_kept import SIZE, copied_pool, parts, real_images, stopped_load

PER_FILE_S = 1.0  # the decode rate the estimate is given (its timing stubbed): 8 files take 8 s


@pytest.fixture
def pool(digits_root, tmp_path) -> list[Path]:
    return copied_pool(digits_root, tmp_path)


def config(tmp_path: Path) -> dict:
    """What cold_pool_limit reads of a run's configuration: the pool decoded at SIZE into tmp_path/cache."""
    return {"data": {"root": str(tmp_path), "cache_dir": str(tmp_path / "cache"), "bit_depth": "auto",
                     "resize": "crop", "crop_pct": 1.0}, "model": {"img_size": SIZE}, "train": {"seed": 0}}


def estimate(monkeypatch, tmp_path: Path, paths: list[Path], seconds: float):
    """cold_pool_limit's (limit, words) for ``paths`` at crop 1.0 in ``seconds``, at PER_FILE_S a file."""
    monkeypatch.setattr(run_checks, "_timed_rate", lambda *a, **k: (PER_FILE_S, 0.0))
    limit, words, _ = run_checks.cold_pool_limit(config(tmp_path), paths, 1.0, seconds, floor=1, n=2)
    return limit, words


def test_a_part_holding_half_the_rows_halves_the_estimate(pool, tmp_path, monkeypatch):
    stopped_load(monkeypatch, pool, tmp_path / "cache", after=4)
    assert cache.kept_rows_at(pool, SIZE, tmp_path / "cache") == {0, 1, 2, 3}
    limit, words = estimate(monkeypatch, tmp_path, pool, seconds=3)
    assert limit is not None  # 4 s left to decode: still more than 3 s
    assert "decoding the 4 of them that an earlier, stopped decode did not keep would take about 4 s" in words
    limit, _ = estimate(monkeypatch, tmp_path, pool, seconds=5)
    assert limit is None  # the whole pool: its 4 rows left fit 5 s (8 s was estimated, and a share of 5 decoded)


def test_a_kept_row_whose_file_changed_is_counted_as_to_decode(pool, digits_root, tmp_path, monkeypatch):
    stopped_load(monkeypatch, pool, tmp_path / "cache", after=4)
    shutil.copy(real_images(digits_root)[20], pool[1])
    assert cache.kept_rows_at(pool, SIZE, tmp_path / "cache") == {0, 2, 3}
    assert "decoding the 5 of them" in estimate(monkeypatch, tmp_path, pool, seconds=3)[1]


@pytest.mark.parametrize("spoil", ["cut short", "of another list"])
def test_an_unreadable_or_foreign_part_leaves_the_estimate_unchanged(pool, tmp_path, monkeypatch, spoil):
    cache_dir = tmp_path / "cache"
    if spoil == "cut short":
        stopped_load(monkeypatch, pool, cache_dir, after=4)
        (part,) = parts(cache_dir)
        with open(part, "r+b") as fh:
            fh.truncate(part.stat().st_size - 5)
    else:  # the rows of the same files in another order, under this list's name: its stamps are of other files
        stopped_load(monkeypatch, pool[::-1], cache_dir, after=4)
        (other,) = parts(cache_dir)
        stopped_load(monkeypatch, pool, cache_dir, after=1)
        (part,) = (p for p in parts(cache_dir) if p != other)
        other.replace(part)
    before = part.read_bytes()
    assert cache.kept_rows_at(pool, SIZE, cache_dir) == set()
    limit, words = estimate(monkeypatch, tmp_path, pool, seconds=5)
    assert limit is not None and "decoding them all would take about 8 s" in words
    assert part.read_bytes() == before  # left for the load to say and delete (read_part)


def test_no_cache_folder_keeps_nothing(pool):
    assert cache.kept_rows_at(pool, SIZE, None) == set()
