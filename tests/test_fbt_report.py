"""`fewshot report`: self-training's settings shown as settings, learning-rate tick labels that differ, a log row of
the wrong types, the advice for a dataset folder given as --data, a log.jsonl of no rows, and a one-dataset run's
bars and captions.

Run folders are written by hand (log.jsonl, metrics.json); one tiny `fewshot train` run gives the report a model
for the --data advice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.checks import run_main
from helpers.tiny import tiny_train_argv


def _scores(mean: float, mode: str = "known", names=("digits",), routing=None) -> dict:
    m = {"mode": mode, "mean_acc1": mean, "datasets": {n: {"acc1": mean, "acc5": 100.0, "n": 30} for n in names}}
    return {**m, "routing_acc": routing} if mode == "unknown" else m


def _write_log(run: Path, rows: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _labels(precision: float, thresholds: dict | None = None) -> dict:
    """A round's pseudo_labels as run_pseudo.label_pool writes them (threshold, precision: the run's settings)."""
    digits = {"kept": 100, "kept_from_unknown_source": 0, "pool": 1000, "labelled": 1000, "mean_confidence": 0.5123}
    if thresholds is not None:
        digits["class_thresholds"] = thresholds
    return {"source": "unlabeled", "pool_size": 1000, "pool_labelled": 1000, "keep_frac": 0.5, "max_per_shot": 10,
            "threshold": 0.0, "precision": precision, "targets": "hard", "unknown_source_pool": 0,
            "datasets": {"digits": digits}}


def test_self_training_shows_its_settings_as_settings_and_the_measured_confidence():
    """Every default run's threshold cell read "0.0, precision 0.0": run.pseudo_precision (0: per-class
    calibration off) looked like a measured precision of none right. Settings are named as settings; the kept
    labels' mean confidence (measured) and the per-class thresholds used (where calibrated) are shown."""
    from fewshot.report import tables as T
    from fewshot.report.pipeline_runs import self_training_rounds

    stages = {"finetune_labelled": {"val_mean_acc1": 12.5},
              "finetune": {"val_mean_acc1": 13.0, "pseudo_labels": _labels(0.0)}}
    table = T.self_training_table("pipe", self_training_rounds(stages))
    row = dict(zip(table.columns, table.rows[1]))
    assert not any("precision 0.0" in cell for cell in table.rows[1]), table.rows[1]
    assert row["min confidence (run.pseudo_threshold)"] == "0"
    assert row["per-class thresholds (run.pseudo_precision)"] == "off (run.pseudo_precision 0)"
    assert row["kept per dataset (of labelled / in the pool; mean confidence)"] == \
        "digits 100 (of 1000; mean confidence 0.51)"
    assert "settings" in table.caption

    calibrated = _labels(0.9, {"0": 0.41, "1": 0.873, "2": None})  # class 2 reached no threshold: it keeps none
    stages["finetune"]["pseudo_labels"] = calibrated
    row = T.self_training_table("pipe", self_training_rounds(stages)).rows[1]
    assert row[5] == "for precision 0.9 on val: digits 0.41–0.87 (1 of 3 classes closed)", row
    del calibrated["datasets"]["digits"]["class_thresholds"]
    row = T.self_training_table("pipe", self_training_rounds(stages)).rows[1]
    assert row[5] == "for precision 0.9 on val (thresholds not recorded)", row


def _tick_labels(lo: float, hi: float) -> list[str]:
    """The y tick labels drawn in view of a learning-rate panel spanning lo .. hi."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fewshot.report.plots import _finish

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([1, 2, 3], [lo, (lo + hi) / 2, hi])
    _finish(ax, "learning rate (head)", log=True)
    fig.canvas.draw()
    y0, y1 = sorted(ax.get_ylim())
    ticks = [*ax.yaxis.get_major_ticks(), *ax.yaxis.get_minor_ticks()]
    assert ax.get_yscale() == "log"
    return [t.label1.get_text().replace("\N{MINUS SIGN}", "-") for t in ticks
            if y0 <= t.get_loc() <= y1 and t.label1.get_visible() and t.label1.get_text()]


def test_learning_rate_ticks_of_a_narrow_range_are_told_apart():
    """With lr 2.9e-3 .. 3.5e-3 LogFormatter labelled six ticks "3e-03" and the next "4e-03"."""
    narrow = _tick_labels(2.9e-3, 3.5e-3)
    assert len(narrow) >= 3 and len(set(narrow)) == len(narrow), narrow
    assert "2.9e-03" in narrow and "3.5e-03" in narrow, narrow
    wide = _tick_labels(1e-5, 3e-3)  # decades: one digit, as before
    assert {"1e-05", "1e-04", "1e-03"} <= set(wide), wide


@pytest.mark.parametrize("datasets", [None, "abc"])
def test_a_log_row_whose_val_fields_have_other_types_is_left_out_with_one_note(tmp_path, monkeypatch, datasets):
    """val.known.datasets null crashed the curves with a TypeError (an internal error); a string drew a curve per
    letter. The val part of such rows is left out, with one note for all of them."""
    from fewshot.report import plots
    from fewshot.report.run_files import read_log

    bad = {"known": {**_scores(10.0), "datasets": datasets}, "unknown": _scores(5.0, "unknown")}
    rows = [{"epoch": e, "step": 4 * e, "lr": 1e-3, "loss": 2.0, "train_acc1": 20.0, "score": 10.0,
             "val": bad if e > 1 else {"known": _scores(10.0), "unknown": _scores(5.0, "unknown")}} for e in (1, 2, 3)]
    _write_log(tmp_path / "run", rows)
    notes: list[str] = []
    log = read_log(tmp_path / "run", notes)
    assert [("val" in r) for r in log] == [True, False, False]
    assert notes == ["log.jsonl: the val scores of epochs 2, 3 are not what fewshot logs (a field of another type); "
                     "left out."], notes
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.append(fig) or out)
    plots.plot_finetune_curves(rows, tmp_path / "curves.png")  # rows not read by read_log: no crash either
    legend = drawn[0].axes[3].get_legend_handles_labels()[1]
    assert legend == ["digits (known)", "digits (unknown)"], legend


def test_report_of_a_dataset_folder_as_data_advises_the_parent_alone(tmp_path, digits_root):
    """`report RUN --data ROOT/digits` passed layout's advice through: "--data ROOT --datasets digits", an option
    report lacks (it reads the run's own datasets under the root)."""
    run = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(digits_root, run, "--datasets", "digits"))
    assert rc == 0, err
    rc, out, err = run_main("report", run, "--data", digits_root / "digits", "--out", tmp_path / "r", "--device",
                            "cpu", "--grid", "0")
    assert rc == 0, err
    said = out + err
    assert "looks like a dataset folder itself" in said, said
    assert f"Pass its parent instead: --data {digits_root} (the report reads the run's datasets there)." in said, said
    assert "--datasets" not in said, said


def test_a_log_of_no_training_rows_gets_one_note_that_says_so(tmp_path):
    """`echo '{"note":1}' > RUN/log.jsonl`: the report said "log.jsonl is missing or empty" and "No log.jsonl: no
    training curves." of a file that is there, beside the note on its line."""
    from fewshot.report.build import build_report
    from fewshot.report.runs import load_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"note":1}\n')
    (run / "metrics.json").write_text(json.dumps(_scores(50.0)))
    notes = [n for n in load_run(run, "run").notes if "log.jsonl" in n]
    assert len(notes) == 1 and "log.jsonl has no training rows (1 line(s) are not log rows" in notes[0], notes
    assert "no training curves" in notes[0]
    page = build_report([str(run)], tmp_path / "r", log=lambda *a: None, skip_images="test").read_text()
    assert page.count("no training curves") == 1, page
    assert "missing or empty" not in page and "No log.jsonl" not in page

    (run / "log.jsonl").write_text("\n")
    assert [n for n in load_run(run, "run").notes if "log.jsonl" in n] == [f"{run / 'log.jsonl'} is empty: no training "
                                                                            f"curves."]
    (run / "log.jsonl").unlink()
    assert [n for n in load_run(run, "run").notes if "log.jsonl" in n] == ["log.jsonl is missing: no training curves."]


def test_one_dataset_draws_no_routing_and_no_accuracies_name_no_metrics_json(tmp_path, monkeypatch):
    """One dataset: the unknown-source bars drew an empty "routing" group under a title "and dataset routing". Runs
    with no accuracies yet were captioned "at the best checkpoint (metrics.json)"."""
    from fewshot.report import plots
    from fewshot.report import tables as T
    from fewshot.report.runs import load_run

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.append(fig) or out)
    plots.plot_accuracy_bars(["a"], [{"known": _scores(50.0), "unknown": _scores(40.0, "unknown", routing=100.0)}],
                             tmp_path / "bars.png")
    unknown = drawn[0].axes[1]
    assert [t.get_text() for t in unknown.get_xticklabels()] == ["digits", "mean"]
    assert unknown.get_title() == "unknown-source val accuracy"
    two = {"known": _scores(50.0, names=("a", "b")), "unknown": _scores(40.0, "unknown", ("a", "b"), 90.0)}
    plots.plot_accuracy_bars(["a"], [two], tmp_path / "bars2.png")
    assert [t.get_text() for t in drawn[1].axes[1].get_xticklabels()] == ["a", "b", "mean", "routing"]
    assert drawn[1].axes[1].get_title() == "unknown-source val accuracy and dataset routing"

    run = tmp_path / "stopped"
    _write_log(run, [{"epoch": 1, "step": 4, "lr": 1e-3, "loss": 2.0}])
    caption = T.overview_table([load_run(run, "stopped")], {}).caption
    source = caption.split(". FLOPs")[0]
    assert source == "Accuracies in % on the val split (none yet: no fine-tuning run here has logged an evaluation)"
