"""`fewshot run` end to end on tiny real data, in a budget: the default (fine-tune -> pseudo-label the
pool -> fine-tune on both -> predict), with --pretrain (MoCo -> export -> fine-tune) and the baseline.

Checks what the run leaves behind (pred_all.json against the test folders, summary stages, the
planned time-based schedules, the measured defaults), not wall-clock figures: a planned stage gets at
least a few steps, so a 0.03-minute budget gives short stages (the suite lets any budget hold the least run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from fewshot.errors import UserError
from helpers.checks import run_main
from helpers.run_patch import patch_pipeline
from test_cli import test_ids


def _run(root: Path, out: Path, *extra: str, minutes: str = "0.03") -> dict:
    """A finished `fewshot run` in ``minutes``: 0.03 where the run's length is not the subject (a run spends its
    whole budget in wall time; the suite lets any budget hold the least run, each stage its floor of steps)."""
    rc, _, err = run_main("run", "--data", root, "--out", out, "--budget-minutes", minutes, "--model", "test_resnet",
                          "--device", "cpu", "--no-progress", "run.report=false", "run.pretrain_batch_size=16",
                          "train.batch_size=16", *extra)
    assert rc == 0, err
    return json.loads((out / "summary.json").read_text())


def _check_pred_all(root: Path, out: Path) -> None:
    pred = json.loads((out / "pred_all.json").read_text())
    assert isinstance(pred.pop("n_parameters"), int)
    names = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
    assert sorted(pred) == names
    for name in names:
        n_classes = len([p for p in (root / name / "train").iterdir() if p.is_dir()])
        assert set(pred[name]) == test_ids(root, name)
        assert all(isinstance(v, int) and 0 <= v < n_classes for v in pred[name].values())


@pytest.fixture(scope="module")
def moco_run(digits_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "moco"
    return out, _run(digits_root, out, "--pretrain", "run.semi_method=off")  # YAML reads `off` as false


def test_run_pretrains_exports_finetunes_and_predicts(digits_root, moco_run):
    out, summary = moco_run
    assert set(summary["stages"]) == {"pretrain", "finetune"}
    assert summary["stages"]["pretrain"]["epochs"] > 0 and summary["stages"]["finetune"]["epochs"] > 0
    assert set(summary["stages"]["pretrain"]["knn_acc1"]) >= {"mean"}
    assert (out / "backbone.safetensors").is_file()
    _check_pred_all(digits_root, out)
    scores = summary["metrics"]["pred_all_score"]  # scored against the answer keys next to the test folders
    assert set(scores) == set(json.loads((out / "pred_all.json").read_text())) - {"n_parameters"}
    # time-based stages stop mid-epoch: best_epoch must still name the log row of the best evaluation
    rows = [json.loads(line) for line in (out / "finetune" / "log.jsonl").read_text().splitlines()]
    best = max(reversed([r for r in rows if isinstance(r.get("score"), (int, float))]), key=lambda r: r["score"])
    assert json.loads((out / "finetune" / "metrics.json").read_text())["best_epoch"] == best["epoch"]


def test_run_plans_time_based_stages_with_the_measured_defaults(moco_run):
    out, _ = moco_run
    pre = yaml.safe_load((out / "pretrain" / "config.yaml").read_text())
    fine = yaml.safe_load((out / "finetune" / "config.yaml").read_text())
    for cfg in (pre, fine):
        assert cfg["sched"]["time_based"] is True
        assert cfg["train"]["budget_minutes"] > 0 and cfg["train"]["epochs"] >= 8
    assert pre["moco"]["knn_every"] >= 1 and fine["train"]["eval_every"] >= 1
    assert pre["moco"]["momentum"] == 0.99 and pre["optim"]["name"] == "sgd"
    assert fine["semi"]["method"] == "off"
    assert fine["model"]["weights"].endswith("backbone.safetensors") and fine["optim"]["lr"] == 2e-3


def test_run_baseline_is_supervised_from_random_init_on_the_labelled_images(digits_root, tmp_path):
    out = tmp_path / "scratch"
    summary = _run(digits_root, out, "--baseline")
    assert set(summary["stages"]) == {"finetune"} and not (out / "pretrain").exists()
    fine = yaml.safe_load((out / "finetune" / "config.yaml").read_text())
    assert fine["model"]["weights"] is None and fine["optim"]["lr"] == 4e-3  # chosen on val
    assert fine["semi"]["method"] == "off" and not list(out.glob("pseudo_labels*.json"))
    _check_pred_all(digits_root, out)
    # the test predictions are class-balanced where val allows it (run.balance=auto), as `fewshot predict` does:
    # not with the 3 val images per class of this root (auto decides on 10 of each), and summary.json says why
    balanced = summary["balanced_prediction"]
    assert balanced["setting"] == "auto" and set(balanced["datasets"]) == set(summary["metrics"]["pred_all_score"])
    assert all(d["used"] is False and d["why"].startswith("val holds as few as 3 images of a class")
               for d in balanced["datasets"].values()), balanced
    rc, _, err = run_main("predict", out / "finetune", "--data", digits_root, "--out", tmp_path / "p.json",
                          "--device", "cpu")
    assert rc == 0, err
    assert json.loads((tmp_path / "p.json").read_text()) == json.loads((out / "pred_all.json").read_text())
    from fewshot.report.build import build_report  # the report says which datasets' predictions were balanced

    page = Path(build_report([out], tmp_path / "rep", data=str(digits_root), device="cpu", log=lambda *a: None))
    assert "the test predictions (pred_all.json) are" in page.read_text()


def test_default_run_is_self_training_on_the_pool_without_moco(digits_root, tmp_path, any_confidence):
    out = tmp_path / "pseudo"
    summary = _run(digits_root, out, "run.pseudo_rounds=3")  # the defaults (measured best on val), 3 rounds
    stages = summary["stages"]
    assert list(stages) == ["finetune_labelled", "finetune_round2", "finetune"] and not (out / "pretrain").exists()
    assert (out / "finetune_round2" / "checkpoints" / "best.pt").is_file()  # round 2, relabelled after it
    # each round's entry: the pseudo-labels it trained on (round 2 and round 3's), its val score for the guard
    assert "pseudo_labels" not in stages["finetune_labelled"]
    for k, name in ((2, "finetune_round2"), (3, "finetune")):
        record = json.loads((out / f"pseudo_labels_round{k}.json").read_text())
        assert stages[name]["pseudo_labels"] == {n: v for n, v in record.items() if n not in ("images", "pool_key")}
    assert all(isinstance(stages[n]["val_mean_acc1"], float) for n in stages)
    assert (out / "pseudo_labels_round2.json").is_file()
    record = json.loads((out / "pseudo_labels_round3.json").read_text())
    for name, kept in record["datasets"].items():
        pool = len(list((digits_root / "unlabeled" / name).rglob("*.png")))
        assert kept["pool"] == pool and 0 < kept["kept"] <= pool // 2 + 10, name  # at most half, per-class rounding
        assert 0 < kept["mean_confidence"] <= 1
    per_image = record["images"]  # which pool file became which class
    assert len(per_image) == sum(k["kept"] for k in record["datasets"].values())
    assert record["targets"] == "hard"
    for entry in per_image:
        path = Path(entry["path"])
        assert path.is_file() and path.parent.parent.name == "unlabeled" and path.parent.name == entry["dataset"]
        assert entry["source_known"] is True
        assert entry["class"] in {p.name for p in (digits_root / entry["dataset"] / "train").iterdir()}
        assert 0 < entry["confidence"] <= 1
    first = yaml.safe_load((out / "finetune_labelled" / "config.yaml").read_text())
    second = yaml.safe_load((out / "finetune" / "config.yaml").read_text())
    assert first["model"]["weights"] is None and first["train"]["budget_minutes"] > 0
    assert second["train"]["budget_minutes"] > 0
    # the best round on val (round 2 too, since the guard compares every earlier round)
    assert summary["predicted_with"] in ("finetune", "finetune_labelled", "finetune_round2")
    val = {n: stages[n]["val_mean_acc1"] for n in stages}
    assert val[summary["predicted_with"]] == max(val.values()), val
    _check_pred_all(digits_root, out)


def test_a_flat_pool_in_root_unlabeled_is_used_for_self_training(copy_root, tmp_path, any_confidence):
    """ROOT/unlabeled/*.png (no per-dataset folders) used to be ignored: "no unlabeled pool", self-training off.
    A broken pool image is skipped (data.skip_bad_unlabeled): it used to stop the run."""
    import shutil

    moved = 0
    for folder in [p for p in (copy_root / "unlabeled").iterdir() if p.is_dir()]:
        for image in sorted(folder.rglob("*.png")):
            image.rename(copy_root / "unlabeled" / f"{folder.name}_{moved}.png")
            moved += 1
        shutil.rmtree(folder)
    (copy_root / "unlabeled" / "broken.png").write_bytes(b"\x89PNG truncated")  # skipped, not a stop
    out = tmp_path / "flat"
    summary = _run(copy_root, out, minutes="0.1")  # a teacher above the chance floor (no any_confidence here)
    assert set(summary["stages"]) == {"finetune_labelled", "finetune"}  # self-training ran
    record = json.loads((out / "pseudo_labels_round2.json").read_text())
    assert record["unknown_source_pool"] == moved > 0 and "unknown source" in record["source"]
    assert record["pool_size"] == record["pool_labelled"] == moved  # a small pool is labelled whole
    assert record["images"] and not any(entry["source_known"] for entry in record["images"])
    for kept in record["datasets"].values():  # every kept image came from the unknown-source part of the pool
        assert kept["pool"] == 0 and kept["kept_from_unknown_source"] == kept["kept"]
    skipped = json.loads((out / "skipped_images.json").read_text())  # the run says which pool file it left out
    assert [entry["path"] for entry in skipped] == [str(copy_root / "unlabeled" / "broken.png")]
    assert skipped[0]["reason"]
    _check_pred_all(copy_root, out)


def test_run_takes_unlabeled_folders_as_pretrain_does(copy_root, tmp_path):
    rc, _, err = run_main("run", "--data", copy_root, "--out", tmp_path / "r", "--unlabeled", tmp_path / "nowhere",
                          "--device", "cpu", "--no-progress")
    assert rc == 2 and "nowhere' does not exist" in err, err
    rc, _, err = run_main("run", "--data", copy_root, "--out", tmp_path / "r", "--unlabeled", "train.seed=1")
    assert rc == 2 and "put key=value words before --unlabeled" in err, err


def test_self_training_never_pseudo_labels_the_labelled_training_images(copy_root):
    import shutil

    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.semi import load_pool

    shutil.rmtree(copy_root / "unlabeled" / "digits")  # digits falls back to its train images as its pool
    cfg = resolve(flags={"data.root": str(copy_root)})
    infos = scan_root(copy_root, None, splits=("train", "val"))
    with_train, ids_all, _, _, _ = load_pool(cfg, infos, 16)[:5]
    without, ids, paths, source, _ = load_pool(cfg, infos, 16, exclude_train=True)[:5]
    assert len(paths) == len(without) and all(Path(p).is_file() for p in paths)
    assert "digits: no pool (its train images are labelled)" in source  # it said "digits: train images"
    digits = [i for i, info in enumerate(infos) if info.name == "digits"][0]
    assert int((ids_all == digits).sum()) == len(infos[digits].train)
    assert int((ids == digits).sum()) == 0 and len(without) == len(with_train) - len(infos[digits].train)
    # a pool folder that holds val images (spelled with another path): none of them joins the pool at all
    cfg["data"]["unlabeled"] = [str(copy_root / "digits" / ".." / "digits")]
    images, ids, paths, _, _ = load_pool(cfg, infos, 16)[:5]
    assert len(images) == len(infos[digits].train) and bool((ids == -1).all())
    assert not any("/val/" in p or "/test/" in p for p in paths)
    assert len(load_pool(cfg, infos, 16, exclude_train=True)[0]) == 0
    cfg["data"]["unlabeled"] = [str(copy_root / "digits" / ".." / "digits" / "val")]
    with pytest.raises(UserError, match="val/test image"):
        load_pool(cfg, infos, 16)


def test_pool_paths_stay_aligned_with_images_when_a_bad_file_is_skipped(copy_root):
    import numpy as np

    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.semi import load_pool

    cfg = resolve(flags={"data.root": str(copy_root), "data.skip_bad_images": True})
    infos = scan_root(copy_root, None, splits=("train", "val"))
    before = load_pool(cfg, infos, 16)
    bad = Path(before.paths[1])
    bad.write_bytes(b"not an image")
    pool = load_pool(cfg, infos, 16)
    assert len(pool.paths) == len(pool.images) == len(pool.dataset_ids) == len(before.paths) - 1
    assert str(bad) not in pool.paths
    # the image at each position is the decode of the path at that position
    at = {p: i for i, p in enumerate(before.paths)}
    for i in (0, 1, len(pool.paths) - 1):
        assert np.array_equal(pool.images[i].numpy(), before.images[at[pool.paths[i]]].numpy())


def test_run_flags_that_contradict_each_other_are_refused(digits_root, tmp_path):
    for flags in (["--pretrain", "--baseline"], ["--baseline", "--semi", "pseudo"]):
        rc, _, err = run_main("run", "--data", digits_root, "--out", tmp_path / "x", "--budget-minutes", "0.2", *flags)
        assert rc == 2 and "--baseline" in err, flags


def test_run_with_calibrated_thresholds_and_soft_targets(digits_root, tmp_path, any_confidence):
    """The two measured-but-off self-training options (docs/recipes.md) still work end to end."""
    out = tmp_path / "calibrated"
    # precision 0.3: a 12-second round 1 on a loaded machine (tests run in parallel) reached too little val
    # precision for 0.5 to open any class
    _run(digits_root, out, "run.pseudo_precision=0.3", "run.pseudo_targets=soft", "run.pseudo_keep=1.0", minutes="0.2")
    record = json.loads((out / "pseudo_labels_round2.json").read_text())
    assert record["precision"] == 0.3 and record["targets"] == "soft"
    assert sum(k["kept"] for k in record["datasets"].values()) > 0  # calibration closed no more than it must
    assert any(t is not None for k in record["datasets"].values() for t in k["class_thresholds"].values())
    for name, kept in record["datasets"].items():
        thresholds = kept["class_thresholds"]  # one per class; null: val says the class is not precise enough
        assert set(thresholds) == {p.name for p in (digits_root / name / "train").iterdir()}
        assert all(t is None or 0 < t <= 1 for t in thresholds.values())
        chosen = [e for e in record["images"] if e["dataset"] == name]
        assert len(chosen) == kept["kept"]
        for e in chosen:  # every kept image clears its class's threshold
            assert thresholds[e["class"]] is not None and e["confidence"] >= thresholds[e["class"]] - 1e-4
    second = yaml.safe_load((out / "finetune" / "config.yaml").read_text())
    assert second["run"]["pseudo_targets"] == "soft"
    _check_pred_all(digits_root, out)


@pytest.mark.parametrize("bad", ["run.semi_method=magic", "run.pseudo_rounds=1", "run.pseudo_share=1.0",
                                 "run.pseudo_keep=0", "run.pseudo_precision=1.0", "run.pseudo_targets=fuzzy",
                                 "run.pretrain_batch_size=12", "run.queue_size=4"])
def test_run_refuses_bad_settings_before_spending_the_budget(digits_root, tmp_path, bad):
    """The MoCo batch against its queue and shuffle-BN groups was checked by the stage, in a started run folder
    that then neither a rerun nor --resume could use."""
    out = tmp_path / "x"
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "0.2", "--pretrain",
                          "--model", "test_resnet", "--img-size", "16", bad)
    assert rc == 2 and bad.split("=")[0] in err, err
    assert not (out / "pretrain").exists() and not (out / "run_state.json").exists()  # refused before the run


def test_run_refuses_torchrun(digits_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, _, err = run_main("run", "--data", digits_root, "--out", tmp_path / "x", "--budget-minutes", "0.2")
    assert rc == 2 and "torchrun" in err


@pytest.mark.parametrize("minutes", ["0", "-1", "nan", "inf"])
def test_run_rejects_a_budget_that_is_not_a_positive_number(digits_root, tmp_path, minutes):
    """nan passed `minutes <= 0` and planned a run of nothing; inf crashed with exit 1 after writing files."""
    rc, _, err = run_main("run", "--data", digits_root, "--out", tmp_path / "x", "--budget-minutes", minutes)
    assert rc == 2 and "--budget-minutes" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("damage, method", [("no test folder", []), ("undecodable test image", []),
                                           ("undecodable pool image", []),
                                           ("undecodable pool image", ["--semi", "fixmatch"]),
                                           ("undecodable pool image", ["--pretrain", "--semi", "off"])])
def test_run_checks_the_test_split_before_spending_the_budget(copy_root, tmp_path, damage, method):
    """The MoCo and FixMatch stages found a bad pool file only once the run folder was started: the same
    command then wanted --resume."""
    import shutil

    name = sorted(p.name for p in copy_root.iterdir() if (p / "train").is_dir())[0]
    if damage == "no test folder":
        shutil.rmtree(copy_root / name / "test")
    elif damage == "undecodable test image":  # decoded at start-up now, no longer after the budget
        sorted((copy_root / name / "test").iterdir())[0].write_bytes(b"not an image")
    else:  # self-training's pool: it stopped the run after round 1 (skipped by default now: made strict here)
        sorted((copy_root / "unlabeled" / name).rglob("*.png"))[0].write_bytes(b"")
    strict = ["data.skip_bad_unlabeled=false"] if damage == "undecodable pool image" else []
    out = tmp_path / "x"
    rc, _, err = run_main("run", "--data", copy_root, "--out", out, "--budget-minutes", "0.2", "--model",
                          "test_resnet", "--device", "cpu", "--no-progress", *strict, *method)
    assert rc == 2 and name in err and "Traceback" not in err, err
    assert not any(out.glob("finetune*")) and not (out / "pretrain").exists()  # refused before training
    assert not (out / "run_state.json").exists()


def test_run_predicts_when_an_answer_key_cannot_score(copy_root, tmp_path):
    """SPEC: the answer key is never needed to predict. A key that cannot score (one image missing here;
    also not JSON, or a class out of range) used to stop `fewshot run` before training: no pred_all.json
    at all. Now it is a warning, every test image is predicted, metrics.json holds the val scores of every
    dataset, and the datasets whose keys can score are scored on test (summary.json)."""
    names = sorted(p.name for p in copy_root.iterdir() if (p / "train").is_dir())
    key_file = copy_root / names[0] / "test_labels.json"
    key = json.loads(key_file.read_text())
    key.pop(next(iter(key)))
    key_file.write_text(json.dumps(key))
    out = tmp_path / "x"
    rc, stdout, err = run_main("run", "--data", copy_root, "--out", out, "--budget-minutes", "0.03", "--model",
                               "test_resnet", "--device", "cpu", "--no-progress", "run.semi_method=off",
                               "run.report=false")
    assert rc == 0, err
    assert "warning" in stdout and str(key_file) in stdout and "not scored" in stdout
    _check_pred_all(copy_root, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["datasets"].keys() == set(names) and metrics["split"] == "val"
    test = json.loads((out / "summary.json").read_text())["metrics"]["test"]
    assert test["datasets"].keys() == {names[1]} and test["not_scored"] == [names[0]]


def test_answer_keys_may_name_classes_by_folder_name(copy_root):
    from fewshot.errors import UserError
    from fewshot.eval.predict import load_answer_key

    key_file = copy_root / "k.json"
    key_file.write_text(json.dumps({"0": "b", "1": 0, "02": "c"}))
    assert load_answer_key(key_file, class_names=["a", "b", "c"]) == {"0": 1, "1": 0, "2": 2}
    key_file.write_text(json.dumps({"0": "z"}))
    with pytest.raises(UserError, match=r"a whole number in 0..2 or one of the model's class names \(a, b, c\)"):
        load_answer_key(key_file, class_names=["a", "b", "c"])
    with pytest.raises(UserError, match="cannot be read as JSON"):
        key_file.write_text("{not json")
        load_answer_key(key_file)
    # a hunt: {"0": "1"} with classes Cat/cat said "a class must be a whole number in 0..1", which 1 is
    key_file.write_text(json.dumps({"0": "1"}))
    with pytest.raises(UserError, match=r"A number in quotes is read as a class name: write the index without "
                                        r"quotes \(1\), or a name such as Cat, cat\."):
        load_answer_key(key_file, class_names=["Cat", "cat"])
    assert load_answer_key(key_file, class_names=["0", "1"]) == {"0": 1}  # where "1" is a folder's name, it counts


def test_auto_img_size_passes_over_an_unreadable_image(copy_root):
    """A corrupt file is the image loader's to report (or skip with data.skip_bad_images), not a traceback here."""
    import torch

    from fewshot.data.layout import scan_root
    from fewshot.run_checks import auto_img_size

    infos = scan_root(copy_root, None, splits=("train", "val"))
    infos[0].train[0][0].write_bytes(b"this is not an image")
    assert auto_img_size(infos, torch.device("cpu"), 10.0)[0] == 32


def _large_images(root: Path) -> None:
    """Every train image of ``root`` as a 100x80 JPEG under its own name (the sizes auto_img_size reads)."""
    from PIL import Image

    for path in root.glob("*/train/*/*"):
        with Image.open(path) as im:
            im.convert("RGB").resize((100, 80)).save(path, format="JPEG")


def test_auto_img_size_keeps_large_images_at_32_px_on_cpu_under_five_minutes(copy_root):
    """100x80 images trained at 64 px on CPU at any budget: at 1 minute that was 9 s of training and 19.7 % test
    against 45.1 % at 32 px (docs/recipes.md measured 64 px worse at 3 minutes, better from 5). GPUs keep 160."""
    from fewshot.data.layout import scan_root
    from fewshot.run_checks import auto_img_size

    _large_images(copy_root)
    infos = scan_root(copy_root, None, splits=("train", "val"))
    cpu = torch.device("cpu")
    size, why = auto_img_size(infos, cpu, 1.0)
    assert size == 32 and why == ("chosen for these images, device and the 1-minute budget: 64 px costs 4x per step "
                                  "and pays on CPU from --budget-minutes 5; --img-size 64 to override")
    assert auto_img_size(infos, cpu, 4.9)[0] == 32
    assert auto_img_size(infos, cpu, 5.0) == (64, "chosen for these images and device; --img-size to change")
    assert auto_img_size(infos, torch.device("cuda"), 1.0)[0] == 160  # only judged by type: no GPU needed


@pytest.mark.parametrize("budget, want", [((), "64px on cpu (chosen for these images and device; "),
                                          (("--budget-minutes", "1"), "32px on cpu (chosen for these images, device "
                                                                      "and the 1-minute budget: 64 px costs")])
def test_run_chooses_the_image_size_from_its_budget_and_says_so(copy_root, tmp_path, monkeypatch, budget, want):
    """The budget reaches the choice: `fewshot run` without --budget-minutes plans 10 minutes (64 px on CPU),
    --budget-minutes 1 gets 32 px and the header says why. The start is stopped once the header is printed, before
    the images are decoded."""
    from fewshot.run_startup import StartupMixin

    def stop(run):
        raise UserError(f"stopped at {run.cfg['model']['img_size']} px")

    monkeypatch.setattr(StartupMixin, "decode_inputs", stop)
    _large_images(copy_root)
    rc, stdout, err = run_main("run", "--data", copy_root, "--out", tmp_path / "o", "--model", "test_resnet",
                               "--device", "cpu", "--no-progress", *budget)
    assert rc == 2 and "stopped at" in err, err
    assert f"[run] test_resnet at {want}" in stdout, stdout


def test_step_calibration_runs_on_the_tasks_device_not_where_the_model_was_built():
    """The tasks build their model on the CPU and the Engine moves it; the calibration runs before the
    Engine, so on a GPU it fed CUDA batches to a CPU model (a crash on any CUDA machine). The `meta`
    device stands in for CUDA: the same mismatch, without a GPU."""
    import torch
    from torch import nn

    from fewshot.run_budget import measure_step_seconds

    class Task:
        device = torch.device("meta")
        cfg = {"train": {"amp": "off"}}

        def __init__(self):
            self.model = nn.Linear(4, 2)

        def plan_epoch(self, epoch):
            return [torch.arange(2)]

        def make_batch(self, idx, epoch, step):
            return torch.randn(2, 4, device=self.device)

        def training_step(self, model, x):
            return model(x).sum(), {}, 2

    task = Task()
    assert measure_step_seconds(task) >= 0
    assert next(task.model.parameters()).device.type == "meta"


def test_step_calibration_computes_in_the_arithmetic_the_stage_will_train_in(monkeypatch):
    """The plan's step time must come from the same autocast as the Engine's steps: bf16 where train.amp=auto
    chooses it (a native-bf16 CPU, 48 px), fp32 below that size."""
    import torch
    from torch import nn

    from fewshot.run_budget import measure_step_seconds

    monkeypatch.setenv("FEWSHOT_CPU_BF16", "1")
    seen = []

    class Task:
        device = torch.device("cpu")
        cfg = {"train": {"amp": "auto"}, "model": {"small_stem": False}}

        def __init__(self, size):
            self.model, self.size = nn.Linear(4, 2), size

        def plan_epoch(self, epoch):
            return [torch.arange(2)]

        def make_batch(self, idx, epoch, step):
            return torch.randn(2, 4)

        def training_step(self, model, x):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return model(x).float().sum(), {}, 2

    measure_step_seconds(Task(48))
    assert seen and set(seen) == {torch.bfloat16}
    seen.clear()
    measure_step_seconds(Task(32))
    assert seen and set(seen) == {None}


def test_predict_on_a_run_folder_uses_the_stage_that_predicted(digits_root, moco_run, tmp_path):
    """`fewshot predict DIR` on a `fewshot run` folder said "no checkpoint in run directory"; it now takes the
    stage named by summary.json (predicted_with) and writes what `fewshot run` wrote."""
    out, summary = moco_run
    rc, _, err = run_main("predict", out, "--data", digits_root, "--out", tmp_path / "p.json", "--device", "cpu")
    assert rc == 0, err
    assert json.loads((tmp_path / "p.json").read_text()) == json.loads((out / "pred_all.json").read_text())
    from fewshot.report.build import build_report  # the report says which datasets' predictions were balanced

    page = Path(build_report([out], tmp_path / "rep", data=str(digits_root), device="cpu", log=lambda *a: None))
    assert "the test predictions (pred_all.json) are" in page.read_text()


def test_one_prediction_pass_gives_the_scores_of_separate_evaluations(digits_root, moco_run):
    """`fewshot run` predicts and scores the test split from one pass; it must equal pred_all.json from
    predict_run and the metrics of evaluate_run in both modes."""
    import torch

    from fewshot.eval.predict import evaluate_run, predict_and_score, predict_run

    out, _ = moco_run
    cpu = torch.device("cpu")
    pred, routing, scores = predict_and_score(out / "finetune", digits_root, cpu)
    assert (pred, routing) == predict_run(out / "finetune", digits_root, "known", cpu)
    for mode in ("known", "unknown"):
        assert scores[mode] == evaluate_run(out / "finetune", digits_root, mode, cpu, split="test")


def test_scoring_the_test_split_reads_the_image_ids_once_not_per_image(digits_root, moco_run, monkeypatch):
    """ImageSet.image_ids parses every path; scoring read it once per test image: 1,300 images took 13 s of a
    1-minute run's closing work (quadratic in the test split)."""
    import torch

    from fewshot.data.sets import ImageSet
    from fewshot.eval.predict import predict_and_score

    reads = []
    ids = ImageSet.image_ids.fget
    monkeypatch.setattr(ImageSet, "image_ids", property(lambda self: reads.append(1) or ids(self)))
    out, _ = moco_run
    _, _, scores = predict_and_score(out / "finetune", digits_root, torch.device("cpu"))
    assert scores is not None and len(reads) <= 2


def test_datasets_with_an_answer_key_are_scored_when_another_has_none(digits_root, moco_run, tmp_path):
    """A root where one dataset had no test_labels.json left every dataset unscored, without a word."""
    import shutil

    import torch

    from fewshot.eval.predict import evaluate_run, predict_and_score

    out, _ = moco_run
    root = tmp_path / "root"
    shutil.copytree(digits_root, root, ignore=shutil.ignore_patterns(".fewshot_cache"))
    names = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
    (root / names[0] / "test_labels.json").unlink()
    cpu = torch.device("cpu")
    pred, _, scores = predict_and_score(out / "finetune", root, cpu)
    assert set(pred) == {"n_parameters", *names}  # every dataset is still predicted
    for mode in ("known", "unknown"):
        alone = evaluate_run(out / "finetune", root, mode, cpu, split="test", datasets=names[1])
        assert set(scores[mode]["datasets"]) == {names[1]} and scores[mode]["not_scored"] == [names[0]]
        assert scores[mode]["datasets"] == alone["datasets"]
        assert scores[mode]["mean_acc1"] == alone["mean_acc1"]


def test_round_one_leaves_the_later_rounds_and_the_closing_work_their_least_time():
    """run.pseudo_share=0.999 planned round 1 up to the end of a 60 s budget, and the labelling, round 2's floor
    and the closing work ran on to 165 s: round 1 leaves their least time (after_round1_seconds)."""
    from fewshot.run_budget import ROUND1_MARGIN, after_round1_seconds

    # 2 rounds: round 1's 2 closing evaluations; round 2's labelling's 2 timed batches and val pass, its calibration
    # (4 steps, an evaluation), its floor and the step past it (6 steps), the closing work, all with the check's
    # margin; and the labelling: a quarter of the time left for it (pool_share_in_time), the whole pool where quicker
    m = 1 + ROUND1_MARGIN
    others = (2 * 0.256 + 1.0 + 10 * 0.1 + 1.0 + 10.0) * m
    assert after_round1_seconds(0.1, 1.0, 0.001, 8000, 2, 10.0) == pytest.approx(2.0 + others + others / 3)
    assert after_round1_seconds(0.1, 1.0, 0.001, 1000, 2, 10.0) == pytest.approx(2.0 + others + 1.0)
    # one batch at least
    assert after_round1_seconds(0.1, 1.0, 1.0, 8000, 2, 0.0) == pytest.approx(2.0 + (512 + 1.0 + 2.0) * m + 256)
    assert after_round1_seconds(0.1, 1.0, 0.0, 0, 2, 10.0) == pytest.approx(2.0 + 12.0 * m)  # no pool
    # every later round labels the pool again and needs its own floor
    three = 2.0 + (2 * (2 * 0.256 + 1.0 + 2.0) + 2 * 1.0 + 10.0) * m + 2 * 1.0
    assert after_round1_seconds(0.1, 1.0, 0.001, 1000, 3, 10.0) == pytest.approx(three)


def test_the_last_stage_leaves_its_measured_closing_work_inside_the_budget(digits_root):
    """plan_stage takes the closing estimate (evaluation, prediction, report) off the stage's training
    time; with the end already past, the stage still gets a few steps instead of failing."""
    import time

    import torch

    from fewshot.config import resolve
    from fewshot.run_budget import measure_prediction_seconds
    from fewshot.run_closing import closing_seconds
    from fewshot.run_stages import plan_stage
    from fewshot.train.distributed import DistContext
    from fewshot.train.supervised import SupervisedTask, resolve_finetune_defaults
    from fewshot.data.layout import scan_root

    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 16,
                         "train.batch_size": 8, "train.progress": False})
    resolve_finetune_defaults(cfg)
    infos = scan_root(digits_root, None, splits=("train", "val"))
    task = SupervisedTask(cfg, infos, torch.device("cpu"), DistContext())
    # each plan times steps on the clock it plans from: 1000 s leave room for a loaded machine (100 s read 54.8
    # under two test processes on 2 busy cores)
    end = time.monotonic() + 1000.0
    _, _, plain = plan_stage(task, cfg, end, 1, ("train", "eval_every"))
    _, _, closed = plan_stage(task, cfg, end, 1, ("train", "eval_every"), closing=lambda t, e, s: 30.0)
    assert plain <= 1000.0 and 900.0 < closed <= plain - 29.0
    step_s, fits, spent = plan_stage(task, cfg, time.monotonic() - 5.0, 1, ("train", "eval_every"))
    assert spent == pytest.approx(5 * step_s)
    # 5 steps of a longer epoch is a fraction of one; the cap (8 at least) is not what the plan line says
    steps = len(task.plan_epoch(0))
    assert cfg["train"]["epochs"] >= 8 and fits <= 5 / steps + 1e-9
    # the estimate grows with the test split (at the timed speed per image) and with the report's stages
    per_image = measure_prediction_seconds(task, task.val_set.images)
    assert 0 < per_image < 1
    base = closing_seconds(task, 1.0, 0.01, n_test=0, report_stages=0)
    assert closing_seconds(task, 1.0, 0.01, n_test=1000, report_stages=0) == pytest.approx(base + 10)
    assert closing_seconds(task, 1.0, 0.01, n_test=0, report_stages=2) > base + 2


def test_run_counts_its_budget_from_the_given_start_and_reports_an_overrun(digits_root, tmp_path, capsys):
    """The command line passes the process start (imports count); a budget already spent still gives a
    complete run, which then says what the fixed costs were (where least_run_holds is relaxed, as conftest does:
    the package refuses such a budget at once, tests/test_budget_stop.py)."""
    import time

    from fewshot.config import resolve
    from fewshot.pipeline import run_pipeline

    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "train.device": "cpu",
                         "train.progress": False, "train.batch_size": 16, "run.report": False,
                         "run.semi_method": "off"})
    summary = run_pipeline(cfg, tmp_path / "late", 0.05, started=time.monotonic() - 60.0)
    assert summary["seconds"] > 60.0  # counted from `started`, not from the call
    assert (tmp_path / "late" / "pred_all.json").is_file()
    assert "[run] note: the run took" in capsys.readouterr().out


def test_the_command_line_counts_the_budget_from_process_start(digits_root, tmp_path, monkeypatch):
    """`fewshot run` as a command (console_main) hands the process start to the pipeline; main() called from
    Python starts the clock at the call (a notebook that imported fewshot an hour ago keeps its budget)."""
    import sys

    import fewshot
    import fewshot.pipeline
    from fewshot.cli import console_main

    seen = []
    monkeypatch.setattr(fewshot.pipeline, "run_pipeline", lambda cfg, out, minutes, started=None, **_: seen.append(started))
    argv = ["run", "--data", str(digits_root), "--out", str(tmp_path / "o"), "--budget-minutes", "1"]
    monkeypatch.setattr(sys, "argv", ["fewshot", *argv])
    assert console_main() == 0 and seen == [fewshot.PROCESS_START]
    assert run_main(*argv)[0] == 0 and seen[1] is None


def test_run_skip_bad_images_still_predicts_every_test_id(copy_root, tmp_path):
    """With --skip-bad-images an undecodable test image is listed at start-up and predicted from a blank image:
    it used to be left out of pred_all.json, a submission without one of its ids, and of the test score."""
    name = sorted(p.name for p in copy_root.iterdir() if (p / "train").is_dir())[0]
    bad = sorted((copy_root / name / "test").iterdir())[0]
    bad.write_bytes(b"not an image")
    out = tmp_path / "skip"
    rc, stdout, err = run_main("run", "--data", copy_root, "--out", out, "--budget-minutes", "0.03", "--model",
                               "test_resnet", "--device", "cpu", "--no-progress", "--skip-bad-images", "--baseline",
                               "run.report=false", "train.batch_size=16")
    assert rc == 0, err
    assert "[run] test_resnet at 32px on cpu (chosen for these images" in stdout  # the header names the size
    assert "1 undecodable test image(s) (listed above) are predicted from a blank image" in err
    pred = json.loads((out / "pred_all.json").read_text())
    assert set(pred[name]) == test_ids(copy_root, name)
    n_key = len(json.loads((copy_root / name / "test_labels.json").read_text()))
    assert json.loads((out / "metrics.json").read_text())["datasets"][name]["n"] == n_key


def test_run_skip_bad_images_reaches_its_own_report(copy_root, tmp_path, monkeypatch):
    """The run's report reads val as the run did: since predict/eval/report go by their own --skip-bad-images (hunt
    hBY #2), `fewshot run --skip-bad-images` must hand its flag to the report it draws, or a broken val image left the
    run's report without its image-based parts."""
    import fewshot.report.build

    seen = []
    monkeypatch.setattr(fewshot.report.build, "build_report", lambda *a, **kw: seen.append(kw) or tmp_path / "i")
    for flag, out in ((["--skip-bad-images"], tmp_path / "skip"), ([], tmp_path / "plain")):
        rc, _, err = run_main("run", "--data", copy_root, "--out", out, "--budget-minutes", "0.03", "--model",
                              "test_resnet", "--device", "cpu", "--no-progress", "--baseline", *flag,
                              "train.batch_size=16")
        assert rc == 0, err
    assert [kw["skip_bad"] for kw in seen] == [True, False]


def test_test_ids_in_pred_all_and_answer_keys(copy_root, tmp_path):
    """0005.png is image 5 (SPEC's <int_id>), whether its key says "5" or "0005"; img six.png is "img six":
    pred_all.json uses those ids and the answer key scores every image."""
    name = sorted(p.name for p in copy_root.iterdir() if (p / "train").is_dir())[0]
    test, key_file = copy_root / name / "test", copy_root / name / "test_labels.json"
    key = json.loads(key_file.read_text())
    (test / "5.png").rename(test / "0005.png")  # the key keeps "5"
    (test / "6.png").rename(test / "0006.png")
    key["0006"] = key.pop("6")  # a key written from the padded name
    (test / "7.png").rename(test / "img six.png")
    key["img six"] = key.pop("7")
    key_file.write_text(json.dumps(key))
    out = tmp_path / "ids"
    summary = _run(copy_root, out, "--baseline")
    pred = json.loads((out / "pred_all.json").read_text())
    assert {"5", "6", "img six"} <= set(pred[name]) and not {"0005", "0006", "7"} & set(pred[name])
    assert summary["metrics"]["test"]["datasets"][name]["n"] == len(key)
    assert summary["metrics"]["pred_all_score"][name]["n"] == len(key)


def test_predict_and_eval_on_held_out_data_for_some_of_the_datasets(copy_root, moco_run, tmp_path):
    """A model of two datasets, a new root holding only one of them: --datasets predicts and scores that one."""
    import shutil

    out, _ = moco_run
    names = sorted(p.name for p in copy_root.iterdir() if (p / "train").is_dir())
    shutil.rmtree(copy_root / names[1])
    rc, _, err = run_main("predict", out, "--data", copy_root, "--out", tmp_path / "p.json", "--device", "cpu")
    assert rc == 2 and names[1] in err  # without --datasets every dataset of the model is needed
    rc, _, err = run_main("predict", out, "--data", copy_root, "--out", tmp_path / "p.json", "--device", "cpu",
                          "--datasets", names[0], "--mode", "unknown")
    assert rc == 0, err
    pred = json.loads((tmp_path / "p.json").read_text())
    assert set(pred) == {"n_parameters", names[0]} and set(pred[names[0]]) == test_ids(copy_root, names[0])
    rc, _, err = run_main("eval", out, "--data", copy_root, "--split", "test", "--device", "cpu",
                          "--datasets", names[0], "--out", tmp_path / "m.json")
    assert rc == 0, err
    assert set(json.loads((tmp_path / "m.json").read_text())["datasets"]) == {names[0]}
    rc, _, err = run_main("eval", out, "--data", copy_root, "--device", "cpu", "--datasets", "nope")
    assert rc == 2 and "trained on" in err
    rc, _, err = run_main("eval", out, "--data", copy_root, "--device", "cpu", "--datasets", " , ")
    assert rc == 2 and "names no dataset" in err


@pytest.mark.parametrize("model_args, message", [
    (("--model", "test_vit", "model.small_stem=true"), "apply to timm ResNets"),
    (("--model", "test_vit", "--img-size", "24"), "test_vit cannot take 24 px inputs"),
    (("--model", "nosuchmodel"), "unknown timm model"),
])
def test_a_model_the_run_cannot_build_leaves_no_run_behind(digits_root, tmp_path, model_args, message):
    """A model error used to surface in the first stage, after run_state.json was written: the rerun with the
    mistake fixed was refused (folder not empty) and --resume refused the changed model. Checked at start-up."""
    out = tmp_path / "x"
    rc, stdout, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "0.2", "--device",
                               "cpu", "--no-progress", *model_args)
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not out.exists() or not [p for p in out.iterdir() if p.name[0] != "."]  # the hidden lock is no run
    assert " on cpu" not in stdout, stdout  # the plan's line named the model it then refused (hunt hAS)


@pytest.mark.parametrize("setting, message", [
    ("train.batch_size=1", "train.batch_size=1: BatchNorm needs at least 2 images"),
    ("data.sampler=grouped", "no dataset has 2 training images"),
])
def test_a_fine_tuning_plan_without_a_batch_leaves_no_run_behind(copy_root, dataset_names, tmp_path, setting,
                                                                 message):
    """Found by the first fine-tuning stage, after run_state.json was written: the rerun with the setting fixed
    was refused (folder not empty) and so was --resume (the changed setting)."""
    import shutil

    for name in dataset_names:  # one training image per dataset: grouped batches of 1 only
        for split in ("train", "val"):
            for extra in sorted((copy_root / name / split).iterdir())[1:]:
                shutil.rmtree(extra)
        for path in sorted(p for p in (copy_root / name / "train").rglob("*") if p.is_file())[1:]:
            path.unlink()
    out = tmp_path / "x"
    rc, _, err = run_main("run", "--data", copy_root, "--out", out, "--budget-minutes", "0.2", "--model",
                          "test_resnet", "--img-size", "16", "--device", "cpu", "--no-progress", setting)
    assert rc == 2 and "Traceback" not in err, err
    assert not out.exists() or not [p for p in out.iterdir() if p.name[0] != "."]  # the hidden lock is no run
    assert message in err, err


def test_run_without_a_pool_gives_the_whole_budget_to_one_fine_tuning(copy_root, tmp_path):
    """Self-training with nothing to pseudo-label trained a second round on the labelled images again."""
    import shutil

    shutil.rmtree(copy_root / "unlabeled")
    out = tmp_path / "run"
    rc, stdout, err = run_main("run", "--data", copy_root, "--out", out, "--budget-minutes", "0.03", "--model",
                               "test_resnet", "--device", "cpu", "--no-progress", "run.report=false",
                               "train.batch_size=16")
    assert rc == 0, err
    assert "no unlabeled pool" in stdout and "self-training is off" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune"]
    _check_pred_all(copy_root, out)


def test_run_and_train_warn_that_a_pretrain_recipe_is_only_half_applied(tmp_path, capsys):
    """configs/moco_cpu_small.yaml given to `fewshot run` sent its lr 0.06 to AdamW fine-tuning (val 11 %);
    `fewshot train` did the same without a word."""
    from fewshot.cli_warnings import warn_pretrain_config

    repo = Path(__file__).resolve().parents[1]
    for command in ("run", "train"):
        warn_pretrain_config(repo / "configs" / "moco_cpu_small.yaml", command)
        assert "looks like a `fewshot pretrain` recipe" in capsys.readouterr().err
        warn_pretrain_config(repo / "configs" / "cpu_tiny.yaml", command)
        assert capsys.readouterr().err == ""
    # a run's saved config.yaml: every one has a moco: section; only a pretrain run's is a pretrain recipe
    from fewshot.config import resolve, save_yaml

    save_yaml(resolve(), tmp_path / "train.yaml")
    warn_pretrain_config(tmp_path / "train.yaml", "train")
    assert capsys.readouterr().err == ""
    save_yaml({**resolve(default_preset="mocov2"), "_task": "moco"}, tmp_path / "pretrain.yaml")
    warn_pretrain_config(tmp_path / "pretrain.yaml", "train")
    assert "looks like a `fewshot pretrain` recipe" in capsys.readouterr().err



def test_pretrain_warns_that_a_fine_tuning_recipe_trains_moco_with_its_optimiser(tmp_path, capsys):
    """`fewshot pretrain --config course_resnet50` trained MoCo with AdamW at 1e-4 without a word."""
    from fewshot.cli_warnings import warn_finetune_config
    from fewshot.config import resolve, save_yaml

    repo = Path(__file__).resolve().parents[1]
    warn_finetune_config(repo / "configs" / "course_resnet50.yaml")
    assert "looks like a fine-tuning recipe" in capsys.readouterr().err
    for quiet in ("moco_cpu_small.yaml", "moco_course_r50.yaml"):
        warn_finetune_config(repo / "configs" / quiet)
        assert capsys.readouterr().err == "", quiet
    warn_finetune_config(repo / "configs" / "cpu_tiny.yaml")  # no optimiser named, fine-tuning's fields (hunt hBC 4)
    assert "looks like a fine-tuning recipe" in capsys.readouterr().err
    save_yaml(resolve(), tmp_path / "train.yaml")  # a train run's saved config.yaml: AdamW, no _task
    warn_finetune_config(tmp_path / "train.yaml")
    assert "looks like a fine-tuning recipe" in capsys.readouterr().err
    save_yaml({**resolve(default_preset="mocov2"), "_task": "moco"}, tmp_path / "pretrain.yaml")
    warn_finetune_config(tmp_path / "pretrain.yaml")
    assert capsys.readouterr().err == ""
    (tmp_path / "own.yaml").write_text("moco:\n  queue_size: 1024\noptim:\n  name: adamw\n")  # MoCo with AdamW
    warn_finetune_config(tmp_path / "own.yaml")
    assert capsys.readouterr().err == ""


def test_the_plan_line_says_a_fraction_when_less_than_an_epoch_fits():
    """A 0.5-minute run printed "about 2 epochs" (its 8-epoch floor divided by 4) for 3 steps of 8."""
    from fewshot.run_budget import fitting_epochs
    from fewshot.run_words import about_epochs

    assert about_epochs(fitting_epochs(3.0, 1.0, 8, 0.0, 1)) == "about 0.4 epoch"
    assert about_epochs(fitting_epochs(80.0, 1.0, 8, 0.0, 1)) == "about 10 epochs"
    assert about_epochs(1.2) == "about 1 epoch"
    # and summary.json counts the stopped epoch's fraction (it said 0 where log.jsonl said epoch 1)
    from types import SimpleNamespace

    from fewshot.train.engine import Engine

    assert Engine.epochs_trained(SimpleNamespace(epoch=0, step_in_epoch=3, steps_per_epoch=8)) == 0.38
    assert Engine.epochs_trained(SimpleNamespace(epoch=4, step_in_epoch=0, steps_per_epoch=8)) == 4


def test_the_plan_line_counts_the_planned_evaluations_and_words_the_epochs_as_an_estimate(monkeypatch):
    """"0.4 min ... (about 129 epochs)" for a stage that then trained 36: the count is the timed steps plus the
    evaluations at the planned interval, and the optimizer's update, EMA and checkpoint writes come on top."""
    import time
    from types import SimpleNamespace

    import fewshot.run_stages
    from fewshot.run_stages import plan_stage
    from fewshot.run_words import epochs_estimate

    # 0.1 s a step, 5 steps an epoch, 2 s an evaluation: every 40th epoch (10 % of an epoch's time), 0.05 s an epoch
    monkeypatch.setattr(fewshot.run_stages, "measure_step_seconds", lambda task: 0.1)
    monkeypatch.setattr(fewshot.run_stages, "measure_eval_seconds", lambda task: 2.0)
    task = SimpleNamespace(plan_epoch=lambda epoch: [0] * 5)
    cfg = {"train": {}, "sched": {}}
    step_s, epochs, budget_s = plan_stage(task, cfg, time.monotonic() + 110.0, 1, ("train", "eval_every"))
    assert cfg["train"]["eval_every"] == task.eval_every == 40
    assert budget_s == pytest.approx(110.0, abs=1.0) and step_s == 0.1
    assert epochs == pytest.approx(budget_s / (0.5 + 2.0 / 40))  # 200, not the 220 of the steps alone
    assert epochs_estimate(epochs) == "about 200 epochs at the speeds timed at start-up; the schedule follows the clock"
    assert epochs_estimate(0.4).startswith("about 0.4 epoch")


def test_the_pseudo_label_line_lists_only_datasets_with_pool_images():
    """With 14 datasets the line ran past 1,000 characters of "set03 0/0 (mean confidence None)"."""
    from fewshot.run_words import pseudo_label_line

    per = {"a": {"kept": 5, "pool": 9, "mean_confidence": 0.91, "kept_from_unknown_source": 0},
           **{f"e{i}": {"kept": 0, "pool": 0, "mean_confidence": None, "kept_from_unknown_source": 0} for i in range(12)}}
    line = pseudo_label_line(per, 0)
    assert "a 5/9 (mean confidence 0.91)" in line and "e3" not in line and "None" not in line
    assert line.endswith("; 12 datasets without pool images")
    per["b"] = {"kept": 2, "pool": 0, "mean_confidence": None, "kept_from_unknown_source": 2}
    line = pseudo_label_line(per, 4)
    assert "b 2 (2) / 0," not in line and "b 2 (2) / 0" in line and "None" not in line


def test_the_pseudo_label_line_shows_escape_codes_of_dataset_names_escaped():
    from fewshot.run_words import pseudo_label_line

    per = {"\x1b]0;pwned\x07a\u202eb\nc": {"kept": 5, "pool": 9, "mean_confidence": 0.91,
                                            "kept_from_unknown_source": 0}}
    line = pseudo_label_line(per, 0)
    assert "\\x1b]0;pwned\\x07a\\u202eb\\nc 5/9" in line and not any(c in line for c in "\x1b\x07\u202e\n")


def test_run_lists_bad_train_val_and_test_images_at_once_and_records_the_skipped(copy_root, tmp_path):
    """The test split's bad files were reported first and the labelled splits' only after a rerun, which then
    found a started run folder and wanted --resume; with --skip-bad-images only the pool's skipped files
    reached RUN/skipped_images.json."""
    name = sorted(p.name for p in copy_root.iterdir() if (p / "train").is_dir())[0]
    bad = [sorted(p for p in (copy_root / name / split).rglob("*") if p.is_file())[0]
           for split in ("train", "val", "test")]
    for path in bad:
        path.write_bytes(b"not an image")
    out = tmp_path / "bad"
    argv = ["run", "--data", copy_root, "--out", out, "--budget-minutes", "0.03", "--model", "test_resnet",
            "--device", "cpu", "--no-progress", "--baseline", "run.report=false", "train.batch_size=16"]
    rc, _, err = run_main(*argv)
    assert rc == 2 and all(str(path) in err for path in bad), err
    assert not (out / "run_state.json").exists()  # nothing started: the same command runs again once fixed
    rc, _, err = run_main(*argv, "--skip-bad-images")
    assert rc == 0, err
    listed = {entry["path"] for entry in json.loads((out / "skipped_images.json").read_text())}
    assert listed == {str(path) for path in bad}


def test_run_counts_only_decodable_pool_images_against_the_moco_batch(copy_root, tmp_path):
    """Enough pool files for one MoCo batch, too few of them decodable: the stage would have found an empty
    epoch in a started run folder; the start-up check counts the images the MoCo stage can use."""
    pool = sorted((copy_root / "unlabeled").rglob("*.png"))
    batch = 16 * (len(pool) // 16)
    for path in pool[:len(pool) - batch + 1]:  # one decodable image fewer than the batch
        path.write_bytes(b"")
    out = tmp_path / "x"
    rc, _, err = run_main("run", "--data", copy_root, "--out", out, "--budget-minutes", "0.2", "--pretrain",
                          "--model", "test_resnet", "--img-size", "16", "--device", "cpu", "--no-progress",
                          f"run.pretrain_batch_size={batch}", f"run.queue_size={2 * batch}")
    assert rc == 2 and f"{batch - 1} decodable images, fewer than one MoCo batch of {batch}" in err, err
    assert not (out / "pretrain").exists() and not (out / "run_state.json").exists()


def test_a_pool_too_large_for_the_time_left_is_labelled_in_a_seeded_share(tmp_path, monkeypatch):
    """A 100k-image pool took 5 minutes of a 1-minute budget to pseudo-label: a round labels what fits in its
    time, a seeded random share; a resumed run takes the count from the round's record (the same images)."""
    import fewshot.run_pseudo as run_pseudo

    images, record = torch.zeros(1000, 3, 4, 4, dtype=torch.uint8), tmp_path / "pseudo_labels_round2.json"
    monkeypatch.setattr(run_pseudo, "measure_prediction_seconds", lambda task, images: 0.01)  # 10 s for the pool
    assert run_pseudo.pool_share_in_time(None, images, 20.0, record, seed=1) is None  # fits: the whole pool
    share = run_pseudo.pool_share_in_time(None, images, 5.0, record, seed=1)
    assert len(share) == 500 and share.unique().numel() == 500 and bool((share.diff() > 0).all())
    assert torch.equal(share, run_pseudo.pool_share_in_time(None, images, 5.0, record, seed=1))
    assert not torch.equal(share, run_pseudo.pool_share_in_time(None, images, 5.0, record, seed=2))
    assert len(run_pseudo.pool_share_in_time(None, images, 0.0, record, seed=1)) == 256  # no time left: one batch

    def not_timed(task, images):
        raise AssertionError("a resumed round reads its count from the record")

    monkeypatch.setattr(run_pseudo, "measure_prediction_seconds", not_timed)
    record.write_text(json.dumps({"pool_labelled": 500}))
    assert torch.equal(share, run_pseudo.pool_share_in_time(None, images, 1.0, record, seed=1))
    record.write_text(json.dumps({"pool_labelled": 1000}))  # the first session labelled it whole
    assert run_pseudo.pool_share_in_time(None, images, 1.0, record, seed=1) is None
    record.write_text(json.dumps({"pool_size": 1000}))  # an older fewshot's record: it labelled the whole pool
    assert run_pseudo.pool_share_in_time(None, images, 1.0, record, seed=1) is None
    record.write_text(json.dumps({"pool_size": 1000, "pool_labelled": 500, "pool_key": "k"}))
    assert torch.equal(share, run_pseudo.pool_share_in_time(None, images, 1.0, record, seed=1, pool_key="k"))
    record.unlink()
    assert run_pseudo.pool_share_in_time(None, images[:256], 0.0, record, seed=1) is None  # one batch: not timed


def test_a_resumed_round_whose_pool_changed_labels_what_its_time_allows_and_says_so(tmp_path, monkeypatch, capsys):
    """A resume after the pool changed applied the saved count to the new pool: pool_size 9000, pool_labelled 8000,
    a random part labelled without a word. The time decides again (the stopped round starts over anyway: its
    pseudo-labels differ), and the run says that the pool changed."""
    import fewshot.run_pseudo as run_pseudo

    images, record = torch.zeros(1000, 3, 4, 4, dtype=torch.uint8), tmp_path / "pseudo_labels_round2.json"
    monkeypatch.setattr(run_pseudo, "measure_prediction_seconds", lambda task, images: 0.01)  # 10 s for the pool
    record.write_text(json.dumps({"pool_size": 800, "pool_labelled": 500}))  # then: 800 images, 500 labelled
    assert run_pseudo.pool_share_in_time(None, images, 20.0, record, seed=1) is None  # time enough: all 1000
    assert "the unlabeled pool changed since the run started (800 images then, 1,000 now)" in capsys.readouterr().out
    assert len(run_pseudo.pool_share_in_time(None, images, 5.0, record, seed=1)) == 500  # what 5 s allow
    out = capsys.readouterr().out
    assert "pool changed" in out and "labelling 500 of the 1,000 pool images" in out
    # as many files as before, other ones: told by the pool's fingerprint
    record.write_text(json.dumps({"pool_size": 1000, "pool_labelled": 500, "pool_key": "then"}))
    assert run_pseudo.pool_share_in_time(None, images, 20.0, record, seed=1, pool_key="now") is None
    assert "pool changed since the run started (1,000 images then, 1,000 now)" in capsys.readouterr().out


def test_the_val_guard_picks_the_best_earlier_round_not_only_round_1():
    """With run.pseudo_rounds=3, round 2 (83.9) beat round 1 (83.5) and the last round (81.45); the run predicted
    with round 1, the only one the guard compared."""
    from fewshot.run_reuse import better_earlier_round

    earlier = {"finetune_labelled": {"mean_acc1": 83.5}, "finetune_round2": {"mean_acc1": 83.9}}
    assert better_earlier_round(earlier, 81.45) == "finetune_round2"
    assert better_earlier_round(earlier, 84.0) is None  # the last round wins
    assert better_earlier_round(earlier, 83.9) is None  # ties go to the last round
    assert better_earlier_round({"finetune_labelled": {"mean_acc1": 70.0}, "finetune_round2": {}}, 60.0) == \
        "finetune_labelled"
    assert better_earlier_round(earlier, None) is None


@pytest.mark.parametrize("where", ["planned at round 1", "checked before round 2"])
def test_a_later_round_the_time_left_cannot_hold_is_skipped_and_the_last_finished_round_predicts(
        digits_root, tmp_path, monkeypatch, real_time_holds, where):
    """A 90 s budget ran to 262 s: round 2 and its labelling started with ~68 s left for a round that needed more
    at its 5-step floor. A round that does not fit is skipped (planned), round 1 predicts, and the run says so."""
    if where == "planned at round 1":  # round 1's plan: even its floor leaves the later rounds too little
        patch_pipeline(monkeypatch, "after_round1_seconds", lambda *a: 1e6)
    else:  # round 1 planned as usual; before round 2's labelling the time left is below its need
        patch_pipeline(monkeypatch, "after_round1_seconds", lambda *a: -1e6)  # round 1 holds at any speed
        patch_pipeline(monkeypatch, "later_rounds_seconds", lambda *a: 1e6)
        # nor a round on the labelled images alone: its own estimate at real speeds fitted now and then (fHB)
        patch_pipeline(monkeypatch, "labelled_only_seconds", lambda *a: 1e6)
    out = tmp_path / "skip"
    rc, stdout, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "0.03", "--model",
                               "test_resnet", "--device", "cpu", "--no-progress", "run.report=false",
                               "train.batch_size=16", "run.pseudo_rounds=3")
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune_labelled"] and summary["predicted_with"] == "finetune_labelled"
    assert summary["self_training_skipped"]["rounds"] == [2, 3] and "1000000 s" in summary["self_training_skipped"]["why"]
    assert not (out / "finetune").exists() and not (out / "pseudo_labels_round2.json").exists()
    assert "skipped (planned, not an error)" in stdout
    _check_pred_all(digits_root, out)


def test_rounds_that_fit_run_and_the_middle_rounds_that_do_not_are_dropped(digits_root, tmp_path, monkeypatch,
                                                                           real_time_holds):
    """With 3 rounds planned and time for only one more after round 1, that one is the last (`finetune`); the
    dropped round is told in summary.json (it left no record) and on the report's page."""
    from fewshot.report.pipeline_runs import _read_summary

    patch_pipeline(monkeypatch, "after_round1_seconds", lambda *a: -1e6)  # round 1 holds at any speed
    patch_pipeline(monkeypatch, "later_rounds_seconds", lambda *a: -1e6 if a[4] == 1 else 1e6)
    out = tmp_path / "two"
    summary = _run(digits_root, out, "run.pseudo_rounds=3")
    assert list(summary["stages"]) == ["finetune_labelled", "finetune"] and "self_training_skipped" not in summary
    reduced = summary["self_training_reduced"]
    assert reduced["planned"] == 3 and reduced["kept"] == 2 and "held 1 more round at" in reduced["why"]
    assert _read_summary(out, [])["self_training_reduced"].startswith("2 of 3 rounds kept: the ")


def test_identical_runs_reuse_the_share_of_a_cold_pool_an_earlier_one_decoded(copy_root, tmp_path, monkeypatch):
    """The decoding rate is timed anew by every run: 3 identical runs chose 564, 972 and 771 files, decoded each
    into a cache entry of its own, and labelled 3 different pools. A share at least half the size a run would
    choose is reused (a larger one contains the smaller: seeded); a much larger budget decodes more."""
    import fewshot.data.decode_many as decode_many
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.run_pseudo import pool_decode_limit
    from fewshot.train.semi import load_pool, pool_files

    cfg = resolve(flags={"data.root": str(copy_root), "model.img_size": 16, "data.cache_dir": str(tmp_path / "c")})
    infos = scan_root(copy_root, None, splits=("train", "val"))
    paths = pool_files(cfg, infos, exclude_train=True)[0]
    assert len(paths) > 150

    def limit_at(per_file: float, seconds: float = 50.0) -> int:
        monkeypatch.setattr(decode_many, "decode_seconds_per_image", lambda *a, **k: per_file)
        limit = pool_decode_limit(cfg, paths, seconds, n=8)
        load_pool(cfg, infos, 16, exclude_train=True, limit=limit)  # as the run decodes it
        return limit

    assert limit_at(1.0) == 50
    assert limit_at(0.7) == 50 and limit_at(1.5) == 50  # the 50 decoded are reused (at the rate timed first)
    assert len(list((tmp_path / "c").glob("*.u8"))) == 1
    # a much larger budget: 125 files, more than twice the share in the cache, decoded (review rev73: a warm rerun
    # finds its share at the rate an earlier run timed, so a larger budget, not a faster timing, asks for more)
    assert limit_at(1.0, 125.0) == 125
    assert limit_at(1.0, 166.0) == 125 and len(list((tmp_path / "c").glob("*.u8"))) == 2


def test_later_rounds_need_their_labelling_calibration_floor_and_the_closing_work():
    from fewshot.run_budget import ROUND1_MARGIN, later_rounds_seconds

    m = 1 + ROUND1_MARGIN  # the check's margin, on all but the labelling
    one = later_rounds_seconds(0.1, 1.0, 0.0, 0, 1, 10.0)
    # 4 timed steps, the timed evaluation, the 5-step floor and the step past it, the closing work
    assert one == pytest.approx((10 * 0.1 + 1.0 + 10.0) * m)
    assert later_rounds_seconds(0.1, 1.0, 0.0, 0, 2, 10.0) == pytest.approx(one + (10 * 0.1 + 3 * 1.0) * m)
    # labels the pool (1 s) after a val pass for its thresholds
    assert later_rounds_seconds(0.1, 1.0, 0.01, 100, 1, 10.0) == pytest.approx(one + 1.0 * m + 1.0)


def test_the_closing_estimate_counts_the_reports_parts_at_the_machines_drawing_speed(digits_root):
    """The closing work of the hunt's run (3 datasets, 3-12 classes, a loaded machine) took far longer than its
    flat estimate: the report's parts grow with the stages, the datasets and their classes, and scale with the
    time a figure takes now; without its image-based parts the report is cheaper by their estimate."""
    import torch

    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.run_budget import FIGURE_S, report_seconds
    from fewshot.run_closing import closing_seconds
    from fewshot.train.distributed import DistContext
    from fewshot.train.supervised import SupervisedTask, resolve_finetune_defaults

    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 16,
                         "train.batch_size": 8, "train.progress": False})
    resolve_finetune_defaults(cfg)
    task = SupervisedTask(cfg, scan_root(digits_root, None, splits=("train", "val")), torch.device("cpu"),
                          DistContext())
    base, images = report_seconds(task, 1.0, 1)
    assert base > 0.5 and images > 1.0 + 1.3  # the val predictions (an evaluation), embedding and grid
    assert report_seconds(task, 1.0, 3)[0] > base + 1.5  # curves and FLOPs of every stage
    assert report_seconds(task, 1.0, 0) == (0.0, 0.0)  # no report
    slow = report_seconds(task, 1.0, 1, figure_s=3 * FIGURE_S)
    assert slow[0] > 2.5 * base and slow[1] - 1.0 > 2.5 * (images - 1.0 - 0.01)
    import dataclasses

    ten = task.space
    task.space = dataclasses.replace(ten, classes=tuple(c + c for c in ten.classes))  # larger confusion matrices
    assert report_seconds(task, 1.0, 1)[1] > images
    task.space = ten
    full = closing_seconds(task, 1.0, 0.0, 0, 1)
    assert closing_seconds(task, 1.0, 0.0, 0, 1, images=False) == pytest.approx(full - report_seconds(task, 1.0, 1)[1])


def test_the_report_leaves_out_its_image_parts_when_they_do_not_fit_the_time_left(digits_root, tmp_path, monkeypatch):
    """Rather than overrun the budget, the run's report goes without confusion matrices, embedding map and grid
    (`fewshot report` draws them later) and says so in the console, summary.json and the page."""
    patch_pipeline(monkeypatch, "report_seconds", lambda *a, **k: (0.0, 1e6))
    out = tmp_path / "lean"
    rc, stdout, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "0.03", "--model",
                               "test_resnet", "--device", "cpu", "--no-progress", "run.semi_method=off",
                               "train.batch_size=16")
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert "fewshot report" in summary["report_without_images"]
    assert "leaves out its confusion matrices, embedding map and prediction grid" in stdout
    page = (out / "report" / "index.html").read_text()
    assert "prediction grid skipped" in page and "left for the report" in page
    assert not list((out / "report").glob("*confusion*")) and not list((out / "report").glob("*embedding*"))
    assert list((out / "report").glob("*curves*"))
    # the run's length counts the report (summary.json was written before it and said 71 s where the run took 74)
    assert summary["seconds"] == json.loads((out / "run_state.json").read_text())["seconds"]


def test_the_command_leaves_its_objects_to_the_operating_system_at_exit(digits_root, tmp_path, monkeypatch):
    """The interpreter's exit collected every object after `fewshot run`'s last line: 4-8 s on a busy machine."""
    import gc
    import sys

    import fewshot.pipeline
    from fewshot.cli import console_main

    monkeypatch.setattr(fewshot.pipeline, "run_pipeline", lambda *a, **k: None)
    monkeypatch.setattr(sys, "argv", ["fewshot", "run", "--data", str(digits_root), "--out", str(tmp_path / "o"),
                                      "--budget-minutes", "1"])
    gc.unfreeze()
    try:
        assert console_main() == 0 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_an_overrun_warning_never_says_zero_seconds():
    """"will likely end about 0 s after its budget" (an overrun under half a second) read as no overrun."""
    from fewshot.run_words import overrun_warning

    assert "about 1 s after its budget" in overrun_warning(0.3, "the least steps do not fit")
    assert "about 42 s after its budget" in overrun_warning(42.2, "the least steps do not fit")


def test_a_rounds_training_images_are_told_as_labelled_times_repeat_plus_pseudo_labelled():
    """A round that kept no pseudo-label said "558 training images" for 186 labelled images repeated 3 times."""
    from types import SimpleNamespace

    import torch

    from fewshot.run_words import made_of

    cfg = {"run": {"pseudo_labelled_repeat": 3}}
    none_kept = {"targets": torch.zeros(0, dtype=torch.long)}
    assert made_of(SimpleNamespace(train_set=[0] * 558), none_kept, cfg) == " (186 labelled x3 + 0 pseudo-labelled)"
    kept = {"targets": torch.zeros(40, dtype=torch.long)}
    assert made_of(SimpleNamespace(train_set=[0] * 598), kept, cfg) == " (186 labelled x3 + 40 pseudo-labelled)"
    assert made_of(SimpleNamespace(train_set=[0] * 186), None, cfg) == ""
