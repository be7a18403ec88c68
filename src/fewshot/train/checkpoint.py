"""Checkpoints are data, not code: tensors and plain containers, loadable with weights_only=True.

Writes go to a temp file in the same folder, are fsynced and renamed, so a kill at any moment
leaves either the old or the new `last.pt`, never half of one.
"""

from __future__ import annotations

import io
import random
import re
import reprlib
from pathlib import Path

import torch

from fewshot.errors import CheckpointError, one_line
from fewshot.models.weights_file import read_tensor_file, remote_name
from fewshot.run_lock import being_written, writer
from fewshot.utils import atomic_write_bytes

FORMAT = "fewshot-checkpoint"
# What every checkpoint the engine writes holds (payload() + the tasks' checkpoint_extra()).
REQUIRED = ("kind", "config", "model", "epoch", "label_space", "img_size", "n_parameters")


def save_checkpoint(path: Path, payload: dict) -> None:
    payload = {"format": FORMAT, "version": 1, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A fewshot checkpoint, read safely (weights_only); ``mmap``: its tensors mapped, not read into memory."""
    obj = read_tensor_file(path, mmap=mmap)
    if obj.get("format") != FORMAT:  # eval and predict have no --weights: name the commands that take the file
        raise CheckpointError(f"{path} is not a fewshot checkpoint (a run's checkpoints/best.pt or last.pt). For "
                              f"plain backbone weights, `fewshot probe --weights {path} --model MODEL --data ROOT` "
                              f"scores them, and `fewshot train --weights {path} --data ROOT` fine-tunes from them.")
    return check_checkpoint(obj, path)


def check_checkpoint(obj: dict, path, required=REQUIRED) -> dict:
    """A file that says it is a fewshot checkpoint holds the fields read from it, and its model (and EMA) states
    map names to tensors: `fewshot eval` and `--weights` (which needs only the model) refuse one that does not
    with the same words, never with a KeyError or an AttributeError from inside the loading."""
    missing = [k for k in required if k not in obj]
    if missing or not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"{path} is an incomplete fewshot checkpoint (missing: "
                              f"{', '.join(missing) or 'the model state dict'}); it was not written by fewshot "
                              f"or was altered.")
    for field in ("model", "ema"):
        state = obj.get(field)
        if field == "ema" and state is None:  # a run without EMA
            continue
        bad = _state_problem(state)
        if bad:
            raise CheckpointError(f"{path} is a damaged fewshot checkpoint: its {field} state {bad}; it was not "
                                  f"written by fewshot or was altered.")
    return obj


def _state_problem(state) -> str | None:
    """What makes ``state`` no state dict (a weight name to a tensor, each), or None; keys shown shortened
    (reprlib), as a crafted file may hold a key of a million characters."""
    if not isinstance(state, dict):
        return f"is a {type(state).__name__}, not a state dict"
    for k, v in state.items():
        if not isinstance(k, str):
            return f"holds the key {one_line(reprlib.repr(k))} (of type {type(k).__name__}), not a weight name"
        if not isinstance(v, torch.Tensor):
            return f"holds a value of type {type(v).__name__} under {one_line(reprlib.repr(k))}, not a tensor"
    return None


def logged_epoch(ck: dict) -> int:
    """The log.jsonl epoch number of a checkpoint. `epoch` counts completed epochs; a budgeted run that
    stopped mid-epoch saved `step_in_epoch` > 0 and logged that partial epoch as `epoch` + 1."""
    return int(ck.get("epoch") or 0) + (1 if ck.get("step_in_epoch") else 0)


def resolve_checkpoint(run_or_ckpt: str | Path, prefer: str = "best") -> Path:
    """A run directory (-> checkpoints/best.pt, else last.pt) or a checkpoint file."""
    typed = str(run_or_ckpt)
    if remote_name(typed) and not Path(typed).exists():  # Path() would name it `https:/x/y.pt`, "not a file"
        raise CheckpointError(f"{one_line(typed)!r} is a URL or hub name: fewshot never downloads. Download the "
                              f"checkpoint yourself and give its path (or its run folder).")
    p = Path(run_or_ckpt)
    why = "it looks like a `fewshot run` folder that did not finish (no summary.json)"
    if p.is_dir() and not (p / "checkpoints").is_dir() and (p / "summary.json").is_file():
        # a `fewshot run` folder: the stage that wrote its pred_all.json (summary.json: predicted_with)
        from fewshot.utils import loads_run_json

        try:
            stage = loads_run_json((p / "summary.json").read_text()).get("predicted_with")
        except (OSError, ValueError, AttributeError):
            stage = None
        # a stage is a folder of this run: a name, never a path that leads elsewhere (summary.json is user input)
        if isinstance(stage, str) and stage and Path(stage).name == stage and (p / stage / "checkpoints").is_dir():
            p = p / stage
        elif isinstance(stage, str) and stage and Path(stage).name == stage:  # a finished run, a stage deleted
            why = f"its summary.json names the stage that predicted, {stage}, but {p / stage} " + \
                  ("has no checkpoints/" if (p / stage).is_dir() else "is missing")
        else:
            why = "its summary.json names no stage that predicted"
    if p.is_dir():
        for name in (f"{prefer}.pt", "best.pt", "last.pt"):
            cand = p / "checkpoints" / name
            if cand.is_file():
                return cand
            cand = p / name
            if _a_runs_checkpoints(p) and cand.is_file():  # RUN/checkpoints: as RUN (tab completion stops there)
                return cand
        stages = sorted(str(c.parent.parent) for c in p.glob("*/checkpoints/*.pt"))  # an unfinished `fewshot run`
        # a `fewshot run` folder: its run_state.json (written first), or only its stages' folders; else p holds runs
        a_run = (p / "run_state.json").is_file() or (p / "summary.json").is_file() or stages and all(
            re.fullmatch(r"pretrain|finetune(_labelled|_round\d+)?", Path(s).name) for s in stages)
        runs = [] if a_run else sorted({str(c.parent) for c in p.glob("*/summary.json")} | set(stages))
        if runs:
            raise CheckpointError(f"no checkpoint in {p} (expected checkpoints/best.pt or last.pt): it holds no "
                                  f"checkpoint of its own, but run folders: {', '.join(runs[:10])}"
                                  f"{' and more' if len(runs) > 10 else ''}; pass one of them.")
        live = _live_run_refusal(p, stages, bool(a_run))
        if live:
            raise CheckpointError(live)
        if stages:
            raise CheckpointError(f"no checkpoint in run directory {p} (expected checkpoints/best.pt or last.pt); "
                                  f"{why}. Its stages with checkpoints: {', '.join(dict.fromkeys(stages))}; pass one "
                                  f"of them.")
        raise CheckpointError(f"no checkpoint in run directory {p} (expected checkpoints/best.pt or last.pt).")
    if p.is_file():
        return p
    raise CheckpointError(f"'{p}' is neither a run directory nor a checkpoint file.")


def _live_run_refusal(p: Path, stages: list[str], a_run: bool) -> str | None:
    """The refusal of a run folder that a command still writes (its lock held), or None: it was called "a `fewshot
    run` folder that did not finish" and the user sent to a stage whose weights the run was about to replace."""
    who = writer(p)
    if who is None:
        return None
    ends = "which chooses the model to use and writes its summary.json when it ends" if a_run else \
        "training, before its first checkpoint"
    msg = f"no checkpoint in run directory {p} yet: it is still being written by {who}, {ends}. Wait for it to " \
          f"finish, then pass {p} again."
    if not stages:
        return msg
    training = [s for s in dict.fromkeys(stages) if being_written(s)]
    now = f" ({', '.join(training)} is being trained now)" if training else ""
    return (f"{msg} Its stages with checkpoints so far{now}: {', '.join(dict.fromkeys(stages))}; pass one of them "
            f"only to use that stage's model as it is now (the run may still train it further or replace it).")


def _a_runs_checkpoints(p: Path) -> bool:
    """Whether ``p`` is a run's checkpoints/ folder, given instead of the run: `predict RUN/checkpoints` said there
    was no checkpoint while best.pt was in it."""
    return p.name == "checkpoints" and not (p / "checkpoints").is_dir() and \
        any((p / name).is_file() for name in ("best.pt", "last.pt"))  # a `fewshot run` folder named checkpoints


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> str | None:
    """Restore the generators of ``rng_state()``. last.pt holds one CUDA state per GPU the writing process saw, and
    torch.cuda.set_rng_state_all sets device i for each: resumed where fewer GPUs are visible, it raised an
    IndexError from inside torch. The first min(saved, visible) are restored; returns a note when the counts differ
    (None otherwise), for the caller to print once."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    saved = state.get("cuda")
    if saved is None or not torch.cuda.is_available():
        return None
    visible = torch.cuda.device_count()
    for i, gpu_state in enumerate(saved[:visible]):
        torch.cuda.set_rng_state(gpu_state, i)
    if len(saved) == visible:
        return None
    rest = "" if len(saved) > visible else f"; the other {visible - len(saved)} keep their own"
    return (f"note: the checkpoint holds the CUDA random-number states of {len(saved)} GPU(s) and {visible} are "
            f"visible here: those of the first {min(len(saved), visible)} are restored{rest}.")


def _as_tuple(x):
    return tuple(_as_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x


def check_same_images(ck: dict, key: str, n_now: int, what: str, stage_note: bool = False) -> None:
    """Resume must see the images the run trained on: another count means other data (or a `fewshot run`
    stage, whose training set held pseudo-labelled pool images), and its epochs would be different ones.
    ``stage_note``: add how a `fewshot run` stage's weights can be used instead (fine-tuning only)."""
    n_run = ck.get(key)
    if n_run is not None and int(n_run) != int(n_now):
        from fewshot.errors import UserError

        note = (" (A `fewshot run` stage may also have trained on pseudo-labelled pool images; it cannot be "
                "continued by `fewshot train --resume`: `--weights RUN/checkpoints/last.pt` starts a new run from "
                "its weights.)") if stage_note else ""
        raise UserError(f"the run being resumed trained on {int(n_run)} {what}; these data give {int(n_now)}. "
                        f"Resume with the run's data.{note}")
