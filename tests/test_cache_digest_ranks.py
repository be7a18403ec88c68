"""Under torchrun every rank loads the splits at once (SupervisedTask: no barrier around load_splits), each decodes
into its own temp file, and the last to finish writes the entry's meta file. A rank other than 0 took no digests,
so an entry it wrote lacked them, and rank 0's next run hashed every image again for warn_split_copies. An entry
a rank writes now keeps them. Under torchrun (a process group) every rank now compares its pixels with the others'
(review rev79: a rank without digests was left out of that check without a word), so each hashes an older entry
once, as rank 0 does; a rank outside a process group still hashes no entry it does not write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import fewshot.data.cache as cache
import fewshot.data.decode_many as decode_many
import fewshot.data.sets as sets
from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import scan_root
from fewshot.data.sets import load_splits
from helpers.tiny import build_digits


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The digits root with two train images copied into val (what warn_split_copies finds)."""
    root = build_digits(tmp_path_factory.mktemp("ranks-data"))
    for i, src in enumerate(sorted((root / "digits" / "train").rglob("*.png"))[:2]):
        shutil.copy(src, root / "digits" / "val" / src.parent.name / f"copy{i}.png")
    return root


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(sets, "_WARNED", set())
    monkeypatch.setattr(cache, "_HASHED", {})


def _load(root: Path, cache_dir: Path | None):
    infos = scan_root(root, splits=("train", "val", "test"))
    return load_splits(infos, ("train", "val"), LabelSpace.from_infos(infos), 16, cache_dir)


def test_an_entry_written_by_another_rank_holds_the_digests_rank_0_reads(root, tmp_path, monkeypatch, capsys):
    cache_dir = tmp_path / "cache"
    with monkeypatch.context() as m:
        m.setenv("RANK", "1")
        m.setenv("WORLD_SIZE", "2")  # one process ignores RANK, as init_distributed does
        train, val = _load(root, cache_dir)
    assert train.digests is None and val.digests is None  # rank 1 says no warning, so it takes none
    metas = sorted(cache_dir.glob("*.json"))
    assert len(metas) == 2
    for meta in metas:
        record = json.loads(meta.read_text())
        assert len(record["digests"]) == record["n"] and all(isinstance(d, str) for d in record["digests"])
    assert "exact copies" not in capsys.readouterr().err
    # rank 0 (the next run, or a rank that finished first) finds them there: nothing decoded or hashed again
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(decode_many, "decode_resized", lambda *a, **k: pytest.fail("a cached image was decoded again"))
    monkeypatch.setattr(cache, "image_digest", lambda *a: pytest.fail("an entry rank 1 wrote was hashed again"))
    monkeypatch.setattr(decode_many, "image_digest", lambda *a: pytest.fail("an entry rank 1 wrote was hashed again"))
    train, val = _load(root, cache_dir)
    assert len(train.digests) == len(train) and len(val.digests) == len(val)
    assert "2 of its 32 val images are exact copies of its train images" in capsys.readouterr().err


def _strip(cache_dir: Path) -> None:
    """The entries' meta files as an older fewshot wrote them (no digests)."""
    for meta in cache_dir.glob("*.json"):
        record = json.loads(meta.read_text())
        del record["digests"]
        meta.write_text(json.dumps(record))


def test_another_rank_hashes_no_entry_it_does_not_write(root, tmp_path, monkeypatch):
    """Outside a process group, reading an entry (even one without digests) costs no hashing on a rank other than 0;
    a decode without a cache folder takes them as it decodes (next to free; review rev79), without any asked for."""
    cache_dir = tmp_path / "cache"
    _load(root, cache_dir)
    _strip(cache_dir)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # one process ignores RANK, as init_distributed does
    with monkeypatch.context() as m:
        m.setattr(cache, "image_digest", lambda *a: pytest.fail("rank 1 hashed an image"))
        m.setattr(decode_many, "image_digest", lambda *a: pytest.fail("rank 1 hashed an image"))
        train, val = _load(root, cache_dir)
        assert train.digests is None and val.digests is None
    assert not any("digests" in json.loads(m.read_text()) for m in cache_dir.glob("*.json"))
    train, val = _load(root, None)
    assert train.digests is None and val.digests is None and train.fingerprints and val.fingerprints


def test_under_torchrun_every_rank_hashes_an_older_entry_once(root, tmp_path, monkeypatch):
    """Under torchrun rank 1 too hashes an entry without digests, and writes them back as rank 0 does: without them
    its pixels were left out of the ranks' comparison without a word (review rev79). The next run hashes nothing."""
    cache_dir = tmp_path / "cache"
    train, val = _load(root, cache_dir)
    expected = (train.fingerprints, val.fingerprints)
    _strip(cache_dir)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sets, "several_processes", lambda: True)  # in a process group (init_distributed)
    train, val = _load(root, cache_dir)
    assert (train.fingerprints, val.fingerprints) == expected
    assert all("digests" in json.loads(m.read_text()) for m in cache_dir.glob("*.json"))
    monkeypatch.setattr(cache, "_HASHED", {})  # the next command's
    monkeypatch.setattr(cache, "image_digest", lambda *a: pytest.fail("an entry was hashed again"))
    train, val = _load(root, cache_dir)
    assert (train.fingerprints, val.fingerprints) == expected
    train, val = _load(root, None)  # no cache: taken as it decodes
    assert (train.fingerprints, val.fingerprints) == expected
