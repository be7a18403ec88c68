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
from fewshot.data import cache
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
    monkeypatch.setattr(cache, "_WARNED", set())
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
    monkeypatch.setattr(cache, "_WARNED", set())
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
    from fewshot.ssl.pretrain import _pool_with_sources

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


def test_commands_that_read_no_pool_pass_its_links_over(tmp_path):
    """Probe (and train without semi) reads no pool: a link there to a parent of --out refused every --out. The
    pool folder itself stays refused for every command (later pool reads would take the output in)."""
    root, _, out = _linked_pool(tmp_path)
    out.parent.mkdir(parents=True)
    check_output_is_not_in_data(out, root, reads_pool=False)
    with pytest.raises(UserError, match="inside the unlabeled pool"):
        check_output_is_not_in_data(root / "unlabeled" / "run", root, reads_pool=False)
    assert not pool_read_by({"semi": {"method": "off"}})
    assert pool_read_by({"_task": "moco", "semi": {"method": "off"}}) and pool_read_by({"semi": {"method": "fixmatch"}})


def test_probe_passes_a_pool_link_over(tmp_path):
    """`fewshot probe --out` under the folder a pool link leads to: no pool refusal (it stops later, on its missing
    weights file, which this test gives none of)."""
    root, _, out = _linked_pool(tmp_path)
    out.parent.mkdir(parents=True)
    rc, _, err = run_main("probe", "--weights", tmp_path / "none.safetensors", "--model", "test_resnet", "--data",
                          root, "--out", out, "--device", "cpu")
    assert rc != 0 and "unlabeled pool" not in err, err


def test_a_class_folder_with_a_newline_keeps_the_refusal_on_one_line():
    """predict's refusal of other class folders printed a folder named "a\\nb" raw, splitting its paragraph."""
    from fewshot.eval.model_data import _other_classes

    said = _other_classes(Path("root/ds/train"), ["a\nb", "-rf"], ("0", "1"))
    assert "\n" not in said and "'a\\nb', -rf not among the model's 2 classes" in said, said


def test_train_without_semi_and_report_pass_a_pool_link_over(tmp_path):
    """Train with semi off and report read no pool: a link there to a parent of their --out refused them, naming the
    pool. Both now run (the link's folder is no input of theirs)."""
    from helpers.tiny import build_digits, tiny_train_argv

    root, above = build_digits(tmp_path / "data"), tmp_path / "work"
    (root / "unlabeled" / "up").symlink_to(above, target_is_directory=True)
    (above / "runs").mkdir(parents=True)
    rc, _, err = run_main(*tiny_train_argv(root, above / "runs" / "r1"))
    assert rc == 0, err
    rc, _, err = run_main("report", above / "runs" / "r1", "--data", root, "--out", above / "runs" / "rep")
    assert rc == 0, err
