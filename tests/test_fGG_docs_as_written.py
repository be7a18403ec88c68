"""Hunt hBY: the help says both lr recipes of --weights (#1); predict and eval decide on undecodable test images by
their own --skip-bad-images, not by the training run's data.skip_bad_images (#2)."""

from __future__ import annotations

import json

import pytest

from fewshot.cli_parser import build_parser
from helpers.checks import run_main
from helpers.tiny import build_digits, copy_data_root, tiny_train_argv


def _help(command: str) -> str:
    return " ".join(build_parser()._subparsers._group_actions[0].choices[command].format_help().split())


def test_train_help_names_both_lr_recipes_of_weights():
    """`--weights` said only the ImageNet recipe (lr 1e-4, backbone x0.1), which a `fewshot export` does not get."""
    text = _help("train").split("options:", 1)[1]  # not the usage line
    weights = text[text.index("--weights WEIGHTS"):]
    lr = text[text.index("--lr LR"):text.index("--seed SEED")]
    for said in (weights, lr):
        assert "2e-3" in said and "1e-4" in said and "export" in said, said
    assert "x1" in weights and "x0.1" in weights, weights
    assert "4e-3 from random init" in lr, lr


@pytest.fixture(scope="module")
def skipping_run(tmp_path_factory):
    """A tiny run trained with --skip-bad-images past a broken train image (data.skip_bad_images: true)."""
    base = tmp_path_factory.mktemp("fGG")
    root = build_digits(base / "root")
    next((root / "digits" / "train" / "3").iterdir()).write_bytes(b"garbage")
    rc, _, err = run_main(*tiny_train_argv(root, base / "run", "--skip-bad-images"))
    assert rc == 0, err
    return root, base / "run"


@pytest.fixture
def broken_test_root(skipping_run, tmp_path):
    root, run = skipping_run
    copy = copy_data_root(root, tmp_path / "root")
    bad = sorted((copy / "digits" / "test").iterdir())[0]
    bad.write_bytes(b"garbage")
    return copy, run, bad


def _command(kind: str, run, root, out) -> list:
    if kind == "predict":
        return ["predict", run, "--data", root, "--out", out, "--device", "cpu", "--no-progress"]
    return ["eval", run, "--data", root, "--split", "test", "--out", out, "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("kind", ["predict", "eval"])
def test_a_broken_test_image_stops_without_the_commands_own_flag(broken_test_root, tmp_path, kind):
    """The run's data.skip_bad_images (its training images) made predict guess a blank image, exit 0, and the
    warning named a --skip-bad-images nobody gave."""
    root, run, bad = broken_test_root
    out = tmp_path / "out.json"
    rc, _, err = run_main(*_command(kind, run, root, out))
    assert rc == 2 and bad.name in err and "pass --skip-bad-images" in err, err
    assert "skipping" not in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["predict", "eval"])
def test_a_broken_test_image_is_skipped_with_the_flag_and_the_warning_names_it(broken_test_root, tmp_path, kind):
    root, run, bad = broken_test_root
    out = tmp_path / "out.json"
    rc, _, err = run_main(*_command(kind, run, root, out), "--skip-bad-images")
    assert rc == 0, err
    assert "warning: skipping 1 undecodable image(s) (--skip-bad-images)" in err and bad.name in err, err
    n_test = len(list((root / "digits" / "test").iterdir()))
    written = json.loads(out.read_text())
    if kind == "predict":
        assert len(written["digits"]) == n_test
    else:
        assert written["datasets"]["digits"]["n"] == n_test


def test_pseudo_accuracy_takes_the_split_sizes_and_names_them_when_the_pool_differs(tmp_path, capsys, monkeypatch):
    """A root built with other split sizes was blamed on --seed alone (the seed was right): hunt hBY #4."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    pa = importlib.import_module("pseudo_accuracy")
    root = build_digits(tmp_path / "root")  # shots 4, val 3, test 3, pool 8 per class
    with pytest.raises(SystemExit) as exc:
        pa.main([str(tmp_path), "--data", str(root)])
    said = str(exc.value.code)
    assert "another --seed or other split sizes" in said and "--pool-per-class" in said, said
    pa.main([str(tmp_path), "--data", str(root), "--shots", "4", "--val-per-class", "3", "--test-per-class", "3",
             "--pool-per-class", "8"])
    assert "no pseudo_labels_round*.json" in capsys.readouterr().out
