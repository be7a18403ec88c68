"""Which datasets' train images stand in for a pool is returned by the pool's scan, not read back out of its
message (review of a8cc125)."""

from __future__ import annotations

import shutil

from tests.helpers.tiny import build_digits


def test_stand_ins_are_known_by_dataset_whatever_its_name(tmp_path):
    """A dataset named `digits; b` without a pool: its stand-in train images were searched for in the message
    split at "; ", not found, and counted as pool images left out as labelled ones."""
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.data.pool import pool_with_sources
    from fewshot.train.semi import pool_files

    root = build_digits(tmp_path / "data", shots=1)
    (root / "digits").rename(root / "digits; b")
    shutil.rmtree(root / "unlabeled")  # no pool: the train images stand in for MoCo
    cfg = resolve(flags={"data.root": str(root), "model.img_size": 16})
    infos = scan_root(root, None, splits=("train", "val"))
    paths, ids, source, stand_ins = pool_with_sources(cfg, infos)
    assert stand_ins == [0] and len(paths) == len(infos[0].train) and set(ids) == {0}
    assert pool_with_sources(cfg, infos) == (paths, ids, source, stand_ins)  # the memo's answer: the same four
    paths, _, source = pool_files(cfg, infos, exclude_train=True)
    assert paths == [] and "left out" not in source, source
    assert "'digits; b': no pool (its train images are labelled)" in source  # quoted: the name holds '; '


def test_a_given_pool_has_no_stand_ins(tmp_path):
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.data.pool import pool_with_sources

    root = build_digits(tmp_path / "data", shots=1)
    cfg = resolve(flags={"data.root": str(root), "data.unlabeled": [str(root / "unlabeled" / "digits")]})
    infos = scan_root(root, None, splits=("train", "val"))
    paths, ids, _, stand_ins = pool_with_sources(cfg, infos)
    assert paths and stand_ins == [] and set(ids) == {-1}
    cfg = resolve(flags={"data.root": str(root)})  # ROOT/unlabeled/digits: a pool of its own
    assert pool_with_sources(cfg, infos)[3] == []
