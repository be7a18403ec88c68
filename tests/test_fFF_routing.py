"""Unknown-source routing and the near-chance advice (hunt hBS): per-dataset routing beside the pooled figure, where
each poorly routed dataset's images went (eval, report), predict's count of images written as -1, the near-chance
check on the known-source val scores pred_all.json matches, and the labelled passes over all the rounds a model
continued."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from fewshot.data.label_space import LabelSpace
from fewshot.eval.evaluate import format_table, score
from fewshot.pipeline import PipelineRun

SPACE = LabelSpace(("big", "small", "other"), (("a", "b"), ("a", "b"), ("x", "y")))


def _unknown_metrics() -> dict:
    """big: 8 images, all routed to itself; small: 4 images, 3 routed to big and 1 to other; other: 2, both right."""
    ids = torch.tensor([0] * 8 + [1] * 4 + [2] * 2)
    routed = [0] * 8 + [0, 0, 0, 2] + [2, 2]
    logits = torch.full((14, 6), -5.0)
    for row, d in enumerate(routed):
        logits[row, 2 * d] = 5.0  # class a (or x) of the dataset routed to
    targets = torch.zeros(14, dtype=torch.long)
    return score(logits, targets, ids, SPACE, "unknown")


def test_unknown_mode_scores_each_datasets_routing_and_says_where_its_images_went():
    m = _unknown_metrics()
    assert m["routing_acc"] == 100.0 * 10 / 14  # pooled over images, as before
    assert m["datasets"]["small"]["routing_acc"] == 0.0
    assert m["datasets"]["small"]["routed_to_others"] == {"big": 3, "other": 1}
    assert m["datasets"]["big"]["routing_acc"] == 100.0 and "routed_to_others" not in m["datasets"]["big"]
    assert m["mean_routing_acc"] == 200.0 / 3  # each dataset once
    table = format_table(m, title="test")
    assert "routed to itself" in table.splitlines()[1]
    assert "71.43 % of all images (66.67 mean over datasets)" in table
    assert "small: 0 % routed to itself; 3 to big, 1 to other" in table
    assert "big:" not in table.split("of the time:")[1]  # routed well: not listed
    known = score(torch.zeros(14, 6), torch.zeros(14, dtype=torch.long), torch.tensor([0] * 8 + [1] * 4 + [2] * 2),
                  SPACE, "known")
    assert "routing_acc" not in known["datasets"]["big"] and "routed to itself" not in format_table(known)


def test_the_report_shows_per_dataset_routing_and_reads_older_metrics_without_it():
    from fewshot.report.run_record import Run
    from fewshot.report.tables import dataset_table

    new = _unknown_metrics()
    old = {"mode": "unknown", "mean_acc1": 50.0, "routing_acc": 60.0,
           "datasets": {"big": {"acc1": 60.0, "acc5": 90.0, "n": 8}, "small": {"acc1": 40.0, "acc5": 80.0, "n": 4}}}
    tables = [dataset_table(Run(path=Path(n), label=n, kind="supervised", config={}, log=[], metrics_known=m,
                                metrics_unknown=m)) for n, m in (("new", new), ("old", old))]
    t = tables[0]
    col = t.columns.index("unknown: routed to itself")
    rows = {row[0]: row for row in t.rows}
    assert rows["small"][col] == "0.00" and rows["mean"][col] == "66.67"
    assert rows["dataset routing (% of all images)"][4] == "71.43"
    assert "small: 0 % routed to itself; 3 to big, 1 to other" in t.caption
    rows = {row[0]: row for row in tables[1].rows}  # no per-dataset routing recorded: no column, no summary
    assert "unknown: routed to itself" not in tables[1].columns and "routed to itself" not in tables[1].caption
    assert rows["dataset routing (% of all images)"] == ["dataset routing (% of all images)", "", "", "", "60.00", ""]


def test_predict_names_the_routing_file_and_the_images_written_as_minus_one(capsys, tmp_path):
    from fewshot.cli import _say_routing

    routing = {"big": {"0": "big", "1": "big"}, "small": {"0": "big", "1": "other", "2": "small"},
               "other": {"0": "small"}}
    _say_routing(routing, tmp_path / "p.routing.json")
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'p.routing.json'}" in out
    assert "routed to other datasets (written as -1" in out and "small 2 of 3, other 1 of 1" in out
    assert "big" not in out.split("class):")[1]  # none of its images went elsewhere: not named
    _say_routing({"big": {"0": "big"}}, None)  # all routed home, and no file (a stream --out): nothing to say
    assert capsys.readouterr().out == ""


def _info(classes: int, val_per_class: int = 10):
    return SimpleNamespace(classes=tuple(f"c{c}" for c in range(classes)),
                           val=tuple((Path(f"{c}_{i}.png"), c) for c in range(classes) for i in range(val_per_class)))


def _run(fdir: Path, stages: dict, repeat: int = 3) -> SimpleNamespace:
    return SimpleNamespace(summary={"stages": stages}, fdir=fdir, cfg={"model": {"weights": None},
                                                                      "run": {"pseudo_labelled_repeat": repeat}})


def test_the_near_chance_check_uses_known_source_val_scores(tmp_path):
    """train.eval_mode=unknown: metrics.json's val scores are unknown-source (an image routed elsewhere is wrong),
    12 % on 5 classes; the known-source scores that pred_all.json matches are 86 %: no warning."""
    from fewshot.pipeline import known_source_val

    fdir = tmp_path / "finetune"
    fdir.mkdir()
    unknown = {"mode": "unknown", "mean_acc1": 12.0, "datasets": {"five": {"acc1": 12.0, "n": 50}}}
    (fdir / "metrics_known.json").write_text(json.dumps({"mode": "known", "mean_acc1": 86.0,
                                                         "datasets": {"five": {"acc1": 86.0, "n": 50}}}))
    pred = {"n_parameters": 5, "five": {str(i): i % 5 for i in range(50)}}
    run = _run(fdir, {"finetune": {"epochs": 3.0}})
    PipelineRun.note_near_chance(run, pred, known_source_val(fdir, unknown), {"five": _info(5)})
    assert "near_chance" not in run.summary
    (fdir / "metrics_known.json").unlink()  # only unknown-source scores: not compared with 1/classes at all
    assert known_source_val(fdir, unknown) == {}
    PipelineRun.note_near_chance(run, pred, known_source_val(fdir, unknown), {"five": _info(5)})
    assert "near_chance" not in run.summary
    known = {"mode": "known", "mean_acc1": 12.0, "datasets": {"five": {"acc1": 12.0, "n": 50}}}
    PipelineRun.note_near_chance(run, pred, known_source_val(fdir, known), {"five": _info(5)})
    assert list(run.summary["near_chance"]["datasets"]) == ["five"]  # known-source and at chance: still warned


def test_the_advice_counts_the_labelled_passes_over_every_round_the_model_continued(tmp_path):
    """finetune_labelled 3.5 epochs, then finetune 0.67 epochs of the labelled images x3 plus pseudo-labels: the
    model saw the labelled images about 5.5 times, not 0.7."""
    from fewshot.run_words import labelled_passes

    stages = {"finetune_labelled": {"epochs": 3.5}, "finetune": {"epochs": 0.67, "pseudo_labels": {"kept": 22}}}
    pred = {"n_parameters": 5, "ten": {str(i): 0 for i in range(50)}}
    val = {"mode": "known", "datasets": {"ten": {"acc1": 10.0, "n": 100}}}
    run = _run(tmp_path / "finetune", stages)
    PipelineRun.note_near_chance(run, pred, val, {"ten": _info(10)})
    why = run.summary["near_chance"]["why"]
    assert "Over finetune_labelled and finetune it trained on the labelled images about 5.5 times in this budget" \
        in why and "0.7 epochs" not in why, why
    three = {**stages, "finetune_round2": {"epochs": 2.0, "pseudo_labels": {}}}
    assert labelled_passes(three, "finetune", 3) == (3.5 + 6.0 + 0.67 * 3, ["finetune_labelled", "finetune_round2",
                                                                            "finetune"])
    assert labelled_passes(three, "finetune_round2", 3)[1] == ["finetune_labelled", "finetune_round2"]
    # a labelled-only last round (no pseudo_labels): its epochs are passes over the labelled images
    assert labelled_passes({"finetune_labelled": {"epochs": 2.0}, "finetune": {"epochs": 1.0}}, "finetune", 3)[0] == 3
    assert labelled_passes({"finetune": {"epochs": 13.0}}, "finetune", 3) == (13.0, ["finetune"])
