"""Per-dataset keys of eval, predict and run follow the dataset folder's name under the root now, as pred_all.json
does: a model whose dataset name differs from the folder's only in Unicode form (NFC vs NFD, `café`) wrote its own
form into metrics.json and summary.json beside a pred_all.json keyed by the folder's."""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import pytest
import torch

from fewshot.eval import predict
from helpers.checks import run_main, train_tiny
from helpers.tiny import build_cafe_root

NFD, NFC = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """ROOT/{café (decomposed, as macOS writes it), x}: two copies of a tiny digits dataset."""
    return build_cafe_root(tmp_path_factory.mktemp("keys") / "root", ("x",))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    return train_tiny(data, tmp_path_factory.mktemp("keys-run") / "run", epochs=1)


@pytest.fixture()
def composed(data, tmp_path) -> Path:
    """The same data with the café folder renamed to the composed form (a copy to Linux, say)."""
    root = Path(shutil.copytree(data, tmp_path / "root", ignore=shutil.ignore_patterns(".fewshot_cache")))
    (root / NFD).rename(root / NFC)
    return root


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_out_keys_datasets_by_their_folder_now(run, composed, tmp_path, split):
    out = tmp_path / "m.json"
    rc, _, err = run_main("eval", run, "--data", composed, "--split", split, "--out", out, "--no-progress")
    assert rc == 0, err
    assert set(json.loads(out.read_text())["datasets"]) == {NFC, "x"}


def test_predict_and_score_keys_scores_and_balancing_as_pred_all(run, composed):
    balanced: dict = {}
    pred, routing, scores = predict.predict_and_score(run, composed, torch.device("cpu"), balance="on",
                                                      balanced=balanced)
    assert set(pred) - {"n_parameters"} == set(routing) == {NFC, "x"}
    for mode in ("known", "unknown"):
        assert set(scores[mode]["datasets"]) == {NFC, "x"}, scores[mode]
    assert set(balanced) == {NFC, "x"}


def test_folder_keyed_names_the_unscored_datasets_by_folder_too():
    infos = [type("Info", (), {"name": NFD, "root": Path("/r") / NFC})()]
    metrics = {"mode": "known", "datasets": {NFD: {"acc1": 1.0}}, "not_scored": [NFD, "y"], "mean_acc1": 1.0}
    keyed = predict.folder_keyed(metrics, infos)
    assert keyed["datasets"] == {NFC: {"acc1": 1.0}} and keyed["not_scored"] == [NFC, "y"]
    assert metrics["datasets"] == {NFD: {"acc1": 1.0}}  # the caller's dict is left as it was


def test_run_keys_metrics_and_summary_by_the_folder(data, tmp_path):
    """`--datasets café` typed composed for a decomposed folder: the model holds the typed form, pred_all.json the
    folder's; metrics.json and summary.json (val and test scores, balancing) now hold the folder's too."""
    out = tmp_path / "r"
    rc, _, err = run_main("run", "--data", data, "--out", out, "--datasets", f"{NFC},x", "--budget-minutes", "0.03",
                          "--model", "test_resnet", "--img-size", "32", "--device", "cpu", "--no-progress",
                          "--baseline", "run.report=false", "train.batch_size=16", "run.balance=on")
    assert rc == 0, err
    names = set(json.loads((out / "pred_all.json").read_text())) - {"n_parameters"}
    assert names == {NFD, "x"}
    assert set(json.loads((out / "metrics.json").read_text())["datasets"]) == names
    summary = json.loads((out / "summary.json").read_text())
    for part in ("val", "test", "test_unknown", "pred_all_score"):
        got = summary["metrics"][part]
        assert set(got.get("datasets", got)) == names, (part, got)
    assert set(summary["balanced_prediction"]["datasets"]) == names


def test_two_model_names_for_one_folder_keep_every_result(capsys, monkeypatch):
    """A model trained on twins (`café` composed and decomposed, before such twins were refused) on a root that now
    holds one of them: its decomposed name maps to the composed folder, which is also the other's own name, and
    the dict kept one score of the two without a word. Both now keep the model's names, said once."""
    monkeypatch.setattr("fewshot.data.warn_once._TOLD_GAPS", set())
    infos = [type("Info", (), {"name": NFD, "root": Path("/r") / NFC})()]
    metrics = {"mode": "known", "datasets": {NFD: {"acc1": 1.0}, NFC: {"acc1": 2.0}, "x": {"acc1": 3.0}},
               "not_scored": [NFC, NFD]}
    keyed = predict.folder_keyed(metrics, infos)
    assert keyed["datasets"] == {NFD: {"acc1": 1.0}, NFC: {"acc1": 2.0}, "x": {"acc1": 3.0}}
    assert keyed["not_scored"] == [NFC, NFD]
    err = capsys.readouterr().err
    assert err.count("note: the model's datasets") == 1 and "keep the model's names" in err, err
    assert predict.by_folder({NFD: 1, "x": 2}, infos) == {NFC: 1, "x": 2}  # no clash: keyed by the folder


def test_a_clash_freed_name_may_not_take_another_folder_key():
    """Giving a name back its own may clash with a third's folder key: that one keeps its own name too."""
    a, b, c = "a", "b", "c"
    infos = [type("Info", (), {"name": n, "root": Path("/r") / f})() for n, f in ((a, "k"), (b, "k2"), (c, "a"))]
    # a -> k, b -> k2 (no clash), c -> a; a second name "k" clashes with a, which then clashes with c
    keyed = predict.by_folder({a: 1, "k": 2, c: 3, b: 4}, infos)
    assert sorted(keyed.values()) == [1, 2, 3, 4] and keyed == {a: 1, "k": 2, c: 3, "k2": 4}
