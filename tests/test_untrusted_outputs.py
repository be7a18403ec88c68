"""Untrusted folders fewshot writes into or reads back: a report folder whose files are symbolic links to others',
a --out file that is not fewshot's, and JSON in a run folder nested deeper than Python's stack. Each is refused
(exit 2, one message) or passed over with a note; nothing outside what the user named is written or deleted."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from fewshot.utils import atomic_write_bytes, new_file_mode
from helpers.checks import run_main
from helpers.tiny import build_digits

DEEP = "[" * 200_000 + "]" * 200_000  # json.loads raised RecursionError: an internal error, not a note


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("outputs-data"))


def train_argv(root: Path, out: Path, *extra) -> list:
    return ["train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.threads=1",
            *extra]


@pytest.fixture(scope="module")
def run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs-run") / "run"
    rc, _, err = run_main(*train_argv(root, out))
    assert rc == 0, err
    return out


def copy_run(run: Path, where: Path) -> Path:
    return Path(shutil.copytree(run, where, symlinks=True))


# ------------------------------------------------------------------ atomic writes never follow a link unasked
def test_atomic_write_replaces_a_link_rather_than_writing_its_target(tmp_path):
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("IMPORTANT")
    victim.chmod(0o604)
    folder = tmp_path / "run"
    folder.mkdir()
    link = folder / "metrics.json"
    link.symlink_to(victim)
    atomic_write_bytes(link, b"{}")
    assert victim.read_text() == "IMPORTANT"
    assert not link.is_symlink() and link.read_text() == "{}"
    assert link.stat().st_mode & 0o7777 == new_file_mode(folder / "new")  # a new file's mode, not the target's
    dangling = folder / "log.jsonl"  # a link to a file not there yet: not made there either
    dangling.symlink_to(tmp_path / "elsewhere" / "new.txt")
    atomic_write_bytes(dangling, b"x")
    assert not (tmp_path / "elsewhere" / "new.txt").exists() and dangling.read_bytes() == b"x"
    null = folder / "best.pt"  # a link to a device is replaced, not written in place
    null.symlink_to(os.devnull)
    atomic_write_bytes(null, b"ckpt")
    assert not null.is_symlink() and null.read_bytes() == b"ckpt"
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def test_atomic_write_follows_a_link_only_when_asked(tmp_path):
    """A path the user typed (`--out link.json`) still writes the link's target, the link kept."""
    target = tmp_path / "real" / "pred.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_bytes(link, b"new", follow_links=True)
    assert link.is_symlink() and target.read_text() == "new"


# ------------------------------------------------------------------ report refuses links in its --out
@pytest.mark.parametrize("name", ["index.html", "accuracy_bars.png", ".fewshot_report"])
def test_report_refuses_an_out_folder_holding_links(run, tmp_path, name):
    rep = tmp_path / "rep"
    rc, _, err = run_main("report", run, "--out", rep, "--device", "cpu")
    assert rc == 0, err
    victim = tmp_path / "victim.txt"
    victim.write_text("IMPORTANT")
    (rep / name).unlink()
    (rep / name).symlink_to(victim)
    rc, _, err = run_main("report", run, "--out", rep, "--device", "cpu")
    assert rc == 2, err
    assert f"--out {rep} holds symbolic links ({name} -> {victim})" in err and "Traceback" not in err
    assert "Remove the links" in err and len(err.strip().splitlines()) == 1
    assert victim.read_text() == "IMPORTANT" and (rep / name).is_symlink()


def test_report_refuses_links_in_a_downloaded_runs_own_report_folder(run, tmp_path):
    """`fewshot report RUN --out RUN/report`, as `fewshot run` tells users to rebuild a report."""
    copy = copy_run(run, tmp_path / "downloaded")
    victim = tmp_path / "victim.txt"
    victim.write_text("IMPORTANT")
    (copy / "report").mkdir()
    (copy / "report" / "index.html").symlink_to(victim)
    rc, _, err = run_main("report", copy, "--out", copy / "report", "--device", "cpu")
    assert rc == 2 and "holds symbolic links (index.html -> " in err, err
    assert victim.read_text() == "IMPORTANT"


def test_report_into_a_linked_out_folder_is_allowed(run, tmp_path):
    """The folder itself may be a link (the user's choice), as a run folder may."""
    (tmp_path / "disk").mkdir()
    (tmp_path / "rep").symlink_to(tmp_path / "disk")
    rc, _, err = run_main("report", run, "--out", tmp_path / "rep", "--device", "cpu")
    assert rc == 0, err
    assert (tmp_path / "disk" / "index.html").is_file()


# ------------------------------------------------------------------ predict --out replaces only its own files
def test_predict_refuses_to_replace_a_file_that_is_not_a_prediction(run, root, tmp_path):
    notes = tmp_path / "n.json"
    notes.write_text("notes\n")
    routing = tmp_path / "n.routing.json"
    routing.write_text("keep\n")
    rc, _, err = run_main("predict", run, "--data", root, "--out", notes, "--device", "cpu")
    assert rc == 2 and f"--out {notes} already holds a file that is not an earlier prediction" in err, err
    assert f"move {notes} away" in err
    assert notes.read_text() == "notes\n" and routing.read_text() == "keep\n"
    for other in ('{"a": 1}', "[1, 2]", '{"n_parameters": true}', "{}x"):  # not predict's (nor empty)
        notes.write_text(other)
        assert run_main("predict", run, "--data", root, "--out", notes, "--device", "cpu")[0] == 2
        assert notes.read_text() == other


def test_predict_leaves_a_routing_file_it_did_not_write(run, root, tmp_path):
    out = tmp_path / "n.json"
    routing = tmp_path / "n.routing.json"
    routing.write_text("keep\n")
    rc, _, err = run_main("predict", run, "--data", root, "--out", out, "--device", "cpu")
    assert rc == 0, err
    assert routing.read_text() == "keep\n"  # deleted, though never named by the user
    rc, _, err = run_main("predict", run, "--data", root, "--out", out, "--mode", "unknown", "--device", "cpu")
    assert rc == 2 and f"to {routing}, which already holds a file that is not an earlier routing file" in err, err
    assert routing.read_text() == "keep\n" and "n_parameters" in json.loads(out.read_text())


def test_predict_replaces_its_own_earlier_results(run, root, tmp_path):
    out = tmp_path / "pred_all.json"
    routing = tmp_path / "pred_all.routing.json"
    out.write_text(" {}\n")  # a placeholder holds nothing to lose (so does an empty file)
    for mode in ("unknown", "unknown", "known"):
        rc, _, err = run_main("predict", run, "--data", root, "--out", out, "--mode", mode, "--device", "cpu")
        assert rc == 0, err
        assert "n_parameters" in json.loads(out.read_text())
        assert routing.is_file() == (mode == "unknown")  # an earlier routing of its own goes in known mode


# ------------------------------------------------------------------ JSON nested too deeply in a run folder
@pytest.mark.parametrize("command", ["compare", "report"])
def test_deeply_nested_metrics_are_passed_over_with_a_note(run, tmp_path, command):
    copy = copy_run(run, tmp_path / "d")
    (copy / "metrics.json").write_text(DEEP)
    argv = [command, copy] + (["--out", tmp_path / "rep", "--device", "cpu"] if command == "report" else [])
    rc, out, err = run_main(*argv)
    assert rc == 0, err
    assert f"{copy / 'metrics.json'} is not valid JSON (nested too deeply to be read): passed over." in out + err


def test_deeply_nested_log_line_is_passed_over(run, root, tmp_path):
    copy = copy_run(run, tmp_path / "d")
    with open(copy / "log.jsonl", "a") as fh:
        fh.write(DEEP + "\n")
        fh.write('{"epoch": 0, "step": 0}\n')  # not the last line: a bad line, not a torn one
    rc, out, err = run_main("compare", copy)
    assert rc == 0 and "line(s) are not log rows fewshot writes" in out + err, err
    rc, _, err = run_main(*train_argv(root, copy, "--resume", "--epochs", "2"))  # engine.trim_log reads it
    assert rc == 0, err
    assert DEEP not in (copy / "log.jsonl").read_text()
