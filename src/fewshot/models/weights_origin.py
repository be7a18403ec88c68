"""Where a --weights file's features were learnt: by fewshot on the user's own small data (a `fewshot export` or a
fewshot checkpoint of a run that started from random init or from such a file), or elsewhere (ImageNet-grade
weights, or a fewshot run that started from them). The first fine-tune at the small-data recipe, which the ImageNet
recipe barely moved (hunt hBW #2); the second keep the ImageNet recipe (review rev100 #3, #5)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

# export metadata (start_fields): how the exported run started, one of STARTS, and the weights file it started from
START_KIND, START_FILE = "start", "start_weights"
RANDOM, FEWSHOT, OTHER, UNKNOWN = "random init", "fewshot", "other weights", "unknown"
STARTS = (RANDOM, FEWSHOT, OTHER, UNKNOWN)
MAX_DEPTH = 8  # a chain of runs each started from the one before; a loop ends here as UNKNOWN


@dataclass(frozen=True)
class Origin:
    kind: str  # "export", "checkpoint" or "" (any other file)
    start: str = ""  # one of STARTS; "" where an export records none (written before the record)
    start_file: str = ""

    @property
    def small_data(self) -> bool:
        """Fine-tuned at the small-data recipe: fewshot's own file, unless its run started from other weights; an
        older export without the record, or one whose start is gone, keeps the rule exports had before it."""
        return bool(self.kind) and self.start != OTHER


def weights_origin(path) -> Origin:
    """The Origin of a --weights file, read cheaply (a safetensors header; a .pt's tensors mapped, weights_only) and
    kept per file version, as the recipe, its note and the warnings each ask."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return Origin("")
    return _cached(os.path.abspath(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _cached(path: str, mtime_ns: int, size: int) -> Origin:
    return _origin(Path(path), 0)


def _origin(path: Path, depth: int) -> Origin:
    from fewshot.errors import UserError
    from fewshot.models.weights_file import is_safetensors, read_tensor_file
    from fewshot.ssl.export import export_metadata
    from fewshot.train.checkpoint import FORMAT

    if is_safetensors(path):
        meta = export_metadata(path)
        return Origin("export", str(meta.get(START_KIND, "")), str(meta.get(START_FILE, ""))) if meta else Origin("")
    try:
        ck = read_tensor_file(path, mmap=True)
    except (UserError, OSError):
        return Origin("")
    config = ck.get("config") if isinstance(ck, dict) else None
    if ck.get("format") != FORMAT or not isinstance(config, dict):
        return Origin("")
    return Origin("checkpoint", *start_of(config, depth + 1))


def start_of(config, depth: int = 0) -> tuple[str, str]:
    """How the run of a checkpoint's ``config`` started (one of STARTS) and from which weights file: its
    model.weights, judged as a --weights file is; a file gone since is UNKNOWN."""
    model = config.get("model") if isinstance(config, dict) else None
    weights = model.get("weights") if isinstance(model, dict) else None
    if not weights or not isinstance(weights, str):
        return RANDOM, ""
    if depth >= MAX_DEPTH or not Path(weights).is_file():
        return UNKNOWN, weights
    return (FEWSHOT if _origin(Path(weights), depth).small_data else OTHER), weights


def start_fields(config) -> dict:
    """The export metadata recording how the exported run started (START_KIND, START_FILE)."""
    kind, file = start_of(config)
    return {START_KIND: kind, START_FILE: file}
