"""Files that are not images by their extension, lying directly in ROOT/unlabeled/ (beside the datasets' pool
folders), were dropped by pretraining's pool without a word, where the pool's folders and an --unlabeled DIR say
theirs: they are now said once, with a count and a few names; system files stay silent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fewshot.data.layout import scan_root
from fewshot.data.pool import pool_paths
from helpers.tiny import build_digits, copy_data_root

SYSTEM = [".DS_Store", "Thumbs.db", "desktop.ini", ".hidden.heic"]


@pytest.fixture(scope="module")
def base_root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("pool-unreadable"), shots=2)


@pytest.fixture
def root(base_root, tmp_path):
    return copy_data_root(base_root, tmp_path / "root")


def _add(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).write_bytes(b"x")


def _cfg(root: Path, unlabeled=None) -> dict:
    return {"data": {"root": str(root), "unlabeled": unlabeled}}


def _notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if "does not read" in line or "are not images" in line]


def test_loose_files_in_the_pool_root_are_said_once(root, capsys):
    pool = root / "unlabeled"
    shutil.copy(next((pool / "digits").iterdir()), pool / "loose.png")  # a loose image is read, as before
    _add(pool, ["IMG_001.HEIC", "b.avif", "c.avif", "noext"] + SYSTEM)
    infos = scan_root(root, ["digits"])
    paths, _ = pool_paths(_cfg(root), infos)
    assert pool / "loose.png" in paths and len(paths) == 81
    lines = _notes(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: the unlabeled pool {pool}: 3 image file(s) directly in it are in a format "
                               f"fewshot does not read"), lines
    assert "'IMG_001.HEIC', 'b.avif', 'c.avif'); convert them" in lines[0], lines
    assert "1 file(s) directly in it are not images by their extension and are left out (e.g. 'noext')" in lines[0]
    for name in SYSTEM:
        assert name not in lines[0]
    pool_paths(_cfg(root), infos)
    assert not _notes(capsys.readouterr().err)  # once per process


def test_loose_files_are_said_where_no_loose_image_lies_beside_them(root, capsys):
    _add(root / "unlabeled", ["IMG_002.HEIC"])
    pool_paths(_cfg(root), scan_root(root, ["digits"]))
    assert "'IMG_002.HEIC'" in " ".join(_notes(capsys.readouterr().err))


def test_an_unlabeled_dir_says_its_own_files(root, tmp_path, capsys):
    given = tmp_path / "given"
    shutil.copytree(root / "unlabeled" / "digits", given)
    _add(given, ["IMG_003.HEIC"] + SYSTEM)
    paths, _ = pool_paths(_cfg(root, [str(given)]), scan_root(root, ["digits"]))
    assert len(paths) == 80
    lines = _notes(capsys.readouterr().err)
    assert len(lines) == 1 and f"the unlabeled pool {given}: 1 image file(s) in it" in lines[0], lines


def test_a_readme_in_the_pool_root_is_not_told_to_be_converted(root, capsys):
    _add(root / "unlabeled", ["README.md", "labels.csv"])
    pool_paths(_cfg(root), scan_root(root, ["digits"]))
    lines = _notes(capsys.readouterr().err)
    assert len(lines) == 1 and "2 file(s) directly in it are not images by their extension and are left out " \
        "(e.g. 'README.md', 'labels.csv')" in lines[0], lines
    assert "convert" not in lines[0], lines


def test_system_files_in_the_pool_root_say_nothing(root, capsys):
    _add(root / "unlabeled", SYSTEM)
    pool_paths(_cfg(root), scan_root(root, ["digits"]))
    assert not _notes(capsys.readouterr().err)
