"""`fewshot run`'s last warning on a model at chance: a 1-minute resnet18 run scored 20.00 on val for a 5-class
dataset (chance) and put all 170 of its test images in class 0, and 176 of 200 of a 10-class dataset's in class 0,
then said "done" and exited 0; the user found out from the grader. The run still exits 0 (its files are valid), and
says nothing of a dataset it has no val score for."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fewshot.pipeline import PipelineRun
from fewshot.run_words import chance_level, collapsed_class, near_chance_finding
from helpers.checks import run_main

GRADIENT = np.tile((np.arange(32, dtype=np.uint8) * 8)[None, :, None], (32, 1, 3))  # not blank, the same everywhere


def _dataset(root: Path, name: str, classes: int, test_per_class: int = 3) -> None:
    """ROOT/name with every image the same picture: no model can tell its classes apart, so whatever it learns it
    scores exactly chance on an even val split and puts every test image in one class."""
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / name / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(4 if split == "train" else 2):
                Image.fromarray(GRADIENT).save(folder / f"{i}.png")
    (root / name / "test").mkdir()
    key = {}
    for i in range(classes * test_per_class):
        Image.fromarray(GRADIENT).save(root / name / "test" / f"{i}.png")
        key[str(i)] = i % classes
    (root / name / "test_labels.json").write_text(json.dumps(key))


@pytest.fixture(scope="module")
def chance_run(tmp_path_factory):
    """One tiny run on a root of identical images: `same`, 5 classes."""
    root = tmp_path_factory.mktemp("chance") / "root"
    _dataset(root, "same", 5)
    out = root.parent / "run"
    rc, stdout, err = run_main("run", "--data", root, "--out", out, "--budget-minutes", "0.03", "--model",
                               "test_resnet", "--img-size", "16", "--device", "cpu", "--no-progress",
                               "run.report=false", "run.semi_method=off", "train.batch_size=16")
    return rc, stdout, err, out


def test_a_run_at_chance_warns_last_and_records_it_but_still_exits_0(chance_run):
    rc, out, err, run = chance_run
    assert rc == 0, err
    lines = out.splitlines()
    warned = [i for i, line in enumerate(lines) if "little better than guessing" in line]
    assert len(warned) == 1, out
    line = lines[warned[0]]
    assert line.startswith("[run] warning: the model that predicts (finetune)") and lines[warned[0] + 1].startswith(
        "[run] done in"), out
    assert "same: val acc@1 20.00, not clearly above its chance of 20.00 (5 classes)" in line, line
    assert "15 of its 15 test images put in class" in line and "which holds 20 % of val" in line, line
    assert "pred_all.json is complete and valid" in line, line
    summary = json.loads((run / "summary.json").read_text())
    # the advice follows the epochs the stage trained, which a quiet machine makes 50 or more in 0.03 minutes
    if summary["stages"]["finetune"]["epochs"] < 50:
        # a test_resnet at 16 px: no model is named as smaller (cpu_tiny, resnet18 at 32 px, is 30 times its size)
        assert "--budget-minutes" in line and "cpu_tiny" not in line and "model.width" not in line, line
    else:
        assert "more time alone may not help" in line and "more labelled images" in line, line
    found = summary["near_chance"]["datasets"]
    assert list(found) == ["same"], found
    assert found["same"]["val_near_chance"] is True and found["same"]["chance_acc1"] == 20.0
    assert found["same"]["test_collapsed"]["images"] == found["same"]["test_collapsed"]["of"] == 15
    assert summary["near_chance"]["why"] in line
    pred = json.loads((run / "pred_all.json").read_text())
    assert len(set(pred["same"].values())) == 1 and len(pred["same"]) == 15  # the file is whole


def test_the_rule_keeps_a_healthy_two_class_model_and_names_the_reported_ones():
    assert chance_level(2, [0.5, 0.5]) == (50.0, 62.5)  # 1.5 x 50 % would call 70 % guessing
    assert chance_level(5, [0.2] * 5) == (20.0, 30.0) and chance_level(10, [0.1] * 10) == (10.0, 15.0)
    assert chance_level(2, [0.9, 0.1])[0] == 90.0  # always answering val's common class scores that
    even2 = [0, 1] * 10
    assert near_chance_finding(["a", "b"], even2, 70.0, [0] * 12 + [1] * 8) is None
    assert near_chance_finding(["a", "b"], even2, 62.5, [0] * 10 + [1] * 10)["val_near_chance"] is True
    ziffern = near_chance_finding(list("abcde"), list(range(5)) * 4, 20.0, [0] * 170)
    assert ziffern["val_near_chance"] and ziffern["test_collapsed"] == {"class": 0, "name": "a", "images": 170,
                                                                        "of": 170, "val_share": 20.0}
    fash10 = near_chance_finding(list("abcdefghij"), list(range(10)) * 8, 21.25, [0] * 176 + list(range(1, 9)) * 3)
    assert fash10["val_near_chance"] is False and fash10["test_collapsed"]["images"] == 176
    assert near_chance_finding(list("abcdefghij"), list(range(10)) * 8, 21.25, list(range(10)) * 20) is None
    assert near_chance_finding(list("abc"), [], 10.0, [0] * 30) is None  # no val: no judgement


def test_one_class_is_a_collapse_only_where_val_says_it_is_not_that_common():
    assert collapsed_class([0] * 9, [0.1] * 10) is None  # too few test images to say
    assert collapsed_class([0] * 19 + [1], [0.5, 0.5]) is None  # 95 % of a 2-class test split, val 50 %
    assert collapsed_class([0] * 20, [0.5, 0.5]) == (0, 20)
    assert collapsed_class([3] * 9 + [1], [0.9 if c == 3 else 0.025 for c in range(5)]) is None  # val agrees


def _pipeline(summary: dict, epochs: float = 60.0) -> SimpleNamespace:
    summary.setdefault("stages", {})["finetune"] = {"epochs": epochs}
    return SimpleNamespace(summary=summary, fdir=Path("RUN") / "finetune", cfg={"model": {"weights": None}})


def _info(classes: int, val_per_class: int = 10):
    return SimpleNamespace(classes=tuple(f"c{c}" for c in range(classes)),
                           val=tuple((Path(f"{c}_{i}.png"), c) for c in range(classes) for i in range(val_per_class)))


def test_a_healthy_model_says_nothing_and_drops_a_resumed_sessions_record(capsys):
    """70 % on 2 classes, 60 % on 10: no record, and the one an earlier session of a resumed run kept is gone."""
    run = _pipeline({"near_chance": {"datasets": {"a": {}}, "why": "stale"}})
    pred = {"n_parameters": 5, "two": {str(i): i % 2 for i in range(40)}, "ten": {str(i): i % 10 for i in range(50)}}
    val = {"datasets": {"two": {"acc1": 70.0, "n": 20}, "ten": {"acc1": 60.0, "n": 100}}}
    PipelineRun.note_near_chance(run, pred, val, {"two": _info(2), "ten": _info(10)})
    assert "near_chance" not in run.summary
    assert capsys.readouterr().out == ""


def test_the_advice_follows_how_long_the_predicting_stage_trained():
    pred = {"n_parameters": 5, "ten": {str(i): 0 for i in range(50)}}
    val = {"datasets": {"ten": {"acc1": 10.0, "n": 100}}, "not_scored": []}
    short, long = _pipeline({}, epochs=13.0), _pipeline({}, epochs=80.0)
    for run in (short, long):
        PipelineRun.note_near_chance(run, pred, val, {"ten": _info(10), "other": _info(3)})
        assert list(run.summary["near_chance"]["datasets"]) == ["ten"]  # other: no val score, no pred: not named
    assert "It trained 13.0 epochs in this budget: a larger --budget-minutes" in short.summary["near_chance"]["why"]
    assert "It trained 80 epochs, so more time alone may not help: more labelled images per class" in \
        long.summary["near_chance"]["why"]


def test_the_report_of_a_run_at_chance_carries_its_warning(chance_run, tmp_path):
    """The HTML report is what a user opens later: it shows summary.json's near_chance next to the run's tables."""
    import html

    rc, _, err, run = chance_run
    assert rc == 0, err
    rc, _, err = run_main("report", run, "--out", tmp_path / "report", "--no-progress")
    assert rc == 0, err
    page = html.unescape((tmp_path / "report" / "index.html").read_text(encoding="utf-8"))
    why = json.loads((run / "summary.json").read_text())["near_chance"]["why"]
    assert f"warning: {why}" in page
    assert page.count("little better than guessing") == 1, "once per run folder, not once per stage"


def test_a_val_split_that_lacks_classes_is_not_judged():
    """Review rev46: a val split of one class made "chance" 100 %, and a perfect model was told it guessed; a 10-class
    dataset whose val held 2 classes was judged against a chance of 50 %."""
    assert near_chance_finding(["c0", "c1"], [0] * 6, 100.0, [0, 1] * 10) is None
    assert near_chance_finding([f"c{k}" for k in range(10)], [0, 1] * 5, 60.0, list(range(10)) * 3) is None
    assert near_chance_finding(["c0", "c1"], [0, 1] * 3, 50.0, [0, 1] * 10) is not None  # every class: judged
