"""A cache entry's bad files are kept by index in its keyed path list, not as the writer spelt them.

The reader made the writer's names absolute against its own cwd: an entry written with data/a/bad.png from w/ and
read with ../data/a/bad.png from w/sub named no file, and the bad one was a valid black image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

import fewshot.data.skipped as skipped
from fewshot.data.cache import load_images


@pytest.fixture(autouse=True)
def fresh_reports(monkeypatch):
    monkeypatch.setattr(skipped, "_REPORTED", set())


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """tmp/data/a with ok.png and bad.png, tmp/w/sub, cwd tmp/w."""
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (90, 90, 90)).save(folder / "ok.png")
    (folder / "bad.png").write_bytes(b"not an image")
    (tmp_path / "w" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "w")
    return tmp_path


def _meta(cache_dir: Path) -> Path:
    (meta,) = [m for m in cache_dir.rglob("*.json") if not m.name.endswith(".subsets.json")]
    return meta


@pytest.mark.parametrize("reader_cwd", ["w", "w/sub"])
def test_a_bad_file_stays_bad_from_any_cwd(work, monkeypatch, reader_cwd):
    cache_dir = work / "cache"
    written = load_images([Path("../data/a/ok.png"), Path("../data/a/bad.png")], 8, cache_dir, skip_bad=True)
    assert written.valid.tolist() == [True, False]
    monkeypatch.chdir(work / reader_cwd)
    spelt = Path(os.path.relpath(work / "data", work / reader_cwd))
    (data,) = cache_dir.rglob("*.u8")
    inode = data.stat().st_ino
    got = load_images([spelt / "a/ok.png", spelt / "a/bad.png"], 8, cache_dir, skip_bad=True)
    assert data.stat().st_ino == inode  # a cache hit, not a rebuild
    assert got.valid.tolist() == [True, False]
    assert got.bad == [(str(spelt / "a/bad.png"), written.bad[0][1])]  # named as this caller spells it


def test_the_meta_file_keeps_bad_files_by_index_and_by_absolute_path(work):
    cache_dir = work / "cache"
    load_images([Path("../data/a/bad.png"), Path("../data/a/ok.png"), Path("../data/a/../a/bad.png")], 8, cache_dir,
                skip_bad=True)
    meta = json.loads(_meta(cache_dir).read_text())
    assert [i for i, _ in meta["bad_at"]] == [0, 2]
    assert {p for p, _ in meta["bad"]} == {str(work / "data/a/bad.png")}


def _old_format(cache_dir: Path, name: str) -> None:
    """The meta file as an older version wrote it: bad files by name only."""
    meta_file = _meta(cache_dir)
    meta = json.loads(meta_file.read_text())
    why = meta.pop("bad_at")[0][1]
    meta_file.write_text(json.dumps({**meta, "bad": [[name, why]]}))


def test_an_old_meta_with_an_absolute_name_is_read(work, monkeypatch):
    cache_dir = work / "cache"
    load_images([work / "data/a/ok.png", work / "data/a/bad.png"], 8, cache_dir, skip_bad=True)
    _old_format(cache_dir, str(work / "data/a/bad.png"))
    (data,) = cache_dir.rglob("*.u8")
    inode = data.stat().st_ino
    monkeypatch.chdir(work / "w/sub")
    got = load_images([Path("../../data/a/ok.png"), Path("../../data/a/bad.png")], 8, cache_dir, skip_bad=True)
    assert data.stat().st_ino == inode and got.valid.tolist() == [True, False]


def test_an_old_meta_with_a_relative_name_is_rebuilt_not_trusted(work, monkeypatch):
    cache_dir = work / "cache"
    load_images([Path("../data/a/ok.png"), Path("../data/a/bad.png")], 8, cache_dir, skip_bad=True)
    _old_format(cache_dir, "../data/a/bad.png")  # relative to w/, which a reader in w/sub cannot know
    monkeypatch.chdir(work / "w/sub")
    got = load_images([Path("../../data/a/ok.png"), Path("../../data/a/bad.png")], 8, cache_dir, skip_bad=True)
    assert got.valid.tolist() == [True, False]
    assert [i for i, _ in json.loads(_meta(cache_dir).read_text())["bad_at"]] == [1]  # written again, by index


@pytest.mark.parametrize("bad_at", [[[5, "x"]], [[-1, "x"]], [[True, "x"]], [["0", "x"]], [[0, 1]], "none"])
def test_a_meta_with_bad_indices_of_another_shape_is_rebuilt(work, bad_at):
    """Rebuilt, not read: [[True, "x"]] read as index 1 would mark the same file bad (True == 1), so the entry's
    data file must be a new one and the indices written again as whole numbers."""
    cache_dir = work / "cache"
    paths = [Path("../data/a/ok.png"), Path("../data/a/bad.png")]
    first = load_images(paths, 8, cache_dir, skip_bad=True)  # kept: its mapping keeps the old inode from reuse
    meta_file = _meta(cache_dir)
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "bad_at": bad_at}))
    (data,) = cache_dir.rglob("*.u8")
    inode = data.stat().st_ino
    assert load_images(paths, 8, cache_dir, skip_bad=True).valid.tolist() == [True, False]
    assert data.stat().st_ino != inode, "the entry was read, not rebuilt"
    indices = [i for i, _ in json.loads(meta_file.read_text())["bad_at"]]
    assert indices == [1] and all(type(i) is int for i in indices), indices
    assert first.valid.tolist() == [True, False]
