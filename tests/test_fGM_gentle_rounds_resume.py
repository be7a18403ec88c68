"""A short round (run_stages.SHORT_ROUND_EPOCHS) across a stop and --resume, the report's note on it, and which round
1 lrs keep a short round's full schedule (review rev108 of fGC + fGJ): a round stopped after its training, before its
metrics, lost `continued_gently` from summary.json (#1); no test carried it across a resume (#2); the note was
untested (#3); the exemption went by the ImageNet recipe's exact values (#4)."""

from __future__ import annotations

import json
import os
import re
import signal
from html import unescape

import pytest
import timm
import yaml
from safetensors.torch import save_file

from helpers.checks import run_main
from test_fGJ_gentle_rounds import stop_a_short_round
from test_run_resume import _cmd


def _cfg(stage_dir) -> dict:
    return yaml.safe_load((stage_dir / "config.yaml").read_text())


def _stages(out) -> dict:
    return json.loads((out / "summary.json").read_text())["stages"]


def _recorded(out) -> dict:
    return json.loads((out / "run_state.json").read_text())["stages"]["finetune"]["continued_gently"]


def test_a_short_round_stopped_after_its_training_keeps_its_record(digits_root, tmp_path, monkeypatch):
    """SIGTERM while the short round's metrics are computed: --resume evaluates its best checkpoint (the "trained"
    branch), and summary.json still says the round went gently, as run_state.json recorded it."""
    from fewshot import run_stages
    import fewshot.train.finetune as ft

    monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", 1e9)
    out, real = tmp_path / "run", ft.final_metrics

    def stopped(engine, task, fdir, *args, **kwargs):
        if fdir.name == "finetune":
            os.kill(os.getpid(), signal.SIGTERM)
        return real(engine, task, fdir, *args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(ft, "final_metrics", stopped)
        rc, _, err = run_main(*_cmd(digits_root, out))
    assert rc == 128 + signal.SIGTERM, err
    state = json.loads((out / "run_state.json").read_text())["stages"]["finetune"]
    assert state["status"] == "trained", state
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc == 0, err
    assert "finetune: trained before the stop; evaluating its best checkpoint" in stdout, stdout
    gently = _stages(out)["finetune"].get("continued_gently")
    assert gently == state["continued_gently"] and gently["lr"] == _cfg(out / "finetune")["optim"]["lr"], gently


@pytest.mark.parametrize("then", [1e9, 0.0])
def test_a_short_round_stopped_midway_continues_on_its_plan_and_keeps_its_record(digits_root, tmp_path, monkeypatch,
                                                                                  then):
    """Stopped in its training, the short round continues its own plan (its lr and no warm-up), even where a replan
    would now be long (``then`` 0), and summary.json records it as planned before the stop."""
    from fewshot import run_stages

    out = tmp_path / "run"
    stop_a_short_round(monkeypatch, _cmd(digits_root, out))
    before, recorded = _cfg(out / "finetune"), _recorded(out)
    monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", then)
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc == 0, err
    # a loaded machine can leave the 6-second run no time to train on: "resumed from ...: no time is left" (fGW)
    assert re.search(r"finetune: (continuing|resumed) from", stdout), stdout
    after = _cfg(out / "finetune")
    assert after["optim"] == before["optim"] and after["sched"] == before["sched"], (before, after)
    assert after["sched"]["warmup_epochs"] == 0.0
    assert _stages(out)["finetune"].get("continued_gently") == recorded, _stages(out)["finetune"]


def test_the_report_says_which_rounds_went_gently(digits_root, tmp_path, monkeypatch):
    """Both later rounds of 3 short: index.html's note names each, with its planned epochs, the threshold in epochs
    and its lr."""
    from fewshot import run_stages

    monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", 1e9)
    out = tmp_path / "run"
    rc, _, err = run_main(*_cmd(digits_root, out, "run.pseudo_rounds=3"))
    assert rc == 0, err
    rc, _, err = run_main("report", out, "--out", tmp_path / "rep")
    assert rc == 0, err
    html = unescape((tmp_path / "rep" / "index.html").read_text())
    head = ("Short self-training rounds continued the round before's model at a tenth of round 1's lr, without a "
            "warm-up (planned, not an error): ")
    assert head in html, html
    note = html[html.index(head) + len(head):].split(".</", 1)[0]
    stages = _stages(out)
    for k, stage in ((2, "finetune_round2"), (3, "finetune")):
        g = stages[stage]["continued_gently"]
        assert f"round {k} ({g['planned_epochs']:g} epochs planned, under 1e+09 epochs; lr {g['lr']:g})" in note, note


@pytest.mark.parametrize("lr, mult, gentle", [
    (4e-3, 1.0, 4e-4),  # the scratch recipe, where the rule was measured
    (2e-3, 1.0, 2e-4),  # the small-data recipe
    ("4e-3", 1.0, 4e-4),  # a value typed as text in a config file
    (1e-4, 0.1, None),  # the ImageNet recipe
    (2e-4, 0.1, None),  # the user's lr at ImageNet weights: gentle already, not divided to 2e-5
    (1e-4, 1.0, None),  # a small lr with the backbone at 1x
    (3e-4, 1.0, None),  # the limit, run_stages.GENTLE_MIN_LR
    (4e-3, 0.5, None),  # a backbone kept under 1x
])
def test_a_short_rounds_lr_goes_by_the_size_of_round_1s(lr, mult, gentle):
    from fewshot.run_stages import gentle_lr

    got = gentle_lr({"optim": {"lr": lr, "backbone_lr_mult": mult}})
    assert got == (None if gentle is None else pytest.approx(gentle, rel=1e-12)), got


@pytest.mark.parametrize("extra", [(), ("optim.lr=0.0002",)])
def test_a_short_round_at_other_weights_keeps_its_schedule(digits_root, tmp_path, monkeypatch, extra):
    """`--weights` of other (ImageNet-grade) weights: the rule chooses lr 1e-4 and the backbone at 0.1x, or the user
    gives the lr and the rule the 0.1x. Either way round 2 restarts round 1's schedule, warm-up included."""
    from fewshot import run_stages
    from fewshot.config import CHOSEN

    foreign = tmp_path / "timm.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(foreign))
    monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", 1e9)
    out = tmp_path / "run"
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--weights", foreign, *extra))
    assert rc == 0, err
    round1, last = _cfg(out / "finetune_labelled"), _cfg(out / "finetune")
    assert "optim.backbone_lr_mult" in round1[CHOSEN] and round1["optim"]["backbone_lr_mult"] == 0.1, round1
    assert ("optim.lr" in round1[CHOSEN]) == (not extra), round1[CHOSEN]
    assert last["optim"] == round1["optim"], (round1["optim"], last["optim"])
    assert last["sched"]["warmup_epochs"] == round1["sched"]["warmup_epochs"] > 0, last["sched"]
    assert "fine-tuning from the previous round" in stdout and "a tenth of" not in stdout, stdout
    assert "continued_gently" not in _stages(out)["finetune"]
