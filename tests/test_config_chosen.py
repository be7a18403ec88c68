"""A run's config.yaml given back as --config: the fields the run chose itself (optim.lr and backbone_lr_mult from
--weights or the batch size, the device) are chosen again for the new command, while --resume keeps the run's
values and a value the user gave stays. Before, the saved 0.004 of a scratch run won over `--weights`' 1e-4."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import fewshot.ssl.pretrain as pretrain
import fewshot.train.finetune as finetune
from fewshot.cli import TRAIN_FLAGS, main, resolve_run_config
from fewshot.cli_parser import build_parser
from fewshot.config import file_settings, resolve, save_yaml
from fewshot.errors import UserError

CHOSEN = "_chosen"  # the reserved key of config.yaml that lists them
TINY = ["--model", "test_resnet", "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
        "--no-progress", "train.tensorboard=false", "train.threads=1"]
MOCO = ["--queue-size", "64", "moco.split_bn_groups=2", "moco.knn_k=5"]


class Captured(BaseException):
    """Stops a command where its task is built: the resolved config is all the test needs (not an Exception:
    main() would report it as an internal error)."""


@pytest.fixture
def captured(monkeypatch) -> list[dict]:
    """The configs `train` and `pretrain` build their task from (no training)."""
    seen: list[dict] = []

    def build(cfg, *args, **kwargs):
        seen.append(cfg)
        raise Captured

    monkeypatch.setattr(finetune, "SupervisedTask", build)
    monkeypatch.setattr(pretrain, "MoCoTask", build)
    return seen


def exported_weights(path):
    """A safetensors file recording its model as `fewshot export` does (never loaded: the task is captured)."""
    save_file({"w": torch.zeros(1)}, str(path), metadata={"model": "test_resnet", "img_size": "32"})
    return path


def saved(run) -> dict:
    return saved_yaml(run / "config.yaml")


def saved_yaml(path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def scratch_run(digits_root, tmp_path_factory):
    """A real `fewshot train` from random init: lr 0.004 x 1.0 chosen at run time."""
    out = tmp_path_factory.mktemp("chosen") / "scratch"
    assert main(["train", "--data", str(digits_root), "--out", str(out), *TINY]) == 0
    return out


def rerun(captured, *words) -> dict:
    with pytest.raises(Captured):
        main(list(map(str, words)))
    return captured[-1]


def test_a_runs_config_records_what_it_chose_at_run_time(scratch_run):
    cfg = saved(scratch_run)
    assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]) == (0.004, 1.0)
    # --device cpu was given: not chosen; train.amp=auto's precision is (hunt hBC 5)
    assert set(cfg[CHOSEN]) == {"optim.lr", "optim.backbone_lr_mult", "train.amp"}
    assert file_settings(scratch_run / "config.yaml").get("optim.lr") is None  # a choice, not a setting


def test_given_back_with_weights_the_lr_is_chosen_again(scratch_run, digits_root, tmp_path, captured, capsys):
    weights = exported_weights(tmp_path / "bb.safetensors")
    cfg = rerun(captured, "train", "--config", scratch_run / "config.yaml", "--data", digits_root,
                "--out", tmp_path / "cw", "--weights", weights, "--epochs", "1")
    assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]) == (1e-4, 0.1)  # --weights' help: the course's
    err = capsys.readouterr().err
    assert "optim.lr 0.0001 (0.004 there)" in err and "optim.backbone_lr_mult 0.1 (1 there)" in err
    assert str(scratch_run / "config.yaml") in err and err.count("note:") == 1
    assert set(cfg[CHOSEN]) == {"optim.lr", "optim.backbone_lr_mult"}
    assert "_rechosen" not in cfg  # in memory only: never in the new run's config.yaml or checkpoints


def test_the_same_command_again_chooses_the_same_values_without_a_note(scratch_run, digits_root, tmp_path,
                                                                       captured, capsys):
    cfg = rerun(captured, "train", "--config", scratch_run / "config.yaml", "--data", digits_root,
                "--out", tmp_path / "again")
    assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]) == (0.004, 1.0)
    assert "note:" not in capsys.readouterr().err


def older_copy(run, tmp_path, **edits) -> Path:
    """The run's config.yaml as an older fewshot wrote it: no _chosen record; ``edits``: section -> fields."""
    old = saved(run)
    del old[CHOSEN]
    for section, fields in edits.items():
        old[section].update(fields)
    folder = tmp_path / "old_run"  # in its run folder, as a run left it
    folder.mkdir(exist_ok=True)
    (folder / "log.jsonl").touch()
    (folder / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    return folder / "config.yaml"


def test_a_users_full_config_outside_a_run_folder_still_pins_its_values(scratch_run, digits_root, tmp_path,
                                                                         captured, capsys):
    """A config copied from a run and edited (every section there) is the user's once it left the run folder: its
    lr 0.004 under --weights is meant, and no note calls it an older fewshot's."""
    own = tmp_path / "mine.yaml"
    own.write_text(older_copy(scratch_run, tmp_path).read_text())
    cfg = rerun(captured, "train", "--config", own, "--data", digits_root, "--out", tmp_path / "o",
                "--weights", exported_weights(tmp_path / "bb.safetensors"))
    assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]) == (0.004, 1.0)
    assert "older fewshot" not in capsys.readouterr().err


def test_an_older_runs_config_has_the_values_its_rules_chose_chosen_again(scratch_run, digits_root, tmp_path,
                                                                           captured, capsys):
    old = older_copy(scratch_run, tmp_path, train={"device": "cuda" if not torch.cuda.is_available() else "cpu"})
    assert file_settings(old).get("optim.lr") is None  # 0.004: the scratch rule's, not a setting
    cfg = rerun(captured, "train", "--config", old, "--data", digits_root, "--out", tmp_path / "o",
                "--weights", exported_weights(tmp_path / "bb.safetensors"))
    assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]) == (1e-4, 0.1)  # was 0.004 x 1.0, without a word
    assert cfg["train"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # auto on this machine
    err = capsys.readouterr().err
    assert "optim.lr 0.0001 (0.004 there)" in err and "optim.backbone_lr_mult 0.1 (1 there)" in err
    assert "an older fewshot's" in err and "optim.lr=0.004 to keep" in err and err.count("older fewshot") == 1
    assert set(cfg[CHOSEN]) >= {"optim.lr", "optim.backbone_lr_mult"}


def test_an_older_runs_value_no_rule_chooses_stays_pinned(scratch_run, digits_root, tmp_path, captured, capsys):
    old = older_copy(scratch_run, tmp_path, optim={"lr": EDITED})  # a --lr the user typed for that run
    cfg = rerun(captured, "train", "--config", old, "--data", digits_root, "--out", tmp_path / "o",
                "--weights", exported_weights(tmp_path / "bb.safetensors"))
    assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]) == (EDITED, 0.1)
    err = capsys.readouterr().err
    assert "optim.lr " not in err and "optim.backbone_lr_mult 0.1 (1 there)" in err


def test_an_older_runs_value_given_on_the_command_line_is_kept_without_a_note(scratch_run, digits_root, tmp_path,
                                                                               captured, capsys):
    cfg = rerun(captured, "train", "--config", older_copy(scratch_run, tmp_path), "--data", digits_root,
                "--out", tmp_path / "o", "--weights", exported_weights(tmp_path / "bb.safetensors"),
                "optim.lr=0.004", "optim.backbone_lr_mult=1")
    assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]) == (0.004, 1.0)  # the note's advice works
    assert "older fewshot" not in capsys.readouterr().err


def test_an_older_moco_runs_lr_is_scaled_again(digits_root, tmp_path, captured, capsys):
    first = rerun(captured, "pretrain", "--data", digits_root, "--out", tmp_path / "p1", *TINY, *MOCO)
    first.pop(CHOSEN)  # as an older fewshot wrote it: _task: moco, no record
    save_yaml(first, tmp_path / "p1.yaml")
    cfg = rerun(captured, "pretrain", "--config", tmp_path / "p1.yaml", "--data", digits_root, "--out",
                tmp_path / "p2", "--batch-size", "16")
    assert cfg["optim"]["lr"] == pytest.approx(0.03 * 16 / 256)
    assert "optim.lr 0.001875 (0.0009375 there)" in capsys.readouterr().err


def test_a_users_own_config_still_pins_its_values(digits_root, tmp_path, captured, capsys):
    own = tmp_path / "own.yaml"  # the same values as a scratch run's, typed into a recipe: the user's
    own.write_text("optim:\n  lr: 0.004\n  backbone_lr_mult: 1.0\ntrain:\n  device: cpu\n")
    cfg = rerun(captured, "train", "--config", own, "--data", digits_root, "--out", tmp_path / "o",
                "--weights", exported_weights(tmp_path / "bb.safetensors"))
    assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"], cfg["train"]["device"]) == (0.004, 1.0, "cpu")
    assert "chose" not in capsys.readouterr().err


def test_resume_keeps_an_older_runs_values(scratch_run, tmp_path, digits_root):
    run = shutil.copytree(scratch_run, tmp_path / "run")
    older = older_copy(run, tmp_path)
    shutil.copy(older, run / "config.yaml")  # the run itself written by an older fewshot
    for config in ([], ["--config", str(older)]):
        args, extra = build_parser().parse_known_args(["train", "--data", str(digits_root), "--out", str(run),
                                                       "--resume", "--epochs", "2", *config])
        cfg = resolve_run_config(args, extra, TRAIN_FLAGS)
        assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]) == (0.004, 1.0)
        assert "_rechosen" not in cfg and CHOSEN not in cfg


def first_config(captured, tmp_path, *words) -> Path:
    """The config.yaml a `fewshot train` start writes (the config its task is built from), saved as a run does."""
    cfg = rerun(captured, "train", *words)
    save_yaml(cfg, tmp_path / "first.yaml")
    return tmp_path / "first.yaml"


@pytest.mark.parametrize("how", ["flag", "word", "file"])
def test_an_lr_the_user_gave_stays_pinned(digits_root, tmp_path, captured, how):
    own = tmp_path / "own.yaml"
    own.write_text("optim:\n  lr: 0.002\n")
    given = {"flag": ["--lr", "0.002"], "word": ["optim.lr=0.002"], "file": ["--config", own]}[how]
    config = first_config(captured, tmp_path, "--data", digits_root, "--out", tmp_path / "first", *TINY, *given)
    assert saved_yaml(config)[CHOSEN] == {"optim.backbone_lr_mult": 1.0}  # the lr was the user's
    cfg = rerun(captured, "train", "--config", config, "--data", digits_root, "--out", tmp_path / "second",
                "--weights", exported_weights(tmp_path / "bb.safetensors"))
    assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]) == (0.002, 0.1)  # typed stays; the rest re-chosen


def test_resume_keeps_the_runs_chosen_values(scratch_run, tmp_path, digits_root, capsys):
    run = shutil.copytree(scratch_run, tmp_path / "run")
    for config in ([], ["--config", str(run / "config.yaml")]):
        args, extra = build_parser().parse_known_args(["train", "--data", str(digits_root), "--out", str(run),
                                                       "--resume", "--epochs", "2", *config])
        cfg = resolve_run_config(args, extra, TRAIN_FLAGS)
        assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]) == (0.004, 1.0)
        assert "_rechosen" not in cfg
    # and a real resume, given its own config.yaml: exactly the run's values, the record kept for later
    assert main(["train", "--data", str(digits_root), "--out", str(run), "--resume", "--epochs", "2",
                 "--config", str(run / "config.yaml"), "--no-progress"]) == 0, capsys.readouterr().err
    after = saved(run)
    assert (after["optim"]["lr"], after["optim"]["backbone_lr_mult"]) == (0.004, 1.0)
    assert set(after[CHOSEN]) == {"optim.lr", "optim.backbone_lr_mult", "train.amp"}
    assert "chosen by the run" not in capsys.readouterr().err


def test_pretrain_scales_the_lr_again_for_another_batch_size(digits_root, tmp_path, captured, capsys):
    first = rerun(captured, "pretrain", "--data", digits_root, "--out", tmp_path / "p1", *TINY, *MOCO)
    assert first["optim"]["lr"] == pytest.approx(0.03 * 8 / 256) and "optim.lr" in first[CHOSEN]
    save_yaml(first, tmp_path / "p1.yaml")
    cfg = rerun(captured, "pretrain", "--config", tmp_path / "p1.yaml", "--data", digits_root, "--out",
                tmp_path / "p2", "--batch-size", "16")
    assert cfg["optim"]["lr"] == pytest.approx(0.03 * 16 / 256)  # "0.03 x global batch / 256", as --lr's help says
    assert "optim.lr 0.001875 (0.0009375 there)" in capsys.readouterr().err


def test_the_device_auto_chose_is_chosen_again(digits_root, tmp_path, captured):
    config = first_config(captured, tmp_path, "--data", digits_root, "--out", tmp_path / "a", "--model", "test_resnet")
    first = saved_yaml(config)
    assert "train.device" in first[CHOSEN]
    other = "cuda" if first["train"]["device"] == "cpu" else "cpu"
    first["train"]["device"] = first[CHOSEN]["train.device"] = other  # written on another machine
    config.write_text(yaml.safe_dump(first, sort_keys=False))
    cfg = rerun(captured, "train", "--config", config, "--data", digits_root, "--out", tmp_path / "b")
    assert cfg["train"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # auto, on this machine


def test_a_bad_record_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"{CHOSEN}: {{train.epochs: 3}}\ntrain: {{epochs: 3}}\n")
    with pytest.raises(UserError, match=r"c\.yaml: _chosen lists train\.epochs, which no run chooses itself"):
        resolve(file=path)
    for bad in ("optim.lr", "[optim.lr]"):  # a list: what a development build wrote, values unrecorded
        path.write_text(f"{CHOSEN}: {bad}\n")
        with pytest.raises(UserError, match=r"c\.yaml: _chosen must map each field the run chose itself to the value"):
            resolve(file=path)


def test_the_per_mode_metrics_say_which_weights_as_metrics_json_does(scratch_run):
    weights = json.loads((scratch_run / "metrics.json").read_text())["weights"]
    for mode in ("known", "unknown"):
        assert json.loads((scratch_run / f"metrics_{mode}.json").read_text())["weights"] == weights


def test_the_network_another_weights_file_records_is_taken_again(digits_root, tmp_path, captured, capsys):
    first = exported_weights(tmp_path / "first.safetensors")  # test_resnet at 32 px: no --model, no --img-size
    config = first_config(captured, tmp_path, "--data", digits_root, "--out", tmp_path / "a", "--weights", first)
    assert {"model.name", "model.img_size"} <= set(saved_yaml(config)[CHOSEN])
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(1)}, str(other), metadata={"model": "resnet10t", "img_size": "48"})
    cfg = rerun(captured, "train", "--config", config, "--data", digits_root, "--out", tmp_path / "b",
                "--weights", other)
    assert (cfg["model"]["name"], cfg["model"]["img_size"]) == ("resnet10t", 48)  # not the first file's network
    assert "model.name resnet10t (test_resnet there)" in capsys.readouterr().err


EDITED = 0.01171875  # an lr the user typed into a run's config.yaml (%g showed it as 0.0117188)


def edited_copy(run, tmp_path, lr=EDITED) -> Path:
    """The run's config.yaml with optim.lr edited by hand (its _chosen record left as the run wrote it)."""
    cfg = saved(run)
    cfg["optim"]["lr"] = lr
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_a_chosen_value_edited_in_the_file_is_the_users(scratch_run, digits_root, tmp_path, captured, capsys):
    edited = edited_copy(scratch_run, tmp_path)
    assert saved_yaml(edited)[CHOSEN]["optim.lr"] == 0.004  # the record: the value the run chose
    assert file_settings(edited)["optim.lr"] == EDITED  # a setting now, not a choice
    cfg = rerun(captured, "train", "--config", edited, "--data", digits_root, "--out", tmp_path / "e",
                "--weights", exported_weights(tmp_path / "bb.safetensors"))
    assert (cfg["optim"]["lr"], cfg["optim"]["backbone_lr_mult"]) == (EDITED, 0.1)  # kept; the unedited re-chosen
    err = capsys.readouterr().err
    assert "optim.lr" not in err and "optim.backbone_lr_mult 0.1 (1 there)" in err
    assert "optim.lr" not in cfg[CHOSEN]  # the new run's config.yaml pins it too


def test_resume_refuses_a_chosen_value_edited_in_the_file(scratch_run, digits_root, tmp_path):
    run = shutil.copytree(scratch_run, tmp_path / "run")
    args, extra = build_parser().parse_known_args(["train", "--data", str(digits_root), "--out", str(run),
                                                   "--resume", "--config", str(edited_copy(run, tmp_path))])
    with pytest.raises(UserError, match=r"changes optim\.lr \(0\.004 in the run, 0\.01171875 now\)"):
        resolve_run_config(args, extra, TRAIN_FLAGS)


def test_a_malformed_record_in_the_run_is_refused_on_resume(scratch_run, digits_root, tmp_path):
    run = shutil.copytree(scratch_run, tmp_path / "run")
    cfg = saved(run)
    for bad in ("optim.lr", ["optim.lr"]):
        cfg[CHOSEN] = bad
        (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        args, extra = build_parser().parse_known_args(["train", "--data", str(digits_root), "--out", str(run),
                                                       "--resume", "--epochs", "2"])
        with pytest.raises(UserError, match=r"run[/\\]config\.yaml: _chosen must map each field"):
            resolve_run_config(args, extra, TRAIN_FLAGS)


def test_the_note_shows_the_recorded_value_exactly(scratch_run, digits_root, tmp_path, captured, capsys):
    cfg = saved(scratch_run)
    cfg["optim"]["lr"] = cfg[CHOSEN]["optim.lr"] = EDITED  # as chosen by a run (a batch scaling, say)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rerun(captured, "train", "--config", tmp_path / "c.yaml", "--data", digits_root, "--out", tmp_path / "n",
          "--weights", exported_weights(tmp_path / "bb.safetensors"))
    err = capsys.readouterr().err
    assert "optim.lr 0.0001 (0.01171875 there)" in err and "optim.lr=0.01171875 to keep" in err


def test_resume_drops_from_the_record_what_the_command_gives(scratch_run, digits_root, tmp_path):
    run = shutil.copytree(scratch_run, tmp_path / "run")
    cfg = saved(run)
    cfg[CHOSEN]["train.device"] = "cpu"  # as a run started with device auto records it
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for given, listed in (([], True), (["--device", "cpu"], False)):
        args, extra = build_parser().parse_known_args(["train", "--data", str(digits_root), "--out", str(run),
                                                       "--resume", "--epochs", "2", *given])
        resumed = resolve_run_config(args, extra, TRAIN_FLAGS)
        assert ("train.device" in resumed[CHOSEN]) is listed
        assert resumed[CHOSEN]["optim.lr"] == 0.004


def test_pretrain_warning_leaves_out_the_lr_it_chooses_again(scratch_run, tmp_path, capsys):
    from fewshot.cli_warnings import warn_finetune_config

    warn_finetune_config(scratch_run / "config.yaml")
    err = capsys.readouterr().err
    assert "looks like a fine-tuning recipe" in err and "lr 0.004" not in err
    assert "but optim.lr, which the run that wrote it chose itself: pretrain chooses it again" in err
    warn_finetune_config(edited_copy(scratch_run, tmp_path))
    err = capsys.readouterr().err
    assert f"lr {EDITED}" in err and "chooses it again" not in err
