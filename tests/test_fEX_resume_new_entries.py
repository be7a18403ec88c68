"""A --resume refused before any stage trained removes what its own session added to the run's folder (review rev84,
#3: the removal was untested; the refused session of test_fEV_resume_refusal made no new entry)."""

from __future__ import annotations

import pytest

from fewshot.errors import UserError
from helpers.run_patch import patch_run
from test_fEV_resume_refusal import _cfg, _snapshot, stopped_before_any_stage


def test_a_refused_resume_removes_the_folders_and_files_it_made(digits_root, tmp_path, monkeypatch,
                                                                real_least_run_holds):
    import fewshot.pipeline as pipeline
    from fewshot.train import engine

    out = tmp_path / "r"
    before = stopped_before_any_stage(digits_root, out, monkeypatch)

    def writes_then_times(task, *a, **kw):  # the resumed session makes a stage folder and a file before the check
        (out / "pretrain").mkdir(exist_ok=True)
        (out / "pretrain" / "partial.pt").write_bytes(b"x")
        (out / "notes.txt").write_text("made by the refused session")
        return 30.0

    patch_run(monkeypatch, "measure_step_seconds", writes_then_times)
    monkeypatch.setattr(engine.Engine, "fit", lambda self, resume=False: pytest.fail("the resume trained"))
    with pytest.raises(UserError, match="--resume cannot fit the least run"):
        pipeline.run_pipeline(_cfg(digits_root), out, None, resume=True)
    assert not (out / "pretrain").exists() and not (out / "notes.txt").exists()
    after = _snapshot(out)
    assert after["files"] == before["files"] and after["dirs"] == before["dirs"] and after["state"] == before["state"]
