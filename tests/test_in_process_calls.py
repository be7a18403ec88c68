"""fewshot.cli.main called from several threads of one process (a notebook): the commands run one at a time, so
the save/restore blocks around process-wide state (warnings filters, warnings.showwarning, logger levels) put the
caller's state back, and each call gives back the environment variables it set."""

from __future__ import annotations

import io
import logging
import os
import shlex
import signal
import sys
import threading
import warnings
from types import SimpleNamespace

import pytest
import torch

from fewshot import cli, cli_process
from fewshot.cli import main

WAIT_S = 60  # a bound against a hang only: no test waits for time to pass


def run_threads(*bodies) -> None:
    threads = [threading.Thread(target=body, name=f"nb-{i}") for i, body in enumerate(bodies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads), "a call never returned"


def until(condition) -> None:
    """Wait until ``condition()`` holds (another thread's progress), failing the test after WAIT_S."""
    done = threading.Event()
    for _ in range(WAIT_S * 100):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("waited in vain")


def stderr_of_threads(monkeypatch) -> io.StringIO:
    """stderr of every thread, readable while the calls run (set in the test itself: pytest's capture puts its
    own back after a fixture's setup)."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


class PausingFigure:
    """A figure whose savefig runs ``inside`` (report.plots._save's block is then in place)."""

    dpi = 72

    def __init__(self, inside):
        self.inside = inside

    def findobj(self, match):  # no texts to escape (plots._escape_undecodable)
        return []

    def savefig(self, buffer, dpi, format):
        self.inside()
        buffer.write(b"png")


def test_the_save_restore_blocks_of_two_threads_leave_the_callers_warnings_and_loggers(tmp_path, monkeypatch):
    """Two calls, each inside every block that sets process-wide state (models.weights' torch.load, data.cache's
    load_images, report.plots' _save and its font-logger wrapper): the first to enter leaves its blocks before the
    second leaves its own, as happened with threads running side by side; the second then put back the first's
    settings for good (the caller's warnings silenced, showwarning replaced, matplotlib's fonts logger at ERROR)."""
    from fewshot.data import cache
    from fewshot.models import weights
    from fewshot.report import plots

    err = stderr_of_threads(monkeypatch)
    checkpoint = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1)}, checkpoint)
    order, roles, first_inside, first_left, second_inside = [], {}, *(threading.Event() for _ in range(3))
    arriving = threading.Lock()

    def command(args, extra, handlers) -> int:
        with arriving:
            role = roles.setdefault(threading.get_ident(), len(roles))
        if role == 1:  # without the fix: in while the first is inside, and out after it (as threads side by side)
            first_inside.wait(WAIT_S)
        weights.read_tensor_file(checkpoint)
        if role == 0:
            first_left.set()
        return 0

    def inside() -> None:  # every block in place
        order.append(roles[threading.get_ident()])
        if order[-1] == 0:
            first_inside.set()
            until(lambda: second_inside.is_set() or "this one waits" in err.getvalue())
        else:
            second_inside.set()
            first_left.wait(WAIT_S)

    real_load = torch.load

    def load(*args, **kwargs):
        cache.load_images([], 8, None)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    monkeypatch.setattr(cache, "_load_images", lambda *args: plots._literal_text(
        lambda: plots._save(PausingFigure(inside), tmp_path / f"{threading.current_thread().name}.png"))())
    monkeypatch.setattr(cli, "_dispatch", command)
    fonts = logging.getLogger("matplotlib.font_manager")
    filters, show, level = list(warnings.filters), warnings.showwarning, fonts.level

    run_threads(lambda: main(["models"]), lambda: main(["models"]))

    assert order == [0, 1]
    assert warnings.filters == filters
    assert warnings.showwarning is show
    assert fonts.level == level
    with pytest.warns(UserWarning, match="seen by the caller"):  # the caller's own warnings are shown again
        warnings.warn("seen by the caller")


def test_a_second_call_waits_for_the_first_and_says_so_once(monkeypatch):
    err = stderr_of_threads(monkeypatch)
    order, release = [], threading.Event()

    def command(args, extra, handlers) -> int:
        name = threading.current_thread().name
        order.append(f"{name} starts")
        if name == "nb-0":
            release.wait(WAIT_S)
        order.append(f"{name} ends")
        return 0

    monkeypatch.setattr(cli, "_dispatch", command)
    first = threading.Thread(target=main, args=(["models"],), name="nb-0")
    first.start()
    until(lambda: order)
    second = threading.Thread(target=main, args=(["compare", "r1", "r2"],), name="nb-1")
    second.start()
    until(lambda: "waits" in err.getvalue() or len(order) > 1)
    release.set()
    first.join(WAIT_S)
    second.join(WAIT_S)
    assert order == ["nb-0 starts", "nb-0 ends", "nb-1 starts", "nb-1 ends"]
    said = [line for line in err.getvalue().splitlines() if "waits" in line]
    assert said == ["fewshot compare: another fewshot command is running in this process (thread 'nb-0', `fewshot "
                    "models`): this one waits for it to finish (commands of one Python process run one at a time; "
                    "to run them side by side, start them as separate processes)."]


def test_a_call_made_inside_a_command_of_the_same_thread_does_not_wait(monkeypatch):
    err = stderr_of_threads(monkeypatch)
    calls = []

    def command(args, extra, handlers) -> int:
        calls.append(args.command)
        return main(["models"]) if args.command == "compare" else 0

    monkeypatch.setattr(cli, "_dispatch", command)
    run_threads(lambda: calls.append(main(["compare", "r1", "r2"])))
    assert calls == ["compare", "models", 0]
    assert "waits" not in err.getvalue()


def test_ctrl_c_while_waiting_stops_the_waiting_call_only(monkeypatch):
    err = stderr_of_threads(monkeypatch)
    started, release, ran = threading.Event(), threading.Event(), []

    def command(args, extra, handlers) -> int:
        ran.append(args.command)
        started.set()
        release.wait(WAIT_S)
        return 0

    monkeypatch.setattr(cli, "_dispatch", command)
    first = threading.Thread(target=main, args=(["models"],), name="nb-0")
    first.start()
    started.wait(WAIT_S)
    waiting = threading.get_ident()  # the main thread: the one a Ctrl-C reaches

    def ctrl_c() -> None:
        until(lambda: "this one waits" in err.getvalue())
        signal.pthread_kill(waiting, signal.SIGINT)

    threading.Thread(target=ctrl_c, daemon=True).start()
    try:
        assert main(["compare", "r1", "r2"]) == 128 + signal.SIGINT
    finally:
        release.set()
        first.join(WAIT_S)
    assert ran == ["models"]
    assert ("fewshot compare: stopped while waiting for the other fewshot command of this process; nothing was "
            "done.") in err.getvalue()


def test_a_command_gives_back_the_environment_variables_its_imports_set(monkeypatch):
    """Importing torch._dynamo sets TORCHINDUCTOR_CACHE_DIR: it is removed again. Other variables added or changed
    during the call are left: a library's own for the process (MPLCONFIGDIR), or another thread's of the caller."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("FEWSHOT_TEST_ADDED", raising=False)
    monkeypatch.setenv("FEWSHOT_TEST_CHANGED", "caller's")

    def command(args, extra, handlers) -> int:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_x")  # as torch's inductor does
        os.environ["FEWSHOT_TEST_ADDED"] = "another thread's"
        os.environ["FEWSHOT_TEST_CHANGED"] = "another thread's"
        return 0

    monkeypatch.setattr(cli, "_dispatch", command)
    assert main(["models"]) == 0
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    assert os.environ["FEWSHOT_TEST_ADDED"] == os.environ["FEWSHOT_TEST_CHANGED"] == "another thread's"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/caller's")  # the caller's own value is kept
    assert main(["models"]) == 0
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/tmp/caller's"


def test_predict_refuses_a_missing_data_root_before_saying_it_predicts(tmp_path, monkeypatch, capsys):
    from fewshot.eval import predict

    monkeypatch.setattr(predict, "load_trained", lambda run, device: SimpleNamespace(cfg={}))  # no recorded root
    monkeypatch.setattr(predict, "say_checkpoint", lambda run, tm, doing, always=True: print(f"{doing} {run}"))
    missing = tmp_path / "no-data"
    assert main(["predict", tmp_path / "run", "--data", missing, "--out", tmp_path / "p.json", "--device", "cpu",
                 "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert f"dataset root {shlex.quote(str(missing))} does not exist" in err
    assert "predicting with" not in out


def test_a_ctrl_c_just_as_the_wait_ends_gives_the_turn_back(monkeypatch, capsys):
    """A Ctrl-C landing right after the waiting acquire() returned left the turn held: every later call of the
    process, from any thread, waited for ever."""
    turn = cli_process._Turn()
    real = turn._lock

    class InterruptedJustAfter:
        def acquire(self, blocking=True):
            if not blocking:
                return False  # another call holds the turn: this one waits
            real.acquire()
            raise KeyboardInterrupt  # ... and is interrupted the instant it got it

        def release(self):
            real.release()

        def _is_owned(self):
            return real._is_owned()

    turn._lock = InterruptedJustAfter()
    with turn.taken("models") as stopped:
        assert stopped
    free = []
    other = threading.Thread(target=lambda: free.append(real.acquire(timeout=5)))
    other.start()
    other.join(10)
    assert free == [True]
