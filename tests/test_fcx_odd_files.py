"""Odd and hostile files where fewshot reads and writes (fCX, hunt hBA).

A cache meta file replaced by a folder stopped every command with an error about an --out nobody gave; a
`.fewshot.lock` that was a folder turned the run lock off; `--config <(...)` was "not found"; an unreadable pool
folder was called empty; a link in ROOT/unlabeled/ to a parent of --out refused train and probe, naming the wrong
folder.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot import run_lock
from fewshot.config import config_data, read_run_config
from fewshot.config.layering import resolve
from fewshot.data import cache, cache_words
from fewshot.data.output_guard import check_output_is_not_in_data, pool_read_by
from fewshot.errors import DataLayoutError, UserError
from fewshot.run_lock import LOCK_NAME, lock_run_dir, lock_scope
from helpers.checks import run_main


def _pngs(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i}.png"
        Image.fromarray(np.full((8, 8), 40 * i + 10, np.uint8)).save(p)
        paths.append(p)
    return paths


def _cache_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "image cache" in line]


def test_a_cache_meta_file_that_is_a_folder_is_a_cache_warning(tmp_path, capsys, monkeypatch):
    """A folder at <key>.json (a copied or hostile cache) stopped load_images with "the output ... is a folder; give
    a file name": it is the usual cache warning now, the images load, and no entry is left without its meta file."""
    paths, folder = _pngs(tmp_path / "imgs"), tmp_path / ".fewshot_cache"
    key = cache.cache_key(paths, 8, 1.0)
    (folder / f"{key}.json").mkdir(parents=True)
    monkeypatch.setattr(cache_words, "_WARNED", set())
    got = cache.load_images(paths, 8, folder, threads=1)
    assert bool(got.valid.all()) and got.images.shape == (3, 3, 8, 8)
    lines = _cache_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("warning: could not write the image cache"), lines
    assert "folder" in lines[0] and "give a file name" not in lines[0]
    assert not (folder / f"{key}.u8").exists()


def test_a_cache_folder_that_is_a_file_is_named_as_such(tmp_path, capsys, monkeypatch):
    """ROOT/.fewshot_cache as a regular file warned "[Errno 17] File exists", naming nothing to move."""
    paths, folder = _pngs(tmp_path / "imgs"), tmp_path / ".fewshot_cache"
    folder.write_text("not a folder")
    monkeypatch.setattr(cache_words, "_WARNED", set())
    assert bool(cache.load_images(paths, 8, folder, threads=1).valid.all())
    lines = _cache_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"{folder} is a file" in lines[0], lines


def test_a_subsets_record_that_is_a_folder_is_an_os_error(tmp_path):
    """The pool-subset record is a cache file too: its caller (run_pseudo) passes over an OSError, not a UserError."""
    record = tmp_path / "k.seed0.subsets.json"
    record.mkdir()
    with pytest.raises(OSError):
        cache.add_to_subsets_record(record, 64)


def test_a_lock_file_that_is_a_folder_is_refused(tmp_path):
    """A folder at RUN/.fewshot.lock (EISDIR) was read as a run folder that cannot be written: the lock was off and
    two runs logged every epoch twice."""
    (tmp_path / LOCK_NAME).mkdir()
    with lock_scope("train"), pytest.raises(UserError, match="is not a file"):
        lock_run_dir(tmp_path)


def test_a_lock_file_that_cannot_be_opened_is_refused(tmp_path, monkeypatch):
    """An existing lock file that cannot be opened for writing (immutable: EPERM even for root) is refused rather
    than run unguarded; with a folder that cannot be written, the folder's own write check speaks (no refusal)."""
    (tmp_path / LOCK_NAME).write_text("")

    def refused(path):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    monkeypatch.setattr(run_lock, "_open_or_create", refused)
    with lock_scope("train"), pytest.raises(UserError, match="cannot be opened for writing .Operation not permitted"):
        lock_run_dir(tmp_path)
    monkeypatch.setattr(run_lock.os, "access", lambda path, mode: False)
    with lock_scope("train"):
        assert lock_run_dir(tmp_path) is False


def _piped(text: str) -> str:
    """A pipe holding ``text``, named as a process substitution `<(...)` names it (/dev/fd/N)."""
    r, w = os.pipe()
    os.write(w, text.encode())
    os.close(w)
    return f"/dev/fd/{r}"


def test_a_piped_config_is_read_once_and_kept(tmp_path):
    """`--config <(...)` was "config file not found: /dev/fd/63": a pipe is read once, and every later reader of
    the same --config gets that text (a pipe gives it to one reader only)."""
    name = _piped("optim:\n  weight_decay: 0.0123\n")
    try:
        assert resolve(file=name)["optim"]["weight_decay"] == 0.0123
        assert config_data(name)["optim"]["weight_decay"] == 0.0123  # outside the first reader's scope
    finally:
        os.close(int(name.rsplit("/", 1)[1]))


def test_train_reads_its_config_from_a_pipe(digits_root, tmp_path):
    """The command itself: `train --config <(...)` trains with the piped settings."""
    name, run = _piped("optim:\n  weight_decay: 0.0123\n"), tmp_path / "run"
    try:
        rc, _, err = run_main("train", "--data", digits_root, "--out", run, "--config", name, "--model",
                              "test_resnet", "--img-size", "32", "--epochs", "1", "--batch-size", "16", "--device",
                              "cpu", "--no-progress")
    finally:
        os.close(int(name.rsplit("/", 1)[1]))
    assert rc == 0, err
    assert "weight_decay: 0.0123" in (run / "config.yaml").read_text()


def test_a_fifo_as_a_runs_config_is_named_and_not_opened(tmp_path):
    """A FIFO named config.yaml in a run folder was "config file not found"; it is named by its kind, without being
    opened (no writer: opening it would wait for ever)."""
    os.mkfifo(tmp_path / "config.yaml")
    with pytest.raises(UserError, match=r"exists but is a pipe \(FIFO\)"):
        read_run_config(tmp_path / "config.yaml")


def test_an_unreadable_pool_folder_is_named_not_replaced(digits_root, dataset_names, monkeypatch):
    """ROOT/unlabeled/<dataset> that cannot be listed was "holds no images", and the train images silently took its
    place: it is named as find_unlabeled_images names an unreadable folder. (Root lists any folder: the
    listing's failure is simulated.)"""
    from fewshot.config import resolve as resolve_config
    from fewshot.data.layout import scan_root
    from fewshot.data.pool import _pool_with_sources

    pool, listing = digits_root / "unlabeled" / dataset_names[0], os.scandir

    def refused(path="."):
        if os.fspath(path) == os.fspath(pool):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return listing(path)

    infos = scan_root(digits_root, None, splits=("train", "val"))
    monkeypatch.setattr(os, "scandir", refused)
    with pytest.raises(DataLayoutError, match="cannot list the folder .Permission denied"):
        _pool_with_sources(resolve_config(flags={"data.root": str(digits_root)}), infos)


def _linked_pool(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A data root whose ROOT/unlabeled/up links to a folder above the --out; returns (root, link, out)."""
    root, above = tmp_path / "data", tmp_path / "work"
    (root / "ds" / "train" / "a").mkdir(parents=True)
    (root / "unlabeled").mkdir()
    (root / "unlabeled" / "up").symlink_to(above, target_is_directory=True)
    return root, root / "unlabeled" / "up", above / "runs" / "r1"


def test_a_pool_link_to_a_parent_of_out_is_named_itself(tmp_path):
    """`--out` under the folder a link in ROOT/unlabeled/ leads to was refused naming ROOT/unlabeled, not the link."""
    root, link, out = _linked_pool(tmp_path)
    out.parent.mkdir(parents=True)
    with pytest.raises(UserError) as caught:
        check_output_is_not_in_data(out, root)
    assert f"the unlabeled pool's link {link} (" in str(caught.value), caught.value


def test_commands_that_read_no_pool_still_refuse_its_links(tmp_path):
    """Probe (and train without semi) reads no pool, but a later pretrain reads every link in it (rev63 #3): a link
    there to a parent of --out is refused for every command, as the pool folder itself (later pool reads would take
    the output in). A link to a folder above ROOT (slash -> /) is passed over: it refused every --out."""
    root, link, out = _linked_pool(tmp_path)
    out.parent.mkdir(parents=True)
    with pytest.raises(UserError, match="the unlabeled pool's link"):
        check_output_is_not_in_data(out, root, reads_pool=False)
    link.unlink()
    link.symlink_to(tmp_path, target_is_directory=True)  # above ROOT, and above --out
    (root / "unlabeled" / "slash").symlink_to("/", target_is_directory=True)
    for reads_pool in (False, True):
        check_output_is_not_in_data(out, root, reads_pool=reads_pool)
    with pytest.raises(UserError, match="inside the unlabeled pool"):
        check_output_is_not_in_data(root / "unlabeled" / "run", root, reads_pool=False)
    assert not pool_read_by({"semi": {"method": "off"}})
    assert pool_read_by({"_task": "moco", "semi": {"method": "off"}}) and pool_read_by({"semi": {"method": "fixmatch"}})


def test_probe_passes_a_pool_link_above_the_root_over(tmp_path):
    """`fewshot probe --out` under the folder a pool link to a folder above ROOT leads to: no pool refusal (it stops
    later, on its missing weights file, which this test gives none of). A link elsewhere is refused (rev63 #3)."""
    root, link, out = _linked_pool(tmp_path)
    out.parent.mkdir(parents=True)
    rc, _, err = run_main("probe", "--weights", tmp_path / "none.safetensors", "--model", "test_resnet", "--data",
                          root, "--out", out, "--device", "cpu")
    assert rc != 0 and "the unlabeled pool's link" in err, err
    link.unlink()
    link.symlink_to(tmp_path, target_is_directory=True)
    rc, _, err = run_main("probe", "--weights", tmp_path / "none.safetensors", "--model", "test_resnet", "--data",
                          root, "--out", out, "--device", "cpu")
    assert rc != 0 and "unlabeled pool" not in err, err


def test_a_class_folder_with_a_newline_keeps_the_refusal_on_one_line():
    """predict's refusal of other class folders printed a folder named "a\\nb" raw, splitting its paragraph."""
    from fewshot.eval.model_data import _other_classes

    said = _other_classes(Path("root/ds/train"), ["a\nb", "-rf"], ("0", "1"))
    assert "\n" not in said and "'a\\nb', -rf not among the model's 2 classes" in said, said


def test_train_without_semi_and_report_pass_a_pool_link_over(tmp_path):
    """Train with semi off and report: a link in the pool to a folder above ROOT, and so above their --out
    (slash -> /), refused them, naming the pool. Both run (rev63 #3: a link elsewhere is refused)."""
    from helpers.tiny import build_digits, tiny_train_argv

    root, above = build_digits(tmp_path / "data"), tmp_path / "work"
    (root / "unlabeled" / "up").symlink_to(tmp_path, target_is_directory=True)
    (above / "runs").mkdir(parents=True)
    rc, _, err = run_main(*tiny_train_argv(root, above / "runs" / "r1"))
    assert rc == 0, err
    rc, _, err = run_main("report", above / "runs" / "r1", "--data", root, "--out", above / "runs" / "rep")
    assert rc == 0, err


def test_a_dataset_pool_link_stays_refused_for_commands_that_read_no_pool(tmp_path):
    """ROOT/unlabeled/digits -> pool_real: `train --out pool_real/run1` (semi off), probe and report were accepted,
    and a later pretrain trained on the run's plots (rev61 #2). Every later pool read follows a link named after a
    dataset, so every command refuses it; a later pretrain follows the other links too (rev63 #3)."""
    root, real, above = tmp_path / "root", tmp_path / "pool_real", tmp_path / "work"
    _pngs(root / "digits" / "train" / "0")
    _pngs(real)
    above.mkdir()
    (root / "unlabeled").mkdir()
    (root / "unlabeled" / "digits").symlink_to(real, target_is_directory=True)
    (root / "unlabeled" / "up").symlink_to(above, target_is_directory=True)
    for reads_pool in (False, True):
        with pytest.raises(UserError, match=f"the unlabeled pool's link {root / 'unlabeled' / 'digits'} "):
            check_output_is_not_in_data(real / "run1", root, reads_pool=reads_pool)
    for reads_pool in (False, True):  # rev63 #3: a later pretrain reads this link too
        with pytest.raises(UserError, match="the unlabeled pool's link"):
            check_output_is_not_in_data(above / "run1", root, reads_pool=reads_pool)


def _fifo_writer(path: Path, text: str):
    """A thread that writes ``text`` into the FIFO ``path`` for its next reader (as `cat cfg > fifo &`)."""
    import threading

    def write():
        with open(path, "w") as fh:
            fh.write(text)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def _unblock(path: Path, thread) -> None:
    """Let a writer thread still waiting in open() go: a reader that opens and closes the FIFO."""
    if not thread.is_alive():
        return
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # open while the writer waits: its open() returns
    try:
        thread.join()
    finally:
        os.close(fd)


def test_a_named_fifo_gives_each_command_its_own_text(tmp_path):
    """A FIFO's text was kept for the whole process: a second command on the same FIFO (cli.main again, a notebook)
    silently got the first one's settings, and its writer stayed blocked (rev61 #5)."""
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)
    for epochs in (3, 7):
        writer = _fifo_writer(fifo, f"train:\n  epochs: {epochs}\n")
        try:
            assert resolve(file=str(fifo))["train"]["epochs"] == epochs
        finally:
            _unblock(fifo, writer)


def test_a_piped_config_is_refused_under_torchrun(tmp_path, monkeypatch):
    """Each torchrun process reads --config itself: rank 0 drained /dev/stdin and rank 1 got defaults, a named FIFO
    hung a rank in open(), and the workers' /dev/stdin is /dev/null (rev61 #4). Refused before it is opened."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)
    writer = _fifo_writer(fifo, "train:\n  epochs: 3\n")  # without the refusal, the read gets it (no hang)
    name, said = _piped("train:\n  epochs: 3\n"), {}
    try:
        for given in (name, str(fifo), "/dev/null"):
            with pytest.raises(UserError, match="each of the 2 torchrun processes reads --config itself; save") as e:
                resolve(file=given)
            said[given] = str(e.value)
    finally:
        os.close(int(name.rsplit("/", 1)[1]))
        _unblock(fifo, writer)
    # /dev/null gives every process the same (empty) text: "one reader only" was a false reason there (rev63 #6)
    assert "one reader only" in said[str(fifo)] and "one reader only" not in said["/dev/null"], said
    assert "not a file every process can read the same way" in said["/dev/null"], said


@pytest.mark.parametrize("world", ["1", "2"])
def test_a_descriptor_this_process_lacks_is_not_called_missing(monkeypatch, world):
    """torchrun's workers do not inherit `<(...)`'s descriptor: "config file not found: /dev/fd/63" (rev61 #4)."""
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(UserError) as caught:
        resolve(file="/dev/fd/999999")
    said = str(caught.value)
    assert "not found" not in said and "names an open file descriptor" in said and "save the settings" in said
    assert ("torchrun does not pass it on" in said) == (world == "2")


def _unwritable_lock_file(folder: Path, monkeypatch, code: int) -> None:
    """The lock file as another user's 0644 one in a group-writable folder reads (EACCES; root may write any, so the
    open for writing is made to fail), or an immutable one (EPERM)."""
    opened = run_lock._open_or_create

    def refused(path):
        if (folder / LOCK_NAME).exists():
            raise PermissionError(code, os.strerror(code), str(path))
        return opened(path)

    monkeypatch.setattr(run_lock, "_open_or_create", refused)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM])
def test_an_unwritable_lock_file_of_a_live_run_names_it(tmp_path, monkeypatch, code):
    """The refusal of a lock file this user cannot write told them to delete it while the run that held it was
    training, and deleting it let a second writer in (rev61 #6): the holder is named, not the file."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys\n"
                               f"fd = os.open({str(tmp_path / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT, 0o644)\n"
                               "os.write(fd, f'{os.getpid()} train'.encode()); fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        _unwritable_lock_file(tmp_path, monkeypatch, code)
        with lock_scope("train"), pytest.raises(UserError) as caught:
            lock_run_dir(tmp_path)
        said = str(caught.value)
        assert f"being written by another fewshot process (`fewshot train`, pid {holder.pid})" in said, said
        assert "delete" not in said, said
    finally:
        holder.communicate("")


def test_a_stopped_runs_lock_file_this_user_cannot_write_is_locked_read_only(tmp_path, monkeypatch):
    """Another user's 0644 lock file of a stopped run (group-writable folder): locked through a read-only
    descriptor (flock needs no write access), keeping its last writer's record, rather than refused."""
    (tmp_path / LOCK_NAME).write_text("4242 train\n")
    _unwritable_lock_file(tmp_path, monkeypatch, errno.EACCES)
    with lock_scope("train"):
        assert lock_run_dir(tmp_path) is True
        assert run_lock.being_written(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text() == "4242 train\n"
    assert not run_lock.being_written(tmp_path)


def _dead_pid() -> int:
    """The pid of a process that has exited (a lock file's stale record)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_read_only_lock_file_that_cannot_be_locked_is_refused(tmp_path, monkeypatch):
    """NFS emulates flock with byte-range locks: LOCK_EX on the read-only descriptor fails with EBADF, and the run
    went on unguarded as on a file system without locks (rev63 #1). Refused as a file that cannot be written."""
    (tmp_path / LOCK_NAME).write_text("4242 train\n")
    _unwritable_lock_file(tmp_path, monkeypatch, errno.EACCES)
    real = run_lock.fcntl.flock

    def nfs_flock(fd, how):
        if how & run_lock.fcntl.LOCK_EX and not run_lock._opened_for_writing(fd):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return real(fd, how)

    monkeypatch.setattr(run_lock.fcntl, "flock", nfs_flock)
    with lock_scope("train"), pytest.raises(UserError, match="cannot be opened for writing"):
        lock_run_dir(tmp_path)


def test_a_read_only_holder_is_not_named_by_its_files_stale_pid(tmp_path, monkeypatch):
    """A lock file locked read-only keeps its last writer's "PID COMMAND": a second train was told a dead pid held
    it, with probe advice (rev63 #2). A dead pid is dropped, with the run's advice."""
    import fcntl

    dead = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(f"{dead} probe\n")
    holder = os.open(tmp_path / LOCK_NAME, os.O_RDONLY)  # another command's read-only lock
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        _unwritable_lock_file(tmp_path, monkeypatch, errno.EACCES)
        with lock_scope("train"), pytest.raises(UserError) as caught:
            lock_run_dir(tmp_path)
    finally:
        os.close(holder)
    said = str(caught.value)
    assert "being written by another fewshot process:" in said and "then --resume" in said, said
    assert f"pid {dead}" not in said and "probe" not in said, said
