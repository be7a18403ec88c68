"""Five small faults: probe ignored data.bit_depth; train and run wrote into (or without) a read-only root's stale
image cache where predict used the user cache; `--model RESNET18` was refused; a resume refused for a changed class
order did not say so; the finished-run test was written twice."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fewshot.data.cache as cache
import fewshot.data.cache_words as cache_words
from fewshot.data.cache import cache_key
from helpers.checks import run_main
from helpers.run_patch import patch_pipeline
from helpers.tiny import build_digits

TINY = ("--model", "test_resnet", "--img-size", "32", "--device", "cpu", "--no-progress")


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(cache_words, "_WARNED", set())  # each test sees its own warnings, not an earlier test's


def twelve_bit_root(tmp_path: Path) -> Path:
    """The digits, stored as 12-bit data in 16-bit PNG files (values up to 4095)."""
    root = build_digits(tmp_path / "root", shots=2)
    for png in (root / "digits").rglob("*.png"):
        values = np.asarray(Image.open(png).convert("L"), dtype=np.float64) / 255.0 * 4095.0
        Image.fromarray(values.round().astype(np.uint16)).save(png)
    shutil.rmtree(root / "unlabeled")
    return root


# ------------------------------------------------------------------------------------------ probe data.bit_depth
def test_probe_decodes_with_the_bit_depth_given(tmp_path):
    """`probe ... data.bit_depth=12` was refused as an unrecognized argument, and probe decoded 12-bit images at
    the 16-bit scale (dark, in 17 grey levels) whatever the features were learnt from."""
    root = twelve_bit_root(tmp_path)
    probe = ("probe", "--weights", "", "--data", root, "--head", "prototype", *TINY)
    rc, _, err = run_main(*probe, "data.bit_depth=12")
    assert rc == 0, err
    assert "data.bit_depth=" not in err  # no "decode dark" warning: the setting fits the data
    entries = list((root / ".fewshot_cache").glob("*.u8"))
    assert len(entries) == 2 and all(np.fromfile(u8, dtype=np.uint8).max() > 200 for u8 in entries)  # bright
    train = sorted((root / "digits" / "train").rglob("*.png"))
    assert (root / ".fewshot_cache" / f"{cache_key(train, 32, 1.0, 12)}.u8").is_file()
    # without it: the 16-bit scale, and the warning now names probe among the commands that take the setting
    shutil.rmtree(root / ".fewshot_cache")
    rc, _, err = run_main(*probe)
    assert rc == 0 and "add data.bit_depth=12 to the train, pretrain, run or probe command" in err, err


def test_probe_checks_its_bit_depth_and_refuses_other_words(tmp_path):
    rc, _, err = run_main("probe", "--weights", "", "--data", tmp_path, *TINY, "data.bit_depth=7")
    assert rc == 2 and "data.bit_depth must be auto or a whole number from 8 to 16" in err, err
    rc, _, err = run_main("probe", "--weights", "", "--data", tmp_path, *TINY, "data.bit_depth=12", "optim.lr=1")
    assert rc == 2 and "unrecognized arguments: optim.lr=1 (" in err and "probe takes data.bit_depth=N" in err, err
    rc, out, _ = run_main("probe", "--help")
    assert rc == 0 and re.search(r"\[--no-progress\]\s+\[data\.bit_depth=N\]", out), out  # the usage lists every flag


# ------------------------------------------------------------------------ a read-only root's stale image cache
def read_only_cache(monkeypatch, root: Path) -> None:
    """ROOT and its .fewshot_cache as on a read-only mount: os.access says so, and a temporary file cannot be made
    there (the tests may run as root, who writes anyway)."""
    real_access, real_mkstemp = os.access, cache.tempfile.mkstemp
    root = root.resolve()

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(os.path.abspath(path)).is_relative_to(root):
            return False
        return real_access(path, mode, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(os.path.abspath(dir)).is_relative_to(root):
            raise PermissionError(30, "Read-only file system", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(cache.tempfile, "mkstemp", mkstemp)


def stale_cache(root: Path) -> list[str]:
    stale = root / ".fewshot_cache"
    stale.mkdir()
    (stale / ("0" * 20 + ".u8")).write_bytes(b"\0")
    (stale / ("0" * 20 + ".json")).write_text("{}")
    return sorted(p.name for p in stale.iterdir())


def test_train_on_a_read_only_root_with_a_stale_cache_uses_the_user_cache(tmp_path, monkeypatch):
    """predict fell back to the user cache there; train (and run, pretrain: the same load_images) warned "could not
    write the image cache" and decoded every image again in every command."""
    root = build_digits(tmp_path / "root", shots=2)
    before = stale_cache(root)
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    read_only_cache(monkeypatch, root)
    argv = ("train", "--data", root, "--epochs", "1", "--batch-size", "8", *TINY, "train.tensorboard=false")
    rc, _, err = run_main(*argv, "--out", tmp_path / "run")
    assert rc == 0 and "could not write" not in err, err
    assert sorted(p.name for p in (root / ".fewshot_cache").iterdir()) == before  # read only
    entries = sorted((xdg / "fewshot").glob("*/*.u8"))
    assert len(entries) == 2, entries  # train and val, in the user cache
    rc, _, err = run_main(*argv, "--out", tmp_path / "again")
    assert rc == 0, err
    assert sorted((xdg / "fewshot").glob("*/*.u8")) == entries  # read again, not decoded into new entries
    # a cache prebuilt beside the read-only root for these images is still read from there
    shutil.rmtree(xdg)
    paths = sorted((root / "digits" / "train").rglob("*.png"))
    key = cache_key(paths, 32, 1.0)
    assert cache.entry_dir(root / ".fewshot_cache", key).is_relative_to(xdg)
    (root / ".fewshot_cache" / f"{key}.u8").write_bytes(b"\0")
    (root / ".fewshot_cache" / f"{key}.json").write_text("{}")
    assert cache.entry_dir(root / ".fewshot_cache", key) == root / ".fewshot_cache"


# ------------------------------------------------------------------------------------- model names in any case
def test_a_model_name_in_another_case_is_timms(monkeypatch):
    """`--model RESNET18` was refused with resnet18 suggested: the one timm name that matches ignoring case is
    used, with a note naming it (once), in the run's config as well, so that a resume and the export name it."""
    import fewshot.models.backbone as backbone
    from fewshot.config import resolve

    monkeypatch.setattr(backbone, "_NAMED", set())
    net = backbone.create_backbone("Test_ResNet")
    assert sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for p in backbone.create_backbone("test_resnet").parameters())
    assert backbone.timm_name("RESNET18.A1_IN1K") == "resnet18.a1_in1k"
    assert backbone.timm_name("resnet18") == "resnet18" and backbone.timm_name(None) is None
    assert backbone.timm_name("resnet18.A1_IN1K") == "resnet18.a1_in1k"  # matched arch, tag in timm's case
    with pytest.raises(backbone.UserError, match="unknown timm model 'RESNETT18'.*Similar names: resnet18"):
        backbone.create_backbone("RESNETT18")  # no match in any case: refused, with the names it may mean
    # the config of a train command records timm's name
    from fewshot.cli import TRAIN_FLAGS, _parse, resolve_run_config

    args, extra = _parse(["train", "--data", "d", "--out", "o", "--model", "TEST_RESNET"])
    assert resolve_run_config(args, extra, TRAIN_FLAGS)["model"]["name"] == "test_resnet"
    assert resolve(flags={"model.name": "TEST_RESNET"})["model"]["name"] == "TEST_RESNET"  # resolved by the CLI


def test_probe_takes_a_model_name_in_another_case(tmp_path):
    root = build_digits(tmp_path / "root", shots=1)
    rc, _, err = run_main("probe", "--weights", "", "--data", root, "--head", "prototype", "--model", "TEST_RESNET",
                          "--img-size", "32", "--device", "cpu", "--no-progress", "--out", tmp_path / "probe")
    assert rc == 0, err
    assert err.count("note: model TEST_RESNET: using timm's test_resnet") == 1, err
    assert json.loads((tmp_path / "probe" / "metrics.json").read_text())["model"] == "test_resnet"


# ------------------------------------------------------------------------------- a resume after the class order
def nfd_root(tmp_path: Path) -> Path:
    """A dataset whose class folders are written decomposed (as macOS writes them): a, e + U+0301 cole, zebra."""
    import unicodedata

    root = tmp_path / "root"
    for split in ("train", "val"):
        for name in ("a", unicodedata.normalize("NFD", "école"), "zebra"):
            folder = root / "ds" / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 90, np.uint8)).save(folder / "0.png")
    return root


def test_a_resume_across_the_class_order_change_says_why_it_is_refused(tmp_path):
    """A run started before classes followed their folder names as written recorded them in their NFC order
    (école after zebra); the same folders now give a, école, zebra, and --resume said only "ds's classes differ"."""
    from fewshot.data.label_space import LabelSpace
    from fewshot.data.layout import scan_root
    from fewshot.errors import UserError
    from fewshot.run_state import RunState
    from fewshot.train.supervised import SupervisedTask

    infos = scan_root(nfd_root(tmp_path), splits=("train", "val"))
    now = {info.name: list(info.classes) for info in infos}
    assert now == {"ds": ["a", "école", "zebra"]}
    old = {"ds": ["a", "zebra", "école"]}  # as the run recorded them
    expected = (r"class folders now give another order \(ds: zebra, école in the run's order, école, zebra in the "
                r"folders'\): classes follow the folder names as written .* Start a new run with another --out, or "
                r"rename these class folders to their composed form")
    with pytest.raises(UserError, match=f"^--resume continues '{tmp_path / 'run'}' with its classes in the order it "
                                        f"recorded, but the {expected}"):
        RunState(tmp_path / "run", {"classes": old}).check_same_data(now)
    task = SupervisedTask.__new__(SupervisedTask)  # `fewshot train --resume`: its checkpoint's label space
    task.space = LabelSpace.from_infos(infos)
    with pytest.raises(UserError, match=f"^--resume continues the run with its classes .*{expected}"):
        task.check_classes({"label_space": LabelSpace(("ds",), (tuple(old["ds"]),)).to_dict()})
    # other classes are still refused as such
    with pytest.raises(UserError, match="ds's classes differ"):
        RunState(tmp_path / "run", {"classes": {"ds": ["a", "b", "zebra"]}}).check_same_data(now)
    with pytest.raises(UserError, match="the datasets or classes differ"):
        task.check_classes({"label_space": LabelSpace(("ds",), (("a", "b"),)).to_dict()})
    RunState(tmp_path / "run", {"classes": now}).check_same_data(now)  # the same order: no refusal


# ------------------------------------------------------------------------------------------- the finished run test
def test_resume_state_and_a_new_runs_refusal_share_the_finished_run_test(tmp_path, monkeypatch):
    """resume_state repeated holds_finished_run's test (finished, and summary.json): now it asks it, with the state
    it read, so the two cannot drift apart."""
    import fewshot.pipeline as pipeline
    from fewshot.run_state import RunState, holds_finished_run

    out = tmp_path / "run"
    out.mkdir()
    data = {"finished": True, "budget_minutes": 1.0, "img_size": 32}
    (out / "run_state.json").write_text(json.dumps(data))
    (out / "summary.json").write_text(json.dumps({"done": 1}))
    assert holds_finished_run(out) and holds_finished_run(out, data)
    assert not holds_finished_run(out, {"finished": False})
    monkeypatch.setattr(RunState, "resume", classmethod(lambda cls, out, cfg, budget: cls(out, data)))
    run = pipeline.PipelineRun({"model": {"img_size": None}}, out, None, None, resume=True)
    run.requested = {}
    assert run.resume_state() == {"done": 1} and run.cfg["model"]["img_size"] == 32
    asked = []
    patch_pipeline(monkeypatch, "holds_finished_run", lambda folder, state=None: asked.append((folder, state)))
    assert run.resume_state() is None and asked == [(out, data)]
