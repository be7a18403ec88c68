"""Training's CPU thread count, adapted while other work shares the cores (``train.adapt_threads``).

Why: torch runs every op on all cores with OpenMP threads that wait for each other at the op's end. When another
process takes a core (a second run, a notebook, a compile), one of the two threads is descheduled for a time slice
and its partner spins at the barrier: a resnet18 step at 32 px on 2 cores ran 3.5x slower beside a one-core busy
loop, and two runs side by side each ran 4x slower, while one thread per run kept its quiet speed (1.6x slower
than two threads alone, 2.2-2.4x faster than two threads loaded): docs/performance.md, "Shared cores".
A switch by the load average at start misfired (it counts fewshot's own previous run), so this one compares
measured speeds of the run's own steps, both counts, and keeps the faster.

How: steps are timed in windows of WINDOW steps and MIN_WINDOW_S at least (fewer steps where they already took
WINDOW_S: slow loaded steps made a window 15 s); a window's total seconds over its images is its speed (a median
hid the stalls that contention brings: five fast steps and one 1.5 s step read as fast). At the full count, a
window SLOWER than the best full-count window seen (other work arrived), or the backed-off periodic check (work
that was there from the start), tries one window at 1 thread; at 1 thread, the full count is tried again after a
backed-off interval (the other work may have ended). A trial is kept only when it is clearly faster (KEEP); a
losing trial doubles the wait before the next periodic one, so a quiet machine pays a few windows per run. A stage
ends on the count it found faster: the next stage of the same command starts there (its planning times the full
count too, run_budget.measure_step_seconds, and the stage tries it again after FIRST_CHECK_S); the command's end
gives the caller its count back (process_state).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

WINDOW = 6           # steps per measurement, and at least MIN_WINDOW_S of them: one slow step (a page fault, a
MIN_WINDOW_S = 1.0   # log write) is not a verdict (a 100 ms hiccup in six 20 ms steps read as 1.8x slower)
WINDOW_S = 2.0       # ... or fewer, at least MIN_STEPS, once they took this long (loaded steps of 1-3 s each)
MIN_STEPS = 2
SLOWER = 1.5         # a full-count window this much slower than its best: other work arrived, try 1 thread
KEEP = 0.9           # a trial is kept only when its median is at least 10 % faster than the window before it
FIRST_CHECK_S = 5.0   # the first periodic trial of the other count (other work there from the start: nothing slows)
MAX_CHECK_S = 240.0   # the longest wait between periodic trials, after losing ones doubled it


def full_threads(setting) -> int:
    """The thread count a run trains with when nothing else runs: train.threads, else the count the command started
    with (one per core, OMP_NUM_THREADS, or a notebook's own torch.set_num_threads), within the usable cores. Not
    torch's count now: an earlier stage of the same command may have left it at 1. Not torch's count at fewshot's
    import either: a caller who set 1 thread before calling main had its setting overridden."""
    from fewshot.process_state import call_threads
    from fewshot.runtime import DEFAULT_THREADS, usable_cores

    return max(1, min(int(setting or call_threads() or DEFAULT_THREADS), usable_cores()))


class ThreadTuner:
    """Picks between ``full`` threads and 1 from the speeds of the run's own steps (observe after each step)."""

    def __init__(self, full: int, current: int | None = None, clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] = torch.set_num_threads,
                 say: Callable[[str], None] | None = None, memory: dict | None = None):
        self.full, self.clock, self.set_threads, self.say = full, clock, set_threads, say
        # a count left at 1 (by an earlier stage of the command): kept, the full count tried after a while
        self.current = torch.get_num_threads() if current is None else current
        if self.current not in (1, full):  # neither arm: start from the full count
            self.current = full
            set_threads(full)
        self.best_full = float("inf")   # the fastest full-count window seen (seconds per image)
        self.window: list[tuple[float, int]] = []  # (seconds, images) of the steps measured
        self.trial: tuple[int, float] | None = None  # (the count before the trial, its last window's median)
        self.wait_s = FIRST_CHECK_S
        self.next_check = clock() + self.wait_s
        self.switches = 0               # kept trials: 2 -> 1 and back
        # what the command's stages share (process_state.this_call): the count the last one ended on, and the
        # counts whose switch was said (once each per command: each stage said it again)
        self.memory = memory
        self.said: set[int] = set() if memory is None else memory.setdefault("threads_said", set())

    def finish(self) -> None:
        """Training ends: a trial that was not judged goes back to the count before it; the count the judged
        windows found faster stays for the next stage of the command (the full count put back at every stage's end
        had each stage time its plan on 2 contended threads, 1248 ms a step against 40, and start over). Outside a
        command (the Engine used directly) the full count comes back: nothing would give the caller its own."""
        self.window = []
        if self.trial is not None:
            before, self.trial = self.trial[0], None
            if self.current != before:
                self.current = before
                self.set_threads(before)
        if self.memory is None and self.current != self.full:  # no command to carry it: the library used directly
            self.current = self.full
            self.set_threads(self.full)
        if self.memory is not None:
            self.memory["threads_count"] = self.current

    def observe(self, seconds: float, images: int) -> None:
        """One finished training step: ``seconds`` it took for ``images`` images."""
        if images <= 0 or seconds <= 0:
            return
        self.window.append((seconds, images))
        took = sum(s for s, _ in self.window)
        steps = len(self.window)
        if not ((steps >= WINDOW and took >= MIN_WINDOW_S) or (steps >= MIN_STEPS and took >= WINDOW_S)):
            return
        speed = took / sum(n for _, n in self.window)
        self.window = []
        if self.trial is not None:
            self._judge_trial(speed)
            return
        if self.current == self.full:
            self.best_full = min(self.best_full, speed)
            if speed > SLOWER * self.best_full or self.clock() >= self.next_check:
                self._try(1, speed)
        elif self.clock() >= self.next_check:
            self._try(self.full, speed)

    def _try(self, count: int, speed: float) -> None:
        self.trial = (self.current, speed)
        self.current = count
        self.set_threads(count)

    def _judge_trial(self, speed: float) -> None:
        before, rival = self.trial
        self.trial = None
        if speed < KEEP * rival:  # kept: the other count is clearly faster now
            self.switches += 1
            if self.current == self.full:
                self.best_full = speed  # the quiet speed may differ from before: measured again from here
            self.wait_s = FIRST_CHECK_S
            self._tell(before, rival, speed)
        else:  # lost: back, and wait longer before the next periodic trial
            self.current = before
            self.set_threads(before)
            if before == self.full:  # the present speed is the reference: only a further slowdown tries again
                self.best_full = rival
            self.wait_s = min(MAX_CHECK_S, self.wait_s * 2)
        self.next_check = self.clock() + self.wait_s

    def _tell(self, before: int, rival: float, speed: float) -> None:
        if self.say is None or self.current in self.said:
            return
        self.said.add(self.current)
        ratio = rival / speed
        if self.current == 1:
            self.say(f"note: training steps on {before} threads ran {ratio:.1f}x slower than on 1 (other work on "
                     f"these cores?): training goes on with 1 thread and tries {before} again now and then "
                     f"(train.adapt_threads=false keeps {before}).")
        else:
            self.say(f"note: {self.current} threads are {ratio:.1f}x faster than 1 again: training goes on with "
                     f"{self.current}.")


def tuner_for(train: dict, device: torch.device, distributed: bool, is_main: bool,
              compiled: bool = False) -> ThreadTuner | None:
    """The run's tuner, or None where it keeps its count: ``train.adapt_threads`` false, one thread, a GPU run,
    train.deterministic, a compiled model (torch keys its compiled graphs on the thread count: every switch
    compiled the model again), and under auto a run of fixed length (no train.budget_minutes) or a DDP rank.
    Fixed-length runs reproduce bit for bit (docs/reliability.md, "Same command, same result"), and a trial window
    at 1 thread sums floats in another order at steps set by the clock; a budgeted run stops at the clock anyway.
    A DDP rank waits for the slowest rank in every collective. A `true` the run cannot follow says why."""
    from fewshot.process_state import this_call

    setting, full = train.get("adapt_threads", "auto"), full_threads(train.get("threads"))
    off = ("it trains on one thread" if full < 2 else "it trains on a GPU" if device.type != "cpu"
           else "train.deterministic is on" if train.get("deterministic")
           else "the model is compiled (a new count compiles it again)" if compiled else None)
    call = this_call()
    if setting is True and off and is_main and not (call or {}).get("threads_true_said"):
        print(f"note: train.adapt_threads=true has nothing to adapt here: {off}; the thread count stays {full}.",
              flush=True)
        if call is not None:  # once per command, not once per stage
            call["threads_true_said"] = True
    if setting is False or off:
        return None
    if setting == "auto" and (distributed or not train.get("budget_minutes")):
        return None
    carried = None if call is None else call.get("threads_count")  # the count the command's last stage ended on
    if carried in (1, full) and carried != torch.get_num_threads():  # train.threads set it back at the stage's start
        torch.set_num_threads(carried)
    return ThreadTuner(full, say=(lambda words: print(words, flush=True)) if is_main else None, memory=call)


def carried_one_thread(train: dict, device: torch.device) -> int | None:
    """The full count where the command's last stage ended on 1 thread (and torch is still there), None otherwise:
    a stage's planning then times the full count too (run_budget.measure_step_seconds), since the other work may
    have ended; timed on the carried 1 thread alone, a quiet machine's plan was 1.8x too slow."""
    from fewshot.process_state import this_call

    call = this_call()
    if call is None or call.get("threads_count") != 1 or torch.get_num_threads() != 1 or device.type != "cpu":
        return None
    full = full_threads(train.get("threads"))
    return full if full >= 2 and train.get("adapt_threads", "auto") is not False else None


def keep_planned_count(count: int) -> None:
    """The count a stage's planning found faster: set, and the one the stage's tuner starts on (tuner_for)."""
    from fewshot.process_state import this_call

    call = this_call()
    if call is not None:
        call["threads_count"] = count
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
