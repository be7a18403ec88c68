"""What `fewshot report` / `fewshot compare` say about a run, on hand-written run folders (nothing trained):
fractional epochs, the smoothing caption, which checkpoint a number is from, messages about missing files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.checks import run_main


def _row(epoch: int, step: int, **extra) -> dict:
    return {"epoch": epoch, "step": step, "loss": 1.0, "lr": 1e-3, "train_acc1": 50.0, **extra}


def _write_log(run: Path, rows: list[dict]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_a_stopped_run_shows_the_epochs_it_trained_not_the_next_whole_one(tmp_path):
    """A budget stop 3/4 into the sixth epoch logs it as epoch 6: the epochs column said 6 where summary.json
    said 5.75, and 0.27 epochs (a lone partial row) showed as 1."""
    from fewshot.report.runs import expand_runs
    from fewshot.report.tables import overview_table

    alone = _write_log(tmp_path / "alone", [_row(e, 4 * e) for e in range(1, 6)] + [_row(6, 23)])
    pipe = tmp_path / "pipe"
    _write_log(pipe / "finetune", [_row(1, 3)])  # 3 steps: the log alone cannot tell of how many
    (pipe / "summary.json").write_text(json.dumps({"stages": {"finetune": {"epochs": 0.27}}}))
    whole = _write_log(tmp_path / "whole", [_row(e, 4 * e) for e in range(1, 4)])
    runs = expand_runs([alone, pipe, whole])
    assert [r.epochs for r in runs] == [5.75, 0.27, 3]
    table = overview_table(runs, {})
    column = table.columns.index("epochs")
    assert [row[column] for row in table.rows] == ["5.75", "0.27", "3"]
    assert "epochs completed when" not in table.caption and "fraction" in table.caption


def test_the_curves_caption_gives_the_smoothing_each_series_gets(tmp_path):
    """The caption took the weight from the number of log rows (0.87 for 30 epochs) while val curves evaluated
    every 2nd epoch are smoothed by their own 15 points (0.73); with <= 4 evaluations they are not smoothed."""
    from fewshot.report.build import ReportBuilder

    def val(e):
        table = {"mean_acc1": 50.0, "datasets": {"d": {"acc1": 50.0 + e, "acc5": 100.0, "n": 4}}}
        return {"score": 50.0 + e, "val": {"known": table, "unknown": table}}

    every2 = _write_log(tmp_path / "every2", [_row(e, e, **(val(e) if e % 2 == 0 else {})) for e in range(1, 31)])
    few = _write_log(tmp_path / "few", [_row(e, e, **(val(e) if e % 8 == 0 else {})) for e in range(1, 31)])
    builder = ReportBuilder([every2, few], tmp_path / "out", device="cpu")
    builder.out.mkdir()
    every2_caption, few_caption = (builder._curves(r)[1] for r in builder.runs)
    assert "0.87 for the per-epoch curves and 0.73 for the val curves" in every2_caption
    assert "weight 0.87 for the per-epoch curves" in few_caption
    assert "val curves: too few points to smooth" in few_caption


def test_moco_knn_table_says_its_checkpoint_and_what_export_writes(tmp_path):
    """metrics.json and the report give best.pt's kNN accuracy while `fewshot export` writes last.pt: nothing
    said the number shown is not the exported backbone's."""
    from fewshot.report.runs import load_run
    from fewshot.report.tables import knn_table

    rows = [_row(e, e, contrast_acc1=1.0, score=s, knn_acc1={"d": s, "mean": s})
            for e, s in ((1, 50.0), (2, 56.75), (3, 55.6))]
    run = load_run(_write_log(tmp_path / "moco", rows), "moco")
    t = knn_table(run)
    assert "epoch 2, best.pt" in t.title and ["mean", "56.75"] in t.rows
    assert "`fewshot export` writes last.pt, epoch 3, kNN mean 55.60" in t.caption
    rows[2]["score"] = rows[2]["knn_acc1"]["mean"] = 60.0  # the best is the last: nothing to warn of
    assert "export" not in knn_table(load_run(_write_log(tmp_path / "moco", rows), "moco")).caption


def test_a_run_folder_whose_predicting_stage_is_gone_says_so(tmp_path):
    """summary.json names the stage that predicted, whose folder was deleted: predict said the run "did not
    finish (no summary.json)" beside its summary.json."""
    from fewshot.errors import UserError
    from fewshot.train.checkpoint import resolve_checkpoint

    pipe = tmp_path / "pipe"
    (pipe / "finetune_labelled" / "checkpoints").mkdir(parents=True)
    (pipe / "finetune_labelled" / "checkpoints" / "last.pt").write_bytes(b"")
    (pipe / "summary.json").write_text(json.dumps({"predicted_with": "finetune"}))
    with pytest.raises(UserError) as exc:
        resolve_checkpoint(pipe)
    assert "did not finish" not in str(exc.value) and f"{pipe / 'finetune'} is missing" in str(exc.value)
    (pipe / "summary.json").unlink()
    with pytest.raises(UserError, match="did not finish"):
        resolve_checkpoint(pipe)


def test_compare_prints_a_stopped_runs_fraction(tmp_path):
    run = _write_log(tmp_path / "stopped", [_row(1, 8), _row(2, 11)])
    rc, out, err = run_main("compare", run)
    assert rc == 0, err
    assert "1.38" in out


def test_compare_says_a_run_stopped_before_its_first_evaluation(tmp_path):
    """A run killed in its first epoch (last.pt, no evaluation) showed as a row of '-' without a word."""
    run = _write_log(tmp_path / "killed", [_row(1, 3)])
    rc, out, err = run_main("compare", run)
    assert rc == 0, err
    assert "stopped before its first evaluation" in (out + err) and "--resume" in (out + err)
    evaluated = _write_log(tmp_path / "evaluated", [_row(1, 3, val={"digits": {"acc1": 50.0}})])
    rc, out, err = run_main("compare", evaluated)
    assert rc == 0 and "stopped before its first evaluation" not in out + err, out + err


def test_routing_is_shown_only_where_there_is_more_than_one_dataset_to_route_to():
    """A one-dataset run showed 'routing 100.00' beside two-dataset runs' routing, as if it were a result."""
    from fewshot.report.run_record import Run
    from fewshot.report.tables import overview_table, run_tables

    one = {"datasets": {"digits": {"acc1": 80.0, "n": 10}}, "mean_acc1": 80.0, "routing_acc": 100.0}
    two = {"datasets": {"digits": {"acc1": 80.0, "n": 10}, "fashion": {"acc1": 60.0, "n": 10}}, "mean_acc1": 70.0,
           "routing_acc": 97.5}
    runs = [Run(path=Path(name), label=name, kind="supervised", config={}, log=[], metrics_known=m, metrics_unknown=m)
            for name, m in (("one", one), ("two", two))]
    table = overview_table(runs, {})
    col = table.columns.index("routing (% images)")
    assert [row[col] for row in table.rows] == ["–", "97.50"]
    assert not any("dataset routing" in row[0] for t in run_tables(runs[0]) for row in t.rows)
    assert any("dataset routing" in row[0] for t in run_tables(runs[1]) for row in t.rows)
