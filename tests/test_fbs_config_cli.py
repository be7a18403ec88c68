"""Config and command-line fixes (fBS): a run fine-tuned from weights that record data.bit_depth resumes and serves
as --config (its _chosen record was refused); an empty RANK in one process; dataset names and paths kept as typed
(YAML read `1_000` as 1000); --no-progress belongs to one command, not to the run; a value where a section belongs
in a run's config.yaml is refused by --resume as --config refuses it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import save_file

from fewshot.cli import TRAIN_FLAGS, resolve_run_config
from fewshot.cli_parser import build_parser
from fewshot.config import FieldError, parse_override, resolve
from fewshot.errors import UserError
from fewshot.models.backbone import create_backbone
from helpers.checks import run_main
from helpers.tiny import tiny_train_argv, trained_tiny_run


def twelve_bit_backbone(path: Path) -> Path:
    """A test_resnet backbone whose metadata records data.bit_depth 12, as `fewshot export` of such a run writes."""
    state = {k: v.clone().contiguous() for k, v in create_backbone("test_resnet", img_size=16).state_dict().items()}
    save_file(state, str(path), metadata={"model": "test_resnet", "img_size": "16", "bit_depth": "12"})
    return path


def saved(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


@pytest.fixture(scope="module")
def tiny_run(digits_root, tmp_path_factory) -> Path:
    """One finished 1-epoch run, trained with --no-progress (tiny_train_argv); tests copy it."""
    return trained_tiny_run(digits_root, tmp_path_factory.mktemp("fbs") / "run")


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# 1. data.bit_depth adopted from --weights is a field the run chose: its _chosen record lists it


def test_a_run_from_weights_recording_a_bit_depth_resumes_and_serves_as_config(digits_root, tmp_path):
    weights = twelve_bit_backbone(tmp_path / "bb.safetensors")
    run = tmp_path / "w1"
    rc, _, err = run_main(*tiny_train_argv(digits_root, run, "--weights", weights))
    assert rc == 0, err
    assert saved(run)["data"]["bit_depth"] == 12 and saved(run)["_chosen"]["data.bit_depth"] == 12
    rc, _, err = run_main(*tiny_train_argv(digits_root, run, "--weights", weights, "--resume"), "train.epochs=2")
    assert rc == 0, err  # was: "_chosen lists data.bit_depth, which no run chooses itself"
    assert "_chosen" not in err
    rc, _, err = run_main(*tiny_train_argv(digits_root, tmp_path / "w2", "--config", run / "config.yaml"))
    assert rc == 0, err
    assert saved(tmp_path / "w2")["data"]["bit_depth"] == 12  # chosen again from the same weights file


def test_pretrain_from_weights_recording_a_bit_depth_resumes(digits_root, tmp_path):
    weights = twelve_bit_backbone(tmp_path / "bb.safetensors")
    command = ["pretrain", "--data", digits_root, "--out", tmp_path / "p", "--weights", weights, "--model",
               "test_resnet", "--img-size", "16", "--batch-size", "8", "--queue-size", "32", "--device", "cpu",
               "--no-progress", "moco.split_bn_groups=2", "train.tensorboard=false", "train.threads=1"]
    rc, _, err = run_main(*command, "--epochs", "1")
    assert rc == 0, err
    assert saved(tmp_path / "p")["_chosen"]["data.bit_depth"] == 12
    rc, _, err = run_main(*command, "--epochs", "2", "--resume")
    assert rc == 0, err


def test_run_adopts_the_bit_depth_its_weights_record(tmp_path, settings_only_run, capsys):
    """`fewshot run --weights X` decoded with auto where `fewshot train --weights X` takes X's 12."""
    weights = twelve_bit_backbone(tmp_path / "bb.safetensors")
    command = ["run", "--data", tmp_path, "--datasets", "digits", "--weights", weights, "--no-pretrain",
               "--budget-minutes", "1"]
    assert run_main(*command, "--out", tmp_path / "r1")[0] == 0
    cfg = settings_only_run[-1]
    assert cfg["data"]["bit_depth"] == 12 and cfg["_chosen"]["data.bit_depth"] == 12
    assert run_main(*command, "--out", tmp_path / "r2", "data.bit_depth=auto")[0] == 0  # a word typed wins
    assert settings_only_run[-1]["data"]["bit_depth"] == "auto"


# 2. RANK: one process ignores it, as init_distributed does; torchrun's missing or bad one is a user error naming it


def test_an_empty_rank_in_one_process_is_no_internal_error(digits_root, tmp_path, monkeypatch):
    from fewshot.cli import launch_rank

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "")
    rc, out, err = run_main(*tiny_train_argv(digits_root, tmp_path / "run"), "run.pseudo_rounds=1")
    assert rc == 0, err  # was: ValueError, an internal error, once the run had trained
    assert "done:" in out and "does nothing" in err  # the closing line and warn_unused_overrides
    for rank in ("", "x", "3"):
        monkeypatch.setenv("RANK", rank)
        assert launch_rank() == 0


def test_a_bad_rank_under_torchrun_names_rank(monkeypatch, tmp_path):
    from fewshot.cli import launch_rank
    from fewshot.cli_warnings import warn_finetune_config

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "")
    with pytest.raises(UserError, match="RANK is not set"):  # empty counts as unset, which init_distributed refuses
        launch_rank()
    monkeypatch.setenv("RANK", "1")
    assert launch_rank() == 1
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(UserError, match="RANK='one' must be a whole number"):
        launch_rank()
    recipe = tmp_path / "f.yaml"
    recipe.write_text("optim: {name: adamw}\n")
    with pytest.raises(UserError, match="RANK='one'"):
        warn_finetune_config(str(recipe))


# 3. names and paths are text, kept as typed


@pytest.mark.parametrize("name", ["1_000", "0x10", "+5", "2020-01-01", "010", "on", "1e3"])
def test_dataset_names_are_kept_as_typed(name, tmp_path):
    assert parse_override(f"data.datasets={name}")[1] == name
    assert resolve(overrides=[f"data.datasets={name}"])["data"]["datasets"] == name
    assert resolve(overrides=[f"data.datasets=[{name}, b]"])["data"]["datasets"] == [name, "b"]
    assert parse_override(f"data.unlabeled={name}")[1] == name  # a folder's name too
    config = tmp_path / "f.yaml"
    config.write_text(f"data:\n  datasets: [{name}, b]\n")
    assert resolve(file=config)["data"]["datasets"] == [name, "b"]
    config.write_text(f"data:\n  datasets: {name}\n")
    assert resolve(file=config)["data"]["datasets"] == name


def test_null_still_means_every_dataset_and_other_fields_still_read_yaml():
    assert resolve(overrides=["data.datasets=null"])["data"]["datasets"] is None
    assert resolve(overrides=["optim.lr=1e-3", "model.img_size=0x10"])["optim"]["lr"] == 1e-3


def test_a_dataset_folder_named_like_a_number_trains(digits_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(digits_root / "digits", root / "1_000")
    rc, _, err = run_main(*tiny_train_argv(root, tmp_path / "run"), "data.datasets=1_000")
    assert rc == 0, err  # was: "1000 not found ... Available: 1_000"
    assert saved(tmp_path / "run")["data"]["datasets"] == "1_000"


def test_weights_0_is_refused_not_random_init(tmp_path):
    """A path field must be text, as model.weights=123 is refused: 0 was taken for none (`0 in ("", False)`)."""
    for given in ({"overrides": ["model.weights=0"]}, {"file": _write(tmp_path, "model:\n  weights: 0\n")},
                  {"flags": {"model.weights": 0}}):
        with pytest.raises(FieldError, match="model.weights must be a path, not 0"):
            resolve(**given)
    rc, _, err = run_main("train", "--data", tmp_path, "--out", tmp_path / "run", "model.weights=0")
    assert rc == 2 and "model.weights must be a path, not 0" in err, err
    for none in ("model.weights=false", "model.weights=null"):  # none, as before
        assert resolve(overrides=[none])["model"]["weights"] is None


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


# 4. --no-progress belongs to the command that gives it


def resume_config(out: Path, *words) -> dict:
    args, extra = build_parser().parse_known_args(["train", "--data", str(out.parent), "--out", str(out),
                                                   "--resume", *map(str, words)])
    return resolve_run_config(args, extra, TRAIN_FLAGS)


def test_no_progress_is_not_inherited_by_resume_or_config(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    assert saved(run)["train"]["progress"] is False  # the run was trained with --no-progress
    assert resume_config(run, "train.epochs=2")["train"]["progress"] is True  # was False: no bars, no way back
    assert resume_config(run, "--no-progress")["train"]["progress"] is False
    assert resume_config(run, "train.progress=false")["train"]["progress"] is False
    assert resolve(file=run / "config.yaml")["train"]["progress"] is True
    recipe = _write(tmp_path, "train:\n  progress: false\n")  # the user's own recipe keeps it
    assert resolve(file=recipe)["train"]["progress"] is False
    assert resume_config(run, "--config", recipe)["train"]["progress"] is False


def test_run_resume_shows_progress_unless_told_not_to(tmp_path, settings_only_run):
    command = ["run", "--data", tmp_path, "--datasets", "digits", "--out", tmp_path / "r", "--budget-minutes", "1"]
    assert run_main(*command, "--no-progress")[0] == 0
    assert settings_only_run[-1]["train"]["progress"] is False
    rc, _, err = run_main(*command, "--resume")
    assert rc == 0, err
    assert settings_only_run[-1]["train"]["progress"] is True and "train.progress" not in err


# 5. a value where a section belongs in a run's config.yaml


def test_resume_refuses_a_value_where_a_section_belongs(tiny_run, digits_root, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    data = saved(run)
    data["semi"] = "fixmatch"
    (run / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    rc, _, err = run_main(*tiny_train_argv(digits_root, run, "--resume"), "train.epochs=2")
    assert rc == 2, err
    assert f"config file {run / 'config.yaml'}: section 'semi' must hold fields" in err and "'fixmatch'" in err
    assert "semi.views" not in err  # was: "changes semi.views ('randaug' in the run, 'mocov2' now)"
