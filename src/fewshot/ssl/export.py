"""`fewshot export`: the query encoder's backbone as timm-loadable safetensors.

Keys are exactly those of `timm.create_model(NAME, num_classes=0)`: no `module.`/`encoder_q.`
prefixes, no projection head. Split BatchNorm layers keep plain BatchNorm key names.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from safetensors.torch import save

from fewshot.errors import CheckpointError, UserError
from fewshot.models.state_checks import check_export_state, shows_more_than_stored
from fewshot.run_lock import being_written
from fewshot.train.checkpoint import load_checkpoint, logged_epoch, resolve_checkpoint
from fewshot.utils import atomic_write_bytes, loads_run_json

PREFIX = "encoder_q.backbone."
# the metadata every export records (meta in export_backbone): how a file fewshot wrote is told from any other
EXPORT_FIELDS = ("model", "source", "epoch", "img_size")
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def is_export(path: Path) -> bool:
    """Whether ``path`` is a safetensors file holding the metadata `fewshot export` records (its header alone is
    read: 8 bytes of length, then JSON; no tensor is loaded)."""
    try:
        return _records_export(path)
    except OSError:
        return False


def export_metadata(path: Path) -> dict | None:
    """The metadata of a `fewshot export` (header only), None for any other file or one that cannot be read."""
    try:
        return _export_metadata(path)
    except OSError:
        return None


def _records_export(path: Path) -> bool:
    """is_export, where a file that cannot be read raises the OSError: check_export_out says so, not that the file
    is not an export."""
    return _export_metadata(path) is not None


def _export_metadata(path: Path) -> dict | None:
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if not 0 < n <= min(MAX_HEADER, os.fstat(fh.fileno()).st_size - 8):
            return None
        try:
            header = json.loads(fh.read(n))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) and all(isinstance(meta.get(k), str) for k in EXPORT_FIELDS) else None


def check_export_out(out: Path, follow_links: bool) -> None:
    """Refuse, before the backbone is checked and written, to replace a file that is not an earlier export:
    `export --out notes.txt` (or another data root's test_labels.json) was replaced by safetensors without a word.
    New, empty or an earlier export may be written; a link is judged by its target where the write follows it
    (``follow_links``), and is replaced itself otherwise; a pipe or device is written in place, and so is a
    descriptor the shell opened to append (`--out /dev/stdout >> log`: atomic_write_bytes appends through it,
    replacing nothing, where the log's lines were judged "not an earlier export"). A descriptor that would write
    over the file's bytes (`--out /dev/fd/3 3<> notes.txt`) is judged by its file, as any other."""
    from fewshot.utils import _file_descriptor_named, is_special_file

    fd = _file_descriptor_named(out) if follow_links else None  # as atomic_write_bytes decides it
    if fd is not None and _appends(fd):
        return
    if (out.is_symlink() and not follow_links) or not out.is_file() or is_special_file(out):
        return
    try:
        if out.stat().st_size == 0:  # a placeholder (`touch bb.safetensors`): nothing to lose
            return
        known = _records_export(out)
    except OSError as exc:
        shown = f"--out {out}" if follow_links else str(out)
        raise UserError(f"{shown} already holds a file that cannot be read ({exc.strerror or exc}), so export "
                        f"cannot tell whether it is an earlier `fewshot export`, the only files it replaces. Give "
                        f"another file name, or make {out} readable (or move it away) first.") from None
    if not known:
        shown = f"--out {out}" if follow_links else str(out)
        raise UserError(f"{shown} already holds a file that is not an earlier `fewshot export` (no safetensors "
                        f"header recording {', '.join(EXPORT_FIELDS)}); export replaces only its own files. Give "
                        f"another file name, or move {out} away first.")


def _appends(fd: int) -> bool:
    """Whether a write through ``fd`` replaces none of its file's bytes: opened to append (`>> log`), not a regular
    file (a socket), or at the file's end (`> new`, or all of it read). A `3<> notes.txt` writes at its start."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no /dev/fd either
        fcntl = None
    try:
        if fcntl is not None and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return True
        info = os.fstat(fd)
        return not stat.S_ISREG(info.st_mode) or os.lseek(fd, 0, os.SEEK_CUR) >= info.st_size
    except OSError:  # closed since, or not seekable: judged by its file
        return False


def backbone_state(ck: dict) -> dict:
    if ck.get("kind") == "moco":
        state = {k[len(PREFIX):]: v for k, v in ck["model"].items() if k.startswith(PREFIX)}
    elif ck.get("kind") == "supervised":
        src = ck["ema"] if ck.get("ema") is not None else ck["model"]
        state = {k[len("backbone."):]: v for k, v in src.items() if k.startswith("backbone.")}
    else:
        raise CheckpointError(f"unknown checkpoint kind {ck.get('kind')!r}")
    if not state:
        raise CheckpointError("the checkpoint holds no backbone weights")
    # a view showing more values than it stores stays one, for check_export_state to refuse: made contiguous, a
    # 1.7 KB file's `torch.zeros(1).expand(1 << 34)` took 64 GiB
    return {k: v if shows_more_than_stored(v) else v.contiguous().clone() for k, v in state.items()}


def note_best_knn_epoch(run: Path, ck: dict) -> None:
    """A MoCo run is exported at its last epoch, as MoCo's own code does, while its metrics.json, `compare` and
    `report` show the epoch of the best kNN accuracy: say so where they differ (a long-run hunt read 80 % in
    metrics.json and exported weights of 60 %). A metrics.json of last.pt (`fewshot run`'s pretrain stage) scores
    the weights exported: nothing to say."""
    from fewshot.train.checkpoint import logged_epoch

    try:
        metrics = loads_run_json((run / "metrics.json").read_text())
    except (OSError, ValueError):  # a run still training has no metrics.json yet
        return
    if not isinstance(metrics, dict) or metrics.get("checkpoint") == "last.pt":
        return
    best = metrics.get("best_epoch")
    if isinstance(best, int) and best != logged_epoch(ck):
        print(f"note: exporting the last epoch ({logged_epoch(ck)}), as MoCo does; metrics.json shows the kNN "
              f"accuracy of epoch {best}, the run's best: export {run / 'checkpoints' / 'best.pt'} for that one.",
              flush=True)


def export_backbone(run_or_ckpt: str | Path, out: str | Path, follow_links: bool = False) -> tuple[Path, dict]:
    """Write the backbone of a run or checkpoint to ``out`` as safetensors. A link at ``out`` is replaced unless
    ``follow_links`` (`fewshot export --out`, a path the user typed): `fewshot run` names RUN/backbone.safetensors
    itself, in a run folder that may come from elsewhere."""
    ckpt = resolve_checkpoint(run_or_ckpt, prefer="last")  # MoCo: the end of pretraining, as MoCo's own code
    ck = load_checkpoint(ckpt)
    best = ckpt.with_name("best.pt")
    if Path(run_or_ckpt).is_dir() and ck.get("kind") == "supervised" and ckpt.name == "last.pt" and best.is_file():
        # a fine-tuning run: the checkpoint that eval, predict and pred_all.json use (it was last.pt, silently)
        ckpt, ck = best, load_checkpoint(best)
    live = Path(run_or_ckpt).is_dir() and being_written(ckpt.parent.parent)
    if Path(run_or_ckpt).is_dir() and ck.get("kind") == "supervised" and ckpt.name != "best.pt":
        why = "it is still being written: training, before its first evaluation" if live else \
            "it stopped before its first evaluation"
        # the epoch as log.jsonl and the export's metadata number it (a stop mid-epoch 1 said "epoch 0", then 1)
        print(f"warning: {ckpt.parent.parent} has no best.pt ({why}); exporting {ckpt.name}, epoch "
              f"{_epoch_text(ck) or '?'}.", file=sys.stderr, flush=True)
    elif live:  # a later export will hold other weights
        print(f"note: {ckpt.parent.parent} is still being written (training); exporting its {ckpt.name} as it is "
              f"now, epoch {_epoch_text(ck) or '?'}.", file=sys.stderr, flush=True)
    if Path(run_or_ckpt).is_dir() and ck.get("kind") == "moco" and ckpt.name == "last.pt":
        note_best_knn_epoch(ckpt.parent.parent, ck)
    out = Path(out)
    if out.resolve() == ckpt.resolve() or (out.resolve().parent == ckpt.resolve().parent
                                           and ckpt.parent.name == "checkpoints"):
        # `--out RUN/checkpoints/best.pt` replaced the run's best.pt with a backbone file
        raise UserError(f"--out {out} would write into the checkpoints folder it exports from; write the export "
                        f"elsewhere.")
    root = ((ck.get("config") or {}).get("data") or {}).get("root")
    if isinstance(root, str) and root and Path(root).is_dir():
        from fewshot.data.output_guard import check_result_file_is_not_an_input

        # the run's data as recorded: `--out ROOT/<ds>/train/new/bb.safetensors` made a class folder without
        # images, and every command then refused ROOT
        check_result_file_is_not_an_input(out, root, ckpt, kind="backbone")
    check_export_out(out, follow_links)  # anywhere else (the checks above say more where they apply)
    state = backbone_state(ck)
    check_export_state(state, ck, ckpt)  # what train --weights would refuse
    meta = {"format": "pt", "model": str(ck.get("model_name", "")), "source": str(ckpt),
            "epoch": _epoch_text(ck), "img_size": str(ck.get("img_size", ""))}
    model_cfg = (ck.get("config") or {}).get("model") or {}
    meta["width"] = str(float(model_cfg.get("width") or 1.0))
    meta["small_stem"] = str(bool(model_cfg.get("small_stem"))).lower()
    bits = _bit_depth_text(ck, ckpt)
    if bits:  # the scale the features were learnt at: probe --weights reads the images at it (recorded_bit_depth)
        meta["bit_depth"] = bits
    from fewshot.data.weights_resize import export_fields

    meta.update(export_fields(ck.get("config")))  # data.resize and auto's choices: train and probe --weights take them
    from fewshot.models.weights_origin import start_fields

    meta.update(start_fields(ck.get("config")))  # how the run started: --weights of this file picks its lr recipe
    atomic_write_bytes(out, save(state, metadata=meta), follow_links)  # bytes in memory: no temp file left behind
    return out, meta


def _epoch_text(ck: dict) -> str:
    """The epoch as log.jsonl, `predict` and `compare` number it (checkpoint.logged_epoch: a budget stop mid-epoch
    saved epoch 6 and step 2 of epoch 7, which they call epoch 7); empty when the checkpoint does not say."""
    if "epoch" not in ck:
        return ""
    try:
        return str(logged_epoch(ck))
    except (TypeError, ValueError):
        return str(ck.get("epoch"))


def _bit_depth_text(ck: dict, path: Path) -> str:
    """The checkpoint's data.bit_depth as the export records it (`auto`, `12`), checked as config checks the
    setting; empty where its config records none (a checkpoint of an older version)."""
    from fewshot.eval.predict import checked_data_settings

    data = (ck.get("config") or {}).get("data") if isinstance(ck.get("config"), dict) else None
    if not isinstance(data, dict) or data.get("bit_depth") is None:
        return ""
    return str(checked_data_settings(data, path, ("bit_depth",), "exported")["bit_depth"])
