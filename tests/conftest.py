"""Shared fixtures: a tiny REAL two-dataset root, built once per test session.

`digits_root` holds two small few-shot datasets made by `fewshot.data.build.build_dataset`:
sklearn's digits and Fashion-MNIST (from Debian's IDX files). Where Fashion-MNIST is not
installed, the second dataset is a second, differently seeded draw of digits named
`digits-b`, so multi-dataset behaviour is still exercised on real images. Tests that need
to damage a root take `copy_root`, which copies it into the test's own tmp_path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _a_share_of_the_cores() -> None:
    """Under pytest-xdist each test process gets its share of the cores as torch's thread count (OMP_NUM_THREADS,
    read once when torch loads, so before the import below; child processes inherit it). With torch's default of
    one thread per core, 2 processes on 2 cores ran 4 spinning OpenMP threads: a 1-epoch `fewshot train` took
    3.7x the CPU time. A count the caller set is kept; one process (make test TEST_WORKERS=0) keeps the default."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1 and CALLERS_THREADS is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // workers))


CALLERS_THREADS = os.environ.get("OMP_NUM_THREADS")  # test_suite_setup checks the share where this is None
_a_share_of_the_cores()

import fewshot.train.engine as _engine  # noqa: E402 - after the thread count
from fewshot.data.build import DEFAULT_IDX_DIR, build_dataset  # noqa: E402
from fewshot.train.thread_tuner import tuner_for as _tuner_for  # noqa: E402


def _tuner_only_when_asked(train: dict, *args, **kwargs):
    """A run's thread count stays what the suite gives it unless the test sets train.adapt_threads=true: under
    auto the tuner tries 1 thread after 5 s and when steps slow down, i.e. at moments set by the machine's load,
    and another count splits float sums differently, so the tests that compare runs bit for bit (resume against
    uninterrupted) would depend on the load. Under `make test` each process has 1 thread and auto is off anyway.
    Not the default's value: that would change what the config accepts and records (a run's config.yaml read by a
    command in another process)."""
    return _tuner_for(train, *args, **kwargs) if train.get("adapt_threads") is True else None


_engine.tuner_for = _tuner_only_when_asked

SMALL = dict(shots=4, val_per_class=3, test_per_class=3, pool_per_class=10, progress=False)
HAVE_FASHION = (DEFAULT_IDX_DIR / "train-images-idx3-ubyte.gz").is_file() or \
    (DEFAULT_IDX_DIR / "train-images-idx3-ubyte").is_file()


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """ROOT/{digits,<second>}/{train,val,test}, test_labels.json, ROOT/unlabeled/<name> (read-only use)."""
    root = tmp_path_factory.mktemp("data") / "root"
    build_dataset("digits", root, **SMALL)
    if HAVE_FASHION:
        build_dataset("fashion-mnist", root, **SMALL)
    else:  # still real images: another draw of digits under another name
        other = tmp_path_factory.mktemp("data-b")
        build_dataset("digits", other, seed=1, **SMALL)
        (other / "digits").rename(root / "digits-b")
        (other / "unlabeled" / "digits").rename(root / "unlabeled" / "digits-b")  # its pool too
    return root


@pytest.fixture(scope="session")
def dataset_names(digits_root) -> list[str]:
    """The two dataset names, sorted (['digits', 'fashion-mnist'] normally)."""
    return sorted(p.name for p in digits_root.iterdir() if (p / "train").is_dir())  # not unlabeled/ nor the cache


def _copy(src: Path, dst: Path) -> Path:
    from helpers.tiny import copy_data_root

    return copy_data_root(src, dst)


@pytest.fixture
def copy_root(digits_root, tmp_path) -> Path:
    """A private copy of digits_root (without any image cache) that a test may corrupt."""
    return _copy(digits_root, tmp_path / "root")


@pytest.fixture(autouse=True, scope="session")
def _fp32_on_every_cpu():
    """`train.amp=auto` uses bf16 on CPUs that compute it natively (fewshot.runtime.cpu_computes_bf16):
    the suite pins fp32 so that its numbers do not depend on the CPU it runs on (subprocesses inherit it);
    tests of the bf16 path set the variable themselves."""
    import os

    old = os.environ.get("FEWSHOT_CPU_BF16")
    os.environ["FEWSHOT_CPU_BF16"] = "0"
    yield
    if old is None:
        os.environ.pop("FEWSHOT_CPU_BF16", None)
    else:
        os.environ["FEWSHOT_CPU_BF16"] = old


@pytest.fixture(autouse=True, scope="session")
def _child_temp_files_in_the_session_folder(tmp_path_factory):
    """torchrun makes a torchelastic_* folder in the temporary directory for every job and never removes it (680
    of them piled up in /tmp over a few suites): child processes get a TMPDIR inside pytest's own temporary
    folders, which pytest prunes. Tests of TMPDIR itself set it with monkeypatch, over this."""
    import os

    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("child_tmp"))
    yield
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old


@pytest.fixture
def settings_only_run(monkeypatch) -> list[dict]:
    """`fewshot run` reduced to its start (RunState.start) and its resume check (RunState.resume): the settings a
    resumed run compares, without training. Returns the config of each call, as resolved."""
    import copy

    import fewshot.pipeline
    from fewshot.config import CHOSEN
    from fewshot.run_state import RunState

    seen = []

    def fake(cfg, out, budget_minutes, started=None, resume=False):
        # as PipelineRun keeps them: what the command chose is no setting a --resume must repeat
        settings = {key: value for key, value in cfg.items() if key != CHOSEN}
        if resume:
            RunState.resume(out, settings, budget_minutes)
        else:
            out.mkdir(parents=True)
            RunState.start(out, settings, budget_minutes, None, 0.0)
        seen.append(copy.deepcopy(cfg))

    monkeypatch.setattr(fewshot.pipeline, "run_pipeline", fake)
    return seen


@pytest.fixture(autouse=True)
def _release_run_locks():
    """Tests that call run_finetune / run_pipeline directly (not through the CLI, which releases them) keep
    their run folders locked in this process; a later subprocess on the same folder must find it free."""
    yield
    from fewshot.run_lock import release_all

    release_all()


@pytest.fixture(autouse=True)
def _progress_bars_as_they_were():
    """Tests that call run_finetune / run_pretrain directly with train.progress=false switch the progress bars off
    for the process (the CLI restores them after each call): the test after one must not depend on the order. Each
    test starts from the process default, on: a module-scoped fixture's run ran before this fixture could look."""
    from fewshot import progress

    progress.set_enabled(True)
    yield
    progress.set_enabled(True)


@pytest.fixture(autouse=True)
def _no_terminal_width_from_the_runner(monkeypatch):
    """pytest-xdist's workers export COLUMNS=80 (a plain pytest does not), and `fewshot compare` fits its tables to
    COLUMNS when its output is no terminal: a test of what compare prints must not depend on how it was run. The
    width tests set COLUMNS themselves."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture(autouse=True)
def _once_per_process_warnings_afresh(monkeypatch):
    """warn_once prints each line once per process: a test that looks for one must not depend on whether a test
    before it in the same worker printed it already."""
    from fewshot.data import warn_once

    monkeypatch.setattr(warn_once, "_TOLD_GAPS", set())


@pytest.fixture
def any_confidence(monkeypatch):
    """The teacher of a 0.2-minute round 1 is near chance, so the chance floor (test_semi) keeps none of its labels:
    tests of where the pool comes from and what the record says lift the floor."""
    import torch

    from fewshot.train import semi

    monkeypatch.setattr(semi, "chance_floor", lambda n_classes: torch.zeros(n_classes.shape))


REAL_TIME_HOLDS = []  # run_budget.time_holds before later_rounds_fit relaxed it: real_time_holds puts it back
REAL_KEPT_NOTHING = []  # run_rounds.kept_nothing before later_rounds_fit relaxed it: real_kept_nothing puts it back


@pytest.fixture(autouse=True, scope="session")
def later_rounds_fit():
    """`fewshot run` skips self-training rounds that the time left cannot hold at the measured speed, and the tests'
    budgets of seconds hold none: tests of what the rounds do let them run (the skip's tests take real_time_holds).
    Session-wide: module fixtures run whole pipelines too."""
    from fewshot import run_budget
    from helpers.run_patch import patch_pipeline, patch_run

    from fewshot import run_rounds

    REAL_TIME_HOLDS.append(run_budget.time_holds)
    REAL_KEPT_NOTHING.append(run_rounds.kept_nothing)
    with pytest.MonkeyPatch.context() as mp:
        patch_pipeline(mp, "time_holds", lambda need_s, left_s: True)
        # a seconds-long round 1 is near chance and keeps no pseudo-label, which skips round 2 (real_kept_nothing)
        mp.setattr(run_rounds, "kept_nothing", lambda pseudo: False)
        # nor would they hold the least run: a fresh run refuses them (test_run_small_budget restores the check), and a
        # resumed stage trains no further (run_stages.skip_short_resumed_training)
        patch_run(mp, "least_run_holds", lambda need_s, left_s: True)
        yield


@pytest.fixture
def real_kept_nothing(monkeypatch):
    """The tests of the round skip after a round that kept no pseudo-label: run_rounds.kept_nothing as the package
    has it (later_rounds_fit relaxes it)."""
    from fewshot import run_rounds

    monkeypatch.setattr(run_rounds, "kept_nothing", REAL_KEPT_NOTHING[0])


@pytest.fixture
def real_time_holds(monkeypatch):
    """The skip's own tests: run_budget.time_holds as the package has it (later_rounds_fit relaxes it)."""
    from helpers.run_patch import patch_pipeline

    patch_pipeline(monkeypatch, "time_holds", REAL_TIME_HOLDS[0])
    return REAL_TIME_HOLDS[0]


@pytest.fixture
def real_least_run_holds(monkeypatch):
    """The least-run refusals' own tests: run_budget.least_run_holds as the package has it (later_rounds_fit relaxes
    it), one place rather than a copy of its test in each file."""
    from fewshot import run_budget
    from helpers.run_patch import patch_run

    patch_run(monkeypatch, "least_run_holds", run_budget.least_run_holds)
    return run_budget.least_run_holds


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for tiny tensor tests (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): they
    gain nothing from more, and two OpenMP threads waiting on each other on a loaded 2-core machine slow them down."""
    import torch  # here, not at the top: the thread share above is set before torch is first imported

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
