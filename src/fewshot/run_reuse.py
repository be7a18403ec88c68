"""What `fewshot run --resume` reuses of a stopped run: which stage replaces model.weights (weights_replaced_by),
whether a stage is continued (stage_resumes) or reused as it is (reusable_stage), the network a stage took from
the weights (adopt_stage_architecture), a stopped stage's last.pt (read_last) and whether it trained on the images
held now (same_training_images), a stage started over without one (start_stage_afresh), a finished JSON read as the
run wrote it (read_finished_json), and the val guard between the rounds (better_earlier_round). Kept apart from the
stages' running (run_stages) so that each reads as one job; none of these reads the run's clock or a timing."""

from __future__ import annotations

import json
from pathlib import Path

from fewshot.errors import UserError, one_line, printable
from fewshot.utils import loads_run_json


def weights_replaced_by(state, out: Path, pretrain: bool) -> Path | None:
    """On --resume: the folder of the stage that starts from model.weights (MoCo, else round 1 of fine-tuning)
    when it holds a checkpoint that replaces them, so that the file need not exist any more (as for `fewshot
    train --resume`); None when that stage starts from the file again. The conditions are the stages' own."""
    if state is None:
        return None
    if pretrain:
        sdir, status = out / "pretrain", state.status("pretrain")
        done = status == "done" and (out / "backbone.safetensors").is_file()
        began = status is not None and (sdir / "checkpoints" / "last.pt").is_file()
        # a stopped one without its config.yaml resumes too (run_pretrain), refused as lost settings
        return sdir if (done and (sdir / "config.yaml").is_file()) or (began and not done) else None
    for name in ("finetune_labelled", "finetune"):  # round 1 is `finetune` when self-training is off
        sdir = out / name
        if stage_resumes(state.status(name), sdir):
            return sdir
    return None


def stage_resumes(status: str | None, sdir: Path) -> bool:
    """Whether fine-tuning stage ``sdir`` (RunState ``status``) is reused or continued on --resume. One with its
    last.pt is, with or without its config.yaml: stage_config refuses a missing one as lost settings, where the
    stage started over from random init and overwrote its last.pt without a word."""
    if status in ("began", "trained", "done") and (sdir / "checkpoints" / "last.pt").is_file():
        return True
    # a finished stage whose last.pt is gone is reused from its config.yaml and best.pt
    return status in ("trained", "done") and (sdir / "config.yaml").is_file()


def adopt_stage_architecture(cfg: dict, sdir: Path) -> None:
    """The width and stem that stage ``sdir`` took from model.weights (a fewshot export records them), for the
    stages not begun yet when the file is no longer read: they rebuild the network the checkpoint holds. A stage
    config.yaml with no run's settings in it is refused as lost (resumed_settings), not read as no width."""
    from fewshot.train.resume_config import resumed_settings

    model = resumed_settings(sdir, cfg, stage=True).get("model") or {}
    for key in ("width", "small_stem"):
        if key in model:
            cfg["model"][key] = model[key]


def read_last(last: Path | dict) -> dict:
    """A stopped stage's last.pt, its tensors mapped, not read (the checks of a resume need a few numbers of it), or
    the checkpoint itself where the caller read it already."""
    from fewshot.errors import CheckpointError
    from fewshot.train.checkpoint import load_checkpoint
    from fewshot.train.resume import unreadable_last

    if isinstance(last, dict):
        return last
    try:
        return load_checkpoint(last, mmap=True)
    except CheckpointError as exc:  # with the way forward: moved away, --resume starts the stage over
        raise unreadable_last(exc, last, stage=True) from None


def start_stage_afresh(sdir: Path) -> None:
    """A stage that starts over without a last.pt (killed in its first steps, or its last.pt moved away) leaves out
    what an earlier session of its folder wrote: its log.jsonl was appended to (epochs 1..132 then 1..80), its best.pt
    and metrics kept (remove_earlier_session; other files, the user's, stay)."""
    from fewshot.train.resume import remove_earlier_session, removed_words

    removed = remove_earlier_session(sdir)
    if removed:
        print(f"[run] {sdir.name}: no {sdir / 'checkpoints' / 'last.pt'} to continue from: the stage starts over, and "
              f"the earlier {removed_words(removed)} of its folder are removed", flush=True)


def same_training_images(task, last: Path | dict, key_then: str | None, key_now: str | None) -> bool:
    """Whether a stopped stage's last.pt (a path, or the checkpoint read) trained on the images the task holds now:
    as many, and the same pseudo-labels (their fingerprint, recorded when the stage began)."""
    n_run = read_last(last).get("n_train")
    return (n_run is None or int(n_run) == len(task.train_set)) and key_then == key_now


def better_earlier_round(earlier: dict[str, dict], last_val: float | None) -> str | None:
    """The val guard of self-training: the stage (of ``earlier``, name -> val metrics) that scores higher on val
    than the last round, the best of them (the earliest of equals), or None. Only round 1 was compared: with
    run.pseudo_rounds=3 a round 2 of 83.9 lost to round 1's 83.5 after the last round's 81.5."""
    scored = {name: m["mean_acc1"] for name, m in earlier.items() if m.get("mean_acc1") is not None}
    best = max(scored, key=scored.get, default=None)
    return best if best is not None and last_val is not None and scored[best] > last_val else None


def drop_best_aside(sdir: Path) -> None:
    """A finished stage is never resumed: the best.pt that its closing budget stop kept aside for a resume
    (resume.BEST_ASIDE) is a whole checkpoint of wasted disk."""
    from fewshot.train.resume import BEST_ASIDE

    (sdir / "checkpoints" / BEST_ASIDE).unlink(missing_ok=True)


def read_finished_json(path: Path, what: str, numbers: tuple[str, ...] = ()) -> dict:
    """A JSON object that `fewshot run --resume` reuses as the run wrote it: one altered (nested 100,000 deep, or
    no JSON) ended in a RecursionError or JSONDecodeError, an internal error (exit 1). ``numbers``: its keys that
    are compared or printed as numbers (a stage's mean_acc1), each a number or null where present: `"x"` ended in
    a TypeError in the val guard."""
    try:
        data = loads_run_json(path.read_text(encoding="utf-8"))
    except OSError as exc:  # its text names the path, which the message names once
        why = printable(one_line(exc.strerror or str(exc)))[:200]
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        why = printable(one_line(str(exc)))[:200]
    else:
        wrong = next((k for k in numbers if isinstance(data, dict) and not _number_or_null(data.get(k))), None)
        if isinstance(data, dict) and wrong is None:
            return data
        why = (f"it holds a JSON {type(data).__name__}, not an object" if not isinstance(data, dict) else
               f"its {wrong} is {printable(one_line(json.dumps(data[wrong])))[:60]}, not a number or null")
    raise UserError(f"{path} ({what}) cannot be read: {why}. It was altered or cut short after the run wrote it: "
                    f"restore it, or start the run anew with another --out.")


def _number_or_null(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def reusable_stage(state, sdir: Path) -> bool:
    """Whether ``fewshot run --resume`` reuses stage ``sdir`` as it is (finetune_stage's test): it finished before
    the stop and its folder holds its config.yaml."""
    return state is not None and state.status(sdir.name) == "done" and (sdir / "config.yaml").is_file()
