"""The command line end to end on the tiny real digits + fashion-mnist root (SPEC "Command-line contract").

Most commands run in-process through `fewshot.cli.main` (imports paid once); a few run as real
subprocesses to check exit statuses and that user errors print no traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from fewshot.cli import main
from fewshot.cli_parser import build_parser
from fewshot.config import resolve
from fewshot.errors import UserError
from helpers.checks import run_main

SPEC_METRICS_KEYS = {"mode", "n_parameters", "mean_acc1", "datasets", "routing_acc"}


def run_subprocess(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fewshot", *[str(a) for a in argv]], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def train_argv(root: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--data", root, "--out", run, "--model", "test_resnet", "--img-size", "32", "--epochs", "2",
            "--batch-size", "16", "--device", "cpu", "--no-progress", "train.eval_every=1", *extra]


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory):
    """One 2-epoch run on both datasets, shared by the eval/predict tests."""
    run = tmp_path_factory.mktemp("cli") / "run"
    rc, out, err = run_main(*train_argv(digits_root, run))
    assert rc == 0, err
    return run, out


def test_keys(digits_root, name: str) -> dict[str, int]:
    return {k: int(v) for k, v in json.loads((digits_root / name / "test_labels.json").read_text()).items()}


def test_ids(digits_root, name: str) -> set[str]:
    return {p.stem for p in (digits_root / name / "test").iterdir()}


test_keys.__test__ = False  # helpers, not tests
test_ids.__test__ = False


# ------------------------------------------------------------------ train

def record_autocast(monkeypatch) -> list:
    """Patch both tasks' training_step to record the autocast dtype each step ran under (None: fp32)."""
    from fewshot.ssl.pretrain import MoCoTask
    from fewshot.train.supervised import SupervisedTask

    seen: list = []
    for cls in (SupervisedTask, MoCoTask):
        def step(self, model, batch, _orig=cls.training_step):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return _orig(self, model, batch)
        monkeypatch.setattr(cls, "training_step", step)
    return seen


def test_train_and_pretrain_run_in_bf16_autocast_on_a_cpu_with_native_bf16(digits_root, tmp_path, monkeypatch):
    """The CPU bf16 path end to end (forced on, so that it runs on any CPU): the header says so, every
    training step runs under bf16 autocast, losses are finite, and 32 px images stay fp32 under the same
    setting."""
    monkeypatch.setenv("FEWSHOT_CPU_BF16", "1")
    seen = record_autocast(monkeypatch)
    one = ("--datasets", "digits")  # one dataset: emulated bf16 steps are slow, and the arithmetic is the subject
    rc, out, err = run_main(*train_argv(digits_root, tmp_path / "ft", "--img-size", "48", "--epochs", "1", *one))
    assert rc == 0, err
    assert "at 48px on cpu (bfloat16 autocast)" in out
    assert seen and set(seen) == {torch.bfloat16}
    rows = [json.loads(ln) for ln in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    seen.clear()
    rc, out, err = run_main("pretrain", "--data", digits_root, "--out", tmp_path / "moco", "--model", "test_resnet",
                            "--img-size", "48", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                            "--no-progress", "moco.queue_size=16", "moco.split_bn_groups=2", *one)
    assert rc == 0, err
    assert "at 48px on cpu x1 (bfloat16 autocast)" in out
    assert seen and set(seen) == {torch.bfloat16}
    seen.clear()
    rc, out, err = run_main(*train_argv(digits_root, tmp_path / "ft32", "--epochs", "1", *one))
    assert rc == 0, err
    assert "at 32px on cpu (fp32)" in out
    assert seen and set(seen) == {None}


def test_a_resumed_auto_precision_run_keeps_the_arithmetic_it_started_with(digits_root, tmp_path, monkeypatch):
    """Resume continues the same run: started in bf16 (train.amp=auto on a bf16 CPU), it stays bf16 where this
    machine would choose fp32 (another host, FEWSHOT_CPU_BF16=0), and says so; an explicit train.amp wins."""
    run = tmp_path / "ft"
    one = ("--datasets", "digits")  # one dataset: emulated bf16 steps are slow, and the arithmetic is the subject
    monkeypatch.setenv("FEWSHOT_CPU_BF16", "1")
    rc, out, err = run_main(*train_argv(digits_root, run, "--img-size", "48", "--epochs", "1", *one))
    assert rc == 0, err
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["amp"] == "bf16"
    monkeypatch.setenv("FEWSHOT_CPU_BF16", "0")
    seen = record_autocast(monkeypatch)
    rc, out, err = run_main(*train_argv(digits_root, run, "--img-size", "48", "--resume", *one))
    assert rc == 0, err
    assert "the run started in bf16 (train.amp=auto) and continues in it" in out
    # the header names the arithmetic the run continues in (it said "(fp32)" above the note that it continues in bf16)
    assert "at 48px on cpu (bfloat16 autocast)" in out and "(fp32)" not in out, out
    assert seen and set(seen) == {torch.bfloat16}
    seen.clear()
    rc, out, err = run_main(*train_argv(digits_root, run, "--img-size", "48", "--epochs", "3", "--resume",
                                        "train.amp=off", *one))
    assert rc == 0, err
    assert seen and set(seen) == {None}
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["amp"] == "fp32"



def test_a_resumed_auto_precision_pretrain_names_its_kept_arithmetic_in_its_header(digits_root, tmp_path,
                                                                                     monkeypatch):
    """As fine-tuning's: a MoCo run started in bf16 and resumed where auto would choose fp32 continues in bf16,
    and its header says bf16 after the note (it said fp32 above the note that the run continues in bf16)."""
    run = tmp_path / "moco"
    argv = ("pretrain", "--data", digits_root, "--out", run, "--model", "test_resnet", "--img-size", "48",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "moco.queue_size=16", "moco.split_bn_groups=2",
            "--datasets", "digits")
    monkeypatch.setenv("FEWSHOT_CPU_BF16", "1")
    rc, out, err = run_main(*argv, "--epochs", "1")
    assert rc == 0, err
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["amp"] == "bf16"
    monkeypatch.setenv("FEWSHOT_CPU_BF16", "0")
    seen = record_autocast(monkeypatch)
    rc, out, err = run_main(*argv, "--epochs", "2", "--resume")
    assert rc == 0, err
    assert "the run started in bf16 (train.amp=auto) and continues in it" in out, out
    assert "on cpu x1 (bfloat16 autocast" in out and "(fp32" not in out, out
    assert seen and set(seen) == {torch.bfloat16}
    # review rev77: a resume that its checks refuse is not told first that it continues in bf16
    rc, out, err = run_main(*argv, "--epochs", "1", "--resume")
    assert rc == 2 and "would train nothing" in err + out, err + out
    assert "continues in it" not in out + err, out

def test_train_writes_the_run_directory(trained, dataset_names):
    run, out = trained
    assert "done:" in out
    for name in ("config.yaml", "log.jsonl", "metrics.json", "checkpoints/last.pt", "checkpoints/best.pt",
                 "plots/finetune_curves.png"):  # SPEC: the run directory holds plots/
        assert (run / name).is_file(), name

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["name"] == "test_resnet" and cfg["model"]["img_size"] == 32
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["batch_size"] == 16
    assert cfg["train"]["eval_every"] == 1 and cfg["train"]["device"] == "cpu"

    lines = (run / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]  # one JSON line per epoch
    assert all("loss" in r and "lr" in r for r in records)

    metrics = json.loads((run / "metrics.json").read_text())
    assert SPEC_METRICS_KEYS <= set(metrics)
    assert metrics["mode"] == "known" and metrics["routing_acc"] is None
    assert isinstance(metrics["n_parameters"], int) and metrics["n_parameters"] > 0
    assert set(metrics["datasets"]) == set(dataset_names)
    for d in metrics["datasets"].values():
        assert set(d) == {"acc1", "acc5", "n"}
        assert d["n"] == 30 and 0 <= d["acc1"] <= d["acc5"] <= 100
    assert metrics["mean_acc1"] == pytest.approx(sum(d["acc1"] for d in metrics["datasets"].values()) / 2)


def test_checkpoints_load_with_weights_only(trained, dataset_names):
    run, _ = trained
    n_params = json.loads((run / "metrics.json").read_text())["n_parameters"]
    for name in ("last.pt", "best.pt"):
        ck = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert ck["kind"] == "supervised"
        assert ck["label_space"]["names"] == dataset_names
        assert ck["n_parameters"] == n_params
        assert any(isinstance(v, torch.Tensor) for v in ck["model"].values())
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_retrain_into_same_run_without_resume_exits_2(trained, digits_root):
    run, _ = trained
    before = (run / "config.yaml").read_text()
    last = (run / "checkpoints" / "last.pt").read_bytes()
    rc, out, err = run_main(*train_argv(digits_root, run, "--epochs", "3"))
    assert rc == 2
    assert str(run) in err and "--resume" in err and "Traceback" not in err
    assert (run / "config.yaml").read_text() == before  # nothing overwritten
    assert (run / "checkpoints" / "last.pt").read_bytes() == last


def test_unknown_override_key_exits_2(digits_root, tmp_path):
    run = tmp_path / "run"
    rc, out, err = run_main(*train_argv(digits_root, run, "optim.lrr=1"))
    assert rc == 2
    assert "optim.lrr" in err and "Traceback" not in err
    assert not run.exists()


def test_missing_data_root_exits_2(tmp_path):
    missing = tmp_path / "no-such-root"
    rc, out, err = run_main(*train_argv(missing, tmp_path / "run"))
    assert rc == 2
    assert str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_train_selected_dataset_only(digits_root, dataset_names, tmp_path):
    b = dataset_names[1]
    run = tmp_path / "run"
    rc, out, err = run_main(*train_argv(digits_root, run, "--datasets", b, "--epochs", "1",
                                        "train.tensorboard=false"))
    assert rc == 0, err
    assert set(json.loads((run / "metrics.json").read_text())["datasets"]) == {b}
    pred = tmp_path / "pred_all.json"
    rc, out, err = run_main("predict", run, "--data", digits_root, "--out", pred, "--device", "cpu")
    assert rc == 0, err
    assert set(json.loads(pred.read_text())) == {"n_parameters", b}


# ------------------------------------------------------------------ eval

def read_metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    assert SPEC_METRICS_KEYS <= set(m)
    return m


def test_eval_unknown_and_known(trained, digits_root, dataset_names, tmp_path):
    run, _ = trained
    rc, out, err = run_main("eval", run, "--data", digits_root, "--mode", "unknown", "--out", tmp_path / "m.json",
                            "--device", "cpu")
    assert rc == 0, err
    unknown = read_metrics(tmp_path / "m.json")
    assert unknown["mode"] == "unknown"
    assert unknown["routing_acc"] is not None and 0 <= unknown["routing_acc"] <= 100
    assert set(unknown["datasets"]) == set(dataset_names)
    assert "dataset routing" in out

    rc, out, err = run_main("eval", run, "--data", digits_root, "--mode", "known", "--out", tmp_path / "k.json",
                            "--device", "cpu")
    assert rc == 0, err
    known = read_metrics(tmp_path / "k.json")
    assert known["mode"] == "known" and known["routing_acc"] is None
    assert all(d["n"] == 30 for d in known["datasets"].values())
    # known source can only help: the restricted argmax is right whenever the unrestricted one is
    for name in dataset_names:
        assert known["datasets"][name]["acc1"] >= unknown["datasets"][name]["acc1"] - 1e-9
    # the run's own metrics.json (best checkpoint, val, known) agrees with a fresh evaluation
    saved = json.loads((run / "metrics.json").read_text())
    for name in dataset_names:
        assert known["datasets"][name] == pytest.approx(saved["datasets"][name])


def test_eval_accepts_a_checkpoint_file(trained, digits_root, tmp_path):
    run, _ = trained
    rc, out, err = run_main("eval", run / "checkpoints" / "last.pt", "--data", digits_root, "--device", "cpu",
                            "--out", tmp_path / "m.json")
    assert rc == 0, err
    assert read_metrics(tmp_path / "m.json")["checkpoint"].endswith("last.pt")


# ------------------------------------------------------------------ predict

def check_pred_file(path: Path, digits_root: Path, dataset_names: list[str]) -> dict:
    pred = json.loads(path.read_text())
    assert set(pred) == {"n_parameters", *dataset_names}
    assert type(pred["n_parameters"]) is int and pred["n_parameters"] > 0
    for name in dataset_names:
        assert isinstance(pred[name], dict)
        assert set(pred[name]) == test_ids(digits_root, name) == set(test_keys(digits_root, name))
        assert all(isinstance(k, str) and k.isdigit() for k in pred[name])
        assert all(type(v) is int for v in pred[name].values())
    return pred


def test_predict_known_and_eval_test_split(trained, digits_root, dataset_names, tmp_path):
    run, _ = trained
    out_file = tmp_path / "pred_all.json"
    rc, out, err = run_main("predict", run, "--data", digits_root, "--out", out_file, "--device", "cpu")
    assert rc == 0, err
    pred = check_pred_file(out_file, digits_root, dataset_names)
    assert pred["n_parameters"] == json.loads((run / "metrics.json").read_text())["n_parameters"]
    for name in dataset_names:
        assert all(0 <= v < 10 for v in pred[name].values())

    # --split test scores against test_labels.json: same numbers as scoring pred_all.json by hand
    rc, out, err = run_main("eval", run, "--data", digits_root, "--mode", "known", "--split", "test",
                            "--out", tmp_path / "t.json", "--device", "cpu")
    assert rc == 0, err
    test_metrics = read_metrics(tmp_path / "t.json")
    assert test_metrics["split"] == "test" and test_metrics["routing_acc"] is None
    for name in dataset_names:
        key = test_keys(digits_root, name)
        acc = 100.0 * sum(pred[name][i] == c for i, c in key.items()) / len(key)
        assert test_metrics["datasets"][name]["acc1"] == pytest.approx(acc)
        assert test_metrics["datasets"][name]["n"] == len(key)


def test_predict_unknown_and_routing(trained, digits_root, dataset_names, tmp_path):
    run, _ = trained
    out_file = tmp_path / "pred_all.json"
    rc, out, err = run_main("predict", run, "--data", digits_root, "--out", out_file, "--mode", "unknown",
                            "--device", "cpu")
    assert rc == 0, err
    pred = check_pred_file(out_file, digits_root, dataset_names)
    routing = json.loads((tmp_path / "pred_all.routing.json").read_text())
    sizes = {name: 10 for name in dataset_names}
    for name in dataset_names:
        assert set(routing[name]) == set(pred[name])
        for i, label in pred[name].items():
            assert routing[name][i] in dataset_names
            # a class of the image's own dataset, or -1 where it was routed elsewhere (never a hit)
            assert (0 <= label < sizes[name]) if routing[name][i] == name else label == -1

    rc, out, err = run_main("eval", run, "--data", digits_root, "--mode", "unknown", "--split", "test",
                            "--out", tmp_path / "t.json", "--device", "cpu")
    assert rc == 0, err
    m = read_metrics(tmp_path / "t.json")
    routed_right = sum(routing[name][i] == name for name in dataset_names for i in routing[name])
    total = sum(len(routing[name]) for name in dataset_names)
    assert m["routing_acc"] == pytest.approx(100.0 * routed_right / total)
    for name in dataset_names:  # right only when routed to the right dataset and the right class
        key = test_keys(digits_root, name)
        acc = 100.0 * sum(routing[name][i] == name and pred[name][i] == c for i, c in key.items()) / len(key)
        assert m["datasets"][name]["acc1"] == pytest.approx(acc)
        # so pred_all.json scored on its own, as a submission is, gives the same accuracy
        assert m["datasets"][name]["acc1"] == pytest.approx(100.0 * sum(pred[name][i] == c for i, c in key.items())
                                                            / len(key))


@pytest.mark.parametrize("key_text, message", [("this is not json", "cannot be read as JSON"),
                                               ('["a", "list"]', "must map image ids"),
                                               ('{"0": "three"}', "image 0 has class 'three'"),
                                               ('{"0": 99}', "image 0 has class 99"),
                                               ("[" * 100000, "cannot be read as JSON"),
                                               ("{}", "test images missing from their answer key")])
def test_a_bad_answer_key_is_a_user_error_naming_the_file(trained, copy_root, dataset_names, key_text, message,
                                                          monkeypatch):
    """Refused before any test image is decoded (a bad key was reported after 52 s of decoding), nested JSON
    included (RecursionError was a traceback)."""
    import fewshot.eval.predict as predict

    run, _ = trained
    bad = copy_root / dataset_names[0] / "test_labels.json"
    bad.write_text(key_text)
    monkeypatch.setattr(predict, "load_split", lambda *a, **k: pytest.fail("decoded before checking the key"))
    rc, out, err = run_main("eval", run, "--data", copy_root, "--split", "test", "--device", "cpu")
    assert rc == 2 and message in err and str(bad) in err and "Traceback" not in err, err


def test_an_answer_key_with_extra_ids_is_warned_about_once(trained, copy_root, dataset_names):
    """The key is checked before decoding and read after it: the warning came twice (review)."""
    run, _ = trained
    key_file = copy_root / dataset_names[0] / "test_labels.json"
    key_file.write_text(json.dumps({**json.loads(key_file.read_text()), "99999": 0}))
    rc, _, err = run_main("eval", run, "--data", copy_root, "--split", "test", "--device", "cpu")
    assert rc == 0 and err.count("that are not test images scored here (99999)") == 1, err


def test_a_partial_answer_key_names_every_missing_id_at_once(trained, copy_root, dataset_names):
    run, _ = trained
    key_file = copy_root / dataset_names[0] / "test_labels.json"
    key = json.loads(key_file.read_text())
    gone = sorted(key, key=int)[:7]
    key_file.write_text(json.dumps({k: v for k, v in key.items() if k not in gone}))
    rc, out, err = run_main("eval", run, "--data", copy_root, "--split", "test", "--device", "cpu")
    assert rc == 2 and f"7 of {dataset_names[0]} ({', '.join(gone[:5])}, ...;" in err, err


def test_a_test_id_of_thousands_of_digits_is_an_id_not_a_crash():
    from fewshot.data.test_split import test_id

    assert test_id("0" * 3 + "7" * 5000) == "7" * 5000 and test_id("000") == "0" and test_id("0042") == "42"


def test_datasets_typed_in_another_unicode_form_name_the_models_dataset(trained, digits_root, tmp_path):
    """A model trained on a decomposed `café` folder (macOS) was refused `--datasets café` typed composed."""
    import unicodedata

    from fewshot.eval import predict

    tm = SimpleNamespace(space=SimpleNamespace(names=[unicodedata.normalize("NFD", "café"), "digits"]))
    assert predict._chosen_datasets(tm, unicodedata.normalize("NFC", "café")) == [tm.space.names[0]]


def test_datasets_named_with_a_comma_or_spaces_name_the_models_dataset():
    """eval/predict `--datasets "x,y"` was split into x and y, " spaced " stripped: neither found the model's."""
    from fewshot.eval import predict

    tm = SimpleNamespace(space=SimpleNamespace(names=["x,y", " spaced ", "digits"]))
    assert predict._chosen_datasets(tm, "x,y") == ["x,y"]
    assert predict._chosen_datasets(tm, " spaced ,digits ") == [" spaced ", "digits"]


def test_predict_never_reads_the_answer_key(trained, copy_root, dataset_names, tmp_path):
    run, _ = trained
    for name in dataset_names:
        (copy_root / name / "test_labels.json").write_text("this is not json")
    out_file = tmp_path / "pred.json"
    rc, out, err = run_main("predict", run, "--data", copy_root, "--out", out_file, "--device", "cpu")
    assert rc == 0, err
    assert set(json.loads(out_file.read_text())) == {"n_parameters", *dataset_names}


def test_predict_missing_run_exits_2(digits_root, tmp_path):
    rc, out, err = run_main("predict", tmp_path / "nope", "--data", digits_root, "--out", tmp_path / "p.json")
    assert rc == 2 and str(tmp_path / "nope") in err and "Traceback" not in err


# ------------------------------------------------------------------ help, models, entry points

def test_top_level_help():
    rc, out, err = run_main("--help")
    assert rc == 0 and "train" in out and "predict" in out


SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def test_spec_commands_exist():
    assert {"data", "train", "eval", "predict", "pretrain", "export", "run", "probe", "report", "compare",
            "models"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command):
    rc, out, err = run_main(command, "--help")
    assert rc == 0, err
    assert f"fewshot {command}" in out


def test_help_command_is_the_help_flag():
    """`fewshot help train` was an invalid choice; as in git and pip it is `fewshot train --help`."""
    assert run_main("help", "train") == run_main("train", "--help")
    rc, out, _ = run_main("help")
    assert rc == 0 and out == run_main("--help")[1] and "fewshot help COMMAND" in out
    assert run_main("help", "help")[1] == run_main("--help")[1]
    rc, _, err = run_main("help", "nosuch")
    assert rc == 2 and "invalid choice" in err


def test_python_dash_m_help():
    proc = run_subprocess("--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: fewshot" in proc.stdout and "train" in proc.stdout


def test_subprocess_user_error_exit_2_without_traceback(digits_root, tmp_path):
    run = tmp_path / "run"
    proc = run_subprocess(*train_argv(digits_root, run, "optim.lrr=1"))
    assert proc.returncode == 2
    assert "optim.lrr" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("fewshot train: error:")


def test_models_lists_resnet18_with_parameter_count():
    rc, out, err = run_main("models", "resnet1")
    assert rc == 0, err
    row = next(line for line in out.splitlines() if line.split()[:1] == ["resnet18"])
    params = float(row.split()[1])
    assert params == pytest.approx(11.18, abs=0.01)  # millions, without the 1000-class head
    assert all(re.search(r"resnet1", line.split()[0]) for line in out.splitlines()[1:] if not line.startswith("..."))


def test_models_matches_any_case_and_refuses_a_limit_below_one():
    """`models RESNET18` matched nothing; `--limit -1` listed every model but the last (and built them all)."""
    rc, out, err = run_main("models", "RESNET18", "--limit", "5")
    assert rc == 0 and any(line.split()[:1] == ["resnet18"] for line in out.splitlines()), out + err
    for bad in ("-1", "0", "x"):
        rc, _, err = run_main("models", "resnet18", "--limit", bad)
        assert rc == 2 and "--limit" in err, err


class _ClosedPipe(io.StringIO):
    """stdout whose reader has gone away, as in `fewshot models | head -1`."""

    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")


def test_output_into_a_closed_pipe_is_not_an_internal_error():
    err = io.StringIO()
    with contextlib.redirect_stdout(_ClosedPipe()), contextlib.redirect_stderr(err):
        rc = main(["models", "resnet18", "--limit", "2"])
    assert rc == 141
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue()


def test_bare_fewshot_prints_its_usage_on_stderr_and_exits_2():
    """No command printed the whole help on stdout and exited 2: an error, so usage and why on stderr."""
    rc, out, err = run_main()
    assert rc == 2 and out == ""
    assert err.startswith("usage: fewshot") and "a command is required" in err


@pytest.mark.parametrize("head, epochs, warned", [("prototype", "5", True), ("prototype", None, False),
                                                   ("linear", "5", False)])
def test_probe_warns_that_a_prototype_head_ignores_epochs(tmp_path, head, epochs, warned):
    """`probe --head prototype --epochs 5` trains no head: the --epochs went unused without a word."""
    argv = ["probe", "--weights", tmp_path / "w.safetensors", "--model", "resnet18", "--data", tmp_path / "none",
            "--head", head] + (["--epochs", epochs] if epochs else [])
    rc, out, err = run_main(*argv)
    assert rc == 2  # the missing data ends it; the warning comes before any work
    assert ("warning: --epochs 5 is ignored: --head prototype" in err) == warned, err


def test_probe_refuses_config_words_it_would_ignore(tmp_path):
    rc, out, err = run_main("probe", "--weights", tmp_path / "w.safetensors", "--model", "resnet18", "--data", tmp_path,
                            "optim.lr=1")
    assert rc == 2 and "unrecognized arguments: optim.lr=1" in err


def test_probe_refuses_an_out_inside_a_dataset_split(copy_root, dataset_names, tmp_path):
    """`probe --out ROOT/<ds>/train/probe` wrote metrics.json there, and every later command refused ROOT
    ("class folder without images"); train, eval and predict refused such an --out already."""
    from fewshot.data.layout import scan_root

    out = copy_root / dataset_names[1] / "train" / "probe"
    rc, out_text, err = run_main("probe", "--weights", tmp_path / "w.safetensors", "--model", "test_resnet",
                                 "--data", copy_root, "--out", out, "--device", "cpu")
    assert rc == 2 and "inside the train/ split of dataset" in err and "give the probe a folder" in err, err
    assert not out.exists()
    assert len(scan_root(copy_root)) == len(dataset_names)


def test_batch_size_one_says_batchnorm_needs_two(digits_root, tmp_path):
    argv = [a if a != "16" else "1" for a in train_argv(digits_root, tmp_path / "run")]
    rc, out, err = run_main(*argv)
    assert rc == 2 and "--batch-size 1" in err and "at least 2 images per batch" in err, err


def test_run_pretrain_without_a_pool_says_the_labelled_images_stand_in(copy_root, tmp_path):
    """A hunt: without ROOT/unlabeled/ MoCo reads the training images, and the refusal said "the unlabeled pool has
    30 images", which sent the user looking for a pool that is not there."""
    import shutil

    shutil.rmtree(copy_root / "unlabeled")
    rc, out, err = run_main("run", "--data", copy_root, "--out", tmp_path / "run", "--budget-minutes", "0.2",
                            "--model", "test_resnet", "--device", "cpu", "--no-progress", "--pretrain",
                            "run.pretrain_batch_size=4096", "run.queue_size=8192", "run.report=false")
    assert rc == 2 and "no unlabeled pool, so the labelled images stand in" in err, err
    assert "fewer than one MoCo batch of 4096" in err and "leave out --pretrain" in err


def test_run_with_a_pool_smaller_than_one_moco_batch_is_a_user_error(digits_root, tmp_path):
    """The pipeline measures step times before the Engine exists: an empty epoch plan was a ZeroDivisionError."""
    rc, out, err = run_main("run", "--data", digits_root, "--out", tmp_path / "run", "--budget-minutes", "0.2",
                            "--model", "test_resnet", "--device", "cpu", "--no-progress", "--pretrain",
                            "run.pretrain_batch_size=4096", "run.queue_size=8192", "run.report=false")
    assert rc == 2 and "fewer than one MoCo batch of 4096" in err and "Traceback" not in err, err
    # refused before the run folder is written: the rerun with a smaller batch must not be blocked by it (the
    # folder's lock file, taken before the inputs are decoded, is hidden and does not count as a run)
    assert not (tmp_path / "run").exists() or not [p for p in (tmp_path / "run").iterdir() if p.name[0] != "."]


# ------------------------------------------------------------------ flags reach the config

def resolved(*argv: str) -> dict:
    from fewshot.cli import TRAIN_FLAGS, resolve_run_config

    args, extra = build_parser().parse_known_args([str(a) for a in argv])
    return resolve_run_config(args, extra, TRAIN_FLAGS)


def test_a_zero_flag_overrides_the_config_file(tmp_path):
    """`--seed 0` was dropped (0 == False), so a config file's seed won; `--epochs 0` silently meant 50."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  seed: 7\n  skip_nonfinite: 5\n")
    cfg = resolved("train", "--data", tmp_path, "--out", tmp_path / "r", "--config", cfg_file, "--seed", "0",
                   "--skip-nonfinite", "0")
    assert cfg["train"]["seed"] == 0 and cfg["train"]["skip_nonfinite"] == 0
    assert resolved("train", "--data", tmp_path, "--out", tmp_path / "r", "--config", cfg_file)["train"]["seed"] == 7
    with pytest.raises(UserError, match="train.epochs must be at least 1"):
        resolved("train", "--data", tmp_path, "--out", tmp_path / "r", "--epochs", "0")


def test_resume_applies_a_config_file_given_with_it(tmp_path):
    """On --resume the saved config is the base; a --config file given now was read and then ignored."""
    run = tmp_path / "r"
    run.mkdir()
    saved = resolve(overrides=["train.epochs=1", "train.seed=3"])
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    more = tmp_path / "more.yaml"
    more.write_text("train:\n  epochs: 3\n")
    cfg = resolved("train", "--data", tmp_path, "--out", run, "--resume", "--config", more)
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["seed"] == 3
    cfg = resolved("train", "--data", tmp_path, "--out", run, "--resume", "--config", more, "train.epochs=4")
    assert cfg["train"]["epochs"] == 4  # key=value words still win over the file
    with pytest.raises(UserError, match="train.epochs must be a whole number"):
        resolved("train", "--data", tmp_path, "--out", run, "--resume", "train.epochs=many")


def test_resume_with_the_config_file_that_started_the_run_and_an_exponent_lr(tmp_path):
    """A file's `lr: 1e-3` is the string '1e-3' to YAML 1.1: the run started (validation makes it a number) but
    --resume with the same file compared '1e-3' with the saved 0.001 and refused ("changes optim.lr")."""
    run = tmp_path / "r"
    run.mkdir()
    first = tmp_path / "c.yaml"
    first.write_text("optim:\n  lr: 1e-3\ntrain:\n  epochs: 1\n")
    saved = resolved("train", "--data", tmp_path, "--out", run, "--config", first)
    assert saved["optim"]["lr"] == 1e-3
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = resolved("train", "--data", tmp_path, "--out", run, "--resume", "--config", first, "--epochs", "2")
    assert cfg["optim"]["lr"] == 1e-3 and cfg["train"]["epochs"] == 2


def test_resume_refuses_another_preset_as_it_refuses_another_moco_preset_field(tmp_path):
    """`pretrain --resume --preset mocov1` on a mocov2 run continued as mocov2 without a word."""
    from fewshot.cli import resolve_run_config
    from fewshot.cli_moco import PRETRAIN_FLAGS

    def resolved(*argv):  # as cmd_pretrain resolves its config
        args, extra = build_parser().parse_known_args([str(a) for a in argv])
        return resolve_run_config(args, extra, PRETRAIN_FLAGS, preset=args.preset, default_preset="mocov2")

    run = tmp_path / "r"
    run.mkdir()
    saved = resolved("pretrain", "--data", tmp_path, "--out", run, "--epochs", "1")
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    assert saved["moco"]["preset"] == "mocov2"
    with pytest.raises(UserError, match="changes moco.preset"):
        resolved("pretrain", "--data", tmp_path, "--out", run, "--resume", "--preset", "mocov1")
    cfg = resolved("pretrain", "--data", tmp_path, "--out", run, "--resume", "--preset", "mocov2", "--epochs", "2")
    assert cfg["moco"]["preset"] == "mocov2" and cfg["train"]["epochs"] == 2


def test_pretrain_takes_several_unlabeled_folders_per_flag(tmp_path):
    args, extra = build_parser().parse_known_args(["pretrain", "--data", "R", "--out", "O", "--unlabeled", "A", "B",
                                                   "--unlabeled", "C"])
    assert args.unlabeled == ["A", "B", "C"] and extra == []


def test_a_mistyped_bf16_variable_is_refused_before_any_folder_is_written(digits_root, tmp_path, monkeypatch):
    """FEWSHOT_CPU_BF16=maybe was found once training began: `fewshot run` had left run_state.json, and the next
    attempt was refused ("not empty ... add --resume")."""
    monkeypatch.setenv("FEWSHOT_CPU_BF16", "maybe")
    out = tmp_path / "out"
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "0.2", "--device", "cpu")
    assert rc == 2 and "FEWSHOT_CPU_BF16='maybe'" in err and not out.exists()
    monkeypatch.delenv("FEWSHOT_CPU_BF16")
    monkeypatch.setenv("FEWSHOT_OMP_WAIT", "passiv")  # ignored silently before
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "0.2", "--device", "cpu")
    assert rc == 2 and "FEWSHOT_OMP_WAIT='passiv': use one of spin, passive" in err and not out.exists()


def test_run_refuses_an_output_folder_that_holds_a_run(digits_root, tmp_path):
    """A second `fewshot run` into the same folder appended to the first one's logs and left its stage
    folders for the report; it is refused before any work."""
    out = tmp_path / "out"
    (out / "finetune_round2").mkdir(parents=True)
    rc, _, err = run_main("run", "--data", digits_root, "--out", out, "--budget-minutes", "0.2", "--device", "cpu")
    assert rc == 2 and "is not empty (finetune_round2)" in err and "Choose another --out" in err, err


def test_resuming_a_gpu_run_without_a_gpu_says_how(tmp_path, monkeypatch):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(resolve(overrides=["train.device=cuda"])))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="trained on cuda .* pass --device cpu to resume it on the CPU"):
        resolved("train", "--data", tmp_path, "--out", run, "--resume")
    assert resolved("train", "--data", tmp_path, "--out", run, "--resume", "--device", "cpu")["train"]["device"] == "cpu"


def test_key_value_words_after_unlabeled_folders_are_not_taken_for_folders(tmp_path):
    rc, _, err = run_main("pretrain", "--data", tmp_path, "--out", tmp_path / "o", "--unlabeled", tmp_path,
                          "moco.knn_k=5")
    assert rc == 2 and "--unlabeled took 'moco.knn_k=5' as a folder" in err, err


def test_an_output_path_that_cannot_be_a_file_is_a_user_error_before_any_work(trained, digits_root, tmp_path,
                                                                              monkeypatch):
    """--out naming a folder, or a path under a file, surfaced as IsADirectoryError/FileExistsError tracebacks
    (exit 1) after the work, and export left its temp file behind."""
    monkeypatch.chdir(tmp_path)
    run, _ = trained
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [("predict", run, "--data", digits_root, "--out", tmp_path, "--device", "cpu"),
             ("predict", run, "--data", digits_root, "--out", afile / "p.json", "--device", "cpu"),
             ("eval", run, "--data", digits_root, "--out", tmp_path, "--device", "cpu"),
             ("export", run, "--out", tmp_path),
             ("probe", "--weights", run / "checkpoints" / "best.pt", "--model", "test_resnet", "--data", digits_root,
              "--out", afile)]
    for argv in cases:
        rc, out, err = run_main(*argv)
        assert rc == 2, (argv, err)
        assert "is a folder" in err or "is a file, not a folder" in err, err
        assert "Traceback" not in err and "internal error" not in err
        assert "accuracy" not in out  # refused before evaluating
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no temp file left


def test_export_writes_through_a_new_folder_without_a_temp_file(trained, tmp_path):
    run, _ = trained
    rc, out, err = run_main("export", run, "--out", tmp_path / "new" / "bb.safetensors")
    assert rc == 0, err
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["bb.safetensors"]


def test_export_of_a_fine_tuning_run_takes_the_checkpoint_predict_uses(trained, tmp_path):
    """It took last.pt while eval, predict and pred_all.json use best.pt, and did not say which."""
    from safetensors import safe_open

    run, _ = trained
    rc, out, err = run_main("export", run, "--out", tmp_path / "bb.safetensors")
    assert rc == 0, err
    best = run / "checkpoints" / "best.pt"
    assert f"from {best}" in out
    with safe_open(str(tmp_path / "bb.safetensors"), "pt") as f:
        assert f.metadata()["source"] == str(best)
    rc, out, err = run_main("export", run / "checkpoints" / "last.pt", "--out", tmp_path / "last.safetensors")
    assert rc == 0 and f"from {run / 'checkpoints' / 'last.pt'}" in out, err  # a file given is the file used


def test_predict_says_what_the_root_holds_that_it_does_not_predict(trained, digits_root, dataset_names, tmp_path):
    """A dataset the model never saw was left out of pred_all.json without a word; class folders that differ
    from the model's (its indices then mean other classes than the root's folders) too."""
    import shutil

    run, _ = trained
    root = tmp_path / "root"
    shutil.copytree(digits_root, root, ignore=shutil.ignore_patterns(".fewshot_cache"))
    shutil.copytree(root / dataset_names[0], root / "zz")
    shutil.rmtree(root / dataset_names[0] / "train" / "0")
    rc, out, err = run_main("predict", run, "--data", root, "--out", tmp_path / "p.json")
    assert rc == 0, err
    pred = json.loads((tmp_path / "p.json").read_text())
    assert set(pred) == {"n_parameters", *dataset_names}
    assert f"{root} also holds zz, which the model was not trained on" in err
    assert f"the class folders of {root / dataset_names[0] / 'train'} (9) differ from the model's (10" in err
    assert dataset_names[1] not in err.split("differ")[0].split("class folders of")[-1]  # only the changed one
    rc, out, err = run_main("predict", run, "--data", digits_root, "--out", tmp_path / "q.json")
    assert rc == 0 and "warning" not in err, err  # the training root: nothing to say


def test_compare_cut_off_by_its_reader_exits_like_a_closed_pipe(trained):
    """rich's console exits 1 itself on a broken pipe (SystemExit(1): an internal error by SPEC's codes); the
    table printer hands it to the CLI, which answers 141 as for every other command."""
    run, _ = trained
    err = io.StringIO()
    with contextlib.redirect_stdout(_ClosedPipe()), contextlib.redirect_stderr(err):
        rc = main(["compare", str(run)])
    assert rc == 141, err.getvalue()


def test_a_file_that_is_no_weights_file_at_all_is_not_called_a_dangerous_pickle(digits_root, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    rc, out, err = run_main("eval", bad, "--data", digits_root, "--device", "cpu")
    assert rc == 2
    assert "not a PyTorch (.pt/.pth) or safetensors weights file" in err and "could run code" not in err


def test_an_empty_datasets_flag_is_refused_not_read_as_all(digits_root, tmp_path):
    rc, out, err = run_main(*train_argv(digits_root, tmp_path / "run", "--datasets", " , "))
    assert rc == 2 and "names no dataset" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_config_words_on_a_command_without_a_config_get_that_commands_usage(tmp_path):
    rc, out, err = run_main("eval", tmp_path, "--data", tmp_path, "optim.lr=1")
    assert rc == 2
    assert "usage: fewshot eval" in err and "apply to train, pretrain and run" in err


def test_a_model_that_cannot_take_the_image_size_is_a_user_error(digits_root, tmp_path):
    rc, out, err = run_main("train", "--data", digits_root, "--out", tmp_path / "vit", "--model", "test_vit",
                            "--img-size", "24", "--epochs", "1", "--device", "cpu", "--no-progress")
    assert rc == 2 and "test_vit cannot take 24 px inputs" in err and "internal error" not in err, err


def test_pretrain_warns_when_the_queue_is_as_large_as_the_pool(digits_root, tmp_path):
    rc, out, err = run_main("pretrain", "--data", digits_root, "--out", tmp_path / "moco", "--model", "test_resnet",
                            "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                            "--no-progress", "moco.queue_size=100000", "moco.split_bn_groups=2", "--datasets", "digits")
    assert rc == 0, err
    assert "warning: the queue (K=100000) holds at least as many keys as the pool" in out
    # the console's last kNN line is metrics.json's (the best checkpoint's), not the last epoch's alone
    metrics = json.loads((tmp_path / "moco" / "metrics.json").read_text())
    assert f"kNN accuracy (val) of best.pt (epoch {metrics['best_epoch']}):" in out, out
    assert f"mean {metrics['mean_acc1']:.2f}" in out.split("kNN accuracy (val) of")[-1], out
    small = tmp_path / "small"  # half of this pool is less than a batch: the advice must be a queue that can start
    small.mkdir()
    for p in sorted((digits_root / "unlabeled").rglob("*.png"))[:10]:
        shutil.copy(p, small / f"{p.parent.name}_{p.name}")
    rc, out, err = run_main("pretrain", "--data", digits_root, "--out", tmp_path / "small-run", "--model", "test_resnet",
                            "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                            "moco.queue_size=64", "moco.split_bn_groups=2", "--unlabeled", small, "--no-progress",
                            "--datasets", "digits")
    assert rc == 0, err
    assert "(--batch-size 4, then --queue-size 5:" in out, out  # 2 images (1 per shuffle-BN group) are refused


def test_the_knn_summary_adds_the_last_epochs_mean_only_where_it_differs_from_the_best():
    """A hunt read "kNN accuracy (val): ... mean 0.61" (the last epoch) while metrics.json said 0.80 (best.pt)."""
    from fewshot.ssl.pretrain import knn_summary

    written = {"checkpoint": "best.pt", "best_epoch": 3, "mean_acc1": 0.8,
               "datasets": {"digits": {"acc1": 0.9}, "fashion": {"acc1": 0.7}}}
    line = knn_summary(written, {"knn_acc1": {"digits": 0.6, "fashion": 0.62, "mean": 0.61}})
    assert line == "kNN accuracy (val) of best.pt (epoch 3): digits 0.90, fashion 0.70, mean 0.80; last evaluated " \
                   "epoch: mean 0.61"
    assert knn_summary(written, {"knn_acc1": {"mean": 0.8}}).endswith("mean 0.80")
    assert knn_summary(written, None).endswith("mean 0.80")


def test_moco_batch_advice_names_per_process_sizes_under_ddp():
    """--batch-size is per process: "a batch of at most 11 images" and "one batch of 48" left the reader to
    guess whether the figures were per process or global."""
    from types import SimpleNamespace

    from fewshot.ssl.pretrain_settings import queue_advice
    from fewshot.train.engine import empty_epoch_error

    assert "(--batch-size 5 per process (a global batch of 10 images), then" in queue_advice(44, 48, 2)
    assert "(--batch-size 11, then --queue-size 22: a batch of 48" in queue_advice(44, 48, 1)
    task = SimpleNamespace(kind="moco", pool=[0] * 40)
    assert "fewer than one batch of 48 (24 per process x 2 processes)" in str(
        empty_epoch_error(task, {"train": {"batch_size": 24}}, 2))
    assert "fewer than one batch of 24 (MoCo" in str(empty_epoch_error(task, {"train": {"batch_size": 24}}, 1))


def test_a_course_recipe_without_weights_warns_that_the_random_backbone_barely_moves(capsys):
    from fewshot.config import resolve
    from fewshot.train.finetune import resolve_finetune_defaults, warn_random_backbone_at_a_pretrained_lr

    repo = Path(__file__).resolve().parents[1]
    warn_random_backbone_at_a_pretrained_lr(resolve_finetune_defaults(resolve(file=repo / "configs" / "course_resnet50.yaml")))
    assert "starts from random init but trains at lr 1e-05" in capsys.readouterr().out
    warn_random_backbone_at_a_pretrained_lr(resolve_finetune_defaults(resolve()))  # scratch defaults: 4e-3 x 1
    assert capsys.readouterr().out == ""


def test_predict_in_known_mode_removes_a_stale_routing_file(trained, digits_root, tmp_path):
    run, _ = trained
    out = tmp_path / "pred_all.json"
    assert run_main("predict", run, "--data", digits_root, "--out", out, "--mode", "unknown", "--device", "cpu")[0] == 0
    assert (tmp_path / "pred_all.routing.json").is_file()
    assert run_main("predict", run, "--data", digits_root, "--out", out, "--device", "cpu")[0] == 0
    assert not (tmp_path / "pred_all.routing.json").exists()


def test_eval_on_a_root_holding_some_of_the_models_datasets_suggests_datasets(trained, copy_root, dataset_names,
                                                                              tmp_path):
    import shutil

    run, _ = trained
    shutil.rmtree(copy_root / dataset_names[1])
    rc, out, err = run_main("eval", run, "--data", copy_root, "--device", "cpu")
    assert rc == 2 and f"pass --datasets {dataset_names[0]}" in err, err


def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path):
    import os

    from fewshot.utils import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        (tmp_path / "a.json").chmod(0o640)
        write_json(tmp_path / "a.json", {"x": 1})  # a replaced file keeps its own mode
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_an_answer_key_with_ids_that_are_no_test_images_scores_the_test_images_and_says_so(trained, copy_root,
                                                                                              dataset_names, tmp_path):
    """`fewshot run` printed two accuracies for one pred_all.json: eval scored the 300 test images, the
    pred_all score divided by the 400 ids of a key with 100 extra ids."""
    from fewshot.eval.predict import score_predictions

    run, _ = trained
    name = dataset_names[0]
    key_file = copy_root / name / "test_labels.json"
    key = json.loads(key_file.read_text())
    n_test = len(key)
    key.update({str(10000 + i): 0 for i in range(7)})
    key_file.write_text(json.dumps(key))
    rc, out, err = run_main("eval", run, "--data", copy_root, "--split", "test", "--out", tmp_path / "m.json",
                            "--device", "cpu")
    assert rc == 0, err
    assert "lists 7 id(s) that are not test images" in err and str(key_file) in err
    m = read_metrics(tmp_path / "m.json")["datasets"][name]
    rc, _, err = run_main("predict", run, "--data", copy_root, "--out", tmp_path / "p.json", "--device", "cpu")
    assert rc == 0, err
    pred = json.loads((tmp_path / "p.json").read_text())
    scored = score_predictions(pred, copy_root)[name]
    assert scored["n"] == m["n"] == n_test
    assert scored["acc1"] == pytest.approx(m["acc1"])
    # a submission that leaves ids out is scored as a grader scores it: a missing prediction is a miss
    key = json.loads(key_file.read_text())
    kept = dict(list(pred[name].items())[: n_test // 2])
    hits = sum(1 for i, c in kept.items() if key[i] == c)
    scored = score_predictions({**pred, name: kept}, copy_root)[name]
    assert scored["n"] == n_test and scored["acc1"] == pytest.approx(100.0 * hits / n_test)


def test_eval_predict_and_probe_take_skip_bad_images_as_their_advice_says(trained, copy_root, dataset_names,
                                                                          tmp_path):
    run, _ = trained
    name = dataset_names[0]
    (copy_root / name / "test" / "5.png").write_bytes(b"not an image")
    (copy_root / name / "val" / sorted(p.name for p in (copy_root / name / "val").iterdir())[0] / "bad.png"
     ).write_bytes(b"not an image")
    out_file = tmp_path / "pred.json"
    rc, _, err = run_main("predict", run, "--data", copy_root, "--out", out_file, "--device", "cpu")
    assert rc == 2 and "--skip-bad-images" in err
    rc, _, err = run_main("predict", run, "--data", copy_root, "--out", out_file, "--device", "cpu",
                          "--skip-bad-images")
    assert rc == 0, err
    assert "1 undecodable test image(s) (listed above) are predicted from a blank image" in err
    pred = json.loads(out_file.read_text())
    assert set(pred[name]) == test_ids(copy_root, name)  # a submission holds every test id
    for split in ("val", "test"):
        rc, _, err = run_main("eval", run, "--data", copy_root, "--split", split, "--device", "cpu",
                              "--skip-bad-images")
        assert rc == 0, err
    rc, _, err = run_main("probe", "--weights", "", "--model", "test_resnet", "--img-size", "32", "--data", copy_root,
                          "--epochs", "2", "--device", "cpu", "--skip-bad-images")
    assert rc == 0, err


def test_eval_of_a_test_split_without_some_answer_keys_names_the_datasets_it_can_score(trained, copy_root,
                                                                                        dataset_names):
    run, _ = trained
    (copy_root / dataset_names[0] / "test_labels.json").unlink()
    rc, _, err = run_main("eval", run, "--data", copy_root, "--split", "test", "--device", "cpu")
    assert rc == 2 and f"--datasets {dataset_names[1]}" in err


@pytest.mark.parametrize("names", [["two words", "b"], ["-dash", "b"], ["b", "-dash"], ["digits", "digits-b"]])
def test_a_datasets_hint_pasted_into_a_shell_gives_those_datasets(names):
    """The hints' `--datasets a,b` did not quote a name with a space, and `--datasets -dash,...` failed with
    "expected one argument"."""
    import shlex

    from fewshot.data.names import datasets_option

    hint = datasets_option(names)
    args = build_parser().parse_args(["predict", "RUN", "--data", "D", "--out", "p.json", *shlex.split(hint)])
    assert args.datasets == ",".join(names), hint
    assert datasets_option(["digits", "digits-b"]) == "--datasets digits,digits-b"  # plain names stay as they were


def test_a_run_evaluated_in_unknown_mode_prints_the_table_of_that_mode(digits_root, tmp_path):
    rc, out, err = run_main(*train_argv(digits_root, tmp_path / "run", "--epochs", "1", "train.eval_mode=unknown"))
    assert rc == 0, err
    metrics = read_metrics(tmp_path / "run" / "metrics.json")
    assert metrics["mode"] == "unknown"
    assert "(mode: unknown" in out and f"{metrics['mean_acc1']:7.2f}" in out and "known-source: mean acc@1" in out


def test_no_progress_works_on_eval_and_predict_and_ends_with_the_call(trained, digits_root, tmp_path):
    from fewshot import progress

    run, _ = trained
    rc, _, err = run_main("predict", run, "--data", digits_root, "--out", tmp_path / "p.json", "--device", "cpu",
                          "--no-progress")
    assert rc == 0 and "predicting" not in err, err
    rc, _, err = run_main("eval", run, "--data", digits_root, "--device", "cpu", "--no-progress")
    assert rc == 0 and "evaluating" not in err, err
    assert progress.is_enabled()


def test_train_refuses_a_folder_with_other_files_or_the_data_itself_and_restarts_a_failed_start(
        trained, digits_root, copy_root, tmp_path):
    """`train --out` wrote over a folder's own files (the user's config.yaml, a `fewshot run` folder's
    metrics.json, whose pred_all.json then no longer matched), and `--out ROOT` made ROOT unusable."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own\n")
    rc, _, err = run_main(*train_argv(digits_root, mine, "--epochs", "1"))
    assert rc == 2 and "is not empty (config.yaml)" in err and "Traceback" not in err
    assert (mine / "config.yaml").read_text() == "my: own\n"
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "pred_all.json").write_text("{}")
    rc, _, err = run_main(*train_argv(digits_root, pipeline, "--epochs", "1"))
    assert rc == 2 and "pred_all.json" in err
    for out in (copy_root, copy_root / "digits" / "train" / "run"):
        for command in ("train", "pretrain", "run"):
            argv = train_argv(copy_root, out, "--epochs", "1") if command == "train" else [
                command, "--data", copy_root, "--out", out, "--model", "test_resnet", "--device", "cpu"]
            rc, _, err = run_main(*argv)
            assert rc == 2 and "--out" in err, (command, out, err)
    assert not (copy_root / "plots").exists() and not (copy_root / "config.yaml").exists()
    rc, _, err = run_main(*train_argv(digits_root, pipeline, "--epochs", "1"), "--resume")  # no last.pt: fresh
    assert rc == 2 and "pred_all.json" in err
    rc, _, err = run_main(*train_argv(copy_root, copy_root / "unlabeled" / "digits" / "r", "--epochs", "1"))
    assert rc == 2 and "inside the unlabeled pool" in err  # its plots would join the pool
    # what a start killed before its first checkpoint leaves is started again without --resume
    failed = tmp_path / "failed"
    (failed / "tensorboard").mkdir(parents=True)
    shutil.copy(trained[0] / "config.yaml", failed / "config.yaml")
    (failed / "log.jsonl").write_text("")
    rc, _, err = run_main(*train_argv(digits_root, failed, "--epochs", "1"))
    assert rc == 0, err


def test_a_config_file_not_in_utf8_is_a_user_error_and_a_recipe_is_found_by_name(tmp_path, monkeypatch):
    from fewshot.config import load_yaml

    latin = tmp_path / "latin.yaml"
    latin.write_bytes("# réglages\ntrain:\n  ema: true\n".encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_yaml(latin)
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("train:\n  ema: false\n".encode("utf-16"))  # with a BOM, as Windows Notepad writes it
    assert load_yaml(utf16) == {"train": {"ema": False}}
    monkeypatch.chdir(tmp_path)  # no configs/ here, as after `pip install`
    assert load_yaml("configs/moco_cpu_small.yaml") == load_yaml("moco_cpu_small")
    assert "moco" in load_yaml("moco_cpu_small")
    with pytest.raises(UserError, match="usable by name: .*moco_cpu_small"):
        load_yaml("configs/no_such_recipe.yaml")
    with pytest.raises(UserError, match="not found: experiments/cpu_tiny.yaml"):  # a path is never a recipe name
        load_yaml("experiments/cpu_tiny.yaml")


def test_a_home_folder_written_after_an_equals_sign_is_expanded(monkeypatch, tmp_path):
    import argparse

    from fewshot.cli_parser import _expand_home

    monkeypatch.setenv("HOME", str(tmp_path))
    args = argparse.Namespace(out="~/r", data="/abs", unlabeled=["~/p", "q"], mode="known")
    _expand_home(args)
    assert (args.out, args.data, args.unlabeled, args.mode) == (str(tmp_path / "r"), "/abs", [str(tmp_path / "p"), "q"],
                                                                "known")


@pytest.mark.parametrize("argv, named", [(["data", "digits", "--out", ""], "--out"),
                                         (["train", "--data", "", "--out", "x"], "--data"),
                                         (["pretrain", "--data", "d", "--out", "x", "--unlabeled", "a", ""], "--unlabeled")])
def test_an_empty_path_is_refused(argv, named, tmp_path, monkeypatch):
    """`--out ''` (an unset shell variable) built the dataset into the current folder and exited 0."""
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(*argv)
    assert rc == 2 and f"an empty path was given for {named}" in err, err
    assert list(tmp_path.iterdir()) == []


def test_no_usable_temporary_folder_is_a_user_error(tmp_path, monkeypatch):
    """With /tmp, /var/tmp and the current folder unwritable, importing torchvision failed in tempfile.gettempdir
    and every command ended in a traceback and "internal error (a bug ...)"."""
    import tempfile

    def no_temp():
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp', '/var/tmp']")

    monkeypatch.setattr(tempfile, "gettempdir", no_temp)
    rc, _, err = run_main("data", "digits", "--out", tmp_path / "d")
    assert rc == 2 and "No usable temporary directory" in err and "Set TMPDIR to a folder you can write" in err, err
    assert "Traceback" not in err and not (tmp_path / "d").exists()


def test_data_under_torchrun_is_refused(tmp_path, monkeypatch):
    """Every rank built into the same temporary folder: one crashed with a traceback (exit 1)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, _, err = run_main("data", "digits", "--out", tmp_path / "d")
    assert rc == 2 and "without torchrun" in err and not (tmp_path / "d").exists()


def test_eval_and_predict_refuse_to_write_over_what_they_read(trained, copy_root, dataset_names, tmp_path):
    """`--out ROOT/<ds>/test_labels.json` replaced the answer key, `--out RUN/checkpoints/best.pt` the model,
    `--out ROOT/<ds>/test/0.png` a test image (a routing hunt). ROOT and its non-dataset folders stay allowed."""
    run, _ = trained
    run_copy = tmp_path / "run"
    shutil.copytree(run, run_copy)
    ds = copy_root / dataset_names[0]
    test_image = sorted((ds / "test").iterdir())[0]
    inputs = [ds / "test_labels.json", run_copy / "checkpoints" / "best.pt", test_image,
              copy_root / "unlabeled" / "x.json"]
    before = {p: p.read_bytes() for p in inputs if p.exists()}
    for out in inputs:
        for cmd in (["eval", run_copy, "--split", "test"], ["predict", run_copy]):
            rc, _, err = run_main(*cmd, "--data", copy_root, "--out", out, "--device", "cpu")
            assert rc == 2 and "--out" in err and "Traceback" not in err, (cmd, out, err)
    ck = run_copy / "checkpoints" / "last.pt"
    rc, _, err = run_main("predict", ck, "--data", copy_root, "--out", ck, "--device", "cpu")
    assert rc == 2 and "replace the checkpoint it reads" in err, err
    assert {p: p.read_bytes() for p in before} == before
    for out in (copy_root / "pred_all.json", copy_root / "runs" / "mine" / "pred_all.json",
                ds / "pred_all.json", ds / "runs" / "r1" / "pred_all.json"):
        rc, _, err = run_main("predict", run_copy, "--data", copy_root, "--out", out, "--device", "cpu")
        assert rc == 0 and out.is_file(), err


def test_an_output_given_as_a_symbolic_link_writes_its_target(trained, digits_root, tmp_path):
    """The atomic rename replaced the link itself: the target never got the result (a routing hunt)."""
    import os

    run, _ = trained
    target = tmp_path / "real" / "pred_all.json"
    target.parent.mkdir()
    target.write_text('{"n_parameters": 1}')  # an earlier prediction: predict replaces only its own results
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert run_main("predict", run, "--data", digits_root, "--out", link, "--device", "cpu")[0] == 0
    assert link.is_symlink() and "n_parameters" in json.loads(target.read_text())
    dangling = tmp_path / "dangling.json"  # a link to a file not yet made: made there
    dangling.symlink_to(tmp_path / "real" / "new.json")
    assert run_main("eval", run, "--data", digits_root, "--out", dangling, "--device", "cpu")[0] == 0
    assert dangling.is_symlink() and "mean_acc1" in json.loads((tmp_path / "real" / "new.json").read_text())
    null = tmp_path / "null.json"  # a device (as /dev/stdout is) is written in place, not replaced
    null.symlink_to(os.devnull)
    assert run_main("eval", run, "--data", digits_root, "--out", null, "--device", "cpu")[0] == 0
    assert null.is_symlink() and Path(os.devnull).exists() and not Path(os.devnull).is_file()


def test_a_rank_whose_peer_stopped_does_not_report_a_bug(monkeypatch, capsys):
    """Rank 0 alone refuses a held lock or a full disk (exit 2, a clear message); rank 1 then met gloo's closed
    connection and printed a traceback with "internal error (a bug; ...)" (a DDP hunt)."""
    import torch.distributed as dist

    from fewshot.cli import _dispatch

    def collective_failed(args, extra):  # gloo's words, as long as they come (cut mid-word: "remote worker c)")
        raise dist.DistBackendError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] "
                                    "Connection closed by peer [127.0.0.1]:13192. This is typically caused by a "
                                    "remote worker crashing or exiting")

    def bug(args, extra):
        raise RuntimeError("an ordinary bug")

    def timeout(args, extra):  # rank 0's own distributed failure keeps its traceback
        raise dist.DistStoreError("Timed out after 1801 seconds waiting for clients (gloo)")

    args = SimpleNamespace(command="pretrain")  # a command that runs under torchrun
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert _dispatch(args, [], {"pretrain": collective_failed}) == 1
    err = capsys.readouterr().err
    assert "rank 1 stopped because another process of this torchrun job ended first" in err
    assert "caused by a remote...)." in err, err  # cut at a word's end, and said to be cut
    assert "internal error" not in err and "Traceback" not in err
    for other in (bug, timeout):
        assert _dispatch(args, [], {"pretrain": other}) == 1
        assert "internal error (a bug" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: a failed collective is no peer's doing
    assert _dispatch(args, [], {"pretrain": collective_failed}) == 1
    assert "internal error (a bug" in capsys.readouterr().err


def test_single_process_commands_refuse_torchrun(monkeypatch, tmp_path):
    """Under torchrun `eval`, `predict`, `export` and `report` ran whole on every rank and wrote the same files N
    times, while `data` and `run` were refused (a DDP hunt); `compare` and `models` printed every table once per
    process. Every command but train and pretrain is refused, with the same message."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv in (["eval", "RUN", "--data", "ROOT"], ["predict", "RUN", "--data", "ROOT", "--out", "p.json"],
                 ["export", "RUN", "--out", "b.safetensors"], ["report", "RUN", "--out", "r"],
                 ["probe", "--weights", "w.pt", "--data", "ROOT"], ["compare", "RUN"], ["models", "test_resnet"],
                 ["data", "digits", "--out", tmp_path / "d"], ["run", "--data", "ROOT", "--out", tmp_path / "o"]):
        rc, out, err = run_main(*argv)
        assert rc == 2 and "runs in one process, but WORLD_SIZE is 2" in err and out == "", (argv, out, err)
        assert "without torchrun" in err, err
    assert not (tmp_path / "d").exists() and not (tmp_path / "o").exists()
    monkeypatch.setenv("WORLD_SIZE", "")  # an empty variable is one process, not an internal error
    rc, _, err = run_main("eval", "no-such-run", "--data", "ROOT")
    assert rc == 2 and "internal error" not in err, err


def test_a_warmup_longer_than_the_run_is_warned_about(digits_root, tmp_path):
    """sched.warmup_epochs=100 with --epochs 2 trained at a 50th of optim.lr, without a word."""
    common = ["train", "--data", digits_root, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
              "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "--datasets",
              "digits"]
    rc, out, err = run_main(*common, "--out", tmp_path / "long", "sched.warmup_epochs=4")
    assert rc == 0, err
    assert "sched.warmup_epochs=4 is longer than the run's 1 epoch(s)" in out + err, out + err
    # the lr of the last step, not epochs / warmup_epochs (25 %): (steps - 1) / warmup steps
    from fewshot.config import load_yaml

    lr = json.loads((tmp_path / "long" / "log.jsonl").read_text().splitlines()[-1])["lr"]
    share = lr / load_yaml(tmp_path / "long" / "config.yaml")["optim"]["lr"]
    assert f"the last step trains at {share:.0%} of it" in out + err and "25%" not in out + err, (lr, out + err)
    common[common.index("--epochs") + 1] = "2"
    rc, out, err = run_main(*common, "--out", tmp_path / "default")  # the default 1-epoch warmup ends inside it
    assert rc == 0 and "warmup_epochs" not in out + err, err


def test_tensorboard_on_but_missing_is_said_not_skipped_silently(digits_root, tmp_path, monkeypatch):
    """train.tensorboard=true without the package wrote no RUN/tensorboard/ and said nothing."""
    import sys

    from fewshot.train import tensorboard_log

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` of it raises ImportError
    monkeypatch.setattr(tensorboard_log, "_TOLD_TENSORBOARD", set())
    rc, out, err = run_main("train", "--data", digits_root, "--model", "test_resnet", "--img-size", "16", "--epochs",
                            "1", "--batch-size", "8", "--device", "cpu", "--no-progress", "--out", tmp_path / "r",
                            "train.tensorboard=true", "--datasets", "digits")
    assert rc == 0, err
    assert "train.tensorboard is on, but no event files are written" in err and "pip install tensorboard" in err
    assert not (tmp_path / "r" / "tensorboard").exists()


@pytest.mark.parametrize("command", ["train", "pretrain", "run"])
def test_clearing_the_data_root_by_a_word_is_a_user_error(digits_root, tmp_path, command):
    """`data.root=` (or null, ~) beat --data silently and reached the layout scan as None: a TypeError (exit 1)."""
    for word in ("data.root=", "data.root=null", "data.root=~"):
        rc, _, err = run_main(command, "--data", digits_root, "--out", tmp_path / "r", "--model", "test_resnet",
                              "--device", "cpu", word)
        assert rc == 2 and "data.root must be a folder" in err and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_words_after_a_double_dash_are_overrides_and_the_usage_shows_them(digits_root, tmp_path):
    """`--unlabeled A B -- optim.lr=1` ends the folder list the usual way: it was refused as an unrecognized `--`."""
    rc, _, err = run_main("pretrain", "--data", digits_root, "--out", tmp_path / "r", "--unlabeled", tmp_path, "--",
                          "optim.lrr=1")
    assert rc == 2 and "unknown config field 'optim.lrr'" in err and "unrecognized" not in err, err
    for command in ("train", "pretrain", "run"):
        usage = build_parser()._subparsers._group_actions[0].choices[command].format_usage()
        assert usage.rstrip().endswith("[key=value ...]"), usage


def test_a_word_that_replaces_a_flag_says_so(digits_root, capsys):
    cfg = resolved("train", "--data", digits_root, "--out", "r", "--epochs", "1", "--seed", "3", "train.epochs=2",
                   "train.seed=3")
    assert cfg["train"]["epochs"] == 2
    err = capsys.readouterr().err
    assert "note: train.epochs=2 replaces --epochs 1" in err and "seed" not in err, err
    # review 2: the same file by flag and word is no replacement; a flag that set false is named without "False"
    resolved("train", "--data", digits_root, "--out", "r", "--weights", "~/w.pt", "model.weights=~/w.pt",
             "--no-progress", "train.progress=true")
    err = capsys.readouterr().err
    assert "model.weights" not in err and "note: train.progress=true replaces the flag that set " \
        "train.progress=false" in err, err


def test_run_warns_about_words_for_fields_it_sets_itself(digits_root, tmp_path):
    """`fewshot run --pretrain moco.queue_size=64` trained with K=128 without a word (run.queue_size is the MoCo
    stage's queue); the warnings come at start-up, before the run fails on its bad model name here."""
    rc, _, err = run_main("run", "--data", digits_root, "--out", tmp_path / "r", "--model", "no_such_model",
                          "--device", "cpu", "--pretrain", "moco.queue_size=64", "moco.momentum=0.5", "train.epochs=1",
                          "optim.lr=1e-3")
    assert rc == 2 and "no_such_model" in err, err
    assert "warning: moco.queue_size=64 is replaced by run.queue_size" in err
    assert "warning: moco.momentum=0.5 is replaced by run.moco_momentum" in err
    assert "warning: train.epochs=1 is replaced by the run's plan" in err and "optim.lr" not in err
    assert err.index("warning: moco.queue_size") < err.index("no_such_model")


def test_the_start_line_says_when_the_input_size_is_the_models_default():
    """Without --img-size a model trains at its pretrained size (often 224 px, 10-50x the compute small images
    need): the start line says so and how to change it; a chosen size gets no note."""
    from fewshot.train.finetune import size_note

    assert "--img-size" in size_note({"model": {"img_size": None}})
    assert size_note({"model": {"img_size": 32}}) == ""


@pytest.mark.parametrize("command", ["data", "eval", "predict", "probe", "report"])
def test_no_progress_help_of_a_command_without_epochs_promises_no_log(command):
    """data/eval/predict/probe/report --help said --no-progress drops "the per-epoch lines they leave in a log file
    (log.jsonl holds every epoch)": these commands train no epochs and write no log.jsonl."""
    rc, out, _ = run_main(command, "--help")
    text = " ".join(out.split())  # argparse wraps the help text
    assert rc == 0 and "--no-progress no progress bars" in text, text
    assert "log.jsonl" not in text and "per-epoch" not in text, text
    assert "progress lines printed instead when the output goes to a file or a pipe" in text, text


@pytest.mark.parametrize("command", ["train", "pretrain", "run"])
def test_no_progress_help_of_a_training_command_keeps_its_epoch_lines(command):
    """The commands that train keep saying where the epochs they no longer print go (log.jsonl; `run`'s help said
    only "no progress bars")."""
    rc, out, _ = run_main(command, "--help")
    assert rc == 0 and "log.jsonl holds every epoch" in " ".join(out.split())


def test_run_takes_weights_like_train(digits_root, tmp_path):
    """`fewshot run --weights FILE` was "unrecognized arguments" while train and probe take it (model.weights=FILE
    was the only way): the flag reaches model.weights, and a missing file is named before any work."""
    rc, _, err = run_main("run", "--data", digits_root, "--out", tmp_path / "r", "--weights",
                          tmp_path / "no.safetensors", "--model", "test_resnet", "--device", "cpu", "--budget-minutes",
                          "0.2", "--no-progress")
    assert rc == 2 and "weights file not found" in err and "no.safetensors" in err and "unrecognized" not in err, err


def test_probe_given_a_run_folder_as_weights_says_so(tmp_path):
    """`probe --weights RUN_DIR` without --model said "--model is required ... records no model"; the folder is
    the trouble, and a run folder is named as one with the command that makes a weights file of it."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    rc, _, err = run_main("probe", "--weights", run, "--data", tmp_path)
    assert rc == 2 and "is a folder; --weights takes a weights file" in err and "--model is required" not in err, err
    assert f"fewshot export {run} --out backbone.safetensors" in err


def test_a_ctrl_c_while_torch_is_imported_stops_cleanly(monkeypatch, capsys, tmp_path):
    """A hunt: Ctrl-C in a command's first second, while torch was being imported, left a half-initialised
    torch.distributed in sys.modules; the stop then imported the distributed helpers from it and ended in a
    circular-import traceback, exit 1. A module without a process group is passed over."""
    import types

    from fewshot import cli
    from fewshot.train import distributed

    said = []
    monkeypatch.setattr(distributed, "report_exit", said.append)
    monkeypatch.setitem(sys.modules, "torch.distributed", types.ModuleType("torch.distributed"))  # no attributes

    def interrupted(args, extra):
        raise KeyboardInterrupt

    args = SimpleNamespace(command="run", out=str(tmp_path / "new"))
    assert cli._dispatch(args, [], {"run": interrupted}) == 130 and said == []
    err = capsys.readouterr().err
    assert "fewshot run: interrupted; nothing to resume: start the same command again" in err, err


@pytest.mark.parametrize("finished", [False, True])
def test_an_interrupted_run_says_whether_any_stage_was_kept(tmp_path, capsys, finished):
    """A hunt: Ctrl-C before round 1 ended said "the stages finished so far are kept" of none."""
    from fewshot import cli

    out = tmp_path / "run"
    out.mkdir()
    stages = {"finetune_labelled": {"status": "done" if finished else "began"}}
    (out / "run_state.json").write_text(json.dumps({"stages": stages}))

    def interrupted(args, extra):
        raise KeyboardInterrupt

    assert cli._dispatch(SimpleNamespace(command="run", out=str(out)), [], {"run": interrupted}) == 130
    err = capsys.readouterr().err
    kept = "the stages finished so far are kept" if finished else "no stage had finished"
    assert f"interrupted; {kept}: continue with the same command and --resume" in err, err
    # the way a real run stops between its training loops (stop_at_once_on_signals): a review found it unchanged
    import signal

    from fewshot.train.stop_signal import StopRequested

    def stopped(args, extra):
        raise StopRequested(signal.SIGINT, None)

    assert cli._dispatch(SimpleNamespace(command="run", out=str(out)), [], {"run": stopped}) == 130
    err = capsys.readouterr().err
    assert f"outside training ({kept}); continue with the same command and --resume" in err, err


def test_a_model_name_with_a_pretrained_tag_says_it_starts_from_random_init(digits_root, tmp_path, capsys):
    """A hunt: `--model resnet18.a1_in1k` trained from random weights without a word; only `fewshot models` said
    that the tag names weights fewshot never downloads."""
    from fewshot.models.backbone import note_pretrained_tag

    rc, out, err = run_main("train", "--data", digits_root, "--out", tmp_path / "r", "--model", "test_resnet.r160_in1k",
                            "--img-size", "32", "--epochs", "1", "--device", "cpu", "--no-progress", "--datasets",
                            "digits")
    assert rc == 0, err
    assert "'.r160_in1k' names timm's pretrained weights" in err and "random init" in err
    note_pretrained_tag({"name": "test_resnet.r160_in1k", "weights": "/some/backbone.safetensors"})
    note_pretrained_tag({"name": "test_resnet", "weights": None})
    assert capsys.readouterr().err == ""  # with weights given, or without a tag: nothing to say
