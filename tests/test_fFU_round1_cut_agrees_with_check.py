"""Hunt hBV #1: a 50k pool cut self-training's round 1 to its floor (2.6 s, val at chance) to leave the pool's
labelling its time, and the check before round 2 then found too little for that labelling (round 1 ended later than
its squeezed 1-s margin, and the check counts a step, checkpoint writes and prediction batches that the cut did not):
round 2 trained on the labelled images only and the run scored 40 % against 65 % without the pool. The cut and the
check now count the same work, and round 1 is cut only with its whole margin. A fake clock, hBV's speeds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from helpers.run_clock import rounds_clock
from helpers.rounds_run import rounds_run

STEP, EVAL, PER_IMAGE, CLOSING = 0.46, 0.3, 0.001, 13.0  # hBV's resnet18 at 32 px on 2 busy cores


def _run(clock, left: float, share: float, writes_bps: float = 250e6):
    """A PipelineRun stand-in at round 1's planning: ``left`` seconds of the budget, ``share`` of them round 1's."""
    run, decided = rounds_run(n_unlabeled=50_000, report_stages=2, writes_bps=writes_bps,
                              test_set=SimpleNamespace(images=[0] * 2000), r={"pseudo_share": 0.5},
                              last_end=clock[0] + left, labelled_end=clock[0] + share,
                              closing=lambda *a, **k: CLOSING, refuse_unless_least_run_fits=lambda *a: None,
                              plan_closing=lambda s: None,
                              state=SimpleNamespace(status=lambda name: None, save=lambda: None))
    # resnet18's 11.2M parameters: its checkpoint writes (about 1 s) come between round 1's end and the check
    model = SimpleNamespace(parameters=lambda: [SimpleNamespace(numel=lambda: 11_200_000)])
    task = SimpleNamespace(model=model, cfg={"train": {"ema": True}}, supports_ema=True)
    return run, task, decided


@pytest.fixture
def clock(monkeypatch, real_time_holds):
    return rounds_clock(monkeypatch, PER_IMAGE, STEP)


def test_hbv_round_1_is_not_cut_to_its_floor_for_a_labelling_that_then_does_not_fit(clock, capsys):
    """hBV's plan: 31 s left, round 1's share 12 s. Cut, round 1 kept its floor; now round 2 is skipped before round
    1 trains, and round 1 trains past its share until the closing work (a negative cut)."""
    from fewshot import pipeline

    run, task, decided = _run(clock, 31.0, 12.0)
    cut = pipeline.PipelineRun.round1_closing(run, task, EVAL, STEP)
    assert decided == [(1, 2)], (cut, capsys.readouterr().out)
    assert cut < 0  # round 1 ends after its share: at the closing work
    out = capsys.readouterr().out
    assert "round 2 skipped (planned, not an error)" in out and "margin for round 1 ending late" in out, out
    assert "round 1 trains until the closing work" in out, out


@pytest.mark.parametrize("writes_bps", [250e6, 25e6])  # a slow disk: round 1's writes take 11 s, not 1 s
@pytest.mark.parametrize("left", [26.0 + 0.5 * i for i in range(49)])  # 26-50 s: hBV's and rev97's bands
def test_round_1_is_cut_only_for_a_labelling_that_the_check_before_round_2_then_keeps(clock, left, writes_bps):
    """Wherever round 1 is cut for the later round, the check before round 2 keeps the pool's labelling when round
    1 ends as planned: its step past the deadline, its 3 closing evaluations (an EMA), its checkpoint writes and the
    check's prediction timing, at the speeds round 1 was planned at. Before, with 27-29.5 s left round 1 was cut to
    its floor, its margin squeezed below that late end, and the check then chose a labelled-only round 2."""
    from fewshot import pipeline

    run, task, decided = _run(clock, left, 0.5 * left, writes_bps)
    cut = pipeline.PipelineRun.round1_closing(run, task, EVAL, STEP)
    if decided or cut <= 0:  # skipped at round 1's planning, or round 1 keeps its whole share
        return
    # round 1 ends at its cut deadline, then its late end: one step, 3 evaluations, writes, 2 prediction batches
    end = run.labelled_end - cut
    clock[0] = end + STEP + 3 * EVAL + 11_200_000 * 24 / run.writes_bps + 2 * 256 * PER_IMAGE
    pipeline.PipelineRun.check_later_rounds(run, task, 2)
    assert not decided and "labelled_only" not in run.skip, (left, cut, run.skip)  # round 2 labels the pool


@pytest.mark.parametrize("left", [50.0, 60.0])
def test_round_1_is_still_cut_for_the_later_round_where_the_time_holds_it(clock, left, capsys):
    """The guard's other side: with time for the later round and its margin, round 1 is cut to leave it (hBV's
    speeds), not skipped; a rule that always skipped round 2 passed the band above."""
    from fewshot import pipeline

    run, task, decided = _run(clock, left, 0.7 * left)
    cut = pipeline.PipelineRun.round1_closing(run, task, EVAL, STEP)
    assert not decided and cut > 0, (cut, capsys.readouterr().out)
