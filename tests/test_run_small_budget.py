"""`fewshot run` at very small budgets (issue 8: within 5 % of --budget-minutes): the plan counts the work the run
does after its last training step as the Engine does it, keeps the step that ends past the deadline, no longer caps
the closing estimate at half the budget, and a budget that cannot hold even the least run is refused before any
training (exit 2), leaving the output folder as it was.

No wall-clock assertions: the measured speeds and costs are replaced, and the run is stopped where it would start
training (Engine.fit), so each test reads the plan, not the clock."""

from __future__ import annotations

import time

import pytest
import torch

from fewshot.config import resolve
from fewshot.data.layout import scan_root
from fewshot.errors import UserError
from fewshot.train.distributed import DistContext
from helpers.run_patch import patch_pipeline, patch_run


class Planned(Exception):
    """Raised where the first stage would start training: the plan is what the test reads."""


def _cfg(root, **flags) -> dict:
    return resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16,
                          "train.device": "cpu", "train.progress": False, "train.batch_size": 16, "run.report": False,
                          **flags})


def _stop_at_training(monkeypatch) -> None:
    from fewshot.train import engine

    def fit(self, resume=False):
        raise Planned()

    monkeypatch.setattr(engine.Engine, "fit", fit)


@pytest.mark.parametrize("semi", ["off", "pseudo"])
def test_a_budget_that_cannot_hold_the_least_run_is_refused_before_training(digits_root, tmp_path, monkeypatch,
                                                                            real_least_run_holds, real_time_holds,
                                                                            semi):
    """A 30 s step (a large model on a busy CPU) in a 6 s budget: the run trained its 5-step floor and ended far past
    its budget, exit 0; now it says so at the first stage's planning, with the least budget measured."""
    import fewshot.pipeline as pipeline

    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 30.0)
    _stop_at_training(monkeypatch)
    out = tmp_path / "r"
    with pytest.raises(UserError) as caught:
        pipeline.run_pipeline(_cfg(digits_root, **{"run.semi_method": semi}), out, 0.1)
    text = str(caught.value)
    assert "--budget-minutes 0.1 is too short for test_resnet at 16px" in text
    assert "6 training steps at 30000 ms: its floor and the one past its deadline" in text
    assert "Nothing was trained" in text
    least = float(text.split("Give --budget-minutes ")[1].split()[0])
    assert least >= 6 * 30.0 / 60  # the floor's steps and the one past the deadline, at least
    assert "smaller --model" in text
    assert not out.exists()  # a rerun with a larger budget is not refused as "not empty" or sent to --resume


def test_a_refused_start_leaves_a_folder_it_found_as_it_was(digits_root, tmp_path, monkeypatch, real_least_run_holds):
    import fewshot.pipeline as pipeline

    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 30.0)
    _stop_at_training(monkeypatch)
    out = tmp_path / "r"
    out.mkdir()
    (out / ".DS_Store").write_text("")
    with pytest.raises(UserError, match="too short"):
        pipeline.run_pipeline(_cfg(digits_root, **{"run.semi_method": "off"}), out, 0.1)
    assert sorted(p.name for p in out.iterdir()) == [".DS_Store"]


def test_a_refused_start_without_a_lock_removes_nothing(digits_root, tmp_path, monkeypatch, real_least_run_holds):
    """On a file system without locks another start may be writing into the same folder: what appeared there may
    be its, so the refusal removes nothing and does not claim to have left the folder as it was."""
    import fewshot.pipeline as pipeline

    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 30.0)
    patch_pipeline(monkeypatch, "lock_run_dir", lambda folder: False)
    _stop_at_training(monkeypatch)
    out = tmp_path / "r"
    with pytest.raises(UserError, match="too short") as caught:
        pipeline.run_pipeline(_cfg(digits_root, **{"run.semi_method": "off"}), out, 0.1)
    assert "left as it was" not in str(caught.value) and (out / "run_state.json").is_file()


def test_the_plan_keeps_the_whole_closing_estimate_and_the_last_step(digits_root, tmp_path, monkeypatch,
                                                                     real_least_run_holds):
    """A closing estimate over half the budget was capped at half: the run planned to end about the difference
    after its budget. Now the stage ends where the whole estimate still fits, a step early for the Engine's last."""
    import fewshot.pipeline as pipeline
    import fewshot.run_stages as run_stages

    closing_s, step_s, budget_s = 10.0, 0.05, 18.0
    patch_pipeline(monkeypatch, "closing_seconds", lambda *a, **kw: closing_s)
    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: step_s)
    plans = []
    real_plan = run_stages.plan_stage

    def plan_stage(*args, **kwargs):
        result = real_plan(*args, **kwargs)
        plans.append((time.monotonic(), result[2]))
        return result

    monkeypatch.setattr(run_stages, "plan_stage", plan_stage)
    _stop_at_training(monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(Planned):
        pipeline.run_pipeline(_cfg(digits_root, **{"run.semi_method": "off"}), tmp_path / "r", budget_s / 60,
                              started=t0)
    (planned_at, stage_s), = plans
    assert stage_s > 5 * step_s  # not the floor of steps: the least run fits
    # the stage's training, the step past its deadline and the whole closing work end inside the budget
    assert planned_at + stage_s + step_s + closing_s <= t0 + budget_s


def test_the_closing_estimate_counts_the_stop_evaluation_of_both_weights_with_an_ema(digits_root):
    """With an EMA the Engine evaluates the EMA and the raw weights at the budget stop: one evaluation more than the
    estimate counted."""
    from fewshot.run_closing import closing_seconds
    from fewshot.train.supervised import SupervisedTask, resolve_finetune_defaults

    seconds = {}
    for ema in (False, True):
        cfg = _cfg(digits_root, **{"train.ema": ema})
        resolve_finetune_defaults(cfg)
        task = SupervisedTask(cfg, scan_root(digits_root, None, splits=("train", "val")), torch.device("cpu"),
                              DistContext())
        seconds[ema] = closing_seconds(task, 1.0, 0.0, n_test=0, report_stages=0)
    assert seconds[True] == pytest.approx(seconds[False] + 1.0)


def test_a_stage_keeps_back_the_step_that_ends_past_its_deadline(digits_root, monkeypatch):
    import fewshot.run_stages as run_stages
    from fewshot.train.supervised import SupervisedTask, resolve_finetune_defaults

    cfg = _cfg(digits_root)
    resolve_finetune_defaults(cfg)
    task = SupervisedTask(cfg, scan_root(digits_root, None, splits=("train", "val")), torch.device("cpu"),
                          DistContext())
    monkeypatch.setattr(run_stages, "measure_step_seconds", lambda task, *a, **kw: 1.0)
    monkeypatch.setattr(run_stages, "measure_eval_seconds", lambda task, *a, **kw: 0.0)
    before = time.monotonic()
    _, _, stage_s = run_stages.plan_stage(task, cfg, before + 100.0, 1, ("train", "eval_every"))
    assert stage_s <= 99.0


@pytest.mark.parametrize("broken", [1, 2])
def test_the_answer_key_note_says_whether_any_dataset_is_scored(copy_root, tmp_path, monkeypatch, capsys, broken):
    """With every answer key unusable, the run said the test split was "scored for the other datasets only" (there
    were none), after a warning that ended in "..": the note now says what is scored."""
    import json

    import fewshot.pipeline as pipeline

    keys = sorted(copy_root.glob("*/test_labels.json"))
    assert len(keys) == 2
    for key in keys[:broken]:
        key.write_text(json.dumps([1, 2]))  # a list: not an answer key
    _stop_at_training(monkeypatch)
    with pytest.raises(Planned):
        pipeline.run_pipeline(_cfg(copy_root), tmp_path / "r", 5)
    out = capsys.readouterr().out
    assert out.count("are not scored.") == broken and ".." not in out.replace("...", ""), out
    ending = "is not scored." if broken == 2 else "is scored for the other datasets only."
    assert f"the test split {ending}" in out, out


def test_a_skipped_round_names_time_left_and_needed_in_numbers_that_differ():
    """A hunt: "6 s were left of the budget after round 1, and round 2 needs at least 6 s" (both rounded)."""
    from fewshot.run_words import labelled_only_why, seconds_apart

    assert seconds_apart(5.6, 6.4) == ("5.6 s", "6.4 s")
    assert seconds_apart(12.4, 12.3) == ("12.4 s", "12.3 s")  # whole seconds from 10 s on, unless they then agree
    assert seconds_apart(30.0, 45.0) == ("30 s", "45 s")
    assert seconds_apart(-2.0, 3.0) == ("0.0 s", "3.0 s")  # past the deadline reads as nothing left
    left, need = seconds_apart(6.041, 6.049)
    assert left != need and left.startswith("6.04") and need.startswith("6.05")
    words = labelled_only_why(2, 5.6, 6.4, 3)
    assert words.startswith("5.6 s were left") and "about 6.4 s" in words and "(round 3 dropped)" in words


def test_moco_names_the_train_images_it_reads_for_a_dataset_without_a_pool(copy_root, tmp_path, monkeypatch,
                                                                           capsys):
    """A hunt: "MoCo pretraining: 85 unlabeled images" counted 15 train images of the datasets without a pool."""
    import shutil

    import fewshot.pipeline as pipeline

    names = sorted(p.name for p in (copy_root / "unlabeled").iterdir())
    shutil.rmtree(copy_root / "unlabeled" / names[0])
    _stop_at_training(monkeypatch)
    with pytest.raises(Planned):
        pipeline.run_pipeline(_cfg(copy_root, **{"run.pretrain": True, "run.pretrain_batch_size": 16}),
                              tmp_path / "r", 5)
    line = next(s for s in capsys.readouterr().out.splitlines() if "MoCo pretraining:" in s)
    assert f"{names[0]}: train images" in line and f"{names[1]}: unlabeled/" in line, line
    assert "their labels unused" in line and "unlabeled images at" not in line, line
