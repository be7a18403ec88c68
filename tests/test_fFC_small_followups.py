"""Three small follow-ups of review rev88: a resume after a dropped MoCo stage sees that round 1's checkpoint
replaces --weights (#2); the report's sentence when val says no to even proportions (#3); the round-skip line names
the pool's folder only when the pool is empty (#4)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from helpers.checks import run_main
from test_run_resume import BASE


class _Built(Exception):
    """Raised by the stubbed check_model: choose_model stops there, with what it was asked."""


def test_a_resume_after_moco_was_dropped_takes_round_1_as_replacing_the_weights(tmp_path, monkeypatch):
    """run.pretrain is still on in the stopped run's settings, but run_state.json says MoCo was dropped (its
    pretrain/ removed): the finished round 1 replaces the user's weights, so the file need not exist any more."""
    from fewshot import run_startup
    from fewshot.run_state import RunState

    stage = tmp_path / "finetune_labelled"
    (stage / "checkpoints").mkdir(parents=True)
    (stage / "checkpoints" / "last.pt").write_bytes(b"x")
    state = RunState(tmp_path, {"stages": {"finetune_labelled": {"status": "trained"}},
                                "pretrain_skipped": "the budget cannot hold MoCo's least run"})
    adopted = []
    monkeypatch.setattr(run_startup, "adopt_stage_architecture", lambda cfg, sdir: adopted.append(sdir))

    def built(cfg, load_weights=True):
        raise _Built(load_weights)
    monkeypatch.setattr(run_startup, "check_model", built)
    me = SimpleNamespace(cfg={"model": {"img_size": 32, "weights": str(tmp_path / "gone.safetensors")}},
                         r={"pretrain": True}, state=state, out=tmp_path,
                         pretrain_dropped_before=state.data["pretrain_skipped"])  # as pretrain_kept_off reads it
    with pytest.raises(_Built) as stopped:
        run_startup.StartupMixin.choose_model(me)
    assert adopted == [stage] and stopped.value.args == (False,)  # the weights file is not read


def test_val_saying_no_to_even_proportions_reads_as_one_sentence():
    from fewshot.report.pipeline_runs import balance_words

    why = "even: the test predictions fit even proportions (p=0.6) better than the train split's (p=0.01)"
    words = balance_words({"a": {"used": False, "prior_from": why, "val_plain": 80.0, "val_balanced": 82.0,
                                 "val_weighted_plain": 70.0, "val_weighted_balanced": 69.0}})
    assert words == "plain argmax for a (val 80.0 plain, 82.0 balanced; val re-weighted to even proportions 70.0 " \
                    "plain, 69.0 balanced)", words


def test_a_pool_with_no_time_left_to_label_is_not_sent_to_its_folder(digits_root, tmp_path, monkeypatch,
        real_kept_nothing):
    from fewshot import run_pseudo

    monkeypatch.setattr(run_pseudo, "pool_share_in_time", lambda *a, **k: torch.zeros(0, dtype=torch.long))
    rc, stdout, err = run_main("run", "--data", digits_root, "--out", tmp_path / "run", *BASE)
    assert rc == 0, err
    line = [s for s in stdout.splitlines() if s.startswith("[run] no pool image was left to label")]
    assert len(line) == 1 and "no time was left to label any of its" in line[0], stdout
    assert "unlabeled" not in line[0], line
