"""`fewshot run`'s start-up with an unlabeled pool (fix fFR, hunt hBV findings 2 and 4).

A cached pool was keyed (every file stat'ed) four times and listed three times before the first training step:
13 s of a 1-minute budget on 50k files, with nothing printed. Pool images that are copies of val or test images were
trained on without a word, while README said they are left out. Tiny pools; the run stops where its first stage is
planned."""

from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest

import fewshot.data.cache as cache
import fewshot.run_stages as run_stages
from fewshot.cli import main
from fewshot.progress import set_enabled


class Planned(Exception):
    """Stops the run where its first stage is planned: the start-up is done by then."""


def run_until_planned(monkeypatch, root, out, semi_method: str = "pseudo") -> None:
    def plan_stage(*args, **kwargs):
        raise Planned

    monkeypatch.setattr(run_stages, "plan_stage", plan_stage)
    main(["run", "--data", str(root), "--out", str(out), "--budget-minutes", "1", "--model", "test_resnet",
          "--img-size", "32", "--no-progress", f"run.semi_method={semi_method}", "train.batch_size=8"])


def pool_files_of(root) -> list:
    return sorted(p for p in (root / "unlabeled").rglob("*.png"))


def test_a_warm_pool_is_stat_ed_once_by_the_run_s_start_up(copy_root, tmp_path, monkeypatch):
    """The second run finds the pool cached: each pool file is stat'ed once for its cache key, not once per check
    (pool_is_cached, the cold-share check, is_cached, load_images)."""
    run_until_planned(monkeypatch, copy_root, tmp_path / "first")  # decodes the pool into the cache
    pool = {os.path.abspath(p) for p in pool_files_of(copy_root)}
    stats: Counter = Counter()
    real_stat = os.stat

    def counted(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and os.path.abspath(path) in pool:
            stats[os.path.abspath(path)] += 1
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counted)
    run_until_planned(monkeypatch, copy_root, tmp_path / "second")
    assert set(stats) == pool
    assert max(stats.values()) == 1, stats.most_common(3)


def test_a_file_changed_after_the_shared_pass_is_decoded_again(copy_root):
    """Within shared_stat_pass a list is keyed by one stat pass; once it ends, a changed file changes the key and
    load_images decodes it again (no stale pixels for the next command)."""
    paths = pool_files_of(copy_root)[:4]
    where = copy_root / ".fewshot_cache"
    with cache.shared_stat_pass():
        first = cache.cache_key(paths, 16, 1.0)
        assert cache.load_images(paths, 16, where).images[0].float().mean() > 0
        assert cache.is_cached(paths, 16, where)
    shutil.copyfile(pool_files_of(copy_root)[10], paths[0])  # another image under the same name
    assert cache.cache_key(paths, 16, 1.0) != first
    assert not cache.is_cached(paths, 16, where)
    again = cache.load_images(paths, 16, where).images[0]
    assert bool((again == cache.load_images([pool_files_of(copy_root)[10]], 16, None).images[0]).all())


def test_a_stat_pass_over_many_files_shows_a_progress_line(copy_root, monkeypatch, capsys):
    monkeypatch.setattr(cache, "STAT_PROGRESS_FILES", 3)
    set_enabled(True)
    paths = pool_files_of(copy_root)[:5]
    with cache.shared_stat_pass():
        cache.cache_key(paths, 16, 1.0)
        cache.cache_key(paths, 16, 0.875)  # the same files at another crop: not stat'ed again
    cache.cache_key(paths[:2], 16, 1.0)  # a short list: no line
    err = capsys.readouterr().err
    assert err.count("checking 5 files against the decode cache: 5/5 (100%)") == 1, err
    assert "checking 2 files" not in err


@pytest.mark.parametrize("semi_method", ["pseudo", "fixmatch"])
def test_pool_copies_of_val_and_test_images_are_warned_of_with_a_count(copy_root, tmp_path, monkeypatch, capsys,
                                                                        semi_method):
    dataset = sorted(p.name for p in (copy_root / "unlabeled").iterdir())[0]
    folder = copy_root / "unlabeled" / dataset
    tests = sorted((copy_root / dataset / "test").glob("*.png"))[:2]
    val = sorted((copy_root / dataset / "val").rglob("*.png"))[0]
    for k, src in enumerate(tests):
        shutil.copyfile(src, folder / f"copy_of_test_{k}.png")
    shutil.copyfile(val, folder / "copy_of_val.png")
    run_until_planned(monkeypatch, copy_root, tmp_path / "out", semi_method)
    err = capsys.readouterr().err
    n_pool = len(pool_files_of(copy_root))
    assert f"warning: 2 of the unlabeled pool's {n_pool} images are exact copies of test images" in err, err
    assert f"{folder / 'copy_of_test_0.png'} (= {tests[0]})" in err
    assert f"warning: 1 of the unlabeled pool's {n_pool} images are exact copies of val images" in err
    assert "what it chooses (best.pt, the round that predicts, run.balance)" in err
