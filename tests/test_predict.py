"""`fewshot predict` and `fewshot eval` on a trained run: what they may write, which checkpoint they say they use,
and how they count undecodable test images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fewshot.data.output_guard import check_result_file_is_not_an_input
from fewshot.errors import UserError
from helpers.checks import run_main, train_tiny


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory) -> Path:
    """One 1-epoch run on both datasets (read-only: tests that change it take `run_copy`)."""
    return train_tiny(digits_root, tmp_path_factory.mktemp("predict") / "run", epochs=1)


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_eval_and_predict_refuse_to_replace_any_file_of_the_run(run_copy, digits_root):
    """`predict RUN --out RUN/config.yaml` exited 0 with pred_all.json in config.yaml (then `train --resume` and
    `compare` failed); so did RUN/metrics.json, RUN/log.jsonl, and RUN/checkpoints/last.pt given best.pt."""
    before = snapshot(run_copy)
    best = run_copy / "checkpoints" / "best.pt"
    for read in (run_copy, best):
        for out in ("config.yaml", "metrics.json", "metrics_known.json", "log.jsonl", "checkpoints/last.pt",
                    "checkpoints/new.json"):
            for cmd in (["predict", read], ["eval", read, "--split", "test"]):
                rc, _, err = run_main(*cmd, "--data", digits_root, "--out", run_copy / out, "--device", "cpu")
                assert rc == 2 and f"--out {run_copy / out}" in err and "Traceback" not in err, (cmd, out, err)
    assert snapshot(run_copy) == before
    # a new file in the run folder is fine, and so is the same command writing it again
    for cmd, out in ((["predict", best], "pred_all.json"), (["eval", run_copy, "--split", "test"], "test.json")):
        for _ in range(2):
            rc, _, err = run_main(*cmd, "--data", digits_root, "--out", run_copy / out, "--device", "cpu")
            assert rc == 0 and (run_copy / out).is_file(), err


def test_a_fewshot_run_folder_keeps_its_records_and_its_pred_all_json_can_be_written_again(trained, digits_root,
                                                                                              tmp_path):
    """A `fewshot run` DIR: its summary.json and metrics.json are its record, whether DIR or a stage is read;
    DIR/pred_all.json is what predict writes, so predicting into it again is allowed."""
    pipe = tmp_path / "pipe"
    shutil.copytree(trained, pipe / "finetune")
    (pipe / "summary.json").write_text(json.dumps({"predicted_with": "finetune", "stages": {}}))
    shutil.copy(trained / "metrics.json", pipe / "metrics.json")
    for read in (pipe, pipe / "finetune", pipe / "finetune" / "checkpoints" / "best.pt"):
        for out in ("summary.json", "metrics.json"):
            for cmd in (["predict", read], ["eval", read, "--split", "test"]):
                rc, _, err = run_main(*cmd, "--data", digits_root, "--out", pipe / out, "--device", "cpu")
                assert rc == 2 and "a file of the run it reads" in err, (cmd, out, err)
    assert json.loads((pipe / "summary.json").read_text())["predicted_with"] == "finetune"
    for _ in range(2):
        rc, _, err = run_main("predict", pipe, "--data", digits_root, "--out", pipe / "pred_all.json",
                              "--device", "cpu")
        assert rc == 0, err


def test_export_may_write_a_fewshot_run_backbone_again_but_no_other_file_of_the_run(tmp_path):
    """`fewshot run` exports its pretrain stage into DIR/backbone.safetensors (again on --resume): the check that
    keeps a run's files also guards `export`, with its own earlier output allowed."""
    pipe, root = tmp_path / "pipe", tmp_path / "root"
    (pipe / "pretrain" / "checkpoints").mkdir(parents=True)
    root.mkdir()
    ckpt = pipe / "pretrain" / "checkpoints" / "last.pt"
    ckpt.write_bytes(b"x")
    (pipe / "run_state.json").write_text("{}")
    (pipe / "backbone.safetensors").write_bytes(b"y")
    (pipe / "pretrain" / "config.yaml").write_text("model: {}\n")
    check_result_file_is_not_an_input(pipe / "backbone.safetensors", root, ckpt, kind="backbone")
    for out in (pipe / "run_state.json", pipe / "pretrain" / "config.yaml"):
        with pytest.raises(UserError, match="a file of the run it reads"):
            check_result_file_is_not_an_input(out, root, ckpt, kind="backbone")
    with pytest.raises(UserError, match="a file of the run it reads"):  # predict does not replace a backbone
        check_result_file_is_not_an_input(pipe / "backbone.safetensors", root, ckpt, kind="predictions")


def test_predict_and_eval_replace_only_their_own_earlier_output_in_a_run_folder(run_copy, digits_root):
    """`eval --out RUN/val.json` then `predict --out RUN/val.json` replaced the metrics with predictions (exit 0):
    the check could not tell one command's earlier output from the other's."""
    metrics_file, pred_file = run_copy / "val_metrics.json", run_copy / "preds.json"
    rc, _, err = run_main("eval", run_copy, "--data", digits_root, "--out", metrics_file, "--device", "cpu")
    assert rc == 0, err
    rc, _, err = run_main("predict", run_copy, "--data", digits_root, "--out", pred_file, "--device", "cpu")
    assert rc == 0, err
    before = metrics_file.read_bytes(), pred_file.read_bytes()
    rc, _, err = run_main("predict", run_copy, "--data", digits_root, "--out", metrics_file, "--device", "cpu")
    assert rc == 2 and "a file of the run it reads" in err, err
    rc, _, err = run_main("eval", run_copy, "--data", digits_root, "--out", pred_file, "--device", "cpu")
    assert rc == 2 and "a file of the run it reads" in err, err
    assert (metrics_file.read_bytes(), pred_file.read_bytes()) == before
    for command, out in (("eval", metrics_file), ("predict", pred_file)):  # each may write its own again
        rc, _, err = run_main(command, run_copy, "--data", digits_root, "--out", out, "--device", "cpu")
        assert rc == 0, err


def test_eval_and_predict_refuse_to_replace_the_files_of_another_run(run_copy, trained, digits_root, tmp_path):
    """`eval RUN_A --out RUN_B/checkpoints/best.pt` exited 0 and replaced run B's model with JSON: only the run
    being read was protected."""
    other = Path(shutil.copytree(trained, tmp_path / "other"))
    before = snapshot(other)
    for out in (other / "checkpoints" / "best.pt", other / "checkpoints" / "new.json", other / "config.yaml",
                other / "metrics.json"):
        for command in ("eval", "predict"):
            rc, _, err = run_main(command, run_copy, "--data", digits_root, "--out", out, "--device", "cpu")
            assert rc == 2 and f"the run in {other}" in err, (out, err)
    assert snapshot(other) == before
    rc, _, err = run_main("predict", run_copy, "--data", digits_root, "--out", other / "pred_a.json", "--device", "cpu")
    assert rc == 0, err  # a new file beside another run's stays allowed


def test_predict_names_its_checkpoint_and_warns_when_best_pt_is_missing(run_copy, digits_root, tmp_path):
    """It fell back to last.pt without a word when best.pt was deleted or the run had not been evaluated yet."""
    out = tmp_path / "p.json"
    rc, stdout, err = run_main("predict", run_copy, "--data", digits_root, "--out", out, "--device", "cpu")
    assert rc == 0 and f"predicting with {run_copy / 'checkpoints' / 'best.pt'} (epoch 1)" in stdout, err
    assert "warning" not in err
    (run_copy / "checkpoints" / "best.pt").unlink()
    last = run_copy / "checkpoints" / "last.pt"
    for cmd in (["predict", run_copy, "--out", out], ["eval", run_copy]):
        rc, stdout, err = run_main(*cmd, "--data", digits_root, "--device", "cpu")
        assert rc == 0, err
        assert f"{last} (epoch 1): {run_copy / 'checkpoints' / 'best.pt'} is missing" in err, (cmd, err)
    (run_copy / "metrics.json").unlink()  # as during training, before the first evaluation
    rc, _, err = run_main("predict", run_copy, "--data", digits_root, "--out", out, "--device", "cpu")
    assert rc == 0 and f"warning: predicting with {last}" in err and "looks unfinished" in err, err
    rc, _, err = run_main("predict", last, "--data", digits_root, "--out", out, "--device", "cpu")
    assert rc == 0 and "warning" not in err, err  # a file the user named is no fallback


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_best_pt_suggests_the_runs_last_pt(run_copy, digits_root, tmp_path, damage):
    best = run_copy / "checkpoints" / "best.pt"
    data = best.read_bytes()
    best.write_bytes({"truncated": data[:1000], "empty": b"", "garbage": b"garbage\n"}[damage])
    last = run_copy / "checkpoints" / "last.pt"
    for read in (run_copy, best):
        for cmd in (["predict", read, "--out", tmp_path / "p.json"], ["eval", read]):
            rc, _, err = run_main(*cmd, "--data", digits_root, "--device", "cpu")
            assert rc == 2 and f"pass {last} instead" in err and "Traceback" not in err, (cmd, err)
    rc, _, err = run_main("predict", last, "--data", digits_root, "--out", tmp_path / "p.json", "--device", "cpu")
    assert rc == 0, err


def test_eval_of_the_test_split_scores_undecodable_images_as_guesses_and_says_so(trained, copy_root,
                                                                               dataset_names, tmp_path):
    """--skip-bad-images leaves undecodable val images out, but scores test images as `predict` writes them (a
    blank image's guess), so that n counts every test image; the warning said "predicted", for a submission."""
    name = dataset_names[0]
    n_test = len(list((copy_root / name / "test").iterdir()))
    (copy_root / name / "test" / "5.png").write_bytes(b"not an image")
    out = tmp_path / "m.json"
    rc, _, err = run_main("eval", trained, "--data", copy_root, "--split", "test", "--skip-bad-images", "--out", out,
                          "--device", "cpu")
    assert rc == 0, err
    assert json.loads(out.read_text())["datasets"][name]["n"] == n_test
    assert "1 undecodable test image(s) (listed above) are scored as predicted from a blank image" in err
    assert "n includes them" in err


def test_a_folder_is_protected_as_a_run_only_where_a_training_wrote(run_copy, digits_root, tmp_path):
    """A user's own `mine/checkpoints/` folder was refused as "the checkpoints of the run in mine"; a project folder
    with its config.yaml (for --config) or a report's folder refused `eval --out metrics.json` the second time."""
    for out in (tmp_path / "mine" / "checkpoints" / "pred.json", tmp_path / "proj" / "metrics.json"):
        out.parent.mkdir(parents=True)
        (tmp_path / "proj" / "config.yaml").write_text("model: {}\n") if out.parent.name == "proj" else None
        command = "predict" if out.name == "pred.json" else "eval"
        for _ in range(2):
            rc, _, err = run_main(command, run_copy, "--data", digits_root, "--out", out, "--device", "cpu")
            assert rc == 0, err


def test_a_dataset_without_a_usable_test_split_gets_the_datasets_hint(trained, copy_root, dataset_names, tmp_path):
    """A missing dataset folder suggested --datasets; a missing or empty test/ of one dataset did not."""
    first, second = dataset_names
    shutil.rmtree(copy_root / second / "test")
    rc, _, err = run_main("predict", trained, "--data", copy_root, "--out", tmp_path / "pred_all.json")
    assert rc == 2 and "missing split folder 'test'" in err and f"pass --datasets {first}" in err, err
    rc, _, err = run_main("predict", trained, "--data", copy_root, "--datasets", first, "--out",
                          tmp_path / "pred_all.json")
    assert rc == 0, err


def test_the_datasets_hint_and_the_last_pt_hint_are_sentences_of_their_own(trained, copy_root, dataset_names,
                                                                          tmp_path):
    """An empty test/ read "...: no test images The model knows ...": the hint was joined to a message that ends
    without a full stop. So was the last.pt hint to checkpoint messages that end without one."""
    first, second = dataset_names
    for image in (copy_root / second / "test").iterdir():
        image.unlink()
    rc, _, err = run_main("predict", trained, "--data", copy_root, "--out", tmp_path / "pred_all.json")
    assert rc == 2 and f"{copy_root / second / 'test'}: no test images. The model knows {first}, {second}; " in err, err
    from fewshot.eval.predict import _then

    assert _then(UserError("weights file not found: x.pt"), "Pass y.") == "weights file not found: x.pt. Pass y."
    assert _then("x is empty (0 bytes).", "Pass y.") == "x is empty (0 bytes). Pass y."  # no second full stop


def test_probe_says_and_records_the_image_size_it_used(trained, digits_root, tmp_path):
    """Without --img-size the probe took the weights' own size (an export's 64 px) without a word; `train` says
    "at 64px". It says it when it starts, and metrics.json records it."""
    rc, out, err = run_main("probe", "--weights", trained / "checkpoints" / "best.pt", "--model", "test_resnet",
                            "--data", digits_root, "--epochs", "2", "--device", "cpu", "--out", tmp_path / "probe")
    assert rc == 0, err
    assert "probe: test_resnet" in out and " at 32px on cpu" in out
    assert json.loads((tmp_path / "probe" / "metrics.json").read_text())["img_size"] == 32
