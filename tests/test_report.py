"""`fewshot report` / `fewshot compare` on small REAL runs, and plain-line progress output.

One fine-tuning run (2 epochs) and one MoCo run (1 epoch) of timm's `test_resnet` at 32 px are
trained once on a tiny sklearn-digits root through `fewshot.cli.main`, then reported. The page
must parse, every <img> must be a real PNG beside it, and the numbers must be the runs' own.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fewshot import progress
from helpers.tiny import build_digits
from helpers.checks import run_main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMMON = ["--model", "test_resnet", "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--no-progress",
          "train.tensorboard=false", "train.threads=1"]


class PageParser(HTMLParser):
    """Collects <img src>, every <a href>/<link href>/<script>, and the text of table cells."""

    def __init__(self):
        super().__init__()
        self.images, self.links, self.scripts, self.cells = [], [], 0, []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src"))
        elif tag in ("a", "link"):
            self.links.append(a.get("href"))
        elif tag == "script":
            self.scripts += 1
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(html_text: str) -> PageParser:
    p = PageParser()
    p.feed(html_text)
    p.close()
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    root = build_digits(base / "root")
    ft, moco = base / "ft", base / "moco"
    rc, _, err = run_main("train", "--data", root, "--out", ft, "--epochs", "2", "train.eval_every=1", *COMMON)
    assert rc == 0, err
    rc, _, err = run_main("pretrain", "--data", root, "--out", moco, "--epochs", "1", "--queue-size", "32",
                          "moco.split_bn_groups=2", "moco.knn_k=5", *COMMON)
    assert rc == 0, err
    return {"root": root, "ft": ft, "moco": moco, "base": base}


@pytest.fixture(scope="module")
def report(runs):
    out = runs["base"] / "report"
    # No --data: the image-based parts must find the root through the run's config.yaml.
    rc, stdout, err = run_main("report", runs["ft"], runs["moco"], "--out", out, "--device", "cpu")
    assert rc == 0, err
    index = out / "index.html"
    assert str(index) in stdout
    return index


def knn_at_best(moco: Path) -> dict:
    rows = [json.loads(line) for line in (moco / "log.jsonl").read_text().splitlines() if line.strip()]
    best = max(reversed([r for r in rows if "knn_acc1" in r]), key=lambda r: r["score"])  # the last of equals
    return best["knn_acc1"]


def expected_numbers(runs) -> list[str]:
    """Numbers the table must show, formatted as the table formats them (2 decimals)."""
    metrics = json.loads((runs["ft"] / "metrics.json").read_text())
    unknown = json.loads((runs["ft"] / "metrics_unknown.json").read_text())
    want = [f"{metrics['mean_acc1']:.2f}", f"{unknown['mean_acc1']:.2f}", f"{metrics['n_parameters']:,}"]
    if len(unknown["datasets"]) > 1:  # one dataset: every image is routed right, and no routing is shown
        want.append(f"{unknown['routing_acc']:.2f}")
    for d in metrics["datasets"].values():
        want += [f"{d['acc1']:.2f}", f"{d['acc5']:.2f}", str(d["n"])]
    want += [f"{v:.2f}" for v in knn_at_best(runs["moco"]).values()]
    return want


# ---------------------------------------------------------------------- the page

def test_report_page_parses_and_every_image_is_a_png(report):
    page = parse(report.read_text(encoding="utf-8"))
    assert page.scripts == 0
    assert len(page.images) >= 6  # bars, 2 x curves, confusion, embedding, prediction grid
    for src in page.images:
        assert src and not src.startswith(("http:", "https:", "/", "data:")), src
        path = report.parent / src
        assert path.is_file(), src
        assert path.read_bytes()[:8] == PNG_SIGNATURE, src
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    for href in page.links:
        assert href and href.startswith("#"), href  # in-page links only: nothing fetched


def test_report_has_every_part(report, runs):
    text = report.read_text(encoding="utf-8")
    names = {Path(p).name for p in parse(text).images}
    assert "accuracy_bars.png" in names
    assert {"ft-curves.png", "moco-curves.png", "ft-embedding.png", "ft-predictions.png"} <= names
    assert any(n.startswith("ft-confusion-") for n in names)
    assert not any(n.startswith("moco-") and "curves" not in n for n in names)  # MoCo: curves + kNN table only
    assert "kNN accuracy" in text and "Confusion matrices" in text and "PCA" in text


def test_report_numbers_equal_the_runs_metrics(report, runs):
    cells = parse(report.read_text(encoding="utf-8")).cells
    for value in expected_numbers(runs):
        assert value in cells, value
    metrics = json.loads((runs["ft"] / "metrics.json").read_text())
    assert str(metrics["best_epoch"]) in cells
    log = [json.loads(line) for line in (runs["ft"] / "log.jsonl").read_text().splitlines()]
    train_s = sum(r["epoch_time_s"] for r in log)
    assert f"{train_s:.1f} s" in cells


def test_report_without_data_skips_image_parts_with_a_note(runs, tmp_path):
    run = tmp_path / "moved"
    shutil.copytree(runs["ft"], run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["root"] = str(tmp_path / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rc, _, err = run_main("report", run, "--out", tmp_path / "r", "--device", "cpu")
    assert rc == 0, err
    text = (tmp_path / "r" / "index.html").read_text()
    assert "does not exist here; pass --data ROOT" in text
    assert not list((tmp_path / "r").glob("*confusion*"))
    for src in parse(text).images:
        assert (tmp_path / "r" / src).is_file()
    # --data brings them back
    rc, _, err = run_main("report", run, "--out", tmp_path / "r2", "--device", "cpu", "--data", runs["root"],
                          "--grid", "8")
    assert rc == 0, err
    assert list((tmp_path / "r2").glob("*confusion*")) and list((tmp_path / "r2").glob("*predictions.png"))


def test_pipeline_folder_expands_into_its_stages(runs, tmp_path):
    from fewshot.report.runs import expand_runs

    pipe = tmp_path / "demo"
    shutil.copytree(runs["moco"], pipe / "pretrain")
    shutil.copytree(runs["ft"], pipe / "finetune")
    (pipe / "summary.json").write_text(json.dumps({"stages": {}, "metrics": {}}))
    found = expand_runs([pipe])
    assert [(r.label, r.kind) for r in found] == [("demo/pretrain", "moco"), ("demo/finetune", "supervised")]
    rc, out, err = run_main("compare", pipe)
    assert rc == 0, err
    assert "demo/pretrain" in out and "demo/finetune" in out


def test_report_user_errors(tmp_path):
    rc, _, err = run_main("report", tmp_path / "nothing", "--out", tmp_path / "r")
    assert rc == 2 and "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    rc, _, err = run_main("compare", tmp_path / "empty")
    assert rc == 2 and "holds no run" in err


# ---------------------------------------------------------------------- compare

def test_compare_prints_the_same_numbers(report, runs):
    rc, out, err = run_main("compare", runs["ft"], runs["moco"])
    assert rc == 0, err
    for value in expected_numbers(runs):
        assert value in out, value
    assert "…" not in out  # nothing cropped


def test_compare_without_rich_prints_plain_text(runs, monkeypatch):
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rich", None)  # `import rich` now raises ImportError
    rc, out, err = run_main("compare", runs["ft"], runs["moco"])
    assert rc == 0, err
    for value in expected_numbers(runs):
        assert value in out, value
    assert "----" in out


# ---------------------------------------------------------------------- pieces

def test_ema_smoothing_is_debiased_and_skips_gaps():
    from fewshot.report.figure import ema_smooth, smoothing_weight

    assert ema_smooth([5.0, 5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0, 5.0])
    out = ema_smooth([1.0, None, 3.0], 0.5)
    assert out[0] == pytest.approx(1.0) and out[1] is None and out[2] == pytest.approx((0.25 + 1.5) / 0.75)
    assert smoothing_weight(3) == 0.0 and 0.0 < smoothing_weight(20) <= 0.9


def test_many_classes_list_the_top_confused_pairs(tmp_path):
    from fewshot.report.analysis import top_confusions
    from fewshot.report.plots import plot_confusion

    n = 25
    cm = np.eye(n, dtype=np.int64) * 3
    cm[4, 7] = 5
    cm[1, 2] = 2
    classes = [f"class {i}" for i in range(n)]
    pairs = top_confusions(cm, classes, k=10)
    assert pairs[0][:3] == ("class 4", "class 7", 5) and pairs[1][:3] == ("class 1", "class 2", 2)
    assert len(pairs) == 2
    png = plot_confusion(cm, classes, "big", tmp_path / "cm.png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE


# ---------------------------------------------------------------------- progress

class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def progress_on():
    was = progress.is_enabled()
    progress.set_enabled(True)
    yield
    progress.set_enabled(was)


def test_progress_prints_plain_lines_when_not_a_tty(progress_on):
    err = io.StringIO()  # isatty() is False
    with contextlib.redirect_stderr(err):
        bar = progress.track(range(100), desc="epoch 1/3", total=100)
        assert isinstance(bar, progress.PlainProgress)
        for _ in bar:
            pass
        bar.set_postfix(loss="0.500")
        bar.close()
    text = err.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("epoch 1/3: 100/100 (100%) ") and lines[-1].rstrip().endswith("s")


def test_plain_progress_pacing_and_format():
    clock, out = FakeClock(), io.StringIO()
    bar = progress.PlainProgress(None, desc="desc", total=100, file=out, clock=clock)
    for i in range(100):
        clock.t += 0.5  # 50 s in all: milestones every 10 % (5 s apart) pass the 5 s minimum gap
        bar.update(1)
        if i == 38:
            bar.set_postfix(loss="0.812", lr=f"{1e-4:.2e}")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "desc: 40/100 (40%) 20.0 s  loss=0.812 lr=1.00e-04" in lines
    assert lines[-1].startswith("desc: 100/100 (100%) 50.0 s")
    assert 9 <= len(lines) <= 11

    # A slow loop without milestones still reports every ~15 s; a fast one only at the end.
    clock, out = FakeClock(), io.StringIO()
    bar = progress.PlainProgress(None, desc="slow", total=None, file=out, clock=clock)
    for _ in range(10):
        clock.t += 4.0
        bar.update(1)
    bar.close()
    assert out.getvalue().splitlines()[0] == "slow: 4 16.0 s"
    clock, out = FakeClock(), io.StringIO()
    bar = progress.PlainProgress(range(1000), desc="fast", file=out, clock=clock)
    assert sum(1 for _ in bar) == 1000
    assert out.getvalue() == "fast: 1000/1000 (100%) 0.0 s\n"


def test_progress_disabled_prints_nothing_and_tty_keeps_tqdm(monkeypatch):
    was = progress.is_enabled()
    try:
        progress.set_enabled(False)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert list(progress.track(range(5), desc="x")) == list(range(5))
        assert err.getvalue() == ""
        progress.set_enabled(True)

        class Tty(io.StringIO):
            def isatty(self):
                return True

        monkeypatch.setattr(sys, "stderr", Tty())
        bar = progress.track(range(3), desc="tty", total=3)
        from tqdm import tqdm

        assert isinstance(bar, tqdm)
        assert list(bar) == [0, 1, 2]
        bar.set_postfix(loss="1.0")
        bar.close()
    finally:
        progress.set_enabled(was)


def test_pipeline_test_scores_are_shown_under_the_stage_that_predicted_only(tmp_path):
    """summary.json holds the test accuracy of the stage that wrote pred_all.json; it was printed under every
    fine-tuning stage, so round 1 and round 2 looked identical on test."""
    from fewshot.report.run_record import Run
    from fewshot.report.tables import test_table

    test = {"mean_acc1": 80.0, "datasets": {"digits": {"acc1": 80.0, "acc5": 99.0, "n": 30}}}
    summary = {"metrics": {"test": test}, "predicted_with": "finetune"}
    rounds = {name: Run(path=tmp_path / name, label=name, kind="supervised", config={}, log=[], pipeline=summary)
              for name in ("finetune_labelled", "finetune")}
    assert test_table(rounds["finetune_labelled"]) is None
    table = test_table(rounds["finetune"])
    assert table is not None and "test accuracy" in table.title


def test_pipeline_report_draws_image_parts_for_the_stage_that_predicted_only(runs, tmp_path):
    """A `fewshot run` folder's report predicts val and draws confusion matrices, embedding and grid for the
    stage whose model wrote pred_all.json; an earlier round gets curves and tables and a note (half the work
    inside the run's budget)."""
    pipe = tmp_path / "pipe"
    shutil.copytree(runs["ft"], pipe / "finetune_labelled")
    shutil.copytree(runs["ft"], pipe / "finetune")
    (pipe / "summary.json").write_text(json.dumps({"stages": {}, "metrics": {}, "predicted_with": "finetune"}))
    rc, _, err = run_main("report", pipe, "--out", tmp_path / "r", "--device", "cpu", "--data", runs["root"])
    assert rc == 0, err
    names = sorted(p.name for p in (tmp_path / "r").glob("*.png"))
    assert any(n.startswith("pipe-finetune-confusion-") for n in names), names
    assert not any(n.startswith("pipe-finetune_labelled-confusion-") for n in names), names
    assert any(n.startswith("pipe-finetune_labelled-curves") for n in names), names
    assert "drawn for the stage that predicted (finetune)" in (tmp_path / "r" / "index.html").read_text()


def test_pipeline_report_shows_the_self_training_rounds(runs, tmp_path):
    """The report showed nothing of self-training (pool, share labelled, kept per dataset, threshold, the rounds'
    val scores): a table per `fewshot run` folder, from summary.json's stages, one row per round."""
    pipe = tmp_path / "pipe"
    for stage in ("finetune_labelled", "finetune_round2", "finetune"):
        shutil.copytree(runs["ft"], pipe / stage)

    def labels(labelled, kept):
        return {"pool_size": 8000, "pool_labelled": labelled, "threshold": 0.5, "precision": 0.0,
                "datasets": {"digits": {"kept": kept, "pool": 8000, "labelled": labelled}}}
    stages = {"finetune_labelled": {"epochs": 3, "val_mean_acc1": 61.25},
              "finetune_round2": {"epochs": 2, "pseudo_labels": labels(1390, 305), "val_mean_acc1": 63.5},
              "finetune": {"epochs": 1, "pseudo_labels": labels(8000, 2000), "val_mean_acc1": 64.75}}
    (pipe / "summary.json").write_text(json.dumps({"stages": stages, "metrics": {}, "predicted_with": "finetune"}))
    rc, _, err = run_main("report", pipe, "--out", tmp_path / "r", "--device", "cpu", "--grid", "0")
    assert rc == 0, err
    page = (tmp_path / "r" / "index.html").read_text()
    assert page.count("self-training</") == 1  # once for the folder, not per stage
    for cell in ("1,390 / 8,000", "digits 305 (of 1390 / 8000)", "8,000 / 8,000", "digits 2000 (of 8000)", "61.25",
                 "63.50", "64.75", "finetune_round2"):
        assert cell in page, cell
    # a summary.json of an older fewshot: every round's labels in a list under finetune_labelled
    from fewshot.report.pipeline_runs import self_training_rounds

    old = {"finetune_labelled": {"pseudo_labels": [labels(1390, 305), labels(8000, 2000)], "val_mean_acc1": 61.25},
           "finetune": {"val_mean_acc1": 64.75}}
    got = self_training_rounds(old)
    assert [(r["round"], r["stage"]) for r in got] == [(1, "finetune_labelled"), (2, "finetune_round2"),
                                                        (3, "finetune")]
    assert got[0]["pseudo_labels"] is None and got[1]["pseudo_labels"]["pool_labelled"] == 1390
    assert got[2]["pseudo_labels"]["datasets"]["digits"]["kept"] == 2000 and got[2]["val_mean_acc1"] == 64.75
    assert self_training_rounds({"finetune": {"epochs": 2}}) == []  # no self-training, no table


def test_a_run_without_metrics_reports_its_best_evaluation_not_its_last(tmp_path):
    """A stopped run has no metrics.json yet; the tables used the last logged evaluation and called it the
    best epoch, while best.pt (what eval and predict use) holds the best one."""
    from fewshot.report.runs import load_run

    run = tmp_path / "stopped"
    run.mkdir()

    def row(epoch, acc):
        table = {"datasets": {"digits": {"acc1": acc, "acc5": 100.0, "n": 30}}, "mean_acc1": acc, "mode": "known"}
        return {"epoch": epoch, "step": epoch * 5, "loss": 1.0, "score": acc, "val": {"known": table, "unknown": table}}

    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (row(1, 60.0), row(2, 85.0), row(3, 83.0))))
    loaded = load_run(run, "stopped")
    assert loaded.metrics["mean_acc1"] == 85.0
    assert any("epoch 2" in n for n in loaded.notes)


def test_a_run_stopped_before_its_first_evaluation_says_which_checkpoint_predicted(runs, report, tmp_path):
    """Only last.pt exists (a stop before the first evaluation): the page called it the best checkpoint."""
    run = tmp_path / "early"
    shutil.copytree(runs["ft"], run)
    (run / "checkpoints" / "best.pt").unlink()
    rc, _, err = run_main("report", run, "--out", tmp_path / "r", "--device", "cpu", "--grid", "8")
    assert rc == 0, err
    text = (tmp_path / "r" / "index.html").read_text()
    # its log holds evaluations: best.pt was saved and deleted since, and nothing is writing the run
    assert "Predictions of the last checkpoint (best.pt is missing, though log.jsonl holds evaluations)" in text
    assert "stopped before its first evaluation" not in text and "still being written" not in text
    assert "Predictions of the best checkpoint" in report.read_text()  # the `report` fixture's page
    # without evaluations in its log, the run did stop before its first one
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    (run / "log.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k not in ("val", "score")})
                                           + "\n" for r in rows))
    for name in ("metrics.json", "metrics_known.json", "metrics_unknown.json"):
        (run / name).unlink()
    rc, _, err = run_main("report", run, "--out", tmp_path / "r2", "--device", "cpu", "--grid", "8")
    assert rc == 0, err
    text = (tmp_path / "r2" / "index.html").read_text()
    assert "Predictions of the last checkpoint (the run stopped before its first evaluation" in text


def test_predictions_of_last_pt_beside_the_best_epochs_accuracies_say_best_pt_is_missing(runs, tmp_path):
    """best.pt deleted: last.pt (a later epoch) predicted and the page said the run was still being written."""
    from fewshot.report.build import ReportBuilder

    run = tmp_path / "nobest"
    shutil.copytree(runs["ft"], run)
    (run / "checkpoints" / "best.pt").unlink()
    builder = ReportBuilder([run], tmp_path / "r")
    r = builder.runs[0]
    builder._match_checkpoint_epoch(r, r.metrics_epoch + 1, run / "checkpoints" / "last.pt")
    assert any("best.pt is missing" in n for n in r.notes) and not any("still being written" in n for n in r.notes)


def test_names_in_scripts_the_font_lacks_do_not_flood_stderr(tmp_path, monkeypatch, capsys):
    """A Japanese dataset name printed one matplotlib warning per missing glyph on every plot; then nothing at all,
    and the boxes in the figures went unexplained: one note per process names the characters and the remedy."""
    import warnings

    from fewshot.report import figure, plots

    monkeypatch.setattr(figure, "_glyphs_said", set())
    for title in ("データセット", "データ 猫"):
        fig = plots._figure(2, 2)
        fig.add_subplot().set_title(title)  # the figure's default font: DejaVu Sans alone, which has none of them
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = plots._save(fig, tmp_path / "p.png")
        assert out.is_file() and not [w for w in caught if "Glyph" in str(w.message)]
    err = capsys.readouterr().err
    assert err.count("note: no installed font has some characters") == 1, err
    assert "(データセット)" in err and "fonts-noto-cjk" in err and "fontlist-" in err, err
    # any other warning of the drawing still reaches the caller (a review: all were recorded and re-emitted)
    fig = plots._figure(2, 2)
    fig.add_subplot().set_title("猫")
    real = fig.savefig

    def savefig(*args, **kwargs):
        warnings.warn("something else", UserWarning)
        return real(*args, **kwargs)

    fig.savefig = savefig
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots._save(fig, tmp_path / "q.png")
    assert [str(w.message) for w in caught] == ["something else"]


def test_class_names_in_other_scripts_use_an_installed_fallback_font(tmp_path, monkeypatch, caplog):
    """Chinese class names were boxes in the confusion matrices even with a CJK font installed: the figures named
    DejaVu Sans alone. Installed fallbacks join the family list (matplotlib then draws each glyph from the first
    font that has it); absent ones are left out, since each would log a findfont line per text."""
    import logging

    from matplotlib import font_manager

    from fewshot.report import figure, plots

    dejavu = font_manager.findfont("DejaVu Sans")
    entry = font_manager.FontEntry(fname=dejavu, name="WenQuanYi Zen Hei", style="normal", variant="normal",
                                   weight=400, stretch="normal", size="scalable")
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [*font_manager.fontManager.ttflist, entry])
    figure.font_families.cache_clear()
    try:
        families = figure.font_families()
        assert families[0] == "DejaVu Sans" and "WenQuanYi Zen Hei" in families
        assert "Noto Sans CJK JP" not in families and "Microsoft YaHei" not in families  # not installed here
        seen = {}
        real = plots._save

        def save(fig, out):
            import matplotlib

            seen["family"] = list(matplotlib.rcParams["font.family"])
            return real(fig, out)

        monkeypatch.setattr(plots, "_save", save)
        with caplog.at_level(logging.INFO, logger="matplotlib.font_manager"):
            plots.plot_confusion(np.eye(2, dtype=np.int64), ["衬衫", "外套"], "时装", tmp_path / "cm.png")
        assert seen["family"] == list(families) and (tmp_path / "cm.png").is_file()
        assert not [r for r in caplog.records if "findfont" in r.getMessage()]
    finally:
        figure.font_families.cache_clear()


def test_an_unwritable_home_does_not_make_matplotlib_warn_on_every_plot(tmp_path):
    """With HOME read-only, every plotting command printed matplotlib's two-line MPLCONFIGDIR warning (it then used
    a temporary folder anyway). A fresh process: matplotlib reads its config folder once, when imported."""
    import os
    import subprocess

    (tmp_path / "file").write_text("where HOME's parent folder should be: nothing can be made under it")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env["HOME"] = str(tmp_path / "file" / "home")
    code = ("import sys, numpy as np; from fewshot.report import plots; "
            "plots.plot_confusion(np.eye(2, dtype=int), ['a', 'b'], 't', sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cm.png")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "cm.png").is_file(), done.stderr
    assert "MPLCONFIGDIR" not in done.stderr and "matplotlib" not in done.stderr.lower(), done.stderr


def test_names_with_dollar_signs_are_drawn_as_written(tmp_path):
    """matplotlib reads `$...$` as maths: a class folder `cost$5_$10` made training's curves and `fewshot
    report` fail with exit 1, and `a$x$b` was drawn as a formula."""
    from fewshot.report import plots

    names = ["cost$5_$10", "a$x$b"]
    rows = [{"epoch": e, "step": e, "loss": 1.0 / e, "lr": 1e-3, "train_acc1": 10.0 * e,
             "val": {"known": {"mean_acc1": 50.0, "datasets": {n: {"acc1": 40.0 + e} for n in names}}}}
            for e in (1, 2, 3)]
    assert plots.plot_finetune_curves(rows, tmp_path / "curves.png").is_file()
    metrics = [{"known": {"mean_acc1": 50.0, "datasets": {n: {"acc1": 50.0} for n in names}}}]
    assert plots.plot_accuracy_bars(["run$1$"], metrics, tmp_path / "bars.png").is_file()
    cm = np.eye(2, dtype=int)
    assert plots.plot_confusion(cm, names, "a $bad_{title", tmp_path / "cm.png").is_file()


@pytest.mark.parametrize("lrs", [(4e-3, 1e-5), (5e-4, 3e-4)], ids=["decades", "within-a-decade"])
def test_log_scale_learning_rate_ticks_are_numbers_not_mathtext_source(tmp_path, monkeypatch, lrs):
    """With text.parse_math off (names with `$`), matplotlib's default log-axis labels were drawn as their
    source: every curves plot's lr panel read `$\\mathdefault{10^{-3}}$` (a long-run hunt)."""
    from fewshot.report import plots

    figs = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: (figs.append(fig), save(fig, out))[1])
    hi, lo = lrs
    rows = [{"epoch": e, "step": e, "loss": 1.0 / e, "lr": hi + (lo - hi) * (e - 1) / 39, "train_acc1": 50.0,
             "contrast_acc1": 1.0, "contrast_acc5": 5.0} for e in range(1, 41)]
    plots.plot_finetune_curves(rows, tmp_path / "ft.png")
    plots.plot_moco_curves(rows, tmp_path / "moco.png")
    for fig in figs:
        fig.canvas.draw()
        lr_ax = [ax for ax in fig.axes if ax.get_yscale() == "log"]
        assert len(lr_ax) == 1
        labels = [t.get_text() for t in lr_ax[0].get_yticklabels(minor=False) + lr_ax[0].get_yticklabels(minor=True)
                  if t.get_text()]
        assert labels, "the lr axis has no labels"
        assert not any("$" in t or "mathdefault" in t for t in labels), labels


def test_more_runs_than_a_palette_get_colours_of_their_own():
    from fewshot.report import plots

    for n in (3, 14, 25):
        assert len({plots._color(i, n) for i in range(n)}) == n


def test_test_split_scores_in_metrics_json_are_not_shown_as_val(runs, tmp_path):
    """`fewshot eval --split test --out RUN/metrics.json` is allowed: the report's tables are val accuracies,
    so those scores are left out with a note instead of appearing as the run's val numbers."""
    from fewshot.report.runs import load_run

    run = tmp_path / "ft"
    shutil.copytree(runs["ft"], run)
    val = json.loads((run / "metrics.json").read_text())
    test = {**val, "split": "test", "mean_acc1": 12.34}
    (run / "metrics.json").write_text(json.dumps(test))
    (run / "metrics_known.json").unlink(missing_ok=True)
    loaded = load_run(run, "ft")
    assert loaded.metrics is not None and loaded.metrics["mean_acc1"] != 12.34  # the best logged evaluation
    assert any("test-split" in note for note in loaded.notes)
    (run / "metrics.json").write_text(json.dumps({**val, "split": "val"}))
    assert load_run(run, "ft").metrics["mean_acc1"] == val["mean_acc1"]


# ---------------------------------------------------------------------- runs read while written, odd files

def test_report_of_a_run_still_training_matches_the_checkpoint_epoch(runs, tmp_path, monkeypatch):
    """best.pt is read after log.jsonl: a run still training had saved a later best.pt meanwhile, and the page
    quoted the earlier epoch's accuracy, then blamed the data for the difference."""
    from fewshot.report import build

    run = tmp_path / "live"
    shutil.copytree(runs["ft"], run)
    for name in ("metrics.json", "metrics_known.json", "metrics_unknown.json"):
        (run / name).unlink()
    lines = (run / "log.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    ck_epoch = max(reversed(rows), key=lambda r: r["score"])["epoch"]  # the epoch best.pt holds (last of equals)
    earlier = {**rows[0], "epoch": 0, "score": 1e9,  # a best evaluation in the log as first read, then gone
               "val": {m: {**rows[0]["val"][m], "mean_acc1": 0.5} for m in ("known", "unknown")}}
    (run / "log.jsonl").write_text("\n".join([json.dumps(earlier), *lines]) + "\n")
    analyse = build.ReportBuilder._analyse

    def analyse_after_the_log_moved_on(self):
        (run / "log.jsonl").write_text("\n".join(lines) + "\n")  # the log best.pt belongs to
        analyse(self)

    monkeypatch.setattr(build.ReportBuilder, "_analyse", analyse_after_the_log_moved_on)
    rc, out, err = run_main("report", run, "--out", tmp_path / "r", "--device", "cpu", "--grid", "4")
    assert rc == 0, err
    text = (tmp_path / "r" / "index.html").read_text()
    assert "the data differ" not in text
    assert f"evaluation of epoch {ck_epoch}, the one best.pt holds" in text and "epoch 0," not in text


def test_a_checkpoint_newer_than_the_log_is_said_plainly(runs, tmp_path):
    """best.pt is saved before its log row: the page says the run is being written, not that the data differ;
    only while a command holds the run's writer lock (a finished run's files that disagree were said to be)."""
    import fcntl
    import os

    from fewshot.report.build import ReportBuilder
    from fewshot.run_lock import LOCK_NAME

    run = tmp_path / "live"
    shutil.copytree(runs["ft"], run)
    builder = ReportBuilder([run], tmp_path / "r")
    r = builder.runs[0]
    builder._match_checkpoint_epoch(r, r.metrics_epoch + 5)
    assert not any("still being written" in n for n in r.notes) and any("files disagree" in n for n in r.notes)
    r.notes.clear()
    fd = os.open(run / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the run's writer holds it
        builder._match_checkpoint_epoch(r, r.metrics_epoch + 5)
    finally:
        os.close(fd)
    assert any("still being written" in n for n in r.notes)


def test_runs_with_the_same_folder_name_get_labels_apart(runs, tmp_path):
    from fewshot.report.runs import expand_runs

    for side in ("a", "b"):
        shutil.copytree(runs["ft"], tmp_path / "lab" / side / "x" / "exp")
    a, b = tmp_path / "lab/a/x/exp", tmp_path / "lab/b/x/exp"
    assert [r.label for r in expand_runs([a, b])] == ["a/x/exp", "b/x/exp"]
    assert [r.label for r in expand_runs([b, a])] == ["b/x/exp", "a/x/exp"]
    odd = tmp_path / "new\nline"
    shutil.copytree(runs["ft"], odd)
    rc, out, err = run_main("compare", odd)
    assert rc == 0, err
    assert "new\\nline" in out
    assert not any(line.strip() == "line" or line.startswith("line ") for line in out.splitlines())


def test_runs_whose_names_look_alike_once_escaped_get_labels_apart(runs, tmp_path):
    """A folder "x<newline>y" and one "x\\ny" (a backslash) both showed as x\\ny: one slug and one set of PNGs for
    both, and one run's figures, notes and FLOPs under the other's name."""
    from fewshot.report.build import _slugs
    from fewshot.report.runs import expand_runs

    real, literal = tmp_path / "cr" / "x\ny", tmp_path / "cr" / "x\\ny"
    for path in (real, literal):
        shutil.copytree(runs["ft"], path)
    for order in ([real, literal], [literal, real]):
        got = expand_runs(order)
        assert {r.path.name: r.label for r in got} == {"x\\ny": "x\\ny", "x\ny": "x\\ny (2)"}
        assert len(set(_slugs(got).values())) == 2
    rc, out, err = run_main("compare", real, literal)
    assert rc == 0 and "x\\ny (2)" in out, err


def test_figures_of_two_runs_never_share_a_file_name(runs, tmp_path):
    """Run x with a dataset "d-curves" and run x-confusion-0-d both drew x-confusion-0-d-curves.png: one figure
    replaced the other. Runs X and x drew X-curves.png and x-curves.png, one file where case is ignored."""
    root = tmp_path / "root"
    shutil.copytree(runs["root"] / "digits", root / "d-curves", ignore=shutil.ignore_patterns("test*"))
    rc, _, err = run_main("train", "--data", root, "--out", tmp_path / "col" / "x", "--epochs", "1", *COMMON)
    assert rc == 0, err
    shutil.copytree(tmp_path / "col" / "x", tmp_path / "col" / "x-confusion-0-d")
    shutil.copytree(tmp_path / "col" / "x", tmp_path / "col" / "X")
    rc, _, err = run_main("report", *sorted((tmp_path / "col").iterdir()), "--data", root, "--out", tmp_path / "r",
                          "--device", "cpu", "--grid", "8")
    assert rc == 0, err
    images = parse((tmp_path / "r" / "index.html").read_text()).images
    assert len({src.lower() for src in images}) == len(images) == 3 * 4 + 1, images
    assert all((tmp_path / "r" / src).is_file() for src in images)


BROKEN = {
    "metrics.json": ['{"mode": "known", "mean_acc1": 50, "datasets": ["digits"]}',
                     '{"mode": "known", "mean_acc1": 50, "datasets": {"digits": 5}}',
                     '{"mode": "known", "mean_acc1": 50, "n_parameters": "abc"}',
                     '{"mode": "known", "mean_acc1": 50, "best_epoch": "three"}',
                     b'\xff\xfe{}', "{}", "null"],
    "log.jsonl": [b'\xff\xfe\n', "5\n", "[1, 2]\n", '{"epoch": "x"}\n'],
    "config.yaml": ["data: 5\n", "model: {img_size: big}\n", "model: [\n"],
}


@pytest.mark.parametrize("name,content", [(n, c) for n, cs in BROKEN.items() for c in cs])
def test_files_fewshot_does_not_write_are_passed_over_with_a_note(runs, tmp_path, name, content):
    from fewshot.report.compare import compare_tables
    from fewshot.report.runs import expand_runs

    run = tmp_path / "c"
    shutil.copytree(runs["ft"], run, ignore=shutil.ignore_patterns("checkpoints"))
    data = content if isinstance(content, bytes) else content.encode()
    if name == "log.jsonl":  # appended before a last good row: not a torn last line
        last = (run / name).read_bytes().splitlines(keepends=True)[-1]
        data = (run / name).read_bytes() + data + last
    (run / name).write_bytes(data)
    (run / "metrics_known.json").unlink()
    found = expand_runs([run])
    compare_tables(found, {})
    notes = found[0].notes
    assert any(name in n for n in notes), notes


def test_broken_files_notes_say_what_is_wrong(runs, tmp_path):
    from fewshot.report.runs import load_run

    run = tmp_path / "c"
    shutil.copytree(runs["ft"], run)
    (run / "config.yaml").write_text("model: [\n")
    notes = load_run(run, "c").notes
    assert any("config.yaml is not valid YAML" in n for n in notes), notes
    (run / "metrics_known.json").unlink()
    for text, says in (("{}", "has no mean_acc1"), ("null", "holds null")):
        (run / "metrics.json").write_text(text)
        notes = load_run(run, "c").notes
        assert any(says in n for n in notes) and not any("no metrics.json yet" in n for n in notes), notes
    (run / "metrics.json").write_text(json.dumps({"mode": "known", "mean_acc1": 5.0, "split": "test"}))
    notes = load_run(run, "c").notes
    assert not any("no metrics.json yet" in n for n in notes) and any("not usable" in n for n in notes), notes


def test_report_out_may_not_be_inside_a_run_or_the_data(runs, tmp_path):
    from fewshot.report.out_folder import check_report_out
    from fewshot.report.runs import expand_runs

    found = expand_runs([runs["ft"]])
    for out in (runs["ft"], runs["ft"] / "checkpoints", runs["root"] / "digits" / "test", runs["root"]):
        rc, _, err = run_main("report", runs["ft"], "--out", out, "--device", "cpu")
        assert rc == 2 and "--out" in err and "Traceback" not in err, err
    (tmp_path / "file").write_text("x")
    rc, _, err = run_main("report", runs["ft"], "--out", tmp_path / "file")
    assert rc == 2 and "earlier report" in err and "new or empty" not in err
    check_report_out(tmp_path / "elsewhere", found)
    check_report_out(runs["ft"] / "report", found)  # a train run's own report/ was written before: still allowed
    pipe = tmp_path / "pipe"
    shutil.copytree(runs["ft"], pipe / "finetune", ignore=shutil.ignore_patterns("checkpoints"))
    (pipe / "summary.json").write_text(json.dumps({"metrics": {}}))
    staged = expand_runs([pipe])
    check_report_out(pipe / "report", staged)  # where `fewshot run` writes its own report
    from fewshot.errors import UserError

    for out in (pipe, pipe / "other", pipe / "finetune" / "report"):
        with pytest.raises(UserError):
            check_report_out(out, staged)


def test_report_out_holding_a_users_files_or_another_run_is_refused(runs, tmp_path):
    """--out of a user's web folder replaced its index.html and pictures without a word, and --out of another run's
    folder wrote the page among its checkpoints: refused, untouched. New, empty and earlier-report folders stay."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my homepage</h1>")
    (site / "accuracy_bars.png").write_text("x")
    rc, _, err = run_main("report", runs["ft"], "--out", site, "--device", "cpu", "--grid", "0")
    assert rc == 2 and "not a fewshot report (accuracy_bars.png, index.html)" in err, err
    assert (site / "index.html").read_text() == "<h1>my homepage</h1>"
    assert (site / "accuracy_bars.png").read_text() == "x"
    other = tmp_path / "other"
    shutil.copytree(runs["ft"], other, ignore=shutil.ignore_patterns("checkpoints", "report"))
    rc, _, err = run_main("report", runs["moco"], "--out", other, "--device", "cpu", "--grid", "0")
    assert rc == 2 and "config.yaml" in err and not (other / "index.html").exists(), err
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    rc, _, err = run_main("report", runs["moco"], "--out", tmp_path / "empty", "--device", "cpu", "--grid", "0")
    assert rc == 0, err
    rc, _, err = run_main("report", runs["moco"], "--out", tmp_path / "empty", "--device", "cpu", "--grid", "0")
    assert rc == 0, err  # an earlier report's folder
    (tmp_path / "empty" / "index.html").unlink()  # as if stopped before its page: its PNGs are still its own
    rc, _, err = run_main("report", runs["moco"], "--out", tmp_path / "empty", "--device", "cpu", "--grid", "0")
    assert rc == 0, err
    rc, _, err = run_main("report", runs["ft"], "--out", runs["ft"], "--device", "cpu")
    assert rc == 2 and "lies inside the run folder" in err, err


def test_compare_and_report_help_say_what_run_is():
    for cmd in ("compare", "report"):
        rc, out, _ = run_main(cmd, "--help")
        assert rc == 0 and "run folders or checkpoint files" in out
    assert "DIR/index.html" not in run_main("report", "--help")[1]


# ---------------------------------------------------------------------- many datasets, many classes

def _val_rows(names: list[str], epochs: int = 12) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for e in range(1, epochs + 1):
        ds = {n: {"acc1": float(rng.uniform(0, 100)), "acc5": 100.0, "n": 4} for n in names}
        rows.append({"epoch": e, "step": e, "loss": 1.0 / e, "lr": 1e-3 / e, "train_acc1": 5.0 * e,
                     "contrast_acc1": 1.0, "contrast_acc5": 5.0,
                     "knn_acc1": {**{n: float(rng.uniform(0, 100)) for n in names}, "mean": 50.0},
                     "val": {"known": {"mean_acc1": 50.0, "datasets": ds},
                             "unknown": {"mean_acc1": 40.0, "datasets": ds, "routing_acc": 30.0}}})
    return rows


def _capture_figures(monkeypatch) -> list:
    from fewshot.report import plots

    figs, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: (figs.append(fig), save(fig, out))[1])
    return figs


@pytest.mark.parametrize("n", [5, 14, 60])
def test_plots_of_many_datasets_keep_their_legends_out_of_the_panels_and_warn_nothing(tmp_path, monkeypatch, n):
    """The val panel's in-axes legend had 2 entries per dataset: at 14+ datasets it was taller than the figure,
    constrained layout collapsed the axes and printed a UserWarning on stderr (it looked like a crash) in
    `train`, `run` and `report`; the same for MoCo's kNN legend and the embedding's by-dataset legend."""
    import warnings

    from fewshot.report import plots

    figs = _capture_figures(monkeypatch)
    names = [f"dataset_{i:02d}" for i in range(n)]
    rows = _val_rows(names)
    k = 4 * n
    ids = np.arange(k) % n
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.plot_finetune_curves(rows, tmp_path / "ft.png")
        plots.plot_moco_curves(rows, tmp_path / "moco.png")
        plots.plot_embedding(np.random.default_rng(0).normal(size=(k, 2)), np.arange(k) % (2 * n),
                             [f"{names[c // 2]}: c{c % 2}" for c in range(2 * n)], ids, names, "PCA",
                             tmp_path / "emb.png")
    for fig in figs[:2]:
        fig.canvas.draw()
        for ax in fig.axes:  # no panel squashed: each keeps most of the figure's height
            assert ax.get_position().height > 0.5, ax.get_title()
        entries = sum(len(lg.get_texts()) for lg in fig.legends + [ax.get_legend() for ax in fig.axes] if lg)
        assert entries <= min(n, plots.LEGEND_MAX_NAMED) + 6  # one entry per dataset colour, not two
        if fig.legends:  # a big legend lies below the panels, not over them
            top = fig.legends[0].get_window_extent().y1
            assert all(top <= ax.get_window_extent().y0 + 1 for ax in fig.axes)
    if n > plots.LEGEND_MAX_NAMED:
        assert "60 datasets" in figs[0].axes[3].get_title()


def _overlaps(texts) -> list[tuple[str, str]]:
    boxes = sorted(((t.get_window_extent(), t.get_text()) for t in texts if t.get_text() and t.get_visible()),
                   key=lambda b: b[0].x0)
    return [(a[1], b[1]) for a, b in zip(boxes, boxes[1:]) if a[0].x1 > b[0].x0 + 0.5 and a[0].overlaps(b[0])]


@pytest.mark.parametrize("n,runs", [(3, 2), (14, 2), (60, 2), (14, 6)])
def test_accuracy_bars_grow_with_datasets_and_their_labels_do_not_collide(tmp_path, monkeypatch, n, runs):
    """The figure's width ignored the number of datasets: with 14 datasets the x labels ran together into one
    string (`many160set01_dig...`) and the values over the bars overlapped (`100.0100.0`)."""
    from fewshot.report import plots

    figs = _capture_figures(monkeypatch)
    names = [f"set{i:02d}_dig" for i in range(n)]
    m = {"mean_acc1": 50.0, "routing_acc": 30.0, "datasets": {d: {"acc1": 100.0} for d in names}}
    plots.plot_accuracy_bars([f"run{i}" for i in range(runs)], [{"known": m, "unknown": m}] * runs,
                             tmp_path / "bars.png")
    fig = figs[0]
    fig.canvas.draw()
    if n >= 14:  # each panel wider than the 5 in the two panels side by side had
        assert all(ax.get_window_extent().width / fig.dpi > 10 for ax in fig.axes)
    for ax in fig.axes:
        ticks = ax.get_xticklabels()
        angle = ticks[0].get_rotation()
        if angle == 0:
            assert not _overlaps(ticks), "tick labels collide"
        else:  # turned labels: the distance across them must hold a line of text
            xs = [t.get_window_extent().x1 for t in ticks]
            height = ticks[0].get_fontsize() * fig.dpi / 72
            assert min(np.diff(xs)) * math.sin(math.radians(angle)) >= height, "tick labels collide"
        assert not _overlaps(ax.texts), "value labels collide"
    if n == 3:  # a few datasets: the values are still written on the bars
        assert all(ax.texts for ax in fig.axes)


def test_neighbouring_datasets_get_colours_that_differ():
    """tab20 in its own order gave datasets 0 and 1 (2 and 3, ...) a dark and a light shade of one hue."""
    import colorsys

    from fewshot.report import plots

    for n in range(11, 21):
        hsv = [colorsys.rgb_to_hsv(*plots._color(i, n)[:3]) for i in range(n)]
        for i, (a, b) in enumerate(zip(hsv, hsv[1:])):
            if min(a[1], b[1]) < 0.15:  # a grey next to anything reads apart
                continue
            d = abs(a[0] - b[0])
            assert min(d, 1 - d) > 0.05, (n, i)
    rgb = [np.array(plots._color(i, 60)[:3]) for i in range(60)]
    assert min(np.abs(a - b).sum() for a, b in zip(rgb, rgb[1:])) > 0.3  # turbo, visited far apart


@pytest.mark.parametrize("n", [1000, 3000])
def test_big_confusion_matrices_keep_every_off_diagonal_cell(tmp_path, monkeypatch, n):
    """Drawn with nearest-neighbour resampling into ~650 px, a 1000-class matrix dropped a third of its rows
    and columns, and a confusion in them vanished."""
    from fewshot.report import plots

    figs = _capture_figures(monkeypatch)
    cm = np.eye(n, dtype=int)
    cells = [(i, (7 * i + n // 3) % n) for i in range(5, n, n // 57)]
    for i, j in cells:
        cm[i, i], cm[i, j] = 0, 1
    out = plots.plot_confusion(cm, [f"c{i}" for i in range(n)], "many", tmp_path / "cm.png")
    assert out.stat().st_size < 1_500_000
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    bb = figs[0].axes[0].get_window_extent()
    missing = []
    for i, j in cells:
        x = bb.x0 + (j + 0.5) / n * bb.width
        y = img.shape[0] - (bb.y1 - (i + 0.5) / n * bb.height)
        patch = img[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2]
        if patch[..., 0].min() > 120:  # no dark blue pixel where the cell is
            missing.append((i, j))
    assert not missing, f"{len(missing)} of {len(cells)} confused cells not drawn"


def test_prediction_grid_names_the_dataset_when_it_shows_several(tmp_path, monkeypatch):
    """Datasets may share class names (`9` of two digit sets): the grid's titles could not tell them apart."""
    from fewshot.report import plots

    figs = _capture_figures(monkeypatch)
    imgs = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    plots.plot_prediction_grid(imgs, ["9"] * 4, ["9", "9", "3", "9"], [True, True, False, True], tmp_path / "a.png",
                               datasets=["set01_dig", "set05_dig", "set05_dig", "set01_dig"])
    plots.plot_prediction_grid(imgs, ["9"] * 4, ["9"] * 4, [True] * 4, tmp_path / "b.png", datasets=["set01_dig"] * 4)
    titles = [ax.get_title() for ax in figs[0].axes]
    assert titles[:3] == ["set01_dig: 9", "set05_dig: 9", "set05_dig: 3\n(true: 9)"]
    assert [ax.get_title() for ax in figs[1].axes] == ["9"] * 4  # one dataset: no prefix


def test_report_says_confusion_pictures_are_capped(runs, tmp_path, monkeypatch):
    """Past MAX_CONFUSION_IMAGES datasets the pictures were dropped without a word."""
    from fewshot.report import build, plots

    monkeypatch.setattr(build, "MAX_CONFUSION_IMAGES", 0)
    grids = []
    grid = plots.plot_prediction_grid
    monkeypatch.setattr(plots, "plot_prediction_grid", lambda *a, **k: (grids.append(k), grid(*a, **k))[1])
    index = build.build_report([str(runs["ft"])], tmp_path / "rep", device="cpu", log=lambda *a: None)
    text = index.read_text()
    assert "Pictures are shown for the first 0 datasets only" in text
    assert "most confused pairs of digits" in text or "No confusions" in text  # the tables stay
    assert not list((tmp_path / "rep").glob("*confusion*.png"))
    assert grids and grids[0]["datasets"] == ["digits"] * len(grids[0]["datasets"])


def test_terminal_table_column_fits_the_longest_dataset_name():
    from fewshot.eval.evaluate import format_table

    long = "stanford_cars_196_classes_fine"
    m = {"mode": "known", "mean_acc1": 55.5, "routing_acc": 40.0,
         "datasets": {"cifar": {"acc1": 50.0, "acc5": 90.0, "n": 10}, long: {"acc1": 61.0, "acc5": 99.0, "n": 7}}}
    lines = format_table(m).splitlines()
    end = lines[0].index("acc@1") + len("acc@1")
    for line, value in zip(lines[1:], ["50.00", "61.00", "55.50", "40.00"]):
        assert line[:end].endswith(value), lines


def test_terminal_table_aligns_wide_characters_by_their_cells():
    """A CJK name was padded by its characters, each two cells wide on a terminal: its numbers stood off."""
    from rich.cells import cell_len

    from fewshot.eval.evaluate import format_table

    wide = "ünïcode_数据" * 3  # wider on screen than the 24-cell minimum
    m = {"mode": "known", "mean_acc1": 55.5, "routing_acc": None,
         "datasets": {"cifar": {"acc1": 50.0, "acc5": 90.0, "n": 10}, wide: {"acc1": 61.0, "acc5": 99.0, "n": 7}}}
    lines = format_table(m).splitlines()
    assert len({cell_len(line) for line in lines[:3]}) == 1, lines
    assert lines[2].startswith(wide + " ") and lines[2].endswith("61.00   99.00      7")


@pytest.mark.parametrize("term", ["dumb", "xterm"])
def test_compare_tables_never_crop_a_number_whatever_the_terminal(monkeypatch, term):
    """Under TERM=dumb rich took an 80-column console whatever width= said (`script -qc "fewshot compare RUN"`
    printed 3… for 372,979); wide (CJK) names were counted one column each."""
    from fewshot.report.tables import Table, print_tables

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for name in ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR", "COLUMNS", "LINES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", term)
    names = ["数据集" * 4 + str(i) for i in range(6)]
    table = Table("accuracy", ["run", *names], [["r1", *["372,979"] * 6], ["r2", *["14.25"] * 6]])
    file = Terminal()
    print_tables([table], file=file)
    text = file.getvalue()
    assert "…" not in text and text.count("372,979") == 6 and text.count("14.25") == 6, text
    assert all(name in text for name in names), text


def test_long_run_and_dataset_names_make_short_distinct_file_names(runs, tmp_path):
    from fewshot.report.build import NAME_PART_MAX, _safe_name

    long_a, long_b = "D" * 230 + "a", "D" * 230 + "b"
    assert len(_safe_name(long_a)) <= NAME_PART_MAX and _safe_name(long_a) != _safe_name(long_b)
    assert _safe_name("digits") == "digits"  # short names are kept as they were
    run = tmp_path / ("R" * 230)  # a legal folder name; its PNG names were "File name too long"
    shutil.copytree(runs["ft"], run)
    rc, _, err = run_main("report", run, "--out", tmp_path / "r", "--device", "cpu", "--data", runs["root"])
    assert rc == 0, err
    text = (tmp_path / "r" / "index.html").read_text()
    assert parse(text).images and all((tmp_path / "r" / src).is_file() for src in parse(text).images)


# ---------------------------------------------------------------------- folders, data and --out of a report

def test_a_probe_folder_is_said_not_to_be_a_run(tmp_path):
    """A probe's --out holds metrics.json alone: compare said it held none of log.jsonl, metrics.json or
    checkpoints/, though it held metrics.json."""
    probe = tmp_path / "probe1"
    probe.mkdir()
    (probe / "metrics.json").write_text(json.dumps({"mode": "known", "mean_acc1": 50.0, "datasets": {},
                                                    "protocol": "linear probe"}))
    for cmd in (("compare",), ("report", "--out", tmp_path / "r")):
        rc, _, err = run_main(cmd[0], probe, *cmd[1:])
        assert rc == 2 and "no config.yaml" in err and "`fewshot probe --out` folder is not a run" in err, err
        assert "expected log.jsonl, metrics.json" not in err
    assert not (tmp_path / "r").exists()
    (tmp_path / "empty").mkdir()
    err = run_main("compare", tmp_path / "empty")[2]
    assert "holds no run" in err and "metrics.json with its config.yaml" in err


def test_report_on_a_root_lacking_one_of_the_models_datasets_draws_those_present(runs, tmp_path):
    """The note said "pass --datasets A.", an option of predict that report lacks, and drew no image part."""
    both, only_a = tmp_path / "both", tmp_path / "only_a"
    for name in ("A", "B"):
        shutil.copytree(runs["root"] / "digits", both / name, ignore=shutil.ignore_patterns("test*"))
    shutil.copytree(both / "A", only_a / "A")
    run = tmp_path / "ab"
    rc, _, err = run_main("train", "--data", both, "--out", run, "--epochs", "1", *COMMON)
    assert rc == 0, err
    rc, _, err = run_main("report", run, "--data", only_a, "--out", tmp_path / "r", "--device", "cpu", "--grid", "8")
    assert rc == 0, err
    text = (tmp_path / "r" / "index.html").read_text()
    assert "--datasets" not in text and "Image-based parts skipped" not in text
    assert "holds no B of the model&#x27;s datasets: left out" in text and "cover A only" in text
    names = sorted(p.name for p in (tmp_path / "r").glob("*.png"))
    assert "ab-confusion-0-A.png" in names and not any("confusion-1" in n for n in names), names
    assert "ab-predictions.png" in names and "8 val images" in text
    assert "Recomputed known-source mean" not in text  # compared with the run's accuracy on A alone


def test_skipped_image_parts_are_said_on_the_console_too(runs, tmp_path):
    """--data with a class the model does not know, or a `fewshot run` folder whose predicting stage is gone:
    the report exits 0 and said why the image parts are missing only inside index.html (or not at all)."""
    root = tmp_path / "root"
    shutil.copytree(runs["root"], root)
    extra = root / "digits" / "val" / "extra"
    shutil.copytree(next(p for p in sorted((root / "digits" / "val").iterdir()) if p.is_dir()), extra)
    rc, out, err = run_main("report", runs["ft"], "--data", root, "--out", tmp_path / "r", "--device", "cpu")
    assert rc == 0, err
    assert "Image-based parts skipped" in (tmp_path / "r" / "index.html").read_text()
    assert "Image-based parts skipped" in out
    pipe = tmp_path / "pipe"
    shutil.copytree(runs["ft"], pipe / "finetune_labelled")
    (pipe / "summary.json").write_text(json.dumps({"stages": {}, "metrics": {}, "predicted_with": "finetune"}))
    rc, out, err = run_main("report", pipe, "--out", tmp_path / "r2", "--device", "cpu", "--data", runs["root"])
    assert rc == 0, err
    assert f"but its folder {pipe / 'finetune'} is missing" in out


def test_bar_values_are_written_as_the_tables_write_them(tmp_path, monkeypatch):
    """79.55 (the float 79.5499...) was "79.5" over its bar and 79.55 in the table."""
    from fewshot.report import plots

    figs = _capture_figures(monkeypatch)
    m = {"mean_acc1": 79.55, "datasets": {"digits": {"acc1": 79.55}}}
    plots.plot_accuracy_bars(["run"], [{"known": m, "unknown": None}], tmp_path / "bars.png")
    assert [t.get_text() for t in figs[0].axes[0].texts] == ["79.55", "79.55"]


def test_data_that_is_not_a_folder_leaves_no_report_folder(runs, tmp_path):
    rc, _, err = run_main("report", runs["ft"], "--data", tmp_path / "nonexist", "--out", tmp_path / "r")
    assert rc == 2 and "is not a folder" in err, err
    assert not (tmp_path / "r").exists()


def test_reused_out_loses_the_earlier_reports_pngs_only(report, runs, tmp_path, monkeypatch):
    """--out of an earlier report of other runs kept its PNGs (15 stale files beside the new page)."""
    from fewshot.report import build, plots

    out = tmp_path / "rep"
    shutil.copytree(report.parent, out)
    (out / "mine.png").write_bytes(PNG_SIGNATURE)  # the user's: never the report's to remove
    earlier = set(parse((out / "index.html").read_text()).images)
    assert any(n.startswith("ft-") for n in earlier)

    def fail(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "plot_moco_curves", fail)
    with pytest.raises(RuntimeError):
        build.build_report([str(runs["moco"])], out, device="cpu", log=lambda *a: None)
    assert all((out / n).is_file() for n in earlier)  # a failed report leaves the earlier page whole
    monkeypatch.undo()
    build.build_report([str(runs["moco"])], out, device="cpu", log=lambda *a: None)
    shown = set(parse((out / "index.html").read_text()).images)
    assert shown == {"moco-curves.png"}
    kept = sorted(p.name for p in out.iterdir() if p.name != ".fewshot_report")  # the hidden mark: a report's folder
    assert kept == ["index.html", "mine.png", "moco-curves.png"]


def test_grid_is_capped_and_help_says_each_dataset_gets_one(runs, tmp_path):
    """--grid 100000 drew a 13 MB, 68,250 px tall PNG in 2 minutes; --grid 1 drew one image per dataset."""
    from types import SimpleNamespace

    from fewshot.report.analysis import sample_for_grid

    rc, _, err = run_main("report", runs["moco"], "--out", tmp_path / "r", "--grid", 401)
    assert rc == 2 and "give --grid 400 or less" in err, err
    assert not (tmp_path / "r").exists()
    help_text = " ".join(run_main("report", "--help")[1].split())
    assert "at least one of each" in help_text and "at most 400" in help_text
    a = SimpleNamespace(space=SimpleNamespace(names=["A", "B", "C"]), dataset_ids=np.array([0] * 50 + [2] * 50))
    assert len(sample_for_grid(a, 1)) == 2  # one of each dataset with val images here
    assert len(sample_for_grid(a, 40)) == 40  # a dataset left out (B) takes no share of the 40


def test_stopped_run_and_tiny_map_say_what_is_shown(runs, tmp_path):
    """Accuracies from log.jsonl were headed "metrics.json mode: known"; a map of 2 images, drawn from raw
    coordinates, was captioned "t-SNE of ... 2 val images"."""
    run, root = tmp_path / "stopped", tmp_path / "root"
    shutil.copytree(runs["ft"], run)
    for name in ("metrics.json", "metrics_known.json", "metrics_unknown.json"):
        (run / name).unlink(missing_ok=True)
    shutil.copytree(runs["root"] / "digits", root / "digits", ignore=shutil.ignore_patterns("test*"))
    for i, cls in enumerate(sorted((root / "digits" / "val").iterdir())):
        for j, img in enumerate(sorted(cls.iterdir())):
            if i > 0 or j > 1:
                img.unlink()
        if i > 0:
            cls.rmdir()
    rc, _, err = run_main("report", run, "--data", root, "--out", tmp_path / "r", "--device", "cpu", "--tsne")
    assert rc == 0, err
    text = (tmp_path / "r" / "index.html").read_text()
    assert "metrics.json mode" not in text and "mean acc@1 (metrics.json)" not in text
    best = max(reversed([r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "val" in r]),
               key=lambda r: r["score"])["epoch"]  # the last of equal scores, as the engine keeps
    assert f"val accuracy (logged evaluation of epoch {best} in log.jsonl; no metrics.json)" in text
    assert f"mean acc@1 (log.jsonl, epoch {best})" in text
    assert "The first two coordinates (too few images for t-SNE) of the backbone" in text
    assert "t-SNE of" not in text


def _stopped_before_first_stage(folder: Path, finished: bool = False) -> Path:
    """A `fewshot run` folder as a SIGINT in its start-up leaves it: run_state.json, an empty stage folder and the
    lock file no process holds (no stage log or checkpoint yet)."""
    (folder / "finetune_labelled").mkdir(parents=True)
    (folder / "run_state.json").write_text(json.dumps({"version": 1, "budget_minutes": 0.5, "stages": {},
                                                       "summary": None, "finished": finished}))
    (folder / ".fewshot.lock").write_text("12345\n")
    return folder


@pytest.mark.parametrize("command", ["report", "compare"])
def test_a_fewshot_run_stopped_before_its_first_stage_is_named_so(tmp_path, command):
    """A `fewshot run` stopped before its first stage trained was told it "holds no run", naming pretrain/ and
    finetune/ as the stages a run folder holds: it is a stopped run, which --resume continues."""
    run = _stopped_before_first_stage(tmp_path / "stopped run")
    extra = ["--out", tmp_path / "rep"] if command == "report" else []
    rc, _, err = run_main(command, run, *extra)
    assert rc == 2 and "Traceback" not in err, err
    assert "holds no run" not in err and "stopped before its first stage trained" in err, err
    assert "--resume" in err and f"--out '{run}'" in err, err  # the folder named, quoted for the shell
    assert not (tmp_path / "rep").exists()


def test_a_folder_without_a_run_names_the_stage_folders_the_pipeline_writes(tmp_path):
    """The message for a folder holding no run listed pretrain/ and finetune/ as a `fewshot run`'s stages; the
    pipeline writes finetune_labelled/ and finetune_round<k>/ too. A finished run_state.json is no stopped run."""
    for folder in (tmp_path / "empty", _stopped_before_first_stage(tmp_path / "finished", finished=True)):
        folder.mkdir(exist_ok=True)
        rc, _, err = run_main("compare", folder)
        assert rc == 2 and "holds no run" in err and "stopped before" not in err, err
        assert "finetune_labelled/" in err and "finetune_round<k>/" in err, err
        assert "pretrain/ and finetune/ stages" not in err, err


def test_self_training_rounds_are_listed_in_number_order():
    """finetune_round10 sorted as text came before finetune_round2 in the report's stage list."""
    from fewshot.report.pipeline_runs import _round_order

    names = ["finetune_round10", "finetune_round2", "finetune_round3"]
    assert sorted(names, key=_round_order) == ["finetune_round2", "finetune_round3", "finetune_round10"]


def test_the_missing_glyph_note_never_names_control_characters(monkeypatch, capsys):
    """On a machine without a CJK font, a dataset named with an escape code (`\\x1b]0;pwned\\x07`) got a note
    that printed the raw ESC and BEL to the terminal and advised installing a font: no font draws them."""
    from fewshot.report import figure

    monkeypatch.setattr(figure, "_glyphs_said", set())
    glyph = "Glyph {} (\\N{{x}}) missing from font(s) DejaVu Sans."
    figure._say_missing_glyphs([glyph.format(27), glyph.format(7), glyph.format(0x202E)])
    assert capsys.readouterr().err == ""
    figure._say_missing_glyphs([glyph.format(27), glyph.format(0x732B)])
    err = capsys.readouterr().err
    assert "(\u732b)" in err and "\x1b" not in err
