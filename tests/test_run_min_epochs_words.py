"""run.min_epochs is the lowest epoch cap a `fewshot run` stage plans, not a promise (run_budget.plan_epochs; the
stage's planning warns where it asks for more than fit): the warning for a `train.epochs=N` word called it "the
fewest epochs a stage gets", which a user read as epochs the budget would make room for."""

from __future__ import annotations

from fewshot.cli_warnings import warn_replaced_overrides


def test_the_train_epochs_warning_calls_min_epochs_a_cap_not_a_promise(capsys):
    warn_replaced_overrides(["train.epochs=30"])
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: train.epochs=30 is replaced by the run's plan" in err
    assert "run.min_epochs, the lowest epoch cap a stage plans, not a promise of epochs" in err
    assert "the budget ends a stage first" in err and "fewest epochs" not in err
