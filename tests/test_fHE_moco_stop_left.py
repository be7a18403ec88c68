"""Review rev119 of a resumed MoCo stage's skip words (run_stages.moco_stop_left, run_words.stop_left_words): the
figure was pinned only by a loose bound in a 20 s end-to-end test whose keep-back was 0, so dropping the keep-back
passed (#1, #2); "(0.5 by run.pretrain_share)", a third printed 0.333333, and "start-up took 4 s" after an 8 s
start-up (#3); a replaced stage's record moved to the end of summary.json's list (#4)."""

from __future__ import annotations

import types

import pytest

from fewshot.pipeline import PipelineRun
from fewshot.run_budget import FLOOR_STEPS
from fewshot.run_words import moco_share_words, resumed_no_time_words, resumed_short_words

T_START, USED, STAGE_S, RUN_END, READ_S = 100.0, 10.0, 60.0, 140.0, 0.5  # this session starts at 110
MOCO_END = 135.0  # 110 + 0.5 x (160 - 110): MoCo's half of what the stages had left at this session's start
BINDING = {"after_s": 20.0}  # its plan needs 20 s after MoCo's end, the run leaves 5: 15 s kept back


def _stop_left(monkeypatch, entry: dict, startup: float) -> float:
    """moco_stop_left on a stand-in run whose session began ``startup`` seconds ago."""
    import fewshot.run_stages as run_stages

    run = types.SimpleNamespace(resume=True, t_start=T_START, used=USED, stage_s=STAGE_S, r={"pretrain_share": 0.5})
    run.moco_end = types.MethodType(PipelineRun.moco_end, run)
    monkeypatch.setattr(run_stages, "time", types.SimpleNamespace(monotonic=lambda: T_START + USED + startup))
    return run_stages.moco_stop_left(run, entry, RUN_END, READ_S)


def test_moco_stop_left_is_its_share_less_its_keep_back_and_read_whatever_the_start_up(monkeypatch):
    # keep-back not binding (the run leaves 5 s after MoCo's end, 3 s needed): share x (stage_s - used) - read
    assert _stop_left(monkeypatch, {"after_s": 3.0}, 8.0) == pytest.approx(0.5 * (STAGE_S - USED) - READ_S)
    # binding: the run's end less what its plan needs after MoCo, less the read, from this session's start
    assert _stop_left(monkeypatch, BINDING, 8.0) == pytest.approx(RUN_END - 20.0 - READ_S - (T_START + USED))
    assert _stop_left(monkeypatch, BINDING, 16.0) == pytest.approx(9.5)  # twice the start-up: the same
    assert _stop_left(monkeypatch, {"kept_s": 2.0}, 8.0) == pytest.approx(MOCO_END - 2.0 - READ_S - 110.0)  # older


def test_the_skip_line_says_what_the_start_up_cost_moco_in_numbers_that_add_up(monkeypatch):
    stop_left = _stop_left(monkeypatch, BINDING, 8.0)  # 9.5 s
    least = (f", less than a stage's least run ({FLOOR_STEPS + 1} training steps, about 0.7 s at its logged speed of "
             f"0.1 s a step): it trains no further and goes straight to its closing work")
    assert resumed_short_words(0.4, 0.7, 0.1, startup=8.0, stop_left=stop_left) == (
        "this session's start-up cost this stage all but 0.4 s of the 9.5 s the stop left it before its closing "
        "work" + least)
    assert resumed_short_words(6.34, 0.7, 0.1, startup=8.0, stop_left=stop_left) == (
        "the stop left this stage 9.5 s before its closing work, and this session's start-up cost it 3.2 s of "
        "them, leaving 6.3 s" + least)
    # seconds_apart's extra digit on what is left: the cost takes as many (0.39 + 0.61 = 1.0)
    assert resumed_short_words(0.61, 0.64, 0.1, startup=8.0, stop_left=1.0).startswith(
        "the stop left this stage 1.0 s before its closing work, and this session's start-up cost it 0.39 s of them, "
        "leaving 0.61 s, less than")


def test_the_no_time_line_gives_moco_s_share_as_the_setting_s_value_at_two_digits():
    assert resumed_no_time_words(-0.6, 0.3, None, moco_share_words(1 / 3)) == (
        "no time is left of MoCo's share (run.pretrain_share: 0.33) of what the run's budget of 0.3 minutes had left "
        "after this session's start-up, before its closing work (0.6 s past it already): it trains no further and "
        "goes straight to its closing work")


def test_a_stage_s_later_skip_record_keeps_its_place_in_the_list():
    moco, tune = {"left_s": 0.2, "why": "MoCo's why"}, {"left_s": 0.4, "why": "the fine-tuning's why"}
    run = types.SimpleNamespace(summary={"resumed_training_skipped": [{"stage": "pretrain", **moco},
                                                                      {"stage": "finetune", **tune}]})
    PipelineRun.note_resumed_skip(run, "pretrain", {**moco, "left_s": 0.1})
    assert run.summary["resumed_training_skipped"] == [{"stage": "pretrain", **moco, "left_s": 0.1},
                                                       {"stage": "finetune", **tune}]
