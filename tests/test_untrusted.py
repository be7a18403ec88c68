"""Untrusted checkpoints and weights: nothing in a file can run code, and every bad file gets a message
that names it (and the mismatching keys), with exit status 2, never a traceback.

The crafted pickles carry a `__reduce__` payload that creates a marker file when unpickled; each test
first proves the payload is live (plain `pickle.loads` creates a marker) and then that fewshot never
creates it, whichever command reads the file (train --weights, train --resume, eval, predict, export).
"""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fewshot.models.backbone import create_backbone
from helpers.tiny import build_digits
from helpers.checks import run_main


class Payload:
    """Unpickling this calls open(marker, "w"): arbitrary code, as far as a loader is concerned."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickles(folder: Path, marker: Path) -> dict[str, Path]:
    """The same payload as a raw pickle (legacy format) and inside torch.save's zip format."""
    folder.mkdir(parents=True, exist_ok=True)
    raw, zipped = folder / "evil.pkl", folder / "evil.pt"
    raw.write_bytes(pickle.dumps({"state_dict": {"conv1.weight": Payload(marker)}}, protocol=4))
    torch.save({"model": Payload(marker), "format": "fewshot-checkpoint"}, zipped)
    return {"raw": raw, "zip": zipped}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("untrusted-data"))


@pytest.fixture(scope="module")
def run(root, tmp_path_factory):
    """A real fine-tuned run (1 epoch, 16 px) whose checkpoint the tests damage."""
    out = tmp_path_factory.mktemp("untrusted-run") / "run"
    rc, _, err = run_main(*train_argv(root, out))
    assert rc == 0, err
    return out


def train_argv(root: Path, out: Path, *extra) -> list:
    return ["train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.threads=1",
            *extra]


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PWNED"
    files = write_pickles(tmp_path / "files", marker)
    probe = tmp_path / "payload-is-live"
    pickle.loads(pickle.dumps(Payload(probe)))  # the payload really runs when unpickled normally ...
    assert probe.exists()
    return files, marker


def assert_refused(rc: int, err: str, path: Path, marker: Path) -> None:
    assert rc == 2, err
    assert "refused to load" in err and str(path) in err, err
    assert "Traceback" not in err
    assert "weights_only` set to `False`" not in err  # torch's advice to load it unsafely is not passed on
    assert not marker.exists(), "the crafted pickle ran code"  # ... and never through fewshot


# ------------------------------------------------------------------------------ crafted pickles


@pytest.mark.parametrize("kind", ["raw", "zip"])
def test_crafted_pickle_as_weights_is_refused(evil, root, tmp_path, kind):
    files, marker = evil
    rc, _, err = run_main(*train_argv(root, tmp_path / "out", "--weights", files[kind]))
    assert_refused(rc, err, files[kind], marker)
    assert not (tmp_path / "out" / "checkpoints").exists()  # refused before any training


def test_crafted_pickle_as_weights_of_pretrain_is_refused(evil, root, tmp_path):
    files, marker = evil
    rc, _, err = run_main("pretrain", "--data", root, "--out", tmp_path / "pre", "--model", "test_resnet",
                          "--img-size", "16", "--epochs", "1", "--device", "cpu", "--no-progress",
                          "--weights", files["zip"])
    assert_refused(rc, err, files["zip"], marker)


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_crafted_pickle_as_run_checkpoint_is_refused(evil, root, tmp_path, command):
    files, marker = evil
    run_dir = tmp_path / "evil-run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for name, src in (("best.pt", files["raw"]), ("last.pt", files["zip"])):
        (run_dir / "checkpoints" / name).write_bytes(src.read_bytes())
    target = tmp_path / "out.json" if command != "export" else tmp_path / "backbone.safetensors"
    extra = ["--data", root, "--out", target] if command != "export" else ["--out", target]
    for what in (run_dir, files["zip"], files["raw"]):  # a run directory and checkpoint files
        rc, _, err = run_main(command, what, *extra, *(["--device", "cpu"] if command != "export" else []))
        shown = run_dir / "checkpoints" / ("last.pt" if command == "export" else "best.pt") if what == run_dir else what
        assert_refused(rc, err, shown, marker)
        assert not target.exists()


def test_crafted_last_pt_is_refused_on_resume(evil, root, run, tmp_path):
    files, marker = evil
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(files["zip"].read_bytes())
    rc, _, err = run_main(*train_argv(root, out, "--resume"))  # no config.yaml: lost settings, last.pt not offered
    assert rc == 2 and "config.yaml is missing" in err and "--weights" not in err, err
    assert not marker.exists()
    shutil.copy(run / "config.yaml", out / "config.yaml")  # the run's settings: the resume reads last.pt
    rc, _, err = run_main(*train_argv(root, out, "--resume"))
    assert_refused(rc, err, out / "checkpoints" / "last.pt", marker)


def test_crafted_pickle_message_comes_without_warnings(evil, root):
    """One paragraph: torch's "Detected pickle protocol 4" UserWarning is not printed around it."""
    files, marker = evil
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, _, err = run_main("eval", files["raw"], "--data", root, "--device", "cpu")
    assert_refused(rc, err, files["raw"], marker)
    assert len(err.strip().splitlines()) == 1
    assert [str(w.message) for w in caught] == []


# ------------------------------------------------------------------------------ damaged checkpoints


def test_truncated_checkpoints_name_the_file(run, root, tmp_path):
    data = (run / "checkpoints" / "last.pt").read_bytes()
    cuts = [0, 1, 100, len(data) // 2, len(data) - 10]
    for n in cuts:
        bad = tmp_path / f"cut{n}.pt"
        bad.write_bytes(data[:n])
        for command in ("eval", "predict", "export"):
            extra = ["--data", root, "--out", tmp_path / "o.json", "--device", "cpu"] if command != "export" \
                else ["--out", tmp_path / "b.safetensors"]
            rc, _, err = run_main(command, bad, *extra)
            assert rc == 2 and str(bad) in err and "Traceback" not in err, (n, command, err)
            assert ("empty" if n == 0 else "truncated") in err, err
        rc, _, err = run_main(*train_argv(root, tmp_path / f"w{n}", "--weights", bad))
        assert rc == 2 and str(bad) in err, err


@pytest.mark.parametrize("content", [b"hello\n", b"model weights go here", b"\x00" * 64, b"PK\x03\x04junk"])
def test_arbitrary_bytes_as_weights_name_the_file(root, tmp_path, content):
    """A text file as --weights failed inside torch's legacy reader with `KeyError: 101`: an internal error."""
    bad = tmp_path / "w.pt"
    bad.write_bytes(content)
    rc, _, err = run_main(*train_argv(root, tmp_path / "run", "--weights", bad))
    assert rc == 2 and str(bad) in err and "Traceback" not in err, err


def test_truncated_last_pt_on_resume_names_the_file(run, root, tmp_path):
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    data = (run / "checkpoints" / "last.pt").read_bytes()
    (out / "checkpoints" / "last.pt").write_bytes(data[: len(data) // 3])
    shutil.copy(run / "config.yaml", out / "config.yaml")  # the run's settings: the resume reads last.pt
    rc, _, err = run_main(*train_argv(root, out, "--resume"))
    assert rc == 2 and str(out / "checkpoints" / "last.pt") in err and "truncated" in err, err


def test_incomplete_or_foreign_checkpoints(run, root, tmp_path):
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    cases = {
        "incomplete.pt": ({k: v for k, v in ck.items() if k not in ("label_space", "img_size")}, "incomplete"),
        "list.pt": ([torch.zeros(3)], "holds a list"),
        "plain.pt": ({"conv1.weight": torch.zeros(3)}, "not a fewshot checkpoint"),
    }
    for name, (obj, words) in cases.items():
        path = tmp_path / name
        torch.save(obj, path)
        rc, _, err = run_main("eval", path, "--data", root, "--device", "cpu")
        assert rc == 2 and str(path) in err and words in err and "Traceback" not in err, err


def test_run_checkpoint_of_another_architecture_names_file_and_keys(run, root, tmp_path):
    ck = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    key = next(k for k, v in ck["model"].items() if k.startswith("backbone.") and v.ndim == 4)
    ck["model"][key] = torch.zeros(3, 3, 3, 3)
    ck["ema"] = None
    ck["model"]["backbone.extra.weight"] = torch.zeros(1)
    path = tmp_path / "other-arch.pt"
    torch.save(ck, path)
    rc, _, err = run_main("eval", path, "--data", root, "--device", "cpu")
    assert rc == 2 and str(path) in err and key in err and "backbone.extra.weight" in err, err


# ------------------------------------------------------------------------------ weights of the wrong model


def test_weights_of_another_architecture_name_file_and_keys(root, tmp_path):
    import timm

    path = tmp_path / "resnet18.pt"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), path)
    for strict in ("true", "false"):
        rc, _, err = run_main(*train_argv(root, tmp_path / f"o-{strict}", "--weights", path,
                                          f"model.strict={strict}"))
        assert rc == 2 and "Traceback" not in err, err
        assert f"weights file {path} does not fit the model" in err
        assert "layer1.0.conv1.weight: file (64, 64, 3, 3) vs model (32, 32, 3, 3)" in err, err
        if strict == "true":
            assert "missing key(s): conv1.0.weight" in err and "unexpected key(s): conv1.weight" in err, err


def _backbone_state() -> tuple[dict, str]:
    state = {k: v.clone().contiguous() for k, v in create_backbone("test_resnet", img_size=16).state_dict().items()}
    conv = next(k for k, v in state.items() if v.ndim == 4)
    return state, conv


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.uint8])
def test_safetensors_with_a_wrong_dtype(root, tmp_path, dtype):
    state, conv = _backbone_state()
    state[conv] = state[conv].to(dtype)
    path = tmp_path / "wrong-dtype.safetensors"
    save_file(state, str(path))
    rc, _, err = run_main(*train_argv(root, tmp_path / "o", "--weights", path))
    dt = str(dtype).replace("torch.", "")
    assert rc == 2 and str(path) in err and f"{conv}: file dtype {dt} vs model float32" in err, err
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_safetensors_in_half_precision_load(root, tmp_path):
    """The dtype check refuses what is not a float; fp16/bf16 weights of the right model are fine."""
    from fewshot.models.weights import load_backbone_weights

    state, conv = _backbone_state()
    path = tmp_path / "half.safetensors"
    save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in state.items()}, str(path))
    model = create_backbone("test_resnet", img_size=16)
    assert load_backbone_weights(model, path)["missing"] == []
    torch.testing.assert_close(model.state_dict()[conv], state[conv].to(torch.bfloat16).float())


def test_safetensors_with_a_wrong_shape_or_a_broken_header(root, tmp_path):
    state, conv = _backbone_state()
    state[conv] = state[conv][:, :1].contiguous()
    path = tmp_path / "wrong-shape.safetensors"
    save_file(state, str(path))
    rc, _, err = run_main(*train_argv(root, tmp_path / "o1", "--weights", path))
    shape = tuple(state[conv].shape)
    assert rc == 2 and str(path) in err and f"{conv}: file {shape}" in err, err

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":{\"dtype\":\"F32\",")
    lying = tmp_path / "lying.safetensors"  # the header promises more bytes than the file has
    header = b'{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}'
    lying.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 16)
    for bad in (broken, lying):
        rc, _, err = run_main(*train_argv(root, tmp_path / f"o-{bad.stem}", "--weights", bad))
        assert rc == 2 and f"cannot read {bad} as safetensors" in err and "Traceback" not in err, err


def test_every_load_is_weights_only_or_safetensors():
    """Static guard over src/: every torch.load passes weights_only=True; no pickle/np.load(allow_pickle)."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "fewshot"
    loads, unsafe = [], []
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(src).as_posix()}:{node.lineno}"
            if (owner, node.func.attr) == ("torch", "load"):
                loads.append(where)
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    unsafe.append(where)
            if owner in ("pickle", "dill", "joblib") and node.func.attr in ("load", "loads"):
                unsafe.append(where)
            if (owner, node.func.attr) == ("np", "load") and "allow_pickle" in kw:
                unsafe.append(where)
    assert loads and not unsafe, unsafe


@pytest.mark.parametrize("change, words", [
    ({"img_size": 3000}, "img_size 3000 is not a whole number in 1..1024"),  # 516 MB of cache for 20 images
    ({"img_size": "32"}, "img_size '32'"),
    ({"n_parameters": "lots"}, "n_parameters 'lots'"),
    ({"config": [1]}, "not a fine-tuned checkpoint this version can use"),
    ({"label_space": None}, "not a fine-tuned checkpoint this version can use"),
])
def test_checkpoint_fields_of_the_wrong_kind_are_user_errors(run, root, tmp_path, change, words):
    """Crafted but safe checkpoints ended in exit 1 (TypeError, KeyError, ...) or, with a huge img_size, in
    GBs of image cache; a checkpoint is user input, so what does not fit is exit 2 naming the file."""
    ck = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ck.update(change)
    path = tmp_path / "crafted.pt"
    torch.save(ck, path)
    rc, _, err = run_main("predict", path, "--data", root, "--out", tmp_path / "p.json", "--device", "cpu")
    assert rc == 2 and str(path) in err and words in err and "Traceback" not in err, err
    assert not (root / ".fewshot_cache").exists() or all(
        f.stat().st_size < 50_000_000 for f in (root / ".fewshot_cache").iterdir())


def test_an_export_recording_a_huge_image_size_is_refused(root, tmp_path):
    state, _ = _backbone_state()
    path = tmp_path / "big.safetensors"
    save_file(state, str(path), metadata={"model": "test_resnet", "img_size": "2500"})
    # no --img-size: the file's would be adopted
    rc, _, err = run_main("train", "--data", root, "--out", tmp_path / "r", "--model", "test_resnet", "--weights", path,
                          "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress")
    assert rc == 2 and "records img_size 2500" in err, err


def test_a_deflated_torch_zip_is_refused_before_it_is_inflated(run, root, tmp_path):
    import zipfile

    src, path = run / "checkpoints" / "best.pt", tmp_path / "bomb.pt"
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as b:
        for info in a.infolist():
            b.writestr(info.filename, a.read(info.filename))
    rc, _, err = run_main("predict", path, "--data", root, "--out", tmp_path / "p.json", "--device", "cpu")
    assert rc == 2 and "compressed members" in err, err


def test_yaml_alias_bombs_and_terminal_escapes_from_run_files_are_harmless(run, tmp_path):
    """A run folder from anyone: nested YAML aliases in config.yaml exhausted the memory of `compare`;
    rich markup or escape codes in its names reached the terminal (a `[/bold]` crashed compare)."""
    import shutil

    from fewshot.config import load_yaml
    from fewshot.errors import UserError

    bomb = tmp_path / "bomb.yaml"
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join(['*a%d' % (i - 1)] * 9)}]" for i in range(1, 9)]
    bomb.write_text("\n".join(levels) + "\nmodel:\n  name: *a8\n")
    with pytest.raises(UserError, match="nested YAML aliases"):
        load_yaml(bomb)
    odd = tmp_path / "odd"
    shutil.copytree(run, odd)
    for path in odd.glob("metrics*.json"):
        metrics = json.loads(path.read_text())
        name = next(iter(metrics["datasets"]))
        metrics["datasets"]["x[/bold]y\x1b]52;c;ZXZpbA==\x07"] = metrics["datasets"].pop(name)
        path.write_text(json.dumps(metrics))
    rc, out, err = run_main("compare", odd)
    assert rc == 0, err
    assert "x[/bold]y" in out and "\x1b" not in out and "\\x1b]52" in out


def test_a_stage_name_in_summary_json_never_leads_out_of_the_run(run, tmp_path):
    from fewshot.train.checkpoint import resolve_checkpoint

    folder = tmp_path / "pipeline"
    (folder / "finetune").mkdir(parents=True)
    for stage in (["finetune"], str(run), "../x"):
        (folder / "summary.json").write_text(json.dumps({"predicted_with": stage}))
        with pytest.raises(Exception) as info:
            resolve_checkpoint(folder)
        assert not isinstance(info.value, TypeError)


def test_escape_codes_in_folder_names_are_shown_escaped_in_error_messages(root, tmp_path):
    import shutil

    copy = tmp_path / "root"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".fewshot_cache"))
    name = sorted(p.name for p in copy.iterdir() if (p / "val").is_dir())[0]
    evil = "\x1b]52;c;ZXZpbA==\x07x"
    (copy / name / "train" / evil).mkdir()  # an empty train class: a layout problem
    rc, _, err = run_main(*train_argv(copy, tmp_path / "r"))
    assert rc == 2 and "\x1b" not in err and "\x07" not in err and "\\x1b]52" in err, err
    (copy / name / "train" / evil).rmdir()
    (copy / name / "val" / evil).mkdir()  # an empty val class: a warning, escaped too
    rc, _, err = run_main(*train_argv(copy, tmp_path / "r2"))
    assert "\x1b" not in err and "\x07" not in err and "\\x1b]52" in err, err


def test_escape_codes_in_dataset_names_and_answer_keys_never_reach_the_terminal(root, tmp_path, monkeypatch):
    """train's header and table, eval's table, the ids of an answer key and `fewshot run`'s header printed a
    folder's escape codes raw (a title set, a line reordered by U+202E)."""
    import shutil

    copy = tmp_path / "root"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".fewshot_cache", "unlabeled"))
    name = sorted(p.name for p in copy.iterdir() if (p / "val").is_dir())[0]
    evil = "\x1b]0;pwned\x07d\u202eevil"
    (copy / name).rename(copy / evil)
    key = json.loads((copy / evil / "test_labels.json").read_text())
    key["\x1b]0;KEYPWN\x07ghost"] = 0
    (copy / evil / "test_labels.json").write_text(json.dumps(key))

    def harmless(text):
        return not any(c in text for c in "\x1b\x07\u202e")

    rc, out, err = run_main(*train_argv(copy, tmp_path / "r"))
    assert rc == 0, err
    assert harmless(out + err) and "\\x1b]0;pwned\\x07d\\u202eevil" in out, out + err
    rc, out, err = run_main("eval", tmp_path / "r", "--data", copy, "--split", "test", "--device", "cpu")
    assert rc == 0, err
    assert harmless(out + err) and "KEYPWN" in err and "\\x1b]0;pwned" in out, out + err
    # `fewshot run` names the datasets in its first line, once the model is built (stopped here, before decoding)
    from fewshot.errors import UserError
    from fewshot.run_startup import StartupMixin

    def stop(run):
        raise UserError("stopped before decoding")

    monkeypatch.setattr(StartupMixin, "decode_inputs", stop)
    rc, out, err = run_main("run", "--data", copy, "--out", tmp_path / "x", "--model", "test_resnet",
                            "--img-size", "16", "--device", "cpu", "--no-progress")
    assert rc == 2 and "[run] test_resnet at 16px" in out and "pwned" in out and harmless(out + err), out + err


# ------------------------------------------------------------------------------ damaged run files (numbers)


def _run_state(**change) -> dict:
    state = {"version": 1, "budget_minutes": 0.7, "config": {}, "img_size": 16, "seconds": 3.0, "stages": {},
             "summary": None, "fit_seconds": [], "finished": False, "classes": None, "stage_clock": 3.0}
    state.update(change)
    return state


@pytest.mark.parametrize("change, field", [({"seconds": "abc"}, "seconds"), ({"seconds": float("nan")}, "seconds"),
                                           ({"seconds": -5}, "seconds"), ({"budget_minutes": float("inf")},
                                                                          "budget_minutes"),
                                           ({"stages": {"finetune": {"status": "began", "fit_at": "x"}}},
                                            "stages.finetune.fit_at"),
                                           ({"fit_seconds": [1, float("nan")]}, "fit_seconds"),
                                           ({"finished": "no"}, "finished"), ({"stages": []}, "stages"),
                                           ({"session_open": "yes"}, "session_open"),
                                           ({"unrecorded_sessions": "2"}, "unrecorded_sessions"),
                                           ({"unrecorded_sessions": -1}, "unrecorded_sessions")])
def test_run_state_fields_of_the_wrong_kind_are_user_errors(root, tmp_path, change, field):
    """"seconds": "abc" crashed `fewshot run --resume` with a ValueError (internal error); NaN was accepted ("done
    in nan of 0.7 minutes")."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_state.json").write_text(json.dumps(_run_state(**change)))
    rc, _, err = run_main("run", "--data", root, "--out", out, "--model", "test_resnet", "--device", "cpu",
                          "--no-progress", "--resume")
    assert rc == 2 and f"{out / 'run_state.json'} is damaged: {field} must be" in err and "Traceback" not in err, err


def test_a_run_state_as_fewshot_writes_it_passes_the_check(tmp_path):
    from fewshot.run_state import RunState, check_state_fields

    state = RunState.start(tmp_path, {"model": {"name": "x"}}, 0.7, 16, 1.5, classes={"a": ["0", "1"]})
    state.record("finetune", "began", 2.0, fit_at=2.0, epochs=3)
    state.keep_summary({"stages": {}}, [1.0], 4.0)
    check_state_fields(tmp_path / "run_state.json", json.loads((tmp_path / "run_state.json").read_text()))
    assert state.open_session() is True  # start() opened a session that nothing closed: as after a kill -9
    state.note_stop(5.0)
    assert state.open_session() is False and state.data["unrecorded_sessions"] == 1
    check_state_fields(tmp_path / "run_state.json", json.loads((tmp_path / "run_state.json").read_text()))


def test_absurd_numbers_in_metrics_json_are_shown_as_unknown(run, tmp_path):
    """metrics.json "n_parameters": 10**400 (a valid JSON int) stopped `fewshot compare` with an OverflowError."""
    import shutil

    copy = shutil.copytree(run, tmp_path / "run")
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics.update(n_parameters=10**400, train_seconds=10**400, epochs_run=10**400)
    (copy / "metrics.json").write_text(json.dumps(metrics))
    rc, out, err = run_main("compare", copy)
    assert rc == 0 and "Traceback" not in err, err
    assert "?" in out and "0" * 50 not in out, out


def test_number_formats_take_anything():
    from fewshot.report.tables import DASH, count, duration, epochs, flops, pct, rate

    for value in (10**400, -(10**400), float("nan"), float("inf"), "12", True, [1]):
        for fmt in (count, duration, epochs, pct, rate):
            assert fmt(value) == "?", (fmt, value)
        assert flops(value) == DASH
    assert count(None) == DASH and count(12_345_678) == "12,345,678 (12.3 M)" and duration(61) == "1 min 01 s"


@pytest.mark.parametrize("width", ["nan", "1e309", "0", "-1", "abc"])
def test_an_export_recording_a_bad_width_names_the_file(root, tmp_path, width):
    state, _ = _backbone_state()
    path = tmp_path / "w.safetensors"
    save_file(state, str(path), metadata={"model": "test_resnet", "width": width})
    rc, _, err = run_main("train", "--data", root, "--out", tmp_path / "r", "--model", "test_resnet", "--weights", path,
                          "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress")
    assert rc == 2 and f"weights file {path} records width" in err and "Traceback" not in err, err
