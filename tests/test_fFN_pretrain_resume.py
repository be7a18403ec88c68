"""A --resume after MoCo's drop (the --pretrain stage dropped at its planning, run_state.json's pretrain_skipped):
the resumed start-up decoded MoCo's pool again (and refused the resume where it had fewer images than a MoCo batch)
before dropped_before read the drop, and said nothing of MoCo. Now the drop is read first: MoCo's pool is not
loaded, one line after "[run] resuming" says MoCo stays skipped with advice a resume can follow, and self-training
still gets its own pool share as its first session drew it.

Fake step speeds (patched timings); each session stops where its first stage would train, so nothing is trained."""

from __future__ import annotations

import json

from helpers.run_clock import run_cfg
from test_fER_stage_fallbacks import _speeds, _stop_at_training
from test_fEZ_stage_drops import _planned

ADVICE = " (a larger --budget-minutes keeps --pretrain)"  # the drop's own line ends so


def _cfg(root, semi: str = "off") -> dict:
    return run_cfg(root, **{"run.semi_method": semi, "run.pretrain": True, "run.pretrain_batch_size": 8,
                            "moco.split_bn_groups": 2})


def _moco_loads(monkeypatch) -> list:
    """The decodes of MoCo's pool (whole images, crop 1.0: run_checks.check_pool_images), by their file counts."""
    from fewshot.data import cache

    loads, real = [], cache.load_images

    def load_images(paths, *a, **k):
        if k.get("crop_pct") == 1.0 and "reuse" not in k:  # not semi.pool_images' (self-training's, FixMatch's)
            loads.append(len(paths))
        return real(paths, *a, **k)

    monkeypatch.setattr(cache, "load_images", load_images)
    return loads


def _dropped(root, out, monkeypatch, capsys, semi: str = "off"):
    _speeds(monkeypatch, moco_s=2.5)  # 1 minute holds MoCo's floor of steps but not half an epoch: dropped
    plan = _stop_at_training(monkeypatch)
    first = _planned(_cfg(root, semi), out, 1.0)
    text = capsys.readouterr().out
    assert plan["kind"] == "supervised" and "[run] --pretrain skipped (planned, not an error)" in text, text
    assert first.summary["pretrain_skipped"]["why"].endswith(ADVICE)
    return plan, first


def test_a_resume_after_mocos_drop_leaves_its_pool_and_says_it_stays_skipped(digits_root, tmp_path, monkeypatch,
                                                                            capsys, real_least_run_holds):
    out = tmp_path / "r"
    plan, first = _dropped(digits_root, out, monkeypatch, capsys)
    loads = _moco_loads(monkeypatch)
    plan.clear()
    resumed = _planned(_cfg(digits_root), out, None, resume=True)
    lines = capsys.readouterr().out.splitlines()
    assert plan["kind"] == "supervised" and plan["lr"] != resumed.cfg["run"]["finetune_lr"], lines
    assert loads == [], loads  # MoCo's pool is not decoded again
    assert resumed.n_moco is None
    stays = [i for i, line in enumerate(lines) if "--pretrain stays skipped (earlier session)" in line]
    resuming = [i for i, line in enumerate(lines) if line.startswith(f"[run] resuming {out}")]
    assert len(resuming) == 1 and stays == [resuming[0] + 1], lines
    line = lines[stays[0]]
    why = first.summary["pretrain_skipped"]["why"]
    assert line.startswith(f"[run] --pretrain stays skipped (earlier session): {why.removesuffix(ADVICE)}."), line
    assert ADVICE.strip() not in line and line.endswith(
        "A resumed run keeps its budget: a new run (another --out) with a larger --budget-minutes keeps --pretrain."
    ), line
    assert not any("skipped (planned, not an error)" in x for x in lines), lines
    assert resumed.summary["pretrain_skipped"] == first.summary["pretrain_skipped"]


def test_a_resume_after_mocos_drop_refuses_no_pool_smaller_than_a_moco_batch(digits_root, tmp_path, monkeypatch,
                                                                            capsys, real_least_run_holds):
    """A resume whose MoCo stays skipped fills no MoCo batch: a pool that lost its files since the stop (here
    MoCo's list of them, empty) is not refused as "fewer than one MoCo batch"."""
    out = tmp_path / "r"
    _dropped(digits_root, out, monkeypatch, capsys)
    from fewshot.data import pool

    real = pool.pool_with_sources
    monkeypatch.setattr(pool, "pool_with_sources", lambda *a, **k: ([], *real(*a, **k)[1:]))  # MoCo's pool gone
    _planned(_cfg(digits_root), out, None, resume=True)  # the fine-tuning plans; no "fewer than one MoCo batch"
    assert "fewer than one MoCo batch" not in capsys.readouterr().out


def test_self_training_keeps_its_share_of_the_pool_after_mocos_drop(digits_root, tmp_path, monkeypatch, capsys,
                                                                   real_least_run_holds):
    """Self-training still needs its pool after MoCo's drop, and its share of a cold pool was drawn inside MoCo's
    share first (semi.MocoFirst): the resume reads MoCo's share from the state, and records it again as it was."""
    out = tmp_path / "r"
    _dropped(digits_root, out, monkeypatch, capsys, semi="pseudo")
    state_file = out / "run_state.json"
    shares = {"pool_decoded": 50, "moco_pool_decoded": 120, "pool_shares_moco_first": True}  # a cold pool's shares
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), **shares}))
    loads = _moco_loads(monkeypatch)
    resumed = _planned(_cfg(digits_root, "pseudo"), out, None, resume=True)
    capsys.readouterr()
    assert loads == [] and resumed.semi == "pseudo" and resumed.n_unlabeled == 50
    assert repr(resumed.pool_limit) == "MocoFirst(50, moco=120)"
    state = json.loads(state_file.read_text())
    assert {field: state.get(field) for field in shares} == shares
