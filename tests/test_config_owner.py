"""One answer to "is this config.yaml a run's?" (config.written_by_run) for --config, `pretrain --config`'s warning
and an --out folder's config.yaml, and `fewshot run --config RUN/config.yaml` naming what it chose again, as
`fewshot train --config` does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import fewshot.pipeline as pipeline
from fewshot.cli import main
from fewshot.config import CHOSEN, RECHOSEN, RUN_SECTIONS, resolve, save_yaml, written_by_run
from fewshot.errors import UserError
from fewshot.run_lock import release_all
from fewshot.train.finetune import prepare_run_dir

REPO = Path(__file__).resolve().parents[1]


def train_run_config(folder: Path, **drop) -> Path:
    """A scratch `fewshot train` run's config.yaml (lr 0.004 x 1.0 chosen at run time) in a run folder."""
    cfg = resolve(overrides=["optim.lr=0.004", "optim.backbone_lr_mult=1.0", "train.device=cpu"])
    cfg[CHOSEN] = {"optim.lr": 0.004, "optim.backbone_lr_mult": 1.0, "train.device": "cpu"}
    for section in drop:
        cfg.pop(section)
    folder.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, folder / "config.yaml")
    (folder / "log.jsonl").write_text("")
    return folder / "config.yaml"


def test_one_answer_for_a_recipe_a_run_start_and_a_copy(tmp_path):
    recipe = yaml.safe_load((REPO / "configs" / "course_resnet50.yaml").read_text())
    assert not written_by_run(recipe, tmp_path / "x.yaml", run_files=False)  # five sections: a recipe
    whole = resolve()
    assert set(RUN_SECTIONS) <= set(whole)
    save_yaml(whole, tmp_path / "x.yaml")
    assert written_by_run(whole, tmp_path / "x.yaml", run_files=False)  # a run start's, or a copy: whole
    assert not written_by_run(whole, tmp_path / "x.yaml")  # a copy outside a run folder: the user's, pinned
    assert written_by_run(yaml.safe_load(train_run_config(tmp_path / "run").read_text()), tmp_path / "run" /
                          "config.yaml")
    assert written_by_run({"_task": "moco"}, tmp_path / "x.yaml")


def test_a_recipe_copied_into_the_out_folder_is_refused_not_written_over(tmp_path):
    """prepare_run_dir took any file with model, data, optim and train sections for a run's start: a recipe the
    user copied there (configs/course_resnet50.yaml) was replaced by the run's config.yaml."""
    out = tmp_path / "exp"
    out.mkdir()
    shutil.copy(REPO / "configs" / "course_resnet50.yaml", out / "config.yaml")
    before = (out / "config.yaml").read_text()
    cfg = {"data": {"root": str(tmp_path / "data")}}
    try:
        with pytest.raises(UserError, match=r"is not empty \(config\.yaml\)"):
            prepare_run_dir(out, False, cfg)
        assert (out / "config.yaml").read_text() == before
        started = tmp_path / "started"  # a start stopped before its log: config.yaml alone, written over
        started.mkdir()
        save_yaml(resolve(), started / "config.yaml")
        prepare_run_dir(started, False, cfg)
    finally:
        release_all()


def test_pretrain_warns_about_an_older_train_runs_config(tmp_path, capsys):
    """A train run of a fewshot before the semi: section saved none, and its config.yaml (AdamW) was taken for
    the user's MoCo recipe: `pretrain --config` trained MoCo with AdamW without a word."""
    from fewshot.cli_moco import warn_finetune_config

    old = train_run_config(tmp_path / "old", semi=None, run=None)
    warn_finetune_config(old)
    err = capsys.readouterr().err
    assert "looks like a fine-tuning recipe" in err and "pretrain chooses it again" in err, err
    (tmp_path / "own.yaml").write_text("moco:\n  queue_size: 1024\noptim:\n  name: adamw\n")  # still quiet
    warn_finetune_config(tmp_path / "own.yaml")
    assert capsys.readouterr().err == ""


def test_run_says_once_what_it_chose_again_from_a_runs_config(digits_root, tmp_path, monkeypatch, capsys):
    """`fewshot run --config RUN/config.yaml` fine-tuned at run.finetune_lr 0.002 where the file held the scratch
    run's 0.004, without the note `fewshot train --config` gives; the record stays out of the run's settings."""
    config = train_run_config(tmp_path / "scratch")
    phases = []

    def start(cfg, out, budget_minutes, started=None, resume=False):  # the phases up to the model's choice
        run = pipeline.PipelineRun(cfg, out, budget_minutes, started, resume)
        try:
            run.start_up()
            run.check_test_split()
            run.choose_model()
        finally:
            release_all()
        phases.append(run)

    monkeypatch.setattr(pipeline, "run_pipeline", start)
    argv = ["run", "--data", str(digits_root), "--out", str(tmp_path / "r2"), "--config", str(config),
            "--pretrain", "--model", "test_resnet", "--img-size", "32", "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("note: ") == 1 and f"note: {config} records" in err, err
    assert "optim.lr 0.002 (0.004 there)" in err and "give e.g. optim.lr=0.004" in err, err
    assert RECHOSEN not in phases[0].cfg and RECHOSEN not in phases[0].requested
    assert main([*argv[:4], str(tmp_path / "r3"), *argv[5:], "optim.lr=0.004"]) == 0  # given: nothing to say
    assert "note: " not in capsys.readouterr().err


def test_a_run_stages_config_given_back_is_not_called_an_older_fewshots(tmp_path, capsys):
    """A `fewshot run` fine-tuning stage after its MoCo records no choice (its lr is run.finetune_lr): given back as
    --config, the note called it "an older fewshot's run config.yaml"."""
    from fewshot.config import mark_rechosen, note_rechosen

    stage = tmp_path / "run" / "finetune"
    stage.mkdir(parents=True)
    cfg = resolve(overrides=["run.pretrain=true", "optim.lr=0.002", "optim.backbone_lr_mult=1.0"])
    save_yaml(cfg, stage / "config.yaml")
    (stage / "log.jsonl").write_text("")
    now = resolve(file=stage / "config.yaml")
    mark_rechosen(now, stage / "config.yaml", set())
    now["optim"].update(lr=0.004, backbone_lr_mult=1.0)  # as `fewshot train` chooses them from scratch
    note_rechosen(now)
    err = capsys.readouterr().err
    assert "optim.lr 0.004 (0.002 there)" in err and "or a `fewshot run` stage's" in err, err
    assert "looks like an older" not in err
