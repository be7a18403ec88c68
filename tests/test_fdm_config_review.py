"""Review rev64 of the config fixes: `fewshot run --config` skipped every "is replaced" warning for any budgeted
run's config.yaml and for edits of a stage's own file; a moved run's resumed stage, and a stage written before the
record, kept the old MoCo export as the user's weights; the new upper bounds refused a run's own config.yaml on
--resume; and `data.datasets=none` meant every dataset instead of the folder `none`."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fewshot import run_stages
from fewshot.cli_warnings import warn_replaced_config_fields
from fewshot.config import CHOSEN, chosen_in_file, note_chosen, parse_override, resolve, save_yaml, validate
from fewshot.errors import UserError

FLAGS = {"model.name": "test_resnet", "model.img_size": 32, "train.device": "cpu"}


def run_config(**fields) -> dict:
    """A resolved config as a run saves it (every section, a CHOSEN record), with ``fields`` (dotted) set."""
    cfg = resolve(flags=FLAGS)
    note_chosen(cfg, "train.device")
    for dotted, value in fields.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    return cfg


def planned(cfg: dict, every: str = "train.eval_every") -> dict:
    """``cfg`` with a stage's plan (run_stages.plan_stage) filled in: ``every``, its evaluation interval."""
    cfg["sched"]["time_based"] = True
    cfg["train"].update(epochs=164, budget_minutes=0.05)
    section, key = every.split(".")
    cfg[section][key] = 3
    return cfg


def stage_path(tmp_path: Path, stage: str = "finetune", run_state: bool = True) -> Path:
    """A stage's config.yaml path in a `fewshot run` folder (run_state.json beside its stages)."""
    path = tmp_path / "runs" / "r1" / stage / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if run_state:
        (tmp_path / "runs" / "r1" / "run_state.json").write_text("{}")
    return path


# ------------------------------------------------------------------ 1: which files' fields are the run's own


def test_a_budgeted_train_runs_config_is_no_stage_file_and_warns(tmp_path, capsys):
    path = tmp_path / "t1" / "config.yaml"
    path.parent.mkdir()
    cfg = run_config(**{"train.budget_minutes": 0.3, "sched.time_based": True, "train.epochs": 100,
                        "moco.queue_size": 64})
    save_yaml(cfg, path)
    warn_replaced_config_fields(str(path))
    err = capsys.readouterr().err
    assert "train.epochs: 100 in" in err and "train.budget_minutes: 0.3 in" in err  # was silent
    assert "moco.queue_size: 64 in" in err and "sched.time_based" not in err


def test_a_stage_files_edited_fields_still_warn(tmp_path, capsys):
    path = stage_path(tmp_path)
    cfg = planned(run_config(**{"semi.method": "fixmatch", "moco.queue_size": 64, "moco.momentum": 0.9}))
    save_yaml(cfg, path)  # run.semi_method is pseudo: the run set semi.method off
    warn_replaced_config_fields(str(path))
    err = capsys.readouterr().err
    assert "semi.method: fixmatch in" in err and "moco.queue_size: 64 in" in err and "moco.momentum: 0.9 in" in err
    assert "train.epochs" not in err and "train.eval_every" not in err and "budget_minutes" not in err


def test_a_fixmatch_runs_stage_keeps_its_semi_method_without_a_warning(tmp_path, capsys):
    path = stage_path(tmp_path)
    save_yaml(planned(run_config(**{"semi.method": "fixmatch", "run.semi_method": "fixmatch"})), path)
    warn_replaced_config_fields(str(path))
    assert capsys.readouterr().err == ""


def test_a_moco_stages_own_queue_and_momentum_draw_no_warning_but_an_edit_does(tmp_path, capsys):
    path = stage_path(tmp_path, "pretrain")
    cfg = planned(run_config(**{"moco.queue_size": 1024, "moco.momentum": 0.99}), "moco.knn_every")
    cfg["_task"] = "moco"  # half a pool of 2048 images, at run.moco_momentum's 0.99
    save_yaml(cfg, path)
    warn_replaced_config_fields(str(path))
    assert capsys.readouterr().err == ""
    cfg["moco"].update(queue_size=32, momentum=0.9)  # under one step's keys (a batch of 64): no queue the run takes
    save_yaml(cfg, path)
    warn_replaced_config_fields(str(path))
    err = capsys.readouterr().err
    assert "moco.queue_size: 32 in" in err and "moco.momentum: 0.9 in" in err


def test_a_stage_file_copied_out_of_its_run_is_known_by_its_recorded_export(tmp_path, capsys):
    path = stage_path(tmp_path, run_state=False)
    cfg = planned(run_config(**{"run.pretrain": True}))
    cfg["model"]["weights"] = str(tmp_path / "runs" / "r1" / "backbone.safetensors")
    note_chosen(cfg, "model.weights")  # only a stage records it (run_stages.record_own_export)
    save_yaml(cfg, path)
    warn_replaced_config_fields(str(path))
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ 2: the run's own export is chosen again


def test_a_moved_runs_resumed_stage_records_its_new_export_as_chosen(tmp_path):
    sdir = stage_path(tmp_path).parent
    old, new = str(tmp_path / "old" / "backbone.safetensors"), str(tmp_path / "runs" / "r1" / "backbone.safetensors")
    cfg = planned(run_config(**{"run.pretrain": True, "model.weights": old}))
    note_chosen(cfg, "model.weights")
    save_yaml(cfg, sdir / "config.yaml")
    now = copy.deepcopy(cfg)
    now["model"]["weights"] = new
    note_chosen(now, "model.weights")
    scfg = run_stages.stage_config(sdir, now)
    assert scfg["model"]["weights"] == new and scfg[CHOSEN]["model.weights"] == new  # was the old path


@pytest.mark.parametrize("relative", [True, False])
def test_an_older_stages_own_export_is_chosen_by_rule(tmp_path, monkeypatch, relative):
    path = stage_path(tmp_path)
    export = tmp_path / "runs" / "r1" / "backbone.safetensors"
    cfg = planned(run_config(**{"run.pretrain": True}))  # a record, but none of model.weights (before fb4ac8a)
    cfg["model"]["weights"] = "runs/r1/backbone.safetensors" if relative else str(export)
    save_yaml(cfg, path)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the relative path is the run's cwd's, not this one's
    assert "model.weights" in chosen_in_file(path)
    assert resolve(file=str(path), flags=FLAGS, rechoose_weights=True)["model"]["weights"] is None


def test_a_users_weights_in_a_stage_file_stay_theirs(tmp_path):
    path = stage_path(tmp_path)
    mine = str(tmp_path / "mine" / "backbone.safetensors")
    save_yaml(planned(run_config(**{"run.pretrain": True, "model.weights": mine})), path)
    assert "model.weights" not in chosen_in_file(path)
    export = str(tmp_path / "runs" / "r1" / "backbone.safetensors")
    save_yaml(planned(run_config(**{"run.pretrain": False, "model.weights": export})), path)  # no MoCo stage
    assert "model.weights" not in chosen_in_file(path)


# ------------------------------------------------------------------ 3: a run's own config.yaml on --resume


def test_a_runs_recorded_config_above_the_new_bounds_still_resumes():
    cfg = run_config(**{"data.repeats": 2000, "data.randaug_ops": 150})
    assert validate(copy.deepcopy(cfg), recorded=True)["data"]["repeats"] == 2000
    with pytest.raises(UserError, match="data.repeats must be at most 1024"):
        validate(copy.deepcopy(cfg))  # a value given now keeps the bound


def test_a_recorded_count_beyond_any_run_is_refused_naming_the_runs_file():
    cfg = run_config(**{"data.randaug_group": 10**19})
    with pytest.raises(UserError, match="in the run's config.yaml"):
        validate(cfg, recorded=True)


# ------------------------------------------------------------------ 4: none as a dataset's name


@pytest.mark.parametrize("word", ["none", "None", "NONE"])
def test_none_names_a_dataset_folder(word):
    assert parse_override(f"data.datasets={word}")[1] == word  # was null: every dataset
    assert parse_override(f"data.cache_dir={word}")[1] is None  # a path's None is still none
    assert yaml.safe_load("[none]") == ["none"]  # as in a list, which kept the name before too
