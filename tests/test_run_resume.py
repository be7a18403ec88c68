"""`fewshot run --resume`: a run stopped by SIGTERM (a cluster's time limit) in one of its stages goes on
with the same command plus --resume: finished stages are reused, the stopped stage continues from its
last.pt, the pool gets the same pseudo-labels again, and the budget counts the time already used."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from helpers.checks import run_main
from helpers.run_patch import patch_pipeline
from test_pipeline import _check_pred_all

BASE = ("--budget-minutes", "0.1", "--model", "test_resnet", "--device", "cpu", "--no-progress", "run.report=false",
        "run.pretrain_batch_size=16", "train.batch_size=16")


def _cmd(root: Path, out: Path, *extra: str) -> list:
    return ["run", "--data", root, "--out", out, *BASE, *extra]


GENTLY = "continuing the previous round's model at a tenth of round 1's lr, without a warm-up (a short round"


def _gently_from_round_1(out: Path, stdout: str) -> None:
    """The last round planned afresh as a short one (run_stages.SHORT_ROUND_EPOCHS pinned at 1e9 by the test): its
    plan line, a tenth of round 1's lr and no warm-up in its config.yaml, its record in summary.json."""
    import yaml

    assert GENTLY in stdout and "finetune: continuing" not in stdout, stdout
    first, last = (yaml.safe_load((out / n / "config.yaml").read_text()) for n in ("finetune_labelled", "finetune"))
    assert abs(last["optim"]["lr"] - first["optim"]["lr"] * 0.1) < 1e-12, (first["optim"], last["optim"])
    assert last["sched"]["warmup_epochs"] == 0.0 < first["sched"]["warmup_epochs"], last["sched"]
    gently = json.loads((out / "summary.json").read_text())["stages"]["finetune"]["continued_gently"]
    assert gently["lr"] == last["optim"]["lr"], gently


def sigterm_in_stage(monkeypatch, stage: str, task_cls, call: int) -> None:
    """SIGTERM to this process in the `call`-th training step of the stage whose folder is `stage`, counting
    only steps inside Engine.fit (not the step-time calibration before it, where a signal stops at once).
    The stage's budget does not end it before that step: the tests' 0.1-minute runs give their last stage the
    floor of 5 steps at the speed measured before it (about 2 s), and a busy machine's slower first steps
    overran it now and then, so that the stage ended on its budget, unsignalled, and the run finished (exit 0)."""
    from fewshot.train.engine import Engine

    armed = {"on": False, "n": 0}
    fit, step, agreed = Engine.fit, task_cls.training_step, Engine._agreed_stop

    def fit_watched(self, *args, **kwargs):
        armed["on"] = self.run_dir.name == stage
        try:
            return fit(self, *args, **kwargs)
        finally:
            armed["on"] = False

    def step_watched(self, model, batch):
        result = step(self, model, batch)
        if armed["on"]:
            armed["n"] += 1
            if armed["n"] == call:
                os.kill(os.getpid(), signal.SIGTERM)
        return result

    def agreed_watched(self, deadline):
        signalled, late = agreed(self, deadline)
        return signalled, late and not (armed["on"] and armed["n"] < call)  # the signal comes first, however slow

    monkeypatch.setattr(Engine, "fit", fit_watched)
    monkeypatch.setattr(task_cls, "training_step", step_watched)
    monkeypatch.setattr(Engine, "_agreed_stop", agreed_watched)


def stopped_in_stage(cmd: list, stage: str, task_cls, call: int = 2) -> None:
    """`fewshot run CMD` stopped by SIGTERM in the ``call``-th training step of ``stage`` (sigterm_in_stage, undone
    after): the stopped run the resume tests start from."""
    with pytest.MonkeyPatch.context() as mp:
        sigterm_in_stage(mp, stage, task_cls, call)
        rc, _, err = run_main(*cmd)
    assert rc == 128 + signal.SIGTERM, err


def _state(out: Path) -> dict:
    return json.loads((out / "run_state.json").read_text())


def test_the_signal_comes_in_its_step_even_when_the_stage_budget_ends_sooner(digits_root, tmp_path, monkeypatch):
    """sigterm_in_stage's own check: a budget spent before the signalled step (a busy machine's slow steps, here a
    budget of 0.6 ms) still stops the stage on the signal, at that step, as the tests of this file need."""
    from fewshot.train.checkpoint import load_checkpoint
    from fewshot.train.supervised import SupervisedTask

    sigterm_in_stage(monkeypatch, "finetune", SupervisedTask, 2)
    rc, _, err = run_main("train", "--data", digits_root, "--out", tmp_path / "finetune", "--model", "test_resnet",
                          "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
                          "train.budget_minutes=0.00001", "train.tensorboard=false", "train.ema=false")
    assert rc == 128 + signal.SIGTERM, err
    assert load_checkpoint(tmp_path / "finetune" / "checkpoints" / "last.pt")["global_step"] == 2


@pytest.fixture(scope="module")
def stopped_and_resumed(digits_root, tmp_path_factory):
    """The default run (round 1 on the labelled images, pseudo-labels, round 2 = finetune) stopped in step 3
    of its last stage, then resumed."""
    from fewshot.train.supervised import SupervisedTask

    out = tmp_path_factory.mktemp("run-resume") / "run"
    with pytest.MonkeyPatch.context() as mp:
        sigterm_in_stage(mp, "finetune", SupervisedTask, 3)
        rc, stdout, err = run_main(*_cmd(digits_root, out))
    from fewshot.train.checkpoint import load_checkpoint

    stopped = {"rc": rc, "err": err, "state": _state(out),
               "trained": load_checkpoint(out / "finetune" / "checkpoints" / "last.pt")["train_seconds"],
               "pseudo": (out / "pseudo_labels_round2.json").read_text(),
               "pred_all": (out / "pred_all.json").exists()}
    rc2, stdout2, err2 = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc2 == 0, err2
    return out, stopped, {"rc": rc2, "out": stdout2, "state": _state(out)}


def test_sigterm_stops_the_run_with_a_checkpoint_and_a_resume_hint(stopped_and_resumed):
    out, stopped, _ = stopped_and_resumed
    assert stopped["rc"] == 128 + signal.SIGTERM
    assert "continue with the same command and --resume" in stopped["err"]
    assert str(out / "finetune" / "checkpoints" / "last.pt") in stopped["err"]
    assert not stopped["pred_all"]  # stopped before prediction
    stages = stopped["state"]["stages"]
    assert stages["finetune_labelled"]["status"] == "done" and stages["finetune"]["status"] == "began"
    assert not stopped["state"]["finished"]
    assert stopped["state"]["img_size"] == 32  # the size the run chose; a resume on another device keeps it
    assert stopped["state"]["seconds"] > 0  # start-up and decoding count from the start


def test_resume_reuses_round_one_and_continues_the_stopped_stage(digits_root, stopped_and_resumed):
    out, stopped, resumed = stopped_and_resumed
    log = resumed["out"]
    assert "finetune_labelled: finished before the stop; its best checkpoint is reused" in log
    assert re.search(r"finetune: (continuing|resumed) from", log)
    # the Engine resumed the stage at the stopped step, not from step 0; or its [run] line said it trains no further
    # (a loaded machine's start-up left this seconds-long run too little: no Engine line after it)
    assert "(global step 3)" in log or re.search(r"\[run\] finetune: .*trains no further", log), log
    # the same teacher labels the pool the same way: the stopped stage's training images are the same
    assert (out / "pseudo_labels_round2.json").read_text() == stopped["pseudo"]
    _check_pred_all(digits_root, out)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) == {"finetune_labelled", "finetune"}
    # the pseudo-labels sit with the round that trained on them (all rounds' were under round 1)
    labels = summary["stages"]["finetune"]["pseudo_labels"]
    assert "pseudo_labels" not in summary["stages"]["finetune_labelled"]
    assert labels["pool_labelled"] == json.loads(stopped["pseudo"])["pool_labelled"] == labels["pool_size"]
    # the budget counts both sessions: the whole run's clock starts before the stop, at the stage's start plus
    # its training time, and this session's start-up counts as well (a second stop must not lose it)
    fit_at = stopped["state"]["stages"]["finetune"]["fit_at"]
    assert summary["seconds"] >= fit_at + stopped["trained"]
    assert resumed["state"]["stages"]["finetune"]["fit_at"] > fit_at
    assert resumed["state"]["finished"] and resumed["state"]["stages"]["finetune"]["status"] == "done"


def test_resuming_a_finished_run_says_so(digits_root, stopped_and_resumed):
    out = stopped_and_resumed[0]
    before = (out / "pred_all.json").read_text()
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc == 0, err
    assert "finished already" in stdout
    assert (out / "pred_all.json").read_text() == before
    rc, _, err = run_main(*_cmd(digits_root, out))  # without --resume: a new run is refused, as finished
    assert rc == 2 and f"'{out}' holds a finished `fewshot run`" in err and "--resume" not in err, err


def test_a_rerun_into_a_finished_run_is_told_it_finished_and_a_stopped_one_to_resume(tmp_path):
    """Into a finished run the refusal said "or add --resume to continue the run it holds", and --resume only
    said "finished already": a finished run is recognised as resume_state does (finished, and summary.json)."""
    from fewshot.errors import UserError
    from fewshot.run_startup import refuse_used_output

    out = tmp_path / "run"
    out.mkdir()
    (out / "run_state.json").write_text(json.dumps({"finished": True}))
    (out / "summary.json").write_text("{}")
    with pytest.raises(UserError) as caught:
        refuse_used_output(out)
    assert str(caught.value) == (f"the output folder '{out}' holds a finished `fewshot run` (its results: "
                                 f"{out}/pred_all.json, {out}/metrics.json); `fewshot run` writes a whole new run "
                                 f"there. Choose another --out, or delete the folder to run again.")
    for state in ({"finished": False}, "not json {"):  # stopped, or a state --resume will report as damaged
        (out / "run_state.json").write_text(state if isinstance(state, str) else json.dumps(state))
        with pytest.raises(UserError, match=r"is not empty \(run_state.json, summary.json\).*add --resume to "
                                            r"continue the run it holds\.$"):
            refuse_used_output(out)
    (out / "run_state.json").write_text(json.dumps({"finished": True}))
    (out / "summary.json").unlink()  # stopped while its summary was written: resume_state does not count it done
    with pytest.raises(UserError, match="add --resume"):
        refuse_used_output(out)


def test_a_run_stopped_after_its_stages_does_not_label_the_pool_again(digits_root, stopped_and_resumed, tmp_path,
                                                                      monkeypatch):
    """A run stopped in its prediction or report, its stages all done: --resume labelled the whole pool again (and
    rewrote pseudo_labels_round2.json) before it found `finetune` reused, inside the budget. The round's record
    gives summary.json its pseudo_labels entry, here where the stop came before the entry was kept."""
    import shutil

    out = shutil.copytree(stopped_and_resumed[0], tmp_path / "run")
    record = (out / "pseudo_labels_round2.json").read_text()
    state = _state(out)
    state["finished"] = False  # as if stopped after the stages, and before `finetune` was kept in the summary
    del state["summary"]["stages"]["finetune"]
    (out / "run_state.json").write_text(json.dumps(state))
    (out / "summary.json").unlink()

    def labelled_again(*args, **kwargs):
        raise AssertionError("the pool was labelled again for a round that finished before the stop")

    patch_pipeline(monkeypatch, "pseudo_label_pool", labelled_again)
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc == 0, err
    assert "finetune: finished before the stop; its best checkpoint is reused" in stdout
    assert "pseudo-labels kept" not in stdout
    assert (out / "pseudo_labels_round2.json").read_text() == record
    summary = json.loads((out / "summary.json").read_text())
    saved = {k: v for k, v in json.loads(record).items() if k not in ("pool_key", "images")}
    assert summary["stages"]["finetune"]["pseudo_labels"] == saved
    _check_pred_all(digits_root, out)


@pytest.mark.parametrize("change, named", [(("--seed", "3"), "train.seed"), (("optim.lr=0.5",), "optim.lr"),
                                           (("--budget-minutes", "5"), "budget of 0.1 minutes")])
def test_resume_refuses_other_settings(digits_root, stopped_and_resumed, change, named):
    out = stopped_and_resumed[0]
    rc, _, err = run_main(*_cmd(digits_root, out, "--resume", *change))  # a later --budget-minutes wins
    assert rc == 2 and named in err, err


def test_a_run_started_before_a_setting_existed_resumes_with_its_default(digits_root, stopped_and_resumed, tmp_path):
    """data.skip_bad_unlabeled was added after runs existed: its absence from an older run_state.json read as
    None against True now, and --resume was refused with advice the user could not follow."""
    import shutil

    out = Path(shutil.copytree(stopped_and_resumed[0], tmp_path / "older"))
    state = _state(out)
    del state["config"]["data"]["skip_bad_unlabeled"]
    (out / "run_state.json").write_text(json.dumps(state))
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc == 0 and "finished already" in stdout, err
    state["config"]["data"]["skip_bad_unlabeled"] = False  # a value the run really had is still held to:
    (out / "run_state.json").write_text(json.dumps(state))
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--resume"))  # taken where the command does not give it
    assert rc == 0 and "finished already" in stdout and "data.skip_bad_unlabeled false" in err, err
    rc, _, err = run_main(*_cmd(digits_root, out, "--resume", "data.skip_bad_unlabeled=true"))  # refused if given
    assert rc == 2 and "data.skip_bad_unlabeled (false in the run, true now)" in err, err


def test_resume_without_a_run_is_refused(digits_root, tmp_path):
    rc, _, err = run_main(*_cmd(digits_root, tmp_path / "nothing", "--resume"))
    assert rc == 2 and "no `fewshot run` to continue" in err
    (tmp_path / "train-run").mkdir()
    rc, _, err = run_main(*_cmd(digits_root, tmp_path / "train-run", "--resume"))
    assert rc == 2 and "holds no run_state.json" in err


def test_a_run_stopped_in_moco_pretraining_resumes_there(digits_root, tmp_path, monkeypatch):
    from fewshot.ssl.pretrain import MoCoTask

    out = tmp_path / "run"
    cmd = _cmd(digits_root, out, "--pretrain", "run.semi_method=off")
    stopped_in_stage(cmd, "pretrain", MoCoTask)
    assert _state(out)["stages"]["pretrain"]["status"] == "began"
    assert not (out / "backbone.safetensors").exists()
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    # on where it stopped: its training (the Engine at the stopped step), or a line that it trains no further where a
    # loaded machine's start-up left this seconds-long share too little (run_stages.go_on_resumed)
    continued = "pretrain: continuing from" in stdout and "(global step 2)" in stdout
    assert continued or re.search(r"\[run\] pretrain: .*trains no further", stdout), stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]) == {"pretrain", "finetune"}
    assert (out / "backbone.safetensors").is_file()
    _check_pred_all(digits_root, out)


@pytest.fixture(scope="module")
def stopped_in_round2(digits_root, tmp_path_factory) -> dict:
    """The default run stopped by SIGTERM in step 2 of its last stage, once for the tests that damage a copy of it
    (stopped_copy): its folder and the stop's exit code and stderr."""
    from fewshot.train.supervised import SupervisedTask

    from fewshot import run_stages

    out = tmp_path_factory.mktemp("stopped-round2") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_stages, "SHORT_ROUND_EPOCHS", 1e9)  # stopped as a short round, whatever the machine's speed
        sigterm_in_stage(mp, "finetune", SupervisedTask, 2)
        rc, _, err = run_main(*_cmd(digits_root, out))
    return {"out": out, "rc": rc, "err": err}


def stopped_copy(stopped: dict, out: Path) -> Path:
    """A private copy in ``out`` of the stopped_in_round2 run, after checking that the run stopped on the signal."""
    import shutil

    assert stopped["rc"] == 128 + signal.SIGTERM, stopped["err"]
    return Path(shutil.copytree(stopped["out"], out, symlinks=True))


def test_a_stage_killed_before_its_first_checkpoint_starts_over_from_the_previous_round(digits_root, tmp_path,
                                                                                        monkeypatch, stopped_in_round2):
    """SIGKILL in the first steps of the last stage leaves it `began` without a last.pt: the resumed run plans
    it anew and starts it from round 1's best weights (it once started from random init)."""
    import torch

    from fewshot import run_stages
    from fewshot.train.checkpoint import load_checkpoint
    from fewshot.train.engine import Engine

    out = stopped_copy(stopped_in_round2, tmp_path / "run")
    (out / "finetune" / "checkpoints" / "last.pt").unlink()  # as if killed before the stop could save
    state = json.loads((out / "run_state.json").read_text())
    assert state["session_open"] is False  # the SIGTERM's stop was recorded
    state["session_open"] = True  # as a SIGKILL leaves it: the session's last minutes are known to no clock
    (out / "run_state.json").write_text(json.dumps(state))
    # a review: a resume stopped in its start-up (decoding) recorded its stop and erased the killed session's mark
    from fewshot.pipeline import PipelineRun

    def stopped(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(PipelineRun, "decode_inputs", stopped)
        rc, _, err = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc == 130 and "no stage had finished" not in err, err  # round 1 had finished
    state = json.loads((out / "run_state.json").read_text())
    assert state["session_open"] is False and state["unrecorded_sessions"] == 1, state
    starts = {}
    fit = Engine.fit

    def fit_watched(self, *args, **kwargs):
        starts[self.run_dir.name] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "fit", fit_watched)
    monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", 1e9)  # planned anew, short again: the gentle line
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc == 0, err
    _gently_from_round_1(out, stdout)
    # a hunt: after a kill -9 the run said "done in 1.0 of 1 minutes" of 69 s of wall-clock time, without a word
    assert "ended without recording its time" not in stdout, stdout  # the session just before recorded its stop
    assert "(not counted: what 1 session that ended without a word ran after its last record)" in stdout, stdout
    assert json.loads((out / "run_state.json").read_text())["unrecorded_sessions"] == 1
    teacher = load_checkpoint(out / "finetune_labelled" / "checkpoints" / "best.pt")
    teacher = teacher["ema"] if teacher.get("ema") is not None else teacher["model"]
    assert set(starts) == {"finetune"}  # round 1 reused, not trained again
    for k, v in teacher.items():
        assert torch.equal(starts["finetune"][k].cpu(), v), k
    _check_pred_all(digits_root, out)


def test_a_resumed_stage_ends_where_the_run_clock_allows(tmp_path, monkeypatch):
    """The stopped stage keeps its plan but not beyond the run's budget: the new session's start-up comes
    out of the stage (cap_resumed_budget), so the run ends on time."""
    import time

    import fewshot.train.checkpoint
    from fewshot.run_stages import cap_resumed_budget

    last = tmp_path / "last.pt"  # a stage's last.pt after 10 s of training
    monkeypatch.setattr(fewshot.train.checkpoint, "load_checkpoint", lambda path, **kw: {"train_seconds": 10.0})
    cfg = {"train": {"budget_minutes": 1.0}}
    cap_resumed_budget(cfg, last, time.monotonic() + 20.0)  # 10 s trained + 20 s left < the planned 60 s
    assert cfg["train"]["budget_minutes"] * 60 == pytest.approx(30.0, abs=1.0)
    cfg = {"train": {"budget_minutes": 0.25}}
    cap_resumed_budget(cfg, last, time.monotonic() + 100.0)  # the plan is shorter: kept
    assert cfg["train"]["budget_minutes"] == pytest.approx(0.25)
    cfg = {"train": {"budget_minutes": 1.0}}
    cap_resumed_budget(cfg, last, time.monotonic() - 5.0)  # the run's time is up: what was trained, no more
    assert cfg["train"]["budget_minutes"] * 60 == pytest.approx(10.0, abs=0.01)
    # 10 s over 4 steps: the last step, up to one past the deadline, is kept back (2.5 s), as plan_stage keeps it
    reads = []
    monkeypatch.setattr(fewshot.train.checkpoint, "load_checkpoint",
                        lambda path, **kw: reads.append(path) or {"train_seconds": 10.0, "global_step": 4})
    cfg = {"train": {"budget_minutes": 1.0}}
    assert cap_resumed_budget(cfg, last, time.monotonic() + 20.0) == (10.0, 4)  # the caller reads last.pt no more
    assert cfg["train"]["budget_minutes"] * 60 == pytest.approx(27.5, abs=0.5) and len(reads) == 1
    # train_seconds counts evaluations and warm-up (here 10 s for 4 steps of 0.1 s): the logged step speed is kept
    # back, not the mean, which took 2.4 s of the stage's time
    cfg = {"train": {"budget_minutes": 1.0}}
    cap_resumed_budget(cfg, last, time.monotonic() + 20.0, step_s=0.1)
    assert cfg["train"]["budget_minutes"] * 60 == pytest.approx(29.9, abs=0.3)


def test_a_signal_between_stages_stops_with_a_resume_hint(digits_root, tmp_path, monkeypatch):
    """SIGTERM while the pool is pseudo-labelled (no training loop to finish) stops at once with the hint,
    and --resume redoes the labelling and goes on."""
    import fewshot.run_rounds

    out = tmp_path / "run"
    label = fewshot.run_rounds.pseudo_label_pool
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return label(*args, **kwargs)

    with monkeypatch.context() as mp:
        patch_pipeline(mp, "pseudo_label_pool", signalled)
        rc, _, err = run_main(*_cmd(digits_root, out))
    assert rc == 128 + signal.SIGTERM, err
    assert "outside training" in err and "--resume" in err
    assert _state(out)["stages"]["finetune_labelled"]["status"] == "done"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # given back
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc == 0, err
    assert "finished before the stop" in stdout
    _check_pred_all(digits_root, out)


def test_a_stage_whose_pseudo_labels_came_out_differently_starts_over(digits_root, tmp_path, monkeypatch,
                                                                     stopped_in_round2):
    """If the pool is labelled differently on resume (another device's float results), the stopped stage's
    checkpoint belongs to other training images: the stage starts over instead of failing or silently
    training on other labels. Shown for another count and for other labels at the same count."""
    from fewshot import run_stages
    from fewshot.train.checkpoint import load_checkpoint, save_checkpoint

    monkeypatch.setattr(run_stages, "SHORT_ROUND_EPOCHS", 1e9)  # stopped short, started over short: planned anew
    out = stopped_copy(stopped_in_round2, tmp_path / "run")
    last = out / "finetune" / "checkpoints" / "last.pt"
    ck = load_checkpoint(last)
    ck["n_train"] += 1  # as if one more pool image had been kept before the stop
    save_checkpoint(last, ck)
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc == 0, err
    assert "the stage starts over" in stdout
    _gently_from_round_1(out, stdout)
    assert load_checkpoint(last)["n_train"] == ck["n_train"] - 1
    _check_pred_all(digits_root, out)
    # the same count, other labels: the fingerprint recorded when the stage began tells
    state = _state(out)
    state["finished"] = False
    state["stages"]["finetune"]["status"] = "began"
    state["stages"]["finetune"]["pseudo_key"] = "0" * 40
    (out / "run_state.json").write_text(json.dumps(state))
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc == 0, err
    assert "the stage starts over" in stdout


def test_a_signal_before_the_run_started_says_to_start_again(digits_root, tmp_path, monkeypatch):
    import fewshot.run_startup
    import fewshot.train.stop_signal as stop_signal

    monkeypatch.setattr(stop_signal, "_last_signal", [0.0])
    scan = fewshot.run_startup.scan_root

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return scan(*args, **kwargs)

    patch_pipeline(monkeypatch, "scan_root", signalled)
    rc, _, err = run_main(*_cmd(digits_root, tmp_path / "run"))
    assert rc == 128 + signal.SIGTERM
    assert "before the run started" in err and "start the same command again" in err, err


def test_a_copy_of_the_signal_does_not_interrupt_the_stop_again(monkeypatch):
    """SLURM and torchrun deliver a signal twice: the copy must not raise into the first stop's cleanup."""
    import time

    import fewshot.train.stop_signal as stop_signal

    monkeypatch.setattr(stop_signal, "_last_signal", [0.0])
    cleaned = []
    with stop_signal.stop_at_once_on_signals():
        with pytest.raises(stop_signal.StopRequested):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1.0)
            finally:  # the stop's cleanup, hit by the copy
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                cleaned.append(True)
    assert cleaned == [True]


def test_resume_on_other_datasets_is_refused(digits_root, dataset_names, stopped_and_resumed, tmp_path):
    """data.root may move between sessions, the data may not change: a root holding only one of the run's
    datasets crashed (exit 1, a head of the wrong size) or wrote a submission for that dataset alone."""
    import shutil

    out = Path(shutil.copytree(stopped_and_resumed[0], tmp_path / "copy"))
    state = _state(out)
    assert state["classes"] == {name: sorted(p.name for p in (digits_root / name / "train").iterdir())
                                for name in dataset_names}
    state["finished"] = False  # as if stopped in its report
    (out / "run_state.json").write_text(json.dumps(state))
    fewer = Path(shutil.copytree(digits_root, tmp_path / "fewer", ignore=shutil.ignore_patterns(".fewshot_cache")))
    shutil.rmtree(fewer / dataset_names[1])
    rc, _, err = run_main(*_cmd(fewer, out, "--resume"))
    assert rc == 2 and f"{dataset_names[1]} is missing" in err, err
    renamed = Path(shutil.copytree(digits_root, tmp_path / "renamed", ignore=shutil.ignore_patterns(".fewshot_cache")))
    first = renamed / dataset_names[0]
    for split in ("train", "val"):
        old = sorted((first / split).iterdir())[0]
        old.rename(old.parent / f"z_{old.name}")
    rc, _, err = run_main(*_cmd(renamed, out, "--resume"))
    assert rc == 2 and f"{dataset_names[0]}'s classes differ" in err, err
    # a run started before run_state.json recorded its classes: its stages' checkpoints tell them (it crashed
    # with a head size mismatch, exit 1)
    del state["classes"]
    (out / "run_state.json").write_text(json.dumps(state))
    rc, _, err = run_main(*_cmd(renamed, out, "--resume"))
    assert rc == 2 and f"{dataset_names[0]}'s classes differ" in err, err
    rc, stdout, err = run_main(*_cmd(digits_root, out, "--resume"))  # the same data: it goes on
    assert rc == 0, err


def test_a_run_from_weights_resumes_without_the_file_and_from_another_folder(digits_root, tmp_path, monkeypatch):
    """--resume loaded model.weights again although round 1's checkpoint replaces them: a deleted or moved file
    ("weights file not found") made the run impossible to resume; and the path was recorded as typed, so the same
    file named from another folder "changes model.weights". The model.strict=false warning is given once (it came
    once per stage)."""
    import torch

    from fewshot.models.backbone import create_backbone
    from fewshot.train.supervised import SupervisedTask

    (tmp_path / "w").mkdir()
    own = create_backbone("test_resnet").state_dict()
    torch.save({k: v for k, v in own.items() if not k.startswith("layer4.")}, tmp_path / "w" / "t.pth")
    monkeypatch.chdir(tmp_path)
    weights = ("model.weights=w/t.pth", "model.strict=false")
    with monkeypatch.context() as mp:
        sigterm_in_stage(mp, "finetune", SupervisedTask, 2)
        rc, _, err = run_main(*_cmd(digits_root, "run", *weights))
    assert rc == 128 + signal.SIGTERM, err
    assert err.count("left at random init") == 1, err
    out = tmp_path / "run"
    assert _state(out)["config"]["model"]["weights"] == str(tmp_path / "w" / "t.pth")
    (tmp_path / "w" / "t.pth").unlink()
    state = _state(out)  # as a run recorded before the path was made absolute: relative to a folder unknown
    state["config"]["model"]["weights"] = "w/t.pth"
    (out / "run_state.json").write_text(json.dumps(state))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    rc, _, err = run_main(*_cmd(digits_root, "../run", "--resume", "model.weights=../w/other.pth", weights[1]))
    assert rc == 2 and "changes model.weights" in err, err
    rc, stdout, err = run_main(*_cmd(digits_root, "../run", "--resume", "model.weights=../w/t.pth", weights[1]))
    assert rc == 0, err
    assert "finetune_labelled: finished before the stop" in stdout, stdout
    assert re.search(r"finetune: (continuing|resumed) from", stdout), stdout


def _report_spy(monkeypatch, images_s: float = 0.0) -> dict:
    """The report's estimates (the stages it draws) and what the report was told to leave out; it is not drawn."""
    import fewshot.pipeline
    import fewshot.report.build

    seen = {"stages": [], "skip_images": []}
    estimate = fewshot.pipeline.report_seconds

    def report_seconds(task, eval_s, report_stages, *args):
        seen["stages"].append(report_stages)
        base, drawn = estimate(task, eval_s, report_stages, *args)
        return base, max(drawn, images_s)

    def build_report(paths, out, **kwargs):
        seen["skip_images"].append(kwargs.get("skip_images"))
        return out / "index.html"

    patch_pipeline(monkeypatch, "report_seconds", report_seconds)
    monkeypatch.setattr(fewshot.report.build, "build_report", build_report)
    return seen


def _unfinish(out: Path) -> None:
    """As if the run had stopped after its stages, in its prediction or report."""
    state = _state(out)
    state["finished"] = False
    (out / "run_state.json").write_text(json.dumps(state))


def test_a_run_resumed_after_round_3_was_skipped_reuses_rounds_1_and_2(digits_root, tmp_path, monkeypatch):
    """Round 3 skipped for want of time, then the run stopped in its prediction or report: --resume failed with
    KeyError 'finetune_round2' (round 2 was never reused). It reuses both rounds, predicts with the last, and its
    report (2 stages, as saved) still leaves out the image-based parts when they do not fit the time left."""
    out = tmp_path / "run"
    cmd = [a for a in _cmd(digits_root, out, "run.pseudo_rounds=3") if a != "run.report=false"]
    # the time holds the rounds up to round 2's end, not round 3
    patch_pipeline(monkeypatch, "time_holds",
                   lambda need_s, left_s: not (out / "finetune_round2" / "metrics.json").is_file())
    seen = _report_spy(monkeypatch)
    rc, stdout, err = run_main(*cmd)
    assert rc == 0, err
    assert "round 3 skipped (planned, not an error)" in stdout
    assert seen["stages"][-1] == 2  # the report's estimate after the decision: rounds 1 and 2
    _unfinish(out)
    seen = _report_spy(monkeypatch, images_s=1e6)  # the image-based parts do not fit the time left
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert "finetune_labelled: finished before the stop" in stdout and "finetune_round2: finished before" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune_labelled", "finetune_round2"]
    assert summary["predicted_with"] in ("finetune_labelled", "finetune_round2")
    assert summary["self_training_skipped"]["rounds"] == [3] and not (out / "finetune").exists()
    assert seen["stages"] == [2] and seen["skip_images"][0] and "report_without_images" in summary
    _check_pred_all(digits_root, out)


def test_a_run_stopped_in_round_1_keeps_its_decision_to_skip_the_later_rounds(digits_root, tmp_path, monkeypatch):
    """The decision (saved in run_state.json) holds on --resume even where the time would now seem to allow more:
    round 1 continues up to the closing work and predicts, and the report counts round 1's stage only."""
    from fewshot.train.supervised import SupervisedTask

    out = tmp_path / "run"
    cmd = [a for a in _cmd(digits_root, out, "run.pseudo_rounds=3") if a != "run.report=false"]
    with monkeypatch.context() as mp:
        patch_pipeline(mp, "time_holds", lambda need_s, left_s: False)
        sigterm_in_stage(mp, "finetune_labelled", SupervisedTask, 2)
        rc, stdout, err = run_main(*cmd)
    assert rc == 128 + signal.SIGTERM, err
    assert "rounds 2-3 skipped (planned, not an error)" in stdout
    assert _state(out)["self_training"]["skipped_from"] == 2
    seen = _report_spy(monkeypatch)  # and conftest's time_holds: every round would fit now
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert re.search(r"finetune_labelled: (continuing|resumed) from", stdout)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["finetune_labelled"] and summary["predicted_with"] == "finetune_labelled"
    assert summary["self_training_skipped"]["rounds"] == [2, 3] and not (out / "pseudo_labels_round2.json").exists()
    assert seen["stages"] and set(seen["stages"]) == {1}
    _check_pred_all(digits_root, out)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "{not json", "[1, 2]"])
@pytest.mark.parametrize("altered", ["summary.json", "finetune_labelled/metrics.json"])
def test_an_altered_json_file_of_a_finished_run_or_stage_is_refused_by_name(digits_root, stopped_and_resumed,
                                                                           tmp_path, altered, text):
    """--resume of a finished run read its summary.json, and of a finished stage its metrics.json, with json.loads:
    a file nested 100,000 deep or no JSON ended in a RecursionError or JSONDecodeError (internal error, exit 1)."""
    import shutil

    out = shutil.copytree(stopped_and_resumed[0], tmp_path / "run")
    if altered != "summary.json":  # stopped after its stages: both are reused, their metrics read
        state = _state(out)
        state["finished"] = False
        (out / "run_state.json").write_text(json.dumps(state))
        (out / "summary.json").unlink()
    (out / altered).write_text(text)
    rc, _, err = run_main(*_cmd(digits_root, out, "--resume"))
    assert rc == 2 and str(out / altered) in err and "restore it" in err, err
    assert "Traceback" not in err and "internal error" not in err.lower(), err


def test_round_1_resumed_as_the_last_stage_with_its_time_spent_warns_that_the_run_ends_late(digits_root, tmp_path,
                                                                                            monkeypatch):
    """Round 1, the last stage once the later rounds were skipped, continued from its last.pt with the budget spent:
    its closing work cannot fit, and the resume says so before training (not a larger budget: it cannot change)."""
    from fewshot.train.supervised import SupervisedTask

    out = tmp_path / "run"
    cmd = _cmd(digits_root, out, "run.pseudo_rounds=2")
    with monkeypatch.context() as mp:
        patch_pipeline(mp, "time_holds", lambda need_s, left_s: False)
        sigterm_in_stage(mp, "finetune_labelled", SupervisedTask, 2)
        rc, _, err = run_main(*cmd)
    assert rc == 128 + signal.SIGTERM, err
    state = _state(out)
    state["seconds"] = state["budget_minutes"] * 60  # as if the session had run on to the end of the budget
    (out / "run_state.json").write_text(json.dumps(state))
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    lines = [line for line in stdout.splitlines() if "[run] warning: finetune_labelled resumes" in line]
    assert len(lines) == 1 and "s past the budget already" in lines[0], stdout  # not "with 0.0 s" left
    # "about N s" or, with an overrun under a second on a fast machine, "less than 1 s" after its budget
    assert re.search(r"the run will likely end (about \d+ s|less than 1 s) after its budget", lines[0]), lines[0]
    assert "--budget-minutes" not in lines[0]
