"""The data.resize a --weights file records (a `fewshot export`'s metadata, or a fewshot checkpoint's config), and
its use by `train --weights`, `pretrain --weights` and `probe --weights`: a backbone whose MoCo features were learnt
on letterboxed images was fine-tuned on cropped ones without a word (hunt hBT #4), as the bit depth once was.

A file may come from anyone: a value other than crop, pad or auto (or a dataset name that is no folder name) is
set aside with a warning, and the images are decided as if the file recorded nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fewshot.config.recorded import RESIZE_MODES, RESIZE_RECORD, WEIGHTS_RESIZE
from fewshot.data.aspect import MIN_PADDED_SIDE, header_sizes, median_shape, ratio, sample_paths, too_thin
from fewshot.errors import one_line

SETTINGS = RESIZE_MODES + ("auto",)
NEAR_SQUARE = 1.05  # a median image this close to square is left out of the mismatch note: a crop drops under 5 %
# the export's metadata fields: data.resize, and under auto each dataset's choice (JSON text: names may hold commas)
META_RESIZE, META_DATASETS = "resize", "resize_datasets"


def export_fields(config) -> dict:
    """The metadata fields `fewshot export` adds for a checkpoint's ``config``: none where it records no
    data.resize (a run of an older version)."""
    data = config.get("data") if isinstance(config, dict) else None
    resize = data.get("resize") if isinstance(data, dict) else None
    if resize not in SETTINGS:
        return {}
    fields = {META_RESIZE: resize}
    record = config.get(RESIZE_RECORD)
    if resize == "auto" and isinstance(record, dict) and record:
        fields[META_DATASETS] = json.dumps({str(k): v for k, v in record.items()}, sort_keys=True)
    return fields


def recorded_resize(weights) -> dict | None:
    """``{"resize": crop|pad|auto, "datasets": {name: crop|pad}}`` as ``weights`` records it; None where it records
    none (an older export, a timm file), cannot be read (loading it says why) or records a bad value (warned)."""
    path = Path(weights) if weights else None
    if path is None or not path.is_file():
        return None
    raw = _raw_record(path)
    if raw is None:
        return None
    resize, datasets = raw
    bad = _bad_record(resize, datasets)
    if bad:
        _say(f"warning: --weights {weights} records data.resize as {bad}, which is not crop, pad or auto for each "
             f"dataset by its folder name; that record is ignored and each dataset is decided from its images "
             f"(give data.resize=crop or data.resize=pad to choose).")
        return None
    return {"resize": resize, "datasets": dict(datasets or {})}


def _raw_record(path: Path) -> tuple | None:
    """(data.resize, the per-dataset choices) as the file holds them, unchecked; None where it holds none."""
    from fewshot.errors import CheckpointError
    from fewshot.models.weights_file import is_safetensors, read_tensor_file

    if is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception:  # noqa: BLE001 - read_tensor_file reports an unreadable file with its own message
            return None
        if META_RESIZE not in meta:
            return None
        datasets = meta.get(META_DATASETS)
        if datasets is not None:
            try:
                datasets = json.loads(datasets)
            except (TypeError, ValueError, RecursionError):
                pass  # kept as text: _bad_record names it
        return meta[META_RESIZE], datasets
    try:
        ck = read_tensor_file(path, mmap=True)
    except CheckpointError:
        return None
    config = ck.get("config") if isinstance(ck, dict) else None
    data = config.get("data") if isinstance(config, dict) else None
    if ck.get("format") != "fewshot-checkpoint" or not isinstance(data, dict) or "resize" not in data:
        return None
    return data["resize"], config.get(RESIZE_RECORD)


def _bad_record(resize, datasets) -> str:
    """The part of a record that is not valid, as text for the warning; empty where it is valid."""
    if resize not in SETTINGS:
        return repr(resize)[:80]
    if datasets is None:
        return ""
    if not isinstance(datasets, dict):
        return f"{resize} with {str(datasets)[:80]!r} per dataset"
    bad = [f"{k!r}: {v!r}" for k, v in datasets.items() if v not in RESIZE_MODES
           or not (isinstance(k, str) and k.strip() and "/" not in k and "\\" not in k and k not in (".", ".."))]
    return f"{resize} with {', '.join(bad)[:160]}" if bad else ""


def mark_weights_resize(cfg: dict, given: bool) -> None:
    """Keep in ``cfg`` (in memory: TRANSIENT) what its --weights file records, for settle_weights_resize once the
    datasets are known; ``given``: whether the user gave data.resize (a flag, a word, the config file)."""
    recorded = recorded_resize(cfg["model"].get("weights"))
    if recorded is not None:
        cfg[WEIGHTS_RESIZE] = {**recorded, "file": str(cfg["model"]["weights"]), "given": given}


def file_choices(recorded: dict, names) -> dict:
    """Each of ``names`` the file recorded a choice for: all of them where it records crop or pad."""
    if recorded["resize"] in RESIZE_MODES:
        return {name: recorded["resize"] for name in names}
    return {name: recorded["datasets"][name] for name in names if name in recorded["datasets"]}


def adopt_weights_resize(cfg: dict, infos) -> dict | None:
    """Before auto decides: where the user left data.resize at auto, the --weights file's choice for each dataset
    it records goes into the run's record (settle_modes keeps it), said once. Returns the pending record for
    note_weights_mismatch where the user gave data.resize, else None."""
    recorded = cfg.pop(WEIGHTS_RESIZE, None)
    if recorded is None:
        return None
    if recorded["given"] or cfg["data"].get("resize", "crop") != "auto":
        return recorded
    names = [info.name for info in infos]
    size = (cfg.get("model") or {}).get("img_size")
    choices, thin = _taken(recorded, infos, size)
    if choices:
        cfg[RESIZE_RECORD] = {**choices, **(cfg.get(RESIZE_RECORD) or {})}
        listed = "; ".join(f"{mode}: {', '.join(n for n in names if choices.get(n) == mode)}"
                           for mode in RESIZE_MODES if mode in choices.values())
        _say(f"note: data.resize=auto (the default) takes the choice --weights {recorded['file']} records "
             f"({listed}), the geometry its features were learnt on; to decide each dataset from its own images "
             f"instead, give data.resize=auto on the command line (a value given there wins over the file's).")
    if thin:
        _say(f"note: --weights {recorded['file']} records pad for {', '.join(thin)}, but letterboxed at {size} px "
             f"{'their images keep' if len(thin) > 1 else 'its images keep'} under {MIN_PADDED_SIDE} px of the short "
             f"side, so data.resize=auto decides {'them' if len(thin) > 1 else 'it'} from the images at this size "
             f"instead (data.resize=pad forces the letterbox).")
    return None


def pending_choices(cfg: dict, infos, size: int | None) -> dict:
    """The choices adopt_weights_resize will take for ``infos`` at image size ``size`` (none where the user gave
    data.resize), before it takes them: `fewshot run` chooses its image size for the crop or pad each dataset gets
    (run_checks.run_img_size)."""
    recorded = cfg.get(WEIGHTS_RESIZE)
    if recorded is None or recorded["given"] or cfg["data"].get("resize", "crop") != "auto":
        return {}
    return _taken(recorded, infos, size)[0]


def _taken(recorded: dict, infos, size: int | None) -> tuple[dict, list]:
    """The file's choice for each of ``infos`` it records, and the datasets whose recorded pad is set aside at
    ``size``: the letterbox's bound holds for the file's pad too (strips padded at 224 px, taken at 32 px, kept
    32x1 px and the note blamed a data.resize=pad the user never gave: review rev91 #4)."""
    choices = file_choices(recorded, [info.name for info in infos])
    thin = [info.name for info in infos if choices.get(info.name) == "pad" and _too_thin(info, size)]
    for name in thin:
        del choices[name]
    return choices, thin


def _too_thin(info, size) -> bool:
    """Whether the letterbox at ``size`` keeps too few pixels of ``info``'s median image (aspect.too_thin)."""
    shape = median_shape(header_sizes(sample_paths(info)))
    return shape is not None and too_thin(shape, size)


def _square(info) -> bool:
    """Whether ``info``'s median image is square to within NEAR_SQUARE, where crop and pad give nearly one image."""
    shape = median_shape(header_sizes(sample_paths(info)))
    return shape is not None and ratio(shape) <= NEAR_SQUARE


def note_weights_mismatch(cfg: dict, infos, recorded: dict | None, modes: dict | None) -> None:
    """Where the user gave data.resize: a note naming the datasets it decodes otherwise than the --weights file
    recorded (``modes``: auto's choice per dataset, where data.resize is auto)."""
    if recorded is None:
        return
    resize = cfg["data"].get("resize", "crop")
    now = {info.name: (modes or {}).get(info.name, "crop") if resize == "auto" else resize for info in infos}
    square = {info.name for info in infos if _square(info)}  # crop or pad: nearly the same pixels
    differ = [f"{name} ({now[name]} now, {mode} there)" for name, mode in file_choices(recorded, now).items()
              if now[name] != mode and name not in square]
    if differ:
        _say(f"note: data.resize={resize} decodes {', '.join(differ)} otherwise than --weights {recorded['file']} "
             f"records, the geometry its features were learnt on; leave data.resize out to take the file's choice.")


def _say(line: str) -> None:
    from fewshot.train.distributed import launch_rank

    if launch_rank() == 0:  # a torchrun job says it once
        print(one_line(line), file=sys.stderr, flush=True)
