"""`fewshot report` / `fewshot compare` on damaged run folders (bug hunt hBJ): a finished run's cut-off log line, a
`fewshot run` folder without summary.json, metrics.json gone beside metrics_known.json, and a 0.00 bar.

Run folders are written by hand (no training): the report reads files only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _scores(mean: float, mode: str = "known", **extra) -> dict:
    return {"mode": mode, "mean_acc1": mean, "datasets": {"digits": {"acc1": mean, "acc5": 100.0, "n": 18}},
            "split": "val", **extra}


def _row(epoch: int, scored: bool = False) -> dict:
    row = {"epoch": epoch, "step": epoch, "loss": 1.0, "train_acc1": 50.0, "images_per_s": 100.0, "epoch_time_s": 0.5}
    if scored:
        row.update(score=50.0 + epoch, val={"known": _scores(50.0 + epoch), "unknown": _scores(40.0, "unknown")})
    return row


def _fine_tuning(run: Path, epochs: int = 4, metrics: bool = True) -> Path:
    """A finished fine-tuning run of ``epochs`` epochs, evaluated at 2 and the last (the best)."""
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text("".join(json.dumps(_row(e, e in (2, epochs))) + "\n" for e in range(1, epochs + 1)))
    if metrics:
        (run / "metrics.json").write_text(json.dumps(_scores(50.0 + epochs, best_epoch=epochs, val_scores_compared=2)))
    return run


def _tear_last_line(run: Path) -> None:
    text = (run / "log.jsonl").read_text()
    (run / "log.jsonl").write_text(text[:-40])


def _checkpoint(path: Path, **fields) -> None:
    """A small fewshot checkpoint with the position fields given (weights are not read by the report here)."""
    from fewshot.train.checkpoint import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"kind": "supervised", "config": {"train": {"batch_size": 8}}, "model": {},
                           "label_space": {}, "img_size": 32, "n_parameters": 1, **fields})


# ---------------------------------------------------------------------- 1. a finished run's cut-off log line
def test_read_log_tells_which_last_line_was_cut_off(tmp_path):
    from fewshot.report.run_files import read_log

    run = _fine_tuning(tmp_path / "run")
    _tear_last_line(run)
    notes: list[str] = []
    torn: list[int] = []
    rows = read_log(run, notes, torn)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and torn == [4] and notes == []


def test_a_finished_runs_cut_off_last_log_line_gets_a_note_and_last_pt_counts_the_epochs(tmp_path):
    """epochs 3, best epoch 4 and a short training time were shown without a word."""
    from fewshot.report.runs import load_run

    run = _fine_tuning(tmp_path / "run")
    _checkpoint(run / "checkpoints" / "last.pt", epoch=4, step_in_epoch=0, global_step=4, steps_per_epoch=1)
    _tear_last_line(run)
    found = load_run(run, "run")
    assert found.best_epoch == 4 and found.epochs == 4
    damaged = [n for n in found.notes if "log.jsonl is damaged" in n]
    assert len(damaged) == 1, found.notes
    assert "line 4) is cut off" in damaged[0] and "metrics.json" in damaged[0]
    assert "best epoch shown, 4, is past the last epoch it holds (3)" in damaged[0]


def test_a_stopped_or_live_runs_cut_off_last_line_stays_silent(tmp_path, monkeypatch):
    """A run killed mid-write (no metrics.json) or being written leaves a cut-off last line: no note, as before."""
    from fewshot.report.runs import load_run

    stopped = _fine_tuning(tmp_path / "stopped", metrics=False)
    _tear_last_line(stopped)
    assert not any("cut off" in n for n in load_run(stopped, "stopped").notes)
    live = _fine_tuning(tmp_path / "live")
    _tear_last_line(live)
    monkeypatch.setattr("fewshot.run_lock.being_written", lambda folder: True)
    assert not any("cut off" in n for n in load_run(live, "live").notes)


# ---------------------------------------------------------------------- 2. a `fewshot run` folder's summary.json
def _pipeline(folder: Path) -> Path:
    for stage in ("finetune_labelled", "finetune"):
        _fine_tuning(folder / stage)
    (folder / "run_state.json").write_text(json.dumps({"version": 1, "finished": True}))
    return folder


def test_a_finished_pipeline_without_summary_json_says_so_once(tmp_path):
    """Its test and self-training tables went without a word."""
    from fewshot.report.runs import expand_runs

    folder = _pipeline(tmp_path / "out")
    runs = expand_runs([folder])
    assert len(runs) == 2
    said = [n for r in runs for n in r.notes if "summary.json is missing" in n]
    assert len(said) == 1 and str(folder / "summary.json") in said[0] and "no test table" in said[0], said


def test_a_pipelines_broken_summary_json_is_noted_once_not_once_per_stage(tmp_path):
    from fewshot.report.runs import expand_runs

    folder = _pipeline(tmp_path / "out")
    (folder / "summary.json").write_text('{"stages": {"finetune": {"epochs": ')
    runs = expand_runs([folder])
    said = [n for r in runs for n in r.notes if "not valid JSON" in n]
    assert len(runs) == 2 and len(said) == 1, [r.notes for r in runs]


# ---------------------------------------------------------------------- 3. metrics_known.json standing in
def _known_only(run: Path) -> Path:
    """metrics.json removed; metrics_known.json / metrics_unknown.json as `fewshot train` writes them (no count of
    the val scores compared)."""
    _fine_tuning(run)
    (run / "metrics.json").unlink()
    (run / "metrics_known.json").write_text(json.dumps(_scores(54.0, best_epoch=4)))
    (run / "metrics_unknown.json").write_text(json.dumps(_scores(40.0, "unknown", best_epoch=4)))
    return run


def test_tables_name_metrics_known_json_where_metrics_json_is_gone(tmp_path):
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    run = _known_only(tmp_path / "run")
    other = _fine_tuning(tmp_path / "other")
    found = expand_runs([run, other])
    title = T.dataset_table(found[0]).title
    assert "metrics.json" not in title and "metrics_known.json mode: known" in title, title
    assert "the best of 2 val scores: optimistic" in title  # the log's two scores, as the run counted them
    assert "metrics.json mode: known" in T.dataset_table(found[1]).title  # unchanged where metrics.json is there
    caption = T.overview_table(found, {}).caption
    assert "for run: metrics_known.json" in caption, caption
    assert any("metrics.json is missing: the accuracies are from metrics_known.json" in n for n in found[0].notes)


def test_metrics_known_jsons_own_count_of_val_scores_is_taken(tmp_path):
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    run = _known_only(tmp_path / "run")
    (run / "metrics_known.json").write_text(json.dumps(_scores(54.0, best_epoch=4, val_scores_compared=7)))
    assert "the best of 7 val scores" in T.dataset_table(expand_runs([run])[0]).title


# ---------------------------------------------------------------------- 4. a 0.00 bar
def _bars(path: Path, zero: bool) -> np.ndarray:
    """Bars of two runs on many datasets (too narrow for value labels); run b scores 0.00 on "x", or lacks it (and
    lacks "y" either way: the figure's note on differing datasets is in both)."""
    import matplotlib.image

    from fewshot.report.plots import plot_accuracy_bars

    names = [f"set{k}" for k in range(30)]
    full = {"mode": "known", "mean_acc1": 50.0, "datasets": {n: {"acc1": 50.0} for n in [*names, "x", "y"]}}
    b = {n: {"acc1": 50.0} for n in names}
    if zero:
        b["x"] = {"acc1": 0.0}
    plot_accuracy_bars(["a", "b"], [{"known": full}, {"known": {**full, "datasets": b}}], path)
    return matplotlib.image.imread(path)


def test_a_zero_score_bar_is_drawn_apart_from_a_missing_dataset(tmp_path):
    """Both drew nothing: a failing run read as one without the dataset."""
    zero, missing = _bars(tmp_path / "zero.png", True), _bars(tmp_path / "missing.png", False)
    assert zero.shape == missing.shape and not np.array_equal(zero, missing)


def test_a_finished_run_extended_then_stopped_is_said_so_not_called_damaged(tmp_path):
    """`train --resume --epochs N` on a finished run keeps its old metrics.json while it trains: stopped (and its last
    line cut off by the kill), it was shown as a finished run with a damaged log and the old finish's scores without
    a word of the epochs trained since (review rev72)."""
    import os

    from fewshot.report.runs import load_run

    run = _fine_tuning(tmp_path / "run")
    old = (run / "metrics.json").stat().st_mtime - 60
    os.utime(run / "metrics.json", (old, old))
    with open(run / "log.jsonl", "a") as f:
        f.write("".join(json.dumps(_row(e, e == 6)) + "\n" for e in (5, 6, 7)))
    _tear_last_line(run)
    found = load_run(run, "run")
    assert not [n for n in found.notes if "log.jsonl is damaged" in n], found.notes
    said = [n for n in found.notes if "log.jsonl holds epochs trained after the finish" in n]
    assert len(said) == 1 and "accuracies shown are of the earlier finish" in said[0], found.notes


def test_a_finished_run_whose_files_were_written_together_gets_no_extension_note(tmp_path):
    from fewshot.report.runs import load_run

    run = _fine_tuning(tmp_path / "run")
    assert not [n for n in load_run(run, "run").notes if "trained after the finish" in n]
