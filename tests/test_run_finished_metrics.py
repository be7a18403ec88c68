"""`fewshot run --resume` reuses a finished stage's metrics.json as the run wrote it: a value it compares or prints
(mean_acc1) that is no number ended in an internal error, after the stages were reused."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers.checks import run_main
from test_run_resume import _cmd, _state

SHORT = ("--budget-minutes", "0.03")  # after BASE's 0.2, so it wins: the run's length is not the subject (suite time)


@pytest.fixture(scope="module")
def finished_run(digits_root, tmp_path_factory):
    """A finished default run (round 1, then round 2 = finetune), each test's copy then made a run stopped after
    its stages (both rounds trained: later_rounds_fit)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    rc, _, err = run_main(*_cmd(digits_root, out, *SHORT))
    assert rc == 0, err
    assert {"finetune_labelled", "finetune"} <= set(_state(out)["stages"]), _state(out)
    return out


def _reuse_stages_with(out, altered: str, text: str) -> None:
    """``out`` as a run stopped after its stages (both reused by --resume), ``altered`` holding ``text``."""
    state = _state(out)
    state["finished"] = False
    (out / "run_state.json").write_text(json.dumps(state))
    (out / "summary.json").unlink()
    (out / altered).write_text(text)


@pytest.mark.parametrize("value", ['"x"', "[1]", "true", '{"a": 1}'])
@pytest.mark.parametrize("altered", ["finetune_labelled/metrics.json", "finetune/metrics.json"])
def test_a_finished_stage_whose_mean_acc1_is_no_number_is_refused_by_name(digits_root, finished_run,
                                                                          tmp_path, altered, value):
    out = shutil.copytree(finished_run, tmp_path / "run")
    metrics = json.loads((out / altered).read_text())
    metrics["mean_acc1"] = json.loads(value)
    _reuse_stages_with(out, altered, json.dumps(metrics))
    rc, _, err = run_main(*_cmd(digits_root, out, *SHORT, "--resume"))
    assert rc == 2 and "Traceback" not in err and "internal error" not in err.lower(), err
    assert err.count(str(out / altered)) == 1 and "mean_acc1" in err and "restore it" in err, err


@pytest.mark.parametrize("value", ["null", "85.5", "85"])
def test_a_finished_stage_whose_mean_acc1_is_a_number_or_null_is_reused(digits_root, finished_run,
                                                                        tmp_path, value):
    out = shutil.copytree(finished_run, tmp_path / "run")
    altered = "finetune_labelled/metrics.json"
    metrics = json.loads((out / altered).read_text())
    metrics["mean_acc1"] = json.loads(value)
    _reuse_stages_with(out, altered, json.dumps(metrics))
    rc, _, err = run_main(*_cmd(digits_root, out, *SHORT, "--resume"))
    assert rc == 0, err
