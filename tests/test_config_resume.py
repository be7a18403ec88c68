"""--resume with the settings a run recorded: `fewshot run` after --weights, empty --config sections, and a typo in
a run's config.yaml."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fewshot.cli import TRAIN_FLAGS, main, resolve_run_config
from fewshot.cli_parser import build_parser
from fewshot.config import resolve, save_yaml
from fewshot.errors import UserError


def exported_weights(path):
    """A safetensors file recording its model as `fewshot export` does."""
    save_file({"w": torch.zeros(1)}, str(path), metadata={"model": "test_resnet", "img_size": "32"})
    return path


def test_run_resume_of_a_run_whose_model_came_from_weights(tmp_path, settings_only_run, capsys):
    """The same command + --resume was refused: "changes model.name ('test_resnet' in the run, 'resnet18' now)"."""
    weights = exported_weights(tmp_path / "bb.safetensors")
    command = ["run", "--data", str(tmp_path), "--datasets", "digits", "--weights", str(weights),
               "--budget-minutes", "1.5", "--out", str(tmp_path / "run")]
    assert main(command) == 0
    assert main([*command, "--resume"]) == 0, capsys.readouterr().err
    assert main([*command, "--img-size", "32", "--resume"]) == 2  # another command is still refused
    assert "model.img_size" in capsys.readouterr().err
    weights.unlink()  # moved away since: the run's own model is kept
    assert main([*command, "--resume"]) == 0, capsys.readouterr().err
    assert [c["model"]["name"] for c in settings_only_run] == ["test_resnet"] * 3


def saved_train_run(tmp_path, *extra_lines):
    """A `fewshot train` run folder's config.yaml as a run writes it (its rates resolved)."""
    out = tmp_path / "run"
    out.mkdir()
    cfg = resolve(flags={"data.root": str(tmp_path), "train.device": "cpu", "train.epochs": 1})
    cfg["optim"].update(lr=0.004, backbone_lr_mult=1.0)
    save_yaml(cfg, out / "config.yaml")
    if extra_lines:
        text = (out / "config.yaml").read_text().replace("train:\n", "train:\n" + "".join(extra_lines), 1)
        (out / "config.yaml").write_text(text)
    return out


def resume_config(out, *words):
    args, extra = build_parser().parse_known_args(["train", "--data", str(out.parent), "--out", str(out),
                                                   "--resume", *words])
    return resolve_run_config(args, extra, TRAIN_FLAGS)


def test_train_resume_with_an_empty_section_in_its_config_file(tmp_path):
    out = saved_train_run(tmp_path)
    config = tmp_path / "f.yaml"
    config.write_text("optim:\ntrain: {epochs: 2}\n")
    cfg = resume_config(out, "--config", str(config))
    assert cfg["train"]["epochs"] == 2 and cfg["optim"]["lr"] == 0.004


def test_resume_refuses_a_typo_in_the_runs_config_yaml(tmp_path, capsys):
    out = saved_train_run(tmp_path, "  epochz: 6\n")
    with pytest.raises(UserError, match=r"config\.yaml holds the unknown config field\(s\) 'train.epochz'"):
        resume_config(out)
    assert main(["train", "--data", str(tmp_path), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "'train.epochz'" in err and str(out / "config.yaml") in err


def test_a_resume_refused_before_the_first_checkpoint_offers_no_checkpoint(tmp_path):
    """A start stopped before its first checkpoint (config.yaml alone) resumed with another --model was told that
    `fewshot train --weights RUN/checkpoints/last.pt` starts from its weights: there is no last.pt. Nothing was
    trained, so the same command without --resume starts afresh there, as prepare_run_dir allows."""
    from fewshot.run_lock import release_all
    from fewshot.train.run_dir import prepare_run_dir

    out = saved_train_run(tmp_path)
    with pytest.raises(UserError) as refused:
        resume_config(out, "--model", "test_resnet")
    said = str(refused.value)
    assert "changes model.name ('resnet18' in the run, 'test_resnet' now)" in said, said
    assert f"Nothing was trained there yet (no {out}/checkpoints/last.pt): run the same command without --resume to " \
           f"start it afresh with these settings, or drop those settings to start it as it was configured" in said, said
    assert "--weights" not in said, said
    try:  # the advice holds: without --resume the folder's start is no obstacle
        prepare_run_dir(out, False, {"data": {"root": str(tmp_path / "data")}})
    finally:
        release_all()


def test_a_refused_resume_quotes_the_paths_it_offers(tmp_path):
    """resume_refused wrote `{out}/checkpoints/last.pt` as it was: a folder named with a space gave two words, in
    the command to paste and in "no RUN/checkpoints/last.pt". Its undo clause is an argument of its own."""
    import shlex

    from fewshot.train.resume_config import merge_resume_config

    out = saved_train_run(tmp_path).rename(tmp_path / "P q")
    last = shlex.quote(str(out / "checkpoints" / "last.pt"))
    with pytest.raises(UserError) as refused:
        merge_resume_config(out, resolve(), {"train.seed": 3})
    assert f"Nothing was trained there yet (no {last}): run the same command without --resume to start it afresh " \
           f"with these settings, or drop those settings to start it as it was configured" in str(refused.value)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(UserError) as refused:
        merge_resume_config(out, resolve(), {"train.seed": 3})
    assert f"Drop those settings to resume, or start a new run with another --out (`fewshot train --weights {last}` " \
           f"starts from its weights)." in str(refused.value)


@pytest.mark.parametrize("text", ["false\n", "[]\n", "0\n"])
def test_a_config_file_that_holds_no_mapping_is_refused(tmp_path, capsys, text):
    """A --config file holding `false` or `[]` was taken for an empty one ({}), and the run went on with the
    defaults; it is refused, naming the file and what it holds."""
    config = tmp_path / "recipe.yaml"
    config.write_text(text)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    held = "a list" if text == "[]\n" else f"`{text.strip()}` alone"
    assert f"config file {config} must hold a mapping of sections (model:, optim:, ...), but it holds {held}." in err, \
        err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("deleted", [True, False])
def test_the_engine_says_a_deleted_config_beside_last_pt_is_missing(tmp_path, deleted):
    """The engine's check of last.pt's settings (a resume not through merge_resume_config) said a deleted
    config.yaml was "edited since last.pt was written" to change model.name, naming a file that does not exist."""
    from types import SimpleNamespace

    from fewshot.train.engine import Engine
    from test_resume_weights_model import recorded_checkpoint

    out = tmp_path / "run"
    recorded = resolve(overrides=["model.name=test_resnet", "train.device=cpu"])
    recorded_checkpoint(out / "checkpoints" / "last.pt", recorded)
    if not deleted:
        save_yaml(recorded, out / "config.yaml")
    engine = SimpleNamespace(run_dir=out, ckpt_dir=out / "checkpoints", cfg=resolve(overrides=["train.device=cpu"]))
    with pytest.raises(UserError) as refused:
        Engine._check_same_config(engine, {"config": recorded})
    said = str(refused.value)
    if deleted:
        assert f"--resume cannot continue {out}: its config.yaml is missing" in said, said
        assert "edited since" not in said and "records them (its `config`)" in said, said
    else:
        assert "its config.yaml (edited since" in said and "changes model.name ('test_resnet' in the run" in said, said
