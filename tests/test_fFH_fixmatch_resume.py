"""A --resume after a FixMatch drop (hunt hBU, finding 3): the resumed start-up announced "FixMatch ... on an
unlabeled pool of N images" and loaded and decoded that pool, then trained on the labelled images only without a
word that FixMatch stayed skipped. Now the drop is read first: one line says so with its why, the pool is not
touched, and summary.json keeps FixMatch's planned settings.

Fake step speeds (patched timings); each session stops where its first stage would train, so nothing is trained."""

from __future__ import annotations

from fewshot.run_fallbacks import fixmatch_kept_off_line
from test_fER_stage_fallbacks import _speeds, _stop_at_training
from test_fEZ_stage_drops import _fixmatch_cfg, _planned


def test_a_resume_after_the_drop_says_fixmatch_stays_skipped_and_leaves_its_pool(digits_root, tmp_path, monkeypatch,
                                                                                 capsys, real_least_run_holds):
    from fewshot import run_checks, run_startup
    from fewshot.train import semi

    _speeds(monkeypatch, fixmatch_s=10.0)
    plan = _stop_at_training(monkeypatch)
    out = tmp_path / "r"
    first = _planned(_fixmatch_cfg(digits_root), out, 2.0)
    said = " ".join(capsys.readouterr().out.split())
    assert plan["semi"] == "off" and "--semi fixmatch skipped (planned, not an error)" in said
    why = first.summary["fixmatch_skipped"]["why"]

    loads = []
    real_load = semi.load_pool
    monkeypatch.setattr(semi, "load_pool", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    checks = []
    real_check = run_checks.check_fixmatch_images
    monkeypatch.setattr(run_startup, "check_fixmatch_images", lambda *a, **k: checks.append(a) or real_check(*a, **k))
    plan.clear()
    resumed = _planned(_fixmatch_cfg(digits_root), out, None, resume=True)
    text = " ".join(capsys.readouterr().out.split())
    assert plan["kind"] == "supervised" and plan["semi"] == "off", text
    assert text.count("--semi fixmatch stays skipped (earlier session)") == 1, text
    assert fixmatch_kept_off_line(why) in text
    assert "FixMatch (semi." not in text and "skipped (planned, not an error)" not in text, text
    assert loads == [] and checks == []  # FixMatch's pool is neither loaded nor decoded
    assert resumed.summary["fixmatch_skipped"] == first.summary["fixmatch_skipped"]
    assert resumed.summary["fixmatch_skipped"]["planned"]["pool_size"] > 0
    assert "semi" not in resumed.summary
