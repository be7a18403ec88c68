"""`fewshot run`'s own record of how each dataset decodes under data.resize=auto (RESIZE_RECORD) and of its median
training image (SHAPE_RECORD), kept in run_state.json: each stage's config copies them at its start, but `run
--resume` decided the run's anew from the images, so that where those had changed since, the test images and the
later stages decoded otherwise than the stopped stage had trained, and the note said "they decode as before"
(review rev94 #1)."""

from __future__ import annotations

import copy
from pathlib import Path

from fewshot.config.recorded import RESIZE_RECORD, SHAPE_RECORD, resize_record, shape_record
from fewshot.errors import UserError

FIT_RECORDS = (RESIZE_RECORD, SHAPE_RECORD)


def keep_fit_records(state, cfg: dict) -> None:
    """The run's records as settle_fit made them (``cfg``), into its state (``state``: RunState; the caller saves
    it): a resume restores them before deciding anything (restore_fit_records)."""
    for key in FIT_RECORDS:
        if cfg.get(key) is not None:
            state.data[key] = copy.deepcopy(cfg[key])


def restore_fit_records(cfg: dict, state) -> None:
    """On --resume, before settle_fit: the run's records into ``cfg``, so that it decides only the datasets they
    lack. A state from before they were kept there: those of the first stage whose config.yaml holds them (the
    run's, copied at that stage's start); none found: decided from the images, as before."""
    out = Path(state.out)
    found = _recorded_in(state.data, out / "run_state.json")
    stages = list(state.data.get("stages") or {}) if found is None else []
    for path in (out / stage / "config.yaml" for stage in stages):
        found = _recorded_in(_stage_config(path), path)
        if found is not None:
            break
    if found is not None:
        cfg.update(found)


def _recorded_in(data, where: Path) -> dict | None:
    """The FIT_RECORDS of ``data`` (read from ``where``), checked; None where it holds neither."""
    if not isinstance(data, dict) or not any(data.get(key) is not None for key in FIT_RECORDS):
        return None
    found = {SHAPE_RECORD: {name: list(shape) for name, shape in shape_record(data).items()}}
    if data.get(RESIZE_RECORD) is not None:
        found[RESIZE_RECORD] = resize_record(data, where)
    return found


def _stage_config(path: Path):
    """A stage's config.yaml as read; None where it is gone or unreadable (its stage's resume says so)."""
    from fewshot.config.yaml_io import load_yaml

    try:
        return load_yaml(path) if path.is_file() else None
    except (UserError, OSError, ValueError):
        return None
