"""`fewshot compare` at 80 columns and the method each run used (bug hunt hBR, findings 2 and 4): 10 runs printed
243-column lines (a 14-column overview that rich was never let narrow, 240-character captions), and a default, a
--baseline, a FixMatch and a MoCo-started run all read "fine-tune".

Run folders are written by hand (no training): compare reads files only.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml

from fewshot.report import tables as T
from fewshot.report.compare import run_compare


def _scores(mean: float, mode: str = "known") -> dict:
    names = {"digits": 18, "fashion-mnist": 20}
    return {"mode": mode, "mean_acc1": mean, "routing_acc": 61.5 if mode == "unknown" else None, "split": "val",
            "datasets": {n: {"acc1": mean + k, "acc5": 99.0 - k, "n": size}
                         for k, (n, size) in enumerate(names.items())}}


def _run(folder: Path, mean: float, config: dict | None = None, moco: bool = False) -> Path:
    """A finished run of 3 epochs, its accuracies ``mean`` + 0/1 per dataset (each number distinct per run)."""
    folder.mkdir(parents=True)
    config = {"model": {"name": "test_resnet", "img_size": 32}, **(config or {})}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = []
    for e in (1, 2, 3):
        row = {"epoch": e, "step": e * 4, "loss": 1.0, "images_per_s": 100.0 + mean, "epoch_time_s": 0.5}
        if moco:
            row.update(score=mean, knn_acc1={"digits": mean, "mean": mean}, contrast_acc1=10.0)
        else:
            row.update(score=mean, val={"known": _scores(mean), "unknown": _scores(mean - 10, "unknown")})
        rows.append(row)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if moco:
        knn = {"mode": "known", "mean_acc1": mean, "datasets": {"digits": {"acc1": mean, "acc5": 99.0, "n": 18}}}
        (folder / "metrics.json").write_text(json.dumps({**knn, "metric": "kNN", "epoch": 3, "best_epoch": 3}))
    else:
        (folder / "metrics.json").write_text(json.dumps({**_scores(mean), "best_epoch": 3}))
        (folder / "metrics_known.json").write_text(json.dumps(_scores(mean)))
        (folder / "metrics_unknown.json").write_text(json.dumps(_scores(mean - 10, "unknown")))
    return folder


def _stage_config(semi_method: str, pretrain: bool = False, semi: str = "off") -> dict:
    model = {"name": "test_resnet", "img_size": 32, "weights": "x/backbone.safetensors"}
    return {"run": {"semi_method": semi_method, "pretrain": pretrain}, "semi": {"method": semi},
            **({"model": model} if pretrain else {})}


def _pipeline(folder: Path, stages: dict[str, tuple[float, dict]]) -> Path:
    for name, (mean, config) in stages.items():
        _run(folder / name, mean, config, moco=name == "pretrain")
    (folder / "run_state.json").write_text(json.dumps({"version": 1, "finished": True}))
    (folder / "summary.json").write_text(json.dumps({"stages": {n: {"epochs": 3} for n in stages}}))
    return folder


@pytest.fixture
def many_runs(tmp_path) -> list[Path]:
    """Ten runs of every kind, with long labels (stages keep their folder's name)."""
    runs = [
        _pipeline(tmp_path / "r_default", {"finetune_labelled": (41.25, _stage_config("pseudo")),
                                           "finetune": (42.25, _stage_config("pseudo"))}),
        _pipeline(tmp_path / "r_baseline", {"finetune": (43.25, _stage_config("off"))}),
        _pipeline(tmp_path / "r_fixmatch", {"finetune": (44.25, _stage_config("fixmatch", semi="fixmatch"))}),
        _pipeline(tmp_path / "r_pretrain", {"pretrain": (45.25, _stage_config("pseudo", True)),
                                            "finetune_labelled": (46.25, _stage_config("pseudo", True))}),
        _run(tmp_path / "r_train", 47.25, {"run": {"semi_method": "pseudo"}}),  # a default a train never used
        _run(tmp_path / "r_joint", 48.25, {"semi": {"method": "moco"}}),
        _run(tmp_path / "r_weights", 49.25, {"model": {"name": "test_resnet", "weights": "b.safetensors"}}),
        _run(tmp_path / "r_moco", 50.25, {"moco": {"dim": 128}}, moco=True),
    ]
    return runs


def _compare(runs: list[Path], file) -> str:
    run_compare([str(r) for r in runs], file=file)
    return file.getvalue()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _cells(line: str) -> int:
    """Terminal cells of a printed line, its colour codes left out."""
    from rich.cells import cell_len
    return cell_len(re.sub(r"\x1b\[[0-9;]*m", "", line))


@pytest.mark.parametrize("tty", [True, False])
def test_compare_of_many_runs_fits_80_columns_with_every_number(many_runs, monkeypatch, tty):
    """A terminal of 80 columns (COLUMNS=80), and a file or pipe with COLUMNS=80: no line over 80 cells, and every
    number the wide output shows is still there, as many times (none cut to "…")."""
    for name in ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR", "LINES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("COLUMNS", raising=False)
    wide = _compare(many_runs, io.StringIO())  # a file, COLUMNS unset: as wide as the tables (as before)
    assert max(map(_cells, wide.splitlines())) > 120
    monkeypatch.setenv("COLUMNS", "80")
    narrow = re.sub(r"\x1b\[[0-9;]*m", "", _compare(many_runs, _Terminal() if tty else io.StringIO()))
    assert max(map(_cells, narrow.splitlines())) <= 80, narrow
    numbers = re.compile(r"\d[\d,.]*(?: [kMGT]?FLOPs| img/s| px| s)?")
    for value in set(numbers.findall(wide)):
        if not any(c.isdigit() for c in value.split()[0]):
            continue
        assert len(re.findall(rf"(?<![\d.]){re.escape(value)}(?![\d.])", narrow)) >= \
            len(re.findall(rf"(?<![\d.]){re.escape(value)}(?![\d.])", wide)), value
    assert "…" not in narrow
    # the overview's parts each lead with the run: every part names every run
    parts = narrow.count("Runs (part ")
    assert parts >= 2 and all(narrow.count(label) >= parts for label in ("r_default/finetune_labelled", "r_moco"))
    # the caption reads whole, wrapped at spaces
    caption = "FLOPs: one forward pass of one image at the input size"
    assert caption in " ".join(narrow.split())


def test_a_table_that_fits_is_drawn_as_before(monkeypatch):
    """Wide terminals keep one table: only a table wider than the terminal is split."""
    monkeypatch.setenv("COLUMNS", "200")
    table = T.Table("accuracy", ["run", "a", "b"], [["r1", "372,979", "14.25"]], caption="short caption")
    out = io.StringIO()
    T.print_tables([table], file=out)
    assert "part" not in out.getvalue() and out.getvalue().count("372,979") == 1


def test_a_word_wider_than_the_terminal_keeps_its_line_whole(monkeypatch):
    """An unbreakable path in a caption is left whole on its own line (folded, it could not be copied)."""
    monkeypatch.setenv("COLUMNS", "40")
    path = "/runs/" + "x" * 60 + "/exp"
    table = T.Table("t", ["run", "a"], [["r1", "1.00"]], caption=f"Read from {path} as written there.")
    out = io.StringIO()
    T.print_tables([table], file=out)
    lines = out.getvalue().splitlines()
    assert path in lines and all(_cells(x) <= 40 for x in lines if x != path), lines


def test_the_overview_says_the_method_of_each_kind_of_run(many_runs):
    from fewshot.report.runs import expand_runs

    overview = T.overview_table(expand_runs([str(r) for r in many_runs]), {})
    method = {row[0]: row[overview.columns.index("method")] for row in overview.rows}
    assert method == {"r_default/finetune_labelled": "self-training r1", "r_default/finetune": "self-training r2",
                      "r_baseline/finetune": "labelled only", "r_fixmatch/finetune": "fixmatch",
                      "r_pretrain/pretrain": "MoCo pretrain", "r_pretrain/finetune_labelled":
                      "self-training r1, from MoCo", "r_train": "labelled only", "r_joint": "joint MoCo",
                      "r_weights": "labelled only, from weights", "r_moco": "MoCo pretrain"}


def test_every_semi_method_the_page_describes_has_a_word():
    from fewshot.report.run_method import SEMI_WORDS
    from fewshot.report.semi_facts import SEMI_FACTS

    assert set(SEMI_WORDS) == set(SEMI_FACTS)


def test_the_plain_text_drawing_without_rich_is_split_too(monkeypatch):
    """Where rich is not installed the tables are plain text: split and wrapped the same way."""
    import builtins

    real_import = builtins.__import__

    def no_rich(name, *args, **kwargs):
        if name == "rich" or name.startswith("rich."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rich)
    monkeypatch.setenv("COLUMNS", "40")
    table = T.Table("accuracy", ["run", "mean acc@1 known", "mean acc@1 unknown", "routing"],
                    [["r_default/finetune", "41.25", "31.25", "61.50"]], caption="word " * 30)
    out = io.StringIO()
    T.print_tables([table], file=out)
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= 40 and all(v in out.getvalue() for v in ("41.25", "31.25", "61.50")), lines
