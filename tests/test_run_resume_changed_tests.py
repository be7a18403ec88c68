"""`fewshot run --resume` of a finished run whose data root gained or lost test images since said "finished
already" (exit 0) of a pred_all.json without the new ids. It is refused (exit 2) with the counts and the
`fewshot predict` command that predicts the images there now."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import unicodedata
from pathlib import Path

import pytest

from helpers.checks import run_main

BASE = ("--budget-minutes", "1", "--model", "test_resnet", "--img-size", "32", "--device", "cpu", "--no-progress",
        "run.report=false")


def _finish(root: Path, out: Path, monkeypatch, *extra) -> Path:
    """A run of ``root`` (settings_only_run) whose state says finished, with a pred_all.json of every test image it
    had, keyed by the dataset folders' names as a run writes it."""
    rc, _, err = run_main("run", "--data", root, "--out", out, *BASE, *extra)
    assert rc == 0, err
    monkeypatch.undo()
    from fewshot.data.layout import scan_root

    state = json.loads((out / "run_state.json").read_text())
    infos = scan_root(root, state["config"]["data"]["datasets"], splits=("train", "val", "test"))
    state["classes"] = {info.name: list(info.classes) for info in infos}
    state["finished"] = True
    (out / "run_state.json").write_text(json.dumps(state))
    (out / "summary.json").write_text(json.dumps({"seconds": 1.0}))
    pred = {"n_parameters": 1, **{info.root.name: {i: 0 for i, _ in info.test} for info in infos}}
    (out / "pred_all.json").write_text(json.dumps(pred))
    return out


@pytest.fixture
def finished(copy_root, tmp_path, settings_only_run, monkeypatch) -> Path:
    """A run of copy_root whose state says finished, with a pred_all.json of every test image it had."""
    return _finish(copy_root, tmp_path / "run", monkeypatch)


def _resume(root, out, *extra):
    return run_main("run", "--data", root, "--out", out, *BASE, "--resume", *extra)


def _test_images(root: Path, name: str) -> list[Path]:
    return sorted(p for p in (root / name / "test").iterdir() if p.is_file())


def test_a_finished_run_with_other_test_images_now_is_refused_with_the_predict_command(finished, copy_root,
                                                                                       dataset_names):
    rc, stdout, err = _resume(copy_root, finished)  # the same images: finished, as before
    assert rc == 0 and "finished already" in stdout, err
    first, second = dataset_names
    for k, image in enumerate(_test_images(copy_root, first)[:3]):
        shutil.copy(image, image.with_name(f"added{k}{image.suffix}"))
    _test_images(copy_root, second)[0].unlink()
    before = (finished / "pred_all.json").read_text()
    rc, stdout, err = _resume(copy_root, finished)
    assert rc == 2 and "finished already" not in stdout, err
    assert f"3 test images added ({first}: 3) and 1 test image removed ({second}: 1)" in err, err
    assert (f"`fewshot predict {finished} --data {copy_root} --out {finished / 'pred_all.json'}`" in err), err
    assert err.count("error:") == 1, err
    assert (finished / "pred_all.json").read_text() == before
    assert json.loads((finished / "run_state.json").read_text())["finished"] is True


def test_the_predict_command_keeps_the_runs_datasets_and_balance(finished, copy_root, dataset_names):
    first = dataset_names[0]
    state = json.loads((finished / "run_state.json").read_text())
    state["config"]["data"]["datasets"] = first
    state["config"]["run"]["balance"] = False  # YAML's bare off
    (finished / "run_state.json").write_text(json.dumps(state))
    image = _test_images(copy_root, first)[0]
    shutil.copy(image, image.with_name(f"new{image.suffix}"))
    rc, _, err = _resume(copy_root, finished, "--datasets", first, "run.balance=off")
    assert rc == 2 and f"1 test image added ({first}: 1)" in err, err
    assert f"--out {finished / 'pred_all.json'} --datasets {first} --balance off`" in err, err


def test_the_predict_command_names_a_dataset_starting_with_a_dash_as_its_option_takes_it(
        copy_root, tmp_path, dataset_names, settings_only_run, monkeypatch):
    """A dataset named -x was written `--datasets ./-x,b` (a path's form), which names no dataset."""
    first, second = dataset_names
    (copy_root / first).rename(copy_root / "-x")
    out = _finish(copy_root, tmp_path / "run", monkeypatch, f"--datasets=-x,{second}")
    image = _test_images(copy_root, "-x")[0]
    shutil.copy(image, image.with_name(f"new{image.suffix}"))
    rc, _, err = _resume(copy_root, out, f"--datasets=-x,{second}")
    assert rc == 2 and "1 test image added (-x: 1)" in err, err
    assert f"--out {out / 'pred_all.json'} --datasets=-x,{second}`" in err, err


def test_a_decomposed_folder_of_a_composed_name_is_compared_by_its_folder(copy_root, tmp_path, dataset_names,
                                                                         settings_only_run, monkeypatch):
    """pred_all.json is keyed by the folder's name: a run given `café` composed for a decomposed folder (macOS)
    found none of its datasets there and said "finished already" of predictions without the new test images."""
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    second = dataset_names[1]
    (copy_root / dataset_names[0]).rename(copy_root / nfd)
    out = _finish(copy_root, tmp_path / "run", monkeypatch, "--datasets", f"{nfc},{second}")
    assert nfd in json.loads((out / "pred_all.json").read_text())
    rc, stdout, err = _resume(copy_root, out, "--datasets", f"{nfc},{second}")
    assert rc == 0 and "finished already" in stdout, err
    image = _test_images(copy_root, nfd)[0]
    shutil.copy(image, image.with_name(f"new{image.suffix}"))
    rc, stdout, err = _resume(copy_root, out, "--datasets", f"{nfc},{second}")
    assert rc == 2 and "finished already" not in stdout, err
    assert f"1 test image added ({nfc}: 1)" in err, err


def test_the_printed_predict_command_brings_a_real_finished_run_up_to_date(copy_root, tmp_path, dataset_names):
    """The command the refusal prints, run as printed (a real tiny run, its final model), writes the run's
    pred_all.json with the new image, and the run resumes as finished again."""
    first = dataset_names[0]
    out = tmp_path / "run"
    short = ("--budget-minutes", "0.03", "--datasets", first, "--semi", "off", "train.batch_size=16")
    rc, _, err = run_main("run", "--data", copy_root, "--out", out, *BASE, *short)
    assert rc == 0, err
    image = _test_images(copy_root, first)[0]
    added = image.with_name(f"added{image.suffix}")
    shutil.copy(image, added)
    rc, stdout, err = _resume(copy_root, out, *short)
    assert rc == 2 and f"1 test image added ({first}: 1)" in err and "finished already" not in stdout, err
    command = re.search(r"`(fewshot predict [^`]*)`", err).group(1)
    rc, _, perr = run_main(*shlex.split(command)[1:])
    assert rc == 0, perr
    assert "added" in json.loads((out / "pred_all.json").read_text())[first]
    rc, stdout, err = _resume(copy_root, out, *short)
    assert rc == 0 and "finished already" in stdout, err
