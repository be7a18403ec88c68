"""Dataset-root validation (fewshot.data.layout.scan_root) and how the CLI reports it.

Every layout problem must be found before any compute, named by its path, and reported
all at once; the CLI turns them into exit code 2 with a message and no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot.cli import main
from fewshot.data.cache import load_images
from fewshot.data.layout import list_datasets, scan_root
from fewshot.data.pool_scan import find_unlabeled_images
from fewshot.errors import DataLayoutError, UserError
from helpers.checks import run_main

ALL_SPLITS = ("train", "val", "test")


def problems_of(root: Path, **kw) -> list[str]:
    with pytest.raises(DataLayoutError) as info:
        scan_root(root, **kw)
    return info.value.problems


def one_problem(problems: list[str], path: Path, *words: str) -> str:
    """The single problem that names `path` and contains every word."""
    hits = [p for p in problems if str(path) in p and all(w in p for w in words)]
    assert len(hits) == 1, f"expected one problem about {path} with {words}, got: {problems}"
    return hits[0]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def train_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(root), "--out", str(out), "--model", "test_resnet", "--img-size", "16",
            "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--no-progress",
            "train.tensorboard=false", "train.ema=false", "train.threads=1", *extra]


# ------------------------------------------------------------------ the valid root

def test_valid_root_scans_every_split(digits_root, dataset_names):
    infos = scan_root(digits_root, splits=ALL_SPLITS)
    assert [i.name for i in infos] == dataset_names
    for info in infos:
        assert len(info.classes) == 10
        assert list(info.classes) == sorted(info.classes)
        assert len(info.train) == 40 and len(info.val) == 30 and len(info.test) == 30
        # local labels are positions in the sorted class list and match the folder
        for path, label in info.train + info.val:
            assert path.parent.name == info.classes[label]
        ids = [i for i, _ in info.test]
        assert [int(i) for i in ids] == sorted(int(i) for i in ids) and len(set(ids)) == len(ids)  # 2 before 10
        assert all(p.name == f"{i}.png" for i, p in info.test)
        key = json.loads((digits_root / info.name / "test_labels.json").read_text())
        assert {str(i) for i in ids} == set(key)
        assert info.answer_key == digits_root / info.name / "test_labels.json"


def test_unlabeled_json_and_hidden_entries_are_not_datasets(copy_root, dataset_names):
    (copy_root / "notes.json").write_text("{}")
    (copy_root / "summary.json").write_text("[]")
    hidden = copy_root / ".hidden"
    shutil.copytree(copy_root / dataset_names[0], hidden)  # even a valid-looking hidden dataset
    (copy_root / ".fewshot_cache").mkdir()
    assert (copy_root / "unlabeled").is_dir()
    assert list_datasets(copy_root) == dataset_names
    assert [i.name for i in scan_root(copy_root)] == dataset_names


def test_run_folders_os_litter_and_empty_folders_in_the_root_are_not_datasets(copy_root, dataset_names, tmp_path,
                                                                             capfd):
    """`--out ROOT/myrun` or `--out ROOT/runs/x` used to make every later command on ROOT a layout error
    ("ROOT/runs/train: missing split folder"); so did unzip's __MACOSX/ and an empty folder."""
    rc, _, err = run_main(*train_argv(copy_root, copy_root / "runs" / "x"))  # a run inside the root
    assert rc == 0, err
    (copy_root / "myrun").mkdir()  # what a failed start of `fewshot run --out ROOT/myrun` leaves
    (copy_root / "__MACOSX" / dataset_names[0]).mkdir(parents=True)
    (copy_root / "__MACOSX" / dataset_names[0] / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    capfd.readouterr()
    assert list_datasets(copy_root) == dataset_names
    err = capfd.readouterr().err
    for name, why in (("runs", "fewshot output"), ("myrun", "no images"), ("__MACOSX", "operating-system metadata")):
        assert f"{copy_root / name} is not a dataset ({why}" in err
    assert [i.name for i in scan_root(copy_root)] == dataset_names
    rc, _, err = run_main(*train_argv(copy_root, copy_root / "runs" / "x"), "--resume", "--epochs", "2")
    assert rc == 0, err
    # `fewshot run --out ROOT/runs2/x` creates x before it scans ROOT: an empty run folder in a folder of runs
    (copy_root / "runs2" / "x").mkdir(parents=True)
    # an unreadable folder (a mount point's lost+found) stopped every command; root reads anything, so simulate it
    secret, real_iterdir = copy_root / "lost+found", Path.iterdir
    secret.mkdir()

    def iterdir(self):
        if self == secret:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    capfd.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "iterdir", iterdir)
        assert list_datasets(copy_root) == dataset_names
    err = capfd.readouterr().err
    assert f"{copy_root / 'runs2'} is not a dataset (no images" in err
    assert f"{secret} is not a dataset (it cannot be read: Permission denied)" in err
    # a folder with files but no split folder is still a dataset with a problem, not passed over
    (copy_root / "mistyped" / "Train" / "0").mkdir(parents=True)
    shutil.copy(next((copy_root / dataset_names[0] / "train" / "0").iterdir()), copy_root / "mistyped" / "Train" / "0")
    one_problem(problems_of(copy_root), copy_root / "mistyped" / "train", "missing split")


def test_hidden_files_inside_splits_are_ignored(copy_root, dataset_names):
    ds = copy_root / dataset_names[0]
    (ds / "train" / ".DS_Store").write_text("x")
    (ds / "train" / "0" / ".DS_Store").write_text("x")
    (ds / "test" / ".3.png").write_bytes(b"not an image")
    info = scan_root(copy_root, dataset_names[0], splits=ALL_SPLITS)[0]
    assert len(info.train) == 40 and len(info.test) == 30


def test_empty_root_and_missing_root(tmp_path):
    with pytest.raises(UserError, match="no dataset folders"):
        scan_root(tmp_path)
    missing = tmp_path / "nope"
    with pytest.raises(UserError) as info:
        scan_root(missing)
    assert str(missing) in str(info.value)
    assert not isinstance(info.value, DataLayoutError)


# ------------------------------------------------------------------ dataset selection

def test_select_datasets_by_string_and_list(digits_root, dataset_names):
    a, b = dataset_names
    assert [i.name for i in scan_root(digits_root, a)] == [a]
    assert [i.name for i in scan_root(digits_root, f"{b},{a}")] == [b, a]  # order as given
    assert [i.name for i in scan_root(digits_root, [b])] == [b]
    assert [i.name for i in scan_root(digits_root, f" {a} , ")] == [a]


def test_a_dataset_named_with_a_comma_or_spaces_is_selected_by_its_name(copy_root, dataset_names):
    """`--datasets "a,b"` was split and stripped: "dataset(s) a, b not found ... Available:  spaced , a,b"."""
    (copy_root / dataset_names[0]).rename(copy_root / "x,y")
    (copy_root / dataset_names[1]).rename(copy_root / " spaced ")
    assert [i.name for i in scan_root(copy_root, "x,y")] == ["x,y"]
    assert [i.name for i in scan_root(copy_root, " spaced ")] == [" spaced "]
    assert [i.name for i in scan_root(copy_root, " spaced ,, ")] == [" spaced "]  # a part as typed, too


def test_repeated_dataset_is_taken_once(digits_root, dataset_names):
    a = dataset_names[0]
    assert [i.name for i in scan_root(digits_root, f"{a},{a}")] == [a]


def test_unknown_dataset_name(digits_root, dataset_names):
    with pytest.raises(UserError) as info:
        scan_root(digits_root, f"{dataset_names[0]},cifar")
    msg = str(info.value)
    assert "cifar" in msg and all(n in msg for n in dataset_names)  # lists what is available


def test_a_dataset_name_is_found_in_either_unicode_form(copy_root, dataset_names):
    """A model trained where the folder was written decomposed ("cafe" + U+0301, as macOS does) predicts on a copy
    where it is composed: "dataset(s) café not found ... Available: café"."""
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    (copy_root / dataset_names[0]).rename(copy_root / composed)
    info = scan_root(copy_root, [decomposed], splits=ALL_SPLITS)[0]
    assert info.name == decomposed and info.root == copy_root / composed and len(info.test) == 30


def test_a_dataset_named_in_both_unicode_forms_is_taken_once(copy_root, dataset_names):
    """`--datasets "café,<café decomposed>,b"` used the one folder twice: two rows, doubled classes and images."""
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    (copy_root / dataset_names[0]).rename(copy_root / composed)
    b = dataset_names[1]
    infos = scan_root(copy_root, f"{composed},{decomposed},{b}")
    assert [i.name for i in infos] == [composed, b]  # the first spelling is kept
    infos = scan_root(copy_root, [decomposed, b, composed])
    assert [i.name for i in infos] == [decomposed, b]


def test_folder_names_that_are_not_text_are_layout_errors(copy_root, dataset_names):
    """A class or dataset folder named with Latin-1 bytes (b"caf\\xe9") trained one epoch, then crashed in
    TensorBoard or matplotlib (exit 1, traceback): such names cannot be written as text."""
    import os

    a, b = dataset_names
    bad = os.fsdecode(b"caf\xe9")
    (copy_root / a / "train" / "3").rename(copy_root / a / "train" / bad)
    (copy_root / a / "val" / "3").rename(copy_root / a / "val" / bad)
    problems = problems_of(copy_root, datasets=a)
    assert sum("the class folder's name is not valid text" in p for p in problems) == 2, problems
    (copy_root / b).rename(copy_root / bad)
    with pytest.raises(UserError, match="the dataset folder's name is not valid text"):
        scan_root(copy_root, [bad])


def test_a_dataset_named_like_a_key_of_pred_all_json_is_refused(copy_root, dataset_names):
    """pred_all.json holds "n_parameters" beside the datasets: a dataset of that name overwrote the count; one named
    "mean" lost its kNN accuracy to the mean beside it (log.jsonl, summaries, compare)."""
    (copy_root / dataset_names[1]).rename(copy_root / "n_parameters")
    with pytest.raises(UserError, match="a dataset cannot be named 'n_parameters'"):
        scan_root(copy_root)
    assert [i.name for i in scan_root(copy_root, dataset_names[0])] == [dataset_names[0]]
    (copy_root / "n_parameters").rename(copy_root / "mean")  # the mean beside the per-dataset kNN accuracies
    for datasets in (None, f"{dataset_names[0]},mean"):
        with pytest.raises(UserError, match="a dataset cannot be named 'n_parameters' or 'mean'") as info:
            scan_root(copy_root, datasets)
        assert str(info.value).startswith(str(copy_root / "mean"))


def test_a_problem_about_a_folder_named_in_brackets_is_listed_as_a_problem(tmp_path):
    """Hints were told apart by a leading "(": a root named "(copy)" printed its problem under "0 problem(s)"."""
    error = DataLayoutError(["(copy)/ds/val/red/9.bmp: empty file"], ["(pass --skip-bad-images to go on)"])
    assert str(error).splitlines() == ["the data layout has 1 problem(s):", "  - (copy)/ds/val/red/9.bmp: empty file",
                                       "(pass --skip-bad-images to go on)"]
    error = DataLayoutError(["new\nline/ds/val: missing split folder 'val'"])  # a folder name split the line
    assert str(error).splitlines()[1] == "  - new\\nline/ds/val: missing split folder 'val'"


def test_selection_skips_broken_other_dataset(copy_root, dataset_names):
    a, b = dataset_names
    shutil.rmtree(copy_root / b / "val")
    assert [i.name for i in scan_root(copy_root, a)] == [a]
    problems_of(copy_root)  # the full root is still refused


# ------------------------------------------------------------------ individual problems

def test_missing_split(copy_root, dataset_names):
    val = copy_root / dataset_names[0] / "val"
    shutil.rmtree(val)
    one_problem(problems_of(copy_root), val, "missing split")
    test = copy_root / dataset_names[1] / "test"
    shutil.rmtree(test)
    scan_root(copy_root, dataset_names[1])  # training does not need test/
    one_problem(problems_of(copy_root, datasets=dataset_names[1], splits=("test",)), test, "missing split")


def test_empty_class_folder(copy_root, dataset_names):
    cls = copy_root / dataset_names[0] / "train" / "3"
    shutil.rmtree(cls)
    cls.mkdir()
    one_problem(problems_of(copy_root), cls, "empty class folder")


def test_class_folder_with_only_hidden_files_is_empty(copy_root, dataset_names):
    cls = copy_root / dataset_names[0] / "train" / "5"
    shutil.rmtree(cls)
    cls.mkdir()
    (cls / ".DS_Store").write_text("x")
    one_problem(problems_of(copy_root), cls, "empty class folder")


def test_class_folder_without_images(copy_root, dataset_names):
    cls = copy_root / dataset_names[1] / "train" / sorted(p.name for p in (copy_root / dataset_names[1] / "train").iterdir())[2]
    for p in cls.iterdir():
        p.rename(p.with_suffix(".txt"))
    one_problem(problems_of(copy_root), cls, "without images")


def test_image_directly_in_split_folder(copy_root, dataset_names):
    split = copy_root / dataset_names[0] / "train"
    stray = split / "stray.png"
    shutil.copy(split / "1" / "0.png", stray)
    one_problem(problems_of(copy_root), stray, "class folder")


@pytest.mark.parametrize("name, image_id", [("cat.png", "cat"), ("1.5.png", "1.5"), ("-1.png", "-1"),
                                            ("\u0663.png", "\u0663"), ("7a.jpg", "7a"), ("0999.png", "999"),
                                            ("my photo.jpg", "my photo"), ("e\u0301t\u00e9.png", "\u00e9t\u00e9"),
                                            ("123456789012345678901234.png", "123456789012345678901234")])
def test_any_test_file_name_is_an_id(copy_root, dataset_names, name, image_id):
    """SPEC's ids are integers (0999.png is image 999, as SPEC's <int_id>); held-out data's are often not
    (img_001.jpg: the stem is the id, NFC-normalised as keys are typed), or exceed 64 bits (a crash once)."""
    test = copy_root / dataset_names[0] / "test"
    shutil.copy(test / "0.png", test / name)
    info = scan_root(copy_root, splits=ALL_SPLITS)[0]
    ids = [i for i, _ in info.test]
    assert image_id in ids and ids[:3] == ["0", "1", "2"]  # integers first, in numeric order


def test_non_image_files_in_test_are_ignored_with_a_warning(copy_root, dataset_names, capfd):
    """readme.txt or Thumbs.db beside the test images used to stop every command (exit 2, nothing predicted);
    they are ignored, as in class folders, and named once on stderr. A test/ holding only such files is a problem."""
    test_dir = copy_root / dataset_names[0] / "test"
    before = scan_root(copy_root, [dataset_names[0]], splits=ALL_SPLITS)[0].test
    (test_dir / "readme.txt").write_text("hello")
    (test_dir / "Thumbs.db").write_bytes(b"\0" * 16)
    capfd.readouterr()
    for _ in range(2):
        assert scan_root(copy_root, [dataset_names[0]], splits=ALL_SPLITS)[0].test == before
    err = capfd.readouterr().err
    assert err.count("ignoring 2 file(s) that are not images") == 1 and "Thumbs.db, readme.txt" in err
    for image in test_dir.glob("*.png"):
        image.unlink()
    one_problem(problems_of(copy_root, splits=ALL_SPLITS), test_dir, "no test images", "readme.txt")


@pytest.mark.parametrize("name", ["17.heic", "17.jpg.part", "0017"])
def test_a_test_id_in_a_file_that_is_not_an_image_is_still_a_problem(copy_root, dataset_names, name):
    """A numbered file is a test image the tool cannot read: skipping it would leave its id out of pred_all.json."""
    bad = copy_root / dataset_names[0] / "test" / name
    bad.write_bytes(b"\0" * 16)
    one_problem(problems_of(copy_root, splits=ALL_SPLITS), bad, "a test id in a file that is not an image")


@pytest.mark.parametrize("dup", ["3.jpg", "03.png", "003.PNG"])
def test_duplicate_test_ids(copy_root, dataset_names, dup):
    """3.png plus 3.jpg, 03.png or 003.PNG: all are image id 3, so the id is ambiguous."""
    test = copy_root / dataset_names[1] / "test"
    shutil.copy(test / "5.png", test / dup)
    problems = problems_of(copy_root, splits=ALL_SPLITS)
    hits = [p for p in problems if "duplicate test id 3" in p]
    assert len(hits) == 1, problems
    assert dup in hits[0] and "3.png" in hits[0]  # both files named
    assert str(test) in hits[0]


def test_val_classes_differ_from_train(copy_root, dataset_names):
    val = copy_root / dataset_names[0] / "val"
    (val / "7").rename(val / "seven")
    problems = problems_of(copy_root)
    one_problem(problems, val, "not in train", "seven")
    assert len(problems) == 1  # train's 7 without val images alone is a warning (below)


def test_a_class_without_val_images_is_trained_and_left_out_of_val(copy_root, dataset_names, tmp_path, capfd):
    """Held-out data may have no val image for a rare class: the layout check refused the whole root ("train
    classes missing from val"), and a val split scanned alone (eval) then took other class indices. The class
    is now trained, warned about once, and eval scores the other classes by the model's class indices."""
    import torch

    from fewshot.eval.predict import _data_for, load_trained

    first = dataset_names[0]
    run = tmp_path / "run"  # trained on every class, before any is removed
    rc, _, err = run_main(*train_argv(copy_root, run, "--datasets", first))
    assert rc == 0, err
    val = copy_root / first / "val"
    shutil.rmtree(val / "3")
    (val / "5").mkdir(exist_ok=True)
    for p in (val / "5").iterdir():
        p.unlink()  # an empty val class folder: the same
    info = scan_root(copy_root, [first])[0]
    assert "3" in info.classes and "5" in info.classes
    assert {info.classes[k] for _, k in info.val} == set(info.classes) - {"3", "5"}
    err = capfd.readouterr().err
    assert err.count("no val images for 2 class(es)") == 1 and "3, 5" in err
    scan_root(copy_root, [first])
    assert "no val images" not in capfd.readouterr().err  # once per process

    tm = load_trained(run, torch.device("cpu"))
    _, data = _data_for(tm, copy_root, "val")
    names = [c for classes in tm.space.classes for c in classes]
    assert len(data.paths) == len(info.val)
    assert all(names[int(t)] == Path(p).parent.name for p, t in zip(data.paths, data.targets))
    assert "no val images for 2 of the model's class(es), which are not scored: 3, 5" in capfd.readouterr().err
    rc, _, err = run_main("eval", str(run), "--data", str(copy_root), "--no-progress")
    assert rc == 0, err

    shutil.rmtree(val)
    val.mkdir()
    one_problem(problems_of(copy_root, datasets=[first]), val, "no val images")


def test_all_problems_reported_at_once(copy_root, dataset_names):
    a, b = dataset_names
    empty = copy_root / a / "train" / "2"
    shutil.rmtree(empty)
    empty.mkdir()
    missing = copy_root / b / "val"
    shutil.rmtree(missing)
    bad_id = copy_root / b / "test" / "0.tif"
    shutil.copy(copy_root / b / "test" / "0.png", bad_id)
    with pytest.raises(DataLayoutError) as info:
        scan_root(copy_root, splits=ALL_SPLITS)
    msg = str(info.value)
    for path, word in ((empty, "empty class folder"), (missing, "missing split"), (bad_id, "duplicate test id")):
        assert str(path) in msg
        one_problem(info.value.problems, path, word)
    assert f"{len(info.value.problems)} problem(s)" in msg


# ------------------------------------------------------------------ undecodable images (cache)

def _break_images(root: Path, name: str) -> tuple[Path, Path]:
    garbage = root / name / "train" / "3" / "0.png"
    garbage.write_bytes(b"this is not a png at all")
    truncated = root / name / "train" / "4" / "1.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    return garbage, truncated


def test_cache_reports_every_undecodable_image(copy_root, dataset_names):
    garbage, truncated = _break_images(copy_root, dataset_names[0])
    info = scan_root(copy_root, dataset_names[0])[0]  # scanning does not decode
    paths = [p for p, _ in info.train + info.val]
    with pytest.raises(DataLayoutError) as exc:
        load_images(paths, 16, None)
    msg = str(exc.value)
    assert str(garbage) in msg and str(truncated) in msg and "--skip-bad-images" in msg
    got = load_images(paths, 16, copy_root / ".fewshot_cache", skip_bad=True)
    assert int((~got.valid).sum()) == 2
    assert not got.valid[paths.index(garbage)] and not got.valid[paths.index(truncated)]
    assert {p for p, _ in got.bad} == {str(garbage), str(truncated)}
    # a cached result is refused the same way without skip_bad
    with pytest.raises(DataLayoutError, match="cannot be decoded"):
        load_images(paths, 16, copy_root / ".fewshot_cache")


def test_train_exits_2_listing_undecodable_images_and_skips_them_on_request(copy_root, tmp_path, capsys):
    garbage, truncated = _break_images(copy_root, "digits")
    run = tmp_path / "run"
    rc, out, err = cli(capsys, *train_argv(copy_root, run))
    assert rc == 2, err
    assert str(garbage) in err and str(truncated) in err and "--skip-bad-images" in err
    assert "Traceback" not in err
    assert not (run / "checkpoints" / "last.pt").exists()

    run2 = tmp_path / "run2"
    rc, out, err = cli(capsys, *train_argv(copy_root, run2, "--skip-bad-images"))
    assert rc == 0, err
    assert "78 train / 60 val images" in out  # 80 train minus the two bad files
    assert (run2 / "checkpoints" / "last.pt").is_file()


def test_bad_images_in_train_and_val_are_reported_together(copy_root, tmp_path, capsys):
    bad_train = copy_root / "digits" / "train" / "1" / "0.png"
    bad_val = copy_root / "digits" / "val" / "2" / "0.png"
    for p in (bad_train, bad_val):
        p.write_bytes(b"not an image")
    rc, out, err = cli(capsys, *train_argv(copy_root, tmp_path / "run"))
    assert rc == 2
    assert str(bad_train) in err and str(bad_val) in err and err.count("--skip-bad-images") == 1


# ------------------------------------------------------------------ CLI reporting

@pytest.mark.parametrize("damage", ["missing_split", "bad_test_name", "val_classes"])
def test_cli_train_layout_errors_exit_2(copy_root, tmp_path, dataset_names, capsys, damage):
    a = dataset_names[0]
    if damage == "missing_split":
        named = copy_root / a / "train"
        shutil.rmtree(named)
    elif damage == "bad_test_name":  # only `predict` reads test/: train must not care
        named = copy_root / a / "test" / "oops.png"
        shutil.copy(copy_root / a / "test" / "0.png", named)
    else:
        named = copy_root / a / "val"
        (named / "1").rename(named / "one")
    run = tmp_path / "run"
    rc, out, err = cli(capsys, *train_argv(copy_root, run, "--datasets", a, "--epochs", "1"))
    if damage == "bad_test_name":
        assert rc == 0, err
        return
    assert rc == 2, err
    assert str(named) in err and "Traceback" not in err
    assert err.startswith("fewshot train: error:")
    assert not run.exists() or not (run / "config.yaml").exists()  # nothing started


def test_cli_unknown_dataset_exits_2(digits_root, tmp_path, capsys):
    rc, out, err = cli(capsys, *train_argv(digits_root, tmp_path / "run", "--datasets", "nope"))
    assert rc == 2 and "nope" in err and "Traceback" not in err


def test_cli_subprocess_layout_error_no_traceback(copy_root, tmp_path, dataset_names):
    """The real entry point: exit status 2, the path in the message, no traceback."""
    empty = copy_root / dataset_names[1] / "train" / sorted(p.name for p in (copy_root / dataset_names[1] / "train").iterdir())[0]
    shutil.rmtree(empty)
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "fewshot", *train_argv(copy_root, tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert str(empty) in proc.stderr and "empty class folder" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ------------------------------------------------------------------ unlabeled pool

def test_find_unlabeled_images(digits_root, tmp_path, dataset_names):
    imgs = find_unlabeled_images([digits_root / "unlabeled"])
    assert len(imgs) == 200 and imgs == sorted(imgs)
    assert {p.parent.name for p in imgs} == set(dataset_names)
    with pytest.raises(UserError, match="no images"):
        find_unlabeled_images([tmp_path])
    with pytest.raises(UserError, match="does not exist"):
        find_unlabeled_images([tmp_path / "missing"])


def test_test_images_in_a_sub_folder_are_a_problem_not_silently_left_out(copy_root, dataset_names):
    """Images under test/<sub>/ are not read: pred_all.json would miss them without a word."""
    test = copy_root / dataset_names[0] / "test"
    sub = test / "batch2"
    sub.mkdir()
    shutil.move(str(test / "0.png"), sub / "0.png")
    (test / ".thumbnails").mkdir()  # hidden folders stay ignored
    shutil.copy(test / "1.png", test / ".thumbnails" / "1.png")
    one_problem(problems_of(copy_root, splits=ALL_SPLITS), sub, "sub-folder of test/")


def test_a_pool_of_hidden_files_only_counts_as_no_pool(copy_root, dataset_names):
    """.thumbnails/ and macOS ._ files are not pool images: the dataset falls back to its train images
    (it used to pick the empty pool and fail later with "no images found")."""
    from fewshot.config import resolve
    from fewshot.data.pool import pool_with_sources

    name = dataset_names[0]
    pool = copy_root / "unlabeled" / name
    shutil.rmtree(pool)
    (pool / ".thumbnails").mkdir(parents=True)
    shutil.copy(copy_root / name / "test" / "0.png", pool / ".thumbnails" / "0.png")
    shutil.copy(copy_root / name / "test" / "0.png", pool / "._IMG_0001.png")
    infos = scan_root(copy_root)
    paths, ids, source, _ = pool_with_sources(resolve(flags={"data.root": str(copy_root)}), infos)
    assert f"{name}: train images" in source
    assert sum(1 for i in ids if i == 0) == len(infos[0].train)


def test_a_pool_in_the_dataset_s_folder_or_named_in_another_case_is_pointed_out(copy_root, dataset_names, capfd):
    """A pool put in ROOT/<dataset>/unlabeled/ was never read and the run said only "no unlabeled pool"; one named
    ROOT/unlabeled/Digits/ for dataset 'digits' became images of unknown source without a word."""
    from fewshot.config import resolve
    from fewshot.data.pool import pool_with_sources

    inside, other_case = dataset_names
    shutil.move(copy_root / "unlabeled" / inside, copy_root / inside / "unlabeled")
    shutil.move(copy_root / "unlabeled" / other_case, copy_root / "unlabeled" / other_case.upper())
    infos = scan_root(copy_root)
    capfd.readouterr()
    pool_with_sources(resolve(flags={"data.root": str(copy_root)}), infos)
    err = capfd.readouterr().err
    assert f"{copy_root / inside / 'unlabeled'} is not read" in err and f"{copy_root / 'unlabeled' / inside}/" in err
    assert f"{copy_root / 'unlabeled' / other_case.upper()} differs from the dataset name '{other_case}' only in " \
           f"case" in err, err


def test_pool_images_outside_the_datasets_folders_join_as_unknown_source(copy_root, dataset_names):
    """A held-out root may lay its pool out as ROOT/unlabeled/*.png or ROOT/unlabeled/<other>/: those images
    used to be ignored without a word (self-training off, 12 points lost in a hunt). They join the pool with
    dataset -1; a folder named after a dataset left out by --datasets stays that dataset's."""
    from fewshot.config import resolve
    from fewshot.data.pool import pool_with_sources

    first, second = dataset_names[0], dataset_names[1]
    pool = copy_root / "unlabeled"
    own = sorted((pool / first).rglob("*.png"))
    shutil.copy(own[0], pool / "loose.png")
    (pool / "camera roll" / "2024").mkdir(parents=True)
    shutil.copy(own[1], pool / "camera roll" / "2024" / "a.png")
    (pool / "notes.txt").write_text("not an image")
    (pool / ".trash").mkdir()
    shutil.copy(own[2], pool / ".trash" / "hidden.png")
    cfg = resolve(flags={"data.root": str(copy_root)})
    paths, ids, source, _ = pool_with_sources(cfg, scan_root(copy_root, [first]))
    unknown = sorted(Path(p).relative_to(pool).as_posix() for p, i in zip(paths, ids) if i == -1)
    assert unknown == ["camera roll/2024/a.png", "loose.png"]
    assert "2 images of unknown source" in source
    assert sum(1 for i in ids if i == 0) == len(own)  # the dataset's own pool, unchanged
    assert not any(Path(p).is_relative_to(pool / second) for p in paths)  # another dataset's pool stays out

    (pool / "empty").mkdir()  # passed over, not "no images found under ..." (a reviewer's find)
    (pool / "text only").mkdir()
    (pool / "text only" / "readme.txt").write_text("x")
    (pool / "mirror").symlink_to(pool / first)  # the same files again: not pooled twice
    (pool / "everything").symlink_to(copy_root)  # the root: its test and train images stay out of the pool
    paths, ids, source, _ = pool_with_sources(cfg, scan_root(copy_root, [first]))
    assert sorted(Path(p).name for p, i in zip(paths, ids) if i == -1) == ["a.png", "loose.png"], source
    for link in ("mirror", "everything"):
        (pool / link).unlink()

    shutil.rmtree(pool / first)  # a flat pool only: the dataset falls back to its train images, plus the loose ones
    paths, ids, source, _ = pool_with_sources(cfg, scan_root(copy_root, [first]))
    assert f"{first}: train images" in source and ids.count(-1) == 2
    explicit = resolve(flags={"data.root": str(copy_root), "data.unlabeled": [str(pool / "camera roll")]})
    paths, ids, _, _ = pool_with_sources(explicit, scan_root(copy_root, [first]))
    assert ids == [-1] and Path(paths[0]).name == "a.png"  # --unlabeled replaces ROOT/unlabeled/ entirely


def test_class_names_in_composed_and_decomposed_unicode_are_one_class(copy_root, dataset_names):
    """macOS writes decomposed names: train/café (NFC) and val/café (NFD) used to be reported as a val class
    missing from train and a train class missing from val, two lines that look identical."""
    import unicodedata

    ds = copy_root / dataset_names[0]
    old = sorted(p.name for p in (ds / "train").iterdir())[0]
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    (ds / "train" / old).rename(ds / "train" / composed)
    (ds / "val" / old).rename(ds / "val" / decomposed)
    info = scan_root(copy_root, [dataset_names[0]])[0]
    assert composed in info.classes and decomposed not in info.classes
    k = info.classes.index(composed)
    assert sum(1 for _, c in info.val if c == k) == len(list((ds / "val" / decomposed).iterdir()))
    # both forms in one split: a problem that says why
    shutil.copytree(ds / "val" / decomposed, ds / "val" / composed)
    problems = problems_of(copy_root, datasets=[dataset_names[0]])
    assert any("differ only in their Unicode form" in p for p in problems), problems


def test_the_skip_bad_images_hint_is_not_counted_as_a_problem():
    from fewshot.errors import DataLayoutError

    err = DataLayoutError(["a.png: cannot decode"], ["(pass --skip-bad-images to skip these files and go on)"])
    assert str(err).startswith("the data layout has 1 problem(s):\n  - a.png: cannot decode\n(pass --skip-bad-images")


def test_a_report_written_into_the_data_root_is_not_a_dataset(copy_root, dataset_names, capfd):
    """`fewshot report RUN --out ROOT/rep` (index.html and PNGs) turned every later command on ROOT into
    "ROOT/rep: missing split folder"."""
    from PIL import Image

    rep = copy_root / "rep"
    rep.mkdir()
    # the page as `fewshot report` writes it (its title): a bare web page with a picture is the user's (fCU)
    (rep / "index.html").write_text("<html><head><title>fewshot report</title></head></html>")
    Image.new("RGB", (8, 8)).save(rep / "curves.png")
    capfd.readouterr()
    assert list_datasets(copy_root) == dataset_names
    assert f"{rep} is not a dataset (fewshot output" in capfd.readouterr().err


def test_unlabeled_folders_count_each_file_once_and_never_the_scoring_splits(copy_root, dataset_names, tmp_path,
                                                                              capfd):
    """--unlabeled with the same folder twice (or one inside another) counted its images twice; --unlabeled ROOT
    pooled the val images that pick best.pt and the test images that judge the run; a symlinked sub-folder
    was skipped without a word. Each file now counts once, val/test are left out with a note, links are named."""
    from fewshot.config import resolve
    from fewshot.data.pool import pool_with_sources

    first = dataset_names[0]
    pool = copy_root / "unlabeled" / first
    n_pool = len(list(pool.rglob("*.png")))
    infos = scan_root(copy_root, [first])

    def pool_of(*folders):
        cfg = resolve(flags={"data.root": str(copy_root), "data.unlabeled": [str(f) for f in folders]})
        paths, ids, _, _ = pool_with_sources(cfg, infos)
        assert set(ids) == {-1}
        return paths

    assert len(pool_of(pool, pool)) == n_pool
    assert len(pool_of(copy_root / "unlabeled", pool, Path(f"{pool}/./"))) == len(list((copy_root / "unlabeled").rglob("*.png")))
    everything = pool_of(copy_root)
    for name in dataset_names:
        for split in ("val", "test"):
            assert not any(Path(p).is_relative_to(copy_root / name / split) for p in everything)
    assert sum(Path(p).is_relative_to(copy_root / first / "train") for p in everything) == len(infos[0].train)
    assert "note: leaving out" in capfd.readouterr().err
    with pytest.raises(UserError, match="only .* val/test image"):
        pool_of(copy_root / first / "test")

    linked = tmp_path / "linked"  # a symlinked folder is named, not walked (a link to / or to test/ ...)
    linked.mkdir()
    shutil.copy(next(pool.rglob("*.png")), linked / "own.png")
    (linked / "tests").symlink_to(copy_root / first / "test")
    (linked / "loop").symlink_to(linked)
    assert [Path(p).name for p in pool_of(linked)] == ["own.png"]
    err = capfd.readouterr().err
    assert "note: not following 2 symlinked folder(s)" in err and str(linked / "tests") in err
    assert len(pool_of(linked / "tests", pool)) == n_pool  # given as a pool folder: walked (and test left out)


def test_a_run_folder_inside_an_unlabeled_folder_is_refused(copy_root, tmp_path):
    """Its plots joined the pool: the first run trained on N images, --resume found N+1 and refused."""
    from fewshot.data.output_guard import check_output_is_not_in_data

    pool = tmp_path / "pool"
    pool.mkdir()
    with pytest.raises(UserError, match="inside the unlabeled folder"):
        check_output_is_not_in_data(pool / "run", copy_root, [str(pool)])
    with pytest.raises(UserError, match="inside the unlabeled folder"):
        check_output_is_not_in_data(pool, copy_root, str(pool))
    check_output_is_not_in_data(tmp_path / "run", copy_root, [str(pool)])


def test_links_to_val_and_test_images_never_join_the_pool(copy_root, dataset_names, tmp_path, capfd):
    """A pool of symbolic links to test (and val) files, given with --unlabeled or put in ROOT/unlabeled/<ds>,
    took them into MoCo, the pseudo-labels and FixMatch: only the links' folders were resolved."""
    from fewshot.config import resolve
    from fewshot.data.pool import pool_with_sources

    first = dataset_names[0]
    infos = scan_root(copy_root, [first])
    scoring = [p for split in ("val", "test") for p in sorted((copy_root / first / split).rglob("*.png"))[:3]]
    outside = tmp_path / "links"
    inside = copy_root / "unlabeled" / first / "links"
    for folder in (outside, inside):
        folder.mkdir()
        for i, target in enumerate(scoring):
            (folder / f"{i}.png").symlink_to(target)
    own = len([p for p in (copy_root / "unlabeled" / first).rglob("*.png") if not p.is_symlink()])

    def pool(*folders):
        cfg = resolve(flags={"data.root": str(copy_root), "data.unlabeled": [str(f) for f in folders] or None})
        return [Path(p) for p in pool_with_sources(cfg, infos)[0]]

    assert len(pool()) == own and not any(p.is_symlink() for p in pool())  # ROOT/unlabeled/<ds>
    assert "leaving out 6 val/test image(s)" in capfd.readouterr().err
    assert len(pool(copy_root / "unlabeled" / first)) == own
    with pytest.raises(UserError, match="only 6 val/test image") as refused:
        pool(outside)
    assert str(refused.value).count("--unlabeled folders") == 1, refused.value  # it said so twice (hunt hAS)


def test_the_pool_is_scanned_once_while_its_folders_stay_unchanged(copy_root, dataset_names, monkeypatch, capfd):
    """`fewshot run` scanned and resolved a 100k-file pool 3-6 times, about a minute each without a word: the
    pool is found once per process while no folder of the root or of the pool changes, and a long scan says so."""
    import fewshot.data.pool_scan as pool_scan
    from fewshot.config import resolve
    from fewshot.data import pool

    cfg, infos = resolve(flags={"data.root": str(copy_root)}), scan_root(copy_root)
    (copy_root / ".fewshot_cache").mkdir(exist_ok=True)  # the image cache, beside the datasets
    for folder in [copy_root, *(p for p in copy_root.rglob("*") if p.is_dir())]:
        os.utime(folder, (1e9, 1e9))  # settled long ago
    scans = []
    monkeypatch.setattr(pool, "find_unlabeled_images",
                        lambda folders: scans.append(folders) or pool_scan.find_unlabeled_images(folders))
    first = pool.pool_with_sources(cfg, infos)
    n = per_call = len(scans)  # one scan per pool folder
    assert n and pool.pool_with_sources(cfg, infos) == first and len(scans) == n  # not scanned again
    (copy_root / ".fewshot_cache" / "entry.u8").write_bytes(b"0")  # a cache write is no change of the pool
    assert pool.pool_with_sources(cfg, infos) == first and len(scans) == n
    new = copy_root / "unlabeled" / dataset_names[0] / "new.png"
    shutil.copy(first[0][0], new)
    paths, ids, _, _ = pool.pool_with_sources(cfg, infos)
    assert len(scans) > n and new in paths and len(paths) == len(first[0]) + 1
    # ROOT/unlabeled/<dataset> as a link is scanned through, but os.walk does not stamp its contents: no memo then
    elsewhere = copy_root.parent / "elsewhere"
    (copy_root / "unlabeled" / dataset_names[0]).rename(elsewhere)
    (copy_root / "unlabeled" / dataset_names[0]).symlink_to(elsewhere)
    for folder in [copy_root, *(p for p in copy_root.rglob("*") if p.is_dir() and not p.is_symlink())]:
        os.utime(folder, (1e9, 1e9))
    n = len(scans)
    pool.pool_with_sources(cfg, infos)
    shutil.copy(first[0][0], elsewhere / "through_the_link.png")
    os.utime(elsewhere, (1e9, 1e9))
    paths = pool.pool_with_sources(cfg, infos)[0]
    assert len(scans) == n + 2 * per_call and any(p.name == "through_the_link.png" for p in paths)

    monkeypatch.setattr(pool_scan, "SCAN_NOTE_S", 0.0)
    capfd.readouterr()
    pool_scan.find_unlabeled_images([copy_root / "unlabeled"])
    assert "note: scanning the unlabeled pool" in capfd.readouterr().err


def test_sub_folders_beside_a_class_s_images_are_named_not_silently_left_out(copy_root, dataset_names, capsys):
    """Held-out data with train/<class>/{a.png, nested/b.png} lost the nested images without a word."""
    cls = next(p for p in sorted((copy_root / dataset_names[0] / "train").iterdir()) if p.is_dir())
    nested = cls / "nested" / "deeper"
    nested.mkdir(parents=True)
    moved = sorted(cls.glob("*.png"))[0]
    shutil.move(str(moved), nested / moved.name)
    infos = scan_root(copy_root)
    assert all(p.parent == cls for p, _ in infos[0].train if p.parent.name == cls.name)
    err = capsys.readouterr().err
    assert f"warning: {cls}: sub-folder(s) nested not read" in err and "move them up" in err


def test_a_missing_val_folder_says_what_val_is_for(copy_root, dataset_names):
    shutil.rmtree(copy_root / dataset_names[0] / "val")
    with pytest.raises(DataLayoutError, match=r"missing split folder 'val' \(the labelled images that choose"):
        scan_root(copy_root)


# ------------------------------------------------------------------ a new user's near-misses

def test_a_dataset_folder_given_as_the_root_is_refused_with_its_parent(copy_root, dataset_names, capsys):
    """`--data ROOT/digits` took train/, val/ and test/ for three datasets: six "missing split folder" problems."""
    ds = copy_root / dataset_names[0]
    with pytest.raises(UserError) as info:
        list_datasets(ds)
    message = str(info.value)
    assert not isinstance(info.value, DataLayoutError) and "missing split folder" not in message
    assert "looks like a dataset folder itself" in message and "test/, train/ and val/" in message
    assert f"--data {copy_root} --datasets {dataset_names[0]}" in message, message
    rc, _, err = cli(capsys, *train_argv(ds, copy_root.parent / "out"))
    assert rc == 2 and err.count("error:") == 1 and f"Pass its parent instead: --data {copy_root}" in err, err
    assert not (copy_root.parent / "out").exists()
    # a dataset named like a split, holding its own splits, is still a dataset
    shutil.copytree(copy_root / dataset_names[1], copy_root / "test")
    assert "test" in list_datasets(copy_root)


def test_a_split_folder_given_as_the_root_is_refused_with_the_root(copy_root, dataset_names, capsys):
    """`--data ROOT/digits/train` took every class folder for a dataset: two "missing split folder" lines a class."""
    ds = copy_root / dataset_names[0]
    with pytest.raises(UserError) as info:
        list_datasets(ds / "train")
    message = str(info.value)
    assert not isinstance(info.value, DataLayoutError) and "missing split folder" not in message
    assert f"the train split of the dataset {dataset_names[0]!r}" in message, message
    assert f"Pass --data {copy_root} --datasets {dataset_names[0]}" in message, message
    rc, _, err = cli(capsys, *train_argv(ds / "val", copy_root.parent / "out"))
    assert rc == 2 and err.count("error:") == 1 and f"--data {copy_root} --datasets" in err, err
    assert not (copy_root.parent / "out").exists()
    # a root that happens to be named like a split, holding real datasets, is still a root
    shutil.copytree(copy_root, copy_root.parent / "train")
    assert dataset_names[0] in list_datasets(copy_root.parent / "train")


def test_stray_split_named_folders_beside_a_real_dataset_are_passed_over_not_refused(copy_root, dataset_names):
    """A root with a real dataset and stray train/ and val/ folders (empty, or with images) was refused as "a
    dataset folder itself", with the advice `--data . --datasets ROOT`, which is wrong."""
    for split in ("train", "val"):
        (copy_root / split).mkdir()
    assert dataset_names[0] in list_datasets(copy_root)
    shutil.copytree(copy_root / dataset_names[0] / "train", copy_root / "train", dirs_exist_ok=True)
    assert dataset_names[0] in list_datasets(copy_root)


def test_images_directly_in_a_split_are_one_problem_per_folder_with_a_note_on_the_labels_file(copy_root,
                                                                                              dataset_names):
    """ROOT/ds/train/*.png with ROOT/ds/train.csv: one "image directly in the split folder" line per image (300 in
    the walkthrough, 50 shown), and no word on why the CSV file is not used."""
    ds = copy_root / dataset_names[0]
    for split in ("train", "val"):
        for image in sorted((ds / split).glob("*/*.png")):
            image.rename(ds / split / f"{image.parent.name}_{image.name}")
        for folder in (ds / split).iterdir():
            if folder.is_dir():
                folder.rmdir()
        (ds / f"{split}.csv").write_text("file,label\n")
    with pytest.raises(DataLayoutError) as info:
        scan_root(copy_root, datasets=[dataset_names[0]])
    problems = info.value.problems
    assert len(problems) == 2, problems
    one_problem(problems, ds / "train", "40 image(s) directly in the split folder", "train/<class>/<image>")
    one_problem(problems, ds / "val", "30 image(s) directly in the split folder")
    notes = info.value.hints
    assert len(notes) == 1 and f"{ds / 'train.csv'}, {ds / 'val.csv'}: labels are never read from a file" in notes[0]
    assert "test_labels.json" in notes[0] and "--split test" in notes[0]


def test_a_labels_file_beside_an_images_folder_is_named_in_a_note(copy_root, dataset_names):
    """ROOT/ds/labels.csv with ROOT/ds/images/*.png: "missing split folder train/val" and nothing about the CSV."""
    ds = copy_root / "csv_ds"
    (ds / "images").mkdir(parents=True)
    for image in sorted((copy_root / dataset_names[0] / "train").glob("*/*.png"))[:5]:
        shutil.copy(image, ds / "images" / f"{image.parent.name}_{image.name}")
    (ds / "labels.csv").write_text("file,label\n")
    (ds / "README.txt").write_text("not labels")
    with pytest.raises(DataLayoutError) as info:
        scan_root(copy_root)
    assert len(info.value.problems) == 2 and all("missing split folder" in p for p in info.value.problems)
    assert [n.split(": labels are")[0] for n in info.value.hints] == [f"note: {ds / 'labels.csv'}"]
    assert "note:" in str(info.value).splitlines()[-1]


def test_no_labels_note_for_the_answer_key_or_a_readme(copy_root, dataset_names):
    """The answer key (SPEC's test_labels.json) sits in every demo dataset, a README in many: neither is a labels
    file that a layout problem should point at."""
    ds = copy_root / dataset_names[0]
    stray = sorted((ds / "train").glob("*/*.png"))[0]
    stray.rename(ds / "train" / "stray.png")
    (ds / "train" / "README.txt").write_text("x")
    assert (ds / "test_labels.json").is_file()
    with pytest.raises(DataLayoutError) as info:
        scan_root(copy_root)
    one_problem(info.value.problems, ds / "train" / "stray.png", "1 image(s) directly in the split folder")
    assert info.value.hints == [], info.value.hints


def test_numbered_class_folders_are_indexed_in_text_order_and_said(tmp_path, capfd):
    """Folders 0..10 are classes in ImageFolder's text order ('10' is index 2): a user reading the names as indices
    (or keying test_labels.json by them) was scored wrong without a word."""
    from PIL import Image

    from fewshot.data.layout import scan_root

    ds = tmp_path / "root" / "nums"
    for split in ("train", "val"):
        for c in range(11):
            (ds / split / str(c)).mkdir(parents=True)
            Image.new("L", (8, 8), c * 20).save(ds / split / str(c) / "a.png")
    (ds / "test").mkdir()
    Image.new("L", (8, 8)).save(ds / "test" / "1.png")
    info, = scan_root(tmp_path / "root")
    assert info.classes[:4] == ("0", "1", "10", "2")
    assert {p.parent.name: label for p, label in info.train}["10"] == 2
    err = capfd.readouterr().err
    assert "index 2 is folder '10', not '2'" in err and "ImageFolder" in err
    for c in range(11):  # zero-padded: both orders agree, nothing to say
        (ds / "train" / str(c)).rename(ds / "train" / f"{c:02d}")
        (ds / "val" / str(c)).rename(ds / "val" / f"{c:02d}")
    scan_root(tmp_path / "root")
    assert "class folders are numbers" not in capfd.readouterr().err
    from fewshot.data.layout import numbered_classes_note

    assert numbered_classes_note("d", ("1", "10", "²")) is None  # digit-like, not a number: int() would fail


def test_a_val_split_alone_does_not_say_numbered_indices_it_cannot_know(tmp_path, capfd):
    """eval and predict scan val alone: with class '1' missing from val the note said "index 0 is folder '10'",
    while the model (trained on '1', '10', '2') has '1' at 0. Only a scan holding train says the order."""
    from PIL import Image

    from fewshot.data.layout import scan_root

    ds = tmp_path / "root" / "nums"
    for split, names in (("train", ("1", "10", "2")), ("val", ("10", "2"))):
        for c in names:
            (ds / split / c).mkdir(parents=True)
            Image.new("L", (8, 8), int(c) * 20).save(ds / split / c / "a.png")
    (ds / "test").mkdir()
    Image.new("L", (8, 8)).save(ds / "test" / "1.png")
    scan_root(tmp_path / "root", splits=("val",))
    assert "class folders are numbers" not in capfd.readouterr().err
    scan_root(tmp_path / "root")  # with train the order is known: '1', '10', '2'
    assert "index 1 is folder '10', not '2'" in capfd.readouterr().err
