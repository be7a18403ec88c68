"""`fewshot run --data D --out O --resume` after a Ctrl-C, without the run's --model: it was refused as "this
command changes model.name ('test_resnet' in the run, 'resnet18' now)" though no --model was typed. A setting the
command line does not give (flag, key=value word, --config key) takes the run's recorded value, as --budget-minutes
does; one it gives that differs is still refused."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

from helpers.checks import run_main
from test_run_resume import sigterm_in_stage

BASE = ("--budget-minutes", "0.03", "--device", "cpu", "--no-progress", "run.report=false",
        "run.pretrain_batch_size=16", "train.batch_size=16")
REFUSED = "changes model.name ('test_resnet' in the run, 'resnet18' now)"


def _state(out: Path) -> dict:
    return json.loads((out / "run_state.json").read_text())


def test_a_stopped_run_resumes_without_its_model_and_finishes(digits_root, tmp_path, monkeypatch):
    from fewshot.train.supervised import SupervisedTask

    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        sigterm_in_stage(mp, "finetune", SupervisedTask, 3)
        rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--model", "test_resnet", *BASE)
    assert rc == 128 + signal.SIGTERM and not _state(out)["finished"], err

    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--model", "resnet18", "--resume")
    assert rc == 2 and REFUSED in err and "Drop those settings to resume" in err, err  # typed: still refused

    rc, stdout, err = run_main("run", "--data", digits_root, "--out", out, "--resume")  # the short command line
    assert rc == 0, err
    assert "model.name 'test_resnet'" in err and "where this command gives none" in err, err
    assert "test_resnet at 32px" in stdout and re.search(r"finetune: (continuing|resumed) from", stdout), stdout
    assert _state(out)["finished"] and (out / "pred_all.json").is_file()
    assert _state(out)["config"]["model"]["name"] == "test_resnet"


def test_settings_not_typed_are_the_runs_and_typed_ones_are_compared(digits_root, tmp_path, settings_only_run):
    """Flags, key=value words and --config keys the run started with, left out on --resume, are taken from its
    run_state.json; given again with another value, each is still refused by name."""
    out = tmp_path / "run"
    config = tmp_path / "f.yaml"
    config.write_text("optim:\n  weight_decay: 0.02\n")
    started = ("run", "--data", digits_root, "--out", out, "--budget-minutes", "1")
    rc, _, err = run_main(*started, "--model", "test_resnet", "--seed", "3", "--img-size", "32", "optim.lr=0.01",
                          "--config", config, "--semi", "off")
    assert rc == 0, err
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--resume")
    assert rc == 0, err
    cfg = settings_only_run[-1]
    assert (cfg["model"]["name"], cfg["train"]["seed"], cfg["model"]["img_size"]) == ("test_resnet", 3, 32)
    assert (cfg["optim"]["lr"], cfg["optim"]["weight_decay"], cfg["run"]["semi_method"]) == (0.01, 0.02, "off")
    for typed, named in ((("--seed", "4"), "train.seed (3 in the run, 4 now)"),
                         (("optim.lr=0.02",), "optim.lr (0.01 in the run, 0.02 now)"),
                         (("--img-size", "64"), "model.img_size (32 in the run, 64 now)"),
                         (("--semi", "pseudo"), "run.semi_method ('off' in the run, 'pseudo' now)")):
        rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--resume", *typed)
        assert rc == 2 and named in err, (typed, err)
    other = tmp_path / "g.yaml"
    other.write_text("optim:\n  weight_decay: 0.05\n")
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--resume", "--config", other)
    assert rc == 2 and "optim.weight_decay (0.02 in the run, 0.05 now)" in err, err
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--resume", "--seed", "3", "--model",
                          "test_resnet", "--config", config)  # the run's own values, typed: no change
    assert rc == 0 and "where this command gives none" in err and "train.seed" not in err, err


def test_settings_a_resume_may_change_are_the_runs_when_not_typed(digits_root, tmp_path, settings_only_run):
    """The short resume command kept this session's defaults for the settings a resume may change: it switched the
    run's TensorBoard setting and decoded the images again into ROOT/.fewshot_cache. Untyped, they are the run's (as
    every setting but data.root and the machine's device and threads); typed, they may still differ."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "1", "--model",
                          "test_resnet", "--device", "cpu", f"data.cache_dir={cache}", "train.tensorboard=false")
    assert rc == 0, err
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--resume")
    assert rc == 0, err
    cfg = settings_only_run[-1]
    assert (cfg["data"]["cache_dir"], cfg["train"]["tensorboard"], cfg["train"]["device"]) == (str(cache), False,
                                                                                              "auto")
    assert f"data.cache_dir '{cache}'" in err and "train.tensorboard false" in err, err
    assert "train.device" not in err, err  # not taken (the machine's): noted on its own line
    assert err.count(f"note: the run in '{out}' used --device cpu and this session uses auto") == 1, err
    assert cfg["data"]["root"] == str(digits_root)
    other = tmp_path / "other-cache"
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--resume", "--device", "auto",
                          f"data.cache_dir={other}", "train.tensorboard=true")  # typed: this session's
    assert rc == 0, err
    cfg = settings_only_run[-1]
    assert (cfg["data"]["cache_dir"], cfg["train"]["tensorboard"], cfg["train"]["device"]) == (str(other), True,
                                                                                              "auto")
    assert "data.cache_dir" not in err and "train.device" not in err and "used --device" not in err, err


def test_the_machines_device_and_threads_are_not_the_runs(digits_root, tmp_path, settings_only_run):
    """A run made with --device cuda and train.threads=7, resumed on a CPU box by the short command, took the run's
    device and failed "--device cuda was asked for": device and threads are the machine's, this session's defaults
    where not typed."""
    out = tmp_path / "run"
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "1", "--model",
                          "test_resnet", "--device", "cpu", "train.threads=1")
    assert rc == 0, err
    state = _state(out)
    state["config"]["train"].update(device="cuda", threads=7)  # as a GPU machine recorded it
    (out / "run_state.json").write_text(json.dumps(state))
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--resume")
    assert rc == 0, err
    cfg = settings_only_run[-1]
    assert (cfg["train"]["device"], cfg["train"]["threads"], cfg["model"]["name"]) == ("auto", None, "test_resnet")
    assert "train.device" not in err and "train.threads" not in err, err
    assert "used --device cuda and this session uses auto (given no --device); give --device cuda" in err, err


def test_a_deliberate_device_left_out_on_resume_is_noted(digits_root, tmp_path, settings_only_run):
    """A run started with `--device cpu` on a GPU machine, resumed by the short command, went on on `auto` (the
    GPU) without a word: one note names both devices and the flag that keeps the run's; none where they agree or
    --device is typed."""
    out = tmp_path / "run"
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "1", "--model",
                          "test_resnet", "--device", "cpu")
    assert rc == 0, err
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--resume")
    assert rc == 0 and settings_only_run[-1]["train"]["device"] == "auto", err
    notes = [line for line in err.splitlines() if "--device" in line]
    assert notes == [f"note: the run in '{out}' used --device cpu and this session uses auto (given no --device); "
                     f"give --device cpu to keep the run's."], err
    for typed in ("cpu", "auto"):
        rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--resume", "--device", typed)
        assert rc == 0 and "used --device" not in err, err
    state = _state(out)
    state["config"]["train"]["device"] = "auto"
    (out / "run_state.json").write_text(json.dumps(state))
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--resume")
    assert rc == 0 and "used --device" not in err, err
