"""`fewshot run` is split over the pipeline and its stage modules, each of which imports run_budget's timings (and
`time`, for the run's clock) and looks them up in its own namespace: a test that fakes a speed on fewshot.pipeline
alone would leave a stage's planning and the pool's labelling on the real clock and pass without a word.
helpers.run_patch patches every run module that imports the name; these tests keep it reaching all of them."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import fewshot
from helpers.run_patch import RUN_MODULES, patch_run

TIMINGS = ("measure_step_seconds", "measure_eval_seconds", "measure_prediction_seconds")
BUDGET = "fewshot.run_budget"


def _budget_aliases(tree: ast.Module) -> set[str]:
    """The names a module reaches run_budget by as a module (`import fewshot.run_budget [as x]`, `from fewshot
    import run_budget [as x]`): a timing called through one is looked up on run_budget, which patch_run leaves be."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.asname or alias.name for alias in node.names if alias.name == BUDGET}
        elif isinstance(node, ast.ImportFrom) and node.module == "fewshot":
            names |= {alias.asname or alias.name for alias in node.names if alias.name == "run_budget"}
    return names


def scan_run_modules(root: Path, package: str = "fewshot") -> dict[str, set[str]]:
    """Where the run's timings and clock are looked up, for every module under ``root`` (run_budget itself aside):
    ``timings``: modules that import a timing by name; ``clock``: modules that plan against the budget (import
    anything of run_budget, in any form) and hold `time` at module level; ``through_budget``: modules that call a
    timing as an attribute of run_budget; ``hidden_time``: run modules whose `time` patch_run cannot replace (an
    alias, or an import inside a function)."""
    found: dict[str, set[str]] = {"timings": set(), "clock": set(), "through_budget": set(), "hidden_time": set()}
    for path in sorted(root.rglob("*.py")):
        name = ".".join((package, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        if name == BUDGET:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        from_budget = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == BUDGET]
        if any(alias.name in TIMINGS for node in from_budget for alias in node.names):
            found["timings"].add(name)
        aliases = _budget_aliases(tree)
        dotted = {f"{BUDGET}.{t}" for t in TIMINGS} | {f"{a}.{t}" for a in aliases for t in TIMINGS}
        if any(isinstance(n, ast.Attribute) and ast.unparse(n) in dotted for n in ast.walk(tree)):
            found["through_budget"].add(name)
        if not (from_budget or aliases):
            continue  # not a run module: it plans nothing against the budget
        top = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        if "time" in top:
            found["clock"].add(name)
        every = [alias for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        if any(alias.name == "time" for alias in every) and (
                "time" not in top or any(alias.name == "time" and alias.asname for alias in every)):
            found["hidden_time"].add(name)
    return found


def test_the_scan_finds_every_form_a_run_module_reaches_the_timings_and_the_clock_by(tmp_path):
    """The forms the scan below must see (it read `from fewshot.run_budget import <timing>` only, while
    patch_run(..., "time", ...) fakes the run's clock through each module's `time`)."""
    sources = {
        "named.py": "from fewshot.run_budget import measure_step_seconds\n",
        "clocked.py": "import time\nfrom fewshot.run_budget import FLOOR_STEPS\n",
        "dotted.py": "import fewshot.run_budget\n\ndef f(t):\n    return fewshot.run_budget.measure_eval_seconds(t)\n",
        "aliased.py": "from fewshot import run_budget as rb\nimport time\n\ndef f(t):\n"
                      "    return rb.measure_prediction_seconds(t, t)\n",
        "local_clock.py": "from fewshot.run_budget import FLOOR_STEPS\n\ndef f():\n    import time\n"
                          "    return time.monotonic()\n",
        "renamed_clock.py": "import time as clock\nfrom fewshot.run_budget import FLOOR_STEPS\n",
        "unrelated.py": "import time\n",
        "run_budget.py": "import time\n\ndef measure_step_seconds(task):\n    return time.monotonic()\n",
    }
    for file, text in sources.items():
        (tmp_path / file).write_text(text, encoding="utf-8")
    found = scan_run_modules(tmp_path)
    assert found["timings"] == {"fewshot.named"}
    assert found["clock"] == {"fewshot.clocked", "fewshot.aliased"}
    assert found["through_budget"] == {"fewshot.dotted", "fewshot.aliased"}
    assert found["hidden_time"] == {"fewshot.local_clock", "fewshot.renamed_clock"}


def test_every_module_that_looks_up_a_timing_or_the_clock_is_one_patch_run_reaches():
    found = scan_run_modules(Path(fewshot.__file__).parent)
    assert "fewshot.run_stages" in found["timings"] and "fewshot.run_pseudo" in found["timings"]
    assert {"fewshot.pipeline", "fewshot.run_stages"} <= found["clock"]
    missed = (found["timings"] | found["clock"]) - set(RUN_MODULES)
    assert not missed, f"not reached by helpers.run_patch: {sorted(missed)}"
    assert not found["through_budget"], (f"call a timing through run_budget, which patch_run does not patch: "
                                         f"{sorted(found['through_budget'])}; import the name instead")
    assert not found["hidden_time"], f"`time` that patch_run cannot replace: {sorted(found['hidden_time'])}"


def test_a_patched_timing_reaches_the_stage_planning_the_round_speeds_and_the_pools_labelling(monkeypatch,
                                                                                              tmp_path):
    import fewshot.run_closing as run_closing
    import fewshot.run_pseudo as run_pseudo
    import fewshot.run_stages as run_stages

    def step(task):
        return 0.25

    def evaluation(task):
        return 0.5

    def prediction(task, images):
        return 0.01

    patch_run(monkeypatch, "measure_step_seconds", step)
    patch_run(monkeypatch, "measure_eval_seconds", evaluation)
    patch_run(monkeypatch, "measure_prediction_seconds", prediction)
    # the patch itself first: a module it missed would otherwise show up as a fake task's AttributeError
    assert run_stages.measure_step_seconds is step is run_closing.measure_step_seconds
    assert run_stages.measure_eval_seconds is evaluation is run_closing.measure_eval_seconds
    assert run_pseudo.measure_prediction_seconds is prediction is run_closing.measure_prediction_seconds

    task = SimpleNamespace(plan_epoch=lambda epoch: [0] * 4)
    step_s, _, _ = run_stages.plan_stage(task, {"train": {}, "sched": {}}, time.monotonic() + 60.0, 1,
                                         ("train", "eval_every"))
    assert (step_s, task.eval_s) == (0.25, 0.5)
    assert run_stages.round_speeds(SimpleNamespace(), 1)[:2] == (0.25, 0.5)
    # 1000 images at the faked 10 ms each take 10 s: 5 s label half of them
    share = run_pseudo.pool_share_in_time(None, torch.zeros(1000, 1), 5.0, tmp_path / "record.json", seed=0)
    assert share is not None and len(share) == 500
