"""A large unlabeled pool must not starve self-training's round 1 (hunt hBV #1): a 1-minute run cut round 1 to 2.6 s
of its ~12 s share to leave the pool's labelling and round 2 their least time, round 1 scored at chance, round 2 was
then skipped, and the run tested 40.5 where the same data without the pool tested 65.7. Round 1 now keeps at least
half of its share or the later rounds are skipped before it trains. The clock and the timings are patched."""

from __future__ import annotations

from types import SimpleNamespace

from helpers.run_patch import patch_pipeline


def _round1(monkeypatch, left: float, share: float, rest: float):
    """round1_closing of a fake run with ``left`` s to the budget's end, round 1's ``share`` and the later rounds'
    least time ``rest``, at 0.46 s a step and 0.3 s an evaluation; (the cut, the run's decisions)."""
    from fewshot import pipeline

    clock = [1000.0]
    patch_pipeline(monkeypatch, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    patch_pipeline(monkeypatch, "measure_prediction_seconds", lambda *a, **k: 0.001)
    patch_pipeline(monkeypatch, "after_round1_seconds", lambda *a: rest)
    skip, decided = {"rounds": 2, "skipped_from": None}, []

    def decide(rounds, frm, why):
        decided.append((rounds, frm))
        skip.update(skipped_from=frm, why=why)

    run = SimpleNamespace(skip=skip, rounds=2, n_unlabeled=50000, test_set=SimpleNamespace(images=None),
                          r={"pseudo_share": 0.5}, last_end=clock[0] + left, labelled_end=clock[0] + share,
                          closing=lambda *a, **k: 12.0, decide=decide, refuse_unless_least_run_fits=lambda *a: None,
                          plan_closing=lambda s: None, state=SimpleNamespace(status=lambda name: None, save=lambda: None))
    task = SimpleNamespace(step_s=0.46, eval_s=0.3, cfg={"train": {"ema": True}}, supports_ema=True)
    return pipeline.PipelineRun.round1_closing(run, task, 0.3, 0.46), decided, skip


def test_round_1_cut_below_half_its_share_skips_the_later_rounds_instead(monkeypatch, capsys, real_time_holds):
    """The hunt's numbers: 31 s left, a 12 s share, 27 s for the pool's labelling, round 2 and the closing work.
    Round 1's floor (5 steps and an evaluation) fits, but it would keep 4 s of its 12: round 2 is skipped and round 1
    trains until the closing work (12 s), as without the pool, rather than end 8 s early."""
    cut, decided, skip = _round1(monkeypatch, left=31.0, share=12.0, rest=27.0)
    assert decided == [(1, 2)]
    assert cut < 0  # round 1 ends after its share: at the closing work
    assert cut == -(31.0 - 12.0 - 12.0)
    assert "keep only about 4.0 s of its 12 s share" in skip["why"] and "less than 50%" in skip["why"], skip["why"]
    out = capsys.readouterr().out
    assert "round 2 skipped (planned, not an error)" in out and "round 1 trains until the closing work" in out, out


def test_round_1_keeping_more_than_half_its_share_still_leaves_the_later_rounds_their_time(monkeypatch,
                                                                                          real_time_holds):
    """demo_data at 1 minute: round 1 was cut by 7 s of a 17 s share and round 2 trained; that plan stays."""
    cut, decided, _ = _round1(monkeypatch, left=42.0, share=17.0, rest=28.0)
    assert not decided and 0 < cut < 17.0 / 2
