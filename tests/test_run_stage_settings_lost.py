"""`fewshot run --resume` reads a stage's config.yaml as train/pretrain --resume read theirs (resumed_settings): an
emptied one went through with_defaults({}) and the engine refused it as the command "changing" model.name, and one
holding `false` failed with the loader's bare "must hold a mapping". Both are a stage whose settings are lost, said
as such, with the line that gives them back from its last.pt."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

import fewshot.run_reuse as run_reuse
import fewshot.run_stages as run_stages
from fewshot.config import CHOSEN, resolve
from fewshot.errors import UserError, shell_quoted
from helpers.checks import run_main
from test_resume_weights_model import NAMES, pasted_once, recorded_checkpoint
from test_run_resume import _cmd, stopped_in_stage

SHORT = ("--budget-minutes", "0.03")  # after BASE's 0.2, so it wins: the run's length is not the subject (suite time)


@pytest.mark.parametrize("text, what", [("", "is empty"), ("{}\n", "holds no settings (`{}`)"),
                                        ("false\n", "is not a config fewshot can read (config file "),
                                        (None, "is missing")])
@pytest.mark.parametrize("read", ["stage_config", "adopt_stage_architecture"])
@pytest.mark.parametrize("name", NAMES)
def test_a_stage_whose_config_holds_no_settings_is_refused_as_lost(tmp_path, text, what, read, name):
    run = tmp_path / name
    sdir = run / "finetune_labelled"
    recorded = resolve(overrides=["model.name=test_resnet2", "train.device=cpu"])
    recorded[CHOSEN] = {}
    recorded_checkpoint(sdir / "checkpoints" / "last.pt", recorded)
    (run / "run_state.json").write_text("{}")
    if text is not None:
        (sdir / "config.yaml").write_text(text)
    cfg = resolve(overrides=["model.name=test_resnet", "train.device=cpu"])
    with pytest.raises(UserError) as refused:
        if read == "stage_config":
            run_stages.stage_config(sdir, cfg)
        else:
            run_reuse.adopt_stage_architecture(cfg, sdir)
    said = str(refused.value)
    assert f"--resume cannot continue {shell_quoted(sdir)}: its config.yaml {what}" in said, said
    last = shell_quoted(sdir / "checkpoints" / "last.pt")
    assert f"{last} records them (its `config`): `" in said, said
    assert f"or start a new run with another --out (`fewshot run` starts over; this stage belongs to the run in " \
           f"{shell_quoted(run)})." in said, said
    assert "changes model.name" not in said and "--weights" not in said, said
    done = pasted_once(said, "records them (its `config`): `", "` writes them back", ("stage", name))
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((sdir / "config.yaml").read_text()) == recorded
    assert run_stages.stage_config(sdir, cfg)["model"]["name"] == "test_resnet2"


@pytest.fixture(scope="module")
def stopped_run(digits_root, tmp_path_factory):
    """A real `fewshot run` stopped by SIGTERM in its fine-tuning stage, trained once for the tests that copy it."""
    from fewshot.train.supervised import SupervisedTask

    out = tmp_path_factory.mktemp("stopped") / "run q"
    stopped_in_stage(_cmd(digits_root, out, "run.semi_method=off", *SHORT), "finetune", SupervisedTask)
    return out


@pytest.mark.parametrize("lost, what", [("emptied", "is empty"), ("deleted", "is missing")])
def test_a_stopped_run_whose_stage_config_was_emptied_is_refused_then_resumed(digits_root, tmp_path, stopped_run,
                                                                              lost, what):
    """A real `fewshot run` stopped in its fine-tuning stage, whose config.yaml was then emptied: its --resume was
    refused as changing model.name ('resnet18' in the run). Refused as lost settings, put back by the line the
    message gives, the run resumes from the stage's last.pt. A deleted one made the stage start over from random
    init, silently, over its last.pt."""
    out = Path(shutil.copytree(stopped_run, tmp_path / "run q", symlinks=True))
    cmd = _cmd(digits_root, out, "run.semi_method=off", *SHORT)
    stage = out / "finetune"
    written = yaml.safe_load((stage / "config.yaml").read_text())
    last = (stage / "checkpoints" / "last.pt").read_bytes()
    if lost == "emptied":
        (stage / "config.yaml").write_text("")
    else:
        (stage / "config.yaml").unlink()
    rc, _, err = run_main(*cmd, "--resume")
    assert rc == 2 and f"--resume cannot continue {shlex.quote(str(stage))}: its config.yaml {what}" in err, \
        err
    assert (stage / "checkpoints" / "last.pt").read_bytes() == last
    assert "changes model.name" not in err and "this stage belongs to the run in" in err, err
    assert json.loads((out / "run_state.json").read_text())["stages"]["finetune"]["status"] == "began"
    done = pasted_once(err, "records them (its `config`): `", "` writes them back", "a stopped run")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((stage / "config.yaml").read_text()) == written
    rc, stdout, err = run_main(*cmd, "--resume")
    # a loaded machine can leave it no time to train on: "resumed from ...: no time is left" (fGW)
    assert rc == 0 and re.search(r"finetune: (continuing|resumed) from", stdout), err


@pytest.mark.parametrize("pretrain", [True, False])
def test_a_stopped_stage_without_its_config_replaces_the_weights(tmp_path, pretrain):
    """A stopped stage (its last.pt) whose config.yaml was deleted resumes, to be refused as lost settings: it
    was taken for one not begun, which read model.weights again and started over from it."""
    from fewshot.run_state import RunState

    name = "pretrain" if pretrain else "finetune_labelled"
    (tmp_path / name / "checkpoints").mkdir(parents=True)
    (tmp_path / name / "checkpoints" / "last.pt").write_bytes(b"x")
    state = RunState(tmp_path, {"stages": {name: {"status": "began"}}})
    assert run_reuse.weights_replaced_by(state, tmp_path, pretrain) == tmp_path / name
    if not pretrain:
        assert run_reuse.stage_resumes("began", tmp_path / name)
        assert not run_reuse.stage_resumes("began", tmp_path / "finetune")


@pytest.mark.parametrize("last", ["unreadable", "missing"])
def test_a_stage_whose_last_pt_cannot_be_read_still_says_fewshot_run_starts_over(tmp_path, last):
    """With no settings read from last.pt, the "`fewshot run` starts over" hint was dropped with the --weights one,
    leaving a stage of a run only "start a new run with another --out"."""
    run = tmp_path / "run"
    sdir = run / "finetune_labelled"
    (sdir / "checkpoints").mkdir(parents=True)
    if last == "unreadable":
        (sdir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    (run / "run_state.json").write_text("{}")
    (sdir / "config.yaml").write_text("")
    cfg = resolve(overrides=["model.name=test_resnet", "train.device=cpu"])
    with pytest.raises(UserError) as refused:
        run_stages.stage_config(sdir, cfg)
    said = str(refused.value)
    assert "Put the run's config.yaml back" in said, said
    assert f"or start a new run with another --out (`fewshot run` starts over; this stage belongs to the run in " \
           f"{shell_quoted(run)})." in said, said
    assert "--weights" not in said, said
