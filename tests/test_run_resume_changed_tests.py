"""`fewshot run --resume` of a finished run whose data root gained or lost test images since said "finished
already" (exit 0) of a pred_all.json without the new ids. It is refused (exit 2) with the counts and the
`fewshot predict` command that predicts the images there now."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers.checks import run_main

BASE = ("--budget-minutes", "1", "--model", "test_resnet", "--img-size", "32", "--device", "cpu", "--no-progress",
        "run.report=false")


@pytest.fixture
def finished(copy_root, tmp_path, settings_only_run, monkeypatch) -> Path:
    """A run of copy_root whose state says finished, with a pred_all.json of every test image it had."""
    root = copy_root
    out = tmp_path / "run"
    rc, _, err = run_main("run", "--data", root, "--out", out, *BASE)
    assert rc == 0, err
    monkeypatch.undo()
    from fewshot.data.layout import scan_root

    infos = scan_root(root, splits=("train", "val", "test"))
    state = json.loads((out / "run_state.json").read_text())
    state["classes"] = {info.name: list(info.classes) for info in infos}
    state["finished"] = True
    (out / "run_state.json").write_text(json.dumps(state))
    (out / "summary.json").write_text(json.dumps({"seconds": 1.0}))
    pred = {"n_parameters": 1, **{info.name: {i: 0 for i, _ in info.test} for info in infos}}
    (out / "pred_all.json").write_text(json.dumps(pred))
    return out


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
