"""Class balancing with uneven shots (hunt hBO, F1 and F3): auto's val check judges the proportions the test side
aims at, train proportions that val's class counts rule out are not aimed at, the printed line names uneven
proportions, and the near-chance warning reads the balanced val accuracy of a balanced dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fewshot.eval import balance as bal
from fewshot.eval import balancing
from helpers.checks import run_main, train_tiny

TRAIN_1_40 = torch.tensor([1.0, 40.0]) / 41  # hBO's 2020.v1: 1 shot of class 0 beside 40 of class 1


def _two_class_logits(p0: list[float]) -> torch.Tensor:
    """Logits whose softmax gives class 0 the probabilities ``p0`` (a model's outputs, copied to 3 digits)."""
    p = torch.tensor(p0).clamp(1e-4, 1 - 1e-4)
    return torch.stack([p.log(), (1 - p).log()], 1)


# hBO's r2 model on its 2020.v1 copy (R6): val 10 and 10 (90 % right), test cut to 2 of class 0 and 10 of class 1
R6_VAL = _two_class_logits([0.277, 0.788, 0.674, 0.987, 0.476, 0.994, 0.968, 0.876, 0.991, 0.953,
                            0.002, 0.002, 0.001, 0.002, 0.0, 0.002, 0.001, 0.001, 0.0, 0.001])
R6_TEST = _two_class_logits([0.864, 0.532, 0.0, 0.003, 0.0, 0.0, 0.001, 0.018, 0.001, 0.001, 0.003, 0.001])
# hBO's 2-epoch t1 model: every val and test image put in class 1, test 10 and 10
T1_VAL = _two_class_logits([0.328, 0.316, 0.364, 0.227, 0.313, 0.284, 0.355, 0.309, 0.255, 0.363,
                            0.119, 0.111, 0.114, 0.161, 0.194, 0.099, 0.086, 0.107, 0.192, 0.131])
T1_TEST = _two_class_logits([0.348, 0.357, 0.297, 0.303, 0.233, 0.325, 0.303, 0.354, 0.297, 0.302,
                             0.11, 0.117, 0.17, 0.199, 0.139, 0.119, 0.146, 0.095, 0.12, 0.117])
EVEN_VAL_TARGETS = torch.arange(2).repeat_interleave(10)


def test_the_val_check_judges_the_proportions_it_is_given():
    """hBO F1: auto said "val 90.0 -> 100.0" for offsets fitted towards val's own 10:10 and then aimed the test
    side at 1:40, which took the test split from 100 % to 83 %. Towards 1:40, val refuses them."""
    towards_own = bal.val_decision(R6_VAL, EVEN_VAL_TARGETS)
    assert towards_own == {"val_plain": 90.0, "val_balanced": 100.0, "used": True}
    towards_train = bal.val_decision(R6_VAL, EVEN_VAL_TARGETS, TRAIN_1_40)
    assert towards_train["val_plain"] == 90.0 and towards_train["val_balanced"] < 90.0
    assert towards_train["used"] is False


def test_val_counts_that_contradict_the_train_proportions_are_told_apart():
    assert bal.fits_counts(EVEN_VAL_TARGETS, TRAIN_1_40) < 1e-6
    assert bal.fits_counts(EVEN_VAL_TARGETS, torch.tensor([0.5, 0.5])) == pytest.approx(1.0)
    proportional = torch.cat([torch.zeros(10, dtype=torch.long), torch.ones(400, dtype=torch.long)])
    assert bal.fits_counts(proportional, TRAIN_1_40) > bal.SKEW_P
    # 9 shots beside 10, val 10 and 10: a difference val cannot tell from chance keeps the train proportions
    assert bal.fits_counts(EVEN_VAL_TARGETS, torch.tensor([9.0, 10.0]) / 19) > bal.SKEW_P


def test_a_train_prior_val_rules_out_is_not_aimed_at_and_the_val_check_follows_the_aim():
    """hBO F1, the 2-epoch model: 1:40 was aimed at (a tie of the two references goes to train), every test image
    stayed class 1 (50 %) while val said "50.0 -> 100.0". Val's 10:10 rules 1:40 out: even it is, on both sides."""
    prior, words, val_aim = balancing._aim(TRAIN_1_40, (T1_VAL, EVEN_VAL_TARGETS), T1_TEST, from_train=True)
    assert torch.allclose(prior, torch.tensor([0.5, 0.5]))
    assert words.startswith("even: val's even counts rule out the train split's 1:40 (p=")
    assert val_aim is None  # val's own proportions: the even ones aimed at
    test_targets = torch.arange(2).repeat_interleave(10)
    assert bal.hits(T1_TEST + bal.class_offsets(T1_TEST, prior), test_targets) == 20  # plain: 10
    assert bal.val_decision(T1_VAL, EVEN_VAL_TARGETS, val_aim) == {"val_plain": 50.0, "val_balanced": 100.0,
                                                                  "used": True}


def test_train_proportions_val_agrees_with_stay_and_the_val_check_aims_at_them():
    g = torch.Generator().manual_seed(0)
    train = torch.tensor([1.0, 4.0]) / 5
    val_targets = torch.cat([torch.zeros(20, dtype=torch.long), torch.ones(80, dtype=torch.long)])
    val = torch.nn.functional.one_hot(val_targets, 2).float() * 2 + torch.randn(100, 2, generator=g)
    test_targets = torch.cat([torch.zeros(40, dtype=torch.long), torch.ones(160, dtype=torch.long)])
    test = torch.nn.functional.one_hot(test_targets, 2).float() * 2 + torch.randn(200, 2, generator=g)
    prior, words, val_aim = balancing._aim(train, (val, val_targets), test, from_train=True)
    assert words == "train" and torch.equal(prior, train)
    assert val_aim is None  # val's own proportions are the train split's: the check as it always was
    # val 20:81 against train 1:4: the same proportions within a class count, but not exactly them
    val_targets = torch.cat([val_targets, torch.ones(1, dtype=torch.long)])
    val = torch.cat([val, val[-1:]])
    _, words, val_aim = balancing._aim(train, (val, val_targets), test, from_train=True)
    assert words == "train" and torch.equal(val_aim, train)


def test_an_uneven_prior_of_no_train_images_that_val_rules_out_names_even_proportions():
    g = torch.Generator().manual_seed(0)
    val_targets = torch.cat([torch.zeros(10, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    val = torch.nn.functional.one_hot(val_targets, 2).float() * 3 + torch.randn(50, 2, generator=g)
    prior, words, _ = balancing._aim(torch.tensor([0.5, 0.5]), (val, val_targets), val, from_train=False)
    assert words.startswith("val 1:4: val's 1:4 counts rule out even (p=") and "train" not in words
    assert torch.allclose(prior, torch.tensor([0.2, 0.8]))


def test_even_shots_keep_todays_plan():
    """The demo data: even shots, even val; the prior and the val decision are those of the version before."""
    g = torch.Generator().manual_seed(3)
    val_targets = torch.arange(10).repeat_interleave(20)
    leaning = torch.zeros(10)
    leaning[:3] = 0.8  # a model that leans to three classes
    val = torch.nn.functional.one_hot(val_targets, 10).float() * 1.5 + leaning + torch.randn(200, 10, generator=g)
    aimed = []
    for test_targets in (torch.arange(10).repeat_interleave(30), torch.arange(3).repeat_interleave(100)):
        test = torch.nn.functional.one_hot(test_targets, 10).float() * 1.5 + leaning + \
            torch.randn(len(test_targets), 10, generator=g)
        train = bal.train_prior(torch.arange(10).repeat_interleave(10), 10)
        before = balancing._test_prior(train, (val, val_targets), test)
        prior, words, val_aim = balancing._aim(train, (val, val_targets), test, from_train=True)
        assert torch.equal(prior, before[0]) and words == before[1]
        assert bal.val_decision(val, val_targets, val_aim) == bal.val_decision(val, val_targets)
        aimed.append(words.split(" ")[0])
    assert aimed == ["train", "estimated"]  # an even test split and a skewed one


def _line(plan: dict, capsys) -> str:
    balancing.say_balance(plan, "auto", who="eval")
    return capsys.readouterr().out


def test_the_printed_line_names_uneven_train_proportions_and_the_aim_of_a_declined_check(capsys):
    used = {"used": True, "prior_from": "train", "prior": [0.0244, 0.9756], "val_plain": 90.0, "val_balanced": 95.0}
    assert "a (val 90.0 -> 95.0) [prior train 1:40]" in _line({"a": used}, capsys)
    declined = {**used, "val_balanced": 50.0, "used": False}
    assert "a not (val 90.0 -> 50.0) [prior train 1:40]" in _line({"a": declined}, capsys)
    many = {**used, "prior": [0.1] * 8 + [0.05, 0.15]}
    assert "[prior train up to 1:3]" in _line({"a": many}, capsys)
    even = {**used, "prior": [0.5, 0.5]}
    assert "[prior" not in _line({"a": even}, capsys)  # the default says nothing, as before
    assert balancing.proportions([0.4, 0.1, 0.4, 0.1]) == "4:1:4:1"


def _pipeline(summary: dict) -> SimpleNamespace:
    summary.setdefault("stages", {})["finetune"] = {"epochs": 60.0}
    return SimpleNamespace(summary=summary, fdir=Path("RUN") / "finetune", cfg={"model": {"weights": None}})


def _two_class_info():
    return SimpleNamespace(classes=("zero", "one"), val=tuple((Path(f"{c}_{i}.png"), c) for c in (0, 1)
                                                              for i in range(10)))


def test_the_near_chance_warning_judges_a_balanced_dataset_on_its_balanced_val(capsys):
    """hBO F3: 2020.v1 balanced with "val 60.0 -> 100.0" (test 100) was called little better than guessing on its
    plain val 60.00."""
    from fewshot.pipeline import PipelineRun

    pred = {"n_parameters": 5, "2020.v1": {str(i): i % 2 for i in range(20)}}
    val = {"datasets": {"2020.v1": {"acc1": 60.0, "n": 20}}}
    plan = {"used": True, "prior_from": "train", "prior": [0.5, 0.5], "val_plain": 60.0, "val_balanced": 100.0}
    run = _pipeline({"balanced_prediction": {"setting": "auto", "datasets": {"2020.v1": plan}}})
    PipelineRun.note_near_chance(run, pred, val, {"2020.v1": _two_class_info()})
    assert "near_chance" not in run.summary
    # balanced and still near chance: judged and said on the balanced val accuracy
    run = _pipeline({"balanced_prediction": {"setting": "auto", "datasets": {"2020.v1": {**plan,
                                                                                       "val_balanced": 55.0}}}})
    PipelineRun.note_near_chance(run, pred, val, {"2020.v1": _two_class_info()})
    assert "2020.v1: class-balanced val acc@1 55.00, not clearly above" in run.summary["near_chance"]["why"]
    # declined: the plain predictions were written, and the plain val accuracy judges them
    run = _pipeline({"balanced_prediction": {"setting": "auto", "datasets": {"2020.v1": {**plan, "used": False}}}})
    PipelineRun.note_near_chance(run, pred, val, {"2020.v1": _two_class_info()})
    assert "2020.v1: val acc@1 60.00, not clearly above" in run.summary["near_chance"]["why"]


def _fill(folders, n: int) -> None:
    """Each class folder filled up to ``n`` images with copies of its own (other names)."""
    for folder in folders:
        images = sorted(folder.iterdir())
        for i in range(n - len(images)):
            shutil.copy(images[i % len(images)], folder / f"copy{i}{images[i % len(images)].suffix}")


def _classes(root: Path, name: str, split: str) -> list[Path]:
    return sorted(p for p in (root / name / split).iterdir() if p.is_dir())


def _uneven_shots(root: Path, name: str, shots: int = 40) -> None:
    """Dataset ``name`` of ``root`` with 1 train image of its first class and ``shots`` (copies) of each other."""
    first, *others = _classes(root, name, "train")
    for image in sorted(first.iterdir())[1:]:
        image.unlink()
    _fill(others, shots)


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory) -> Path:
    return train_tiny(digits_root, tmp_path_factory.mktemp("fef") / "run", epochs=1)


def test_eval_with_uneven_shots_aims_where_val_allows_and_an_even_root_keeps_its_plan(trained, digits_root,
                                                                                    copy_root, tmp_path,
                                                                                    monkeypatch):
    """Through `fewshot eval --balance auto`: 1 shot beside 40 with val 10 of each, the line says that val rules
    the 1:40 out; a root with even shots (val 10 of each) gets the plan of the version before."""
    from helpers.tiny import copy_data_root

    name = sorted(p.name for p in copy_root.iterdir() if (p / "train").is_dir())[0]
    even_root = copy_data_root(digits_root, tmp_path / "even")
    _uneven_shots(copy_root, name)
    for root in (copy_root, even_root):
        _fill(_classes(root, name, "val"), 10)
    rc, stdout, err = run_main("eval", trained, "--data", copy_root, "--datasets", name, "--split", "test",
                               "--balance", "auto", "--device", "cpu")
    assert rc == 0, err
    line = next(s for s in stdout.splitlines() if "class-balanced test predictions" in s)
    assert "val's even counts rule out the train split's up to 1:40 (p=" in line, line
    plans = []
    real = balancing.balance_plan

    def kept(*args, **kwargs):
        plan = real(*args, **kwargs)
        plans.append(balancing.public(plan))
        return plan

    monkeypatch.setattr("fewshot.eval.predict.balance_plan", kept)
    for before in (False, True):
        if before:  # the version before: the test side's choice, and a val check towards val's own proportions
            monkeypatch.setattr(balancing, "_aim", lambda *a, **k: (*balancing._test_prior(*a, **k), None))
        rc, _, err = run_main("eval", trained, "--data", even_root, "--datasets", name, "--split", "test",
                              "--balance", "auto", "--device", "cpu")
        assert rc == 0, err
    assert len(plans) == 2 and plans[0] == plans[1] and "val_plain" in plans[0][name], plans
    json.dumps(plans)  # summary.json's form
