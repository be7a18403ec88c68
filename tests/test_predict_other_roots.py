"""Predicting on a root other than the training one: odd test file names are said, an answer key written with the
data's renamed folders is told apart from the model's classes, --data naming a file and a folder that holds runs
get the advice that fits, and a read-only root's stale image cache gives way to the user cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fewshot.data import cache as cache_mod
from fewshot.data import cache_words
from fewshot.data.layout import list_datasets, scan_root
from fewshot.errors import CheckpointError, UserError
from fewshot.eval.predict import load_answer_key, prediction_cache_dir
from fewshot.train.checkpoint import resolve_checkpoint
from helpers.checks import run_main, train_tiny


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory) -> Path:
    return train_tiny(digits_root, tmp_path_factory.mktemp("other-roots") / "run", epochs=1)


def test_odd_test_file_names_are_named_once_and_still_predicted(copy_root, capsys):
    """13.png.png (id "13.png"), " 14.png" (id " 14") and a hidden .15.png passed silently: a grader keyed on
    13, 14 and 15 counted them as misses. They are named once; the ids stay as written (names need not be ints)."""
    test = copy_root / "digits" / "test"
    (test / "13.png").rename(test / "13.png.png")
    (test / "14.png").rename(test / " 14.png")
    (test / "15.png").rename(test / ".15.png")
    shutil.copy(test / "16.png", test / "._16.png")  # macOS metadata beside a copied file: litter, not said
    info, = scan_root(copy_root, ["digits"], splits=("test",))
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "3 test file name(s)" in err, err
    assert "'13.png.png' (id '13.png': a second image extension)" in err
    assert "' 14.png' (id ' 14': spaces around the id)" in err
    assert "'.15.png' (hidden: passed over" in err and "._16.png" not in err
    ids = [i for i, _ in info.test]
    assert "13.png" in ids and " 14" in ids and "15" not in ids and "16" in ids
    scan_root(copy_root, ["digits"], splits=("test",))
    assert "warning" not in capsys.readouterr().err  # once per process


def test_plain_and_free_form_test_names_are_not_warned_about(copy_root, capsys):
    test = copy_root / "digits" / "test"
    (test / "13.png").rename(test / "cat_07.png")
    scan_root(copy_root, ["digits"], splits=("test",))
    assert "warning" not in capsys.readouterr().err


def test_answer_key_with_the_datas_renamed_folders_names_the_models_classes(trained, copy_root):
    """Values naming the renamed train folders were refused with "a class folder's name", and those names are
    folder names: the message now lists the model's classes and says the data's folders differ. The renamed
    train folders themselves are refused first (test_predict_classes), before the key is read."""
    ds = copy_root / "digits"
    words = "zero one two three four five six seven eight nine".split()
    for split in ("train", "val"):
        for k, word in enumerate(words):
            (ds / split / str(k)).rename(ds / split / word)
    key = json.loads((ds / "test_labels.json").read_text())
    (ds / "test_labels.json").write_text(json.dumps({i: words[c] for i, c in key.items()}))
    rc, _, err = run_main("eval", trained, "--data", copy_root, "--datasets", "digits", "--split", "test",
                          "--device", "cpu", "--no-progress")
    assert rc == 2, err
    assert "differ from those the model was trained on: eight, five" in err and "(0, 1, 2" in err, err
    with pytest.raises(UserError) as exc:
        load_answer_key(ds / "test_labels.json", class_names=[str(k) for k in range(10)], data_classes=words)
    assert "one of the model's class names (0, 1, 2" in str(exc.value), exc.value
    assert "The data's class folders (zero, one" in str(exc.value) and "differ from the model's" in str(exc.value)


def test_answer_key_error_without_renamed_folders_does_not_claim_they_differ(tmp_path):
    key = tmp_path / "test_labels.json"
    key.write_text(json.dumps({"0": "dog"}))
    with pytest.raises(UserError) as exc:
        load_answer_key(key, class_names=["cat", "owl"], data_classes=["cat", "owl"])
    assert "one of the model's class names (cat, owl)" in str(exc.value) and "differ" not in str(exc.value)


def test_data_naming_a_file_says_it_is_a_file(trained, digits_root, tmp_path):
    """`predict RUN --data ROOT/digits/test_labels.json` advised building demo data over the answer key."""
    key = digits_root / "digits" / "test_labels.json"
    rc, _, err = run_main("predict", trained, "--data", key, "--out", tmp_path / "z.json", "--device", "cpu")
    assert rc == 2 and f"'{key}' is a file, not a dataset root" in err and "fewshot data digits" not in err, err
    with pytest.raises(UserError, match="does not exist"):  # a missing root keeps the demo-data advice
        list_datasets(tmp_path / "nothing")


def test_a_folder_that_holds_runs_names_them(tmp_path):
    """`predict DIR` where DIR only holds run folders said DIR was "a `fewshot run` folder that did not finish"."""
    holder = tmp_path / "runs"
    for name in ("a", "b"):
        (holder / name / "checkpoints").mkdir(parents=True)
        (holder / name / "checkpoints" / "best.pt").write_bytes(b"")
    (holder / "c").mkdir()
    (holder / "c" / "summary.json").write_text("{}")  # a finished `fewshot run`, resolved through its summary
    with pytest.raises(CheckpointError) as exc:
        resolve_checkpoint(holder)
    msg = str(exc.value)
    assert "did not finish" not in msg and "holds no checkpoint of its own" in msg, msg
    assert f"{holder / 'a'}, {holder / 'b'}, {holder / 'c'}; pass one of them" in msg, msg


def test_an_unfinished_fewshot_run_folder_is_still_said_to_be_one(tmp_path):
    pipe = tmp_path / "pipe"
    (pipe / "moco" / "checkpoints").mkdir(parents=True)
    (pipe / "moco" / "checkpoints" / "last.pt").write_bytes(b"")
    (pipe / "run_state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="did not finish"):
        resolve_checkpoint(pipe)


def _cache_not_writable(monkeypatch, root: Path):
    """os.access as on a read-only mount for ROOT and its cache (the tests may run as root, who writes anyway)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(os.path.abspath(path)).is_relative_to(root):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def test_a_stale_cache_on_a_read_only_root_gives_way_to_the_user_cache(trained, copy_root, tmp_path, monkeypatch):
    """A read-only ROOT with a .fewshot_cache from other images: predict warned "could not write the image cache"
    on every call and advised data.cache_dir, which predict does not take. It now decodes into the user cache."""
    stale = copy_root / ".fewshot_cache"
    stale.mkdir()
    (stale / ("0" * 20 + ".u8")).write_bytes(b"\0")
    (stale / ("0" * 20 + ".json")).write_text("{}")
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    _cache_not_writable(monkeypatch, copy_root.resolve())
    rc, _, err = run_main("predict", trained, "--data", copy_root, "--out", tmp_path / "z.json", "--device", "cpu",
                          "--no-progress")
    assert rc == 0 and "could not write" not in err, err
    assert sorted(p.name for p in stale.iterdir()) == ["0" * 20 + ".json", "0" * 20 + ".u8"]
    assert list((xdg / "fewshot").glob("*/*.u8")), "the test images were not cached in the user cache"


def test_a_read_only_cache_that_holds_the_images_is_still_read(copy_root, tmp_path, monkeypatch):
    infos = scan_root(copy_root, splits=("test",))
    beside = copy_root / ".fewshot_cache"
    beside.mkdir()
    paths = [p for info in infos for _, p in info.test]
    key = cache_mod.cache_key(paths, 32, 1.0, "auto")
    (beside / f"{key}.u8").write_bytes(b"\0")
    (beside / f"{key}.json").write_text("{}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _cache_not_writable(monkeypatch, copy_root.resolve())
    assert prediction_cache_dir(copy_root, infos, "test", 32, 1.0, "auto") == beside
    assert prediction_cache_dir(copy_root, infos, "test", 48, 1.0, "auto").is_relative_to(tmp_path / "xdg")


def test_the_unwritable_cache_warning_gives_predicts_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cache_words, "_WARNED", set())
    cache_words._warn_no_cache(tmp_path, PermissionError(13, "Permission denied"), 10)
    err = capsys.readouterr().err
    assert "data.cache_dir=DIR" in err and "predict and eval use ROOT/.fewshot_cache, else $XDG_CACHE_HOME" in err, err
    assert "XDG_CACHE_HOME=DIR chooses another" in err
