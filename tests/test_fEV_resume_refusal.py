"""A --resume of a `fewshot run` that no stage had trained in (run_state.json's `stages: {}`) is refused like a fresh
run when its least run cannot fit the budget left (hunt hBP: it went on, warned, and overran by 58 %); a resume
with a stage trained is not (plan_stage warns). Step speeds are replaced and training stops where it would start."""

from __future__ import annotations

import json
import signal
from types import SimpleNamespace

import pytest

from fewshot.config import resolve
from fewshot.errors import UserError
from fewshot.pipeline import PipelineRun
from fewshot.train.stop_signal import StopRequested
from helpers.run_patch import patch_run


def _cfg(root) -> dict:
    return resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16,
                          "train.device": "cpu", "train.progress": False, "train.batch_size": 16, "run.report": False,
                          "run.semi_method": "off"})


def _snapshot(out) -> dict:
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    state = json.loads(files.pop("run_state.json"))
    return {"files": files, "dirs": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_dir()),
            "state": state}


def stopped_before_any_stage(root, out, monkeypatch) -> dict:
    """A run at ``out`` stopped by a Ctrl-C in the first stage's timing (no stage began), and its folder's snapshot."""
    import fewshot.pipeline as pipeline

    def stopped(task, *a, **kw):
        raise StopRequested(signal.SIGINT, None)

    patch_run(monkeypatch, "measure_step_seconds", stopped)
    with pytest.raises(StopRequested):
        pipeline.run_pipeline(_cfg(root), out, 0.5)
    return _snapshot(out)


def test_a_resume_with_no_stage_trained_is_refused_when_its_least_run_cannot_fit(digits_root, tmp_path, monkeypatch,
                                                                                real_least_run_holds):
    import fewshot.pipeline as pipeline
    from fewshot.train import engine

    out = tmp_path / "r"
    before = stopped_before_any_stage(digits_root, out, monkeypatch)
    assert before["state"]["stages"] == {}

    patch_run(monkeypatch, "measure_step_seconds", lambda task, *a, **kw: 30.0)
    monkeypatch.setattr(engine.Engine, "fit", lambda self, resume=False: pytest.fail("the resume trained"))
    with pytest.raises(UserError) as caught:
        pipeline.run_pipeline(_cfg(digits_root), out, None, resume=True)
    text = str(caught.value)
    assert "--resume cannot fit the least run of test_resnet at 16px" in text, text
    assert "6 training steps at 30000 ms" in text and "the output folder was left as it was" in text
    least = float(text.split("with --budget-minutes ")[1].split()[0])
    assert least >= 6 * 30.0 / 60  # the floor's steps and the one past the deadline, at least
    assert "start the run afresh" in text and least > 0.1
    after = _snapshot(out)
    assert after["files"] == before["files"] and after["dirs"] == before["dirs"]
    assert after["state"] == before["state"]  # this session's time is not counted either


def _run(fit_seconds: list, stages: dict) -> SimpleNamespace:
    run = SimpleNamespace(resume=True, fit_seconds=fit_seconds, state=SimpleNamespace(data={"stages": stages}))
    run.training_began = lambda: PipelineRun.training_began(run)
    return run


def test_a_resume_with_a_stage_trained_or_begun_goes_on_as_before():
    """No timing, no refusal: the check returns the speeds it was given (plan_stage's warnings take over)."""
    assert PipelineRun.refuse_unless_least_run_fits(_run([12.0], {"pretrain": {"status": "done"}}),
                                                    [(None, 30.0)]) == [30.0]
    assert PipelineRun.refuse_unless_least_run_fits(_run([], {"finetune": {"status": "began"}}),
                                                    [(None, 30.0)]) == [30.0]
