"""Review rev95 of the run's fit records: a huge side in `_shapes` crashed predict's note (#1) and the record's
filter of hand edits was untested (#2); a run_state.json without `_resize` but with `_shapes` (as its refusal
advised) decided the crop or pad anew, where the stopped stage had padded (#3); choose_model read MoCo's drop from
the state beside pretrain_dropped_before (#4)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml
from PIL import Image

from fewshot.config.recorded import shape_record
from fewshot.data import aspect
from fewshot.data.layout import scan_root
from fewshot.data.shape_change import shape_change_notes, training_shapes
from fewshot.errors import UserError
from helpers.checks import run_main
from helpers.tiny import build_digits, tiny_train_argv
from test_fFO_fit_records import _requested, _root, _started_run

MAX_RECORDED_SIDE = 1 << 16  # PIL's practical bound, as config.recorded's


@pytest.mark.parametrize("entry", ["48x16", [48, 16, 1], [48], [1.5, 2], [48.0, 16], [True, 3], [0, 4], [-48, 16],
                                   [float("inf"), 16], [float("nan"), 16], ["48", "16"], None, {"w": 48, "h": 16},
                                   [10 ** 400, 1], [MAX_RECORDED_SIDE + 1, 16]])
def test_a_malformed_shape_entry_counts_as_not_recorded(entry):
    assert shape_record({"_shapes": {"wide": entry, "ok": [48, 16]}}) == {"ok": (48, 16)}


@pytest.mark.parametrize("record", ["wide: 48x16", [[48, 16]], 5, None])
def test_a_shape_record_that_is_no_mapping_counts_as_none(record):
    assert shape_record({"_shapes": record}) == {}


def test_a_shape_record_keys_only_dataset_names_and_keeps_the_largest_side():
    record = {1: [48, 16], None: [48, 16], "wide": (MAX_RECORDED_SIDE, 1)}
    assert shape_record({"_shapes": record}) == {"wide": (MAX_RECORDED_SIDE, 1)}
    assert shape_record("not a config") == {}


def test_a_huge_recorded_side_leaves_the_note_to_data_resize(tmp_path):
    root = _root(tmp_path / "root", "wide", 48, 16)
    [info] = scan_root(root, ["wide"], splits=("train",))
    trained = training_shapes({"_shapes": {"wide": [10 ** 400, 1]}})
    assert shape_change_notes([info], "crop", "crop", 16, trained) == []
    [line] = shape_change_notes([info], "crop", "auto", 16, training_shapes({"_shapes": {"wide": [10 ** 40, 1]}}))
    assert "when it trained" not in line, line


def test_predict_with_a_hand_edited_huge_shape_in_the_checkpoint_does_not_crash(tmp_path, monkeypatch):
    """A crop run on square digits, its checkpoints' `_shapes` edited to a 400-digit width, given 3:1 images."""
    from fewshot.train.checkpoint import load_checkpoint, save_checkpoint

    root = build_digits(tmp_path / "root", shots=2)
    run = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(root, run, "data.resize=crop"))
    assert rc == 0, err
    checkpoints = sorted(run.rglob("*.pt"))
    assert checkpoints
    for path in checkpoints:
        ck = load_checkpoint(path)
        ck["config"]["_shapes"] = {"digits": [10 ** 400, 1]}
        save_checkpoint(path, ck)
    for png in sorted((root / "digits").rglob("*.png")):
        with Image.open(png) as img:
            w, h = img.size
        Image.new("RGB", (3 * w, h)).save(png)
    monkeypatch.setattr(aspect, "_READ", {})  # the headers as a new process reads them
    rc, _, err = run_main("predict", run, "--data", root, "--out", tmp_path / "pred_all.json", "--device", "cpu")
    assert rc == 0, err
    assert "when it trained" not in err, err


def _state_without(out, key: str) -> None:
    """run_state.json without ``key``, with a stopped round 1 whose config.yaml holds the run's records."""
    data = json.loads((out / "run_state.json").read_text())
    del data[key]
    data["stages"] = {"finetune_labelled": {}}
    (out / "run_state.json").write_text(json.dumps(data))
    (out / "finetune_labelled").mkdir()
    stage = {"_resize": {"wide": "pad"}, "_shapes": {"wide": [48, 16]}}
    (out / "finetune_labelled" / "config.yaml").write_text(yaml.safe_dump(stage))


@pytest.mark.parametrize("key", ["_resize", "_shapes"])
def test_a_record_missing_from_run_state_comes_from_the_first_stage_holding_it(tmp_path, monkeypatch, key):
    from fewshot.run_fit_record import restore_fit_records
    from fewshot.run_state import RunState

    root, out = _started_run(tmp_path, monkeypatch)
    _state_without(out, key)
    other = json.loads((out / "run_state.json").read_text())
    assert key not in other and {"_resize", "_shapes"} - {key} <= set(other)
    cfg = {"data": {"root": str(root), "resize": "auto"}}
    restore_fit_records(cfg, RunState.resume(out, _requested(root), None))
    assert cfg["_resize"] == {"wide": "pad"} and cfg["_shapes"] == {"wide": [48, 16]}


def test_run_state_s_refusal_of_a_damaged_resize_advises_what_a_resume_does(tmp_path, monkeypatch):
    from fewshot.run_state import RunState

    root, out = _started_run(tmp_path, monkeypatch)
    data = json.loads((out / "run_state.json").read_text())
    data["_resize"] = {"wide": "PAD"}
    (out / "run_state.json").write_text(json.dumps(data))
    with pytest.raises(UserError) as refused:
        RunState.resume(out, _requested(root), None)
    message = str(refused.value)
    assert message.startswith(f"--resume: {out / 'run_state.json'} is damaged: its _resize entry"), message
    assert "delete it to take the record from the run's first stage that holds one" in message, message
    assert "decided again from its images." not in message, message


def test_choose_model_reads_moco_s_drop_from_pretrain_dropped_before(tmp_path, monkeypatch):
    """pretrain_kept_off's reading is the one source: round 1 replaces the weights, the file is not read."""
    from fewshot import run_startup
    from fewshot.run_state import RunState

    stage = tmp_path / "finetune_labelled"
    (stage / "checkpoints").mkdir(parents=True)
    (stage / "checkpoints" / "last.pt").write_bytes(b"x")
    state = RunState(tmp_path, {"stages": {"finetune_labelled": {"status": "trained"}}})
    adopted, asked = [], []
    monkeypatch.setattr(run_startup, "adopt_stage_architecture", lambda cfg, sdir: adopted.append(sdir))

    def built(cfg, load_weights=True):
        asked.append(load_weights)
        raise UserError("stop here")
    monkeypatch.setattr(run_startup, "check_model", built)
    me = SimpleNamespace(cfg={"model": {"img_size": 32, "weights": str(tmp_path / "gone.safetensors")}},
                         r={"pretrain": True}, state=state, out=tmp_path, pretrain_dropped_before="too short")
    with pytest.raises(UserError, match="stop here"):
        run_startup.StartupMixin.choose_model(me)
    assert adopted == [stage] and asked == [False]
