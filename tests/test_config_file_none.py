"""A config file's plain `None` / `none` / `NONE` reads as null, as a key=value word's does: `cache_dir: None` in a
file filled a folder named None. Where `none` is a word (moco.shuffle_bn) or a name (data.datasets), and quoted,
it stays text; a recorded config.yaml writes such text quoted, so that a resume reads back what the run used."""

from __future__ import annotations

from pathlib import Path

import pytest


def resolved_file(tmp_path, text: str) -> dict:
    from fewshot.config import resolve

    path = tmp_path / "c.yaml"
    path.write_text(text)
    return resolve(file=path)


@pytest.mark.parametrize("word", ["None", "none", "NONE"])
def test_a_files_plain_none_reads_as_null(tmp_path, word):
    cfg = resolved_file(tmp_path, f"data:\n  cache_dir: {word}\nmodel:\n  weights: {word}\noptim:\n  lr: {word}\n")
    assert cfg["data"]["cache_dir"] is None and cfg["model"]["weights"] is None and cfg["optim"]["lr"] is None


def test_words_names_and_quoted_text_stay_text(tmp_path):
    cfg = resolved_file(tmp_path, "data:\n  cache_dir: 'None'\n  datasets: none\nmoco:\n  shuffle_bn: none\n")
    assert Path(cfg["data"]["cache_dir"]).name == "None" and cfg["data"]["datasets"] in ("none", ["none"])
    assert cfg["moco"]["shuffle_bn"] in ("none", False, "off")


def test_a_recorded_none_text_reads_back_as_text(tmp_path):
    from fewshot.config.recorded import save_yaml
    from fewshot.config.yaml_io import read_yaml

    save_yaml({"data": {"cache_dir": "None", "root": "none", "datasets": None}}, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert read_yaml(text) == {"data": {"cache_dir": "None", "root": "none", "datasets": None}}, text


def test_a_files_plain_none_pool_is_no_pool_and_a_dataset_named_none_stays(tmp_path):
    """data.unlabeled holds paths (review rev67, finding 3): `unlabeled: None` read as the folder <config dir>/None."""
    cfg = resolved_file(tmp_path, "data:\n  unlabeled: None\n  datasets: [none, None]\n")
    assert cfg["data"]["unlabeled"] is None and cfg["data"]["datasets"] == ["none", "None"]
