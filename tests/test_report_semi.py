"""What `fewshot report` says about a fine-tuning run with the joint MoCo + supervised loss (semi.method=moco): the
fact line with its settings, the InfoNCE loss and contrastive accuracy curves beside the training loss, and a label
for that loss which says it is the labelled loss plus weight x InfoNCE. On a tiny real `fewshot train` run."""

from __future__ import annotations

import html
import json
import math
import re
import shutil

import pytest

from helpers.checks import run_main
from helpers.tiny import build_digits


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory):
    root = build_digits(tmp_path_factory.mktemp("data"))  # 40 train images, a pool of 80
    run = tmp_path_factory.mktemp("runs") / "moco"
    rc, _, err = run_main("train", "--data", root, "--out", run, "--model", "test_resnet", "--img-size", "32",
                          "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--no-progress",
                          "train.tensorboard=false", "train.threads=1", "semi.method=moco", "semi.mu=1")
    assert rc == 0, err
    return run


def _facts(index_text: str) -> dict[str, str]:
    """The report's fact list (<dt>key</dt><dd>value</dd>) as plain text."""
    return {html.unescape(k): html.unescape(v)
            for k, v in re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", index_text, flags=re.S)}


def test_the_report_of_a_joint_moco_run_names_its_settings_and_draws_its_curves(moco_run, tmp_path, monkeypatch):
    from fewshot.report import plots

    figures = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: (figures.__setitem__(out.name, fig), save(fig, out))[1])
    out = tmp_path / "report"
    rc, _, err = run_main("report", moco_run, "--out", out, "--device", "cpu", "--grid", "0")
    assert rc == 0, err
    text = (out / "index.html").read_text()
    fact = _facts(text)["semi-supervised"]
    assert fact.startswith("joint MoCo loss on an unlabeled pool of 80 images (")
    assert "weight 1 x InfoNCE on mu 1 x batch size pool images to the labelled loss" in fact
    assert "key-encoder momentum 0.99, temperature 0.2, a queue of 40 keys" in fact
    assert "key batches shuffled across 4 BatchNorm groups" in fact  # 8 keys: 4 groups of 2
    assert "the training loss is the labelled loss plus semi.weight times the InfoNCE loss" in html.unescape(text)

    curves = next(name for name in figures if name.endswith("-curves.png"))
    assert f'<img src="{curves}"' in text and (out / curves).stat().st_size > 0
    axes = figures[curves].axes
    loss_lines = {line.get_label(): line for line in axes[0].get_lines()}
    acc_lines = {line.get_label(): line for line in axes[2].get_lines()}
    assert "train loss (labelled + weight x InfoNCE)" in loss_lines and "train loss" not in loss_lines
    rows = [json.loads(line) for line in (moco_run / "log.jsonl").read_text().splitlines()]
    for lines, label, key in ((loss_lines, "InfoNCE loss (joint MoCo)", "moco_loss"),
                              (acc_lines, "contrastive acc@1 (joint MoCo)", "moco_acc1")):
        drawn = list(lines[label].get_ydata())  # two epochs: too few to smooth, the raw values drawn as they are
        assert len(drawn) == len(rows) == 2 and all(math.isfinite(v) for v in drawn)
        assert drawn == pytest.approx([r[key] for r in rows])
    assert axes[2].get_title() == "train acc@1 and contrastive acc@1 (%)"


def test_the_fact_of_a_joint_moco_run_written_before_metrics_recorded_it_falls_back_to_its_config(moco_run,
                                                                                                  tmp_path):
    from fewshot.report.runs import load_run
    from fewshot.report.semi_facts import moco_fact

    old = tmp_path / "old"
    shutil.copytree(moco_run, old)
    metrics = json.loads((old / "metrics.json").read_text())
    del metrics["semi"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    fact = moco_fact(load_run(old, "old"))
    assert fact.startswith("joint MoCo loss on an unlabeled pool (its size not recorded): each step adds weight 1 x ")
    assert "momentum 0.99, temperature 0.2, queue size not recorded, shuffle-BN groups not recorded" in fact
