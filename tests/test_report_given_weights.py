"""`fewshot report` / `fewshot compare`: a checkpoint named as RUN is scored with the weights it predicts with (EMA
or raw), a MoCo checkpoint's kNN table names its own epoch, the grid's shares, a dataset named "routing", a stage
named twice, and small values the tables hid.

Most cases are run folders written by hand (log.jsonl, metrics.json, a small checkpoint); one fine-tuning run of
timm's `test_resnet` at 32 px on a tiny sklearn-digits root checks the page's recomputed score.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers.checks import run_main
from helpers.tiny import trained_digits_run


def _scores(mean: float, mode: str = "known") -> dict:
    return {"mode": mode, "mean_acc1": mean, "datasets": {"digits": {"acc1": mean, "acc5": 100.0, "n": 30}}}


def _checkpoint(path: Path, kind: str = "supervised", **fields) -> None:
    """A small fewshot checkpoint with the fields given (the report reads no weights from it here)."""
    from fewshot.train.checkpoint import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"kind": kind, "config": {"train": {"batch_size": 8}}, "model": {}, "label_space": {},
                           "img_size": 32, "n_parameters": 1, "step_in_epoch": 0, **fields})


def _write_log(run: Path, rows: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _raw_beat_the_ema(run: Path) -> None:
    """Epoch 2's raw weights scored 11.00 and its EMA 10.00: best.pt holds the raw ones (metrics.json 11.00), the
    log's val is theirs, and last.pt of the same epoch holds the EMA its readers predict with."""
    row = {"epoch": 2, "step": 8, "loss": 1.0, "score": 11.0, "val": {"known": _scores(11.0),
                                                                      "unknown": _scores(9.0, "unknown")},
           "score_ema": 10.0, "score_raw": 11.0, "weights": "raw"}
    _write_log(run, [{"epoch": 1, "step": 4, "loss": 2.0, "score": 5.0, "val": {"known": _scores(5.0)},
                      "score_ema": 5.0, "score_raw": 4.0, "weights": "ema"}, row])
    (run / "metrics.json").write_text(json.dumps({**_scores(11.0), "split": "val", "best_epoch": 2, "weights": "raw"}))
    weights = {"w": torch.zeros(1)}
    _checkpoint(run / "checkpoints" / "last.pt", epoch=2, model=weights, ema=weights)
    _checkpoint(run / "checkpoints" / "best.pt", epoch=2, model=weights, ema=None, weights="raw")


def test_last_pt_named_as_run_shows_its_emas_score_not_best_pts_raw_one(tmp_path):
    """last.pt of best.pt's epoch was shown with best.pt's raw-weight scores (11.00), while predicting from it uses its
    EMA (score_ema 10.00): the page then said the data differ. The epochs matched; the weights did not."""
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    run = tmp_path / "run"
    _raw_beat_the_ema(run)
    last, best = expand_runs([run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"])
    assert last.given_weights == "ema" and last.metrics_weights == "ema"
    assert last.metrics_known == {"mode": "known", "mean_acc1": 10.0} and last.metrics_epoch == 2
    assert any("predicts with its EMA weights" in n and "score_ema" in n for n in last.notes), last.notes
    assert best.given_weights == "raw" and best.metrics["mean_acc1"] == 11.0 and not best.from_log
    assert not any("named as RUN" in n for n in best.notes), best.notes
    table = T.dataset_table(last)
    assert table.rows[-1][2] == "10.00"
    # metrics.json is there (best.pt's): the title and the caption said there was none
    assert "no metrics.json" not in table.title and "the epoch last.pt holds" in table.title
    caption = T.overview_table([last], {}).caption
    assert "no usable metrics.json" not in caption and "checkpoint named as RUN" in caption


def test_last_pt_of_a_run_whose_ema_won_shows_the_logged_scores(tmp_path):
    """The EMA scored higher: the log's per-dataset scores are of last.pt's weights too, and are shown."""
    from fewshot.report.runs import expand_runs

    run = tmp_path / "run"
    _raw_beat_the_ema(run)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    rows[1].update(weights="ema", score=11.0, score_ema=11.0, score_raw=10.0)
    _write_log(run, rows)
    (run / "metrics.json").write_text(json.dumps({**_scores(11.0), "split": "val", "best_epoch": 2, "weights": "ema"}))
    found = expand_runs([run / "checkpoints" / "last.pt"])[0]
    assert found.metrics["mean_acc1"] == 11.0 and "datasets" in found.metrics
    assert not any("named as RUN" in n for n in found.notes), found.notes


def test_a_moco_checkpoint_named_as_run_titles_its_own_epoch(tmp_path):
    """compare RUN/checkpoints/last.pt of a MoCo run (epoch 2; best.pt epoch 1) showed epoch 2's kNN scores under
    "(epoch 1, best.pt)"; the caption called the overview's numbers metrics.json's (a MoCo run writes none)."""
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    run = tmp_path / "moco"
    _write_log(run, [{"epoch": 1, "step": 4, "loss": 6.0, "contrast_acc1": 1.0, "score": 57.0,
                      "knn_acc1": {"digits": 57.0, "mean": 57.0}},
                     {"epoch": 2, "step": 8, "loss": 5.0, "contrast_acc1": 2.0, "score": 55.0,
                      "knn_acc1": {"digits": 55.0, "mean": 55.0}}])
    _checkpoint(run / "checkpoints" / "last.pt", "moco", epoch=2, global_step=8, n_pool=32, world=1)
    given, plain = expand_runs([run / "checkpoints" / "last.pt", run])
    table = T.knn_table(given)
    assert table.title.endswith("(epoch 2, last.pt)") and table.rows[-1] == ["mean", "55.00"]
    assert T.knn_table(plain).title.endswith("(epoch 1, best.pt)") and T.knn_table(plain).rows[-1][1] == "57.00"
    caption = T.overview_table([given], {}).caption
    assert "(metrics.json)" not in caption and "log.jsonl" in caption


def test_grid_gives_each_dataset_a_share_and_passes_an_unused_one_on():
    """--grid 4 over 3 datasets showed 2/2/0 (the help promises at least one of each); a dataset with 3 val images
    kept its share of --grid 40 unused: 23 images shown."""
    from fewshot.report.analysis import sample_for_grid

    ids = np.array([0] * 50 + [1] * 50 + [2] * 50)
    a = SimpleNamespace(space=SimpleNamespace(names=["A", "B", "C"]), dataset_ids=ids)
    picked = sample_for_grid(a, 4)
    assert len(picked) == 4 and set(a.dataset_ids[picked].tolist()) == {0, 1, 2}
    small = SimpleNamespace(space=a.space, dataset_ids=np.array([0] * 3 + [1] * 50 + [2] * 50))
    picked = sample_for_grid(small, 40)
    assert len(picked) == 40 and len(set(picked.tolist())) == 40
    assert np.bincount(small.dataset_ids[picked]).tolist() == [3, 19, 18]
    assert len(sample_for_grid(SimpleNamespace(space=a.space, dataset_ids=np.array([0, 1, 2, 2])), 40)) == 4


def test_a_dataset_named_routing_keeps_its_own_bar(tmp_path, monkeypatch):
    """A dataset named "routing" (not a reserved name) drew the routing accuracy as its bar, twice."""
    from fewshot.report import plots

    figs, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: (figs.append(fig), save(fig, out))[1])
    m = {"mean_acc1": 50.0, "routing_acc": 30.0, "datasets": {"routing": {"acc1": 80.0}, "digits": {"acc1": 20.0}}}
    plots.plot_accuracy_bars(["run"], [{"known": m, "unknown": m}], tmp_path / "bars.png")
    known, unknown = figs[0].axes[:2]
    assert [p.get_height() for p in known.containers[0]] == [80.0, 20.0, 50.0]
    assert [p.get_height() for p in unknown.containers[0]] == [80.0, 20.0, 50.0, 30.0]
    assert [t.get_text() for t in unknown.get_xticklabels()] == ["routing", "digits", "mean", "routing"]


def test_a_stage_named_alone_and_through_its_run_folder_keeps_the_test_table(tmp_path):
    """`compare R/finetune_labelled R` lost the test table (the stage's own copy, without summary.json, stood);
    `compare R R/finetune_labelled` kept it."""
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    pipe = tmp_path / "r1"
    stage = pipe / "finetune_labelled"
    _write_log(stage, [{"epoch": 1, "step": 4, "loss": 1.0, "score": 50.0, "val": {"known": _scores(50.0)}}])
    (stage / "metrics.json").write_text(json.dumps({**_scores(50.0), "split": "val", "best_epoch": 1}))
    (pipe / "summary.json").write_text(json.dumps({"stages": {}, "metrics": {"test": _scores(42.0)}}))
    for order in ([stage, pipe], [pipe, stage]):
        runs = expand_runs(order)
        assert len(runs) == 1 and runs[0].group == pipe, order
        tables = T.run_tables(runs[0])
        assert any("test accuracy" in t.title and t.rows[-1][2] == "42.00" for t in tables), order


def test_small_values_the_tables_hid(tmp_path):
    """metrics.json with "split": null was left out as "--split None"; a pseudo-label precision of 0.0 was not shown
    (the setting that leaves per-class thresholds off); 1 step of 250 showed as 0 epochs (a run that trained
    nothing)."""
    from fewshot.report import tables as T
    from fewshot.report.runs import load_run

    run = tmp_path / "run"
    _write_log(run, [{"epoch": 1, "step": 4, "loss": 1.0}])
    (run / "metrics.json").write_text(json.dumps({**_scores(61.0), "split": None, "best_epoch": 1}))
    found = load_run(run, "run")
    assert found.metrics is not None and found.metrics["mean_acc1"] == 61.0
    assert not any("None" in n for n in found.notes), found.notes

    rounds = [{"round": 1, "stage": "finetune_labelled", "val_mean_acc1": 50.0, "pseudo_labels": None},
              {"round": 2, "stage": "finetune", "val_mean_acc1": 40.0,
               "pseudo_labels": {"pool_size": 10, "pool_labelled": 10, "threshold": 0.9, "precision": 0.0,
                                 "datasets": {"digits": {"kept": 3, "labelled": 10}}}}]
    row = T.self_training_table("r", rounds).rows[1]
    assert row[4:6] == ["0.9", "off (run.pseudo_precision 0)"]  # settings, shown as settings

    first = tmp_path / "first"
    _checkpoint(first / "checkpoints" / "last.pt", epoch=0, step_in_epoch=1, global_step=1, steps_per_epoch=250)
    assert load_run(first, "first").epochs == 0.01
    assert T.epochs(load_run(first, "first").epochs) == "0.01"
    almost = tmp_path / "almost"
    _checkpoint(almost / "checkpoints" / "last.pt", epoch=0, step_in_epoch=249, global_step=249, steps_per_epoch=250)
    assert load_run(almost, "almost").epochs == 0.99


# ---------------------------------------------------------------------- a trained run: the page's recomputed score
COMMON = ["--model", "test_resnet", "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--no-progress",
          "train.tensorboard=false", "train.threads=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_digits_run(tmp_path_factory.mktemp("report_given_weights"), 1, *COMMON)


def test_the_page_compares_last_pts_prediction_with_its_own_weights_score(trained, tmp_path):
    """The page recomputed last.pt's (EMA) predictions, compared them with best.pt's raw-weight score of the same
    epoch and said "the data differ from those the run was evaluated on": the data were the same."""
    run = tmp_path / "run"
    shutil.copytree(trained["ft"], run)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    row = rows[-1]
    assert row["epoch"] == 1 and "score_ema" in row, row.keys()
    ema = row["score_ema"]  # last.pt's EMA, the weights predicting from it uses
    fake = {"mode": "known", "mean_acc1": 99.0, "datasets": {"digits": {"acc1": 99.0, "acc5": 99.0, "n": 30}}}
    row.update(score=99.0, score_raw=99.0, weights="raw", val={"known": fake, "unknown": {**fake, "mode": "unknown"}})
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("metrics.json", "metrics_known.json", "metrics_unknown.json"):
        (run / name).write_text(json.dumps({**fake, "split": "val", "best_epoch": 1, "weights": "raw"}))
    rc, out, err = run_main("report", run / "checkpoints" / "last.pt", "--out", tmp_path / "r", "--device", "cpu",
                            "--grid", "4")
    assert rc == 0, err
    text = (tmp_path / "r" / "index.html").read_text()
    assert "the data differ" not in text and "Recomputed" not in text
    assert f"{ema:.2f} (known source)" in text and "99.00" not in text
    assert "predicts with its EMA weights" in out


def test_a_run_without_best_pt_compares_last_pts_ema_with_its_own_weights(trained, tmp_path):
    """A run folder without best.pt predicts with last.pt's EMA; the metrics shown are of the raw weights (they
    scored higher): the page said "the val images differ" because only a checkpoint named as RUN was compared by its
    weights."""
    from fewshot.report.build import file_weights

    run = tmp_path / "run"
    shutil.copytree(trained["ft"], run)
    (run / "checkpoints" / "best.pt").unlink()
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    fake = {"mode": "known", "mean_acc1": 99.0, "datasets": {"digits": {"acc1": 99.0, "acc5": 99.0, "n": 30}}}
    rows[-1].update(score=99.0, score_raw=99.0, weights="raw", val={"known": fake,
                                                                    "unknown": {**fake, "mode": "unknown"}})
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("metrics.json", "metrics_known.json", "metrics_unknown.json"):
        (run / name).write_text(json.dumps({**fake, "split": "val", "best_epoch": 1, "weights": "raw"}))
    assert file_weights(run / "checkpoints" / "last.pt") == "ema" and file_weights(tmp_path / "none.pt") is None
    rc, _, err = run_main("report", run, "--out", tmp_path / "r", "--device", "cpu", "--grid", "4")
    assert rc == 0, err
    text = (tmp_path / "r" / "index.html").read_text()
    assert "the last checkpoint (best.pt is missing" in text
    assert "Recomputed" not in text and "the val images differ" not in text
    # the numbers differ on the page: it says why (they differed without a word)
    assert "last.pt predicts with its EMA weights, but the accuracies shown (epoch 1) are of the other set (RAW " \
        "weights), not last.pt&#x27;s: its mean acc@1 on these val images is" in text, text
    assert "theirs 99.00." in text


def test_the_page_reads_the_checkpoints_weights_only_where_the_numbers_differ(trained, tmp_path, monkeypatch):
    """file_weights loaded the checkpoint of every run for the comparison, also where its scores match the page's
    (or there is nothing to compare): it is read only where the weights can be why the numbers differ."""
    import fewshot.report.build as build

    reads = []
    monkeypatch.setattr(build, "file_weights", lambda path: reads.append(path) or "ema")
    run = tmp_path / "run"
    shutil.copytree(trained["ft"], run)
    rc, _, err = run_main("report", run, "--out", tmp_path / "r", "--device", "cpu", "--grid", "4")
    assert rc == 0, err
    assert reads == [], reads
    text = (tmp_path / "r" / "index.html").read_text()
    assert "Recomputed" not in text and "predicts with its" not in text


def test_the_report_takes_a_checkpoints_weights_by_the_trainings_own_rule(tmp_path, monkeypatch):
    """report/runs.py repeated train/finetune.py's chosen_weights: one rule, so that a change reaches both."""
    import fewshot.train.finetune
    from fewshot.report.runs import expand_runs

    run = tmp_path / "run"
    _raw_beat_the_ema(run)
    assert expand_runs([run / "checkpoints" / "last.pt"])[0].given_weights == "ema"
    monkeypatch.setattr(fewshot.train.finetune, "chosen_weights", lambda ck: "raw")
    assert expand_runs([run / "checkpoints" / "last.pt"])[0].given_weights == "raw"
