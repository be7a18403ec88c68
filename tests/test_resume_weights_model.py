"""`train --resume` / `pretrain --resume` into an --out folder without config.yaml starts fresh, and so adopts the
model that --weights records as the same command without --resume does: it kept the default resnet18 and failed
on the file with a page of shape mismatches. A folder with a run's config.yaml keeps the run's model; one with an
empty config.yaml is no run to resume, and is refused as without --resume; beside a checkpoint, it is a run whose
settings are lost."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

import fewshot.models.weights
import fewshot.ssl.pretrain
import fewshot.train.finetune
from fewshot.cli import main
from fewshot.config import CHOSEN, resolve, save_yaml
from fewshot.errors import path_argument, shell_quoted

RUNNERS = {"train": (fewshot.train.finetune, "run_finetune"), "pretrain": (fewshot.ssl.pretrain, "run_pretrain")}


@pytest.fixture
def started(monkeypatch, tmp_path):
    """The configs the command would train with (nothing is trained), and a weights file that records test_resnet."""
    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(b"")
    monkeypatch.setattr(fewshot.models.weights, "architecture_of", lambda path: {"model": "test_resnet"})
    seen = []
    for module, name in RUNNERS.values():
        monkeypatch.setattr(module, name, lambda cfg, out, resume=False: seen.append((cfg, resume)))
    return weights, seen


def argv(command: str, root, out, weights, *more) -> list[str]:
    return [command, "--data", str(root), "--out", str(out), "--weights", str(weights), "--device", "cpu",
            "--img-size", "32", "--no-progress", *more]


@pytest.mark.parametrize("command", sorted(RUNNERS))
@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_a_resume_with_nothing_to_resume_adopts_the_weights_model(digits_root, tmp_path, started, command, folder,
                                                                   capsys):
    weights, seen = started
    out = tmp_path / "run"
    if folder == "empty":
        out.mkdir()
    assert main(argv(command, digits_root, tmp_path / "fresh", weights)) == 0
    assert main(argv(command, digits_root, out, weights, "--resume")) == 0
    (fresh, _), (resumed, resume) = seen
    assert resume is True  # still a --resume: the run itself says it starts fresh (prepare_run_dir)
    assert fresh["model"]["name"] == resumed["model"]["name"] == "test_resnet", resumed["model"]
    assert fresh[CHOSEN]["model.name"] == resumed[CHOSEN]["model.name"] == "test_resnet"  # chosen again later
    err = capsys.readouterr().err
    assert err.count(f"note: no --model given: using test_resnet, the model {weights} records") == 2, err


@pytest.mark.parametrize("command", sorted(RUNNERS))
def test_a_resume_keeps_the_model_of_the_runs_config(digits_root, tmp_path, started, command, capsys):
    """The run's config.yaml (test_resnet2, given at its start) is its settings: the weights' model is not adopted."""
    weights, seen = started
    out = tmp_path / "run"
    out.mkdir()
    saved = resolve(overrides=["model.name=test_resnet2", f"model.weights={weights}", "train.device=cpu",
                               f"data.root={digits_root}", "model.img_size=32"],
                    default_preset="mocov2" if command == "pretrain" else None)
    if command == "pretrain":
        saved["_task"] = "moco"  # as run_pretrain records it
    save_yaml(saved, out / "config.yaml")
    assert main(argv(command, digits_root, out, weights, "--resume")) == 0
    assert seen[0][0]["model"]["name"] == "test_resnet2", seen[0][0]["model"]
    assert "using test_resnet" not in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(RUNNERS))
def test_a_resume_into_a_folder_with_an_empty_config_says_it_is_empty(digits_root, tmp_path, command, capsys):
    """An empty config.yaml was taken for the run's settings: the refusal blamed --model for "changing" the default
    resnet18 and offered RUN/checkpoints/last.pt, which is not there. It is refused as without --resume."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("# nothing yet\n")
    more = ["--model", "test_resnet", "--epochs", "1", "--resume"]
    assert main([command, "--data", str(digits_root), "--out", str(out), "--device", "cpu", *more]) == 2
    err = capsys.readouterr().err
    assert "its config.yaml is empty (no settings; blank lines or comments at most), so no run wrote it" in err, err
    assert "changes model.name" not in err and "last.pt" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # nothing written beside it


NOT_A_MAPPING = "is not a config fewshot can read (config file {file} must hold a mapping of sections (model:, " \
                "optim:, ...), but it holds {held})"


@pytest.mark.parametrize("text, what", [
    ("", "is empty"), ("# emptied\n", "is empty"), ("{}\n", "holds no settings (`{}`)"),
    ("model:\n  name: test_resnet\n", "is not the one the run wrote: it lacks the section(s) data:, optim:, sched:, "
                                      "train:, moco:, aug: that a run saves (a recipe?)"),
    ("0\n", NOT_A_MAPPING.replace("{held}", "`0` alone")),
    ("false\n", NOT_A_MAPPING.replace("{held}", "`false` alone")),
    ("''\n", NOT_A_MAPPING.replace("{held}", "`''` alone")), ("- a list\n", NOT_A_MAPPING.replace("{held}", "a list")),
])
def test_a_resume_whose_config_beside_its_checkpoint_is_no_runs_says_its_settings_are_lost(
        digits_root, tmp_path, started, text, what, capsys):
    """An emptied config.yaml beside last.pt was merged into the defaults: refused as the command "changing"
    model.name from resnet18 (or, with the same model, resumed with the defaults). Its settings are lost; so are a
    `0`, `false` or `''` (or a list), which got the loader's bare "must hold a mapping of sections"."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"config": {}}, out / "checkpoints" / "last.pt")  # no fewshot checkpoint: no settings to give back
    (out / "config.yaml").write_text(text)
    assert main(["train", "--data", str(digits_root), "--out", str(out), "--model", "test_resnet", "--resume"]) == 2
    err = capsys.readouterr().err
    what = what.replace("{file}", str(out / "config.yaml"))
    assert f"--resume cannot continue {shlex.quote(str(out))}: its config.yaml {what}, so the settings the run " \
           f"was configured with, which a resume keeps, are gone from it. Put the run's config.yaml back (from a " \
           f"copy or a backup) and resume again, or start a new run with another --out." in err, err
    assert "changes model.name" not in err and "records them" not in err and started[1] == [], err
    assert "--weights" not in err  # a last.pt that records no settings is no checkpoint to start from either
    assert (out / "config.yaml").read_text() == text


def recorded_checkpoint(last: Path, config: dict) -> None:
    """A checkpoint as the engine writes one (its required fields), recording ``config``, with no weights."""
    from fewshot.train.checkpoint import save_checkpoint

    last.parent.mkdir(parents=True)
    save_checkpoint(last, {"kind": "moco" if config.get("_task") == "moco" else "supervised", "config": config,
                           "model": {}, "epoch": 1, "label_space": None, "img_size": 32, "n_parameters": 0})


def pasted(said: str, before: str, after: str) -> subprocess.CompletedProcess:
    """The command a message gives between ``before`` and ``after``, run by bash as the user pastes it."""
    line = said.split(before, 1)[1].split(after, 1)[0]
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=300)


PASTED: set = set()  # the keys whose line pasted_once has run for real


def pasted_once(said: str, before: str, after: str, key) -> subprocess.CompletedProcess:
    """pasted(), with a fresh Python (some seconds) once per ``key`` (what makes the lines differ: the folder's
    name). Later lines are still split by bash, whose words must be `-c`, the code, last.pt and config.yaml; the
    code is then run in-process on them, so each line is checked and writes config.yaml as the paste would."""
    if key not in PASTED:
        PASTED.add(key)
        return pasted(said, before, after)
    line = said.split(before, 1)[1].split(after, 1)[0]
    python = path_argument(sys.executable or "python") + " "
    assert line.startswith(python), line
    words = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + line[len(python):]], capture_output=True,
                           check=True, timeout=300).stdout.split(b"\0")[:-1]
    assert len(words) == 4 and words[0] == b"-c", words
    argv = ["-c", *(os.fsdecode(w) for w in words[2:])]
    with mock.patch.object(sys, "argv", argv):
        exec(compile(words[1].decode(), "<pasted>", "exec"), {"__name__": "__main__"})  # the line's own code
    return subprocess.CompletedProcess(line, 0, "", "")


NAMES = ["P q", os.fsdecode(b"o\xff"), "-d", "$(touch X)"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", ["", "false\n", None])
def test_a_pretrain_resume_with_lost_settings_gives_them_back_from_last_pt(digits_root, tmp_path, started, text,
                                                                          name, capsys, monkeypatch):
    """`pretrain --out "P q" --resume` with its config.yaml emptied printed `--weights P q/checkpoints/last.pt`
    (two words pasted), named no command, and said only to put the file back from a copy. last.pt records the
    settings: the message's line, pasted, writes them back, and the same resume then goes on with them. A deleted
    config.yaml was "edited since last.pt" to change model.name; a folder named by bytes that are not UTF-8 got
    no line (its last.pt could not be mapped); `--out ./-d` was offered as `--weights -d/...`, an option."""
    monkeypatch.chdir(tmp_path)
    out = Path(f"./{name}")  # typed relative, as `--out ./-d`: the messages give it back as Path prints it
    recorded = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet2", "train.device": "cpu"})
    recorded.update({"_task": "moco", CHOSEN: {}})
    recorded_checkpoint(out / "checkpoints" / "last.pt", recorded)
    if text is not None:
        (out / "config.yaml").write_text(text)
    command = ["pretrain", "--data", str(digits_root), "--out", f"./{name}", "--resume"]
    assert main(command) == 2
    err = capsys.readouterr().err
    what = "is missing" if text is None else "is empty" if not text else "is not a config fewshot can read"
    assert f"--resume cannot continue {shell_quoted(out)}: its config.yaml {what}" in err, err
    last = shell_quoted(out / "checkpoints" / "last.pt")
    assert f"{last} records them (its `config`): `" in err, err
    weights = f"./{last}" if name.startswith("-") else last
    assert f"` writes them back into config.yaml; then resume again, or start a new run with another --out " \
           f"(`fewshot pretrain --weights {weights}` starts from its weights)." in err, err
    assert "changes model.name" not in err and "from a copy or a backup" not in err, err
    offered = err.split("(`fewshot pretrain ", 1)[1].split("` starts from", 1)[0]
    parsed = subprocess.run(["bash", "-c", f'printf "%s\\0" {offered}'], capture_output=True, check=True).stdout
    flag, path = parsed.split(b"\0")[:2]  # the words bash gives the command: a path, not an option
    assert flag == b"--weights" and not path.startswith(b"-") and Path(os.fsdecode(path)) == out / "checkpoints" / \
        "last.pt", parsed
    done = pasted_once(err, "records them (its `config`): `", "` writes them back", name)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((out / "config.yaml").read_text()) == recorded
    assert not (tmp_path / "X").exists()
    assert main(command) == 0, capsys.readouterr().err
    (resumed, resume), = started[1]
    assert resume and resumed["model"]["name"] == "test_resnet2" and resumed["_task"] == "moco"


def test_a_real_resume_of_a_stopped_start_trains_afresh_and_an_emptied_config_is_refused(digits_root, tmp_path,
                                                                                        capsys):
    """prepare_run_dir's fresh start under --resume, really trained (the tests above fake the run): a start stopped
    before its first checkpoint (config.yaml alone) resumes from its config.yaml; a changed --model is refused
    without offering a last.pt that is not there. Once trained, an emptied config.yaml is refused as lost, and the
    line the message gives (pasted: the folder's name holds a space) puts the run's settings back from last.pt."""
    out = tmp_path / "run q"
    out.mkdir()
    saved = resolve(flags={"data.root": str(digits_root), "data.datasets": ["digits"], "model.name": "test_resnet",
                           "model.img_size": 32, "train.device": "cpu", "train.epochs": 1, "train.progress": False,
                           "train.batch_size": 16})
    saved[CHOSEN] = {}
    save_yaml(saved, out / "config.yaml")  # as a start writes it before its first checkpoint
    command = ["train", "--data", str(digits_root), "--out", str(out), "--resume"]
    assert main([*command, "--model", "test_resnet2"]) == 2
    err = capsys.readouterr().err
    assert "Nothing was trained there yet" in err and "--weights" not in err, err
    assert main(command) == 0, capsys.readouterr().err
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "metrics.json").is_file()
    capsys.readouterr()
    written = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text("")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"--resume cannot continue {shlex.quote(str(out))}: its config.yaml is empty" in err, err
    assert "changes model.name" not in err, err
    done = pasted(err, "records them (its `config`): `", "` writes them back")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((out / "config.yaml").read_text()) == written
    assert main(command) == 0, capsys.readouterr().err  # its one epoch trained already: nothing to train
