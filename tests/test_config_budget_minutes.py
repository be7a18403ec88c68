"""train.budget_minutes=1e308 (and .inf from a YAML file) meant no time limit without a word, where `fewshot run
--budget-minutes` refuses more than MAX_BUDGET_MINUTES: 1e308 minutes are inf seconds, a deadline that never comes.
Both are refused alike, naming the key; null is the way to say no time limit."""

from __future__ import annotations

import pytest

from fewshot.config import MAX_BUDGET_MINUTES, resolve
from fewshot.errors import UserError
from helpers.checks import run_main


@pytest.mark.parametrize("word", ["1e308", "inf", "nan", "-inf", "1.00001e7"])
def test_a_budget_that_is_not_finite_or_beyond_any_run_is_refused(word):
    with pytest.raises(UserError) as caught:
        resolve(overrides=[f"train.budget_minutes={word}"])
    text = str(caught.value)
    assert text.startswith("train.budget_minutes must be a positive number of minutes up to 10,000,000 (about 19 "
                           "years)"), text  # not 1e+07
    assert "unset (null) for no time limit" in text


def test_a_config_files_inf_budget_is_refused_and_the_limit_is_the_runs(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  budget_minutes: .inf\n")
    with pytest.raises(UserError, match="train.budget_minutes must be a positive number of minutes"):
        resolve(file=f)
    assert resolve(overrides=[f"train.budget_minutes={MAX_BUDGET_MINUTES:g}"])["train"]["budget_minutes"] == 1e7
    assert resolve(overrides=["train.budget_minutes=null"])["train"]["budget_minutes"] is None


def test_fewshot_train_refuses_it_before_it_starts(digits_root, tmp_path):
    out = tmp_path / "r"
    rc, _, err = run_main("train", "--data", digits_root, "--out", out, "--model", "test_resnet", "--img-size", "16",
                          "--device", "cpu", "train.budget_minutes=1e308")
    assert rc == 2 and "train.budget_minutes must be a positive number of minutes" in err, err
    assert not (out / "checkpoints").exists()
