"""Model names with a tag timm does not know, what `fewshot export --out` may replace and what it records, and the
data settings eval and predict take from a checkpoint (checked as the config's own values are)."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from fewshot.config import resolve
from fewshot.errors import CheckpointError, UserError
from fewshot.models.backbone import create_backbone, timm_name
from fewshot.ssl.export import export_backbone
from fewshot.ssl.pretrain_settings import resolve_pretrain_defaults
from fewshot.train.checkpoint import load_checkpoint, save_checkpoint
from helpers.checks import run_main

TINY = ["--model", "test_resnet", "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
        "--no-progress", "train.tensorboard=false", "train.threads=1"]


@pytest.fixture(scope="module")
def runs(digits_root, tmp_path_factory):
    """A tiny MoCo run at data.bit_depth=12 and a tiny fine-tuning run (read-only: tests copy what they change)."""
    tmp = tmp_path_factory.mktemp("guards")
    pre, ft = tmp / "pre", tmp / "ft"
    rc, _, err = run_main("pretrain", "--data", digits_root, "--out", pre, "--queue-size", "64", *TINY,
                          "moco.split_bn_groups=2", "data.bit_depth=12")
    assert rc == 0, err
    rc, _, err = run_main("train", "--data", digits_root, "--out", ft, *TINY)
    assert rc == 0, err
    return pre, ft


def _altered(ckpt: Path, dest: Path, change) -> Path:
    """A copy of the checkpoint ``ckpt`` at ``dest`` with ``change(ck)`` applied, saved as fewshot saves one."""
    ck = copy.deepcopy(load_checkpoint(ckpt))
    change(ck)
    for key in ("format", "version"):
        ck.pop(key, None)
    save_checkpoint(dest, ck)
    return dest


@pytest.mark.parametrize("name", ["test_resnet.bogus_tag", "test_resnet.", "TEST_RESNET.Bogus"])
@pytest.mark.parametrize("command", ["train", "pretrain", "run", "probe"])
def test_a_tag_timm_does_not_know_is_refused_before_any_work(command, name, digits_root, tmp_path):
    """`--model test_resnet.bogus_tag` (or `test_resnet.`) was an internal error (timm's "Invalid pretrained tag")
    once the model was built; now every command refuses it first, naming the name and the tags timm has."""
    out = tmp_path / "out"
    if command == "probe":
        argv = ["probe", "--weights", tmp_path / "none.safetensors", "--data", digits_root, "--model", name,
                "--device", "cpu"]
    elif command == "run":
        argv = ["run", "--data", digits_root, "--out", out, "--model", name, "--img-size", "16", "--device", "cpu"]
    else:
        argv = [command, "--data", digits_root, "--out", out, *TINY[2:], "--model", name]
    rc, _, err = run_main(*argv)
    assert rc == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert f"model {name}:" in err and "r160_in1k" in err and "without a tag" in err
    assert not out.exists()


def test_known_tags_and_case_pass_and_create_backbone_refuses_an_unknown_one():
    assert timm_name("test_resnet.r160_in1k") == "test_resnet.r160_in1k"
    assert timm_name("TEST_RESNET.R160_IN1K") == "test_resnet.r160_in1k"
    assert create_backbone("test_resnet.r160_in1k", img_size=16) is not None
    for name in ("test_resnet.nope", "test_resnet."):
        with pytest.raises(UserError, match="tags are r160_in1k"):
            create_backbone(name)


@pytest.fixture
def export_setup(runs, tmp_path):
    pre, _ = runs
    return pre, tmp_path


def test_export_refuses_to_replace_a_file_it_did_not_write(export_setup, digits_root):
    """`export RUN --out notes.txt` replaced the notes with safetensors (exit 0); so it did another data root's
    test_labels.json. An earlier export, an empty file and a new name may be written."""
    pre, tmp = export_setup
    notes = tmp / "notes.txt"
    notes.write_text("notes\n")
    other = tmp / "other" / "digits"
    other.mkdir(parents=True)
    key = shutil.copy(digits_root / "digits" / "test_labels.json", other / "test_labels.json")
    link = tmp / "link.safetensors"
    link.symlink_to(notes)
    for out in (notes, Path(key), link):
        before = Path(out).read_bytes()
        rc, _, err = run_main("export", pre, "--out", out)
        assert rc == 2 and f"--out {out} already holds a file that is not an earlier `fewshot export`" in err, err
        assert Path(out).read_bytes() == before
    empty, new = tmp / "empty.safetensors", tmp / "new.safetensors"
    empty.touch()
    for out in (empty, new, new):  # the last: its own earlier export
        rc, _, err = run_main("export", pre, "--out", out)
        assert rc == 0, err
        with safe_open(str(out), framework="pt") as fh:
            assert fh.metadata()["model"] == "test_resnet"


def test_export_without_following_links_replaces_a_link_not_its_target(export_setup):
    """`fewshot run` names RUN/backbone.safetensors itself: a link there is replaced, its target left alone."""
    pre, tmp = export_setup
    notes = tmp / "notes.txt"
    notes.write_text("notes\n")
    link = tmp / "backbone.safetensors"
    link.symlink_to(notes)
    export_backbone(pre, link)
    assert not link.is_symlink() and notes.read_text() == "notes\n"
    with pytest.raises(UserError, match="not an earlier `fewshot export`"):
        export_backbone(pre, notes)


def test_export_records_the_bit_depth_and_probe_reads_it(export_setup, digits_root):
    """An export of a data.bit_depth=12 run recorded none, so `probe --weights X.safetensors` read 16-bit images at
    16 bits while the run's last.pt said 12."""
    from fewshot.eval.probe import bit_depth_for, recorded_bit_depth

    pre, tmp = export_setup
    out = tmp / "bb.safetensors"
    assert run_main("export", pre, "--out", out)[0] == 0
    with safe_open(str(out), framework="pt") as fh:
        assert fh.metadata()["bit_depth"] == "12"
    assert recorded_bit_depth(out) == 12 == recorded_bit_depth(pre / "checkpoints" / "last.pt")
    assert bit_depth_for(out, None) == 12
    bad = _altered(pre / "checkpoints" / "last.pt", tmp / "bad.pt",
                   lambda ck: ck["config"]["data"].update(bit_depth=99))
    with pytest.raises(CheckpointError, match=f"{bad} cannot be exported.*data.bit_depth must be auto"):
        export_backbone(bad, tmp / "bad.safetensors")
    assert not (tmp / "bad.safetensors").exists()


def test_export_warning_numbers_a_stopped_epoch_as_the_log_does(runs, tmp_path, capsys):
    """A run stopped mid-epoch 1 saved epoch 0 and a step of epoch 1: export warned "exporting last.pt, epoch 0"
    and then wrote "(... epoch 1)"."""
    _, ft = runs
    run = Path(shutil.copytree(ft, tmp_path / "ft"))
    (run / "checkpoints" / "best.pt").unlink()
    last = run / "checkpoints" / "last.pt"
    _altered(last, last, lambda ck: ck.update(epoch=0, step_in_epoch=2))
    _, meta = export_backbone(run, tmp_path / "bb.safetensors")
    err = capsys.readouterr().err
    assert "exporting last.pt, epoch 1." in err and meta["epoch"] == "1"


@pytest.mark.parametrize("setting, words", [
    (None, "records no data settings"),  # the whole data section gone
    ({"crop_pct": 0}, "data.crop_pct must be in (0, 1], not 0"),
    ({"bit_depth": 99}, "data.bit_depth must be auto or a whole number from 8 to 16"),
    ({"skip_bad_images": "yes"}, "data.skip_bad_images must be true or false"),
], ids=["no-data", "crop-0", "bits-99", "skip-text"])
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_check_the_data_settings_a_checkpoint_records(runs, digits_root, tmp_path, command,
                                                                        setting, words):
    """A checkpoint is anyone's file: without config.data eval and predict raised KeyError (exit 1); crop_pct 0
    made every test image "undecodable" (with --skip-bad-images, blank predictions and exit 0); bit_depth 99 was
    taken."""
    _, ft = runs

    def alter(ck):
        if setting is None:
            del ck["config"]["data"]
        else:
            ck["config"]["data"].update(setting)

    bad = _altered(ft / "checkpoints" / "best.pt", tmp_path / "bad.pt", alter)
    out = tmp_path / "out.json"
    extra = ["--skip-bad-images"] if command == "predict" else []
    rc, _, err = run_main(command, bad, "--data", digits_root, "--out", out, "--device", "cpu", *extra)
    assert rc == 2 and str(bad) in err and "Traceback" not in err, err
    assert words in err
    assert not out.exists()


def test_a_recorded_setting_in_another_spelling_is_taken_as_config_takes_it(runs, digits_root, tmp_path):
    _, ft = runs
    ok = _altered(ft / "checkpoints" / "best.pt", tmp_path / "ok.pt",
                  lambda ck: ck["config"]["data"].update(bit_depth="12", crop_pct=1))
    out = tmp_path / "pred.json"
    rc, _, err = run_main("predict", ok, "--data", digits_root, "--out", out, "--device", "cpu")
    assert rc == 0, err
    assert json.loads(out.read_text())["n_parameters"] > 0


@pytest.mark.parametrize("symmetric, queue, refused", [(True, 12, True), (True, 16, False), (False, 8, False)])
def test_a_symmetric_queue_must_hold_both_views_keys(symmetric, queue, refused):
    """moco.symmetric enqueues 2 x the batch of keys each step: a queue of 12 for a batch of 8 passed the check and
    dropped keys before they ever served as negatives."""
    cfg = resolve(overrides=[f"moco.symmetric={str(symmetric).lower()}", f"moco.queue_size={queue}",
                             "train.batch_size=8", "model.name=test_resnet"])
    if refused:
        with pytest.raises(UserError, match="smaller than the 16 keys a step enqueues"):
            resolve_pretrain_defaults(cfg, 1)
    else:
        resolve_pretrain_defaults(cfg, 1)


def test_a_best_pt_refused_for_its_data_settings_offers_last_pt_only_when_that_is_usable(runs, digits_root,
                                                                                         tmp_path):
    """The last.pt hint judges the run's last.pt as best.pt was judged: with the same bad setting it was offered
    as "may be whole" and then refused."""
    _, ft = runs
    run = Path(shutil.copytree(ft, tmp_path / "ft"))
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    _altered(best, best, lambda ck: ck["config"]["data"].update(crop_pct=0))
    rc, _, err = run_main("eval", run, "--data", digits_root, "--device", "cpu")
    assert rc == 2 and f"pass {last} instead" in err, err
    _altered(last, last, lambda ck: ck["config"]["data"].update(crop_pct=0))
    rc, _, err = run_main("eval", run, "--data", digits_root, "--device", "cpu")
    assert rc == 2 and "last.pt cannot be used either: its config records an unusable data setting" in err, err


def test_export_to_stdout_appended_to_a_log_writes_through_the_shells_descriptor(runs, tmp_path):
    """`fewshot export RUN --out /dev/stdout >> log` was refused: the link was judged by its target, the user's
    non-empty log ("not an earlier export ... move /dev/stdout away"), though the write appends through the
    descriptor and replaces nothing."""
    from helpers import forked_cli

    pre, _ = runs
    log = tmp_path / "log"
    log.write_bytes(b"earlier lines\n")
    with open(log, "ab") as fh:  # what the shell's `>> log` gives the command as its stdout (a fork: no new imports)
        proc = forked_cli.fewshot("export", pre, "--out", "/dev/stdout", stdout=fh, stderr=forked_cli.PIPE, text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    got = log.read_bytes()
    assert got.startswith(b"earlier lines\n") and b'"__metadata__"' in got and b'"model":"test_resnet"' in got
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)  # `--out /dev/fd/N N>> log`, in this process
    try:
        rc, _, err = run_main("export", pre, "--out", f"/dev/fd/{fd}")
    finally:
        os.close(fd)
    assert rc == 0, err
    assert log.read_bytes().startswith(got) and log.read_bytes().count(b'"__metadata__"') == 2


def test_export_says_an_unreadable_file_cannot_be_read_not_that_it_is_no_export(runs, tmp_path, monkeypatch):
    """A file export could not read was called "not an earlier `fewshot export`", which it may well be."""
    import builtins

    import fewshot.ssl.export as export

    pre, _ = runs
    out = tmp_path / "bb.safetensors"
    assert run_main("export", pre, "--out", out)[0] == 0  # an earlier export, now unreadable
    before = out.read_bytes()
    out.chmod(0)
    if os.geteuid() == 0:  # root reads any file: the read fails as it does for anyone else

        def refused(path, *args, **kwargs):
            if Path(path) == out:
                raise PermissionError(13, "Permission denied", str(path))
            return builtins.open(path, *args, **kwargs)

        monkeypatch.setattr(export, "open", refused, raising=False)
    try:
        rc, _, err = run_main("export", pre, "--out", out)
    finally:
        out.chmod(0o644)
    assert rc == 2 and f"--out {out} already holds a file that cannot be read (Permission denied)" in err, err
    assert "not an earlier" not in err and f"make {out} readable" in err
    assert out.read_bytes() == before


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_bad_tag_read_from_a_checkpoint_says_where_the_name_came_from(runs, digits_root, tmp_path, command):
    """`fewshot eval RUN` of a checkpoint recording `test_resnet.bogus` was told "Give test_resnet without a tag
    ... --weights FILE", though the user typed no model name."""
    _, ft = runs

    def alter(ck):
        ck["model_name"] = ck["config"]["model"]["name"] = "test_resnet.Bogus"

    bad = _altered(ft / "checkpoints" / "best.pt", tmp_path / "bad.pt", alter)
    rc, _, err = run_main(command, bad, "--data", digits_root, "--out", tmp_path / "out.json", "--device", "cpu")
    assert rc == 2 and "Traceback" not in err, err
    assert "model test_resnet.Bogus (as recorded in the checkpoint, run or weights file given, not typed)" in err
    assert "no pretrained tag 'Bogus' for test_resnet" in err and "another timm version" in err
    assert "without a tag" not in err and "--weights" not in err


def test_a_bad_tag_is_quoted_as_typed():
    """`resnet18.A1` was reported as the tag 'a1'."""
    with pytest.raises(UserError, match=r"model TEST_RESNET\.R160: timm has no pretrained tag 'R160' for "
                                        r"test_resnet; .*Give test_resnet without a tag"):
        timm_name("TEST_RESNET.R160")


def test_train_with_weights_reads_images_at_the_bit_depth_they_record(export_setup, digits_root):
    """`train --weights` of a data.bit_depth=12 MoCo run fine-tuned at the 16-bit scale (probe, eval and predict
    read the recorded depth); a depth the user gives stays theirs."""
    import yaml

    pre, tmp = export_setup
    weights = ["--weights", pre / "checkpoints" / "last.pt", "--lr", "1e-3"]
    rc, _, err = run_main("train", "--data", digits_root, "--out", tmp / "adopted", *TINY, *weights)
    assert rc == 0, err
    assert "16-bit images are read as 12-bit (data.bit_depth=12)" in err
    cfg = yaml.safe_load((tmp / "adopted" / "config.yaml").read_text())
    assert cfg["data"]["bit_depth"] == 12
    rc, _, err = run_main("train", "--data", digits_root, "--out", tmp / "given", *TINY, *weights,
                          "data.bit_depth=auto")
    assert rc == 0, err
    assert "read as 12-bit" not in err
    assert yaml.safe_load((tmp / "given" / "config.yaml").read_text())["data"]["bit_depth"] == "auto"
