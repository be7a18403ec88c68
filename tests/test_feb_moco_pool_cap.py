"""`fewshot run --pretrain` on a pool slow to decode (hunt hBK, fix fEB): start-up decoded MoCo's whole cold pool
before planning (59 s of a 1-minute run, which then ran 72 s and was refused); it now decodes a seeded random share
that a quarter of MoCo's share of the budget holds, and the MoCo stage trains on those files in every session. The
refusal after a start-up spent on a cold decode names it and does not ask for 4x the budget. Decoding speed is
faked (decode_seconds_per_image), never measured."""

from __future__ import annotations

import json

import pytest

import fewshot.data.decode_many as decode_many
import fewshot.run_checks as run_checks
import fewshot.run_stages as run_stages
from fewshot.cli import main


class Planned(Exception):
    """Stops the run at the MoCo stage's planning: the task is built by then."""


def built_moco_tasks(monkeypatch) -> list:
    """Every MoCoTask the run builds; the run stops where its stage is planned (before any timing)."""
    import fewshot.ssl.pretrain as pretrain

    built, real = [], pretrain.MoCoTask

    def build(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    def plan_stage(*args, **kwargs):
        raise Planned

    monkeypatch.setattr(pretrain, "MoCoTask", build)
    monkeypatch.setattr(run_stages, "plan_stage", plan_stage)
    return built


def decoding_takes(monkeypatch, seconds_per_file: float) -> None:
    """Decoding timed at ``seconds_per_file``, on a sample of 8 files (the test pool has 200; MoCo's least share
    is two batches of 16)."""
    monkeypatch.setattr(run_checks, "DECODE_SAMPLE", 8)
    monkeypatch.setattr(decode_many, "decode_seconds_per_image", lambda *a, **k: seconds_per_file)


def run_words(root, out, *extra) -> list:
    return ["run", "--data", str(root), "--out", str(out), "--budget-minutes", "1", "--model", "test_resnet",
            "--img-size", "32", "--no-progress", "--pretrain", "run.pretrain_batch_size=16", *extra]


def moco_paths(root) -> list:
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.data.pool import pool_paths

    cfg = resolve(flags={"data.root": str(root), "model.img_size": 32})
    return cfg, pool_paths(cfg, scan_root(root, None, splits=("train", "val")))[0]


def test_a_cold_pool_slow_to_decode_gives_moco_a_seeded_share_it_trains_on(copy_root, tmp_path, monkeypatch,
                                                                           capsys):
    from fewshot.train.semi import pool_key

    decoding_takes(monkeypatch, 0.125)  # 200 files: 25 s, more than a quarter of MoCo's 30 s (7.5 s): 60 files
    built = built_moco_tasks(monkeypatch)
    main(run_words(copy_root, tmp_path / "out"))  # stopped at the stage's planning (Planned)
    out = capsys.readouterr().out
    assert "decoding a seeded random 60 of them, the pool MoCo trains on" in out
    assert "a quarter of MoCo's 30 s share of the budget" in out
    cfg, paths = moco_paths(copy_root)
    share = run_checks.moco_pool_share(cfg, paths, 60)
    assert len(built) == 1 and len(built[0].pool) == 60 < len(paths)
    assert built[0].pool_key == pool_key(share, str(copy_root), True)  # the files start-up decoded
    assert built[0].pool_share == f"a seeded random share of the pool's {len(paths)} files"  # in the stage's line
    state = json.loads((tmp_path / "out" / "run_state.json").read_text())
    assert state["moco_pool_decoded"] == 60


def test_a_resumed_run_trains_moco_on_the_share_its_first_session_chose(copy_root, tmp_path, monkeypatch):
    decoding_takes(monkeypatch, 0.125)
    built = built_moco_tasks(monkeypatch)
    main(run_words(copy_root, tmp_path / "out"))
    decoding_takes(monkeypatch, 0.05)  # timed again, 150 files would fit: the stopped stage's pool would change
    main(run_words(copy_root, tmp_path / "out", "--resume"))
    assert [len(task.pool) for task in built] == [60, 60]
    assert built[0].pool_key == built[1].pool_key


def test_a_warm_cache_keeps_the_whole_pool(copy_root, monkeypatch):
    from fewshot.data.layout import scan_root

    cfg, paths = moco_paths(copy_root)
    cfg["run"]["pretrain"], cfg["run"]["pretrain_batch_size"] = True, 16
    infos = scan_root(copy_root, None, splits=("train", "val"))
    run_checks.check_pool_images(cfg, infos, "off")  # decoded whole, as an earlier run did
    decoding_takes(monkeypatch, 1.0)
    assert run_checks.moco_decode_limit(cfg, infos, 60.0) is None


def test_a_later_run_reuses_the_share_an_earlier_one_decoded(copy_root, monkeypatch, capsys):
    from fewshot.data.layout import scan_root

    cfg, paths = moco_paths(copy_root)
    cfg["run"]["pretrain"], cfg["run"]["pretrain_batch_size"] = True, 16
    infos = scan_root(copy_root, None, splits=("train", "val"))
    decoding_takes(monkeypatch, 0.125)
    assert run_checks.moco_decode_limit(cfg, infos, 60.0) == 60
    run_checks.check_pool_images(cfg, infos, "off", moco_limit=60)
    decoding_takes(monkeypatch, 0.1)  # another timing: 75 files, not another cache entry
    assert run_checks.moco_decode_limit(cfg, infos, 60.0) == 60
    assert "a seeded random 60 of them are (an earlier run's)" in capsys.readouterr().out


def test_start_up_times_only_the_pool_decodes_the_cache_did_not_hold(copy_root):
    from fewshot.data.layout import scan_root

    cfg, paths = moco_paths(copy_root)
    cfg["run"]["pretrain"] = True
    infos = scan_root(copy_root, None, splits=("train", "val"))
    cold: list = []
    run_checks.check_pool_images(cfg, infos, "off", cold=cold)
    assert len(cold) == 1 and cold[0][1] == len(paths) and cold[0][0] >= 0
    run_checks.check_pool_images(cfg, infos, "off", cold=cold)
    assert len(cold) == 1  # cached now: nothing to name


def test_the_refusal_after_a_cold_pool_decode_names_it_and_asks_for_the_same_command():
    from fewshot.run_budget import hopeless_budget_error

    text = str(hopeless_budget_error(60.0, 71.9, started=True, cold=[(59.1, 10150)]))
    assert "59.1 s of it decoding 10,150 pool images" in text and "cached now" in text
    assert "Run the same command again" in text and "4 or more" not in text


@pytest.mark.parametrize("decode_s, says", [(40.0, "2 or more to start with"), (10.0, "4 or more to start with")])
def test_the_refusal_advises_a_budget_from_the_start_up_without_the_cold_decode(decode_s, says):
    from fewshot.run_budget import hopeless_budget_error

    text = str(hopeless_budget_error(60.0, 71.9, started=True, cold=[(decode_s, 10150)]))
    assert says in text and "Run the same command again" not in text
    assert ("pool images" in text) == (decode_s >= 0.5 * 71.9)  # named where it took much of the start-up
