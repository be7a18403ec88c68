"""scripts/demo_data.sh and scripts/demo.sh (what `make demo-data` and `make demo` run), with a stand-in `fewshot`
that logs its calls and writes what the scripts read: the scripts' own decisions, in a second each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

FAKE_FEWSHOT = """#!{python}
import json, os, sys
from pathlib import Path
a = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write(" ".join(a) + "\\n")
if a[0] == "data":
    out = Path(a[a.index("--out") + 1])
    stage = out / (".fewshot-build-" + a[1] + ".tmp")
    if (out / a[1]).exists() and not stage.is_dir():  # as the real one refuses
        sys.exit(str(out / a[1]) + " already exists and is not empty")
    if stage.is_dir():  # a killed build's: built again, as the real one repairs
        import shutil
        shutil.rmtree(out / a[1])
        shutil.rmtree(stage)
    (out / a[1]).mkdir(parents=True)
    (out / "unlabeled" / a[1]).mkdir(parents=True)
elif a[0] == "run":
    out = Path(a[a.index("--out") + 1])
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({{"budget_minutes": float(a[a.index("--budget-minutes") + 1]),
                                                  "metrics": {{"val": {{}}}}}}))
"""


def built_datasets(root: Path) -> None:
    """Both demo datasets as a finished build leaves them: each with its pool."""
    for name in ("digits", "fashion-mnist"):
        (root / name).mkdir(parents=True)
        (root / "unlabeled" / name).mkdir(parents=True)


def fake_bin(tmp_path: Path) -> Path:
    """BIN/{fewshot,python} and, on PATH, an offline apt-get (and an `id` that says root, as under `sudo make`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fewshot").write_text(FAKE_FEWSHOT.format(python=sys.executable))
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "apt-get").write_text('#!/bin/sh\necho "apt-get $*" >> "$FAKE_LOG"\n'
                                     'echo "E: Unable to locate package dataset-fashion-mnist" >&2\nexit 100\n')
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")
    for name in ("fewshot", "apt-get", "id"):
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_script(script: Path, tmp_path: Path, *args) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "FAKE_LOG": str(log), "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(script), *map(str, args)], env=env, capture_output=True, text=True, timeout=60)
    return done, log.read_text().splitlines() if log.exists() else []


def demo_data_without_idx_files(tmp_path: Path) -> Path:
    """demo_data.sh looking for the IDX files in an empty folder (the machine's copy may be installed)."""
    script = tmp_path / "scripts" / "demo_data.sh"
    script.parent.mkdir()
    text = (SCRIPTS / "demo_data.sh").read_text()
    assert "IDX=/usr/share/datasets/fashion-mnist" in text
    (tmp_path / "no-idx").mkdir()
    script.write_text(text.replace("IDX=/usr/share/datasets/fashion-mnist", f"IDX={tmp_path / 'no-idx'}"))
    return script


def test_demo_data_keeps_built_datasets_and_shows_why_apt_get_failed(tmp_path):
    """With both datasets built but the IDX files gone, `make demo` failed (as root: ran apt-get every time); and a
    failed apt-get was silent: "installing ..." and then an error that advised apt-get."""
    bin_dir = fake_bin(tmp_path)
    script = demo_data_without_idx_files(tmp_path)
    root = tmp_path / "demo_data"
    built_datasets(root)
    done, calls = run_script(script, tmp_path, bin_dir, root)
    assert done.returncode == 0 and calls == [], (done.stdout, done.stderr, calls)

    (root / "unlabeled" / "digits").rmdir()  # a pool gone otherwise: `fewshot data` would refuse; said, kept
    done, calls = run_script(script, tmp_path, bin_dir, root)
    assert done.returncode == 0 and calls == [], (done.stderr, calls)
    assert f"{root}/digits has no unlabeled pool" in done.stderr, done.stderr
    (root / ".fewshot-build-digits.tmp" / "pool").mkdir(parents=True)  # a build killed before its pool moved
    done, calls = run_script(script, tmp_path, bin_dir, root)
    assert done.returncode == 0 and calls == [f"data digits --out {root}"], (done.stderr, calls)

    (root / "fashion-mnist").rmdir()  # now it has to be built: apt-get is tried, offline here
    done, calls = run_script(script, tmp_path, bin_dir, root)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "E: Unable to locate package dataset-fashion-mnist" in done.stderr, done.stderr
    assert "apt-get could not install dataset-fashion-mnist" in done.stderr and "--idx-dir DIR" in done.stderr
    assert any(c.startswith("apt-get install") for c in calls) and not (root / "fashion-mnist").exists()


def test_demo_says_which_runs_it_reuses_reruns_another_budget_and_scores_without_keys_plainly(tmp_path):
    """`make demo DEMO_MINUTES=10` after a 3-minute demo printed the old scores without a word; runs without answer
    keys ended the demo with Python's `KeyError: 'pred_all_score'`."""
    bin_dir = fake_bin(tmp_path)
    root, out = tmp_path / "demo_data", tmp_path / "runs"
    built_datasets(root)
    demo = SCRIPTS / "demo.sh"

    done, calls = run_script(demo, tmp_path, bin_dir, root, out, 3)
    assert done.returncode == 0, done.stderr
    assert sum(c.startswith("run ") for c in calls) == 3
    assert "not scored: no answer key" in done.stdout and "Traceback" not in done.stderr, done.stdout

    done, calls = run_script(demo, tmp_path, bin_dir, root, out, 3)
    assert done.returncode == 0, done.stderr
    assert not any(c.startswith("run ") for c in calls)
    assert done.stdout.count("reusing") == 3 and "(3 min budget" in done.stdout, done.stdout

    done, calls = run_script(demo, tmp_path, bin_dir, root, out, 10)
    assert done.returncode == 0, done.stderr
    assert sum(c.startswith("run ") and "--budget-minutes 10" in c for c in calls) == 3, calls
    assert done.stdout.count("had a 3 min budget, not 10: running it again") == 3, done.stdout
    assert json.loads((out / "moco" / "summary.json").read_text())["budget_minutes"] == 10

    summary = json.loads((out / "moco" / "summary.json").read_text())  # keyed runs: the table, "-" where unscored
    summary["metrics"]["pred_all_score"] = {"digits": {"acc1": 87.5, "n": 8}}
    (out / "moco" / "summary.json").write_text(json.dumps(summary))
    done, _ = run_script(demo, tmp_path, bin_dir, root, out, 10)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith(("digits", "mean"))]
    rows = {words[0]: words[1:] for words in lines}
    assert rows == {"digits": ["-", "87.50", "-"], "mean": ["-", "87.50", "-"]}, done.stdout


def demo_with_failing_pretrain(tmp_path: Path, body: str) -> tuple[Path, Path, Path]:
    """fake_bin whose `fewshot run --pretrain` runs ``body`` (Python, indented under its branch) instead of
    finishing, and an empty demo root: (BIN, ROOT, OUT)."""
    bin_dir = fake_bin(tmp_path)
    fake = bin_dir / "fewshot"
    fake.write_text(fake.read_text().replace(
        'elif a[0] == "run":', f'elif a[0] == "run" and "--pretrain" in a:\n    {body}\nelif a[0] == "run":'))
    root, out = tmp_path / "demo_data", tmp_path / "runs"
    built_datasets(root)
    return bin_dir, root, out


def test_demo_goes_on_after_a_refused_run_and_reports_the_finished_ones(tmp_path):
    """On a busy 2-core machine the --pretrain run was refused its 3-minute budget (start-up took 80 s) and
    `set -e` ended the demo there: no report and no table, not even for the finished run, and no baseline run."""
    # this stand-in refuses --pretrain, as a too-short budget is refused
    bin_dir, root, out = demo_with_failing_pretrain(
        tmp_path, 'print("error: Give --budget-minutes 4.1 or more", file=sys.stderr)\n    sys.exit(2)')
    done, calls = run_script(SCRIPTS / "demo.sh", tmp_path, bin_dir, root, out, 3)
    assert done.returncode == 1, (done.stdout, done.stderr)
    runs = [c for c in calls if c.startswith("run ")]
    assert len(runs) == 3 and "--baseline" in runs[2], calls  # the baseline still ran
    report = next(c for c in calls if c.startswith("report "))
    assert f"{out}/selftrain" in report and f"{out}/scratch" in report and f"{out}/moco" not in report, report
    assert "not scored: no answer key" in done.stdout, done.stdout
    assert "moco did not finish" in done.stderr and "make demo DEMO_MINUTES=5" in done.stderr, done.stderr


def test_demo_stops_when_a_run_is_interrupted_and_advises_in_fractional_minutes(tmp_path, monkeypatch):
    """fewshot exits 130 on Ctrl-C by itself, so a demo that went on after a failed run also went on after Ctrl-C
    (the next runs started); and `DEMO_MINUTES=2.5` broke the shell arithmetic of the advice line."""
    bin_dir, root, out = demo_with_failing_pretrain(tmp_path, 'sys.exit(int(os.environ["FAKE_PRETRAIN_RC"]))')
    monkeypatch.setenv("FAKE_PRETRAIN_RC", "130")
    done, calls = run_script(SCRIPTS / "demo.sh", tmp_path, bin_dir, root, out, 2.5)
    assert done.returncode == 130, (done.stdout, done.stderr)
    assert sum(c.startswith("run ") for c in calls) == 2 and not any(c.startswith("report") for c in calls)
    monkeypatch.setenv("FAKE_PRETRAIN_RC", "2")
    done, calls = run_script(SCRIPTS / "demo.sh", tmp_path, bin_dir, root, out, 2.5)
    assert done.returncode == 1 and "make demo DEMO_MINUTES=4.5 " in done.stderr, done.stderr


def test_demo_refuses_a_budget_that_is_not_a_positive_number_before_any_run(tmp_path):
    """DEMO_MINUTES=-5 failed in all three runs and then advised `make demo DEMO_MINUTES=-3` (`abc`: 2)."""
    bin_dir = fake_bin(tmp_path)
    for minutes in ("-5", "abc", "0", "1e"):
        done, calls = run_script(SCRIPTS / "demo.sh", tmp_path, bin_dir, tmp_path / "data", tmp_path / "out", minutes)
        assert done.returncode == 2 and f"DEMO_MINUTES={minutes} is not a positive number" in done.stderr, minutes
        assert calls == [], calls
    done, calls = run_script(SCRIPTS / "demo.sh", tmp_path, bin_dir, tmp_path / "data2", tmp_path / "out2", ".5")
    assert done.returncode == 0, done.stderr
    assert sum(c.startswith("run ") for c in calls) == 3


def test_make_venv_installs_again_when_the_pins_change(tmp_path):
    """The stamp depended on pyproject.toml alone: `make test TORCH_PIN=...` on an existing venv said "Nothing to be
    done" and kept the old torch. It records the pins now; the same pins install nothing."""
    import shutil

    root = SCRIPTS.parent
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(root / name, tmp_path / name)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    pip = tmp_path / ".venv" / "bin" / "python"
    pip.write_text('#!/bin/sh\necho "pip $*"\n')
    pip.chmod(0o755)

    def make(*words) -> str:
        done = subprocess.run(["make", "-s", "venv", "PYTHON=true", *words], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "install -q torch==2.14.1" in make()
    assert make() == ""  # the same pins: nothing to do
    assert "install -q torch==2.4.0" in make("TORCH_PIN=torch==2.4.0")
    assert make("TORCH_PIN=torch==2.4.0") == ""
    stamp = tmp_path / ".venv" / ".fewshot-installed"
    stamp.write_text("")  # an older Makefile's (touch): installed again, the venv kept
    said = make()
    assert "install -q torch==2.14.1" in said and "making it anew" not in said and "--clear" not in said, said
    said = make("PYTHON=echo")  # another Python: the venv made anew with it
    assert "making it anew" in said and "-m venv --clear" in said, said
