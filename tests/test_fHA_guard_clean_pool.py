"""The val guard's note where the last round lost on val but the pool check found the pool as sure as val (hunt hCA
#3): 3 shots, a pool of the same distribution, 222 of 300 pseudo-labels right, round 2 an 11-s restart at full lr
(3.57 epochs) that fell from 54.0 to 45.6. The note blamed the pool ("likely wrong ... clean the pool"); now it names
the round's training and what to try. A pool the check flags, or one it is less sure of than val, keeps the pool
wording."""

from pathlib import Path

from fewshot.pipeline import PipelineRun
from fewshot.run_guard import round_loss_note

# regime b seed 0's pool check (/tmp/hCA/runs/b-s0-def/summary.json): pool and val alike below the cut
CHECK = {"quantile": 0.3, "val_confidence": 0.3599, "val": 500, "val_share_below": 0.2994, "pool": 1000,
         "pool_share_below": 0.296, "class_mix": True, "val_effective": 487.3, "classes_far_below": [],
         "margin": 0.15, "kept": 300, "suspect": False}


def _val(acc: float) -> dict:
    return {"mean_acc1": acc, "datasets": {"fashion-mnist": {"acc1": acc, "acc5": 100.0, "n": 500}}}


def _labels(**check) -> dict:
    return {"pool_size": 1000, "datasets": {"fashion-mnist": {"kept": 300, "pool": 1000,
                                                              "pool_classes_check": {**CHECK, **check}}}}


def _guard(tmp_path: Path, entry: dict) -> dict:
    """PipelineRun.guard_on_val on hCA b-s0's finished 2-round run, the last round's summary entry ``entry``."""
    run = object.__new__(PipelineRun)  # the guard only reads what a finished run holds
    run.summary = {"stages": {"finetune_labelled": {"epochs": 77}, "finetune": entry}}
    run.earlier, run.pseudo, run.skipped, run.rounds = {"finetune_labelled": _val(54.0)}, \
        {"summary": entry["pseudo_labels"]}, False, 2
    run.round1_val, run.val_metrics, run.out, run.fdir = 54.0, _val(45.6), tmp_path, tmp_path / "finetune"
    run.guard_on_val()
    return run.summary


def test_a_clean_pool_is_not_blamed_the_round_s_restart_is(tmp_path, capsys):
    summary = _guard(tmp_path, {"epochs": 3.57, "seconds": 20.3, "pseudo_labels": _labels()})
    line = capsys.readouterr().out
    why = summary["last_round_lost"]["why"]
    assert summary["predicted_with"] == "finetune_labelled" and why in line
    assert "Round 2 lost 8.4 points on val" in why
    assert "likely wrong" not in why and "clean the pool" not in why, why
    assert "the pool check found the pool about as sure as val" in why and "30% of 1000 pool images" in why, why
    assert "restarted from the round before's model at its own lr, with a new lr schedule, and trained for " \
        "3.57 epochs (20 s)" in why, why
    assert "larger --budget-minutes" in why and "--baseline" in why, why


def test_a_gentle_round_is_named_as_such():
    entry = {"epochs": 2.5, "seconds": 6.0, "continued_gently": {"lr": 0.0004, "planned_epochs": 3.0,
                                                                  "under_epochs": 4.0}}
    why = round_loss_note("round 2", _val(54.0), _val(45.6), _labels(), entry)["why"]
    assert "continued the round before's model gently, at lr 0.0004, for 2.5 epochs (6 s)" in why, why
    assert "clean the pool" not in why


def test_a_flagged_or_less_sure_pool_keeps_the_pool_wording():
    # hBZ #1's pool of other classes, 37 % against 29 %, and hCA's inverted pool, 0 % against 30 %: neither flagged
    for check in ({"suspect": True}, {"pool_share_below": 0.37}, {"pool_share_below": 0.0}):
        why = round_loss_note("round 2", _val(54.0), _val(45.6), _labels(**check), {"epochs": 3.57})["why"]
        assert "its 300 pseudo-labels were likely wrong" in why and "clean the pool" in why, (check, why)
    unmeasured = {"datasets": {"fashion-mnist": {"kept": 300, "pool": 1000}}}
    why = round_loss_note("round 2", _val(54.0), _val(45.6), unmeasured, {"epochs": 3.57})["why"]
    assert "clean the pool" in why and "measured no dataset" in why, why
