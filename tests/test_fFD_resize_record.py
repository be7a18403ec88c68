"""The `_resize` record read back (review rev89 #1, #2): a hand-edited entry is refused naming its file and field,
and an edited choice is refused on --resume as a change of data.resize is."""

from __future__ import annotations

import torch
from helpers.checks import run_main
from helpers.tiny import tiny_train_argv
from test_fEQ_resize import tall_root


def _trained(tmp_path):
    """A tiny run on 3:1 digits: auto pads them and records `digits: pad`."""
    root = tall_root(tmp_path / "root")
    run = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(root, run))
    assert rc == 0, err
    assert "digits: pad" in (run / "config.yaml").read_text()
    return root, run


def _resume(root, run):
    argv = tiny_train_argv(root, run)
    argv[argv.index("--epochs") + 1] = "2"
    return run_main(*argv, "--resume")


def _edit_yaml(run, new):
    path = run / "config.yaml"
    path.write_text(path.read_text().replace("digits: pad", new))


def test_predict_refuses_a_checkpoint_record_with_a_number_key(tmp_path):
    root, run = _trained(tmp_path)
    best = run / "checkpoints" / "best.pt"
    ck = torch.load(best, weights_only=False)
    ck["config"]["_resize"] = {1: "crop", "digits": "pad"}
    torch.save(ck, best)
    rc, _, err = run_main("predict", best, "--data", root, "--out", tmp_path / "p.json", "--device", "cpu")
    assert rc == 2, err
    assert "internal error" not in err and "_resize" in err and str(best) in err and "1: 'crop'" in err, err


def test_resume_refuses_an_uppercase_choice_in_config_yaml(tmp_path):
    root, run = _trained(tmp_path)
    _edit_yaml(run, "digits: PAD")
    rc, _, err = _resume(root, run)
    assert rc == 2, err
    assert str(run / "config.yaml") in err and "_resize" in err and "'digits': 'PAD'" in err, err
    assert "crop or pad" in err, err


def test_resume_refuses_a_choice_edited_in_config_yaml(tmp_path):
    root, run = _trained(tmp_path)
    _edit_yaml(run, "digits: crop")
    rc, _, err = _resume(root, run)
    assert rc == 2, err
    assert "_resize.digits (pad in the run, crop now)" in err and "another --out" in err, err
    assert "digits: crop" in (run / "config.yaml").read_text()  # refused before the run rewrote anything


def test_resume_with_the_record_unchanged_goes_on(tmp_path):
    root, run = _trained(tmp_path)
    rc, _, err = _resume(root, run)
    assert rc == 0, err
    assert "digits: pad" in (run / "config.yaml").read_text()


PROBE = ("probe", "--weights", "", "--model", "test_resnet", "--img-size", "16", "--head", "prototype",
         "--device", "cpu", "--no-progress")


def test_probe_pads_a_tall_dataset_under_auto_as_train_does(tmp_path):
    """probe always cropped: its baseline scored other pixels than a run on the same 3:1 images (rev89 #4)."""
    from fewshot.data.cache import default_cache_dir, is_cached
    from test_fFB_resize_per_dataset import _paths

    root = tall_root(tmp_path / "root")
    rc, out, err = run_main(*PROBE, "--data", root)
    assert rc == 0, err
    assert "padded to a square (data.resize): digits" in out, out
    train = _paths(root, "train")
    assert is_cached(train, 16, default_cache_dir(root, None), resize="pad")
    assert not is_cached(train, 16, default_cache_dir(root, None), resize="crop")
    rc, out, err = run_main(*PROBE, "--data", root, "data.resize=crop")
    assert rc == 0, err
    assert "padded" not in out and is_cached(train, 16, default_cache_dir(root, None), resize="crop"), out
    rc, _, err = run_main(*PROBE, "--data", root, "data.resize=PADDED")
    assert rc == 2 and "data.resize" in err, err


def test_a_train_of_its_own_inside_a_run_folder_is_no_run_stage(tmp_path):
    """`fewshot train --out RUN/mine` was taken for a `fewshot run` stage (its parent holds run_state.json): no budget
    reserve, and a refused --resume advised `fewshot run` (rev89 #6). A stage's own folder name still is one."""
    from fewshot.run_state import is_run_stage
    from helpers.tiny import build_digits

    root = build_digits(tmp_path / "root", shots=2)
    run = tmp_path / "pipeline"
    run.mkdir()
    (run / "run_state.json").write_text("{}")
    assert is_run_stage(run / "finetune_round2") and is_run_stage(run / "pretrain")
    rc, _, err = run_main(*tiny_train_argv(root, run / "mine"))
    assert rc == 0, err
    rc, _, err = run_main(*tiny_train_argv(root, run / "mine", "optim.lr=0.5"), "--resume")
    assert rc == 2 and "optim.lr" in err, err
    assert "`fewshot run` starts over" not in err and "fewshot train --weights" in err, err
