"""`fewshot report` / `fewshot compare` (bug hunt hBR, fixer fET): one dataset name with different class sets is
shown apart; a copied run is not called resumed from its file times; a stopped `fewshot run` is said so, with the
command that continues it.

Run folders are written by hand (no training): the report reads files only.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path


def _scores(mean: float, name: str = "digits", mode: str = "known", **extra) -> dict:
    return {"mode": mode, "mean_acc1": mean, "datasets": {name: {"acc1": mean, "acc5": 100.0, "n": 20}},
            "split": "val", **extra}


def _row(epoch: int, scored: bool = False) -> dict:
    row = {"epoch": epoch, "step": epoch, "loss": 1.0, "train_acc1": 50.0, "images_per_s": 100.0, "epoch_time_s": 0.5}
    if scored:
        row.update(score=50.0, val={"known": _scores(50.0), "unknown": _scores(40.0, mode="unknown")})
    return row


def _run(run: Path, classes: list[str] | None, mean: float = 50.0, epochs: int = 3) -> Path:
    """A finished fine-tuning run on `digits` scored at 2 and its last epoch; a best.pt holding ``classes``."""
    from fewshot.train.checkpoint import save_checkpoint

    run.mkdir(parents=True)
    (run / "log.jsonl").write_text("".join(json.dumps(_row(e, e in (2, epochs))) + "\n" for e in range(1, epochs + 1)))
    (run / "metrics.json").write_text(json.dumps(_scores(mean, best_epoch=epochs, val_scores_compared=2)))
    if classes is not None:
        (run / "checkpoints").mkdir()
        save_checkpoint(run / "checkpoints" / "best.pt", {
            "kind": "supervised", "config": {}, "model": {}, "epoch": epochs, "img_size": 32, "n_parameters": 1,
            "label_space": {"names": ["digits"], "classes": [classes]}})
    return run


# ---------------------------------------------------------------------- 1. one name, different class sets
def test_one_dataset_name_with_different_classes_is_shown_apart(tmp_path):
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs
    from fewshot.report.scored_on import keyed, scored_keys

    ten = _run(tmp_path / "ten", [str(k) for k in range(10)], mean=10.0)
    two = _run(tmp_path / "two", ["0", "1"])
    other = _run(tmp_path / "other", ["2", "3"])
    runs = expand_runs([ten, two, other])
    caption = T.overview_table(runs, {}).caption
    assert "digits [A] = 10 classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in caption and "not comparable" in caption, caption
    assert "digits [B] = 2 classes: 0, 1" in caption and "digits [C] = 2 classes: 2, 3" in caption, caption
    assert "ten: digits [A]; two: digits [B]; other: digits [C]" in caption, caption
    assert "all on digits" not in caption, caption  # "compare them dataset by dataset" was said of one group
    keys, _ = scored_keys(runs)  # the bars are grouped by these keys: three groups, not one
    groups = {n for r, k in zip(runs, keys) for n in keyed(r.metrics_known, k)["datasets"]}
    assert len(groups) == 3, groups


def test_the_same_classes_under_one_name_stay_one_dataset(tmp_path):
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    runs = expand_runs([_run(tmp_path / "a", ["0", "1"]), _run(tmp_path / "b", ["1", "0"]), _run(tmp_path / "c", None)])
    caption = T.overview_table(runs, {}).caption
    assert "class sets" not in caption and "different datasets" not in caption, caption


# ---------------------------------------------------------------------- 2. a copied run is not "resumed"
def test_a_copied_run_with_a_later_log_is_not_called_resumed_and_its_damage_is_said(tmp_path):
    """`cp -r` wrote log.jsonl a second after metrics.json: the run was called resumed after it finished, and that
    hid the note that its log's last line is cut off."""
    from fewshot.report.runs import load_run

    run = _run(tmp_path / "copy", None)
    text = (run / "log.jsonl").read_text()
    (run / "log.jsonl").write_text(text[:-40])
    later = (run / "metrics.json").stat().st_mtime + 60
    os.utime(run / "log.jsonl", (later, later))
    notes = load_run(run, "copy").notes
    assert not [n for n in notes if "resumed" in n], notes
    assert [n for n in notes if "log.jsonl is damaged" in n and "line 3" in n], notes


def test_a_finished_run_trained_on_without_a_new_score_is_said_extended(tmp_path):
    """The extension's epochs are told from the log, whatever the file times: an unscored epoch after the finish's
    last (scored) one, with no score lost."""
    from fewshot.report.runs import load_run

    run = _run(tmp_path / "run", None)
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps(_row(4)) + "\n")
    os.utime(run / "log.jsonl", (1e9, 1e9))  # older than metrics.json: times no longer decide
    notes = load_run(run, "run").notes
    assert [n for n in notes if "resumed after it finished" in n], notes


# ---------------------------------------------------------------------- 3. a stopped `fewshot run`
def test_a_stopped_fewshot_run_is_said_so_with_its_resume_command(tmp_path):
    from fewshot.report.compare import run_compare

    folder = tmp_path / "r_runint"
    stage = folder / "finetune_labelled"
    stage.mkdir(parents=True)
    (stage / "log.jsonl").write_text(json.dumps(_row(1)) + "\n")
    (folder / "run_state.json").write_text(json.dumps({"finished": False, "config": {"data": {"root": "/d/cut"}}}))
    out = io.StringIO()
    run_compare([str(folder)], file=out)
    text = out.getvalue()
    command = f"`fewshot run --data /d/cut --out {folder} --resume`"
    assert "was stopped before it finished" in text and f"Continue it with {command}" in text, text
    assert f"{command} continues it" in text and "the same command with --resume" not in text, text
