"""A FixMatch stage dropped for the labelled-only fine-tune whose own least run the budget then refuses (review
rev86 #6): the console said "--semi fixmatch skipped ... trains on the labelled images only" before a refusal of
that very fine-tune, and the refusal's "Give --budget-minutes X" was sized for it, so a rerun with --semi fixmatch
at X dropped FixMatch again. Now the note waits for the fallback's check, and the refusal names FixMatch's need.

Fake step speeds (patched timings, the closing work fixed); the run stops where its first stage would train."""

from __future__ import annotations

import re

import pytest

from helpers.run_clock import Planned, fixed_closing, run_cfg, stop_at_training
from helpers.run_patch import patch_run

NOTE = "[run] --semi fixmatch skipped (planned, not an error)"


def _speeds(monkeypatch, fallback_s: float) -> None:
    """FixMatch's steps at 1 s (5 steps an epoch), the labelled-only fine-tune's at ``fallback_s``."""
    def measure(task, *a, **kw):
        return 1.0 if task.cfg["semi"]["method"] == "fixmatch" else fallback_s

    patch_run(monkeypatch, "measure_step_seconds", measure)
    fixed_closing(monkeypatch, 2.0)


def test_fallback_refused_says_no_skip_note_and_names_fixmatchs_budget(digits_root, tmp_path, monkeypatch, capsys,
                                                                      real_least_run_holds):
    """The fallback at 3 s a step cannot fit 0.3 minutes: refused, with no skip note before it, and the refusal
    names a larger budget for --semi fixmatch than the one it names for the fallback."""
    import fewshot.pipeline as pipeline
    from fewshot.errors import UserError

    _speeds(monkeypatch, 3.0)
    stop_at_training(monkeypatch)
    with pytest.raises(UserError) as caught:
        pipeline.run_pipeline(run_cfg(digits_root, **{"run.semi_method": "fixmatch"}), tmp_path / "r", 0.3)
    words = str(caught.value)
    assert NOTE not in capsys.readouterr().out
    budgets = [float(m) for m in re.findall(r"[Gg]ive --budget-minutes ([0-9.]+)", words)]
    assert len(budgets) == 2, words
    assert budgets[1] > budgets[0], words  # FixMatch's 6 epochs need more than the fallback's least run
    assert "--semi fixmatch needs about" in words


def test_fallback_that_fits_says_the_skip_note_once(digits_root, tmp_path, monkeypatch, capsys, real_least_run_holds):
    """The fallback at 10 ms a step fits: the note is said once, before its stage trains."""
    import fewshot.pipeline as pipeline

    _speeds(monkeypatch, 0.01)
    plan = stop_at_training(monkeypatch)
    with pytest.raises(Planned):
        pipeline.run_pipeline(run_cfg(digits_root, **{"run.semi_method": "fixmatch"}), tmp_path / "r", 0.3)
    assert capsys.readouterr().out.count(NOTE) == 1
    assert plan["kind"] == "supervised"
