"""Review rev109: a full disk's retry read only the space non-root users may write (root kept the part where
deleting it made room) and had no margin (#1); the keep note promised what a second Ctrl-C does (#2); the val
guard's note blamed pseudo-labels a round barely had, and nested parentheses (#3); val_drop_noise raised TypeError on
a count of None and took a missing one as equal (#4); the balance benchmarks left out the run's
data.skip_bad_images (#5); a part whose rows were all stale was said to be decoded again (#6)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

import fewshot.data.cache_words as cache_words
from fewshot.data.cache import is_cached, load_images
from fewshot.run_guard import round_loss_note, val_drop_noise
from test_fGD_stopped_decode_kept import SIZE, copied_pool, counted_decoder, parts, stopped_load
from test_fGF_kept_part_size import ROW, room_for_one_entry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pool(digits_root, tmp_path) -> list[Path]:
    return copied_pool(digits_root, tmp_path)


def full_disk(monkeypatch, cache_dir: Path, euid: int, bavail: int, bfree: int) -> list[int]:
    """A disk with room for one entry (posix_fallocate refuses beside the part) whose statvfs reports ``bavail``
    and ``bfree`` bytes, read by a process of ``euid``."""
    refused = room_for_one_entry(monkeypatch, cache_dir, capacity=9 * ROW)  # the part (2 rows) leaves no room
    vfs = SimpleNamespace(f_bavail=bavail, f_bfree=bfree, f_frsize=1, f_blocks=1 << 40)
    monkeypatch.setattr(os, "statvfs", lambda where: vfs)
    monkeypatch.setattr(os, "geteuid", lambda: euid, raising=False)
    return refused


@pytest.mark.parametrize("euid", [0, 1000])
def test_root_counts_the_blocks_reserved_for_it(pool, tmp_path, monkeypatch, capsys, euid):
    """f_bavail 0, f_bfree 1 GB: root can write there, so deleting the part makes room; another user cannot."""
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=2)
    (part,) = parts(cache_dir)
    refused = full_disk(monkeypatch, cache_dir, euid, bavail=0, bfree=1 << 30)
    capsys.readouterr()
    load_images(paths, SIZE, cache_dir, threads=1)
    err = capsys.readouterr().err
    assert refused == [8 * ROW]
    if euid == 0:
        assert f"ignoring {part}" in err and not part.exists() and is_cached(paths, SIZE, cache_dir), err
    else:
        assert "could not write the image cache" in err and part.exists(), err
        assert not is_cached(paths, SIZE, cache_dir)


def test_exactly_enough_room_keeps_the_part(pool, tmp_path, monkeypatch, capsys):
    """Free space plus the part's blocks exactly the entry's bytes: no room left for its meta file, so the part
    would have been deleted for nothing; a margin more is needed."""
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=2)
    (part,) = parts(cache_dir)
    free = 8 * ROW - part.stat().st_blocks * 512
    full_disk(monkeypatch, cache_dir, 1000, bavail=free, bfree=free)
    load_images(paths, SIZE, cache_dir, threads=1)
    assert part.exists() and "ignoring" not in capsys.readouterr().err
    # with a few MB to spare it goes
    full_disk(monkeypatch, cache_dir, 1000, bavail=free + (16 << 20), bfree=free + (16 << 20))
    load_images(paths, SIZE, cache_dir, threads=1)
    assert not part.exists() and is_cached(paths, SIZE, cache_dir)


def test_a_part_whose_rows_are_all_stale_is_deleted_without_saying_they_are_decoded_again(pool, tmp_path,
                                                                                         monkeypatch, capsys):
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=2)
    (part,) = parts(cache_dir)
    for p in paths[:2]:  # both kept rows' files changed since the stop: none of the part's rows is valid
        p.write_bytes(p.read_bytes())
        os.utime(p, (1, 1))
    refused = room_for_one_entry(monkeypatch, cache_dir, capacity=9 * ROW)  # the part (2 rows) leaves no room
    capsys.readouterr()
    seen = counted_decoder(monkeypatch)
    load_images(paths, SIZE, cache_dir, threads=1)
    err = capsys.readouterr().err
    assert refused == [8 * ROW] and len(seen) == 8
    assert "ignoring" not in err and "kept again" not in err, err
    assert not part.exists() and is_cached(paths, SIZE, cache_dir)


def test_the_keep_note_promises_nothing_of_a_second_ctrl_c(pool, tmp_path, monkeypatch, capsys):
    """Said before a keep that may fail, for a SIGTERM or a failure too, and a second Ctrl-C within a second is
    ignored: "up to", and nothing about what a second Ctrl-C does."""
    monkeypatch.setattr(cache_words, "KEEP_NOTE_BYTES", 1)
    cache_words._note_keeping("decoding images", 4, 2 * 10**9)
    err = capsys.readouterr().err
    assert "keeping up to 4 decoded images in the image cache (2.0 GB) for the next load of the same files" in err
    assert "Ctrl-C" not in err and "stopped" not in err and "drops" not in err, err


def _val(acc: float, **datasets) -> dict:
    return {"mean_acc1": acc, "datasets": datasets or {"a": {"acc1": acc, "n": 25}}}


def _labels(kept: int, check: dict | None = None) -> dict:
    entry = {"kept": kept, "pool": 400}
    if check is not None:
        entry["pool_classes_check"] = check
    return {"datasets": {"a": entry}}


def _depth(text: str) -> int:
    depth = most = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        most = max(most, depth)
    return most


def test_a_round_that_kept_few_pseudo_labels_is_not_blamed_on_them():
    note = round_loss_note("round 2", _val(72.0), _val(40.0), _labels(5))
    assert note is not None and "likely wrong" not in note["why"] and "clean the pool" not in note["why"]
    assert "only 5 pseudo-labels" in note["why"] and "--baseline" in note["why"], note["why"]
    many = round_loss_note("round 2", _val(72.0), _val(40.0), _labels(173))["why"]
    assert "its 173 pseudo-labels were likely wrong" in many and "clean the pool" in many, many


def test_a_pool_check_that_measured_nothing_nests_no_parentheses():
    why = round_loss_note("round 2", _val(72.0), _val(40.0), _labels(173))["why"]
    assert "the pool check measured no dataset" in why and _depth(why) == 1, why


@pytest.mark.parametrize("last", [
    {"a": {"acc1": 40.0, "n": None}},  # TypeError in the guard before
    {"a": {"acc1": 40.0}},  # counted as equal before
    {"a": {"acc1": 40.0, "n": 25}, "b": {"acc1": 40.0, "n": 25}},  # a dataset on one side only
    {"a": {"acc1": None, "n": 25}},
    {"a": "40"},
])
def test_counts_that_are_not_known_on_both_sides_give_no_note(last):
    best, worse = _val(72.0), {"mean_acc1": 40.0, "datasets": last}
    assert val_drop_noise(best, worse) is None
    assert round_loss_note("round 2", best, worse, _labels(173)) is None
    assert val_drop_noise({"mean_acc1": 72.0, "datasets": {"a": {"acc1": 72.0, "n": None}}}, _val(40.0)) is None


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module


class Stop(Exception):
    pass


def test_balance_priors_passes_the_runs_skip_bad_images(bench, monkeypatch):
    bp = bench("balance_priors")
    seen = {}

    def data_for(tm, root, split, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(bp.P, "load_trained", lambda run, device: SimpleNamespace(
        cfg={"data": {"skip_bad_images": True}}))
    monkeypatch.setattr(bp.P, "_data_for", data_for)
    with pytest.raises(Stop):
        bp.logits_of(Path("run"), Path("root"))
    assert seen.get("skip_bad") is True and seen.get("scoring") is True, seen


def test_balance_passes_the_runs_skip_bad_images(bench, monkeypatch):
    bal = bench("balance")
    seen = []

    def evaluate_run(run, data, mode, device, **kw):
        seen.append(kw.get("skip_bad"))
        return {"datasets": {"a": {"acc1": 50.0}}, "mean_acc1": 50.0}

    monkeypatch.setattr(bal, "load_trained", lambda run, device: SimpleNamespace(
        cfg={"data": {"skip_bad_images": True}}))
    monkeypatch.setattr(bal, "evaluate_run", evaluate_run)
    bal.scores(Path("run"), Path("root"))
    assert seen == [True, True, True]
