"""A MoCo stage continued on `fewshot run --pretrain --resume` with no training time left and its closing work (its
kNN evaluation at the stop, checkpoint writes, export) past the budget: the fine-tuning stages' "resumes" warning, in
MoCo's words. It said nothing of its own; the fine-tuning's floor warning came after MoCo's closing work."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import torch

from fewshot.pipeline import PipelineRun
from fewshot.run_stages import trains_no_further
from fewshot.run_words import pretrain_resumed_late_warning
from helpers.checks import run_main
from test_run_resume import _cmd, stopped_in_stage


def test_a_moco_stage_resumed_past_the_budget_warns_once_before_its_closing_work(digits_root, tmp_path,
                                                                                 monkeypatch):
    from fewshot.ssl.pretrain import MoCoTask

    out = tmp_path / "run"
    cmd = _cmd(digits_root, out, "--pretrain", "run.semi_method=off")
    stopped_in_stage(cmd, "pretrain", MoCoTask)
    state = json.loads((out / "run_state.json").read_text())
    assert state["stages"]["pretrain"]["status"] == "began"
    state["seconds"] = state["budget_minutes"] * 60  # as if the session had run on to the end of the budget
    (out / "run_state.json").write_text(json.dumps(state))
    from fewshot import run_stages

    timed = []
    real_measure = run_stages.measure_eval_seconds
    monkeypatch.setattr(run_stages, "measure_eval_seconds", lambda task: timed.append(task) or real_measure(task))
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    # the stop came before MoCo's first kNN evaluation (none logged): the warning does not time one to word itself
    # in a session already past its budget (only the fine-tuning's planning times its own)
    assert timed and not any(isinstance(task, MoCoTask) for task in timed), timed
    lines = [line for line in stdout.splitlines() if "resumes" in line and "pretrain" in line]
    assert len(lines) == 1, stdout
    line = lines[0]
    assert line.startswith("[run] warning: pretrain resumes "), line
    assert "past the budget already, and its closing work needs about" in line, line
    assert "(its kNN evaluation at the stop, its checkpoint writes and the backbone's export)" in line, line
    assert "it trains no further, and the run will likely end" in line, line
    assert "after its budget, plus the fine-tuning's least run after it" in line, line
    assert "--budget-minutes" not in line and "larger" not in line
    # before the stage's closing work and the fine-tuning's planning; the stage's own [run] line says it trains no
    # further, the Engine's note at its stop does not say it again (go_on_resumed)
    assert "[run] pretrain: resumed from " in stdout and "no time is left of the run's budget for this" not in stdout
    assert stdout.index("[run] pretrain: resumed from ") < stdout.index(line), stdout  # the stage's line, then this
    assert stdout.index(line) < stdout.index("[run] fine-tuning from MoCo weights")
    assert (out / "backbone.safetensors").is_file()
    # the fine-tuning's floor warning in a resumed session: the budget and settings cannot change on --resume, so
    # its advice is a new run's (it said "A larger --budget-minutes ... lets it fit", which --resume refuses)
    floor = [line for line in stdout.splitlines() if "least time" in line and "does not fit" in line]
    assert floor and all("A resumed run keeps its budget and settings: a new run (another --out) with a larger "
                         "--budget-minutes" in line for line in floor), stdout
    assert "lets it fit" not in stdout, stdout


def test_the_moco_warning_words_its_own_closing_work_and_the_fine_tuning_after_it():
    assert pretrain_resumed_late_warning(30.0, 20.0) is None
    assert pretrain_resumed_late_warning(20.0, 20.0) is None
    words = pretrain_resumed_late_warning(5.0, 20.0)
    assert words.startswith("[run] warning: pretrain resumes with 5.0 s of the budget left"), words
    assert "(about 20 s: its kNN evaluation at the stop, its checkpoint writes and the backbone's export)" in words
    assert "end about 15 s after its budget, plus the fine-tuning's least run after it" in words
    late = pretrain_resumed_late_warning(-40.0, 20.0)
    assert "pretrain resumes 40 s past the budget already" in late and "end about 60 s after its budget" in late


def _run(left: float) -> SimpleNamespace:
    run = SimpleNamespace(t_start=time.monotonic() + left - 60.0, budget_s=60.0,
                          refuse_unless_pretrain_run_fits=lambda task, eval_s, step_s: 7.0)
    return run


def test_the_moco_hook_warns_a_resumed_stage_only_where_its_closing_work_does_not_fit(capsys):
    task = SimpleNamespace(model=torch.nn.Linear(10, 10))
    assert PipelineRun.pretrain_closing(_run(0.5), task, 2.0, step_s=0.1) == 7.0  # planned now: the refusal's
    assert "resumes" not in capsys.readouterr().out
    assert PipelineRun.pretrain_closing(_run(500.0), task, 2.0) == 0.0  # resumed, time enough
    assert "resumes" not in capsys.readouterr().out
    assert PipelineRun.pretrain_closing(_run(0.5), task, 2.0) == 0.0
    out = capsys.readouterr().out
    assert out.count("[run] warning: pretrain resumes with 0.5 s of the budget left") == 1, out
    assert "(about 2.0 s: its kNN evaluation" in out, out


def test_a_resumed_stage_with_training_time_left_is_not_one_that_trains_no_further():
    assert trains_no_further({"train": {"budget_minutes": 12.0 / 60}}, 12.0)
    assert trains_no_further({"train": {"budget_minutes": 1e-3 / 60}}, 0.0)
    assert not trains_no_further({"train": {"budget_minutes": 20.0 / 60}}, 12.0)


def test_the_overrun_warning_of_a_resumed_session_advises_a_new_run():
    from fewshot.run_words import overrun_warning

    fresh = overrun_warning(5.0, "the least steps do not fit")
    assert fresh.endswith("A larger --budget-minutes, or a smaller --img-size or --model, lets it fit."), fresh
    resumed = overrun_warning(5.0, "the least steps do not fit", resumed=True)
    assert "about 5 s after its budget. A resumed run keeps its budget and settings: a new run (another --out) with " \
           "a larger --budget-minutes, or a smaller --img-size or --model, would fit." in resumed, resumed
    from fewshot.run_words import min_epochs_warning

    assert min_epochs_warning(30, 3.0, 60.0, 0.1, 10).endswith("Give a larger --budget-minutes, or a smaller "
                                                               "--img-size or --model, for more epochs.")
    resumed = min_epochs_warning(30, 3.0, 60.0, 0.1, 10, resumed=True)
    assert resumed.endswith("A resumed run keeps its budget and settings: a new run (another --out) with a larger "
                            "--budget-minutes, or a smaller --img-size or --model, would train more epochs."), resumed
