"""How `fewshot run` decodes a cold unlabeled pool (fix fEE, hunt hBK findings 1 and 3).

FixMatch decoded its whole cold pool before planning (a 10k-file pool of slow files ate the budget before training):
it now decodes the seeded random share that a quarter of the fine-tuning's time holds, trains on exactly those files
in every session, and summary.json says the pool is a share. With --pretrain, self-training and FixMatch read their
rows from the cache entry MoCo's check has just written (a dataset without a pool stands in its train images, so
MoCo's list is another list), instead of decoding the same files again. Decoding speed is faked, never measured."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import torch

import fewshot.data.cache as cache
import fewshot.data.decode_many as decode_many
import fewshot.run_checks as run_checks
import fewshot.run_closing as run_closing
import fewshot.run_stages as run_stages
import fewshot.train.semi as semi
from fewshot.cli import main


class Planned(Exception):
    """Stops the run where its first stage is planned: start-up and the stage's task are done by then."""


def decodes_counted(monkeypatch, seconds_per_file: float, sample: int = 8) -> dict:
    """Every pool file decoded into a cache entry ("cached") or timed ("timing"); timing takes ``seconds_per_file``
    (faked) on ``sample`` files, the rest decodes for real."""
    seen: dict = {"timing": [], "cached": []}
    real = cache._decode_into

    def decode_into(out, paths, *args, **kwargs):
        seen["cached"] += [str(p) for p in paths if "unlabeled" in str(p)]
        return real(out, paths, *args, **kwargs)

    def timing(paths, *args, **kwargs):
        seen["timing"] += [str(p) for p in paths]
        return seconds_per_file

    monkeypatch.setattr(cache, "_decode_into", decode_into)
    monkeypatch.setattr(decode_many, "decode_seconds_per_image", timing)
    monkeypatch.setattr(run_checks, "DECODE_SAMPLE", sample)
    return seen


def stopped_at_planning(monkeypatch) -> dict:
    """The FixMatch streams the stages build and the summary the run plans with; the run stops at the planning."""
    from fewshot.pipeline import PipelineRun

    built: dict = {"streams": [], "summary": []}
    real_stream, real_plan = semi.UnlabeledStream, PipelineRun.plan_budget

    def stream(*args, **kwargs):
        built["streams"].append(real_stream(*args, **kwargs))
        return built["streams"][-1]

    def plan_budget(self):
        real_plan(self)
        built["summary"].append(json.loads(json.dumps(self.summary)))

    def plan_stage(*args, **kwargs):
        raise Planned

    monkeypatch.setattr(semi, "UnlabeledStream", stream)
    monkeypatch.setattr(PipelineRun, "plan_budget", plan_budget)
    monkeypatch.setattr(run_stages, "plan_stage", plan_stage)
    return built


def run_words(root, out, *extra, semi_method: str = "fixmatch") -> list:
    return ["run", "--data", str(root), "--out", str(out), "--budget-minutes", "1", "--model", "test_resnet",
            "--img-size", "32", "--no-progress", f"run.semi_method={semi_method}", "train.batch_size=8", *extra]


def settings(root, **flags):
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root

    cfg = resolve(flags={"data.root": str(root), "model.img_size": 16, **flags})
    return cfg, scan_root(root, None, splits=("train", "val"))


def test_a_slow_cold_fixmatch_pool_is_decoded_and_trained_on_as_a_seeded_share(copy_root, tmp_path, monkeypatch,
                                                                               capsys):
    seen = decodes_counted(monkeypatch, 0.125)  # 200 files: 25 s, more than a quarter of the 60 s (15 s): 120 files
    built = stopped_at_planning(monkeypatch)
    main(run_words(copy_root, tmp_path / "out"))
    out = capsys.readouterr().out
    assert "FixMatch's 200 pool images are not in the decode cache" in out, out
    assert "decoding a seeded random 120 of them, the pool FixMatch trains on" in out
    assert "on an unlabeled pool of 120 images, a seeded random share of its 200 files" in out
    assert len(seen["cached"]) == 120 and len(set(seen["cached"])) == 120  # the share, once
    assert not set(seen["timing"]) & set(seen["cached"])
    cfg, infos = settings(copy_root)
    share = run_checks.moco_pool_share(cfg, semi.pool_files(cfg, infos, exclude_train=True)[0], 120)
    assert len(built["streams"]) == 1 and len(built["streams"][0].images) == 120
    assert built["streams"][0].key == semi.pool_key(share, str(copy_root))  # the files start-up decoded
    assert built["summary"][0]["semi"]["pool_size"] == 120
    assert built["summary"][0]["semi"]["pool_subset_of"] == 200
    state = json.loads((tmp_path / "out" / "run_state.json").read_text())
    assert state["fixmatch_pool_decoded"] == 120


def test_a_resumed_fixmatch_run_trains_on_the_share_its_first_session_chose(copy_root, tmp_path, monkeypatch):
    decodes_counted(monkeypatch, 0.125)
    built = stopped_at_planning(monkeypatch)
    main(run_words(copy_root, tmp_path / "out"))
    decodes_counted(monkeypatch, 0.05)  # timed again, 200 files would fit: the stopped stage's pool would change
    main(run_words(copy_root, tmp_path / "out", "--resume"))
    assert [len(s.images) for s in built["streams"]] == [120, 120]
    assert built["streams"][0].key == built["streams"][1].key


def test_a_warm_fixmatch_pool_is_trained_on_whole(copy_root, monkeypatch):
    cfg, infos = settings(copy_root, **{"train.batch_size": 8})
    run_checks.check_pool_images(cfg, infos, "fixmatch")  # decoded whole, as an earlier run did
    seen = decodes_counted(monkeypatch, 1.0)
    assert run_checks.fixmatch_decode_limit(cfg, infos, 60.0) is None
    assert seen["timing"] == []


def without_first_pool(copy_root):
    """The root with its first dataset's pool folder gone: MoCo's list takes that dataset's train images."""
    first = sorted(p.name for p in (copy_root / "unlabeled").iterdir())[0]
    shutil.rmtree(copy_root / "unlabeled" / first)
    return copy_root


@pytest.mark.parametrize("semi_method", ["pseudo", "fixmatch"])
def test_with_pretrain_no_pool_file_is_decoded_twice(copy_root, tmp_path, monkeypatch, semi_method):
    """hBK #3: MoCo decoded its list whole, then self-training decoded its files again into an entry of their own.
    140 files, none timed (fewer than twice the 256 timed): decoded whole."""
    without_first_pool(copy_root)
    seen = decodes_counted(monkeypatch, 1.0, sample=256)
    stopped_at_planning(monkeypatch)
    main(run_words(copy_root, tmp_path / "out", "--pretrain", "run.pretrain_batch_size=16", semi_method=semi_method))
    assert (tmp_path / "out" / "run_state.json").is_file()  # start-up done: both pools checked
    twice = [f for f, k in Counter(seen["cached"]).items() if k > 1]
    assert seen["cached"] and twice == [] and seen["timing"] == []


def test_self_training_reads_its_rows_from_moco_s_entry(copy_root, monkeypatch):
    from fewshot.data.cache import load_images
    from fewshot.run_pseudo import pool_decode_limit

    without_first_pool(copy_root)
    cfg, infos = settings(copy_root, **{"run.pretrain": True})
    run_checks.check_pool_images(cfg, infos, "off")  # MoCo's list, its train-image stand-ins too
    seen = decodes_counted(monkeypatch, 1.0)
    paths = semi.pool_files(cfg, infos, exclude_train=True)[0]
    assert pool_decode_limit(cfg, paths, 1.0, n=8, within=semi.moco_entry_paths(cfg, infos)) is None
    pools = [semi.load_pool(cfg, infos, 16, exclude_train=True, limit=limit) for limit in (None, 40)]
    assert seen["cached"] == [] and seen["timing"] == []
    for pool, n in zip(pools, (len(paths), 40)):
        fresh = load_images(pool.paths, 16, None, crop_pct=1.0)  # decoded on its own, no cache
        assert torch.equal(pool.images[:], fresh.images) and len(pool.paths) == n


def test_a_bad_pool_file_in_moco_s_entry_is_left_out_of_self_training_s_rows(copy_root, monkeypatch):
    without_first_pool(copy_root)
    cfg, infos = settings(copy_root, **{"run.pretrain": True, "data.skip_bad_unlabeled": True})
    bad = semi.pool_files(cfg, infos, exclude_train=True)[0][3]
    bad.write_bytes(b"not an image")
    skipped, _ = run_checks.check_pool_images(cfg, infos, "off")
    assert [p for p, _ in skipped] == [str(bad)]
    seen = decodes_counted(monkeypatch, 1.0)
    pool = semi.load_pool(cfg, infos, 16, exclude_train=True)
    assert [p for p, _ in pool.skipped] == [str(bad)] and str(bad) not in pool.paths
    assert len(pool.images) == len(pool.paths) and seen["cached"] == []


def test_another_crop_decodes_its_own_entry(copy_root, monkeypatch):
    """MoCo decodes whole images: at data.crop_pct 0.875 its entry holds other pixels."""
    without_first_pool(copy_root)
    cfg, infos = settings(copy_root, **{"run.pretrain": True, "data.crop_pct": 0.875})
    run_checks.check_pool_images(cfg, infos, "off")
    seen = decodes_counted(monkeypatch, 1.0)
    pool = semi.load_pool(cfg, infos, 16, exclude_train=True)
    assert semi.moco_entry_paths(cfg, infos) is None and sorted(seen["cached"]) == sorted(pool.paths)


def planned_after_timing_the_fine_tuning(monkeypatch) -> None:
    """Stops the run where MoCo's stage is planned, after the fine-tuning task was built and timed for it (its
    FixMatch pool decoded the whole cold pool there)."""
    from fewshot.pipeline import PipelineRun

    def closing(self, task, eval_s, step_s=None):
        self.time_fine_tuning()
        raise Planned

    def plan_stage(task, cfg, end_time, min_epochs, keys, closing=None, resumed=False):
        if closing is not None:
            closing(task, 0.01, 0.01)
        raise Planned

    monkeypatch.setattr(PipelineRun, "pretrain_closing", closing)
    monkeypatch.setattr(run_stages, "plan_stage", plan_stage)
    for name in ("measure_step_seconds", "measure_prediction_seconds"):  # the task is what counts, not its speed
        monkeypatch.setattr(run_closing, name, lambda *args, **kwargs: 0.01)


def state_of(out) -> dict:
    return json.loads((out / "run_state.json").read_text())


def pools_read(monkeypatch) -> list:
    """The files of every pool share read (semi.read_pool: start-up's check, the stages' and timing tasks' pools)."""
    read: list = []
    real = semi.read_pool

    def read_pool(*args, **kwargs):
        pool, digest = real(*args, **kwargs)
        read.append(sorted(map(str, pool.paths)))
        return pool, digest

    monkeypatch.setattr(semi, "read_pool", read_pool)
    return read


def shares_capped(monkeypatch) -> list:
    """Self-training's and FixMatch's shares capped beside MoCo's (MoCo's files in them cost nothing, the other 50 or
    so 5 s at 0.1 s): self-training times 8 files (not 256, more than twice the pool's 100) and has a quarter of a
    fifth of the minute, FixMatch a tenth of its half: 3 s each, MoCo's files and 30 others."""
    import functools

    import fewshot.run_pseudo as run_pseudo
    import fewshot.run_startup as run_startup

    monkeypatch.setattr(run_startup, "pool_decode_limit", functools.partial(run_pseudo.pool_decode_limit, n=8))
    monkeypatch.setattr(run_checks, "FIXMATCH_DECODE_SHARE", 0.1)
    return ["run.pseudo_share=0.8"]


@pytest.mark.parametrize("semi_method", ["pseudo", "fixmatch"])
def test_with_moco_s_pool_capped_no_pool_file_is_decoded_twice(copy_root, tmp_path, monkeypatch, capsys, semi_method):
    """review rev76: MoCo decoded only its seeded share of a slow cold pool, an entry of that share, so self-training
    and FixMatch found no entry of MoCo's whole list and decoded shares of their own, MoCo's files among them (50 of
    100 twice). Their shares now start inside MoCo's and decode only the rest; a resume decodes nothing and reads
    the same files. Both shares are capped (review rev80: self-training's took the whole pool, so neither the order
    of its files nor its resume mattered)."""
    without_first_pool(copy_root)
    seen = decodes_counted(monkeypatch, 0.1)  # MoCo's 140 files: 14 s, more than its 7.5 s: a share of 75
    stopped_at_planning(monkeypatch)
    planned_after_timing_the_fine_tuning(monkeypatch)
    extra = shares_capped(monkeypatch)
    read = pools_read(monkeypatch)
    words = run_words(copy_root, tmp_path / "out", "--pretrain", "run.pretrain_batch_size=16", *extra,
                      semi_method=semi_method)
    main(words)
    twice = [f for f, k in Counter(seen["cached"]).items() if k > 1]
    assert seen["cached"] and twice == []
    state = state_of(tmp_path / "out")
    assert state["moco_pool_decoded"] == 75 and state["pool_shares_moco_first"] is True
    cfg, infos = settings(copy_root, **{"run.pretrain": True, "model.img_size": 32})
    paths = semi.pool_files(cfg, infos, exclude_train=True)[0]
    moco = {str(p) for p in semi.moco_share_paths(cfg, infos, 75)} & {str(p) for p in paths}
    field = "pool_decoded" if semi_method == "pseudo" else "fixmatch_pool_decoded"
    limit = run_checks.recorded_limit(state, field)
    assert isinstance(limit, semi.MocoFirst) and limit.moco == 75
    assert len(moco) < int(limit) < len(paths)  # a share: MoCo's files and some others
    share = semi.load_pool(cfg, infos, 32, exclude_train=True, limit=limit).paths  # as the stage reads it
    assert moco <= set(share) and len(share) == min(int(limit), len(paths))  # MoCo's files first
    assert sorted(seen["cached"]) == sorted(set(share) | moco)  # each once: MoCo's, then only the rest
    assert read and all(files == sorted(share) for files in read)
    seen["cached"].clear()
    read.clear()
    main(words + ["--resume"])
    assert seen["cached"] == [] and state_of(tmp_path / "out")[field] == state[field]
    assert read and all(files == sorted(share) for files in read)  # the files its first session decoded


def test_self_training_s_share_is_drawn_inside_moco_s_capped_share(copy_root, monkeypatch, capsys):
    """A share of self-training's pool where MoCo decoded 60 of its 140 files: up to MoCo's files (in the pool, about
    40), nothing is decoded; beyond them, only the rest is, the rows MoCo decoded copied; the pixels are a fresh
    decode's. MoCo's files cost no decoding time (review rev80): 12 s decode 24 files at 0.5 s, so the share is
    MoCo's files and 24 others (it was 24 in all, MoCo's files charged as decoded, 12 s buying 24 files of 0)."""
    from fewshot.data.cache import load_images
    from fewshot.run_pseudo import pool_decode_limit

    without_first_pool(copy_root)
    cfg, infos = settings(copy_root, **{"run.pretrain": True})
    run_checks.check_pool_images(cfg, infos, "off", moco_limit=60)
    paths = semi.pool_files(cfg, infos, exclude_train=True)[0]
    moco = {str(p) for p in semi.moco_share_paths(cfg, infos, 60)} & {str(p) for p in paths}
    seen = decodes_counted(monkeypatch, 0.5)  # 100 files: 50 s; MoCo's free, the rest over 25 s: a 12 s cap
    within, order, held = run_checks.share_source(cfg, infos, paths, 60)
    free = len(held)
    assert {str(paths[i]) for i in held} == moco and 24 < free < len(paths) - 24  # positions in the pool
    limit = pool_decode_limit(cfg, paths, 12.0, n=1, within=within, order=order, held=held)
    decoded = limit - free  # 24, less where the (faked, fast) timing itself took a tenth of a second
    assert 22 <= decoded <= 24, limit
    words = f"the {free} MoCo decoded read from its cache entry and decoding the other {decoded}"
    assert words in capsys.readouterr().out
    small = semi.load_pool(cfg, infos, 16, exclude_train=True, limit=semi.MocoFirst(24, 60))
    assert set(small.paths) <= moco and len(small.paths) == 24 and seen["cached"] == []
    share = semi.load_pool(cfg, infos, 16, exclude_train=True, limit=run_checks.moco_first_limit(limit, paths, 60,
                                                                                                   order))
    assert moco <= set(share.paths) and len(share.paths) == limit
    assert sorted(seen["cached"]) == sorted(set(share.paths) - moco) and len(seen["cached"]) == decoded
    seen["cached"].clear()
    large = semi.load_pool(cfg, infos, 16, exclude_train=True, limit=semi.MocoFirst(70, 60))
    assert moco <= set(large.paths) and len(large.paths) == 70
    assert sorted(seen["cached"]) == sorted(set(large.paths) - moco)  # only what MoCo's share lacks
    for pool in (small, share, large):
        assert torch.equal(pool.images[:], load_images(pool.paths, 16, None, crop_pct=1.0).images)


def test_a_state_without_the_moco_first_record_keeps_the_pool_s_seeded_shares():
    """A run started before shares were drawn inside MoCo's resumes on the files its first session decoded."""
    older = {"moco_pool_decoded": 75, "fixmatch_pool_decoded": 40, "pool_decoded": 30}
    assert type(run_checks.recorded_limit(older, "fixmatch_pool_decoded")) is int
    assert type(run_checks.recorded_share(older, 30)) is int
    newer = {**older, "pool_shares_moco_first": True}
    assert run_checks.recorded_limit(newer, "fixmatch_pool_decoded").moco == 75
    assert type(run_checks.recorded_limit(newer, "moco_pool_decoded")) is int


def test_reading_moco_s_entry_warns_of_dark_16_bit_pool_images(tmp_path, monkeypatch, capsys):
    """review rev76: load_images warns of 12-bit data in 16-bit files on every cache hit; rows read from MoCo's entry
    (load_rows: `fewshot train --semi fixmatch` after a `run --pretrain`) gave no warning."""
    import numpy as np
    from PIL import Image

    from fewshot.data import cache_words

    folder = tmp_path / "pool"
    folder.mkdir()
    paths = []
    for i in range(4):
        paths.append(folder / f"{i}.png")
        Image.fromarray((np.arange(64).reshape(8, 8) * 60 + i).astype(np.uint16)).save(paths[-1])  # at most 3783
    cache.load_images(paths, 8, tmp_path / "cache", desc="loading unlabeled pool")
    monkeypatch.setattr(cache_words, "_WARNED", set())  # a later command
    capsys.readouterr()
    rows = cache.load_rows(paths[1:3], 8, tmp_path / "cache", paths)
    assert rows is not None and len(rows) == 2
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "data.bit_depth=12" in err and str(folder) in err, err


def dark_and_plain(folder) -> tuple[list, list]:
    """Three dark 16-bit images (at most 3783, of 65535) in a16/ and four 8-bit ones in p8/."""
    import numpy as np
    from PIL import Image

    (folder / "a16").mkdir(parents=True)
    (folder / "p8").mkdir()
    dark, plain = [], []
    for i in range(3):
        dark.append(folder / "a16" / f"{i}.png")
        Image.fromarray((np.arange(64).reshape(8, 8) * 60 + i).astype(np.uint16)).save(dark[-1])
    for i in range(4):
        plain.append(folder / "p8" / f"{i}.png")
        Image.fromarray((np.arange(64).reshape(8, 8) * 3 + i).astype(np.uint8)).save(plain[-1])
    return dark, plain


def test_rows_copied_or_read_from_moco_s_entry_keep_no_record_of_its_other_16_bit_images(tmp_path, monkeypatch,
                                                                                         capsys):
    """review rev80: an entry copying 8-bit pool files from MoCo's (its 16-bit train-image stand-ins too) kept that
    entry's whole 16-bit record, so each later hit warned of a16/, which it does not hold; load_rows of them too."""
    from fewshot.data import cache_words

    dark, plain = dark_and_plain(tmp_path)
    within = dark + plain[:2]
    cache.load_images(within, 8, tmp_path / "cache", desc="loading unlabeled pool")  # warns of a16/, rightly
    for later in ("copy", "hit", "read"):
        monkeypatch.setattr(cache_words, "_WARNED", set())
        capsys.readouterr()
        if later == "read":
            assert cache.load_rows(plain[:2], 8, tmp_path / "cache", within) is not None
        else:
            cache.load_images(plain, 8, tmp_path / "cache", reuse=within if later == "copy" else None)
        assert "warning" not in capsys.readouterr().err, later
    key = cache.cache_key(plain, 8, 1.0, "auto")
    assert json.loads((tmp_path / "cache" / f"{key}.json").read_text())["bits16"] is None
    monkeypatch.setattr(cache_words, "_WARNED", set())
    assert cache.load_rows(dark[:1], 8, tmp_path / "cache", within) is not None  # the dark ones still warn
    assert "data.bit_depth=12" in capsys.readouterr().err


def test_a_broken_file_moco_recorded_is_not_decoded_again_nor_counted_as_read(tmp_path, monkeypatch):
    """review rev80: rows copied from MoCo's entry left out every failure it recorded, so a broken file was decoded
    again, and counted among the files read from it (costing no decoding time), as every file of an entry never
    written was."""
    _, plain = dark_and_plain(tmp_path)
    plain[1].write_bytes(b"not an image")
    within, paths = plain[:3], [plain[0], plain[1], plain[3]]
    folder = tmp_path / "cache"
    assert cache.rows_held_at(paths, 8, folder, within) == set()  # no entry yet
    cache.load_images(within, 8, folder, skip_bad=True)
    assert cache.rows_held_at(paths, 8, folder, within) == {0}  # not the broken 1
    decoded: list = []
    real = cache._decode_into

    def decode_into(out, files, *args, **kwargs):
        decoded.extend(files)
        return real(out, files, *args, **kwargs)

    monkeypatch.setattr(cache, "_decode_into", decode_into)
    images = cache.load_images(paths, 8, folder, skip_bad=True, reuse=within)
    assert decoded == [plain[3]] and [p for p, _ in images.bad] == [str(plain[1])]
    assert images.valid.tolist() == [True, False, True]
    fresh = cache.load_images(paths, 8, None, skip_bad=True)
    assert torch.equal(images.images, fresh.images) and images.bad == fresh.bad


def test_without_moco_s_entry_no_file_counts_as_read_from_it(copy_root):
    """review rev80: an entry never written (a failed cache write) holds none of MoCo's share."""
    without_first_pool(copy_root)
    cfg, infos = settings(copy_root, **{"run.pretrain": True})
    paths = semi.pool_files(cfg, infos, exclude_train=True)[0]
    within, order, held = run_checks.share_source(cfg, infos, paths, 60)
    assert within is not None and order is not None and held == frozenset()
