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
    lack. Each record the state lacks (one from before they were kept there, or one deleted as the refusal of a
    damaged one advises): the first stage's whose config.yaml holds it (the run's, copied at that stage's start);
    none found: decided from the images, as before. Taken whole from the state as soon as it held either, a deleted
    _resize was decided anew where the stopped stage had padded (review rev95 #3)."""
    out = Path(state.out)
    stages = list(state.data.get("stages") or {})
    sources = [(lambda: state.data, out / "run_state.json")]
    sources += [(lambda path=path: _stage_config(path), path) for path in (out / s / "config.yaml" for s in stages)]
    for key in FIT_RECORDS:
        for read, where in sources:
            found = _recorded_in(read(), where, key)
            if found:
                cfg[key] = found
                break


def _recorded_in(data, where: Path, key: str) -> dict | None:
    """The FIT_RECORDS entry ``key`` of ``data`` (read from ``where``), checked; None where it holds none."""
    if not isinstance(data, dict) or data.get(key) is None:
        return None
    if key == RESIZE_RECORD:
        return resize_record(data, where)
    return {name: list(shape) for name, shape in shape_record(data).items()}


def _stage_config(path: Path):
    """A stage's config.yaml as read; None where it is gone or unreadable (its stage's resume says so)."""
    from fewshot.config.yaml_io import load_yaml

    try:
        return load_yaml(path) if path.is_file() else None
    except (UserError, OSError, ValueError):
        return None
