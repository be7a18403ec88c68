"""Inputs of predict and eval that were refused or misjudged (bug hunt hBE): a per-image side file in test/
(0.json beside 0.png) stopped the whole layout, `fewshot run` called a one-class dataset near chance at 100 %, the
answer-key hint for "3" of 3 classes advised a value that is refused too, and `predict RUN/checkpoints` found no
checkpoint beside best.pt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewshot.data.layout import scan_root
from fewshot.errors import DataLayoutError, UserError
from fewshot.eval import balancing
from fewshot.eval.answer_keys import load_answer_key
from fewshot.run_words import near_chance_finding
from fewshot.train.checkpoint import CheckpointError, resolve_checkpoint

ALL_SPLITS = ("train", "val", "test")

# ----------------------------------------------------------------------------- side files in test/


def _problems(root: Path) -> list[str]:
    with pytest.raises(DataLayoutError) as info:
        scan_root(root, splits=ALL_SPLITS)
    return info.value.problems


def test_a_side_file_of_a_test_image_is_ignored_with_the_warning(copy_root, dataset_names, capfd):
    """0.json, 0.txt, 0.xml beside 0.png (per-image annotations): the id has its image, which is predicted."""
    test_dir = copy_root / dataset_names[0] / "test"
    before = scan_root(copy_root, [dataset_names[0]], splits=ALL_SPLITS)[0].test
    image_id, image = before[0]
    sides = [f"{image.stem}.json", f"{image.stem}.txt", f"{image.stem}.xml", f"00{image.stem}.json",
             f"{image.name}.json"]
    for name in sides:
        (test_dir / name).write_text("{}")
    capfd.readouterr()
    assert scan_root(copy_root, [dataset_names[0]], splits=ALL_SPLITS)[0].test == before
    err = capfd.readouterr().err
    assert f"ignoring {len(sides)} file(s) that are not images" in err and all(name in err for name in sides), err


def test_a_test_id_without_an_image_is_still_refused_beside_side_files(copy_root, dataset_names):
    """17.heic where no image has id 17: skipping it would leave a test image out of pred_all.json."""
    test_dir = copy_root / dataset_names[0] / "test"
    ids = {i for i, _ in scan_root(copy_root, [dataset_names[0]], splits=ALL_SPLITS)[0].test}
    free = next(str(n) for n in range(10_000, 20_000) if str(n) not in ids)
    image = sorted(test_dir.glob("*.png"))[0]
    (test_dir / f"{image.stem}.json").write_text("{}")
    (test_dir / f"{free}.heic").write_bytes(b"\0" * 16)
    problems = _problems(copy_root)
    assert len(problems) == 1, problems
    assert f"{test_dir / free}.heic: a test id in a file that is not an image" in problems[0]


@pytest.mark.parametrize("ext", [".heic", ".jpg.part", ""])
def test_an_image_like_file_beside_the_image_of_its_id_is_still_refused(copy_root, dataset_names, ext):
    """17.heic or 17.jpg.part beside 17.png: another copy of test image 17, which one is meant being unclear."""
    test_dir = copy_root / dataset_names[0] / "test"
    image = sorted(test_dir.glob("*.png"))[0]
    other = test_dir / f"0{image.stem}{ext}"
    other.write_bytes(b"\0" * 16)
    problems = _problems(copy_root)
    assert len(problems) == 1 and f"{other}: a test id in a file that is not an image" in problems[0], problems
    assert f"{image.name} has the same id" in problems[0]


def test_a_duplicate_test_id_is_still_refused_beside_a_side_file(copy_root, dataset_names):
    test_dir = copy_root / dataset_names[0] / "test"
    image = sorted(test_dir.glob("*.png"))[0]
    (test_dir / f"0{image.name}").write_bytes(image.read_bytes())
    (test_dir / f"{image.stem}.json").write_text("{}")
    problems = _problems(copy_root)
    assert len(problems) == 1 and "duplicate test id" in problems[0], problems


# ----------------------------------------------------------------------------- near chance


def test_a_one_class_dataset_is_never_near_chance():
    """Its chance is the 100 % it can only score: `fewshot run` told a perfect model it was guessing."""
    assert near_chance_finding(["only"], [0] * 5, 100.0, [0] * 7) is None
    assert near_chance_finding(["only"], [0] * 5, 100.0, [0] * 40) is None  # nor "collapsed" into its one class
    assert near_chance_finding(["a", "b"], [0, 1] * 3, 50.0, [0, 1] * 10) is not None  # two classes: judged


# ----------------------------------------------------------------------------- answer-key hints


@pytest.mark.parametrize("value", ["3", " 3 ", "0003", "7" * 5000])
def test_a_quoted_number_that_is_no_class_index_is_not_told_to_drop_its_quotes(tmp_path, value):
    """{"9004": "3"} for classes 0, 1, 2: "write the index without quotes (3)" was advice refused in turn."""
    key = tmp_path / "test_labels.json"
    key.write_text(json.dumps({"0": 1, "9004": value}))
    with pytest.raises(UserError) as info:
        load_answer_key(key, class_names=["0", "1", "2"])
    words = str(info.value)
    assert "without quotes" not in words, words
    assert "neither a class name nor a class index of the model's (0..2)" in words, words
    assert "not trained on" in words


def test_a_quoted_number_that_is_a_class_index_keeps_the_quotes_hint(tmp_path):
    key = tmp_path / "test_labels.json"
    key.write_text(json.dumps({"0": "2"}))
    with pytest.raises(UserError, match=r"write the index without quotes \(2\), or a name such as a, b, c\."):
        load_answer_key(key, class_names=["a", "b", "c"])


# ----------------------------------------------------------------------------- RUN/checkpoints


def _stage(folder: Path, *names: str) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    for name in names:
        (folder / "checkpoints" / name).write_bytes(b"x")
    return folder


@pytest.mark.parametrize("names", [("best.pt", "last.pt"), ("last.pt",), ("best.pt",)])
def test_a_runs_checkpoints_folder_resolves_as_the_run(tmp_path, names):
    run = _stage(tmp_path / "run", *names)
    for prefer in ("best", "last"):
        assert resolve_checkpoint(run / "checkpoints", prefer) == resolve_checkpoint(run, prefer)
    assert resolve_checkpoint(run / "checkpoints").name == ("best.pt" if "best.pt" in names else "last.pt")


def test_an_empty_checkpoints_folder_is_still_no_checkpoint(tmp_path):
    run = _stage(tmp_path / "run")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_checkpoint(run / "checkpoints")


def test_a_stages_checkpoints_folder_has_the_runs_recorded_balance(tmp_path):
    """`predict RUN/finetune/checkpoints` predicts with the stage's best.pt, so it balances as `predict RUN/finetune`
    (the run's recorded run.balance off), not with auto."""
    run = tmp_path / "run"
    _stage(run / "finetune", "best.pt")
    (run / "summary.json").write_text(json.dumps({"predicted_with": "finetune",
                                                  "balanced_prediction": {"setting": "off"}}))
    assert balancing.recorded_balance(run / "finetune" / "checkpoints") == "off"
    assert resolve_checkpoint(run / "finetune" / "checkpoints") == resolve_checkpoint(run)


def test_a_run_folder_named_checkpoints_is_not_a_runs_checkpoints(tmp_path):
    """A `fewshot run` folder named checkpoints (summary.json, stages) lost its recorded run.balance (review rev67,
    finding 4): only a checkpoints/ folder holding best.pt or last.pt stands for its run."""
    from fewshot.train.checkpoint import _a_runs_checkpoints

    folder = tmp_path / "checkpoints"
    (folder / "finetune" / "checkpoints").mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    assert not _a_runs_checkpoints(folder)
    (folder / "last.pt").write_bytes(b"")
    assert _a_runs_checkpoints(folder)
