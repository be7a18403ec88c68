"""Bug hunt hBL's findings (fix fED): `fewshot data` into a run folder, the words of two argparse refusals, and a
refused `train --resume` on other classes that decoded and cached the data first."""

from __future__ import annotations

import shutil

import pytest

from helpers.checks import run_main
from helpers.tiny import build_digits, copy_data_root, trained_tiny_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny digits root and a finished run trained on it (read-only: tests copy what they change)."""
    base = tmp_path_factory.mktemp("fed")
    root = build_digits(base / "root", shots=2)
    return root, trained_tiny_run(root, base / "run")


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_data_refuses_an_out_that_is_a_run_folder(tiny, tmp_path):
    """`fewshot data digits --out RUN` added digits/ and unlabeled/ beside the run's checkpoints/ (exit 0)."""
    run = shutil.copytree(tiny[1], tmp_path / "run")
    before = _listing(run)
    rc, _, err = run_main("data", "digits", "--out", run, "--shots", "1")
    assert rc == 2 and "is a fewshot run or report folder" in err and "checkpoints/" in err, err
    assert "Traceback" not in err and _listing(run) == before


def test_data_still_builds_into_a_folder_with_the_users_own_config(tmp_path):
    """A project folder holding the user's config.yaml (not a run's) is no run folder."""
    (tmp_path / "config.yaml").write_text("train:\n  epochs: 3\n")
    rc, _, err = run_main("data", "digits", "--out", tmp_path, "--shots", "1", "--val-per-class", "1",
                          "--test-per-class", "1", "--pool-per-class", "1")
    assert rc == 0, err
    assert (tmp_path / "digits" / "train").is_dir()


def test_data_names_a_wrong_dataset_by_its_metavar(tmp_path):
    """argparse named its dest: "argument name: invalid choice", a word the user never sees."""
    rc, _, err = run_main("data", "mnist", "--out", tmp_path / "x")
    assert rc == 2 and "argument {digits,fashion-mnist}: invalid choice: 'mnist'" in err, err
    assert "argument name" not in err and not (tmp_path / "x").exists()


def test_the_override_hint_only_follows_a_word_with_an_equals_sign():
    """`fewshot models a b` was told about key=value overrides, though b is none."""
    rc, _, err = run_main("models", "a", "b")
    assert rc == 2 and "unrecognized arguments: b" in err and "key=value" not in err, err
    rc, _, err = run_main("models", "a", "optim.lr=1")
    assert rc == 2 and "unrecognized arguments: optim.lr=1 (key=value config overrides" in err, err


def test_a_resume_on_other_classes_is_refused_before_any_image_is_cached(tiny, tmp_path):
    """The class check ran on the checkpoint after the loaders were built: the refused resume first decoded every
    image of the new root into ROOT/.fewshot_cache."""
    run = shutil.copytree(tiny[1], tmp_path / "run")
    other = copy_data_root(tiny[0], tmp_path / "other")  # without the cache
    for split in ("train", "val"):
        shutil.rmtree(other / "digits" / split / "9")
    rc, _, err = run_main("train", "--data", other, "--out", run, "--resume", "--device", "cpu", "--no-progress")
    assert rc == 2 and "the datasets or classes differ from those of the run being resumed" in err, err
    cache = other / ".fewshot_cache"
    assert not cache.exists() or not any(cache.iterdir()), _listing(cache)


def test_data_refuses_an_out_inside_a_run_folder(tiny, tmp_path):
    """`--out RUN/checkpoints` wrote the dataset beside last.pt (review rev75)."""
    run = shutil.copytree(tiny[1], tmp_path / "run")
    rc, _, err = run_main("data", "digits", "--out", run / "checkpoints", "--shots", "1")
    assert rc == 2 and f"lies in {run}, which is a fewshot run or report folder" in err, err
    assert not (run / "checkpoints" / "digits").exists()


@pytest.mark.parametrize("kept", ["log.jsonl", "config.yaml"])
def test_data_builds_into_a_root_holding_one_weak_run_name(tiny, tmp_path, kept):
    """A data root with a log.jsonl of its own, or a project folder with a copy of a run's config.yaml (README: reuse
    it with --config), was refused as a run folder though `train --data` takes it (review rev75)."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(tiny[1] / kept, root / kept)
    rc, _, err = run_main("data", "digits", "--out", root, "--shots", "1", "--val-per-class", "1",
                          "--test-per-class", "1", "--pool-per-class", "1")
    assert rc == 0, err


def test_a_dotted_key_without_its_equals_sign_keeps_the_hint():
    """`probe ... data.bit_depth 8` lost its hint when the hint was kept to words with `=` (review rev75)."""
    rc, _, err = run_main("models", "a", "data.bit_depth", "8")
    assert rc == 2 and "(key=value config overrides apply to train, pretrain and run" in err, err
