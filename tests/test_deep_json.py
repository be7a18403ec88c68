"""JSON nested too deeply, in the files fewshot reads from a run folder, data root or cache.

`'[' * 200000 + ']' * 200000` overflowed Python's stack inside json.loads (RecursionError, an internal error with a
traceback) wherever such a file was read: run_state.json on `run --resume`, summary.json when a run folder is
given as a checkpoint, a stage's log.jsonl, a cache entry's meta file, a pseudo-label or subsets record. Each
reader now treats it as it treats any other corrupt file there: passed over, refused, or rebuilt. JSON that
parses but nests hundreds of levels (990) broke the readers' own recursion over it (flatten_dotted) instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewshot.data.cache as cache
import fewshot.data.decode_many as decode_many
from fewshot.errors import UserError
from fewshot.utils import loads_run_json

DEEP = "[" * 200_000 + "]" * 200_000


def deep_file(path: Path, text: str = DEEP) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def case_recorded_setting(tmp: Path):
    from fewshot.run_state import recorded_setting

    deep_file(tmp / "run_state.json")
    assert recorded_setting(tmp, "train.epochs") is None  # unreadable: RunState.resume says what is wrong


def case_run_state_resume(tmp: Path):
    from fewshot.run_state import RunState

    deep_file(tmp / "run_state.json")
    with pytest.raises(UserError, match="run_state.json cannot be read.*nested too deeply"):
        RunState.resume(tmp, {}, None)


def case_run_stages_finished(tmp: Path):
    from fewshot.cli import _run_stages_finished

    deep_file(tmp / "run_state.json")
    assert _run_stages_finished(tmp) is False


def case_holds_finished_run(tmp: Path):
    from fewshot.run_state import holds_finished_run

    deep_file(tmp / "run_state.json")
    deep_file(tmp / "summary.json", "{}")
    assert holds_finished_run(tmp) is False


def case_trained_speeds(tmp: Path):
    from fewshot.run_budget import trained_speeds

    row = {"epoch": 1, "step": 10, "epoch_time_s": 5.0}
    log = deep_file(tmp / "log.jsonl", json.dumps(row) + "\n" + DEEP + "\n")
    step_s, _ = trained_speeds(log)  # the deep line is passed over, the good row still counts
    assert step_s == pytest.approx(0.5)


def case_resolve_checkpoint(tmp: Path):
    from fewshot.train.checkpoint import CheckpointError, resolve_checkpoint

    deep_file(tmp / "summary.json")
    deep_file(tmp / "finetune" / "checkpoints" / "best.pt", "")
    with pytest.raises(CheckpointError, match="names no stage that predicted"):
        resolve_checkpoint(tmp)


def case_export_note(tmp: Path):
    from fewshot.ssl.export import note_best_knn_epoch

    deep_file(tmp / "metrics.json")
    assert note_best_knn_epoch(tmp, {"epoch": 3}) is None


def case_recorded_pseudo_labels(tmp: Path):
    from fewshot.run_pseudo import recorded_pseudo_labels

    assert recorded_pseudo_labels(deep_file(tmp / "pseudo_labels_round2.json")) is None


def case_pool_share(tmp: Path):
    from fewshot.run_pseudo import pool_share_in_time

    record = deep_file(tmp / "pseudo_labels_round2.json")
    assert pool_share_in_time(None, torch.zeros(10, 3, 4, 4), 60.0, record, seed=0) is None  # 10 images: all


def case_subsets_record(tmp: Path):
    record = deep_file(tmp / "cache" / "k.seed0.subsets.json")
    cache.add_to_subsets_record(record, 300)
    assert json.loads(record.read_text()) == [300]  # rewritten from scratch


def case_pool_decode_limit(tmp: Path, monkeypatch=None):
    from fewshot.run_pseudo import pool_decode_limit

    record = deep_file(tmp / "cache" / "k.seed0.subsets.json")
    monkeypatch.setattr(cache, "is_cached", lambda *a, **k: False)
    monkeypatch.setattr(decode_many, "decode_seconds_per_image", lambda *a, **k: 1.0)
    monkeypatch.setattr(cache, "subsets_record", lambda *a, **k: record)
    cfg = {"data": {"root": str(tmp), "cache_dir": str(tmp / "cache"), "crop_pct": 1.0},
           "model": {"img_size": 32}, "train": {"seed": 0}}
    assert pool_decode_limit(cfg, [tmp / f"{i}.png" for i in range(600)], 300.0) == 300
    assert json.loads(record.read_text()) == [300]


def _images(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = folder / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def case_cache_meta(tmp: Path):
    paths, cache_dir = _images(tmp / "img"), tmp / "cache"
    first = cache.load_images(paths, 8, cache_dir).images.clone()
    (meta,) = [m for m in cache_dir.rglob("*.json") if not m.name.endswith(".subsets.json")]
    deep_file(meta)
    again = cache.load_images(paths, 8, cache_dir)  # the entry is rebuilt
    assert torch.equal(again.images, first)
    assert isinstance(json.loads(meta.read_text()), dict)


def case_cache_digests(tmp: Path):
    paths, cache_dir = _images(tmp / "img"), tmp / "cache"
    cache.load_images(paths, 8, cache_dir)
    (meta_file,) = [m for m in cache_dir.rglob("*.json") if not m.name.endswith(".subsets.json")]
    meta = json.loads(meta_file.read_text())
    meta.pop("digests", None)
    deep_file(meta_file)  # rewritten by another process since it was read: not extended
    arr = np.zeros((3, 3, 8, 8), dtype=np.uint8)
    kept = cache._kept_digests(meta, arr, [], paths, meta_file)
    assert len(kept) == 3 and meta_file.read_text() == DEEP


CASES = {f.__name__[5:]: f for f in (
    case_recorded_setting, case_run_state_resume, case_run_stages_finished, case_holds_finished_run,
    case_trained_speeds, case_resolve_checkpoint, case_export_note, case_recorded_pseudo_labels, case_pool_share,
    case_subsets_record, case_pool_decode_limit, case_cache_meta, case_cache_digests)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_deep_json_is_a_corrupt_file(name, tmp_path, monkeypatch):
    """Each reader treats a deeply nested file as it treats any corrupt one there (None, a UserError, a rebuild)."""
    case = CASES[name]
    if "monkeypatch" in case.__code__.co_varnames:
        case(tmp_path, monkeypatch=monkeypatch)
    else:
        case(tmp_path)


def test_parseable_but_deep_json_is_refused(tmp_path):
    """990 levels parse, but the readers' own recursion over them (flatten_dotted, ==) overflowed: refused too."""
    from fewshot.run_state import RunState, recorded_setting

    deep = '{"config": ' + '{"a": ' * 990 + "1" + "}" * 990 + ', "budget_minutes": 1, "stages": {}, "seconds": 0}'
    deep_file(tmp_path / "run_state.json", deep)
    assert recorded_setting(tmp_path, "train.epochs") is None
    with pytest.raises(UserError, match="nested too deeply"):
        RunState.resume(tmp_path, {}, None)
    for text in (DEEP, "[" * 990 + "]" * 990):
        with pytest.raises(ValueError, match="nested too deeply"):
            loads_run_json(text)
    assert loads_run_json('{"a": [[{"b": 1}]], "s": "' + "[" * 500 + '"}') == {"a": [[{"b": 1}]], "s": "[" * 500}


def test_deep_answer_key_is_refused(tmp_path):
    """test_labels.json (a data root's) already named as unreadable: kept so."""
    from fewshot.eval.predict import load_answer_key

    with pytest.raises(UserError, match="answer key .* cannot be read as JSON"):
        load_answer_key(deep_file(tmp_path / "test_labels.json"))


def test_depth_counts_containers_not_values():
    """65 nested empty lists passed and 65 holding a value were refused: the value was counted as a level. A sibling
    `[]` beside the chain makes more brackets than the limit, so that the walk (deeper_than) judges the file: with
    no more brackets than levels the count alone passed it, and the walk's limit went untested."""
    from fewshot.config import deeper_than
    from fewshot.utils import RUN_JSON_DEPTH

    n = RUN_JSON_DEPTH
    for inner in ("", "1", '"x"', '{"a": 1}'):
        depth = n - 1 if inner.startswith("{") else n  # the object is a level of its own
        text = "[[], " + "[" * (depth - 1) + inner + "]" * depth
        assert text.count("[") + text.count("{") > n and not deeper_than(json.loads(text), n)
        assert loads_run_json(text) is not None  # exactly the limit: read
        with pytest.raises(ValueError, match="nested too deeply"):
            loads_run_json("[" + text + "]")
    assert deeper_than([[]], 1) and not deeper_than([[1]], 2) and not deeper_than(1, 0)
    assert deeper_than({"a": {"b": []}}, 2) and not deeper_than({"a": {"b": 3}}, 2)
