"""Class-balanced prediction with uneven shots (review rev83 of fEO's rule): val's own proportions are no reference
of the test split's, the re-weighted val check runs wherever val's shares differ from the aim (a tie keeps the
offsets), and the words name the proportions val was re-weighted to."""

import pytest
import torch
from torch.nn.functional import one_hot

from fewshot.eval import balance as bal
from fewshot.eval import balancing as B
from fewshot.report.pipeline_runs import balance_words

TRAIN = torch.tensor([0.2, 0.8])


def _draw(val_counts, test_counts, seed):
    """A weak 2-class model leaning to class 1 (review rev83's e.py): val and test logits with their answers."""
    g = torch.Generator().manual_seed(seed)

    def logits(t):
        return one_hot(t, 2).float() + torch.tensor([0.0, 0.6]) + torch.randn(len(t), 2, generator=g)
    vt = torch.arange(2).repeat_interleave(torch.tensor(val_counts))
    tt = torch.arange(2).repeat_interleave(torch.tensor(test_counts))
    return (logits(vt), vt), logits(tt), tt


@pytest.mark.parametrize("seed", [34, 75])
def test_a_test_split_in_the_train_proportions_is_aimed_at_them_not_at_vals(seed):
    """10:40 shots, val 12:20, a test split drawn 40:160: val's 0.375:0.625 fitted the test predictions best and
    auto evened them out to it, 9 and 14 images worse than plain; aimed at the train split's, with the re-weighted
    check, auto does not lose."""
    val, test, answers = _draw([12, 20], [40, 160], seed)
    prior, source = B._test_prior(TRAIN, val, test)
    assert source == "train" and torch.equal(prior, TRAIN)
    plan = B.aimed_plan(TRAIN, "train", val, test, "auto")
    assert plan["val_weighted_to"] == [0.2, 0.8]
    shown = test + plan["_offsets"] if plan["used"] else test
    assert bal.hits(shown, answers) >= bal.hits(test, answers)
    shares = torch.tensor([0.375, 0.625])
    assert bal.hits(test + bal.class_offsets(test, shares), answers) < bal.hits(test, answers)  # val's aim lost


def test_a_tie_on_the_reweighted_val_keeps_the_offsets():
    """Val re-weighted to 0.2:0.8 scores 91.67 with and without the offsets: a tie keeps them, as on val as it is,
    and they gain 5 test images."""
    val, test, answers = _draw([12, 20], [40, 160], 42)
    plan = B.aimed_plan(TRAIN, "train", val, test, "auto")
    assert plan["val_weighted_plain"] == plan["val_weighted_balanced"] == 91.67
    assert plan["used"] is True
    assert bal.hits(test + plan["_offsets"], answers) == bal.hits(test, answers) + 5


def test_val_reweighted_whenever_its_shares_differ_from_the_aim():
    """Val 20:20 against an aim of 0.45:0.55 passes a chi-square fit (p=0.53), so val was not re-weighted and auto
    said yes on a tie; re-weighted, val loses with the offsets (76.75 -> 72.25)."""
    val, _, _ = _draw([20, 20], [1, 1], 9)
    assert bal.val_decision(*val)["used"]
    d = bal.val_decision(*val, aim=torch.tensor([0.45, 0.55]))
    assert d["val_weighted_to"] == [0.45, 0.55] and d["used"] is False
    assert (d["val_weighted_plain"], d["val_weighted_balanced"]) == (76.75, 72.25)
    assert "val_weighted_to" not in bal.val_decision(*val, aim=torch.tensor([0.5, 0.5]))


def test_the_words_name_the_proportions_val_was_reweighted_to():
    weighted = {"val_plain": 82.5, "val_balanced": 85.0, "val_weighted_to": [0.5, 0.5], "val_weighted_plain": 90.0,
                "val_weighted_balanced": 89.0, "used": False}
    assert B._weighted({**weighted, "prior_from": "train"}) == "; re-weighted to the train split's proportions " \
                                                               "90.0 -> 89.0"
    even = "even: the test predictions fit even proportions (p=0.5) better than the train split's (p=0.01)"
    assert B._weighted({**weighted, "prior_from": even}) == "; re-weighted to even proportions 90.0 -> 89.0"
    said = balance_words({"fm": {**weighted, "prior_from": even, "used": True}})
    assert said == f"class-balanced for fm (val 82.5 plain, 85.0 balanced; aimed at proportions {even}; val " \
                   f"re-weighted to them 90.0 plain, 89.0 balanced)"
    said = balance_words({"fm": {**weighted, "prior_from": "train"}})
    assert said == "plain argmax for fm (val 82.5 plain, 85.0 balanced; val re-weighted to the train split's " \
                   "proportions 90.0 plain, 89.0 balanced)"
