"""The training loop's clock and signals (mutation testing, round 3): run_budget's arithmetic, worked out by hand,
and stop_signal's handlers driven by real signals. The budget tests ran whole runs whose outcome held with a
quarter taken as a half, an evaluation counted once with an EMA, or a copy of a SIGINT taken as a second Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from fewshot import run_budget
from fewshot.train import stop_signal


def test_time_holds_where_the_need_equals_what_is_left():
    assert run_budget.time_holds(5.0, 5.0) and run_budget.least_run_holds(5.0, 5.0)
    assert not run_budget.time_holds(5.01, 5.0) and not run_budget.least_run_holds(5.01, 5.0)


def test_the_epochs_that_fit_count_one_evaluation_per_eval_every_epochs():
    # 10 steps of 1 s and a 20 s evaluation every 4th epoch: 15 s an epoch, so 100 s hold 6.67 epochs
    assert run_budget.fitting_epochs(100.0, 1.0, 10, 20.0, 4) == pytest.approx(100 / 15)
    assert run_budget.plan_epochs(100.0, 1.0, 10, 0.0, 1) == 40  # 4 x the 10 that fit
    assert run_budget.plan_epochs(10.0, 1.0, 10, 0.0, 1) == 8  # the floor of 8
    assert run_budget.plan_epochs(10.0, 1.0, 10, 0.0, 1, min_epochs=12) == 12


def test_the_least_run_counts_the_floor_of_steps_and_the_step_past_the_deadline():
    assert run_budget.least_run_seconds(2.0, 3.0) == (5 + 1) * 2.0 + 3.0
    assert run_budget.pretrain_least_seconds(2.0, 1.0, 31_250_000) == (5 + 1) * 2.0 + 1.0 + 2.0
    assert run_budget.pretrain_closing_seconds(1.0, 31_250_000) == pytest.approx(3.0)  # 500 MB at 250 MB/s


def test_trained_speeds_take_the_last_quarter_of_the_steps_and_the_evaluations_per_pass(tmp_path):
    """Four epochs of 10 steps at 1, 2, 3 and 4 s: the last quarter (10 steps) is the last epoch, 0.4 s a step;
    two evaluations of 2 and 4 s with an EMA (two passes each) are 1.5 s a pass."""
    log = tmp_path / "log.jsonl"
    rows = [{"epoch": i + 1, "step": 10 * (i + 1), "epoch_time_s": float(i + 1)} for i in range(4)]
    rows[1]["eval_time_s"], rows[3]["eval_time_s"] = 2.0, 4.0
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    step_s, eval_s = run_budget.trained_speeds(log, passes=2)
    assert step_s == pytest.approx(0.4) and eval_s == pytest.approx(1.5)
    assert run_budget.trained_speeds(log)[1] == pytest.approx(3.0)


def copy_of_the_last(signum: int) -> None:
    """Sends ``signum`` as a copy of the one just acted on: it must change nothing (a raise fails the test, not
    the whole session, as a KeyboardInterrupt would)."""
    try:
        send_handled(signum)
    except KeyboardInterrupt as exc:
        pytest.fail(f"a copy of {signal.Signals(signum).name} within the window raised {exc!r}")


def send_handled(signum: int) -> None:
    """Sends ``signum`` to this process once a handler of stop_signal's is in place: with the default action a
    missing handler would end the whole test session (SIGTERM kills it, a first SIGINT stops pytest)."""
    if signal.getsignal(signum) in (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler):
        pytest.fail(f"no handler installed for {signal.Signals(signum).name}")
    os.kill(os.getpid(), signum)


@pytest.fixture
def fresh_signals(monkeypatch):
    """No signal acted on lately, not under torchrun, SIGTERM and SIGINT at their defaults, and a repeat window
    no stall of a loaded machine outlasts (the tests move the clocks back by hand to leave it)."""
    monkeypatch.setattr(stop_signal, "REPEAT_WINDOW_S", 60.0)
    monkeypatch.setattr(stop_signal, "_last_signal", [-1e9])  # long ago, however recently the machine booted
    monkeypatch.setattr(stop_signal, "_sigterm_ran", [0.0])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, h in old.items():
        signal.signal(s, h)


def test_a_second_ctrl_c_stops_at_once_but_a_copy_within_the_window_does_not(fresh_signals):
    with stop_signal.stop_on_signals(announce=False) as flag:
        send_handled(signal.SIGINT)
        assert flag.signum == signal.SIGINT
        copy_of_the_last(signal.SIGINT)  # torchrun's copy of the same Ctrl-C: nothing
        flag.at -= stop_signal.REPEAT_WINDOW_S + 0.5
        with pytest.raises(KeyboardInterrupt):
            send_handled(signal.SIGINT)


def test_a_copy_of_sigterm_within_the_window_raises_once(fresh_signals):
    with stop_signal.sigterm_as_interrupt():
        with pytest.raises(stop_signal.Terminated):
            send_handled(signal.SIGTERM)
        copy_of_the_last(signal.SIGTERM)  # SLURM's and torchrun's copy: must not cut the cleanup short
    with stop_signal.stop_at_once_on_signals():
        copy_of_the_last(signal.SIGTERM)  # still within the window of the first
        stop_signal._last_signal[0] = time.monotonic() - stop_signal.REPEAT_WINDOW_S - 0.5
        with pytest.raises(stop_signal.StopRequested):
            send_handled(signal.SIGTERM)


def test_acted_on_since_compares_the_last_handler_run_with_the_time_given(monkeypatch):
    monkeypatch.setattr(stop_signal, "_last_signal", [100.0])
    monkeypatch.setattr(stop_signal, "_sigterm_ran", [50.0])
    assert stop_signal._acted_on_since(100.0) and stop_signal._acted_on_since(99.0)
    assert not stop_signal._acted_on_since(100.5)


@pytest.mark.parametrize("world, watched", [("1", False), ("2", True)])
def test_only_a_multi_process_run_watches_for_a_blocked_main_thread(fresh_signals, monkeypatch, world, watched):
    """WORLD_SIZE=1 is one process (no collective to block in): no watcher, nor the interpreter's wakeup fd."""
    monkeypatch.setenv("WORLD_SIZE", world)
    with stop_signal.sigterm_as_interrupt():
        fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(fd)
    assert (fd != -1) == watched


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from helpers.tiny import build_digits

    return build_digits(tmp_path_factory.mktemp("data"), shots=2)


def test_every_optimizer_step_sees_gradients_clipped_to_grad_clip(digits, tmp_path, monkeypatch):
    """optim.grad_clip bounds the norm of all the gradients the optimizer steps with (the whole run)."""
    import torch

    from fewshot.train.finetune import run_finetune
    from helpers.tiny import finetune_cfg

    norms = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    cfg = finetune_cfg(digits, **{"train.epochs": 1, "train.ema": False, "optim.name": "sgd",
                                  "optim.grad_clip": 1e-3})
    run_finetune(cfg, tmp_path / "run")
    assert norms and max(norms) <= 1e-3 * (1 + 1e-4)


def test_a_tie_on_val_goes_to_the_later_epoch(digits, tmp_path):
    """Weights that hardly move (lr 1e-12) score the same every epoch: best.pt is the last of them, not the first."""
    from fewshot.train.checkpoint import load_checkpoint
    from fewshot.train.finetune import run_finetune
    from helpers.tiny import finetune_cfg

    run_finetune(finetune_cfg(digits, **{"train.epochs": 2, "train.ema": False, "optim.lr": 1e-12}), tmp_path / "r")
    rows = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 2 and rows[0]["score"] == rows[1]["score"]
    best = load_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt")
    assert best["epoch"] == 2 and best["global_step"] == rows[1]["step"]
