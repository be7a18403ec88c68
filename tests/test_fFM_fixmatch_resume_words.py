"""Review rev92 of a --resume after FixMatch's drop. #2: its line repeated the drop's advice "(a larger
--budget-minutes keeps FixMatch)", which --resume refuses; it now says that a new run can. #3: the line came
before "[run] resuming OUT"; it now follows it. #6: the record of a summary kept before the drop is what a state
written before fixmatch_planned has of FixMatch's planned settings.

Fake step speeds (patched timings); each session stops where its first stage would train, so nothing is trained."""

from __future__ import annotations

import json

from test_fER_stage_fallbacks import _speeds, _stop_at_training
from test_fEZ_stage_drops import _fixmatch_cfg, _planned

ADVICE = " (a larger --budget-minutes keeps FixMatch)"  # the drop's own line ends so


def _dropped(digits_root, tmp_path, monkeypatch, capsys):
    _speeds(monkeypatch, fixmatch_s=10.0)
    plan = _stop_at_training(monkeypatch)
    out = tmp_path / "r"
    first = _planned(_fixmatch_cfg(digits_root), out, 2.0)
    capsys.readouterr()
    assert plan["semi"] == "off" and first.summary["fixmatch_skipped"]["why"].endswith(ADVICE)
    return out, first


def _resumed_lines(digits_root, tmp_path, monkeypatch, capsys) -> tuple[list[str], str]:
    out, _ = _dropped(digits_root, tmp_path, monkeypatch, capsys)
    _planned(_fixmatch_cfg(digits_root), out, None, resume=True)
    return capsys.readouterr().out.splitlines(), str(out)


def _stays(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if "--semi fixmatch stays skipped (earlier session)" in line]


def test_the_resume_line_follows_resuming(digits_root, tmp_path, monkeypatch, capsys, real_least_run_holds):
    lines, out = _resumed_lines(digits_root, tmp_path, monkeypatch, capsys)
    resuming = [i for i, line in enumerate(lines) if line.startswith(f"[run] resuming {out}")]
    assert len(resuming) == 1 and _stays(lines) == [resuming[0] + 1], lines  # before the plan's lines


def test_the_resume_line_advises_a_new_run(digits_root, tmp_path, monkeypatch, capsys, real_least_run_holds):
    lines, _ = _resumed_lines(digits_root, tmp_path, monkeypatch, capsys)
    assert len(_stays(lines)) == 1, lines
    line = lines[_stays(lines)[0]]
    assert ADVICE.strip() not in line, line
    assert line.endswith("the labelled images only. A resumed run keeps its budget: a new run (another --out) with "
                         "a larger --budget-minutes keeps FixMatch."), line


def test_an_older_state_keeps_planned_from_the_summary_kept_before_the_drop(digits_root, tmp_path, monkeypatch,
                                                                             capsys, real_least_run_holds):
    """A stage kept the summary before FixMatch's planning (MoCo's, here its keep alone): the state's summary is
    the run's own dict, so the drop wrote its record, planned included, into the saved summary. A state from
    before fixmatch_planned holds planned only there, and the resume keeps it."""
    import fewshot.pipeline as pipeline

    real = pipeline.PipelineRun.pretrain

    def pretrain(self):  # MoCo's stage, kept: the summary saved in the state
        real(self)
        self.state.keep_summary(self.summary, self.fit_seconds, 0.0)

    monkeypatch.setattr(pipeline.PipelineRun, "pretrain", pretrain)
    out, first = _dropped(digits_root, tmp_path, monkeypatch, capsys)
    state_file = out / "run_state.json"
    state = json.loads(state_file.read_text())
    assert state["summary"]["fixmatch_skipped"] == first.summary["fixmatch_skipped"]
    del state["fixmatch_planned"]  # as fewshot wrote it before this field
    state_file.write_text(json.dumps(state))
    resumed = _planned(_fixmatch_cfg(digits_root), out, None, resume=True)
    assert resumed.summary["fixmatch_skipped"] == first.summary["fixmatch_skipped"]
    assert resumed.summary["fixmatch_skipped"]["planned"]["pool_size"] > 0
