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
