"""A --config file is read and parsed once per command (config.one_read_per_file): its settings, its _chosen
record, its preset and the warnings about it were each read from the file again, so a file saved in between (an
editor, a run writing its config.yaml) gave a config mixed from two versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewshot import config
from helpers.checks import run_main

FIRST = "optim:\n  lr: 0.004\nmodel:\n  name: test_resnet\n_chosen:\n  optim.lr: 0.004\n"
SECOND = "optim:\n  lr: 0.5\nmodel:\n  name: test_resnet\n_chosen:\n  optim.lr: 0.004\n"  # lr edited: the user's


@pytest.fixture()
def reads(monkeypatch, tmp_path):
    """A run's config.yaml whose reads are counted; ``edit`` rewrites it to SECOND after the first read."""
    path = tmp_path / "config.yaml"
    path.write_text(FIRST)
    state = {"n": 0, "edit": False}
    read_bytes = Path.read_bytes

    def counted(self):
        data = read_bytes(self)
        if self.resolve() == path.resolve():
            state["n"] += 1
            if state["edit"]:
                path.write_text(SECOND)
        return data

    monkeypatch.setattr(Path, "read_bytes", counted)
    return path, state


def test_a_file_saved_between_reads_gives_one_versions_config(reads):
    """The first version's lr was chosen by its run, so it is chosen again (None until the run does); the mix
    took the first version's 0.004 and the second's record, and pinned 0.004 as the user's."""
    path, state = reads
    state["edit"] = True
    cfg = config.resolve(file=path)
    assert cfg["optim"]["lr"] is None and state["n"] == 1


def test_a_command_reads_its_config_file_once(reads, tmp_path):
    path, state = reads
    rc, _, err = run_main("train", "--config", path, "--data", tmp_path / "nowhere", "--out", tmp_path / "run",
                          "--device", "cpu", "--no-progress")
    assert rc == 2, err  # no data: the config was resolved, its warnings given, then the start refused
    assert state["n"] == 1


def test_each_command_reads_the_file_as_it_is_then(reads):
    path, state = reads
    with config.one_read_per_file():
        assert config.read_config_file(path)["optim"]["lr"] == 0.004
        path.write_text(SECOND)
        assert config.read_config_file(path)["optim"]["lr"] == 0.004
        config.read_config_file(path)["optim"]["lr"] = 1  # a caller's change stays its own
        assert config.chosen_in_file(path) == {"optim.lr": 0.004}
    assert config.read_config_file(path)["optim"]["lr"] == 0.5 and config.chosen_in_file(path) == {}
    assert state["n"] == 3
