"""--resume and the datasets a run trained on: the same datasets named in another order continue in the run's order
(the joint head's class offsets follow it), `run --resume` without --datasets takes the run's, and the messages
comparing a resume's settings with the run's word their values instead of printing Python's None/True/lists."""

from __future__ import annotations

import shutil

import pytest

from fewshot.cli import resolve_run_config
from fewshot.cli_moco import PRETRAIN_FLAGS
from fewshot.cli_parser import build_parser
from fewshot.config import save_yaml
from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.resume_config import resume_changes
from helpers.checks import run_main
from helpers.tiny import build_digits, pretrain_cfg

ORDER_NOTE = "are the run's in another order; it continues in its own order, digits, two"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two datasets of the same classes: digits and its copy two."""
    root = build_digits(tmp_path_factory.mktemp("two-datasets"))
    shutil.copytree(root / "digits", root / "two")
    return root


def train(root, out, *extra):
    return run_main("train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "32",
                    "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", *extra)


def test_train_resume_with_the_datasets_in_another_order_continues_in_the_runs_order(root, tmp_path):
    """It was refused: "the datasets or classes differ" while listing the same datasets."""
    out = tmp_path / "run"
    rc, _, err = train(root, out, "--datasets", "digits,two", "--epochs", "1")
    assert rc == 0, err
    rc, _, err = train(root, out, "--datasets", "two,digits", "--epochs", "2", "--resume")
    assert rc == 0, err
    assert ORDER_NOTE in err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["label_space"]["names"] == ["digits", "two"]


def test_pretrain_resume_with_the_datasets_in_another_order_keeps_the_runs_order(root, tmp_path, capsys):
    out = tmp_path / "moco"
    out.mkdir()
    save_yaml(pretrain_cfg(root, **{"data.datasets": "digits,two"}), out / "config.yaml")
    args, extra = build_parser().parse_known_args(["pretrain", "--data", str(root), "--out", str(out), "--resume",
                                                   "--datasets", "two,digits"])
    cfg = resolve_run_config(args, extra, PRETRAIN_FLAGS, default_preset="mocov2")
    assert cfg["data"]["datasets"] == "digits,two"
    assert ORDER_NOTE in capsys.readouterr().err


def run_command(root, out, *extra):
    return ["run", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "32", "--device", "cpu",
            *extra]


def test_run_resume_without_datasets_takes_the_runs(root, tmp_path, settings_only_run):
    """It was refused: "data.datasets ('two,digits' in the run, None now)"."""
    out = tmp_path / "run"
    assert run_main(*run_command(root, out, "--datasets", "digits,two", "--budget-minutes", "1"))[0] == 0
    rc, _, err = run_main(*run_command(root, out, "--resume"))
    assert rc == 0, err
    rc, _, err = run_main(*run_command(root, out, "--resume", "--datasets", "two,digits"))
    assert rc == 0, err
    assert ORDER_NOTE in err
    assert [c["data"]["datasets"] for c in settings_only_run] == ["digits,two"] * 3
    rc, _, err = run_main(*run_command(root, out, "--resume", "--datasets", "two"))  # other data: still refused
    assert rc == 2 and "data.datasets ('digits,two' in the run, 'two' now)" in err


def test_run_resume_words_the_settings_it_refuses(root, tmp_path, settings_only_run):
    """None, True and lists were printed as Python writes them."""
    out = tmp_path / "run"
    assert run_main(*run_command(root, out, "--budget-minutes", "1"))[0] == 0
    rc, _, err = run_main(*run_command(root, out, "--resume", "--datasets", "two", "--pretrain",
                                       "aug.scale=[0.1,1.0]"))
    assert rc == 2
    assert "data.datasets (every dataset under the root in the run, 'two' now)" in err
    assert "run.pretrain (false in the run, true now)" in err and "aug.scale ([0.2, 1.0] in the run," in err
    assert "None" not in err and "True" not in err and "False" not in err


def test_train_resume_words_the_settings_it_refuses():
    from fewshot.run_state import worded

    changed = resume_changes({"model.img_size": None, "model.small_stem": False, "data.unlabeled": None},
                             {"model.img_size": 32, "model.small_stem": True, "data.unlabeled": ["pool", "more"]})
    assert changed == ["model.img_size (the model's default input size in the run, 32 now)",
                       "model.small_stem (false in the run, true now)",
                       "data.unlabeled (ROOT/unlabeled/ in the run, [pool, more] now)"]
    assert worded("semi.method", False) == "'off'" and worded("train.threads", None) == "one thread per core"
