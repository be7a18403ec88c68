"""A short pseudo-labelled round (run_stages.SHORT_ROUND_EPOCHS) continues the round before's model at a tenth of
round 1's lr, without a warm-up (review rev106 of fGC): the lr carried forward undivided through 3 rounds (#2), a
stopped short round started over and planned long gets the run's schedule back (#3), summary.json says which rounds
went gently (#4), the ImageNet recipe is left as it was (#6) and hBX's moved --weights keeps round 1's recipe (#1)."""

from __future__ import annotations

import json
import signal

import pytest
import yaml

from helpers.checks import run_main
from helpers.run_patch import patch_pipeline
from test_fFX_labelled_only_lr import _lrs
from test_hBX_resumed_recipe import resumed_after_the_weights_moved
from test_run_leftover import _no_time_to_label_the_pool
from test_run_resume import _cmd, sigterm_in_stage


def _cfg(stage_dir) -> dict:
    return yaml.safe_load((stage_dir / "config.yaml").read_text())


def _short_in(monkeypatch, short: set[str]) -> None:
    """SHORT_ROUND_EPOCHS per stage: every round named in ``short`` is short, any other long."""
    from fewshot import pipeline, run_stages

    real = pipeline.finetune_stage

    def per_stage(fcfg, infos, device, ctx, fdir, *args, **kwargs):
        monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", 1e9 if fdir.name in short else 0.0)
        return real(fcfg, infos, device, ctx, fdir, *args, **kwargs)

    monkeypatch.setattr(pipeline, "finetune_stage", per_stage)


def test_a_short_round_2_after_a_moved_weights_file_divides_round_1s_recipe_once(digits_root, tmp_path, monkeypatch):
    from fewshot import run_stages

    monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", 1e9)
    first, last, stdout = resumed_after_the_weights_moved(digits_root, tmp_path)
    assert first["lr"] == 2e-3 and first["backbone_lr_mult"] == 1.0, first  # the export's small-data recipe
    assert abs(last["lr"] - 2e-4) < 1e-12 and last["backbone_lr_mult"] == 1.0, (last, stdout)


@pytest.mark.parametrize("third", ["short", "long", "labelled-only"])
def test_round_3_after_a_gentle_round_2_starts_from_round_1s_undivided_lr(digits_root, tmp_path, monkeypatch, third):
    """Round 2 went gently (a tenth of round 1's lr): round 3 is divided once more from round 1's lr, not from round
    2's (a hundredth), and a long round 3 restarts round 1's schedule with its warm-up (it restarted at round 2's
    tenth with a warm-up)."""
    from fewshot import run_rounds

    _short_in(monkeypatch, {"finetune_round2", "finetune"} if third == "short" else {"finetune_round2"})
    if third == "labelled-only":  # the time left before round 3 holds a round but not the pool's labelling
        from conftest import REAL_TIME_HOLDS

        real = run_rounds.RoundsMixin.check_later_rounds

        def check(self, task, k):
            if k < 3:
                return real(self, task, k)
            with pytest.MonkeyPatch.context() as mp:
                _no_time_to_label_the_pool(mp)
                patch_pipeline(mp, "time_holds", REAL_TIME_HOLDS[0])
                return real(self, task, k)

        monkeypatch.setattr(run_rounds.RoundsMixin, "check_later_rounds", check)
    out = tmp_path / "run"
    rc, stdout, err = run_main(*_cmd(digits_root, out, "run.pseudo_rounds=3"))
    assert rc == 0, err
    round1, round2, round3 = (_cfg(out / n) for n in ("finetune_labelled", "finetune_round2", "finetune"))
    lr = round1["optim"]["lr"]
    assert abs(round2["optim"]["lr"] - lr * 0.1) < 1e-12 and round2["sched"]["warmup_epochs"] == 0.0, round2
    if third == "long":
        assert round3["optim"]["lr"] == lr, round3
        assert round3["sched"]["warmup_epochs"] == round1["sched"]["warmup_epochs"] > 0, round3
    else:
        assert abs(round3["optim"]["lr"] - lr * 0.1) < 1e-12 and round3["sched"]["warmup_epochs"] == 0.0, round3
        assert max(_lrs(out / "finetune")) <= lr * 0.1 * (1 + 1e-6)
    assert ("round 3 trains on the labelled images only" in stdout) == (third == "labelled-only"), stdout
    if third == "labelled-only":  # not "a tenth of its lr": round 2's was a tenth already
        assert "continuing round 2's model at a tenth of round 1's lr, without a warm-up" in stdout, stdout
    stages = json.loads((out / "summary.json").read_text())["stages"]
    gently = stages["finetune_round2"]["continued_gently"]
    assert abs(gently["lr"] - lr * 0.1) < 1e-12 and gently["planned_epochs"] > 0, gently
    assert ("continued_gently" in stages["finetune"]) == (third == "short"), stages["finetune"]


def test_summary_and_report_say_which_round_went_gently(digits_root, tmp_path, monkeypatch):
    from fewshot.report.pipeline_runs import _read_summary

    _short_in(monkeypatch, {"finetune"})
    out = tmp_path / "run"
    rc, _, err = run_main(*_cmd(digits_root, out))
    assert rc == 0, err
    said = _read_summary(out, [])["self_training_gently"]
    assert said.startswith("round 2 (") and "epochs planned, under 1e+09 epochs; lr " in said, said


def stop_a_short_round(monkeypatch, argv: list) -> None:
    """Runs ``argv`` (a `fewshot run`) with every later round short and SIGTERM two steps into the last round."""
    from fewshot import run_stages
    from fewshot.train.supervised import SupervisedTask

    with monkeypatch.context() as mp:
        mp.setattr(run_stages, "SHORT_ROUND_EPOCHS", 1e9)
        sigterm_in_stage(mp, "finetune", SupervisedTask, 2)
        rc, _, err = run_main(*argv)
    assert rc == 128 + signal.SIGTERM, err


def test_a_stopped_short_round_started_over_and_planned_long_gets_the_runs_schedule_back(digits_root, tmp_path,
                                                                                         monkeypatch):
    """Its stopped config.yaml held a tenth of the lr and no warm-up; started over (its training images differ) and
    now long, it trained at full lr without a warm-up, the variant measured worst (review rev106 #3)."""
    from fewshot import run_stages

    out = tmp_path / "run"
    stop_a_short_round(monkeypatch, _cmd(digits_root, out))
    assert _cfg(out / "finetune")["sched"]["warmup_epochs"] == 0.0  # stopped as a short round
    monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", 0.0)
    monkeypatch.setattr(run_stages, "same_training_images", lambda *a, **k: False)
    rc, stdout, err = run_main(*_cmd(digits_root, out), "--resume")
    assert rc == 0, err
    assert "finetune: the training images differ" in stdout and "the stage starts over" in stdout, stdout
    round1, last = _cfg(out / "finetune_labelled"), _cfg(out / "finetune")
    assert last["optim"]["lr"] == round1["optim"]["lr"], last
    assert last["sched"]["warmup_epochs"] == round1["sched"]["warmup_epochs"] > 0, last
    assert "continued_gently" not in json.loads((out / "summary.json").read_text())["stages"]["finetune"]


def test_a_short_round_at_the_imagenet_recipe_keeps_its_schedule(digits_root, tmp_path, monkeypatch):
    """The rule was measured at the small-data and scratch recipes (2e-3-4e-3, backbone 1x); at the ImageNet one
    (1e-4, backbone 0.1x) a tenth left a short round nearly a no-op (review rev106 #6)."""
    from fewshot import run_stages

    monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", 1e9)
    out = tmp_path / "run"
    rc, stdout, err = run_main(*_cmd(digits_root, out, "optim.lr=0.0001", "optim.backbone_lr_mult=0.1"))
    assert rc == 0, err
    round1, last = _cfg(out / "finetune_labelled"), _cfg(out / "finetune")
    assert last["optim"]["lr"] == 1e-4 and last["sched"]["warmup_epochs"] == round1["sched"]["warmup_epochs"] > 0
    assert "fine-tuning from the previous round" in stdout, stdout


def test_the_paired_benchmark_replays_round_2s_own_stage_or_refuses(tmp_path):
    """`round2_paired.py --seconds planned` read finetune/config.yaml as round 2's plan: with 3 rounds that is round 3,
    and a labelled-only or skipped round 2 has none to replay (review rev106 #7)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("round2_paired",
                                                  Path(__file__).parents[1] / "benchmarks" / "round2_paired.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    three = {"stages": {"finetune_labelled": {}, "finetune_round2": {}, "finetune": {}}}
    assert bench.round2_stage(tmp_path, three) == "finetune_round2"
    assert bench.round2_stage(tmp_path, {"stages": {"finetune_labelled": {}, "finetune": {}}}) == "finetune"
    for summary, why in (({"stages": {"finetune_labelled": {}, "finetune": {}},
                           "self_training_labelled_only": {"round": 2}}, "labelled images only"),
                         ({"stages": {"finetune_labelled": {}}, "self_training_skipped": {"rounds": [2]}},
                          "did not train")):
        with pytest.raises(SystemExit, match=why):
            bench.round2_stage(tmp_path, summary)
