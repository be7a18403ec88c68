"""`--out /dev/stdout` holds the JSON alone (the command's own lines go to stderr), and an answer key's class is
shown as JSON writes it (hunt fBX)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot.errors import UserError
from helpers import forked_cli as fork
from helpers.tiny import trained_tiny_run


@pytest.fixture(scope="module")
def tiny_run(digits_root, tmp_path_factory) -> Path:
    return trained_tiny_run(digits_root, tmp_path_factory.mktemp("fbx") / "run")


def _fewshot(*argv, cwd, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """`python -m fewshot ARGV` as a shell runs it, stdout piped (or into ``stdout``), stderr apart: a fork of this
    process with those descriptors (the interpreter's start is not the subject; its seconds of imports are saved)."""
    return fork.fewshot(*argv, cwd=cwd, timeout=300, stdout=stdout, stderr=fork.PIPE, stdin=subprocess.DEVNULL,
                        text=True)


@pytest.mark.parametrize("out", ["/dev/stdout", "/dev/fd/1"])
def test_predict_into_stdout_writes_only_the_json_there(tiny_run, digits_root, tmp_path, out):
    """`predict ... --out /dev/stdout > p.json` wrapped the JSON in "predicting with", "[predict] class-balanced"
    and "wrote /dev/stdout" lines: json.load failed on the file."""
    done = _fewshot("predict", tiny_run, "--data", digits_root, "--out", out, "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    pred = json.loads(done.stdout)
    assert pred["n_parameters"] > 0 and len(pred) == 3, sorted(pred)
    assert "predicting with" in done.stderr and f"wrote {out}:" in done.stderr, done.stderr
    assert "[predict] class-balanced" in done.stderr, done.stderr


def test_eval_into_stdout_writes_only_the_json_there_and_the_table_to_stderr(tiny_run, digits_root, tmp_path):
    done = _fewshot("eval", tiny_run, "--data", digits_root, "--out", "/dev/stdout", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    assert metrics["split"] == "val" and "mean_acc1" in metrics
    assert "val accuracy of" in done.stderr and "mean" in done.stderr, done.stderr


def test_eval_into_the_file_stdout_also_goes_to_holds_the_json(tiny_run, digits_root, tmp_path):
    """`eval ... --out m.json > m.json`: the output is the data there too."""
    target = tmp_path / "m.json"
    with open(target, "w") as fh:
        done = _fewshot("eval", tiny_run, "--data", digits_root, "--out", target, "--device", "cpu", cwd=tmp_path,
                        stdout=fh)
    assert done.returncode == 0, done.stderr
    assert json.loads(target.read_text())["split"] == "val"
    assert "val accuracy of" in done.stderr, done.stderr


def test_eval_into_a_file_keeps_its_table_on_stdout(tiny_run, digits_root, tmp_path):
    done = _fewshot("eval", tiny_run, "--data", digits_root, "--out", tmp_path / "m.json", "--device", "cpu",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "val accuracy of" in done.stdout and "val accuracy of" not in done.stderr, done.stdout


def test_which_outputs_are_stdout(monkeypatch, tmp_path):
    """A file sys.stdout writes to is stdout; /dev/null for both moves nothing (no data to keep apart)."""
    from fewshot.cli_process import _is_stdout

    with open(tmp_path / "log", "w") as fh:
        monkeypatch.setattr(sys, "stdout", fh)
        assert _is_stdout(tmp_path / "log")
        assert not _is_stdout(tmp_path / "other") and not _is_stdout(tmp_path)
    with open(os.devnull, "w") as fh:
        monkeypatch.setattr(sys, "stdout", fh)
        assert not _is_stdout(os.devnull)


@pytest.mark.parametrize("value, shown", [("true", "true"), ("null", "null"), ("false", "false"), ("1.5", "1.5"),
                                          ("[1, 2]", "[1, 2]"), ('{"a": 1}', '{"a": 1}'), ('"three"', "'three'"),
                                          ("[" + "7, " * 40 + "7]", "[7, 7, 7"), ("-1", "-1")])
def test_an_answer_keys_class_is_shown_as_the_json_says_it(tmp_path, value, shown):
    """`{"0": true}` was reported as "has class True", `null` as "has class None": words the file never says."""
    from fewshot.eval.predict import load_answer_key

    key = tmp_path / "test_labels.json"
    key.write_text('{"0": %s}' % value)
    with pytest.raises(UserError) as caught:
        load_answer_key(key, num_classes=10)
    message = str(caught.value)
    assert f"image 0 has class {shown}" in message, message
    assert "True" not in message and "None" not in message and len(message) < 300, message
