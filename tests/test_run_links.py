"""A run folder from elsewhere (downloaded, unpacked, shared) may hold symbolic links. fewshot writes into an existing
run folder on --resume (checkpoints, metrics, log.jsonl, plots, run_state.json) and its atomic writes follow links
(for output paths the user names): a link there would have it replace the file the link points to. Such a folder is
refused before anything is written; the user's own links (the run folder itself, `predict --out LINK`) still work.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers.checks import run_main
from helpers.tiny import build_digits

BASE = ("--model", "test_resnet", "--img-size", "16", "--batch-size", "8", "--device", "cpu", "--no-progress",
        "train.tensorboard=false", "train.threads=1")
VICTIM_TEXT = "root:x:0:0:the user's own file\n"


def train_argv(root: Path, out: Path, *extra) -> list:
    return ["train", "--data", root, "--out", out, "--epochs", "1", *BASE, *extra]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("links-data"))


@pytest.fixture(scope="module")
def run(root, tmp_path_factory):
    """A real fine-tuned run (1 epoch, 16 px) that the tests copy and plant links in."""
    out = tmp_path_factory.mktemp("links-run") / "run"
    rc, _, err = run_main(*train_argv(root, out))
    assert rc == 0, err
    return out


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


def copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def assert_links_refused(rc: int, err: str, victim: Path, *names: str) -> None:
    assert rc == 2, err
    assert "symbolic links" in err and "Traceback" not in err, err
    assert "Replace each link by a copy of the file or folder it points to" in err, err
    for name in names:
        assert name in err, err
    assert victim.read_text() == VICTIM_TEXT  # never written through the link


def test_resume_through_a_linked_best_pt_is_refused(run, root, tmp_path, victim):
    """The hunt's case: best.pt -> an arbitrary file, last.pt -> a valid checkpoint elsewhere; exit 0 and the file
    was replaced by a checkpoint."""
    out = copy_run(run, tmp_path / "downloaded")
    elsewhere = tmp_path / "elsewhere.pt"
    shutil.move(out / "checkpoints" / "last.pt", elsewhere)
    (out / "checkpoints" / "last.pt").symlink_to(elsewhere)
    (out / "checkpoints" / "best.pt").unlink()
    (out / "checkpoints" / "best.pt").symlink_to(victim)
    before = elsewhere.read_bytes()
    rc, _, err = run_main(*train_argv(root, out, "--resume", "--epochs", "3"))
    assert_links_refused(rc, err, victim, f"best.pt -> {victim}", f"last.pt -> {elsewhere}")
    assert elsewhere.read_bytes() == before


@pytest.mark.parametrize("entry", ["metrics.json", "log.jsonl", "plots", "checkpoints"])
def test_resume_with_a_linked_file_or_folder_is_refused(run, root, tmp_path, victim, entry):
    out = copy_run(run, tmp_path / "downloaded")
    target = victim
    if entry in ("plots", "checkpoints"):  # a linked folder: its files would be written in the folder it names
        target = tmp_path / "other-folder"
        if (out / entry).is_dir():
            shutil.move(out / entry, target)
        else:
            target.mkdir()
    path = out / entry
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    path.symlink_to(target)
    listed = sorted(os.listdir(target)) if target.is_dir() else None
    rc, _, err = run_main(*train_argv(root, out, "--resume", "--epochs", "2"))
    assert_links_refused(rc, err, victim, f"{entry} -> {target}")
    if listed is not None:
        assert sorted(os.listdir(target)) == listed


def test_at_most_three_links_are_named(run, root, tmp_path, victim):
    out = copy_run(run, tmp_path / "downloaded")
    for i in range(5):
        (out / f"extra{i}").symlink_to(victim)
    rc, _, err = run_main(*train_argv(root, out, "--resume", "--epochs", "2"))
    assert_links_refused(rc, err, victim)
    assert err.count(f"-> {victim}") == 3 and "and more" in err, err


def test_a_run_folder_that_is_itself_a_link_resumes(run, root, tmp_path):
    """The run folder itself may be a link (the user's choice, e.g. onto a bigger disk)."""
    real = copy_run(run, tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    rc, _, err = run_main(*train_argv(root, link, "--resume", "--epochs", "2"))
    assert rc == 0, err
    assert not (real / "checkpoints" / "last.pt").is_symlink()


def test_fewshot_run_resume_with_a_link_is_refused(root, tmp_path, victim):
    out = tmp_path / "downloaded-run"
    out.mkdir()
    (out / "run_state.json").write_text(json.dumps({"config": {}, "budget_minutes": 1, "stages": {}, "seconds": 0}))
    (out / "summary.json").symlink_to(victim)
    rc, _, err = run_main("run", "--data", root, "--out", out, "--model", "test_resnet", "--device", "cpu",
                          "--no-progress", "--resume")
    assert_links_refused(rc, err, victim, f"summary.json -> {victim}")


def test_a_folder_of_the_user_s_own_files_is_refused_as_not_empty_not_for_its_links(root, tmp_path):
    """--out at a folder holding a venv (links inside) was walked whole and refused with advice to replace the links
    by copies, which would have broken the venv; it holds no run, and that is what is said."""
    out = tmp_path / "project"
    (out / ".venv" / "bin").mkdir(parents=True)
    (out / ".venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (out / "notes.txt").write_text("mine\n")
    rc, _, err = run_main(*train_argv(root, out))
    assert rc == 2 and "is not empty (notes.txt)" in err and "symbolic links" not in err, err
    assert sorted(os.listdir(out)) == [".venv", "notes.txt"]


def test_predict_out_may_still_be_the_users_link(run, root, tmp_path):
    """The user's own output path keeps following its link (atomic_write_bytes): only run folders are checked."""
    target = tmp_path / "real-pred.json"
    target.write_text("{}")
    link = tmp_path / "pred.json"
    link.symlink_to(target)
    rc, _, err = run_main("predict", run, "--data", root, "--out", link, "--device", "cpu")
    assert rc == 0, err
    assert link.is_symlink() and json.loads(target.read_text()) != {}


def test_a_checkpoint_that_is_no_checkpoint_is_not_quoted(run, root, tmp_path, victim):
    """The load error quoted the file's first bytes: b'root:x:0' for a best.pt linked to /etc/passwd."""
    out = copy_run(run, tmp_path / "downloaded")
    for name in ("best.pt", "last.pt"):
        (out / "checkpoints" / name).write_text(VICTIM_TEXT)
    rc, _, err = run_main("eval", out, "--data", root, "--device", "cpu")
    assert rc == 2 and "not a PyTorch" in err and "text file" in err, err
    assert "root:x" not in err, err
    binary = tmp_path / "w.pt"
    binary.write_bytes(b"\x01\x02secret\x00" * 8)
    rc, _, err = run_main(*train_argv(root, tmp_path / "w-run", "--weights", binary))
    assert rc == 2 and "secret" not in err and "binary data" in err, err


def test_a_planted_lock_file_link_is_refused_not_truncated(root, tmp_path, victim):
    """`fewshot run --out DIR` into a folder holding only .fewshot.lock -> a file: the folder counted as empty (dot
    files are passed over), and taking the lock truncated the link's target and wrote the pid into it."""
    out = tmp_path / "o"
    out.mkdir()
    (out / ".fewshot.lock").symlink_to(victim)
    rc, _, err = run_main("run", "--data", root, "--out", out, "--baseline", "--budget-minutes", "0.1", "--model",
                          "test_resnet", "--img-size", "16", "--device", "cpu", "--no-progress", "run.report=false")
    assert rc == 2 and ".fewshot.lock' is a symbolic link" in err and "Traceback" not in err, err
    assert victim.read_text() == VICTIM_TEXT


def test_a_lock_file_hard_linked_to_another_file_is_replaced_not_truncated(run, root, tmp_path, victim):
    out = copy_run(run, tmp_path / "downloaded")
    (out / ".fewshot.lock").unlink(missing_ok=True)
    os.link(victim, out / ".fewshot.lock")
    rc, _, err = run_main(*train_argv(root, out, "--resume", "--epochs", "2"))
    assert rc == 0, err
    assert victim.read_text() == VICTIM_TEXT and os.stat(victim).st_nlink == 1


def test_resuming_a_hard_linked_copy_of_a_run_leaves_the_original_as_it_was(run, root, tmp_path):
    """`cp -al RUN SNAP` (or rsync --link-dest) shares every file: resuming SNAP appended its epochs to RUN's
    log.jsonl (checkpoints and metrics are replaced by rename, which already unlinked them)."""
    original = copy_run(run, tmp_path / "original")
    snap = tmp_path / "snap"
    for src in sorted(original.rglob("*")):
        dst = snap / src.relative_to(original)
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    rc, _, err = run_main(*train_argv(root, snap, "--resume", "--epochs", "2"))
    assert rc == 0, err
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
    assert len((snap / "log.jsonl").read_text().splitlines()) == 2
