"""`fewshot report` / `fewshot compare` (review rev85 of fET and fEU, fixer fFA): class-set keys that are unique
and readable as ticks, a run without a checkpoint keyed by its other records, a stopped MoCo extension not called
damaged, no stop claimed from an unreadable run_state.json, the resume command for a stage given alone, and the
method words of skipped or dropped semi-supervision.

Run folders are written by hand (no training): the report reads files only.
"""

from __future__ import annotations

import io
import json
import os
import unicodedata
from pathlib import Path

import yaml


def _scores(mean: float, mode: str = "known") -> dict:
    return {"mode": mode, "mean_acc1": mean, "datasets": {"digits": {"acc1": mean, "acc5": 100.0, "n": 20}},
            "split": "val"}


def _run(run: Path, classes: list[str] | None, config: dict | None = None, evaluated: bool = True) -> Path:
    """A finished fine-tuning run of 3 epochs on `digits` (scored at 2 and 3); a best.pt holding ``classes``."""
    from fewshot.train.checkpoint import save_checkpoint

    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "test_resnet", "img_size": 32},
                                                     **(config or {})}))
    rows = [{"epoch": e, "step": e, "loss": 1.0, "train_acc1": 50.0, "images_per_s": 100.0, "epoch_time_s": 0.5,
             **({"score": 50.0, "val": {"known": _scores(50.0)}} if evaluated and e > 1 else {})}
            for e in (1, 2, 3)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if evaluated:
        (run / "metrics.json").write_text(json.dumps({**_scores(50.0), "best_epoch": 3, "val_scores_compared": 2}))
    if classes is not None:
        (run / "checkpoints").mkdir()
        save_checkpoint(run / "checkpoints" / "best.pt", {
            "kind": "supervised", "config": {}, "model": {}, "epoch": 3, "img_size": 32, "n_parameters": 1,
            "label_space": {"names": ["digits"], "classes": [classes]}})
    return run


def _keys(runs):
    from fewshot.report.scored_on import scored_keys

    keys, sentence = scored_keys(runs)
    return [k.get("digits", "digits") for k in keys], sentence


# ---------------------------------------------------------------------- 1, 2. unique keys, distinct ticks
def test_two_class_sets_sharing_their_first_names_get_two_keys(tmp_path):
    from fewshot.report.runs import expand_runs

    runs = expand_runs([_run(tmp_path / "a", list("01234")), _run(tmp_path / "b", list("01235"))])
    keys, sentence = _keys(runs)
    assert len(set(keys)) == 2, keys  # both were `digits (5 classes: 0, 1, 2, 3, ...)`: one bar group again
    assert "0, 1, 2, 3, 4" in sentence and "0, 1, 2, 3, 5" in sentence, sentence
    assert "The name digits means" in sentence


def test_long_class_sets_are_told_apart_by_a_digest(tmp_path):
    from fewshot.report.runs import expand_runs

    many = [f"class{k:02d}" for k in range(30)]
    runs = expand_runs([_run(tmp_path / "a", many), _run(tmp_path / "b", many[:-1] + ["other"])])
    keys, sentence = _keys(runs)
    assert len(set(keys)) == 2 and sentence.count("list digest") == 2, sentence
    digests = [part.split("list digest ")[1][:6] for part in sentence.split("=")[1:]]
    assert digests[0] != digests[1], sentence


def test_bar_ticks_of_two_sets_of_a_long_name_stay_distinct(tmp_path):
    from fewshot.report.plots import _tick

    ticks = [_tick(f"fashion-mnist-and-more [{m}]", 24) for m in "AB"]
    assert ticks[0] != ticks[1] and all(len(t) <= 24 and t.endswith(f"[{m}]") for t, m in zip(ticks, "AB")), ticks


# ---------------------------------------------------------------------- 3. no readable checkpoint
def test_a_stage_without_checkpoints_reads_its_classes_from_run_state(tmp_path):
    from fewshot.report.runs import expand_runs

    folder = tmp_path / "pipe"
    _run(folder / "finetune_labelled", None)
    (folder / "run_state.json").write_text(json.dumps({"finished": True, "classes": {"digits": ["1", "0"]}}))
    (folder / "summary.json").write_text(json.dumps({"stages": {}}))
    runs = expand_runs([folder, _run(tmp_path / "ten", [str(k) for k in range(10)]),
                        _run(tmp_path / "two", ["0", "1"])])
    assert runs[0].class_lists == {"digits": ("1", "0")}
    keys, sentence = _keys(runs)
    assert keys[0] == keys[2] != keys[1], keys  # drawn apart from the run on the identical data
    assert "could not be read" not in sentence


def test_a_run_without_classes_goes_with_agreeing_runs_and_apart_from_differing_ones(tmp_path):
    from fewshot.report.runs import expand_runs

    a, b, bare = _run(tmp_path / "a", ["0", "1"]), _run(tmp_path / "b", ["1", "0"]), _run(tmp_path / "bare", None)
    keys, sentence = _keys(expand_runs([a, b, bare]))
    assert keys == ["digits"] * 3 and "bare on digits could not be read" in sentence and "grouped" in sentence
    keys, sentence = _keys(expand_runs([a, _run(tmp_path / "c", ["2", "3"]), bare]))
    assert keys[2] == "digits [?]" and len(set(keys)) == 3 and "digits [?] = not known" in sentence, sentence


def test_nfd_class_names_of_an_older_checkpoint_are_the_same_set(tmp_path):
    from fewshot.report.runs import expand_runs

    name = "café"
    runs = expand_runs([_run(tmp_path / "a", [unicodedata.normalize("NFD", name), "x"]),
                        _run(tmp_path / "b", [name, "x"])])
    assert _keys(runs) == (["digits", "digits"], "")


# ---------------------------------------------------------------------- 4. a stopped MoCo extension
def test_a_stopped_moco_extension_is_not_called_damaged(tmp_path):
    from fewshot.report.runs import load_run

    run = tmp_path / "moco"
    run.mkdir()
    rows = [{"epoch": e, "step": e, "loss": 4.0, "contrast_acc1": 10.0, "epoch_time_s": 0.5, "score": 60.0,
             "knn_acc1": {"digits": 60.0, "mean": 60.0}} for e in (1, 2, 3)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 4, "st')
    (run / "metrics.json").write_text(json.dumps({**_scores(60.0), "metric": "kNN", "epoch": 2, "best_epoch": 2}))
    old = (run / "log.jsonl").stat().st_mtime - 60
    os.utime(run / "metrics.json", (old, old))
    notes = load_run(run, "moco").notes
    assert not [n for n in notes if "damaged" in n], notes


# ---------------------------------------------------------------------- 5, 6. stops, and how to continue them
def test_an_unreadable_run_state_is_not_quoted_as_unfinished(tmp_path):
    from fewshot.report.runs import expand_runs

    done, open_ = tmp_path / "done", tmp_path / "open"
    for folder in (done, open_):
        _run(folder / "finetune_labelled", ["0", "1"])
        (folder / "run_state.json").write_text('{"finished": tr')
    (done / "summary.json").write_text(json.dumps({"stages": {}}))
    notes = [n for r in expand_runs([done]) for n in r.notes]
    assert not [n for n in notes if "stopped" in n or "unfinished" in n], notes
    notes = [n for r in expand_runs([open_]) for n in r.notes]
    assert [n for n in notes if "cannot be read" in n and "not known" in n], notes
    assert not [n for n in notes if "says unfinished" in n], notes


def test_a_stopped_stage_given_alone_is_told_its_fewshot_run_command(tmp_path):
    from fewshot.report.compare import run_compare

    folder = tmp_path / "pipe"
    _run(folder / "finetune_labelled", None, evaluated=False)
    (folder / "run_state.json").write_text(json.dumps({"finished": False, "config": {"data": {"root": "/d/x"}}}))
    out = io.StringIO()
    run_compare([str(folder / "finetune_labelled")], file=out)
    text = " ".join(out.getvalue().split())
    assert f"fewshot run --data /d/x --out {folder} --resume" in text, text
    assert "the same command with --resume" not in text


# ---------------------------------------------------------------------- 7. skipped or dropped semi-supervision
def test_method_words_say_skipped_rounds_and_dropped_parts(tmp_path):
    from fewshot.report.run_method import method_words
    from fewshot.report.runs import expand_runs

    def pipeline(name: str, summary: dict, semi_method: str = "pseudo") -> Path:
        folder = tmp_path / name
        _run(folder / "finetune_labelled", ["0", "1"], {"run": {"semi_method": semi_method}})
        (folder / "run_state.json").write_text(json.dumps({"finished": True}))
        (folder / "summary.json").write_text(json.dumps({"stages": {"finetune_labelled": {"epochs": 3}}, **summary}))
        return folder

    skipped = pipeline("skip", {"self_training_skipped": {"rounds": [2], "why": "no time"}})
    dropped = pipeline("drop", {"fixmatch_skipped": {"why": "no time"}, "pretrain_skipped": {"why": "no time"}},
                       semi_method="off")
    words = [method_words(r) for r in expand_runs([skipped, dropped])]
    assert words == ["labelled only (self-training skipped)", "labelled only (--pretrain skipped, --semi fixmatch skipped)"]
