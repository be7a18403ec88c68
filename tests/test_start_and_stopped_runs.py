"""`fewshot run`'s refused and failed starts, and the report's reading of a stopped run's last.pt:
the least-run refusal counts the MoCo stage (--pretrain ran past tiny budgets instead), a failed start removes the
parents --out made (`x/../y` left x), last.pt is read without its tensors, and a run stopped within its first
epoch shows the part of it that last.pt saved (a bare 0 before)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from fewshot.config import resolve
from fewshot.errors import UserError
from helpers.run_patch import patch_pipeline, patch_run


class Planned(Exception):
    """Raised where a stage would start training: the test reads the plan, not the clock."""


def _cfg(root, **flags) -> dict:
    return resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16,
                          "train.device": "cpu", "train.progress": False, "train.batch_size": 16, "run.report": False,
                          **flags})


@pytest.fixture
def no_training(monkeypatch, real_least_run_holds):
    """Engine.fit stops the run where a stage would train; the least-run check as the package has it."""
    from fewshot.train import engine

    def fit(self, resume=False):
        raise Planned(self.task.kind)

    monkeypatch.setattr(engine.Engine, "fit", fit)


def test_pretrain_with_a_budget_too_small_for_the_least_run_is_refused_before_moco_trains(digits_root, tmp_path,
                                                                                         monkeypatch, no_training):
    """With --pretrain the check came at the fine-tuning's planning, after MoCo had trained, and a stage that had
    trained turned it off: 0.05 minutes ran 27 s. Now MoCo's planning refuses it, counting the fine-tuning too."""
    import fewshot.pipeline as pipeline

    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 30.0)
    out = tmp_path / "r"
    cfg = _cfg(digits_root, **{"run.semi_method": "off", "run.pretrain": True, "run.pretrain_batch_size": 32})
    with pytest.raises(UserError) as caught:  # not Planned("moco"): MoCo never started training
        pipeline.run_pipeline(cfg, out, 0.5)  # 30 s: above the start-up's own floor even on a busy machine
    text = str(caught.value)
    assert "--budget-minutes 0.5 is too short for test_resnet at 16px" in text and "Nothing was trained" in text
    # the words of what is counted: its 6 steps, its kNN evaluation and its checkpoints ("5 steps" counted 6)
    assert ("MoCo pretraining's 6 steps at 30000 ms (its floor of 5 and the one past its deadline), its kNN "
            "evaluation at the stop and its checkpoint writes and export, then the fine-tuning's timing") in text
    least = float(text.split("Give --budget-minutes ")[1].split()[0])
    assert least >= 12 * 30.0 / 60  # MoCo's 6 steps and the fine-tuning's 6, at least
    assert not out.exists()


def _plan_moco(monkeypatch, eval_s: float) -> dict:
    """MoCo's plan (its training seconds) with fixed speeds: 1 s steps, ``eval_s`` evaluations, and a fine-tuning
    whose timing and least run take 40 s each."""
    from fewshot.train import engine

    planned = {}

    def fit(self, resume=False):
        planned["moco_s"] = 60 * float(self.cfg["train"]["budget_minutes"])
        raise Planned(self.task.kind)

    monkeypatch.setattr(engine.Engine, "fit", fit)
    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 1.0)
    patch_run(monkeypatch, "measure_eval_seconds", lambda task, *a, **kw: eval_s)
    patch_pipeline(monkeypatch, "calibration_seconds", lambda *a: 40.0)
    patch_pipeline(monkeypatch, "least_run_seconds", lambda *a: 40.0)
    return planned


def test_moco_keeps_back_what_the_least_fine_tuning_needs_after_it(digits_root, tmp_path, monkeypatch, no_training):
    """A review: the check passed on the whole budget, but MoCo still planned its full share, and with a large share
    the fine-tuning after it got less than its least run. Now MoCo's plan leaves that time free."""
    import fewshot.pipeline as pipeline

    planned = _plan_moco(monkeypatch, eval_s=0.0)  # no closing evaluation: the fine-tuning's need alone
    cfg = _cfg(digits_root, **{"run.semi_method": "off", "run.pretrain": True, "run.pretrain_batch_size": 32,
                               "run.pretrain_share": 0.95})
    with pytest.raises(Planned, match="moco"):
        pipeline.run_pipeline(cfg, tmp_path / "r", 2.0)
    # MoCo's share of the stages' time alone planned about 103 s of the 120, leaving the 80 s no room
    assert planned["moco_s"] <= 120 - 80


def test_moco_keeps_back_its_own_closing_evaluation_too(digits_root, tmp_path, monkeypatch, no_training):
    """A review: the keep-back left the fine-tuning its 80 s, but MoCo's budget-stop kNN evaluation (20 s here),
    checkpoints and export come after MoCo's deadline, out of those 80 s. Now they are kept back as well
    (pretrain/metrics.json reuses that evaluation: one is kept back, not two)."""
    import fewshot.pipeline as pipeline

    planned = _plan_moco(monkeypatch, eval_s=20.0)
    cfg = _cfg(digits_root, **{"run.semi_method": "off", "run.pretrain": True, "run.pretrain_batch_size": 32,
                               "run.pretrain_share": 0.95})
    with pytest.raises(Planned, match="moco"):
        pipeline.run_pipeline(cfg, tmp_path / "r", 2.0)
    assert planned["moco_s"] <= 120 - 80 - 20


def test_a_resumed_run_whose_moco_plans_anew_keeps_back_for_the_fine_tuning(digits_root, tmp_path, monkeypatch,
                                                                             no_training):
    """A review: on --resume the keep-back was skipped with the refusal, and a MoCo stopped before its last.pt
    planned its whole share again. Only the refusal is skipped now."""
    import fewshot.pipeline as pipeline

    planned = _plan_moco(monkeypatch, eval_s=1.0)
    cfg = _cfg(digits_root, **{"run.semi_method": "off", "run.pretrain": True, "run.pretrain_batch_size": 32,
                               "run.pretrain_share": 0.95})
    out = tmp_path / "r"
    with pytest.raises(Planned, match="moco"):  # stopped where MoCo would train: no last.pt
        pipeline.run_pipeline(copy.deepcopy(cfg), out, 2.0)
    planned.clear()
    with pytest.raises(Planned, match="moco"):
        pipeline.run_pipeline(copy.deepcopy(cfg), out, None, resume=True)
    assert planned["moco_s"] <= 120 - 80


def test_pretrain_with_a_budget_that_holds_the_least_run_trains_moco(digits_root, tmp_path, monkeypatch, no_training):
    """The check refuses only what cannot fit: fast steps in a 10-minute budget go on to train MoCo."""
    import fewshot.pipeline as pipeline

    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 0.01)
    cfg = _cfg(digits_root, **{"run.semi_method": "off", "run.pretrain": True, "run.pretrain_batch_size": 32})
    with pytest.raises(Planned, match="moco"):
        pipeline.run_pipeline(cfg, tmp_path / "r", 10)


@pytest.mark.parametrize("how", ["bad input", "refused budget"])
def test_a_failed_start_removes_the_parents_out_made(digits_root, tmp_path, monkeypatch, no_training, how):
    """`--out x/../y` with no x: the start made x (mkdir of y's parents) and left it behind when it failed."""
    import fewshot.pipeline as pipeline

    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 30.0)
    monkeypatch.chdir(tmp_path)
    flags = {"run.semi_method": "off", **({"data.datasets": ["nope"]} if how == "bad input" else {})}
    with pytest.raises(UserError):
        pipeline.run_pipeline(_cfg(digits_root, **flags), tmp_path / "x" / ".." / "y", 0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failed_start_keeps_a_parent_that_was_there(digits_root, tmp_path, monkeypatch, no_training):
    """Only what the start made goes: a parent found there, and its other files, stay."""
    import fewshot.pipeline as pipeline

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("mine")
    with pytest.raises(UserError):
        pipeline.run_pipeline(_cfg(digits_root, **{"data.datasets": ["nope"]}), tmp_path / "a" / "b" / "c", 0.1)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["keep.txt"]


def _users_folder(tmp_path):
    """y with the user's files, and the listing a start must leave as it was."""
    (tmp_path / "y" / "sub").mkdir(parents=True)
    (tmp_path / "y" / "keep.txt").write_text("mine")
    (tmp_path / "y" / "sub" / "a.txt").write_text("mine too")
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("how", ["bad input", "refused budget"])
def test_a_failed_start_into_x_dotdot_y_keeps_the_users_y(digits_root, tmp_path, monkeypatch, no_training, how):
    """A review: `--out x/../y` with no x named no folder yet, so a y full of files passed as new, and the failed
    start removed y with everything in it. The path is judged as the kernel will use it: y is not empty, refused
    before anything is made."""
    import fewshot.pipeline as pipeline

    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 30.0)
    monkeypatch.chdir(tmp_path)
    before = _users_folder(tmp_path)
    flags = {"run.semi_method": "off", **({"data.datasets": ["nope"]} if how == "bad input" else {})}
    with pytest.raises(UserError, match="is not empty"):
        pipeline.run_pipeline(_cfg(digits_root, **flags), __import__("pathlib").Path("x/../y"), 0.1)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # y intact, no x


def test_a_start_into_x_dotdot_y_with_y_empty_undoes_only_its_own(digits_root, tmp_path, monkeypatch, no_training):
    """y there and empty (a fresh --out): the failed start empties it again, keeps it, and removes the x it made."""
    import fewshot.pipeline as pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "y").mkdir()
    with pytest.raises(UserError):
        pipeline.run_pipeline(_cfg(digits_root, **{"data.datasets": ["nope"]}), tmp_path / "x" / ".." / "y", 0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y"] and list((tmp_path / "y").iterdir()) == []


def test_a_start_through_a_link_and_dotdot_judges_the_folder_written(digits_root, tmp_path, monkeypatch,
                                                                      no_training):
    """`link/../y` is y beside the link's target (the kernel follows the link before `..`): that y's files refuse the
    start, and a y beside the link is not touched."""
    import fewshot.pipeline as pipeline

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "b")
    (tmp_path / "a" / "y").mkdir()
    (tmp_path / "a" / "y" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty"):
        pipeline.run_pipeline(_cfg(digits_root, **{"data.datasets": ["nope"]}), tmp_path / "link" / ".." / "y", 0.1)
    assert (tmp_path / "a" / "y" / "keep.txt").read_text() == "mine" and not (tmp_path / "y").exists()


def _checkpoint(path, kind: str, **fields) -> None:
    from fewshot.train.checkpoint import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"kind": kind, "config": {"train": {"batch_size": 8}}, "model": {"w": torch.ones(64, 64)},
                           "label_space": {}, "img_size": 32, "n_parameters": 1, **fields})


def test_read_saved_steps_maps_last_pt_instead_of_reading_its_tensors(tmp_path, monkeypatch):
    """The whole last.pt (weights, EMA, optimizer) was read for three integers: now torch maps it."""
    from fewshot.report.saved_steps import read_saved_steps

    last = tmp_path / "last.pt"
    _checkpoint(last, "supervised", epoch=2, step_in_epoch=5, global_step=45)
    calls = []
    real_load = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    assert read_saved_steps(last) == {"epoch": 2, "step_in_epoch": 5, "global_step": 45, "steps_per_epoch": 20}
    assert calls and all(c.get("mmap") is True and c.get("weights_only") is True for c in calls)


def test_a_last_pt_that_maps_but_is_no_fewshot_checkpoint_is_not_read_again_whole(tmp_path, monkeypatch):
    """A review: every failure of the mapped read fell back to reading the whole file, also a file that mapped fine
    and then failed the format check (a foreign 2 GB file was read in full for nothing)."""
    from fewshot.report.saved_steps import read_saved_steps

    last = tmp_path / "last.pt"
    torch.save({"w": torch.ones(64, 64), "epoch": 1, "step_in_epoch": 0, "global_step": 7}, last)  # no format
    calls = []
    real_load = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs.get("mmap"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    assert read_saved_steps(last) is None
    assert calls == [True]


def _stopped_run(run, **last_fields) -> None:
    """A fine-tuning run folder stopped within its first epoch: its config, an empty log, maybe a last.pt."""
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps({"model": {"name": "test_resnet", "img_size": 32}}))
    (run / "log.jsonl").write_text("")
    if last_fields:
        _checkpoint(run / "checkpoints" / "last.pt", "supervised", **last_fields)


def test_a_run_stopped_in_its_first_epoch_shows_the_part_last_pt_saved(tmp_path):
    """Stopped at step 30 of 100, before any log row: the report showed 0 epochs."""
    from fewshot.report.runs import load_run
    from fewshot.report.tables import epochs

    _stopped_run(tmp_path / "ft", epoch=0, step_in_epoch=30, global_step=30, steps_per_epoch=100)
    run = load_run(tmp_path / "ft", "ft")
    assert run.epochs == 0.3 and epochs(run.epochs) == "0.3"
    assert any("no epoch finished: the run stopped at step 30 of 100 of its first epoch" in n for n in run.notes)


def test_a_run_stopped_in_its_first_epoch_without_last_pt_says_no_epoch_finished(tmp_path):
    from fewshot.report.runs import load_run
    from fewshot.report.tables import DASH, epochs

    _stopped_run(tmp_path / "ft")
    run = load_run(tmp_path / "ft", "ft")
    assert run.epochs is None and epochs(run.epochs) == DASH  # not a bare 0
    assert any("no epoch finished" in n and "before it saved a last.pt" in n for n in run.notes), run.notes


def test_the_engine_saves_its_steps_per_epoch_in_last_pt(digits_root, tmp_path):
    """What the report's first-epoch fraction reads (an epoch-0 last.pt cannot tell it otherwise)."""
    from fewshot.train.checkpoint import load_checkpoint
    from helpers.checks import run_main

    run = tmp_path / "ft"
    rc, _, err = run_main("train", "--data", digits_root, "--out", run, "--datasets", "digits", "--model",
                          "test_resnet", "--img-size", "16", "--epochs", "2", "--batch-size", "16", "--device", "cpu",
                          "--no-progress", "train.tensorboard=false")
    assert rc == 0, err
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and last["steps_per_epoch"] * 2 == last["global_step"] > 0


def test_a_last_pt_that_cannot_be_mapped_is_read_whole(tmp_path):
    """torch maps only zip-format files: an older torch.save format made the mapped read fail, and the report lost
    the count it could read before."""
    from fewshot.report.saved_steps import read_saved_steps

    last = tmp_path / "last.pt"
    from fewshot.train.checkpoint import FORMAT, REQUIRED

    payload = {**{k: 0 for k in REQUIRED}, "format": FORMAT, "kind": "supervised", "model": {"w": torch.ones(4)},
               "epoch": 1, "step_in_epoch": 0, "global_step": 7}
    torch.save(payload, last, _use_new_zipfile_serialization=False)
    assert read_saved_steps(last) == {"epoch": 1, "step_in_epoch": 0, "global_step": 7, "steps_per_epoch": 7}


def test_a_run_still_in_its_first_epoch_is_not_called_stopped(tmp_path):
    """A review: a run being written (its lock held) with no log row yet was noted as stopped within its first
    epoch, beside the report's own word that it is still being written."""
    from fewshot.report.runs import load_run
    from fewshot.run_lock import lock_run_dir, release_all

    _stopped_run(tmp_path / "ft")
    assert lock_run_dir(tmp_path / "ft")
    try:
        run = load_run(tmp_path / "ft", "ft")
    finally:
        release_all()
    assert not any("no epoch finished" in n for n in run.notes), run.notes


def test_without_a_pool_the_run_says_fine_tuning_gets_what_moco_leaves(copy_root, tmp_path, monkeypatch, no_training,
                                                                       capsys):
    """A hunt: with --pretrain and no pool it said the fine-tuning gets the whole budget, then spent half on MoCo."""
    import shutil

    import fewshot.pipeline as pipeline

    shutil.rmtree(copy_root / "unlabeled")
    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 0.01)
    cfg = _cfg(copy_root, **{"run.pretrain": True, "run.pretrain_batch_size": 16, "run.queue_size": 32})
    with pytest.raises(Planned, match="moco"):
        pipeline.run_pipeline(cfg, tmp_path / "r", 10)
    said = capsys.readouterr().out
    assert "self-training is off, the fine-tuning on the labelled images gets the time MoCo leaves" in said, said


def test_the_overrun_note_asks_for_a_larger_budget_only_where_one_would_help():
    """A hunt: a 1.5-minute run that overran by 5 s was told "A budget of at least 1 minute leaves training a fair
    share"."""
    from fewshot.run_words import overrun_note

    busy = overrun_note(95.0, 90.0, 60.0)  # 35 s around the training: 2 minutes would be the advice
    assert "at least 2 minutes" in busy
    quiet = overrun_note(95.0, 90.0, 75.0)  # 20 s around it: the 1.5 minutes were enough, the machine was not
    assert "at least" not in quiet and "faster than the machine later was" in quiet and "took 95 s" in quiet
