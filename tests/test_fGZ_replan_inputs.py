"""Review rev110 of fGL: round 1's replan (judged at its planned end) and the check before round 2 must judge the
same inputs. #3: the check timed the prediction again, seconds after the replan, on the same model (a cost counted
nowhere); #2: the replan's "current write rate" was planning's, the check's round 1's own; #4: no test failed with
the margin removed, and none checked the skip side between 1.0x and 1.5x slower. fGL's fake machine and fGB's round 1
on it, with each prediction timing moving the clock on (two batches of 256, as measure_prediction_seconds times)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fewshot.run_budget import ROUND1_MARGIN
from helpers.run_patch import patch_pipeline
from test_fGB_round1_cut_at_trained_speed import EVAL, PARAMS, PER_IMAGE, STEP, _train_round1
from test_fGL_round1_judged_as_the_check import _planned


@pytest.fixture
def machine(monkeypatch, real_time_holds):
    """fGL's machine (``speed[0]`` times round 1's planning speeds), whose prediction timings take clock time and are
    counted in ``timings``."""
    now, speed, timings = [1000.0], [1.0], []

    def timing(*a, **k):
        timings.append(speed[0] * PER_IMAGE)
        now[0] += 2 * 256 * speed[0] * PER_IMAGE
        return speed[0] * PER_IMAGE

    patch_pipeline(monkeypatch, "time", SimpleNamespace(monotonic=lambda: now[0]))
    patch_pipeline(monkeypatch, "measure_prediction_seconds", timing)
    patch_pipeline(monkeypatch, "measure_step_seconds", lambda *a, **k: STEP)
    return now, speed, timings


def _case(machine, tmp_path, left, slower, n_pool, force_stop=False, late=0.0, write_bps=None):
    """Round 1 planned with ``left`` s, trained ``slower`` x, its end ``late`` s past what the harness charges;
    ``force_stop``: the replan not asked (round 1 stops as planned). Returns (stopped as planned, check kept round
    2), or None where round 1's planning skipped round 2."""
    now, speed, _ = machine
    speed[0] = 1.0
    pipeline, run, task, decided, cut = _planned(now, tmp_path, left, n_pool)
    if decided:
        return None
    if force_stop:
        task.replan_end = lambda end, row: end
    speed[0] = slower
    _train_round1(now, run, task, cut, slower * STEP, slower * EVAL, write_bps)
    if run.skip["skipped_from"] == 2:
        return False, False
    now[0] += late
    pipeline.PipelineRun.check_later_rounds(run, task, 2)
    return True, not decided and "labelled_only" not in run.skip


def _end_s(slower: float, bps: float = 250e6) -> float:
    """Round 1's end as the replan counts it at ``slower`` x: the stop's 3 evaluations, the step past the deadline
    and its checkpoint writes (the prediction's timing is taken before the replan reads the clock)."""
    return 3 * slower * EVAL + slower * STEP + PARAMS * 24 / bps


def test_the_check_before_round_2_reuses_the_replans_prediction_timing(machine, tmp_path):
    """#3: one prediction timing between round 1's planned end and round 2's check (the replan's), and the check
    judges at its speed even where the machine got slower still in between (the same model: only the stop)."""
    now, speed, timings = machine
    pipeline, run, task, decided, cut = _planned(now, tmp_path, 45.0, 1_000)
    speed[0] = 1.2
    _train_round1(now, run, task, cut, 1.2 * STEP, 1.2 * EVAL)
    assert run.skip["skipped_from"] is None and len(timings) == 2, timings  # planning's and the replan's
    speed[0] = 3.0
    pipeline.PipelineRun.check_later_rounds(run, task, 2)
    assert len(timings) == 2 and run.speeds_before[2] == pytest.approx(1.2 * PER_IMAGE), (timings, run.speeds_before)


def test_the_replan_counts_round_1s_own_slower_writes(machine, tmp_path):
    """#2: round 1's checkpoint writes so far (the Engine's write_rate in the hook's row) slower than planned: the
    replan counts them (and keeps the rate, as the check's closing estimate counts it); a faster one is not taken."""
    now, _, _ = machine
    pipeline, run, task, decided, cut = _planned(now, tmp_path, 45.0, 1_000)
    judge, kept = task.replan_end, []  # the rate right after the replan (_train_round1 notes it again at the end)
    task.replan_end = lambda end, row: (judge(end, row), kept.append(run.writes_bps))[0]
    _train_round1(now, run, task, cut, STEP, EVAL, 40e6)
    assert kept == [40e6] and run.writes_bps == 40e6, kept
    pipeline, run, task, decided, cut = _planned(now, tmp_path / "fast", 45.0, 1_000)
    judge, rows = task.replan_end, []
    task.replan_end = lambda end, row: rows.append(row) or judge(end, row)
    _train_round1(now, run, task, cut, STEP, EVAL, 900e6)
    assert run.writes_bps == 250e6 and rows[0]["write_bps"] == 900e6, rows


def test_round_1_stopped_as_planned_with_writes_slower_than_planned_is_followed_by_round_2(machine, tmp_path):
    """#2: round 1's writes 4x slower than planned (the check counts them through note_writes): wherever round 1
    stops at its planned end, the check keeps round 2. Before, the replan judged at planning's rate."""
    write_bps = 62.5e6
    bad = []
    for slower in (1.0, 1.3, 1.6, 2.0):
        for i in range(70):
            left = 26.0 + 0.5 * i
            got = _case(machine, tmp_path / f"{slower}_{i}", left, slower, 1_000, write_bps=write_bps)
            if got is not None and got[0] and not got[1]:
                bad.append((slower, left))
    assert not bad, bad


def test_a_round_1_ending_late_within_the_margin_is_followed_by_round_2(machine, tmp_path):
    """#4: round 1's end overruns what the replan counts by more than the step already taken but less than the
    margin on its end (ROUND1_MARGIN): stopped as planned, the check still keeps round 2 (without the margin,
    `need = rest`, round 1 stopped as planned and the check skipped round 2)."""
    bad, stops = [], 0
    bps = 62.5e6  # round 1's writes slower than planned: a longer end, a margin wider than the step
    for slower in (1.0, 1.2, 1.4):
        late = slower * STEP + 0.7 * ROUND1_MARGIN * _end_s(slower, bps)
        assert late < slower * STEP + ROUND1_MARGIN * _end_s(slower, bps)
        for i in range(100):
            left = 40.0 + 0.5 * i
            got = _case(machine, tmp_path / f"{slower}_{i}", left, slower, 1_000, late=late, write_bps=bps)
            if got is not None and got[0]:
                stops += 1
                if not got[1]:
                    bad.append((slower, left))
    assert stops and not bad, (stops, bad)


@pytest.mark.parametrize("n_pool", [1_000, 50_000])
def test_between_1x_and_1_5x_slower_the_replan_and_the_check_agree_both_ways(machine, tmp_path, n_pool):
    """#4, both directions at 1.00-1.50x slower: a stop as planned is followed by round 2 at the check; a skip at
    the replan is one the check, with round 1 stopped there instead, also makes, or keeps round 2 by less than the
    margin on round 1's end and the step already taken (the replan's stated over-ask)."""
    kept_after_stop, over = [], []
    for j in range(11):
        slower = 1.0 + 0.05 * j
        tolerance = slower * STEP + ROUND1_MARGIN * _end_s(slower)
        for i in range(18):
            left = 26.0 + 2.0 * i
            case = tmp_path / f"{j}_{i}"
            got = _case(machine, case, left, slower, n_pool)
            if got is None:
                continue
            if got[0]:
                kept_after_stop += [] if got[1] else [(slower, left)]
                continue
            forced = _case(machine, case / "forced", left, slower, n_pool, force_stop=True, late=tolerance)
            if forced[1]:  # the check keeps round 2 even with the over-ask taken from its time: it asked more
                over.append((slower, left))
    assert not kept_after_stop and not over, (kept_after_stop, over)
