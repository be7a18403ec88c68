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

    def tuner(self, current: int = 2, memory: dict | None = None) -> tt.ThreadTuner:
        """A stage's tuner inside a command (``memory``: its record, shared by its stages)."""
        self.threads = current
        return tt.ThreadTuner(2, current=current, clock=lambda: self.now, set_threads=self.set_threads,
                              say=self.said.append, memory={} if memory is None else memory)

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
    m.steps(tuner, 4.0)  # whole windows, before the first periodic trial
    assert m.calls == []
    m.speeds = LOADED  # a busy loop takes a core
    m.steps(tuner, 2 * tt.MIN_WINDOW_S + 2 * LOADED[2] + 0.01)  # one slow window, then the trial window at 1 thread
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

        def finish(self):
            seen.append("finished")

    monkeypatch.setattr(engine_module, "tuner_for",
                        lambda train, *a, **k: Recorder() if train["adapt_threads"] else None)
    root = build_digits(tmp_path / "data")
    common = ["--data", root, "--model", "test_resnet", "--img-size", "16", "--epochs", "2", "--batch-size", "8",
              "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.ema=false"]
    rc, out, err = run_main("train", "--out", tmp_path / "a", *common, "train.adapt_threads=true")  # off in the suite
    assert rc == 0, err
    rows = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert seen[-1] == "finished" and len(seen) - 1 == rows[-1]["step"], seen[-3:]
    assert all(s > 0 and n == 8 for s, n in seen[:-1]), seen[:3]
    seen.clear()
    rc, out, err = run_main("train", "--out", tmp_path / "b", *common, "train.adapt_threads=false")
    assert rc == 0 and seen == [], err
    # a machine's setting, as train.threads: a resume may change it
    common[common.index("--epochs") + 1] = "3"
    rc, out, err = run_main("train", "--out", tmp_path / "a", *common, "train.adapt_threads=false", "--resume")
    assert rc == 0 and "resuming from" in out and seen == [], err


def test_a_real_run_tries_one_thread_and_gives_the_caller_its_count_back(tmp_path, monkeypatch):
    """The tuner itself in a training run: its trials switch torch's count (a window of 2 steps, the first trial
    at once); the stage ends on the count it judged faster (kept for the command's next stage), and the command's
    end gives the caller its own count back."""
    from fewshot.train import engine as engine_module
    from helpers.checks import run_main
    from helpers.tiny import build_digits

    monkeypatch.setattr(tt, "WINDOW", 2)
    monkeypatch.setattr(tt, "MIN_WINDOW_S", 0.0)
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
    before = torch.get_num_threads()
    rc, out, err = run_main("train", "--data", root, "--out", tmp_path / "r", "--model", "test_resnet", "--img-size",
                            "16", "--epochs", "3", "--batch-size", "8", "--device", "cpu", "--no-progress",
                            "train.tensorboard=false", "train.threads=2", "train.adapt_threads=true")
    assert rc == 0, err
    assert len(made) == 1 and made[0].full == 2
    assert (1, 1) in counts, counts  # tried at 1 thread
    assert made[0].trial is None and made[0].memory["threads_count"] == made[0].current
    assert torch.get_num_threads() == before  # the caller's count, whatever the stage ended on


def test_a_stage_ends_on_the_count_it_judged_faster_and_drops_a_trial_not_judged():
    m, command = Machine(LOADED), {}
    tuner = m.tuner(memory=command)
    m.steps(tuner, 10)
    assert m.threads == 1
    tuner.finish()  # loaded: the next stage starts on 1 thread (the full count put back timed 2 contended threads)
    assert m.threads == 1 and command["threads_count"] == 1
    m.speeds = QUIET
    tuner = m.tuner(current=1, memory=command)
    while tuner.trial is None:  # to the first check's window: the trial of 2 threads begins
        m.steps(tuner, 0.01)
    assert m.threads == 2 and m.now > tt.FIRST_CHECK_S
    tuner.finish()
    assert m.threads == 1 and tuner.trial is None and tuner.window == []  # back to the count before the trial
    assert command["threads_count"] == 1
    outside = m.tuner(current=1, memory=None)  # the Engine used directly: no command gives the caller its count
    outside.memory = None
    outside.finish()
    assert m.threads == 2


def test_a_one_off_slow_step_on_a_quiet_machine_is_no_reason_to_switch():
    """A window of 6 fast steps read a 100 ms hiccup among 20 ms steps as 1.8x slower: it tried 1 thread, the trial
    beat that window, and a quiet machine spent half its time on 1 thread (review rev57)."""
    m = Machine({2: 0.02, 1: 0.032})
    count = {"n": 0}

    class Hiccups(dict):
        def __getitem__(self, k):
            count["n"] += 1
            return m.base[k] + (0.1 if count["n"] % 500 == 0 else 0.0)  # one slow step every ~10 s

    m.base, m.speeds = m.speeds, Hiccups()
    tuner = m.tuner()
    m.steps(tuner, 120)
    assert tuner.switches == 0 and m.threads == 2 and m.said == []


def test_stalls_that_contention_brings_count_at_their_full_length():
    """Two contended threads mostly stall now and then rather than slow down evenly (a helper's busy-loop logs: 8 of
    40 windows over 2x their median): a window's median read five 60 ms steps and one of 1.5 s as fast."""
    m = Machine({2: 0.06, 1: 0.125})
    stall = {"n": 0}
    real = m.speeds

    class Stalling(dict):
        def __getitem__(self, k):
            if k == 2:
                stall["n"] += 1
                return 1.5 if stall["n"] % 6 == 0 else 0.06
            return real[k]

    m.speeds = Stalling()
    tuner = m.tuner()
    m.steps(tuner, 30)
    assert m.threads == 1 and tuner.switches == 1  # 300 ms a step on 2 threads, all counted, against 125 on 1


@pytest.mark.parametrize("loaded_step_s", [1.0, 3.0])
def test_slow_loaded_steps_are_judged_after_a_few_seconds_not_after_six_of_them(loaded_step_s):
    m = Machine(QUIET)
    tuner = m.tuner()
    m.steps(tuner, 3)  # quiet windows: the reference
    m.speeds = {2: loaded_step_s, 1: 0.125}
    arrived = m.now
    while tuner.switches == 0:
        m.steps(tuner, 0.01)
    # the slow window closes at WINDOW_S (MIN_STEPS steps at least), then the trial window at 1 thread
    assert m.threads == 1
    assert m.now - arrived <= max(tt.WINDOW_S, tt.MIN_STEPS * loaded_step_s) + tt.MIN_WINDOW_S + 0.2


def test_the_commands_stages_share_the_count_and_say_each_switch_once(monkeypatch, capsys):
    """tuner_for within one command (process_state.kept): the second stage starts on the count the first ended on,
    even where train.threads set the full count back at its start, and a switch said once is not said again."""
    from fewshot import process_state

    monkeypatch.setattr("fewshot.runtime.usable_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with process_state.kept():
            first = tt.tuner_for(dict(BUDGET, adapt_threads="auto"), torch.device("cpu"), False, True)
            first.set_threads(1)
            first.current = 1
            first._tell(2, 0.3, 0.1)
            first.finish()
            torch.set_num_threads(2)  # train.threads=2 at the next stage's start (finetune.configure_threads)
            second = tt.tuner_for(dict(BUDGET, adapt_threads="auto"), torch.device("cpu"), False, True)
            assert torch.get_num_threads() == 1 and second.current == 1
            second._tell(2, 0.3, 0.1)
            for _ in range(2):  # a true the run cannot follow: said once per command, not per stage
                tt.tuner_for(dict(BUDGET, adapt_threads=True, deterministic=True), torch.device("cpu"), False, True)
        torch.set_num_threads(2)
        with process_state.kept():  # another command starts afresh
            third = tt.tuner_for(dict(BUDGET, adapt_threads="auto"), torch.device("cpu"), False, True)
            assert third.current == 2 and "threads_count" not in third.memory
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert out.count("ran 3.0x slower") == 1 and out.count("nothing to adapt here") == 1


def test_the_full_count_is_the_callers_at_the_commands_start(monkeypatch):
    """A notebook that set 1 thread before calling main had it overridden: the full count was torch's at fewshot's
    import, and the stages went to 2 threads ("2 threads are 1.4x faster than 1 again", never on 2 before)."""
    from fewshot import process_state

    monkeypatch.setattr("fewshot.runtime.usable_cores", lambda: 2)
    monkeypatch.setattr("fewshot.runtime.DEFAULT_THREADS", 2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with process_state.kept():
            assert tt.full_threads(None) == 1
            assert tt.tuner_for(dict(BUDGET, threads=None), torch.device("cpu"), False, True) is None
            assert tt.full_threads(2) == 2  # train.threads still rules
        torch.set_num_threads(2)
        with process_state.kept():
            assert tt.full_threads(None) == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("train, compiled, why", [
    ({"deterministic": True}, False, "train.deterministic is on"),
    ({"threads": 1}, False, "it trains on one thread"),
    ({}, True, "the model is compiled"),
])
def test_a_true_the_run_cannot_follow_says_why(train, compiled, why, monkeypatch, capsys):
    monkeypatch.setattr("fewshot.runtime.usable_cores", lambda: 2)
    tuner = tt.tuner_for({"threads": 2, "adapt_threads": True, **train}, torch.device("cpu"), False, True,
                         compiled=compiled)
    assert tuner is None
    out = capsys.readouterr().out
    assert "train.adapt_threads=true has nothing to adapt here" in out and why in out
    tt.tuner_for({"threads": 2, "adapt_threads": "auto", **train}, torch.device("cpu"), False, True,
                 compiled=compiled)
    assert capsys.readouterr().out == ""  # auto says nothing: it was not asked for


class TimedTask:
    """What measure_step_seconds needs of a stage's task; a step sleeps by the thread count (``per_count``)."""

    def __init__(self, per_count: dict, extra: dict | None = None):
        self.per_count, self.device, self.cfg = per_count, torch.device("cpu"), {"train": dict(BUDGET)}
        self.extra = extra or {}  # step number (0 on) -> seconds more: a hiccup
        self.cfg["train"].update(amp="off", adapt_threads="auto")
        self.model = torch.nn.Linear(2, 1)
        self.counts: list[int] = []

    def plan_epoch(self, epoch):
        return [0, 1]

    def make_batch(self, spec, epoch, i):
        return torch.ones(1, 2)

    def training_step(self, model, batch):
        import time

        self.counts.append(torch.get_num_threads())
        time.sleep(self.per_count[torch.get_num_threads()] + self.extra.get(len(self.counts) - 1, 0.0))
        return (model(batch).sum(),)


@pytest.mark.parametrize("per_count, kept, timed_at_full", [
    ({2: 0.01, 1: 0.06}, 2, 4),   # the other work ended: the full count is faster, and the stage starts there
    ({2: 0.5, 1: 0.02}, 1, 1),    # still shared: the first step on 2 threads stops the timing of the full count
])
def test_a_stage_after_one_that_ended_on_one_thread_times_the_full_count_too(per_count, kept, timed_at_full,
                                                                             monkeypatch):
    """Timed on the carried 1 thread alone, a quiet machine's stage planned at 1.8x its steps' time (review rev57)."""
    from fewshot import process_state
    from fewshot.run_budget import measure_step_seconds

    monkeypatch.setattr("fewshot.runtime.usable_cores", lambda: 2)
    before = torch.get_num_threads()
    task = TimedTask(per_count)
    try:
        torch.set_num_threads(2)
        with process_state.kept():
            process_state.this_call()["threads_count"] = 1  # an earlier stage ended there
            torch.set_num_threads(1)
            step_s = measure_step_seconds(task)
            assert torch.get_num_threads() == kept and process_state.this_call()["threads_count"] == kept
            assert task.counts[:4] == [1, 1, 1, 1] and task.counts[4:] == [2] * timed_at_full
            assert step_s == pytest.approx(per_count[kept], abs=0.05)
        torch.set_num_threads(2)
        with process_state.kept():  # nothing carried: one count timed
            task.counts.clear()
            measure_step_seconds(task)
            assert task.counts == [2, 2, 2, 2]
    finally:
        torch.set_num_threads(before)


def test_a_hiccup_in_the_full_counts_timing_does_not_keep_a_quiet_machine_on_one_thread(monkeypatch):
    """One step in three a little slower than 1 thread's median stopped the timing of the full count, and the stage
    planned at 1 thread, 1.6x too slow (review rev58): only a step over twice that median stops it."""
    from fewshot import process_state
    from fewshot.run_budget import measure_step_seconds

    monkeypatch.setattr("fewshot.runtime.usable_cores", lambda: 2)
    before = torch.get_num_threads()
    task = TimedTask({2: 0.01, 1: 0.04}, extra={6: 0.05})  # the second timed step on 2 threads: 60 ms
    try:
        torch.set_num_threads(2)
        with process_state.kept():
            process_state.this_call()["threads_count"] = 1
            torch.set_num_threads(1)
            measure_step_seconds(task)
            assert torch.get_num_threads() == 2 and task.counts[4:] == [2, 2, 2, 2]
    finally:
        torch.set_num_threads(before)


def test_the_budget_guard_is_asked_while_the_full_count_is_timed(monkeypatch):
    """A re-time at a tight budget ran up to 4 full-count steps past its deadline without asking the guard (review
    rev58); a stop there leaves the carried 1 thread, since the stage had not chosen."""
    from fewshot import process_state
    from fewshot.run_budget import measure_step_seconds, stop_timing_when

    class Stop(Exception):
        pass

    asked = []

    def check(step_s, provisional):
        asked.append(torch.get_num_threads())
        if asked.count(2) == 2:
            raise Stop

    monkeypatch.setattr("fewshot.runtime.usable_cores", lambda: 2)
    before = torch.get_num_threads()
    task = TimedTask({2: 0.01, 1: 0.04})
    try:
        torch.set_num_threads(2)
        with process_state.kept():
            process_state.this_call()["threads_count"] = 1
            torch.set_num_threads(1)
            with stop_timing_when(check), pytest.raises(Stop):
                measure_step_seconds(task)
            assert torch.get_num_threads() == 1 and process_state.this_call()["threads_count"] == 1
            assert task.counts[4:] == [2, 2]  # stopped after the second step on 2 threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_fewshot_run_applies_train_threads(threads, tmp_path, monkeypatch):
    """train.threads reached train and pretrain (their start_job) but not `fewshot run`: with train.threads=1 it
    planned and trained on every core (review rev57). The start is stopped before the images are decoded."""
    from fewshot.errors import UserError
    from fewshot.run_startup import StartupMixin
    from helpers.checks import run_main
    from helpers.tiny import build_digits

    monkeypatch.setattr("fewshot.runtime.usable_cores", lambda: 2)

    def stop(run):
        raise UserError(f"stopped on {torch.get_num_threads()} threads")

    monkeypatch.setattr(StartupMixin, "decode_inputs", stop)
    root = build_digits(tmp_path / "data")
    caller = 2 if threads == "1" else 1
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(caller)
        rc, out, err = run_main("run", "--data", root, "--out", tmp_path / "o", "--model", "test_resnet",
                                "--device", "cpu", "--no-progress", "--budget-minutes", "1",
                                f"train.threads={threads}")
        assert rc == 2 and f"stopped on {threads} threads" in err, err
        assert torch.get_num_threads() == caller  # the caller's count back
    finally:
        torch.set_num_threads(before)
