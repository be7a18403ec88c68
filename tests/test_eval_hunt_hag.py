"""Eval, probe and predict: what their outputs may replace, the balancing a `fewshot run` folder recorded, the words
for undecodable val images, benchmarks/tta.py on a run whose later round was skipped, and prototype heads."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from helpers.checks import run_main, train_tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory) -> Path:
    """One 1-epoch run on both datasets (read-only)."""
    return train_tiny(digits_root, tmp_path_factory.mktemp("hunt") / "run", epochs=1)


def fake_run(trained: Path, where: Path, stages: tuple[str, ...], predicted_with: str, balance: str | None) -> Path:
    """A `fewshot run` folder around copies of ``trained``: its stages, and summary.json naming the one that
    predicted and (``balance``) the run.balance it predicted with."""
    for stage in stages:
        shutil.copytree(trained, where / stage)
    summary: dict = {"predicted_with": predicted_with, "stages": {s: {} for s in stages}}
    if balance is not None:
        summary["balanced_prediction"] = {"setting": balance, "datasets": {}}
    (where / "summary.json").write_text(json.dumps(summary))
    return where


# ----------------------------------------------------------------------------- outputs of eval and probe


def test_eval_out_replaces_only_its_own_earlier_metrics(trained, digits_root, tmp_path):
    """`eval --out notes.md` replaced the markdown with JSON, and `--out p.json` an earlier predict's output."""
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    rc, _, err = run_main("predict", trained, "--data", digits_root, "--out", tmp_path / "p.json", "--device", "cpu")
    assert rc == 0, err
    predictions = (tmp_path / "p.json").read_text()
    for out in (notes, tmp_path / "p.json"):
        rc, _, err = run_main("eval", trained, "--data", digits_root, "--out", out, "--device", "cpu")
        assert rc == 2 and f"--out {out} already holds a file that is not an earlier result of `fewshot eval`" in err
        assert "Traceback" not in err and f"move {out} away" in err, err
    assert notes.read_text() == "# my notes\n" and (tmp_path / "p.json").read_text() == predictions
    # a new file, an empty one and eval's own earlier output may be written
    (tmp_path / "empty.json").touch()
    for out in (tmp_path / "m.json", tmp_path / "m.json", tmp_path / "empty.json"):
        rc, _, err = run_main("eval", trained, "--data", digits_root, "--out", out, "--device", "cpu")
        assert rc == 0, err
        assert json.loads(out.read_text())["split"] == "val"


def test_eval_out_rerun_with_another_split_or_mode_replaces_its_earlier_val_result(trained, digits_root, tmp_path):
    """An earlier `eval --out` of the val split is eval's own: a rerun for the test split or --mode unknown (whose
    metrics hold other fields) replaces it, in a run folder as elsewhere."""
    for out in (tmp_path / "m.json", trained / "eval_notes.txt"):
        rc, _, err = run_main("eval", trained, "--data", digits_root, "--out", out, "--device", "cpu")
        assert rc == 0, err
        for more in (("--split", "test"), ("--mode", "unknown"), ("--split", "test", "--mode", "unknown")):
            rc, _, err = run_main("eval", trained, "--data", digits_root, "--out", out, "--device", "cpu", *more)
            assert rc == 0, err
            assert json.loads(out.read_text())["split"] == ("test" if "test" in more else "val")
    (trained / "eval_notes.txt").unlink()  # the run is shared by the module's tests


def test_probe_replaces_only_its_own_earlier_metrics_json(digits_root, tmp_path):
    """`probe --out pp` replaced the user's pp/metrics.json without a word."""
    pp = tmp_path / "pp"
    pp.mkdir()
    (pp / "metrics.json").write_text('{"my": "notes"}')
    probe = ("probe", "--weights", "", "--model", "test_resnet", "--img-size", "32", "--data", digits_root,
             "--head", "prototype", "--device", "cpu", "--no-progress", "--out", pp)
    rc, _, err = run_main(*probe)
    assert rc == 2 and "not an earlier result of `fewshot probe`" in err and str(pp / "metrics.json") in err, err
    assert (pp / "metrics.json").read_text() == '{"my": "notes"}'
    (pp / "metrics.json").unlink()
    for _ in range(2):  # a new file, then probe's own
        rc, _, err = run_main(*probe)
        assert rc == 0, err
        assert json.loads((pp / "metrics.json").read_text())["protocol"] == "prototype (SimpleShot)"
    # another head over the earlier prototype result: still probe's own
    rc, _, err = run_main(*("linear" if a == "prototype" else a for a in probe), "--epochs", "2")
    assert rc == 0, err
    assert json.loads((pp / "metrics.json").read_text())["protocol"] != "prototype (SimpleShot)"


# ----------------------------------------------------------------------------- the run's recorded run.balance


def test_eval_and_predict_of_a_fewshot_run_folder_balance_as_the_run_recorded(trained, digits_root, tmp_path):
    """`predict RUN` of a run.balance=off run balanced with auto (its predictions differed from RUN/pred_all.json),
    and `eval RUN --split test` scored otherwise than RUN/metrics.json, without a word."""
    off = fake_run(trained, tmp_path / "off", ("finetune",), "finetune", "off")
    rc, stdout, err = run_main("eval", off, "--data", digits_root, "--split", "test", "--out", tmp_path / "m.json",
                               "--device", "cpu")
    assert rc == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["balance"] == "off"
    assert "--balance off" in stdout and "class-balanced test predictions" not in stdout
    # a --balance typed now wins, with a note that it differs from the run's
    rc, _, err = run_main("eval", off, "--data", digits_root, "--split", "test", "--out", tmp_path / "m.json",
                          "--device", "cpu", "--balance", "on")
    assert rc == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["balance"] == "on"
    assert "--balance on differs from the run.balance off" in err, err
    on = fake_run(trained, tmp_path / "on", ("finetune_labelled", "finetune"), "finetune", "on")
    # the run, the stage that predicted and its checkpoint: the same model, balanced as the run recorded
    for read in (on, on / "finetune", on / "finetune" / "checkpoints" / "best.pt"):
        rc, stdout, err = run_main("predict", read, "--data", digits_root, "--out", tmp_path / "p.json",
                                   "--device", "cpu")
        assert rc == 0, err
        assert "class-balanced test predictions (--balance on)" in stdout, stdout
        assert f"the run.balance recorded for {read}" in stdout, stdout
    # a stage that did not predict (round 1 of a later round's run), a summary without the record: auto, no note
    plain = fake_run(trained, tmp_path / "plain", ("finetune",), "finetune", None)
    for read in (on / "finetune_labelled", on / "finetune_labelled" / "checkpoints" / "best.pt", plain,
                 plain / "finetune"):
        rc, stdout, err = run_main("predict", read, "--data", digits_root, "--out", tmp_path / "q.json",
                                   "--device", "cpu")
        assert rc == 0, err
        assert "(--balance auto)" in stdout and "run.balance" not in stdout + err


# ----------------------------------------------------------------------------- undecodable val images


def test_undecodable_val_images_are_said_as_left_out_of_the_balancing_not_as_skip_bad_images(trained, copy_root,
                                                                                              tmp_path):
    """predict without --skip-bad-images said "skipping N undecodable image(s) (--skip-bad-images)" and listed every
    val file, for images it only reads to decide the balancing."""
    name = sorted(p.name for p in copy_root.iterdir() if (p / "val").is_dir())[0]
    bad = sorted((copy_root / name / "val").glob("*/*"))
    for f in bad:
        f.write_text("x")
    rc, _, err = run_main("predict", trained, "--data", copy_root, "--out", tmp_path / "p.json", "--device", "cpu",
                          "--balance", "on", "--no-progress")
    assert rc == 0, err
    assert "--skip-bad-images" not in err and "skipping" not in err, err
    line = next(s for s in err.splitlines() if "cannot be decoded" in s)
    assert f"{len(bad)} of the {len(bad)} val images of {name}" in line and "left out of" in line
    assert sum(str(f) in err for f in bad) == 3 and f"and {len(bad) - 3} more" in line, err
    assert len(json.loads((tmp_path / "p.json").read_text())[name]) > 0


# ----------------------------------------------------------------------------- benchmarks/tta.py


def test_tta_rounds_reads_the_stage_that_predicted_when_round_2_was_skipped(trained, digits_root, tmp_path,
                                                                             monkeypatch, capsys):
    """`tta.py --rounds RUN` opened RUN/finetune, which a run whose round 2 was skipped lacks: a traceback."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    tta = importlib.import_module("tta")
    run = fake_run(trained, tmp_path / "st", ("finetune_labelled", "finetune_round1"), "finetune_round1", "auto")
    results = tmp_path / "tta.json"
    monkeypatch.setattr(sys, "argv", ["tta.py", "--rounds", str(run), "--data", str(digits_root),
                                      "--results", str(results)])
    tta.main()
    row = json.loads(results.read_text())["runs"][str(run)]
    assert {"plain", "tta_shift", "tta_flip", "rounds_1_and_last"} <= set(row) and "rounds_1_and_2" not in row
    assert json.loads(results.read_text())["last_round"] == {str(run): "finetune_round1"}  # named for what it is
    # a run without a round 1: said, not a traceback
    single = fake_run(trained, tmp_path / "single", ("finetune",), "finetune", "auto")
    monkeypatch.setattr(sys, "argv", ["tta.py", "--rounds", str(single), "--data", str(digits_root),
                                      "--results", str(results)])
    with pytest.raises(SystemExit, match="has no round 1"):
        tta.main()


# ----------------------------------------------------------------------------- prototype heads


def test_a_prototype_class_without_features_is_never_predicted():
    """A class with no train features kept a zero weight: its logit 0 beat every class of negative cosine, so it
    was predicted for images of other classes (the data checks refuse such a class first; a head init may not)."""
    from fewshot.models.classifier import LinearHead

    feats = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    head = LinearHead(4, 3).eval().set_prototypes(feats, torch.tensor([0, 0, 0, 2, 2, 2]))
    logits = head(-feats)  # images of negative cosine to both means: class 1 (no mean) scored 0 and won
    assert not (logits.argmax(1) == 1).any()
    assert torch.all(logits[:, 1] < logits[:, [0, 2]].min(1).values)
