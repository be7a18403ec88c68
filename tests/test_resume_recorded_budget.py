"""A run an older fewshot started with train.budget_minutes above MAX_BUDGET_MINUTES (RunState accepts its budget):
`fewshot train --resume` refused the run's own config.yaml through merge_resume_config. The cap is for new input
only; a recorded budget needs only finite seconds."""

from __future__ import annotations

import pytest
import yaml

import fewshot.config
from fewshot.config import resolve, validate
from fewshot.errors import UserError
from helpers.checks import run_main


def test_a_train_run_whose_config_records_2e7_minutes_resumes(digits_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    command = ["train", "--data", digits_root, "--out", run, "--model", "test_resnet", "--img-size", "32",
               "--batch-size", "16", "--device", "cpu", "--no-progress"]
    monkeypatch.setattr(fewshot.config.validation, "MAX_BUDGET_MINUTES", 1e300)  # as an older fewshot took it
    rc, _, err = run_main(*command, "--epochs", "1", "train.budget_minutes=2e7")
    assert rc == 0, err
    monkeypatch.undo()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["budget_minutes"] == 2e7
    rc, out, err = run_main(*command, "--epochs", "2", "--resume")
    assert rc == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["budget_minutes"] == 2e7
    assert len([line for line in (run / "log.jsonl").read_text().splitlines() if '"epoch"' in line]) >= 2


def test_new_input_keeps_the_cap_and_a_recorded_budget_needs_finite_seconds():
    with pytest.raises(UserError, match="up to 10,000,000"):
        resolve(overrides=["train.budget_minutes=2e7"])
    cfg = resolve()
    cfg["train"]["budget_minutes"] = 2e7
    assert validate(cfg, recorded=True)["train"]["budget_minutes"] == 2e7
    cfg["train"]["budget_minutes"] = 1e308  # inf seconds: a deadline that never comes
    with pytest.raises(UserError, match="seconds are finite, not 1e"):
        validate(cfg, recorded=True)


def test_a_budget_above_the_cap_edited_into_config_yaml_is_new_input(digits_root, tmp_path):
    """Every value of the run's config.yaml counted as recorded: a train.budget_minutes of 2e7 typed into it by hand
    resumed past the cap, though the resume takes such edits as the user's new input. Only the value last.pt
    records is the run's own."""
    from fewshot.config import save_yaml

    run = tmp_path / "run"
    command = ["train", "--data", digits_root, "--out", run, "--model", "test_resnet", "--img-size", "32",
               "--batch-size", "16", "--device", "cpu", "--no-progress"]
    rc, _, err = run_main(*command, "--epochs", "1")
    assert rc == 0, err
    settings = yaml.safe_load((run / "config.yaml").read_text())
    settings["train"]["budget_minutes"] = 2e7
    save_yaml(settings, run / "config.yaml")
    rc, _, err = run_main(*command, "--epochs", "2", "--resume")
    assert rc != 0 and "train.budget_minutes must be a positive number of minutes up to 10,000,000" in err, err
    assert "not 2e+07" in err or "not 20000000" in err, err
    settings["train"]["budget_minutes"] = 30.0  # an edit within the cap resumes, as before
    save_yaml(settings, run / "config.yaml")
    rc, _, err = run_main(*command, "--epochs", "2", "--resume")
    assert rc == 0, err
