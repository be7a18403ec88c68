"""How far a stopped run trained: last.pt's saved position (epoch, step in epoch, steps per epoch), the partial
last epoch it and log.jsonl tell, and the note of a run stopped within its first epoch.

Apart from report/runs.py and the Run record so that the one rule for a partial epoch (never shown as a whole
number) is read in one place.
"""

from __future__ import annotations

import math
from pathlib import Path

from fewshot.report.run_files import _is_whole


def saved_fraction(saved: dict | None, last: dict | None) -> float | None:
    """Epochs trained as last.pt counts them, where it holds steps the log does not (a stop by a signal saves the
    step it reached without a log row: stopped at step 33 of 25 per epoch, the log's epoch 1 showed as 1, not 1.32;
    a pretraining stopped after 2 steps as 0). None where last.pt is not later than the log, or does not tell."""
    if not saved:
        return None
    epoch, part, per_epoch = saved["epoch"], saved["step_in_epoch"], saved.get("steps_per_epoch")
    if last is not None and (last["step"] >= saved["global_step"] if _is_whole(last.get("step"))
                             else epoch + (1 if part else 0) <= last["epoch"]):  # a log of an older fewshot: no step
        return None
    if not part:
        return float(epoch) if last is None or epoch > last["epoch"] else None
    if not per_epoch or per_epoch <= part:
        return None
    return partial_epochs(epoch + part / per_epoch)


def partial_epochs(x: float) -> float:
    """Epochs trained ending in a partial one, to 2 decimals but never a whole number: 1 step of 250 rounded to 0
    (a run that trained nothing) and 249 of 250 to a whole epoch it did not finish."""
    whole = math.floor(x)
    return min(max(round(float(x), 2), whole + 0.01), whole + 0.99)


def first_epoch_note(saved: dict | None, last_pt: Path) -> str | None:
    """The note of a run with no log row (stopped within its first epoch): how far its last.pt got, where the
    epochs column cannot show it, or that no epoch finished (the column showed a bare 0)."""
    if saved and saved.get("steps_per_epoch") and saved["epoch"] == 0 and saved["step_in_epoch"]:
        return (f"no epoch finished: the run stopped at step {saved['step_in_epoch']} of "
                f"{saved['steps_per_epoch']} of its first epoch (its last.pt).")
    if saved and saved["epoch"] == 0 and saved["step_in_epoch"]:
        return (f"no epoch finished: the run stopped at step {saved['step_in_epoch']} of its first epoch (its last.pt "
                f"does not say how many steps an epoch has).")
    if saved is None and not last_pt.is_file():
        return "no epoch finished: the run stopped within its first epoch, before it saved a last.pt."
    return None  # last.pt holds whole epochs (the log was removed), or is unreadable: other notes say so


def read_saved_steps(path: Path) -> dict | None:
    """last.pt's position (epoch, step_in_epoch, global_step) and its steps per epoch where the checkpoint tells:
    whole epochs done give it, else a MoCo run's pool and batch size (its epochs drop the last partial batch).
    Read with the safe loader (weights_only), its tensors memory-mapped, not read: the whole last.pt (weights, EMA,
    optimizer state) was loaded for a few integers. None where last.pt is missing or not a fewshot checkpoint."""
    if not path.is_file():
        return None
    import zipfile

    from fewshot.errors import CheckpointError
    from fewshot.models.weights_file import read_tensor_file
    from fewshot.train.checkpoint import FORMAT

    try:
        ck = read_tensor_file(path, mmap=True)
    except CheckpointError as exc:
        # only where the mapping itself failed (an old non-zip torch file, a file system that cannot map it) is the
        # whole file read: a file that maps and is damaged or foreign is not read a second time, in full
        cause = exc.__context__
        if zipfile.is_zipfile(path) and not isinstance(cause, OSError) and "mmap" not in str(cause):
            return None  # the log's count stands (eval and predict say what is wrong with the file)
        try:
            ck = read_tensor_file(path)
        except CheckpointError:
            return None
    if ck.get("format") != FORMAT:  # not a fewshot checkpoint (load_checkpoint's check; the fields are checked below)
        return None
    saved = {k: ck.get(k) for k in ("epoch", "step_in_epoch", "global_step")}
    if not all(_is_whole(v) and v >= 0 for v in saved.values()):
        return None
    epoch, part, total = saved["epoch"], saved["step_in_epoch"], saved["global_step"]
    if _is_whole(ck.get("steps_per_epoch")) and ck["steps_per_epoch"] > 0:  # the Engine's own count (newer last.pt)
        saved["steps_per_epoch"] = ck["steps_per_epoch"]
    elif epoch > 0 and (total - part) % epoch == 0:
        saved["steps_per_epoch"] = (total - part) // epoch
    elif ck.get("kind") == "moco":
        try:
            batch = int(ck["config"]["train"]["batch_size"]) * int(ck.get("world") or 1)
            saved["steps_per_epoch"] = int(ck["n_pool"]) // batch if batch > 0 else None
        except (KeyError, TypeError, ValueError):
            pass
    return saved


def logged_fraction(log: list[dict], last: dict) -> float | None:
    """last's epochs trained from its global step: an earlier row of a whole epoch gives the steps per epoch
    (its step / its epoch: every epoch before it is whole). None where the log does not tell."""
    if not _is_whole(last.get("step")):
        return None
    whole = [r for r in log if 0 < r["epoch"] < last["epoch"] and _is_whole(r.get("step")) and r["step"] > 0]
    if not whole:
        return None
    row = max(whole, key=lambda r: r["epoch"])
    return last["step"] / (row["step"] / row["epoch"])
