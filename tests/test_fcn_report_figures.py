"""Figures of `fewshot report` / `fewshot compare` that read as something else (hunt hAV): a test mean over the
scored datasets only, means over different datasets side by side, pseudo-labels kept from images of unknown
source, and a `fewshot run`'s MoCo stage headlined by best.pt. Run folders are written by hand (nothing trained)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.checks import run_main


def _scores(names: dict[str, float], mode: str = "known", **extra) -> dict:
    mean = sum(names.values()) / len(names)
    return {"mode": mode, "mean_acc1": mean, "routing_acc": None, **extra,
            "datasets": {n: {"acc1": v, "acc5": 100.0, "n": 20} for n, v in names.items()}}


def _write_log(run: Path, rows: list[dict]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _finetuned(run: Path, names: dict[str, float]) -> Path:
    """A finished fine-tuning run: one evaluated epoch and its metrics.json."""
    _write_log(run, [{"epoch": 1, "step": 4, "loss": 1.0, "score": 50.0, "val": {"known": _scores(names)}}])
    (run / "metrics.json").write_text(json.dumps({**_scores(names), "split": "val", "best_epoch": 1}))
    return run


def test_the_test_table_names_a_dataset_fewshot_run_could_not_score(tmp_path):
    """summary.json's test scores left digits out (its key lacked test ids: not_scored); the table showed one row
    and "mean 72.14", read as a two-dataset test mean."""
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    pipe = tmp_path / "runY"
    _finetuned(pipe / "finetune", {"digits": 90.0, "fashion-mnist": 70.0})
    test = _scores({"fashion-mnist": 72.14}, split="test", not_scored=["digits"])
    unknown = _scores({"fashion-mnist": 70.0}, mode="unknown", split="test", not_scored=["digits"])
    (pipe / "summary.json").write_text(json.dumps({"stages": {}, "metrics": {"test": test, "test_unknown": unknown}}))
    table = T.test_table(expand_runs([pipe])[0])
    assert "Not scored: digits (no usable answer key" in table.caption
    assert "over the 1 scored dataset only (fashion-mnist)" in table.caption
    assert table.rows[table.emphasis[0]][:3] == ["mean (scored datasets)", "", "72.14"]
    rc, out, err = run_main("compare", pipe)
    assert rc == 0, err
    assert "Not scored: digits" in " ".join(out.split())
    del test["not_scored"], unknown["not_scored"]  # every dataset scored: the table as before
    (pipe / "summary.json").write_text(json.dumps({"stages": {}, "metrics": {"test": test, "test_unknown": unknown}}))
    table = T.test_table(expand_runs([pipe])[0])
    assert "Not scored" not in table.caption and table.rows[table.emphasis[0]][0] == "mean"


def test_the_overview_says_its_means_average_different_datasets(tmp_path):
    """tr7 (digits + fashion-mnist) and trD (digits) showed "mean acc@1 known 73.21" next to "33.33": only the
    page's bar chart said the datasets differ; the overview table and the whole of `compare` did not."""
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    both = _finetuned(tmp_path / "tr7", {"digits": 90.0, "fashion-mnist": 56.42})
    one = _finetuned(tmp_path / "trD", {"digits": 33.33})
    caption = T.overview_table(expand_runs([both, one]), {}).caption
    assert "The runs were scored on different datasets (all on digits; besides those, tr7: fashion-mnist; trD: " \
           "none)" in caption
    rc, out, err = run_main("compare", both, one)
    assert rc == 0, err
    assert "scored on different datasets" in " ".join(out.split())
    same = _finetuned(tmp_path / "tr7b", {"digits": 80.0, "fashion-mnist": 50.0})
    assert "different datasets" not in T.overview_table(expand_runs([both, same]), {}).caption


def test_self_training_says_which_kept_labels_came_from_images_of_unknown_source():
    """"digits 49 (of 80)" counted 11 labels kept from the 41 pool images of unknown source in kept but not in "of"
    (a small own pool showed more kept than labelled); `fewshot run`'s line says them apart."""
    from fewshot.report import tables as T
    from fewshot.report.pipeline_runs import self_training_rounds

    def labels(foreign: int, unknown_pool: int) -> dict:
        digits = {"kept": 49, "kept_from_unknown_source": foreign, "pool": 80, "labelled": 80,
                  "mean_confidence": 0.8533}
        return {"pool_size": 160 + unknown_pool, "pool_labelled": 160 + unknown_pool, "threshold": 0.0,
                "precision": 0.0, "unknown_source_pool": unknown_pool, "datasets": {"digits": digits}}

    stages = {"finetune_labelled": {"val_mean_acc1": 80.0},
              "finetune": {"val_mean_acc1": 85.0, "pseudo_labels": labels(11, 41)}}
    cell = T.self_training_table("runU", self_training_rounds(stages)).rows[1][3]
    assert cell == "digits 49 (11 of them from the 41 of unknown source) of 80 (mean confidence 0.85)", cell
    stages["finetune"]["pseudo_labels"] = labels(0, 0)  # none of unknown source: as before
    cell = T.self_training_table("runU", self_training_rounds(stages)).rows[1][3]
    assert cell == "digits 49 (of 80; mean confidence 0.85)", cell


def _moco_rows() -> list[dict]:
    """kNN evaluations of a MoCo run: the best at epoch 2 (best.pt), the last at epoch 3 (last.pt)."""
    return [{"epoch": e, "step": e, "loss": 5.0, "contrast_acc1": 1.0, "score": s,
             "knn_acc1": {"digits": s, "mean": s}} for e, s in ((1, 50.0), (2, 76.79), (3, 73.21))]


def test_a_run_pretrain_stage_headlines_the_last_pt_it_fine_tuned_from(tmp_path):
    """`fewshot run --pretrain` fine-tunes from last.pt (its metrics.json and summary.json: 73.21, epoch 3); the
    overview's kNN mean and the kNN table gave best.pt's 76.79 (epoch 2), a checkpoint the run never used."""
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    pipe = tmp_path / "runP"
    stage = _write_log(pipe / "pretrain", _moco_rows())
    knn = {**_scores({"digits": 73.21}), "split": "val", "checkpoint": "last.pt", "epoch": 3}
    (stage / "metrics.json").write_text(json.dumps(knn))
    (pipe / "summary.json").write_text(json.dumps({"stages": {"pretrain": {"epochs": 3}}}))
    run = expand_runs([pipe])[0]
    table = T.knn_table(run)
    assert table.title.endswith("(epoch 3, last.pt)") and table.rows[-1] == ["mean", "73.21"]
    assert "The best kNN score is epoch 2's (best.pt, kNN mean 76.79)." in table.caption
    overview = T.overview_table([run], {})
    assert overview.rows[0][overview.columns.index("kNN mean acc@1")] == "73.21"
    assert "last.pt's epoch" in overview.caption


def test_a_pretrain_alone_still_headlines_best_pt(tmp_path):
    """`fewshot pretrain` scores best.pt in its metrics.json (and says so): the report keeps showing it."""
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    run = _write_log(tmp_path / "pt", _moco_rows())
    knn = {**_scores({"digits": 76.79}), "split": "val", "checkpoint": "best.pt", "epoch": 2, "best_epoch": 2}
    (run / "metrics.json").write_text(json.dumps(knn))
    table = T.knn_table(expand_runs([run])[0])
    assert table.title.endswith("(epoch 2, best.pt)") and table.rows[-1] == ["mean", "76.79"]
    assert "`fewshot export` writes last.pt, epoch 3, kNN mean 73.21" in table.caption
