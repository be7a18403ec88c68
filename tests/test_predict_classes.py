"""`predict` and `eval --split test` on a root whose dataset has train class folders other than the model's: the
test split has no labels, so predict wrote indices into the model's class list (exit 0) and eval scored 0 % without
a word, where `eval` on the val split refused. They now refuse alike (exit 2); the training root, and a root that
holds only test images (no train/ to compare), still work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fewshot.errors import UserError
from fewshot.eval.predict import _data_for, load_trained
from helpers.checks import run_main
from helpers.tiny import build_digits, tiny_train_argv

MODEL_CLASSES = {"0": "Zero", "1": "one"}  # sorted: the model's index 0 is Zero, 1 is one
OTHER_CLASSES = {"0": "zero", "1": "one"}  # sorted: one, zero - the same images under indices swapped


def _bin_root(digits: Path, root: Path, names: dict[str, str], splits=("train", "val")) -> Path:
    """ROOT/bin: digits' classes 0 and 1 under ``names``, its test images of those classes, and an answer key
    that indexes them in the root's own sorted folders (as `fewshot data` writes one)."""
    src, ds = digits / "digits", root / "bin"
    for split in splits:
        for digit, name in names.items():
            shutil.copytree(src / split / digit, ds / split / name)
    order = sorted(names.values())
    key = json.loads((src / "test_labels.json").read_text())
    (ds / "test").mkdir(parents=True)
    kept = {}
    for image_id, label in key.items():
        if str(label) in names:
            shutil.copy(src / "test" / f"{image_id}.png", ds / "test" / f"{image_id}.png")
            kept[image_id] = order.index(names[str(label)])
    (ds / "test_labels.json").write_text(json.dumps(kept))
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict-classes")
    digits = build_digits(base / "digits", shots=2)
    trained = _bin_root(digits, base / "trained", MODEL_CLASSES)
    other = _bin_root(digits, base / "other", OTHER_CLASSES)
    test_only = _bin_root(digits, base / "test-only", OTHER_CLASSES, splits=())
    rc, _, err = run_main(*tiny_train_argv(trained, base / "run"))
    assert rc == 0, err
    return {"run": base / "run", "trained": trained, "other": other, "test_only": test_only}


def _refusal(err: str, root: Path) -> None:
    assert f"the classes of {root / 'bin' / 'train'} differ from those the model was trained on: zero not among " \
           f"the model's 2 classes" in err, err
    assert "rename them to the model's (Zero, one)" in err, err


def test_predict_refuses_a_root_whose_train_class_folders_are_not_the_models(roots, tmp_path):
    out = tmp_path / "p.json"
    rc, _, err = run_main("predict", roots["run"], "--data", roots["other"], "--out", out, "--device", "cpu",
                          "--no-progress")
    assert rc == 2, err
    _refusal(err, roots["other"])
    assert not out.exists()


def test_eval_on_test_refuses_it_as_eval_on_val_does(roots):
    for split in ("val", "test"):
        rc, out, err = run_main("eval", roots["run"], "--data", roots["other"], "--split", split, "--device", "cpu",
                                "--no-progress")
        assert rc == 2 and "0.00" not in out, (split, out, err)
        assert "differ from those the model was trained on: zero not among the model's 2 classes" in err, err
    _refusal(err, roots["other"])


def test_the_check_holds_for_every_caller_of_the_test_split(roots):
    """_data_for is what predict, eval and the --datasets hint read the test split through."""
    import torch

    tm = load_trained(roots["run"], torch.device("cpu"))
    with pytest.raises(UserError, match="zero not among the model's 2 classes"):
        _data_for(tm, roots["other"], "test")


def test_the_training_root_is_predicted_and_scored(roots, tmp_path):
    out = tmp_path / "p.json"
    rc, _, err = run_main("predict", roots["run"], "--data", roots["trained"], "--out", out, "--device", "cpu",
                          "--no-progress")
    assert rc == 0 and "differ" not in err, err
    assert set(json.loads(out.read_text())["bin"].values()) <= {0, 1}
    rc, _, err = run_main("eval", roots["run"], "--data", roots["trained"], "--split", "test", "--device", "cpu",
                          "--no-progress")
    assert rc == 0 and "differ" not in err, err


def test_a_root_of_test_images_only_has_nothing_to_compare(roots, tmp_path):
    out = tmp_path / "p.json"
    rc, _, err = run_main("predict", roots["run"], "--data", roots["test_only"], "--out", out, "--device", "cpu",
                          "--no-progress")
    assert rc == 0 and "differ" not in err, err
    assert len(json.loads(out.read_text())["bin"]) == len(list((roots["test_only"] / "bin" / "test").iterdir()))
    rc, _, err = run_main("eval", roots["run"], "--data", roots["test_only"], "--split", "test", "--device", "cpu",
                          "--no-progress")
    assert rc == 0 and "differ" not in err, err
