"""Val (or test) images that are exact copies of train images are warned about, per dataset: val chooses best.pt,
the EMA or raw weights and run.balance, and a val split holding the train images scored memorised images without
a word. The copies are found from digests of the decoded pixels that the image cache takes as it decodes (and keeps
in its meta file): no file is read again."""

from __future__ import annotations

import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import fewshot.data.cache as cache
import fewshot.data.decode_many as decode_many
import fewshot.data.sets as sets
from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import scan_root
from fewshot.data.sets import load_split, load_splits, warn_split_copies
from helpers.tiny import build_digits


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("overlap-data"))


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(sets, "_WARNED", set())


def copied_root(clean: Path, tmp_path: Path, n: int) -> tuple[Path, list[Path]]:
    """The digits root with ``n`` train images copied into val (under new names, in their class folders)."""
    root = tmp_path / "root"
    shutil.copytree(clean, root, ignore=shutil.ignore_patterns(".fewshot_cache"))
    train = sorted((root / "digits" / "train").rglob("*.png"))[:n]
    for i, src in enumerate(train):
        shutil.copy(src, root / "digits" / "val" / src.parent.name / f"copy{i}.png")
    return root, train


def _load(root: Path, cache_dir: Path, splits=("train", "val")):
    infos = scan_root(root, splits=("train", "val", "test"))
    space = LabelSpace.from_infos(infos)
    return load_splits(infos, splits, space, 16, cache_dir), infos, space


def test_val_copies_of_train_images_are_warned_once(clean, tmp_path, capsys):
    root, copied = copied_root(clean, tmp_path, 5)
    _load(root, tmp_path / "cache")
    err = capsys.readouterr().err
    assert err.count("warning: digits: 5 of its 35 val images are exact copies of its train images") == 1
    assert f"/val/{copied[0].parent.name}/copy0.png (= {copied[0]})" in err and "and 2 more" in err
    assert "best.pt, the EMA or raw weights, run.balance" in err and "remove the copies from val/" in err
    _load(root, tmp_path / "cache")  # `fewshot run` loads the splits again in each stage: said once
    assert "exact copies" not in capsys.readouterr().err


def test_distinct_splits_are_not_warned(clean, tmp_path, capsys):
    _load(clean, tmp_path / "cache")
    assert "exact copies" not in capsys.readouterr().err


def test_a_warm_cache_finds_the_copies_without_decoding(clean, tmp_path, capsys, monkeypatch):
    """The digests come from the entry's meta file; an entry written before they existed is hashed from its pixels
    once, and the digests are added to it."""
    root, _ = copied_root(clean, tmp_path, 2)
    _load(root, tmp_path / "cache")
    capsys.readouterr()
    metas = sorted((tmp_path / "cache").glob("*.json"))
    assert metas and all(len(json.loads(m.read_text())["digests"]) == json.loads(m.read_text())["n"] for m in metas)
    for meta in metas:  # as an older fewshot wrote them
        record = json.loads(meta.read_text())
        del record["digests"]
        meta.write_text(json.dumps(record))
    monkeypatch.setattr(sets, "_WARNED", set())
    monkeypatch.setattr(decode_many, "decode_resized", lambda *a, **k: pytest.fail("a cached image was decoded again"))
    _load(root, tmp_path / "cache")
    assert "2 of its 32 val images are exact copies" in capsys.readouterr().err
    assert all("digests" in json.loads(m.read_text()) for m in metas)


def test_test_copies_of_train_images_are_warned(clean, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(clean, root, ignore=shutil.ignore_patterns(".fewshot_cache"))
    src = sorted((root / "digits" / "train").rglob("*.png"))[0]
    shutil.copy(src, root / "digits" / "test" / "9999.png")
    (train, _), infos, space = _load(root, tmp_path / "cache")
    test = load_split(infos, "test", space, 16, tmp_path / "cache")
    warn_split_copies(train, {"test": test}, space)
    err = capsys.readouterr().err
    assert "digits: 1 of its 31 test images are exact copies of its train images" in err
    assert "9999.png (= " in err and "the predictions for them come from memorised training images" in err
    # test/ is a submission's too (no labels, pred_all.json holds every id): removing them is for a held-out set
    assert "remove them only from a held-out test set whose labels you have" in err
    assert "remove them from test/" not in err


def _strip_digests(cache_dir: Path) -> list[Path]:
    """The entries' meta files as an older fewshot wrote them (no digests)."""
    metas = sorted(cache_dir.glob("*.json"))
    for meta in metas:
        record = json.loads(meta.read_text())
        del record["digests"]
        meta.write_text(json.dumps(record))
    return metas


def test_a_read_only_cache_from_before_the_digests_loads(clean, tmp_path, capsys, monkeypatch):
    """An entry without digests in a cache folder that cannot be written: the load hashed it and then failed on the
    write (check_output_dir's UserError); now the write is skipped, and the digests are kept for the process, so
    later stages do not hash the entry again."""
    root, _ = copied_root(clean, tmp_path, 2)
    cache_dir = tmp_path / "cache"
    _load(root, cache_dir)
    capsys.readouterr()
    metas = _strip_digests(cache_dir)
    before = {m: m.read_text() for m in metas}
    access = os.access
    # as root a chmod does not stop writes: the cache folder is read-only to the checks instead
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p).startswith(str(cache_dir))
                        else access(p, mode, **k))
    monkeypatch.setattr(cache, "_HASHED", {})
    monkeypatch.setattr(sets, "_WARNED", set())
    _load(root, cache_dir)
    assert "2 of its 32 val images are exact copies" in capsys.readouterr().err
    assert {m: m.read_text() for m in metas} == before  # nothing written
    monkeypatch.setattr(cache, "image_digest", lambda *a: pytest.fail("a kept entry was hashed again"))
    monkeypatch.setattr(decode_many, "image_digest", lambda *a: pytest.fail("a kept entry was hashed again"))
    (train, val), _, _ = _load(root, cache_dir)
    assert train.digests is not None and len(val.digests) == len(val)


def test_digests_are_not_added_to_a_meta_file_written_meanwhile(clean, tmp_path, monkeypatch):
    """Another process rebuilt the entry while this one hashed it: its meta file stands, not this one's, read
    before."""
    cache_dir = tmp_path / "cache"
    _load(clean, cache_dir)
    metas = _strip_digests(cache_dir)
    monkeypatch.setattr(cache, "_HASHED", {})
    digest, writes = decode_many.image_digest, []

    def racing(image):  # each hash, another writer's meta file
        writes.append(1)
        for meta in metas:
            meta.write_text(json.dumps({**json.loads(meta.read_text()), "other": len(writes)}))
        return digest(image)

    monkeypatch.setattr(cache, "image_digest", racing)
    monkeypatch.setattr(decode_many, "image_digest", racing)
    (train, val), _, _ = _load(clean, cache_dir)
    assert train.digests is not None and val.digests is not None  # this process has them all the same
    assert not any("digests" in json.loads(m.read_text()) for m in metas)


def test_other_ranks_take_no_digests(clean, tmp_path, monkeypatch):
    """Only rank 0 warns, so outside a process group only it hashes its images (another rank hashes only an entry it
    writes, so that rank 0 finds the digests there: test_cache_digest_ranks; under torchrun every rank hashes, for
    the ranks' pixel comparison: test_feh_ddp_agreement)."""
    _load(clean, tmp_path / "cache")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")  # one process ignores RANK, as init_distributed does
    monkeypatch.setattr(cache, "image_digest", lambda *a: pytest.fail("rank 1 hashed an image"))
    monkeypatch.setattr(decode_many, "image_digest", lambda *a: pytest.fail("rank 1 hashed an image"))
    (train, val), _, _ = _load(clean, tmp_path / "cache")
    assert train.digests is None and val.digests is None


def _set(digests: list[str | None], labels: list[int], names: list[str]) -> sets.ImageSet:
    n = len(digests)
    return sets.ImageSet(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), torch.tensor(labels),
                         torch.zeros(n, dtype=torch.long), torch.arange(n), [Path(f"/d/{name}.png") for name in names],
                         digests=digests)


def test_a_placeholder_in_two_train_classes_is_no_leak(capsys):
    """A "missing image" picture filed under two classes of train (and in val) is a placeholder, not a copy; an image
    of one class is still a copy."""
    space = types.SimpleNamespace(names=["digits"])
    train = _set(["ph", "ph", "real"], [0, 1, 1], ["t0", "t1", "t2"])
    warn_split_copies(train, {"val": _set(["ph", "other"], [0, 1], ["v0", "v1"])}, space)
    assert "exact copies" not in capsys.readouterr().err
    warn_split_copies(train, {"val": _set(["ph", "real"], [0, 1], ["v0", "v1"])}, space)
    err = capsys.readouterr().err
    assert "1 of its 2 val images are exact copies" in err and "/d/v1.png (= /d/t2.png)" in err and "v0" not in err


def test_blank_images_are_not_copies():
    """A uniform image in both splits tells nothing of a leak: no digest."""
    assert decode_many.image_digest(np.zeros((3, 8, 8), np.uint8)) is None
    assert decode_many.image_digest(np.full((3, 8, 8), 7, np.uint8)) is None
    one = np.zeros((3, 8, 8), np.uint8)
    one[0, 0, 0] = 1
    digest = decode_many.image_digest
    assert digest(one) == digest(one.copy()) != digest(one[:, ::-1])
    red = np.zeros((3, 8, 8), np.uint8)
    red[0] = 255  # a solid colour: each channel one value, not all the same one
    assert decode_many.image_digest(red) is None
