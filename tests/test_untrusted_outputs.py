"""Untrusted folders fewshot writes into or reads back: a report or run folder whose files are symbolic links to
others' (replaced by the write, never written through), a --out file that is not fewshot's (refused: exit 2, one
message), and JSON in a run folder nested deeper than Python's stack (passed over with a note). Nothing outside
what the user named is written or deleted."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fewshot.ssl.export import export_backbone
from fewshot.utils import atomic_write_bytes, new_file_mode
from helpers import forked_cli as fork
from helpers.checks import run_main
from helpers.tiny import build_digits
from helpers.tiny import tiny_train_argv as train_argv

DEEP = "[" * 200_000 + "]" * 200_000  # json.loads raised RecursionError: an internal error, not a note


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("outputs-data"))


@pytest.fixture(scope="module")
def run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs-run") / "run"
    rc, _, err = run_main(*train_argv(root, out))
    assert rc == 0, err
    return out


def copy_run(run: Path, where: Path) -> Path:
    return Path(shutil.copytree(run, where, symlinks=True))


@pytest.fixture(scope="module")
def report(run, tmp_path_factory):
    """`fewshot report RUN` made once: the earlier report folder the tests copy (copy_run) and then tamper with."""
    rep = tmp_path_factory.mktemp("outputs-report") / "rep"
    rc, _, err = run_main("report", run, "--out", rep, "--device", "cpu")
    assert rc == 0, err
    return rep


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


def test_atomic_write_into_a_pipe_through_a_link(tmp_path):
    """`--out /dev/stdout` into a pipe: realpath made it /proc/PID/fd/pipe:[N], which no one can open, and mkstemp
    beside it raised FileNotFoundError. A pipe reached through a link is written in place, as a user's path."""
    read, write = os.pipe()
    try:
        atomic_write_bytes(Path(f"/proc/self/fd/{write}"), b'{"a": 1}', follow_links=True)
        os.close(write)
        write = None
        assert os.read(read, 100) == b'{"a": 1}'
    finally:
        os.close(read)
        if write is not None:
            os.close(write)


def _write_in_child(path: Path, data: bytes, follow_links: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """atomic_write_bytes in a child process (a fork: its start is not the subject), so that a write blocked on a
    FIFO fails the test (killed at the timeout) instead of hanging it."""
    return fork.run(lambda: atomic_write_bytes(path, data, follow_links), timeout=60, **kwargs)


def test_a_fifo_at_a_name_fewshot_picks_is_replaced_not_written(tmp_path):
    """A FIFO at a run's checkpoints/last.pt was opened and written in place (as `--out /dev/stdout` is): with no
    reader the run hung there. Only a path the user typed is written in place; fewshot's own names are replaced."""
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    os.mkfifo(last)
    proc = _write_in_child(last, b"ckpt", stdout=fork.PIPE, stderr=fork.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    assert last.is_file() and last.read_bytes() == b"ckpt"
    assert [p.name for p in last.parent.iterdir()] == ["last.pt"]


def test_a_device_at_a_name_fewshot_picks_is_replaced_not_written(tmp_path):
    """A link to a device is replaced; so is a device node itself (it was overwritten in place)."""
    node = tmp_path / "index.html"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    except (PermissionError, OSError):
        pytest.skip("device nodes cannot be made here")
    atomic_write_bytes(node, b"<html>")
    assert node.is_file() and node.read_bytes() == b"<html>"


def test_a_fifo_the_user_typed_is_still_written_in_place(tmp_path):
    fifo = tmp_path / "pred.fifo"
    os.mkfifo(fifo)
    child = fork.start(lambda: print(open(fifo).read(), end=""), stdout=fork.PIPE, text=True)
    try:
        proc = _write_in_child(fifo, b"{}", follow_links=True, stdout=fork.PIPE, stderr=fork.PIPE, text=True)
        assert proc.returncode == 0, proc.stderr
        assert child.communicate(timeout=60)[0] == "{}"
    finally:
        child.kill()
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize("redirect", ["ab", "wb"])
def test_out_dev_stdout_redirected_to_a_file_appends_to_it(tmp_path, redirect):
    """`eval ... --out /dev/stdout >> results.log`: /dev/stdout resolved to results.log, which the rename replaced,
    its earlier lines gone. The file that stdout is gets the output through stdout, after what was printed."""
    log = tmp_path / "results.log"
    log.write_text("earlier\n")

    def write_between_prints():
        print("printed")
        atomic_write_bytes(Path("/dev/stdout"), b"{}\n", follow_links=True)
        print("after")

    with open(log, redirect) as fh:
        proc = fork.run(write_between_prints, stdout=fh, stderr=fork.PIPE, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    before = "earlier\n" if redirect == "ab" else ""
    assert log.read_text() == before + "printed\n{}\nafter\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.log"]


def test_out_dev_stderr_redirected_to_a_file_appends_to_it(tmp_path):
    log = tmp_path / "err.log"
    log.write_text("earlier\n")
    with open(log, "ab") as fh:
        proc = _write_in_child(Path("/dev/stderr"), b"{}", follow_links=True, stderr=fh)
    assert proc.returncode == 0 and log.read_text() == "earlier\n{}"


def test_out_dev_fd_3_appended_to_a_log_keeps_its_earlier_lines(tmp_path):
    """`--out /dev/fd/3 3>> log`: only stdout and stderr were written through; fd 3's link led to the log, which the
    rename replaced."""
    log = tmp_path / "log"
    log.write_text("earlier\n")
    with open(log, "ab") as fd3:  # the shell's 3>>log
        proc = _write_in_child(Path("/dev/fd/3"), b"{}\n", follow_links=True, fds={3: fd3}, stdout=fork.PIPE,
                               stderr=fork.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text() == "earlier\n{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["log"]


def test_out_dev_stderr_writes_at_stderrs_position_where_stdout_is_the_same_file(tmp_path):
    """`> log 2>> log`: the file was matched to stdout first and written at stdout's offset (0), over the warning
    stderr had appended; the descriptor the link names is the one written."""
    log = tmp_path / "log"

    def warn_and_write():
        print("warned", file=sys.stderr)
        atomic_write_bytes(Path("/dev/stderr"), b"{}", True)

    with open(log, "wb") as out, open(log, "ab") as err:  # the shell's >log 2>>log: two opens of one file
        proc = fork.run(warn_and_write, stdout=out, stderr=err, timeout=60)
    assert proc.returncode == 0
    assert log.read_text() == "warned\n{}"


def test_a_typed_plain_path_that_is_stdouts_file_is_replaced(tmp_path):
    """`--out m.json > m.json` names no descriptor: the file is replaced as any other, not appended to."""
    out = tmp_path / "m.json"
    out.write_text("earlier\n")

    def print_and_write():
        print("printed")
        atomic_write_bytes(out, b"{}", True)

    with open(out, "ab") as fh:
        proc = fork.run(print_and_write, stdout=fh, stderr=fork.PIPE, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "{}"


def _a_mebibyte_to_stdout() -> None:
    atomic_write_bytes(Path("/dev/stdout"), b"x" * (1 << 20), follow_links=True)


def test_out_dev_stdout_into_a_non_blocking_pipe_gets_the_whole_write(tmp_path):
    """os.write on a non-blocking pipe (as some shells and runners leave stdout) raised BlockingIOError once the
    pipe's 64 KiB were full and the reader had not caught up: a pipe is opened by name, blocking, as before."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        child = fork.start(_a_mebibyte_to_stdout, stdout=write, stderr=fork.PIPE)
        os.close(write)
        write = None
        time.sleep(1)  # the slow reader: the child fills the pipe first
        got = b""
        while chunk := os.read(read, 1 << 16):
            got += chunk
        err = child.communicate(timeout=60)[1].decode()
        assert child.returncode == 0 and len(got) == 1 << 20, err
    finally:
        os.close(read)
        if write is not None:
            os.close(write)


def test_out_dev_stdout_into_a_non_blocking_socket_gets_the_whole_write():
    """A socket cannot be opened by name (ENXIO: a service whose stdout is the journal's socket), so it is written
    through its descriptor, waiting where a non-blocking one is full."""
    import socket

    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    with ours, theirs:
        child = fork.start(_a_mebibyte_to_stdout, stdout=theirs.fileno(), stderr=fork.PIPE)
        theirs.close()
        time.sleep(1)  # the slow reader: the child fills the socket first
        got = b""
        while chunk := ours.recv(1 << 16):
            got += chunk
        err = child.communicate(timeout=60)[1].decode()
        assert child.returncode == 0 and len(got) == 1 << 20, err


def test_predict_out_dev_stdout_into_a_pipe(run, root):
    """The documented `fewshot predict RUN --out /dev/stdout | jq .`: stdout a pipe, as the shell makes it."""
    proc = fork.fewshot("predict", run, "--data", root, "--out", "/dev/stdout", "--device", "cpu", stdout=fork.PIPE,
                        stderr=fork.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    pred = json.loads(proc.stdout)  # the JSON alone: the lines naming the checkpoint and "wrote" are on stderr
    assert "n_parameters" in pred
    assert "predicting with" in proc.stderr and "wrote /dev/stdout" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ report replaces links in its --out
@pytest.mark.parametrize("name", ["index.html", "accuracy_bars.png", ".fewshot_report"])
def test_report_replaces_links_in_an_earlier_reports_folder(run, report, tmp_path, name):
    """A report folder from elsewhere whose page, a PNG or its mark is a link: the writes replace the link (they
    were refused, saying a write would go through it, which the writer no longer does)."""
    rep = copy_run(report, tmp_path / "rep")
    victim = tmp_path / "victim.txt"
    victim.write_text("IMPORTANT")
    (rep / name).unlink()
    (rep / name).symlink_to(victim)
    rc, _, err = run_main("report", run, "--out", rep, "--device", "cpu")
    assert rc == 0, err
    assert victim.read_text() == "IMPORTANT" and not (rep / name).is_symlink() and (rep / name).is_file()


@pytest.mark.parametrize("name", ["index.html", "accuracy_bars.png"])
def test_report_replaces_a_fifo_in_an_earlier_reports_folder(run, report, tmp_path, name):
    """A FIFO in place of a report's page or PNG was opened for writing: the report hung with no reader."""
    rep = copy_run(report, tmp_path / "rep")
    (rep / name).unlink()
    os.mkfifo(rep / name)
    proc = fork.fewshot("report", run, "--out", rep, "--device", "cpu", stdout=fork.PIPE, stderr=fork.PIPE, text=True,
                        timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (rep / name).is_file() and (rep / name).stat().st_size > 0


def test_report_replaces_links_in_a_downloaded_runs_own_report_folder(run, tmp_path):
    """`fewshot report RUN --out RUN/report`, as `fewshot run` tells users to rebuild a report."""
    copy = copy_run(run, tmp_path / "downloaded")
    victim = tmp_path / "victim.txt"
    victim.write_text("IMPORTANT")
    (copy / "report").mkdir()
    (copy / "report" / "index.html").symlink_to(victim)
    rc, _, err = run_main("report", copy, "--out", copy / "report", "--device", "cpu")
    assert rc == 0, err
    assert victim.read_text() == "IMPORTANT" and not (copy / "report" / "index.html").is_symlink()


def test_report_in_a_users_folder_with_links_names_the_foreign_files(run, tmp_path):
    """A project folder whose venv holds links (`.venv/bin/python -> /usr/bin/python3`) was told to remove the links,
    which breaks the venv: the folder is refused for what it is, a folder that is not a report, links untouched."""
    proj = tmp_path / "proj"
    (proj / ".venv" / "bin").mkdir(parents=True)
    (proj / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (proj / "main.py").write_text("print()\n")
    rc, _, err = run_main("report", run, "--out", proj, "--device", "cpu")
    assert rc == 2 and f"--out {proj} holds files that are not a fewshot report (main.py)" in err, err
    assert "symbolic link" not in err and "Remove the links" not in err
    assert (proj / ".venv" / "bin" / "python").is_symlink() and not (proj / "index.html").exists()
    (proj / "main.py").unlink()  # only hidden entries left: a report may go there, the venv's link kept
    rc, _, err = run_main("report", run, "--out", proj, "--device", "cpu")
    assert rc == 0, err
    assert (proj / ".venv" / "bin" / "python").is_symlink() and (proj / "index.html").is_file()


def test_report_does_not_read_a_linked_page_as_its_own(run, report, tmp_path):
    """A folder whose index.html is a link to a fewshot report elsewhere is not thereby a report folder: the page
    it points to says nothing of the folder's other files, which the report would replace."""
    rep = copy_run(report, tmp_path / "rep")
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").symlink_to(rep / "index.html")
    (web / "logo.png").write_bytes(b"mine")
    rc, _, err = run_main("report", run, "--out", web, "--device", "cpu")
    assert rc == 2 and f"--out {web} holds files that are not a fewshot report (index.html, logo.png)" in err, err
    assert (web / "index.html").is_symlink() and (web / "logo.png").read_bytes() == b"mine"


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


def test_predict_known_mode_keeps_a_users_empty_routing_file(run, root, tmp_path):
    """`{}` has no entry of the shape predict writes (it writes every dataset it predicted): a user's n.routing.json
    holding it was taken for an earlier routing and deleted."""
    routing = tmp_path / "n.routing.json"
    routing.write_text("{}\n")
    rc, _, err = run_main("predict", run, "--data", root, "--out", tmp_path / "n.json", "--device", "cpu")
    assert rc == 0, err
    assert routing.read_text() == "{}\n"


# ------------------------------------------------------------------ export and probe: fewshot's names replace links
def test_export_backbone_replaces_a_link_unless_the_user_typed_it(run, tmp_path):
    """`fewshot run` exports to RUN/backbone.safetensors, a name of fewshot's in a folder that may come from
    elsewhere: a link there is replaced. `fewshot export --out link` writes the link's target, as eval and predict."""
    victim = tmp_path / "victim.txt"
    victim.write_text("IMPORTANT")
    link = tmp_path / "backbone.safetensors"
    link.symlink_to(victim)
    export_backbone(run, link)
    assert victim.read_text() == "IMPORTANT" and not link.is_symlink() and link.stat().st_size > 100
    target = tmp_path / "real" / "bb.safetensors"
    target.parent.mkdir()
    typed = tmp_path / "typed.safetensors"
    typed.symlink_to(target)
    rc, _, err = run_main("export", run, "--out", typed)
    assert rc == 0, err
    assert typed.is_symlink() and target.stat().st_size > 100


def test_probe_out_judges_a_linked_metrics_json_as_the_link(root, tmp_path):
    """probe writes metrics.json, a name of its own, into the user's --out folder, replacing a link so named; the
    pre-check followed the link and refused its target (here a folder) though the write never goes there."""
    out = tmp_path / "probe"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "metrics.json").symlink_to(elsewhere)
    rc, _, err = run_main("probe", "--weights", "", "--data", root, "--head", "prototype", "--out", out,
                          "--model", "test_resnet", "--img-size", "16", "--device", "cpu", "--no-progress")
    assert rc == 0, err
    assert not (out / "metrics.json").is_symlink() and "protocol" in json.loads((out / "metrics.json").read_text())
    assert list(elsewhere.iterdir()) == []


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
