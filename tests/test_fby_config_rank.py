"""Review follow-ups of the config/CLI fixes (fBY): dataset names kept as typed without touching other fields through
YAML aliases, with the tags the user wrote, and through merge keys; one rank helper that an empty RANK does not
silence and a hand launch without RANK does not pass as rank 0; progress never taken from the run, nor from a run's
config.yaml copied elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from fewshot.config import load_yaml, read_config_file, read_yaml, resolve
from fewshot.errors import UserError

# 1. an alias shares one node: the name field's retag is its own


def test_a_name_field_aliasing_another_field_leaves_that_field_a_number():
    data = read_yaml("train: {epochs: &e 10}\ndata: {datasets: *e}\n")
    assert data == {"train": {"epochs": 10}, "data": {"datasets": "10"}}  # epochs was '10'
    data = read_yaml("data: {datasets: &l [1_000, b]}\nmodel: {img_size: *l}\n")
    assert data["data"]["datasets"] == ["1_000", "b"] and data["model"]["img_size"] == [1000, "b"]
    data = read_yaml("model: {img_size: &l [0x10, b]}\ndata: {unlabeled: *l}\n")  # the list named first
    assert data["model"]["img_size"] == [16, "b"] and data["data"]["unlabeled"] == ["0x10", "b"]


def test_an_aliased_name_keeps_the_epochs_a_number_through_resolve(tmp_path):
    config = tmp_path / "f.yaml"
    config.write_text("data: {datasets: &e 1_000}\ntrain: {epochs: *e}\n")
    assert load_yaml(config)["train"]["epochs"] == 1000  # was the text '1_000', which no epochs count reads
    cfg = resolve(file=config)
    assert cfg["data"]["datasets"] == "1_000" and cfg["train"]["epochs"] == 1000


# 2. a tag the user wrote is theirs


def test_a_tag_written_on_a_name_is_kept(tmp_path):
    config = tmp_path / "f.yaml"
    config.write_text("data:\n  datasets: !!python/name:os.system x\n")
    with pytest.raises(UserError, match="not valid YAML"):  # was the dataset 'x'
        resolve(file=config)
    assert read_yaml("data: {datasets: !!int 0x10}") == {"data": {"datasets": 16}}  # was '0x10'
    assert read_yaml("data: {datasets: [!!int 0x10, 0x10]}") == {"data": {"datasets": [16, "0x10"]}}
    assert read_yaml("!!float 1e3", field="data.unlabeled") == 1000.0
    assert read_yaml("!!str 1_000", field="data.datasets") == "1_000"  # as typed either way
    assert read_yaml("[~, on]", field="data.datasets") == [None, "on"]  # null is none; `on` a name


# 3. merge keys: a merged field is the mapping's own


@pytest.mark.parametrize("text", [
    "data: {<<: {datasets: [1_000, 0x10]}}\n",
    "data: {<<: [{datasets: [1_000, 0x10]}, {unlabeled: [2020-01-01]}]}\n",
    "x: &d {datasets: [1_000, 0x10]}\ndata: {<<: *d}\n",
])
def test_names_given_through_a_merge_key_are_kept_as_typed(text):
    data = read_yaml(text)
    merged = data["data"]
    assert merged["datasets"] == ["1_000", "0x10"]  # was [1000, 16]
    assert data.get("x", {"datasets": [1000, 16]})["datasets"] == [1000, 16]  # no name field: read as YAML
    if "unlabeled" in merged:
        assert merged["unlabeled"] == ["2020-01-01"]


def test_a_merge_key_at_the_top_merges_sections_whose_names_are_kept(tmp_path):
    data = read_yaml("base: &b {data: {datasets: 1_000}}\n<<: *b\n")
    assert data["data"]["datasets"] == "1_000" and data["base"]["data"]["datasets"] == 1000
    config = tmp_path / "f.yaml"
    config.write_text("data:\n  <<: {datasets: [1_000, b]}\n  unlabeled: 0x10\n")
    cfg = resolve(file=config)
    assert cfg["data"]["datasets"] == ["1_000", "b"] and cfg["data"]["unlabeled"].endswith("/0x10")  # a folder


def test_a_merge_shared_by_many_mappings_is_read_once():
    """An alias bomb through merge keys stays PyYAML's size (each merged mapping copied once per section)."""
    lines = ["a0: &a0 {datasets: 1_000}"]
    lines += [f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 4)}]}}" for i in range(1, 12)]
    data = read_yaml("\n".join(lines + ["data: {<<: *a11}"]) + "\n")
    assert data["data"] == {"datasets": "1_000"}


# 4. and 5. one rank helper: empty RANK is unset in one process, a hand launch without RANK is refused


def test_an_empty_rank_in_one_process_keeps_the_notes(monkeypatch, capsys):
    from fewshot.data.sets import _warns
    from fewshot.data.warn_once import warn_once
    from fewshot.models.backbone import note_pretrained_tag

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "")
    warn_once(["fby: a gap in the data"])
    note_pretrained_tag({"name": "resnet18.a1_in1k"})
    err = capsys.readouterr().err
    assert "warning: fby: a gap in the data" in err and "names timm's pretrained weights" in err  # was silent
    assert _warns()  # rank 0 hashes for the copies warning


def test_datasets_in_run_order_notes_under_an_empty_rank(monkeypatch, capsys, tmp_path):
    from fewshot.run_state import datasets_in_run_order

    for name in ("a", "b"):
        (tmp_path / name / "train" / "c").mkdir(parents=True)
    monkeypatch.setenv("RANK", "")
    assert datasets_in_run_order(["a", "b"], ["b", "a"], tmp_path) == ["a", "b"]
    assert "in another order" in capsys.readouterr().err


def test_a_hand_launch_without_rank_is_refused_before_any_note(monkeypatch, capsys):
    from fewshot.cli import launch_rank
    from fewshot.data.warn_once import warn_once
    from fewshot.models.backbone import note_pretrained_tag
    from fewshot.train import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (None, "", " "):
        if rank is None:
            monkeypatch.delenv("RANK", raising=False)
        else:
            monkeypatch.setenv("RANK", rank)
        for call in (launch_rank, distributed.launch_rank, lambda: warn_once(["fby: never said"]),
                     lambda: note_pretrained_tag({"name": "resnet18.a1_in1k"})):
            with pytest.raises(distributed.LaunchError, match="WORLD_SIZE=2 asks for several processes, but RANK "
                                                              "is not set"):
                call()
    assert capsys.readouterr().err == ""  # every process printed rank 0's notes, then init_distributed refused
    monkeypatch.setenv("RANK", "1")
    assert launch_rank() == 1
    for world in ("1", "x", "0", ""):  # one process: RANK ignored, a bad WORLD_SIZE left to init_distributed
        monkeypatch.setenv("WORLD_SIZE", world)
        assert launch_rank() == 0


def test_scanning_data_loads_no_torch_for_the_rank():
    """layout.py asks train.distributed (which loads torch) for the rank only when a note is due."""
    code = ("import sys, os; os.environ['RANK'] = '';"
            "import fewshot.data.layout as layout, fewshot.cli;"
            "assert 'torch' not in sys.modules, 'imported torch';"
            "layout.warn_once([]); assert 'torch' not in sys.modules, 'warn_once of nothing imported torch';"
            "layout.warn_once(['fby: a note']); print('imported' if 'torch' in sys.modules else 'no torch')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # a note due asks for the rank (the lazy import works, RANK= empty read as unset: rank 0 says it)
    assert "fby: a note" in done.stderr and done.stdout.strip() == "imported", (done.stdout, done.stderr)


# 6. progress is this command's, never the run's


def test_resume_never_takes_the_runs_progress_setting(tmp_path):
    from fewshot.run_state import STATE_FILE, adopt_untyped_settings

    recorded = resolve()
    recorded["train"]["progress"] = False
    recorded["train"]["tensorboard"] = not recorded["train"]["tensorboard"]
    (tmp_path / STATE_FILE).write_text(json.dumps({"config": recorded}))
    cfg = resolve()
    taken = adopt_untyped_settings(tmp_path, cfg, set())
    assert "train.progress" not in taken and cfg["train"]["progress"] is True  # was taken: no bars ever after
    assert taken["train.tensorboard"] == recorded["train"]["tensorboard"]  # the run's other settings still are


# 7. a run's config.yaml copied out of its folder still records a command's --no-progress


def test_a_runs_config_copied_elsewhere_drops_its_progress(tmp_path):
    cfg = resolve()
    cfg["train"]["progress"] = False
    cfg["_chosen"] = {}  # what every fine-tuning run's config.yaml records (no _task: that is MoCo's)
    copied = tmp_path / "elsewhere" / "config.yaml"  # no log.jsonl, checkpoints, ... beside it
    copied.parent.mkdir()
    copied.write_text(yaml.safe_dump(cfg))
    assert "progress" not in read_config_file(copied)["train"]  # was False: no bars for the new run
    del cfg["_chosen"]
    copied.write_text(yaml.safe_dump(cfg))  # a recipe of the user's that sets it keeps it
    assert read_config_file(copied)["train"]["progress"] is False
