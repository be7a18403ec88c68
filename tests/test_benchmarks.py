"""The benchmark scripts' own logic (argument checks, merging, bookkeeping): cheap, no benchmark runs."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    """Import a script of benchmarks/ by name (importable by name, so spawned workers find it too)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))

    def load(name: str):
        return importlib.import_module(name)

    return load


def run_with_timeout(fn, seconds: float):
    """fn()'s result or exception; fails the test if it has not returned after `seconds` (a hang)."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still waiting after {seconds} s"
    return box


# ----------------------------------------------------------------------------- moco_speed


def test_moco_speed_worker_that_fails_to_start_fails_fast(bench):
    """A worker whose setup raises is reported, not waited on forever (the parent closes its copy of the pipe)."""
    ms = bench("moco_speed")
    box = run_with_timeout(lambda: ms.Worker("ours", {}, "fewshot"), 90)
    assert isinstance(box.get("error"), RuntimeError)
    assert str(box["error"]).startswith("fewshot worker failed: ") and "KeyError" in str(box["error"])


def test_moco_speed_refuses_a_comparison_without_lightly(bench, monkeypatch, capsys):
    ms = bench("moco_speed")
    monkeypatch.setattr(ms, "lightly_missing", lambda: True)
    monkeypatch.setattr(ms, "DATA_DIR", Path("/nonexistent/never-created"))
    assert ms.main(["--mode", "step", "--img-size", "32", "--runs", "1"]) == 2
    assert "lightly is not installed" in capsys.readouterr().err


def test_moco_speed_out_names_one_file_per_result(bench):
    ms = bench("moco_speed")
    default = Path("results/moco_speed_cpu_64px_b64.json")
    assert ms.out_path(None, default, "64px_b64", True) == default
    assert ms.out_path("/tmp/x.json", default, "64px_b64", False) == Path("/tmp/x.json")
    assert ms.out_path("/tmp/x.json", default, "64px_b64", True) == Path("/tmp/x_64px_b64.json")
    assert ms.out_path("/tmp/x.json", default, "scaling", True) != ms.out_path("/tmp/x.json", default, "ablation", True)


# ----------------------------------------------------------------------------- Makefile


def make_n(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("no make here")
    return subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)


def test_make_clean_never_deletes_a_folder_of_the_users(tmp_path):
    """`make clean DEMO_DATA=mine` ran `rm -rf mine` (unquoted, too). Run on a copy: clean only touches its cwd."""
    if shutil.which("make") is None:
        pytest.skip("no make here")
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    mine = tmp_path / "my data"
    (mine / "keep").mkdir(parents=True)
    (tmp_path / "demo_data").mkdir()
    proc = subprocess.run(["make", "-C", str(tmp_path), "clean", f"DEMO_DATA={mine}"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0 and "removes only" in proc.stderr
    assert (mine / "keep").is_dir() and (tmp_path / "demo_data").is_dir()
    assert subprocess.run(["make", "-C", str(tmp_path), "clean"], capture_output=True, timeout=30).returncode == 0
    assert not (tmp_path / "demo_data").exists()


def test_make_bench_uses_the_venv_the_setup_script_makes():
    plan = make_n("bench", "BENCH_VENV=/elsewhere/bv").stdout
    assert "/elsewhere/bv/bin/python benchmarks/moco_speed.py" in plan.replace("'", "")
    assert ".bench-venv/bin/python" not in plan


# ----------------------------------------------------------------------------- quality.py


def fake_run(folder: Path, val: float, test: float) -> None:
    """A finished `fewshot run` as quality.py reads it (summary.json only)."""
    folder.mkdir(parents=True)
    m = {split: {"datasets": {"digits": {"acc1": acc}}, "mean_acc1": acc} for split, acc in (("val", val),
                                                                                           ("test", test))}
    (folder / "summary.json").write_text(json.dumps({"metrics": m, "seconds": 60.0}))


def old_run(val: float, test: float) -> dict:
    """A run record as results files before the "seed" field hold it."""
    return {"val": {"digits": val}, "val_mean": val, "test": {"digits": test}, "test_mean": test, "seconds": 60.0}


ST = "fewshot run: self-training on the pool (default)"


@pytest.fixture
def earlier(tmp_path) -> Path:
    """A results file in the old format (no "seed" per run, no "n_seeds"): lr 0.004 chosen, seeds 0 1 2."""
    entry = {"scratch": {"0.001": [old_run(70, 70)], "0.004": [old_run(80, 80), old_run(81, 81), old_run(82, 82)]},
             "variants": {ST: [old_run(90, 90), old_run(91, 91), old_run(92, 92)]}, "scratch_best_lr": 0.004,
             "table": {"scratch (lr 0.004, chosen on val)": {"digits": [81, 1], "mean": [81, 1]},
                       ST: {"digits": [91, 1], "mean": [91, 1]}}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"budgets": {"5": entry}, "seeds": [0, 1, 2], "scratch_lrs": [0.001, 0.004]}))
    return path


def test_quality_merge_keeps_the_earlier_lr_choice_and_every_seed(bench, tmp_path, earlier):
    """Seed 3's grid would choose lr 0.001; the merge dropped lr 0.004's runs of seeds 0-2 and mixed seeds."""
    q = bench("quality")
    runs = tmp_path / "runs"
    fake_run(runs / "b5/scratch_lr0.001_s3", 99, 60)  # best on val for seed 3: must not change the choice
    fake_run(runs / "b5/scratch_lr0.004_s3", 83, 83)
    fake_run(runs / "b5/st_s3", 93, 93)
    out = tmp_path / "new.json"
    q.main(["--cached-only", "--no-ablations", "--seeds", "3", "--budgets", "5", "--out", str(runs),
            "--merge", str(earlier), "--results", str(out)])
    entry = json.loads(out.read_text())["budgets"]["5"]
    assert entry["scratch_best_lr"] == 0.004
    assert [r["seed"] for r in entry["scratch"]["0.004"]] == [0, 1, 2, 3]
    assert entry["n_seeds"] == {"scratch (lr 0.004, chosen on val)": 4, ST: 4}
    assert entry["table"]["scratch (lr 0.004, chosen on val)"]["mean"][0] == pytest.approx(81.5)
    assert out.with_suffix(".md").read_text().count("| 4 |") == 2


def test_quality_merge_of_an_old_file_writes_every_output(bench, tmp_path, earlier):
    """Older files have no "n_seeds": KeyError after the JSON was written, before .md and .png."""
    q = bench("quality")
    out = tmp_path / "new.json"
    q.main(["--cached-only", "--no-scratch", "--no-ablations", "--seeds", "3", "--budgets", "10",
            "--out", str(tmp_path / "none"), "--merge", str(earlier), "--results", str(out)])
    assert json.loads(out.read_text())["budgets"]["5"]["n_seeds"][ST] == 3
    assert "| 5 | " + ST + " | 3 |" in out.with_suffix(".md").read_text()


def test_quality_merge_refuses_an_overlapping_seed_before_any_run(bench, tmp_path, earlier, monkeypatch):
    """Seed 1 is in the earlier file: the refusal came only after every run of this invocation had been made."""
    q = bench("quality")
    monkeypatch.setattr(q, "run_one", lambda *a, **kw: pytest.fail("a run started before the overlap check"))
    with pytest.raises(SystemExit, match=r"already has seeds \[1\]"):
        q.main(["--no-ablations", "--seeds", "1", "3", "--budgets", "5", "--out", str(tmp_path / "runs"),
                "--merge", str(earlier), "--results", str(tmp_path / "r.json")])
    with pytest.raises(SystemExit, match=r"already has seeds \[2\]"):  # the variants too, without scratch
        q.main(["--no-scratch", "--no-ablations", "--seeds", "2", "--budgets", "5", "--out", str(tmp_path / "runs"),
                "--merge", str(earlier), "--results", str(tmp_path / "r.json")])


def test_quality_refuses_bad_input_clearly(bench, tmp_path, capsys):
    q = bench("quality")
    empty = ["--cached-only", "--no-scratch", "--seeds", "0", "--out", str(tmp_path / "none")]
    with pytest.raises(SystemExit, match="no budget has runs"):  # was: an empty table, then StopIteration
        q.main(empty + ["--results", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()
    for content, why in (("{not json", "cannot read"), ("[]", "not a results file")):
        (tmp_path / "m.json").write_text(content)
        with pytest.raises(SystemExit, match=why):
            q.main(empty + ["--results", str(tmp_path / "r.json"), "--merge", str(tmp_path / "m.json")])
    with pytest.raises(SystemExit, match="no budget has runs"):  # --res is --results: accepted
        q.main(empty + ["--res", str(tmp_path / "r.json")])
    with pytest.raises(SystemExit) as exc:  # no --results at all: refused by argparse
        q.main(empty)
    assert exc.value.code == 2 and "explicit --results" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pseudo_accuracy.py


def test_pseudo_accuracy_refuses_a_missing_data_folder(bench, tmp_path, capsys):
    """A misspelled --data skipped the check that the files are the plan's, and scored against the wrong truth."""
    pa = bench("pseudo_accuracy")
    with pytest.raises(SystemExit) as exc:
        pa.main([str(tmp_path), "--data", str(tmp_path / "demo_dta")])
    assert exc.value.code == 2 and "unlabeled" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pseudo_balance.py


def test_pseudo_balance_evens_out_each_dataset_and_leaves_the_others_alone(bench):
    """A teacher that files most of dataset a's pool under class a0 is evened out over a's classes only."""
    from fewshot.data.label_space import LabelSpace

    pb = bench("pseudo_balance")
    space = LabelSpace(("a", "b"), (("a0", "a1", "a2"), ("b0", "b1")))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(60, 5, generator=g)
    logits[:30, 0] += 3.0  # dataset a's pool: mostly called a0
    ids = torch.tensor([0] * 30 + [1] * 30)
    out = pb.balanced(logits, ids, space)
    counts = out[:30, :3].argmax(1).bincount(minlength=3)
    assert logits[:30, :3].argmax(1).bincount(minlength=3)[0] > 20 and int(counts.max()) <= 13
    # another dataset's columns are not touched (dataset b is evened out over its own classes, from its rows)
    assert torch.equal(out[30:, :3], logits[30:, :3]) and torch.equal(out[:30, 3:], logits[:30, 3:])


# ----------------------------------------------------------------------------- balance_priors.py


def test_balance_priors_cuts_and_scores_both_versions_paired(bench):
    """The cuts keep what they say (half the classes whole and the rest at a tenth; the train proportions where the
    shots are uneven), and a root with 5 val images per class is scored plainly by the present version."""
    bp = bench("balance_priors")
    answers = torch.arange(4).repeat_interleave(20)
    cut = bp.cuts({"answers": answers, "shots": torch.tensor([10, 2, 10, 2])})
    assert answers[cut["skew"]].bincount().tolist() == [20, 20, 2, 2]
    assert answers[cut["prop"]].bincount().tolist() == [20, 4, 20, 4] and len(cut["full"]) == 80
    assert answers[cut["anti"]].bincount().tolist() == [4, 20, 4, 20]  # the other way: the fewest-shot classes whole
    assert answers[cut["most90"]].bincount().tolist() == [20, 1, 1, 1]  # ~90 % of the most-shot class
    assert not {"prop", "anti", "most90", "fewest90"} & set(bp.cuts({"answers": answers,
                                                                    "shots": torch.tensor([5, 5, 5, 5])}))
    g = torch.Generator().manual_seed(0)

    def logits(targets):
        return torch.nn.functional.one_hot(targets, 4).float() * 2 + torch.randn(len(targets), 4, generator=g)
    few_val = torch.arange(4).repeat_interleave(5)
    d = {"test": logits(answers), "answers": answers, "val": (logits(few_val), few_val),
         "shots": torch.tensor([10, 2, 10, 2])}
    scored = bp.score(d)
    assert set(scored) == {"full", "skew", "prop", "anti", "most90", "fewest90"}
    assert all(s["now"] == s["off"] for s in scored.values())  # auto decides on 10 val images of each class
    enough_val = torch.arange(4).repeat_interleave(12)
    d["val"] = (logits(enough_val), enough_val)
    assert {"off", "first", "before", "now"} <= set(bp.score(d)["full"])


def test_resize_root_copies_every_image_resized_and_the_keys_as_they_are(bench, tmp_path):
    from PIL import Image

    src = tmp_path / "root"
    (src / "d" / "train" / "a").mkdir(parents=True)
    Image.new("L", (28, 28), 7).save(src / "d" / "train" / "a" / "0.png")
    (src / "d" / "test_labels.json").write_text('{"0": 0}')
    bench("resize_root").main([str(src), str(tmp_path / "out"), "--size", "40"])
    im = Image.open(tmp_path / "out" / "d" / "train" / "a" / "0.png")
    assert im.size == (40, 40) and im.mode == "RGB" and im.getpixel((3, 3)) == (7, 7, 7)
    assert (tmp_path / "out" / "d" / "test_labels.json").read_text() == '{"0": 0}'


@pytest.mark.parametrize("script, args, says", [
    ("augment_speed.py", ["--sizes", "32,"], "--sizes '32,': expected whole numbers"),
    ("augment_speed.py", ["--runs", "0"], "--runs and --threads must be at least 1"),
    ("small_stem_speed.py", ["--steps", "0"], "--steps must be at least 1"),
    ("tiny_map_speed.py", ["--cells", "32:8:BF16"], "precision fp32 or bf16"),  # measured fp32 without a word
    ("oracle_data.py", ["--out", "x", "--labels", "pseudo"], "--labels pseudo needs --record"),  # used true labels
    ("moco_recipe_knn.py", ["--variants", "nope"], "invalid choice: 'nope'"),  # a KeyError after the raw kNN
])
def test_bad_arguments_are_usage_errors_before_any_work(script, args, says, tmp_path, monkeypatch, capsys):
    """Run as `python benchmarks/SCRIPT ARGS` is, but in this process: a fresh interpreter spent ~5 s importing
    torch and torchvision per case (suite time). An exception other than the usage error's exit propagates."""
    import runpy

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # as `python benchmarks/SCRIPT` puts its folder first
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / script), *args])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "benchmarks" / script), run_name="__main__")
    stderr = capsys.readouterr().err
    assert stop.value.code == 2 and says in stderr and "Traceback" not in stderr, stderr


def test_moco_recipe_knn_refuses_to_reuse_a_run_of_another_length(tmp_path):
    """A 0.1-minute run folder was reused and recorded as `"minutes": 5.0`."""
    run = tmp_path / "runs" / "new"
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text("{}\n")
    (run / "config.yaml").write_text("train:\n  budget_minutes: 0.1\n")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "moco_recipe_knn.py"), "--out",
                           str(tmp_path / "runs"), "--variants", "new", "--minutes", "5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "holds a run of train.budget_minutes=0.1" in done.stderr, done.stderr


def test_scan_speed_builds_its_root_and_times_both_checks(bench, tmp_path):
    result = bench("scan_speed").main(["--root", str(tmp_path / "r"), "--classes", "3", "--shots", "4", "--test", "5",
                                       "--runs", "1", "--results", str(tmp_path / "s.json")])
    assert result["files"] == 3 * (4 + 20) + 5 and json.loads((tmp_path / "s.json").read_text()) == result
    assert len(list((tmp_path / "r" / "big" / "test").iterdir())) == 5
