"""`fewshot report` follow-ups: the dataset-folder advice decided by layout's own test, learning-rate tick labels
written by the public formatter call (plain 10 .. 10000, enough digits for a very narrow range), a log row's val
kept where only an optional field is bad, and long lists in log notes cut with how many more.

No training: folders, log.jsonl files and figures are made by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fewshot.errors import UserError
from test_fbt_report import _tick_labels


def _folders(root: Path, *paths: str) -> Path:
    """``root`` holding the given folders; a path ending in an image name is written as an (empty) image file."""
    root.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if p.endswith(".png"):
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            (root / p).write_bytes(b"")
        else:
            (root / p).mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize("paths, dataset_folder", [
    (("val",), False),  # one empty val/: layout passes it over ("no dataset folders"), report called it a dataset
    (("val", "test"), False),  # empty split-named folders alike
    (("digits/train/a/1.png", "digits/val/a/2.png", "val/a/3.png"), False),  # a real dataset beside a stray split
    (("train/a/1.png", "val/a/2.png"), True),  # a dataset folder itself
    (("val/a/1.png",), True),  # one split of images and nothing else
])
def test_report_calls_a_root_a_dataset_folder_exactly_where_layout_does(tmp_path, paths, dataset_folder):
    """report's copy of layout's test had looser rules: a root of one empty val/ was told "looks like a dataset
    folder itself ... --data <its parent>", though layout (and so train, eval and predict) passes such folders
    over. Each case as both must answer it; report's words name no --datasets (an option it lacks) and the val/ it
    reads, not training's train/."""
    from fewshot.data.layout import list_datasets
    from fewshot.report.analysis import _dataset_folder_given

    root = _folders(tmp_path / "root", *paths)
    try:
        said = str(list_datasets(root))
    except UserError as exc:  # no dataset, or a dataset folder given
        said = str(exc)
    assert ("looks like a dataset folder itself" in said) == dataset_folder, said
    told = _dataset_folder_given(root)
    assert (told is not None) == dataset_folder, told
    if told is not None:
        text = str(told)
        held = "train/ and val/" if len(paths) == 2 else "the split folder val/"
        assert text.startswith(f"--data {root} looks like a dataset folder itself (it holds {held}), "), text
        assert "(ROOT/<dataset>/val/<class>/<image> for the report)" in text and "train/<class>" not in text, text
        assert text.endswith(f"Pass its parent instead: --data {tmp_path} (the report reads the run's datasets "
                             f"there)."), text
        assert "--datasets" not in text, text


def test_report_advice_for_a_relative_dataset_folder_names_the_relative_parent(tmp_path, monkeypatch):
    from fewshot.report.analysis import _dataset_folder_given

    _folders(tmp_path / "data" / "digits", "train/a/1.png", "val/a/2.png")
    monkeypatch.chdir(tmp_path)
    text = str(_dataset_folder_given(Path("data/digits")))
    assert text.endswith("Pass its parent instead: --data data (the report reads the run's datasets there)."), text
    assert "--datasets" not in text, text


def test_layout_and_report_share_one_list_of_dataset_folders(tmp_path, monkeypatch):
    """report copied list_datasets' folder filter: a change to one (another name passed over) left the other
    deciding on other folders. Both read layout's one listing (_visible_folders, behind dataset_folders)."""
    import fewshot.data.layout as layout
    import fewshot.data.roots as roots
    from fewshot.report.analysis import _dataset_folder_given

    root = _folders(tmp_path / "root", "train/a/1.png", "val/a/2.png")  # a dataset folder, unless layout says not
    asked = []
    monkeypatch.setattr(roots, "_visible_folders", lambda r: asked.append(r) or [])
    assert _dataset_folder_given(root) is None  # layout's answer (no refusal) is report's
    with pytest.raises(UserError, match="no dataset folders found"):
        layout.list_datasets(root)
    assert asked == [root, root]


def test_learning_rate_ticks_from_10_to_10000_are_plain_numbers():
    """`.1g` wrote 10 .. 10000 as 1e+01 .. 1e+04 and minor ticks as 2e+01, where LogFormatter wrote 10 and 20."""
    assert _tick_labels(10, 10000) == ["10", "100", "1000", "10000"]
    assert _tick_labels(12, 80) == ["20", "30", "40", "60"]
    assert "1e-03" in _tick_labels(1e-4, 3e-3)  # below 1 still as before


@pytest.mark.parametrize("lo, hi", [(3e-3, 3.0001e-3), (3e-3, 3.000001e-3)])
def test_learning_rate_ticks_of_a_very_narrow_range_are_told_apart(lo, hi):
    """The digits stopped at five: six ticks of 3e-3 .. 3.0001e-3 read 3.0000e-03 three times and 3.0001e-03
    three times."""
    labels = _tick_labels(lo, hi)
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    assert labels[0].startswith("3.0000") and labels[0].endswith("e-03"), labels


def test_learning_rate_ticks_closer_than_eight_digits_label_the_two_ends():
    """Ticks that eight digits do not tell apart: the lowest and highest labelled, with the digits that do."""
    labels = _tick_labels(1e-3, 1e-3 * (1 + 1e-7))
    assert len(labels) == 2 and labels[0] != labels[1], labels


def test_the_tick_formatter_survives_a_new_private_signature_in_matplotlib(monkeypatch):
    """The formatter overrode LogFormatter's private _num_to_string(x, vmin, vmax): a matplotlib that calls it
    otherwise crashed drawing the report with a TypeError. Only the public __call__ is overridden now."""
    from matplotlib.ticker import LogFormatter

    real = LogFormatter.__call__

    def future_num_to_string(self, x, vmin, vmax, style="plain"):  # a later matplotlib's signature
        return f"{x:g}"

    def future_call(self, x, pos=None):
        if not real(self, x, pos):
            return ""
        return self._num_to_string(x, 0.0, 1.0, "new")

    monkeypatch.setattr(LogFormatter, "_num_to_string", future_num_to_string)
    monkeypatch.setattr(LogFormatter, "__call__", future_call)
    labels = _tick_labels(2.9e-3, 3.5e-3)
    assert "2.9e-03" in labels and "3.5e-03" in labels and len(set(labels)) == len(labels), labels


def _scores(mean: float, mode: str = "known", **extra) -> dict:
    m = {"mode": mode, "mean_acc1": mean, "datasets": {"digits": {"acc1": mean, "acc5": 100.0, "n": 30}}}
    return {**m, "routing_acc": 90.0, **extra} if mode == "unknown" else {**m, **extra}


def _read(tmp_path: Path, rows: list[dict]) -> tuple[list[dict], list[str]]:
    from fewshot.report.run_files import read_log

    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    notes: list[str] = []
    return read_log(run, notes), notes


def test_a_bad_optional_val_field_costs_only_itself(tmp_path):
    """A val whose known part had `weights: 7` (or unknown's routing_acc a string) lost the whole val score of
    its epoch, curves and all; clean_metrics' rule is that one bad value does not cost the rest."""
    rows = [{"epoch": e, "lr": 1e-3, "loss": 1.0, "score": 10.0 + e,
             "val": {"known": _scores(10.0 + e, weights=7 if e > 1 else "ema"),
                     "unknown": _scores(5.0, "unknown", routing_acc="high" if e == 3 else 90.0)}} for e in (1, 2, 3)]
    log, notes = _read(tmp_path, rows)
    assert all("val" in r for r in log), log
    assert [r["val"]["known"]["mean_acc1"] for r in log] == [11.0, 12.0, 13.0]
    assert all(r["val"]["known"]["datasets"]["digits"]["acc1"] == r["val"]["known"]["mean_acc1"] for r in log)
    assert [r["val"]["known"].get("weights") for r in log] == ["ema", None, None]
    assert [r["val"]["unknown"].get("routing_acc") for r in log] == [90.0, 90.0, None]
    assert notes == ["log.jsonl: val.known.weights, val.unknown.routing_acc in the val scores of epochs 2, 3 are not "
                     "what fewshot logs (a value of another type); left out, the rest of those scores kept."], notes


def test_a_val_that_cannot_be_drawn_is_still_left_out(tmp_path):
    rows = [{"epoch": 1, "lr": 1e-3, "loss": 1.0, "val": {"known": {**_scores(10.0), "datasets": [1, 2]}}},
            {"epoch": 2, "lr": 1e-3, "loss": 1.0, "val": {"known": "abc"}}]
    log, notes = _read(tmp_path, rows)
    assert [("val" in r) for r in log] == [False, False]
    assert notes == ["log.jsonl: the val scores of epochs 1, 2 are not what fewshot logs (a field of another type); "
                     "left out."], notes


def test_long_lists_in_log_notes_say_how_many_more(tmp_path):
    """Both lists were cut at five with " ...": now "and N more", as the other notes say it."""
    rows = ["[1]"] * 7 + [{"epoch": e, "lr": 1e-3, "val": None} for e in range(1, 9)]
    log, notes = _read(tmp_path, rows)
    assert len(log) == 8
    assert any("(a JSON object with a whole-number epoch; line 1, 2, 3, 4, 5 and 2 more): passed over." in n
               for n in notes), notes
    assert any("the val scores of epochs 1, 2, 3, 4, 5 and 3 more are not" in n for n in notes), notes
