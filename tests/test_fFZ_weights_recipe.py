"""The lr recipe of a --weights file (review rev100 #1-#5): run.finetune_* words are read where the file is fewshot's
own, the note credits the recipe only with what it chose, a fewshot .pt checkpoint is fewshot's own too, and an
export or checkpoint of a run that started from other (ImageNet-grade) weights keeps the ImageNet recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file

from helpers.checks import run_main
from helpers.tiny import build_digits, finetune_cfg, tiny_train_argv

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny run from random init and its export; a foreign (timm-like, no metadata) weights file, a run started
    from it and that run's export."""
    base = tmp_path_factory.mktemp("recipe")
    root = build_digits(base / "root", shots=2)
    foreign = base / "timm.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(foreign))
    for run, extra in (("scratch", ()), ("imnet", ("--weights", foreign))):
        rc, _, err = run_main(*tiny_train_argv(root, base / run, *extra))
        assert rc == 0, err
        rc, _, err = run_main("export", base / run, "--out", base / f"{run}.safetensors")
        assert rc == 0, err
    return {"root": root, "base": base, "foreign": foreign}


def _resolved(root, weights, **flags):
    from fewshot.train.supervised import recipe_words, resolve_finetune_defaults

    cfg = resolve_finetune_defaults(finetune_cfg(root, **{"model.weights": str(weights), **flags}), resuming=True)
    return (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]), recipe_words(cfg)


def test_finetune_fields_are_not_called_unused_for_fewshot_weights(files):
    from fewshot.cli_warnings import unused_override_warnings

    words = ["run.finetune_lr=5e-4", "run.finetune_backbone_mult=0.5"]
    ours = finetune_cfg(files["root"], **{"model.weights": str(files["base"] / "scratch.safetensors")})
    assert unused_override_warnings("train", ours, words) == []
    assert unused_override_warnings("run", ours, words, baseline=True) == []
    # other weights do not read them: still warned
    other = finetune_cfg(files["root"], **{"model.weights": str(files["foreign"])})
    assert "do nothing" in " ".join(unused_override_warnings("train", other, words))
    assert "do nothing" in " ".join(unused_override_warnings("run", other, words, baseline=True))


def test_train_honours_run_finetune_lr_without_a_warning(files, tmp_path):
    out = tmp_path / "t"
    rc, got, err = run_main(*tiny_train_argv(files["root"], out, "--weights", files["base"] / "scratch.safetensors",
                                             "run.finetune_lr=5e-4"))
    assert rc == 0, err
    assert "does nothing" not in err, err
    assert "lr: 0.0005" in (out / "config.yaml").read_text()


def test_the_note_names_only_what_the_recipe_chose(files):
    lr, words = _resolved(files["root"], files["base"] / "scratch.safetensors", **{"optim.lr": 0.01})
    assert lr == (0.01, 1.0)
    assert "run.finetune_backbone_mult, the backbone at 1x" in words and "optim.lr 0.01 is yours" in words, words
    assert "run.finetune_lr" not in words and "lr 0.01 with" not in words, words


def test_a_resumed_run_from_before_the_rule_is_not_credited_to_it(files):
    from fewshot.train.supervised import recipe_words

    cfg = finetune_cfg(files["root"], **{"model.weights": str(files["base"] / "scratch.safetensors"),
                                         "optim.lr": 1e-4, "optim.backbone_lr_mult": 0.1})
    cfg["_chosen"] = {"optim.lr": 1e-4, "optim.backbone_lr_mult": 0.1}  # what the ImageNet recipe chose then
    assert recipe_words(cfg) == ""


def test_a_fewshot_checkpoint_takes_the_small_data_recipe(files):
    lr, words = _resolved(files["root"], files["base"] / "scratch" / "checkpoints" / "best.pt")
    assert lr == (2e-3, 1.0)
    assert words.startswith("a fewshot checkpoint: the small-data recipe"), words


def test_an_export_records_its_runs_start(files):
    from fewshot.ssl.export import export_metadata

    scratch = export_metadata(files["base"] / "scratch.safetensors")
    imnet = export_metadata(files["base"] / "imnet.safetensors")
    assert (scratch["start"], scratch["start_weights"]) == ("random init", "")
    assert imnet["start"] == "other weights" and imnet["start_weights"] == str(files["foreign"]), imnet


@pytest.mark.parametrize("name", ["imnet.safetensors", "imnet/checkpoints/best.pt"])
def test_a_run_started_from_other_weights_keeps_the_imagenet_recipe(files, name):
    lr, words = _resolved(files["root"], files["base"] / name)
    assert lr == (1e-4, 0.1)
    assert "of a run that started from other weights" in words and "ImageNet-grade" in words, words


def test_the_course_recipe_is_not_offered_for_a_moco_export():
    head = [line for line in (REPO / "configs" / "course_resnet50.yaml").read_text().splitlines()
            if line.startswith("#")]
    assert not any("MoCo export" in line for line in head), head
    assert any("run.finetune_lr" in line for line in head), head


def test_a_checkpoint_whose_runs_start_is_gone_is_said_to_be_a_guess(files, tmp_path):
    """Copied to another machine, a checkpoint's start file is gone: taken as fewshot's own (the safer guess), and
    the note says the start is unknown (review rev101 #1)."""
    import shutil

    start = tmp_path / "start.safetensors"
    shutil.copy(files["foreign"], start)
    rc, _, err = run_main(*tiny_train_argv(files["root"], tmp_path / "run", "--weights", start))
    assert rc == 0, err
    start.unlink()
    lr, words = _resolved(files["root"], tmp_path / "run" / "checkpoints" / "best.pt")
    assert lr == (2e-3, 1.0)
    assert f"its run started from {start}, which is gone" in words and "unknown" in words, words
