"""run.pseudo_precision above what the val split can certify: the estimate (right + 1) / (k + 2) of a class with n val
images never exceeds (n + 1) / (n + 2) (0.8 at the fixture's 3 per class), so 0.99 made every threshold inf and every
later round trained on the labelled images again, silently. `fewshot run` now refuses it at start-up where no class
can reach it and warns where only some can."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from fewshot.errors import UserError
from helpers.checks import run_main


def test_the_cap_is_the_precision_the_thresholds_compare():
    """At the cap a class of n right val images opens; just above it none does (the hunt's repro: 20 per class)."""
    from fewshot.train.semi import calibrated_thresholds, certifiable_precision, val_images_needed

    targets = torch.arange(10).repeat_interleave(20)
    probs = torch.full((200, 10), 1e-4)
    probs[torch.arange(200), targets] = 0.999
    cap = float(certifiable_precision(torch.tensor(20)))
    assert round(cap, 3) == 0.955
    assert torch.isfinite(calibrated_thresholds(probs, targets, cap)).all()
    assert torch.isinf(calibrated_thresholds(probs, targets, 0.96)).all()
    assert val_images_needed(0.96) == 23 and val_images_needed(0.8) == 3 and val_images_needed(0.99) == 98


def stop_after_the_check(monkeypatch):
    """The start-up up to the model's choice, which comes after the check: no image is decoded."""
    from fewshot import pipeline

    def stop(self):
        raise UserError("stopped by the test after the settings' checks")

    monkeypatch.setattr(pipeline.PipelineRun, "choose_model", stop)


def start(root, out, precision):
    return run_main("run", "--data", root, "--out", out, "--budget-minutes", "0.1", "--model", "test_resnet",
                    "--img-size", "32", "--device", "cpu", "--no-progress", "--semi", "pseudo",
                    f"run.pseudo_precision={precision}")


def test_a_precision_no_class_can_reach_is_refused_naming_the_cap(digits_root, dataset_names, tmp_path):
    out = tmp_path / "run"
    rc, stdout, err = start(digits_root, out, 0.99)
    assert rc == 2, stdout + err
    assert "run.pseudo_precision=0.99 is more than this val split can certify for any class" in err
    for name in dataset_names:  # per dataset, the highest it can certify: 3 val images, 4 / 5
        assert f"{name}: at most 0.800, 3 val images in its largest class" in err
    assert "Give run.pseudo_precision=0.8 or lower" in err and "needs 98 val images" in err
    assert not out.exists()  # refused before the run folder was started


def test_a_precision_only_some_classes_can_reach_is_warned_once(copy_root, dataset_names, tmp_path, monkeypatch):
    stop_after_the_check(monkeypatch)
    val = copy_root / dataset_names[0] / "val" / "0"
    for i, image in enumerate(sorted(val.iterdir())):  # 3 more: 6 val images of class 0, 6 / 7 = 0.857
        shutil.copy(image, val / f"copy{i}{image.suffix}")
    rc, stdout, err = start(copy_root, tmp_path / "run", 0.85)
    assert rc == 2 and "stopped by the test" in err, stdout + err
    assert stdout.count("run.pseudo_precision=0.85 is more than this val split can certify for some classes") == 1
    assert f"{dataset_names[0]}: 9 of 10 classes (1, 2, 3, ...)" in stdout
    assert f"{dataset_names[1]}: 10 of 10 classes;" not in stdout  # all of a dataset: no names listed
    assert f"{dataset_names[1]}: 10 of 10 classes)" in stdout
    assert "run.pseudo_precision=0.8 or lower keeps every class with val images open" in stdout


@pytest.mark.parametrize("precision", [0.8, 0.0])
def test_a_precision_the_val_split_can_certify_passes_quietly(digits_root, tmp_path, monkeypatch, precision):
    stop_after_the_check(monkeypatch)
    rc, stdout, err = start(digits_root, tmp_path / "run", precision)
    assert rc == 2 and "stopped by the test" in err, stdout + err
    assert "pseudo_precision" not in stdout + err.replace("stopped by the test", "")


def test_a_resumed_run_is_warned_not_refused(digits_root, capsys):
    """A run must repeat its settings on --resume: refusing would leave it no way on."""
    from fewshot.data.layout import scan_root
    from fewshot.pipeline import PipelineRun

    infos = scan_root(digits_root, None, splits=("train", "val", "test"))
    cfg = {"data": {"root": str(digits_root), "unlabeled": None}}
    run = SimpleNamespace(semi="pseudo", r={"pseudo_precision": 0.99}, infos=infos, state=object(), cfg=cfg)
    PipelineRun.check_pseudo_precision(run)
    assert "[run] warning: run.pseudo_precision=0.99 is more than" in capsys.readouterr().out
    with pytest.raises(UserError, match="certify for any class"):
        PipelineRun.check_pseudo_precision(SimpleNamespace(**{**vars(run), "state": None}))


def test_a_run_without_a_pool_is_not_refused_over_the_precision(copy_root, tmp_path, monkeypatch):
    """Without an unlabeled pool self-training switches itself off (check_self_training_pool), so nothing reads
    run.pseudo_precision: the run was refused over it all the same."""
    stop_after_the_check(monkeypatch)
    shutil.rmtree(copy_root / "unlabeled")
    rc, stdout, err = start(copy_root, tmp_path / "run", 0.99)
    assert rc == 2 and "stopped by the test" in err, stdout + err
    assert "pseudo_precision" not in stdout + err
