"""Disk and file-system messages: a long output name, a full disk, a symbolic link as --out or --data, too few
inodes, a full data root for the image cache. Each says the path the user gave and what works, with exit 2.

Simulated where it can be (os.fsync raising ENOSPC, os.statvfs reporting few inodes, os.access answering a
read-only folder), so the tests run anywhere; one real full tmpfs, which skips where mounting is not allowed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import fewshot.utils as utils
from fewshot.data.cache_words import _warn_no_cache
from fewshot.data.cache_files import ensure_writable_dir
from fewshot.data.layout import list_datasets
from fewshot.errors import UserError
from fewshot.train.run_dir import ATOMIC_TEMP
from helpers.checks import run_main
from helpers.tiny import build_digits
from helpers.tiny import tiny_train_argv as train_argv


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("msg-data"))


@pytest.fixture(scope="module")
def run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("msg-run") / "run"
    rc, _, err = run_main(*train_argv(root, out))
    assert rc == 0, err
    return out


def enospc_on_fsync(monkeypatch):
    """A disk that fills while the data is flushed (as NFS and quotas report it): an OSError without a name."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(utils.os, "fsync", fsync)


# ------------------------------------------------------------------------------------- 1. a long output name

def test_an_output_name_the_file_system_accepts_is_written_whatever_its_length(tmp_path, monkeypatch):
    """The temp name was `.NAME.XXXXXXXX.tmp`: a NAME over 241 bytes failed with ENAMETOOLONG on a name the user
    never chose, after all the work. Now bounded, in the same folder, unique, removed."""
    temps = []
    real = utils.tempfile.mkstemp

    def mkstemp(*a, **kw):
        fd, name = real(*a, **kw)
        temps.append(name)
        return fd, name
    monkeypatch.setattr(utils.tempfile, "mkstemp", mkstemp)
    out = tmp_path / ("p" * 250 + ".json")  # 255 bytes: the longest name most file systems take
    utils.atomic_write_text(out, "{}\n")
    utils.atomic_write_text(out, "{}\n")  # replaced, again through a temp file
    assert out.read_text() == "{}\n"
    assert len(temps) == 2 and temps[0] != temps[1]
    for name in temps:
        assert Path(name).parent == tmp_path and len(os.fsencode(Path(name).name)) < 100
        assert ATOMIC_TEMP.fullmatch(Path(name).name)  # still what remove_stale_temp_files cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temp file left
    short = tmp_path / "metrics.json"  # a short name keeps its whole name (the engine's `.*.pt.*.tmp`)
    assert utils.temp_prefix(short.name) == ".metrics.json."
    assert len(os.fsencode(utils.temp_prefix("é" * 200))) <= utils.TEMP_NAME_BYTES + 2


def test_export_writes_an_output_whose_name_is_long(run, tmp_path):
    out = tmp_path / ("b" * 240 + ".safetensors")  # 252 bytes
    rc, _, err = run_main("export", run, "--out", out)
    assert rc == 0, err
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == [out.name]


@pytest.mark.parametrize("mode", ["known", "unknown"])
def test_predict_with_a_long_out_name_writes_it_or_refuses_before_the_work(run, root, tmp_path, mode):
    """predict also writes (or, in known mode, removes a stale) OUT.routing.json beside --out: with a 250-byte
    --out that name passes 255 bytes, and predict failed after the whole prediction. Known mode now writes
    pred_all.json; unknown mode, which needs the routing file, refuses at once."""
    out = tmp_path / ("p" * 245 + ".json")
    rc, _, err = run_main("predict", run, "--data", root, "--out", out, "--mode", mode, "--device", "cpu",
                          "--no-progress")
    if mode == "known":
        assert rc == 0, err
        assert [p.name for p in tmp_path.iterdir()] == [out.name]
    else:
        assert rc == 2 and "shorter --out" in err and "predicting with" not in err, err
        assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ 2. a full disk

def test_a_full_disk_names_the_output_not_a_temp_file(tmp_path, monkeypatch):
    enospc_on_fsync(monkeypatch)
    out = tmp_path / "sub" / "p.json"
    with pytest.raises(OSError) as caught:
        utils.atomic_write_text(out, "x")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(out)
    assert list(out.parent.iterdir()) == []  # the temp file removed

    def unwritable_temp(*a, **kw):  # the temp file's own name is replaced by the output's too
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".p.json.abcdefgh.tmp"))
    monkeypatch.setattr(utils.tempfile, "mkstemp", unwritable_temp)
    with pytest.raises(OSError) as caught:
        utils.atomic_write_text(out, "x")
    assert caught.value.filename == str(out)


@pytest.mark.parametrize("command", ["predict", "eval", "export", "report"])
def test_every_writing_command_names_its_output_on_a_full_disk(command, run, root, tmp_path, monkeypatch):
    """docs/reliability.md section 6 promises the path and the reason: a full disk said only the reason."""
    out = tmp_path / {"predict": "p.json", "eval": "m.json", "export": "b.safetensors", "report": "rep"}[command]
    argv = {"predict": ("predict", run, "--data", root, "--out", out, "--device", "cpu"),
            "eval": ("eval", run, "--data", root, "--out", out, "--device", "cpu"),
            "export": ("export", run, "--out", out),
            "report": ("report", run, "--out", out)}[command]
    enospc_on_fsync(monkeypatch)
    rc, _, err = run_main(*argv)
    assert rc == 2, err
    assert f"fewshot {command}: error: {out}" in err and "Traceback" not in err, err
    assert "No space left on device" in err and "free some space" in err, err


def test_data_names_its_output_on_a_full_disk(tmp_path, monkeypatch):
    from PIL import Image

    def full(self, *a, **kw):  # PIL's write on a full disk: an OSError without a name
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Image.Image, "save", full)
    rc, _, err = run_main("data", "digits", "--out", tmp_path / "demo")
    assert rc == 2, err
    assert f"fewshot data: error: {tmp_path / 'demo'}: No space left on device" in err and "Traceback" not in err, err
    assert not (tmp_path / "demo").exists()  # the build's own folder removed again


def test_a_full_disk_at_the_end_of_train_advises_resume_which_works(root, tmp_path, monkeypatch):
    """"run the command again" was refused: the folder "already holds a run"; --resume writes the results."""
    out = tmp_path / "run"
    real = utils._atomic_write

    def full_at_metrics(path, data):
        if Path(path).name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)
    monkeypatch.setattr(utils, "_atomic_write", full_at_metrics)
    rc, _, err = run_main(*train_argv(root, out))
    assert rc == 2, err
    assert f"error: {out / 'metrics.json'}: No space left on device" in err, err
    assert "--resume" in err and "run the command again" not in err, err
    monkeypatch.setattr(utils, "_atomic_write", real)
    rc, _, err = run_main(*train_argv(root, out, "--resume"))
    assert rc == 0, err
    assert (out / "metrics.json").is_file()


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A fresh tmpfs at `path` (root only); skips the test with the reason when mounting is not possible."""
    path.mkdir(parents=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and `mount`; the simulated tests cover these code paths")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_really_full_tmpfs_names_the_output(run, tmp_path):
    with tmpfs(tmp_path / "small", "size=64k") as small:
        (small / "fill").write_bytes(b"\0" * (64 << 10))  # tmpfs may take it whole or in part
        rc, _, err = run_main("export", run, "--out", small / "b.safetensors")
        assert rc == 2, err
        assert f"error: {small / 'b.safetensors'}: No space left on device" in err, err
        assert sorted(p.name for p in small.iterdir()) == ["fill"]


# -------------------------------------------------------------------------- 3. a link to a read-only folder

def test_a_link_into_a_read_only_folder_is_refused_before_the_work(run, root, tmp_path, monkeypatch):
    """The link's own folder was checked, so predict predicted, then failed in the target's folder with
    "choose another the output"."""
    ro = tmp_path / "ro"
    ro.mkdir()
    link = tmp_path / "p.json"
    link.symlink_to(ro / "p.json")
    real = os.access
    monkeypatch.setattr(utils.os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    rc, out, err = run_main("predict", run, "--data", root, "--out", link, "--device", "cpu")
    assert rc == 2, err
    assert "predicting with" not in out + err, out + err  # refused before the work
    assert f"--out {link}: the folder {ro} cannot be written" in err and "choose another --out" in err, err
    with pytest.raises(UserError) as caught:  # a write deep in a command names no option
        utils.atomic_write_text(link, "x", follow_links=True)  # a path the user typed: its target
    assert "the output" in str(caught.value) and "another the output" not in str(caught.value)
    assert "choose another place for it" in str(caught.value)


# ------------------------------------------------------------------------ 4. a dangling link as train --out

def test_a_dangling_link_as_train_out_is_followed_as_predict_does(root, tmp_path):
    """It said only "File exists" (mkdir of the link)."""
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "elsewhere" / "run")
    rc, _, err = run_main(*train_argv(root, link))
    assert rc == 0, err
    assert link.is_symlink() and (tmp_path / "elsewhere" / "run" / "metrics.json").is_file()


def test_a_dangling_link_that_cannot_be_followed_says_what_it_is(tmp_path):
    (tmp_path / "file").write_text("x")
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "file" / "run")  # below a file: cannot be made
    with pytest.raises(UserError) as caught:
        ensure_writable_dir(link, "run")
    assert f"a dangling symbolic link to {tmp_path / 'file' / 'run'}" in str(caught.value)
    assert "File exists" not in str(caught.value)


# ---------------------------------------------------------------------------------------- 5. free inodes

def inodes(monkeypatch, files: int, free: int, avail: int) -> None:
    """os.statvfs reporting these inode counts (f_files, f_ffree, f_favail) for every path."""
    real = os.statvfs

    def counted(path):
        st = real(path)
        return os.statvfs_result((*st[:5], files, free, avail, *st[8:]))
    monkeypatch.setattr(os, "statvfs", counted)


def no_new_files(monkeypatch, after: int = 0) -> list:
    """The inode check's probe files fail with ENOSPC after `after` were made, as on a file system out of inodes;
    returns the names of those made (the atomic writes' temp files are left alone)."""
    import tempfile

    real, made = tempfile.mkstemp, []

    def mkstemp(*a, prefix=None, **kw):
        if prefix == ".inode-probe." and len(made) >= after:
            raise OSError(errno.ENOSPC, "No space left on device")
        fd, name = real(*a, prefix=prefix, **kw)
        if prefix == ".inode-probe.":
            made.append(name)
        return fd, name
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return made


def test_too_few_free_inodes_fail_before_training(root, tmp_path, monkeypatch):
    """A tmpfs with nr_inodes=7 failed after epoch 1 with "No space left on device" while df showed room."""
    inodes(monkeypatch, 7, 3, 3)
    made = no_new_files(monkeypatch, after=3)
    out = tmp_path / "run"
    rc, _, err = run_main(*train_argv(root, out))
    assert rc == 2, err
    assert "inodes" in err and str(out) in err and "Traceback" not in err, err
    assert "a new file could not be made there (No space left on device)" in err, err
    assert not (out / "checkpoints" / "last.pt").exists()
    assert len(made) == 3 and not any(Path(name).exists() for name in made)  # the probe's files removed

    inodes(monkeypatch, 0, 0, 0)  # f_files 0: a file system without an inode count (btrfs) is not refused
    rc, _, err = run_main(*train_argv(root, out))
    assert rc == 0, err


# ------------------------------------------------------------------------- 6. the cache, a broken --data

def test_a_full_writable_data_root_is_not_advised_xdg_cache_home(tmp_path, capsys, monkeypatch):
    """predict and eval cache in ROOT/.fewshot_cache while ROOT can be written: XDG_CACHE_HOME changed nothing."""
    monkeypatch.setattr("fewshot.data.cache_words._WARNED", set())
    _warn_no_cache(tmp_path / ".fewshot_cache", OSError(errno.ENOSPC, "No space left on device"), 10**6)
    err = capsys.readouterr().err
    assert "XDG_CACHE_HOME" not in err and "free some space" in err, err
    real = os.access  # a read-only root: the user cache is used, and XDG_CACHE_HOME does choose it
    monkeypatch.setattr("fewshot.data.cache_words.os.access", lambda p, m: False if Path(p) == tmp_path else real(p, m))
    _warn_no_cache(tmp_path / "x" / ".fewshot_cache", OSError(errno.ENOSPC, "No space left on device"), 10**6)
    _warn_no_cache(tmp_path / ".fewshot_cache" / "y", OSError(errno.EIO, "I/O error"), 10**6)
    assert capsys.readouterr().err.count("XDG_CACHE_HOME=DIR chooses another") == 2


def test_a_dangling_or_looping_data_link_says_what_it_is(tmp_path):
    dangling = tmp_path / "data"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(UserError) as caught:
        list_datasets(dangling)
    assert "dangling" in str(caught.value) and "fewshot data digits" not in str(caught.value)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(UserError) as caught:
        list_datasets(tmp_path / "a")
    assert "loop" in str(caught.value) and "fewshot data digits" not in str(caught.value)


# ------------------------------------------------------------------------- 7. an --out that cannot be searched

@pytest.mark.parametrize("raised", ["eacces", "interrupt"])
def test_an_unsearchable_out_still_ends_with_its_message(root, tmp_path, monkeypatch, raised):
    """The advice looked for checkpoints/last.pt with Path.is_file(), which raises PermissionError under a folder
    that cannot be searched: an EACCES there (or a Ctrl-C before training) became a traceback, not exit 2 (130)."""
    from fewshot.train import run_dir

    out = tmp_path / "run"
    real = os.stat

    def unsearchable(path, *a, **kw):  # what stat answers below a folder without x permission (root passes chmod)
        if str(os.fspath(path)).startswith(str(out) + os.sep):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, *a, **kw)

    def fail(where):
        monkeypatch.setattr(os, "stat", unsearchable)
        if raised == "interrupt":
            raise KeyboardInterrupt
        raise PermissionError(errno.EACCES, "Permission denied", str(where / "config.yaml"))
    monkeypatch.setattr(run_dir, "refuse_if_being_written", fail)
    rc, _, err = run_main(*train_argv(root, out))
    monkeypatch.setattr(os, "stat", real)
    assert "Traceback" not in err and "internal error" not in err, err
    if raised == "interrupt":
        assert rc == 130 and "interrupted; nothing to resume" in err, err
    else:
        assert rc == 2 and f"error: {out / 'config.yaml'}: Permission denied (check the path" in err, err
        assert "then run the command again" in err, err


def test_a_really_inode_starved_tmpfs_is_refused_before_training(root, tmp_path):
    with tmpfs(tmp_path / "few", "size=64m,nr_inodes=16") as few:
        rc, _, err = run_main(*train_argv(root, few / "run"))
        assert rc == 2, err
        assert "free inodes" in err and "could not be made there" in err and "Traceback" not in err, err
        assert not list((few / "run").glob(".inode-probe.*"))


class _Probed:
    """What Engine.check_disk_space reads of an engine: a small checkpoint in an empty run folder."""

    def __init__(self, run_dir: Path):
        self.ctx = type("Ctx", (), {"is_main": True})()
        self.cfg = {"train": {}}
        self.run_dir, self.ckpt_dir = run_dir, run_dir / "checkpoints"

    def checkpoint_bytes(self) -> int:
        return 1 << 10


def test_inodes_a_file_system_reports_but_does_not_track_do_not_refuse_the_run(tmp_path, monkeypatch):
    """A FUSE or network file system reporting f_files with no free inodes (it does not count them) was refused
    on every train: the files are made in the folder first, and only a failure there refuses."""
    from fewshot.train.engine import Engine

    inodes(monkeypatch, 1000, 0, 0)
    Engine.check_disk_space(_Probed(tmp_path))  # made and removed: the run goes on
    assert list(tmp_path.iterdir()) == []
    no_new_files(monkeypatch)
    with pytest.raises(UserError, match="0 free inodes"):
        Engine.check_disk_space(_Probed(tmp_path))


@pytest.mark.parametrize("euid", [0, 1000])
def test_root_counts_the_inodes_kept_for_it(tmp_path, monkeypatch, euid):
    """f_favail leaves out the inodes reserved for root, who may use them (f_ffree): root was refused with room."""
    from fewshot.train.engine import Engine

    inodes(monkeypatch, 1000, 500, 2)  # 500 free, 2 of them for anyone
    monkeypatch.setattr(os, "geteuid", lambda: euid, raising=False)
    made = no_new_files(monkeypatch)  # to be refused, a run must fail to make its files
    if euid == 0:
        Engine.check_disk_space(_Probed(tmp_path))
        assert made == []  # no probe needed: enough inodes counted
    else:
        with pytest.raises(UserError) as caught:
            Engine.check_disk_space(_Probed(tmp_path))
        assert "2 free inodes" in str(caught.value) and str(tmp_path) in str(caught.value)


def test_a_probe_that_fails_for_another_reason_is_left_to_the_writes(tmp_path, monkeypatch):
    """Only ENOSPC or EDQUOT tells of inodes: a refused permission is said by the write that meets it."""
    import tempfile

    from fewshot.train.engine import Engine

    inodes(monkeypatch, 1000, 0, 0)

    def denied(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    Engine.check_disk_space(_Probed(tmp_path))


@pytest.mark.parametrize("resolve", ["this python's", "3.13's"])
@pytest.mark.parametrize("shape", ["self", "pair", "through"])
def test_a_looping_out_link_is_told_as_a_looping_data_link_is(tmp_path, monkeypatch, shape, resolve):
    """--out and --data links were told apart by two tests (resolve() for --out, os.stat's ELOOP for --data). Where
    resolve() does not raise on a loop (3.13, as os.path.realpath here), a link into a loop of links (`run -> a/run`,
    a <-> b) was "a dangling link that cannot be made" as --out and a loop as --data. One test now, each with its
    own advice."""
    if resolve == "3.13's":
        monkeypatch.setattr(Path, "resolve", lambda self, strict=False: Path(os.path.realpath(self)))
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    link = tmp_path / "run"
    target = {"self": link, "pair": tmp_path / "a", "through": tmp_path / "a" / "run"}[shape]
    link.symlink_to(target)
    with pytest.raises(UserError) as caught:
        ensure_writable_dir(link, "run")
    assert str(caught.value) == (f"the run folder '{link}' is a symbolic link (to {target}) that goes round a loop "
                                 f"of links; remove it or give another --out.")
    with pytest.raises(UserError) as caught:
        list_datasets(link)
    assert f"dataset root '{link}' is a symbolic link (to {target}) that goes round a loop of links" in str(
        caught.value)
