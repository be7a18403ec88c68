"""Checkpoint writing and the random states it keeps (mutation testing, round 3): each test fails with one small
change to train/checkpoint.py or to the atomic write under it, which the resume tests let through."""

from __future__ import annotations

import io
import os
import random

import torch

from fewshot.train import checkpoint
from fewshot.train.checkpoint import load_checkpoint, logged_epoch, rng_state, save_checkpoint, set_rng_state


def payload(value: float) -> dict:
    return {"kind": "supervised", "config": {}, "model": {"w": torch.full((4,), value)}, "epoch": 1,
            "label_space": {}, "img_size": 32, "n_parameters": 4}


def test_a_reader_of_the_old_checkpoint_keeps_reading_all_of_it(tmp_path):
    """A save replaces last.pt by a rename: an `eval` that opened the old file while the run saved reads the old
    file whole, never the new one's first bytes after the old one's (a write in place truncates it under them)."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload(1.0))
    with open(path, "rb") as reader:
        save_checkpoint(path, payload(2.0))
        old = torch.load(io.BytesIO(reader.read()), map_location="cpu", weights_only=True)
    assert torch.equal(old["model"]["w"], torch.full((4,), 1.0))
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((4,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_the_new_bytes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    """fsync before os.replace: after a power cut the name never points at a file whose data were not written."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    save_checkpoint(tmp_path / "last.pt", payload(1.0))
    assert "replace" in events and "fsync" in events[:events.index("replace")]


def test_the_random_states_come_back_after_a_trip_through_a_checkpoint(tmp_path):
    """torch's and Python's generators are saved as they are now and restored from the file (weights_only)."""
    random.seed(5)
    torch.manual_seed(5)
    random.random()
    torch.rand(2)
    save_checkpoint(tmp_path / "last.pt", {**payload(0.0), "rng": rng_state()})
    expected = (random.random(), torch.rand(3))
    random.seed(99)
    torch.manual_seed(99)
    assert set_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"]) is None
    got = (random.random(), torch.rand(3))
    assert got[0] == expected[0] and torch.equal(got[1], expected[1])


def test_the_cuda_states_are_saved_where_cuda_is_there(monkeypatch):
    states = [torch.full((16,), 7, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    assert [torch.equal(a, b) for a, b in zip(rng_state()["cuda"], states)] == [True]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "cuda" not in rng_state()


def test_a_budget_stop_mid_epoch_is_logged_as_the_next_epoch():
    assert logged_epoch({"epoch": 2, "step_in_epoch": 3}) == 3  # 2 epochs done, the 3rd stopped part-way
    assert logged_epoch({"epoch": 2, "step_in_epoch": 1}) == 3  # one step into it is part-way too
    assert logged_epoch({"epoch": 2, "step_in_epoch": 0}) == 2
    assert logged_epoch({"epoch": None}) == 0


def test_a_state_value_that_is_no_tensor_is_refused(tmp_path):
    bad = payload(0.0)
    bad["model"]["w"] = [1.0, 2.0]
    try:
        checkpoint.check_checkpoint(bad, tmp_path / "x.pt")
    except checkpoint.CheckpointError as exc:
        assert "holds a value of type list under 'w', not a tensor" in str(exc)
    else:
        raise AssertionError("a model state holding a list was accepted")
