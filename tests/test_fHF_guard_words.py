"""The val guard's note for a clean pool (review rev120 #5, #7): it claims only what the pool check measures (the
pool looks like val; the labels are bounded by the best earlier round's val), names the round's own lr rather than
"round 1's full lr", says a restart at an lr already gentle does not undo the round before, and gives budget advice
only to a round that was short."""

from fewshot.run_guard import round_loss_note
from test_fHA_guard_clean_pool import _labels, _val


def _why(entry: dict) -> str:
    return round_loss_note("round 2", _val(54.0), _val(45.6), _labels(), entry)["why"]


def test_the_note_claims_what_the_pool_check_measures():
    why = _why({"epochs": 3.57, "seconds": 20.3, "lr": 0.004})
    assert "so the pool is not the likely cause" in why and "pseudo-labels are not the likely cause" not in why, why
    assert "scored at most 54.0 on val" in why and "The more likely cause is its training: " in why, why
    assert "at lr 0.004, with a new lr schedule, and trained for 3.57 epochs (20 s), which can undo" in why, why
    assert "full lr" not in why and "larger --budget-minutes" in why, why


def test_a_long_round_at_a_gentle_lr_gets_no_budget_advice_nor_undo_words():
    why = _why({"epochs": 30, "seconds": 200.0, "lr": 1e-4})
    assert "at lr 0.0001, with a new lr schedule, and trained for 30 epochs (200 s)." in why, why
    assert "can undo" not in why and "--budget-minutes" not in why and "--baseline" in why, why
