"""Hunt hBC 3-5 and a leftover: `fewshot run` fine-tuned a random backbone at a pretrained-weights lr without the
warning `fewshot train` gives; the shipped cpu_tiny recipe went into `fewshot pretrain` without the fine-tuning
recipe warning, and no config's header said which command it is for; train.amp=auto was saved as `auto`, so the
run's config.yaml given back on another CPU trained in another precision without a word; and `fewshot run`'s MoCo
batch checks named train.batch_size and --batch-size, which its MoCo stage does not read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fewshot.config import CHOSEN, RECHOSEN, chosen_in_file, note_rechosen, resolve, save_yaml
from helpers.checks import run_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RANDOM_AT_PRETRAINED_LR = "the backbone starts from random init but trains at lr 1e-05"


# ------------------------------------------------------------------ 3: run's random backbone at a pretrained lr

def test_run_warns_of_a_random_backbone_at_a_pretrained_lr_only_where_the_user_set_it(capsys):
    from fewshot.cli_run import warn_run_random_backbone

    course = CONFIGS / "course_resnet50.yaml"
    warn_run_random_backbone(resolve(file=course))  # no --pretrain, no --weights: the course's 1e-4 x 0.1
    err = capsys.readouterr().err
    assert RANDOM_AT_PRETRAINED_LR in err and "--pretrain" in err
    for quiet in (resolve(file=course, overrides=["run.pretrain=true"]),  # the run's own MoCo export
                  resolve(file=course, overrides=["model.weights=w.safetensors"]),
                  resolve()):  # the run chooses the lr itself: 4e-3 x 1 from scratch
        warn_run_random_backbone(quiet)
        assert capsys.readouterr().err == ""


def test_fewshot_run_says_it_at_its_start(digits_root, tmp_path, settings_only_run):
    rc, _, err = run_main("run", "--data", digits_root, "--out", tmp_path / "r", "--config", "course_resnet50",
                          "--model", "test_resnet", "--budget-minutes", "0.4")
    assert rc == 0 and RANDOM_AT_PRETRAINED_LR in err, err


# ------------------------------------------------------------------ 4: cpu_tiny to pretrain, the configs' headers

@pytest.mark.parametrize("text, warned", [
    ("optim:\n  lr: 2.0e-3\n  backbone_lr_mult: 1.0\n", True),
    ("train:\n  ema: true\n", True),
    ("train:\n  eval_every: 10\n", True),
    ("model:\n  drop_path: 0.1\n", False),  # MoCo's backbone reads it
    ("moco:\n  queue_size: 64\ntrain:\n  eval_every: 10\n", False),  # a moco: section: the user's MoCo recipe
])
def test_fine_tuning_fields_without_a_moco_section_make_a_fine_tuning_recipe(tmp_path, capsys, text, warned):
    from fewshot.cli_warnings import warn_finetune_config

    (tmp_path / "r.yaml").write_text(text)
    warn_finetune_config(tmp_path / "r.yaml")
    assert ("looks like a fine-tuning recipe" in capsys.readouterr().err) is warned


def test_the_shipped_cpu_tiny_recipe_is_said_to_be_for_train(capsys):
    from fewshot.cli_warnings import warn_finetune_config

    warn_finetune_config(CONFIGS / "cpu_tiny.yaml")
    err = capsys.readouterr().err
    assert "looks like a fine-tuning recipe" in err and "optim.backbone_lr_mult" in err and "lr 0.002" in err


def test_each_shipped_config_says_which_command_it_is_for():
    for path in sorted(CONFIGS.glob("*.yaml")):
        header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
        command = "`fewshot pretrain" if path.name.startswith("moco_") else "`fewshot train"
        assert command in header, path.name


# ------------------------------------------------------------------ 5: the precision a run used

def test_the_resolved_precision_is_recorded_as_chosen_and_chosen_again(tmp_path):
    from fewshot.train.optim import record_amp

    cfg = resolve()
    assert record_amp(cfg, torch.bfloat16)
    assert cfg["train"]["amp"] == "bf16" and cfg[CHOSEN]["train.amp"] == "bf16"
    save_yaml(cfg, tmp_path / "config.yaml")
    assert chosen_in_file(tmp_path / "config.yaml")["train.amp"] == "bf16"
    assert resolve(file=tmp_path / "config.yaml")["train"]["amp"] == "auto"  # given back: chosen again
    given = resolve(overrides=["train.amp=bf16"])
    assert not record_amp(given, None) and given["train"]["amp"] == "bf16" and "train.amp" not in given.get(CHOSEN, {})


def test_the_note_on_the_precision_waits_until_it_is_chosen(tmp_path, capsys):
    from fewshot.train.optim import record_amp

    cfg = {**resolve(), RECHOSEN: {"file": "r/config.yaml", "values": {"train.amp": "bf16"}, "unrecorded": False,
                                   "task": None}}
    note_rechosen(cfg)  # the start's note: train.amp is still auto
    assert capsys.readouterr().err == "" and RECHOSEN not in cfg and "_rechosen_later" in cfg
    record_amp(cfg, None)
    note_rechosen(cfg)
    assert "train.amp off (bf16 there)" in capsys.readouterr().err and "_rechosen_later" not in cfg


def test_a_config_repeat_that_chooses_another_precision_says_so(digits_root, tmp_path, monkeypatch):
    import fewshot.train.engine as engine

    argv = ["--data", digits_root, "--model", "test_resnet", "--img-size", "16", "--epochs", "1", "--batch-size",
            "8", "--device", "cpu", "--no-progress", "--datasets", "digits", "train.tensorboard=false"]
    rc, _, err = run_main("train", "--out", tmp_path / "a", *argv)  # fp32 here (the suite pins it)
    assert rc == 0, err
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["train"]["amp"] == "off" and saved[CHOSEN]["train.amp"] == "off"
    monkeypatch.setattr(engine, "amp_dtype", lambda *a, **k: torch.bfloat16)  # a machine that chooses bf16
    rc, _, err = run_main("train", "--out", tmp_path / "b", "--config", tmp_path / "a" / "config.yaml", *argv)
    assert rc == 0 and "train.amp bf16 (off there)" in err, err
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())[CHOSEN]["train.amp"] == "bf16"


# ------------------------------------------------------------------ leftover: run's MoCo batch named as run sets it

def test_run_names_its_moco_batch_as_run_pretrain_batch_size(digits_root):
    from fewshot.errors import UserError
    from fewshot.run_checks import check_model, check_pretrain_settings

    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 16,
                         "run.pretrain": True, "run.pretrain_batch_size": 6, "moco.split_bn_groups": 4})
    with pytest.raises(UserError) as caught:
        check_pretrain_settings(cfg, check_model(cfg))
    text = str(caught.value)
    assert "run.pretrain_batch_size=6 must be a multiple of moco.split_bn_groups=4" in text, text
    assert "--batch-size" not in text and "train.batch_size" not in text


def test_a_resumed_run_without_a_record_of_its_choices_gets_no_partial_one(digits_root, tmp_path):
    """review rev66: resuming a run whose config.yaml has no _chosen (an older fewshot's) wrote `_chosen: {train.amp:
    off}`, after which its lr, device and network counted as the user's (config.chosen_by_rule reads a file without
    a record); the resume now leaves the file without one."""
    argv = ["--data", digits_root, "--model", "test_resnet", "--img-size", "16", "--batch-size", "8", "--device",
            "cpu", "--no-progress", "--datasets", "digits", "train.tensorboard=false"]
    out = tmp_path / "old"
    rc, _, err = run_main("train", "--out", out, "--epochs", "1", *argv)
    assert rc == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved[CHOSEN]  # as an older fewshot wrote it
    saved["train"]["amp"] = "auto"
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    rc, _, err = run_main("train", "--out", out, "--epochs", "2", "--resume", *argv)
    assert rc == 0, err
    assert CHOSEN not in yaml.safe_load((out / "config.yaml").read_text())


def test_a_run_stages_resume_note_on_its_precision_advises_no_word_run_refuses(tmp_path, capsys):
    """review rev66: a `fewshot run` stage resumed on a machine that would choose otherwise was told "set
    train.amp=bf16 or off to change it", a word `fewshot run --resume` refuses; a train run keeps the advice."""
    from types import SimpleNamespace

    from fewshot.train.resume import ResumeMixin

    (tmp_path / "run_state.json").write_text("{}")  # the stage folder's parent is a `fewshot run` folder
    for run_dir, advised in ((tmp_path / "finetune", False), (tmp_path.parent / "a_train_run", True)):
        run_dir.mkdir(exist_ok=True)
        engine = SimpleNamespace(ctx=SimpleNamespace(is_main=True), cfg={"train": {"amp": "auto"}}, amp=None,
                                 run_dir=run_dir, device=torch.device("cpu"))
        ResumeMixin.keep_resolved_amp(engine, "bf16")
        ResumeMixin.say_kept_amp(engine)
        out = capsys.readouterr().out
        assert "continues in it" in out and ("train.amp=bf16 or off" in out) == advised, out
