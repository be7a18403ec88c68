"""The call sites of the unknown-source fixes (rev90 1-3): `fewshot run` with train.eval_mode=unknown judges chance
on the known-source val scores that pred_all.json matches, `fewshot predict --mode unknown` names its routing file and
the images written as -1, and the edges of labelled_passes and known_source_val. The helpers' own tests passed with
the run's call site put back to the unknown-source scores and with predict's new lines removed."""

from __future__ import annotations

import json

import pytest

from fewshot.pipeline import known_source_val
from fewshot.run_words import labelled_passes
from helpers.checks import run_main
from test_run_chance_warning import _dataset


@pytest.fixture(scope="module")
def unknown_run(tmp_path_factory):
    """A tiny unknown-mode run on two datasets of the same identical images: each is at chance on known-source val,
    and every image is routed to one dataset, so the other one scores 0 unknown-source."""
    root = tmp_path_factory.mktemp("unknown") / "root"
    _dataset(root, "same", 5)
    _dataset(root, "twin", 5)
    out = root.parent / "run"
    rc, stdout, err = run_main("run", "--data", root, "--out", out, "--budget-minutes", "0.03", "--model",
                               "test_resnet", "--img-size", "16", "--device", "cpu", "--no-progress",
                               "run.report=false", "run.semi_method=off", "train.batch_size=16",
                               "train.eval_mode=unknown")
    assert rc == 0, err
    return root, out, stdout


def test_an_unknown_mode_run_warns_on_known_source_val_not_on_routing(unknown_run):
    _, run, stdout = unknown_run
    known = json.loads((run / "finetune" / "metrics_known.json").read_text())["datasets"]
    unknown = json.loads((run / "finetune" / "metrics.json").read_text())
    assert unknown["mode"] == "unknown"
    # one dataset lost its images to the other: its unknown-source score is not its known-source one
    assert any(unknown["datasets"][d]["acc1"] != known[d]["acc1"] for d in ("same", "twin")), (unknown, known)
    warned = [line for line in stdout.splitlines() if "little better than guessing" in line]
    assert len(warned) == 1, stdout
    for d in ("same", "twin"):
        assert f"{d}: val acc@1 {known[d]['acc1']:.2f}, not clearly above" in warned[0], warned[0]


def test_predict_unknown_names_the_routing_file_and_each_datasets_minus_one_count(unknown_run, tmp_path):
    root, run, _ = unknown_run
    pred_file = tmp_path / "p.json"
    rc, out, err = run_main("predict", run, "--data", root, "--out", pred_file, "--mode", "unknown",
                            "--device", "cpu")
    assert rc == 0, err
    routing_file = tmp_path / "p.routing.json"
    assert f"wrote {routing_file}: each test image's predicted dataset" in out, out
    routing = json.loads(routing_file.read_text())
    pred = json.loads(pred_file.read_text())
    away = {d: sum(to != d for to in routing[d].values()) for d in ("same", "twin")}
    assert sorted(away.values()) == [0, 15], routing  # identical images: all go to one dataset
    lost = next(d for d, k in away.items() if k)
    assert sum(v == -1 for v in pred[lost].values()) == 15
    said = out.split("routed to other datasets (written as -1, never a correct class): ")[1].splitlines()[0]
    assert said == f"{lost} 15 of 15", out  # the dataset whose images all stayed is not named


def test_labelled_passes_stops_at_a_middle_round_that_predicts():
    """The val guard picked round 2 of 3: round 3 and finetune trained after it and are not in its history."""
    stages = {"finetune_labelled": {"epochs": 3.5}, "finetune_round2": {"epochs": 2.0, "pseudo_labels": {}},
              "finetune_round3": {"epochs": 4.0, "pseudo_labels": {}},
              "finetune": {"epochs": 0.67, "pseudo_labels": {"kept": 22}}}
    assert labelled_passes(stages, "finetune_round2", 3) == (3.5 + 2.0 * 3, ["finetune_labelled", "finetune_round2"])
    assert labelled_passes(stages, "finetune", 3) == (3.5 + 6.0 + 12.0 + 0.67 * 3, [
        "finetune_labelled", "finetune_round2", "finetune_round3", "finetune"])


def test_known_source_val_reads_only_a_known_mode_metrics_known_file(tmp_path):
    unknown = {"mode": "unknown", "mean_acc1": 12.0, "datasets": {"five": {"acc1": 12.0, "n": 50}}}
    (tmp_path / "metrics_known.json").write_text(json.dumps({**unknown, "mean_acc1": 86.0}))
    assert known_source_val(tmp_path, unknown) == {}  # not known-source scores: nothing to compare
    known = {"mode": "known", "mean_acc1": 86.0, "datasets": {"five": {"acc1": 86.0, "n": 50}}}
    (tmp_path / "metrics_known.json").write_text(json.dumps(known))
    assert known_source_val(tmp_path, unknown) == known
