"""`fewshot probe` decodes with the data.bit_depth its --weights record (a fewshot checkpoint's config, an export's
metadata), as eval and predict take a run's from its checkpoint; a data.bit_depth word typed wins. It took the
setting by hand only, and probed a backbone learnt from 12-bit images on them at the 16-bit scale (dark)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fewshot.data.cache_words as cache_words
from fewshot.data.cache import cache_key
from helpers.checks import run_main
from helpers.tiny import build_digits

TINY = ("--model", "test_resnet", "--img-size", "32", "--device", "cpu", "--no-progress")


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(cache_words, "_WARNED", set())


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> tuple[Path, Path]:
    """The digits as 12-bit data in 16-bit PNG files, and a run trained on them with data.bit_depth=12."""
    tmp = tmp_path_factory.mktemp("twelve")
    root = build_digits(tmp / "root", shots=2)
    for png in (root / "digits").rglob("*.png"):
        values = np.asarray(Image.open(png).convert("L"), dtype=np.float64) / 255.0 * 4095.0
        Image.fromarray(values.round().astype(np.uint16)).save(png)
    shutil.rmtree(root / "unlabeled")
    rc, _, err = run_main("train", "--data", root, "--out", tmp / "run", *TINY, "--epochs", "1", "--batch-size", "8",
                          "data.bit_depth=12")
    assert rc == 0, err
    return root, tmp / "run"


def _probe(root: Path, weights, *words: str) -> tuple[int, str]:
    shutil.rmtree(root / ".fewshot_cache", ignore_errors=True)
    rc, _, err = run_main("probe", "--weights", weights, "--data", root, "--head", "prototype", *TINY, *words)
    return rc, err


def _decoded_at(root: Path, bits) -> bool:
    train = sorted((root / "digits" / "train").rglob("*.png"))
    return (root / ".fewshot_cache" / f"{cache_key(train, 32, 1.0, bits)}.u8").is_file()


def test_probe_takes_the_bit_depth_a_checkpoint_records(twelve):
    root, run = twelve
    weights = run / "checkpoints" / "best.pt"
    rc, err = _probe(root, weights)
    assert rc == 0, err
    assert f"note: 16-bit images are read as 12-bit (data.bit_depth=12), as {weights} records" in err, err
    assert "add data.bit_depth=12" not in err and _decoded_at(root, 12)  # no "decoded dark" warning: it fits
    # a word typed wins, without the note
    rc, err = _probe(root, weights, "data.bit_depth=auto")
    assert rc == 0 and "note: 16-bit images" not in err and _decoded_at(root, "auto"), err


def test_probe_takes_the_bit_depth_an_export_records(twelve, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    root, run = twelve
    export = tmp_path / "b.safetensors"
    rc, _, err = run_main("export", run, "--out", export)
    assert rc == 0, err
    with safe_open(str(export), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    for value, ok in (("12", True), ("99", False)):
        marked = tmp_path / f"b{value}.safetensors"
        save_file(tensors, str(marked), metadata={**meta, "bit_depth": value})
        rc, err = _probe(root, marked)
        if ok:
            assert rc == 0 and "as 12-bit (data.bit_depth=12)" in err and _decoded_at(root, 12), err
        else:  # a file may come from anyone: a value out of range is refused, naming the way on
            assert rc == 2 and "records data.bit_depth '99', not auto or a whole number from 8 to 16" in err, err
    assert meta["bit_depth"] == "12"  # the export records the run's setting (it recorded none)
    rc, err = _probe(root, export)
    assert rc == 0 and "as 12-bit (data.bit_depth=12)" in err and _decoded_at(root, 12), err
    # a file that records none (an older export): auto, as before
    plain = tmp_path / "plain.safetensors"
    save_file(tensors, str(plain), metadata={k: v for k, v in meta.items() if k != "bit_depth"})
    rc, err = _probe(root, plain)
    assert rc == 0 and "note: 16-bit images" not in err and _decoded_at(root, "auto"), err
