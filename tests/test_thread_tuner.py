"""train.adapt_threads: the thread count follows the measured speed of the run's own steps (train/thread_tuner.py).

The speeds below are the ones measured on this 2-core machine (resnet18, 32 px, batch 64; docs/performance.md,
"Shared cores"): alone 2 threads 77 ms a step, 1 thread 125 ms; beside a one-core busy loop 2 threads 271 ms,
1 thread 125 ms.
"""

from __future__ import annotations

import json

import pytest
import torch

from fewshot.train import thread_tuner as tt

QUIET = {2: 0.077, 1: 0.125}
LOADED = {2: 0.271, 1: 0.125}


class Machine:
    """A fake clock and thread setting: each step takes the speed table's time at the current count."""

    def __init__(self, speeds: dict):
        self.now, self.speeds, self.threads, self.calls, self.said = 0.0, speeds, 2, [], []

    def set_threads(self, n: int) -> None:
        self.threads = n
        self.calls.append(n)

    def tuner(self, current: int = 2) -> tt.ThreadTuner:
        self.threads = current
        return tt.ThreadTuner(2, current=current, clock=lambda: self.now, set_threads=self.set_threads,
                              say=self.said.append)

    def steps(self, tuner: tt.ThreadTuner, seconds: float, images: int = 64) -> int:
        """Steps for ``seconds`` of training; returns how many ran."""
        n, end = 0, self.now + seconds
        while self.now < end:
            took = self.speeds[self.threads]
            self.now += took
            tuner.observe(took, images)
            n += 1
        return n


def test_a_quiet_machine_keeps_all_threads_and_tries_one_rarely():
    m = Machine(QUIET)
    tuner = m.tuner()
    n = m.steps(tuner, 600)
    assert m.threads == 2 and tuner.switches == 0 and m.said == []
    trials = m.calls.count(1)
    assert 1 <= trials <= 8, m.calls  # at 5 s, then after waits doubled up to MAX_CHECK_S: a handful per 10 minutes
    assert m.calls == [1, 2] * trials  # every trial of 1 thread went back
    assert n > 0.99 * 600 / QUIET[2]  # what the trials cost: under 1 % of the steps


def test_other_work_arriving_moves_training_to_one_thread_at_once_and_says_so():
    m = Machine(QUIET)
    tuner = m.tuner()
    m.steps(tuner, 4 * tt.WINDOW * QUIET[2] - 0.01)  # 4 whole windows, before the first periodic trial
    assert m.calls == []
    m.speeds = LOADED  # a busy loop takes a core
    m.steps(tuner, 2 * tt.WINDOW * LOADED[2] + 0.01)  # one slow window, then the trial window at 1 thread
    assert m.threads == 1 and tuner.switches == 1
    assert len(m.said) == 1 and "ran 2.2x slower than on 1" in m.said[0] and "adapt_threads=false" in m.said[0]
    m.steps(tuner, 60)
    assert m.threads == 1  # the trials of 2 threads while the work goes on lose and go back
    assert m.calls.count(2) >= 1 and len(m.said) == 1


def test_all_threads_come_back_when_the_other_work_ends():
    m = Machine(LOADED)
    tuner = m.tuner()
    m.steps(tuner, 10)  # loaded from the start: the first periodic trial (5 s) finds 1 thread faster
    assert m.threads == 1 and tuner.switches == 1
    m.speeds = QUIET
    m.steps(tuner, tt.FIRST_CHECK_S + 2)
    assert m.threads == 2 and tuner.switches == 2
    assert "2 threads are 1.6x faster than 1 again" in m.said[-1]


def test_a_mild_slowdown_that_one_thread_does_not_beat_tries_once_not_every_window():
    m = Machine(QUIET)
    tuner = m.tuner()
    m.steps(tuner, 3)
    m.speeds = {2: 0.120, 1: 0.125}  # slower by 1.56x, still faster than 1 thread
    m.steps(tuner, 10)
    assert m.threads == 2 and m.calls == [1, 2]  # one trial, lost; the slower speed is the reference now


def test_one_thread_left_by_an_earlier_stage_is_kept_until_the_full_count_wins():
    m = Machine(QUIET)
    tuner = m.tuner(current=1)
    m.steps(tuner, tt.FIRST_CHECK_S - 1)
    assert m.threads == 1 and m.calls == []
    m.steps(tuner, 3)
    assert m.threads == 2


def test_a_step_without_images_or_time_is_not_counted():
    m = Machine(QUIET)
    tuner = m.tuner()
    tuner.observe(0.0, 64)
    tuner.observe(0.1, 0)
    assert tuner.window == []


BUDGET = {"threads": 2, "budget_minutes": 1.0}


@pytest.mark.parametrize("train, device, distributed, compiled, adapts", [
    (BUDGET, "cpu", False, False, True),
    ({"threads": 2}, "cpu", False, False, False),  # fixed length under auto: reproduces bit for bit
    ({"threads": 2, "adapt_threads": True}, "cpu", False, False, True),
    ({**BUDGET, "adapt_threads": False}, "cpu", False, False, False),
    ({**BUDGET, "threads": 1}, "cpu", False, False, False),
    (BUDGET, "meta", False, False, False),  # not a CPU run (a GPU's)
    ({**BUDGET, "deterministic": True}, "cpu", False, False, False),
    ({**BUDGET, "adapt_threads": True}, "cpu", False, True, False),  # compiled: a switch compiles it again
    (BUDGET, "cpu", True, False, False),  # a DDP rank under auto
    ({**BUDGET, "adapt_threads": True}, "cpu", True, False, True),
])
def test_which_runs_adapt(train, device, distributed, compiled, adapts, monkeypatch):
    monkeypatch.setattr("fewshot.runtime.usable_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        tuner = tt.tuner_for({"adapt_threads": "auto", **train}, torch.device(device), distributed, True,
                             compiled=compiled)
        assert (tuner is not None) == adapts
    finally:
        torch.set_num_threads(before)


def test_the_engine_times_each_trained_step_for_the_tuner(tmp_path, monkeypatch):
    """Wiring: every trained step reaches observe() with its images; train.adapt_threads=false builds none."""
    from fewshot.train import engine as engine_module
    from helpers.checks import run_main
    from helpers.tiny import build_digits

    seen = []

    class Recorder:
        def observe(self, seconds, images):
            seen.append((seconds, images))

        def restore(self):
            seen.append("restored")

    monkeypatch.setattr(engine_module, "tuner_for",
                        lambda train, *a, **k: Recorder() if train["adapt_threads"] else None)
    root = build_digits(tmp_path / "data")
    common = ["--data", root, "--model", "test_resnet", "--img-size", "16", "--epochs", "2", "--batch-size", "8",
              "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.ema=false"]
    rc, out, err = run_main("train", "--out", tmp_path / "a", *common, "train.adapt_threads=true")  # off in the suite
    assert rc == 0, err
    rows = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert seen[-1] == "restored" and len(seen) - 1 == rows[-1]["step"], seen[-3:]
    assert all(s > 0 and n == 8 for s, n in seen[:-1]), seen[:3]
    seen.clear()
    rc, out, err = run_main("train", "--out", tmp_path / "b", *common, "train.adapt_threads=false")
    assert rc == 0 and seen == [], err
    # a machine's setting, as train.threads: a resume may change it
    common[common.index("--epochs") + 1] = "3"
    rc, out, err = run_main("train", "--out", tmp_path / "a", *common, "train.adapt_threads=false", "--resume")
    assert rc == 0 and "resuming from" in out and seen == [], err


def test_a_real_run_tries_one_thread_and_ends_on_its_full_count(tmp_path, monkeypatch):
    """The tuner itself in a training run: its trials switch torch's count (a window of 2 steps, the first trial
    at once) and the stage ends on the full count, so that the next stage's planning times what it will run."""
    from fewshot.train import engine as engine_module
    from helpers.checks import run_main
    from helpers.tiny import build_digits

    monkeypatch.setattr(tt, "WINDOW", 2)
    monkeypatch.setattr(tt, "FIRST_CHECK_S", 0.0)
    monkeypatch.setattr("fewshot.runtime.usable_cores", lambda: 2)
    made, counts = [], []
    real = engine_module.tuner_for

    def keep(*a, **k):
        tuner = real(*a, **k)
        if tuner is not None:
            set_threads = tuner.set_threads

            def recorded(n):
                set_threads(n)
                counts.append((n, torch.get_num_threads()))
            tuner.set_threads = recorded
            made.append(tuner)
        return tuner

    monkeypatch.setattr(engine_module, "tuner_for", keep)
    root = build_digits(tmp_path / "data")
    rc, out, err = run_main("train", "--data", root, "--out", tmp_path / "r", "--model", "test_resnet", "--img-size",
                            "16", "--epochs", "3", "--batch-size", "8", "--device", "cpu", "--no-progress",
                            "train.tensorboard=false", "train.threads=2", "train.adapt_threads=true")
    assert rc == 0, err
    assert len(made) == 1 and made[0].full == 2
    assert (1, 1) in counts and counts[-1] == (2, 2), counts  # tried at 1 thread; ended on 2
    assert made[0].current == 2 and made[0].trial is None


def test_restore_sets_the_full_count_back_and_forgets_a_trial():
    m = Machine(LOADED)
    tuner = m.tuner()
    m.steps(tuner, 10)
    assert m.threads == 1
    tuner.observe(0.1, 64)  # a window begun
    tuner.restore()
    assert m.threads == 2 and tuner.current == 2 and tuner.window == [] and tuner.trial is None
    calls = len(m.calls)
    tuner.restore()  # already there: nothing to set
    assert len(m.calls) == calls
