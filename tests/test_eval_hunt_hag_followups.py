"""Review follow-ups of the eval/weights/data hunts: a prototype class without images costs a label-smoothed loss
little, a `fewshot run` stage balances as the run recorded, one rule for eval's earlier metrics, our own outputs
told by size first, the weights under any wrapper key, and a home folder with train/ and val/ is no dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from fewshot.data import layout, output_guard
from fewshot.eval import balancing, output_files
from fewshot.models.weights import backbone_state_from

# ----------------------------------------------------------------------------- prototype heads


def test_a_prototype_class_without_images_costs_a_label_smoothed_loss_little():
    """Its bias of -1e4 added ~eps / C x 1e4 per such class to the loss (10 classes: 6.1 -> 106), and its logit
    could never come back; it still scores below every class on the train features."""
    from fewshot.models.classifier import LinearHead

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 8, generator=g) + 2.0
    targets = torch.arange(40) % 5  # classes 5..9 have no images
    head = LinearHead(8, 10).eval().set_prototypes(feats, targets)
    logits = head(feats)
    assert torch.all(logits[:, 5:].max(1).values < logits[:, :5].min(1).values)
    assert torch.all(head.fc.bias[5:] > -50) and torch.all(head.fc.bias[:5] == 0)
    loss = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1)
    plain = torch.nn.functional.cross_entropy(logits[:, :5], targets, label_smoothing=0.1 * 5 / 10)
    assert loss < plain + 2.0, (loss, plain)


# ----------------------------------------------------------------------------- the run's recorded run.balance


def _run(tmp_path: Path, stages=("finetune_labelled", "finetune"), predicted_with="finetune", balance="off") -> Path:
    run = tmp_path / "run"
    for stage in stages:
        (run / stage / "checkpoints").mkdir(parents=True)
        (run / stage / "checkpoints" / "best.pt").write_bytes(b"x")
    (run / "summary.json").write_text(json.dumps({"predicted_with": predicted_with,
                                                  "balanced_prediction": {"setting": balance}}))
    return run


def test_the_stage_that_predicted_and_its_checkpoints_have_the_runs_recorded_balance(tmp_path):
    """`predict RUN/finetune` balanced with auto where `predict RUN` took the run's run.balance off."""
    run = _run(tmp_path)
    # RUN/finetune/checkpoints: resolve_checkpoint takes its best.pt, as for RUN/finetune (test_fds_predict_inputs)
    for read in (run, run / "finetune", run / "finetune" / "checkpoints" / "best.pt", run / "finetune" / "checkpoints"):
        assert balancing.recorded_balance(read) == "off", read
    for read in (run / "finetune_labelled", run / "finetune_labelled" / "checkpoints" / "best.pt",
                 run / "finetune_labelled" / "checkpoints", tmp_path):
        assert balancing.recorded_balance(read) is None, read
    (run / "summary.json").write_text("not json")
    assert balancing.recorded_balance(run / "finetune") is None


# ----------------------------------------------------------------------------- earlier results, one rule


def test_eval_metrics_are_told_by_one_rule_inside_a_run_folder_and_elsewhere(tmp_path):
    """layout's check wanted a .json name and took any dict with datasets/split/checkpoint; predict's check took
    any name and wanted `datasets` a dict: `eval --out RUN/m.txt` ran once and was refused the second time."""
    metrics = {"datasets": {"digits": {"acc1": 50.0}}, "mean": {}, "split": "val", "checkpoint": "r/best.pt"}
    txt = tmp_path / "m.txt"
    txt.write_text(json.dumps(metrics))
    listed = tmp_path / "l.json"
    listed.write_text(json.dumps({**metrics, "datasets": ["digits"]}))
    for path in (txt, listed):
        assert output_guard._earlier_result(path, "metrics") == output_files.holds_metrics(
            path, output_files.EVAL_METRICS) == (path is txt), path
    pred = tmp_path / "p.txt"
    pred.write_text(json.dumps({"n_parameters": 3, "digits": {"0": 1}}))
    assert output_guard._earlier_result(pred, "predictions") and output_files.holds_predictions(pred)
    assert not output_guard._earlier_result(pred, "metrics") and not output_guard._earlier_result(txt, "predictions")


def test_a_file_larger_than_any_output_of_ours_is_not_read(tmp_path, monkeypatch):
    """_read_own_output read the whole file to decide (a user's dump of gigabytes went into memory)."""
    pred = tmp_path / "p.json"
    pred.write_text(json.dumps({"n_parameters": 3, "digits": {str(i): 1 for i in range(100)}}))
    assert output_files.holds_predictions(pred)
    monkeypatch.setattr(output_files, "OWN_OUTPUT_MAX_BYTES", pred.stat().st_size - 1, raising=False)
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("read a file over the bound"))
    assert not output_files.holds_predictions(pred)


def test_undecodable_val_images_are_listed_as_other_cut_lists(capsys):
    """_say_val_left_out cut its list in its own words; layout.some_of says every cut list's."""
    bad = [(f"v/{i}.png", "not an image") for i in range(5)]
    balancing._say_val_left_out("digits", bad, 9, "--balance")
    err = capsys.readouterr().err
    assert "5 of the 9 val images of digits" in err
    assert layout.some_of([f"{p} ({w})" for p, w in bad], 3, str) in err and err.count("v/") == 3, err


# ----------------------------------------------------------------------------- weights under any wrapper key


def _state() -> dict:
    from fewshot.models.backbone import create_backbone

    return create_backbone("test_resnet", img_size=32).state_dict()


@pytest.mark.parametrize("shape", ["metadata_model_then_model_state", "empty_state_dict_then_model"])
def test_the_wrapper_key_holding_the_most_tensors_is_the_state_dict(tmp_path, shape):
    """Only the first WRAPPERS key holding a dict was looked in: these ended with "holds no tensors"."""
    state = _state()
    obj = ({"model": {"arch": "test_resnet"}, "model_state": state} if shape.startswith("metadata")
           else {"state_dict": {}, "model": state})
    assert set(backbone_state_from(obj, tmp_path / "w.pt")) == set(state)


def test_the_official_moco_checkpoint_with_its_optimizer_loads_the_query_encoder(tmp_path):
    """moco/main_moco.py: {'epoch', 'arch', 'state_dict': module.encoder_q.* / encoder_k.* / queue, 'optimizer'}."""
    state = _state()
    sd = {**{f"module.encoder_q.{k}": v for k, v in state.items()},
          **{f"module.encoder_k.{k}": v + 1 for k, v in state.items() if v.is_floating_point()},
          "module.queue": torch.randn(16, 8), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    optimizer = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.03, "params": [0]}]}
    obj = {"epoch": 200, "arch": "test_resnet", "state_dict": sd, "optimizer": optimizer}
    got = backbone_state_from(obj, tmp_path / "checkpoint_0199.pth.tar")
    assert set(got) == set(state) and all(torch.equal(got[k], v) for k, v in state.items())


# ----------------------------------------------------------------------------- a folder of the data


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8)).save(path)


def test_a_home_folder_with_train_and_val_is_no_dataset(tmp_path):
    """The walk went up to /: any --out under ~/train/ was "a folder of the data" once ~/val/ existed."""
    home = tmp_path / "home"
    (home / "train" / "project" / "out").mkdir(parents=True)
    (home / "train" / "project" / "notes.txt").write_text("x")
    (home / "val").mkdir()
    (home / "unlabeled").mkdir()
    assert output_guard.data_folder_around(home / "train" / "project" / "out") is None
    assert output_guard.data_folder_around(home / "unlabeled") is None
    # a dataset holding images is one, however deep its --out lies
    _image(home / "data" / "ds" / "train" / "a" / "0.png")
    _image(home / "data" / "ds" / "test" / "0.png")
    (home / "data" / "unlabeled").mkdir()
    assert output_guard.data_folder_around(home / "data" / "ds" / "train" / "a") == (home / "data",
                                                                                     "the train/ split of ds")
    assert output_guard.data_folder_around(home / "data" / "unlabeled") == (home / "data", "the unlabeled pool")
