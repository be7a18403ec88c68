"""benchmarks/heldout_shapes.py's builder at a tiny scale: a root fewshot.data accepts, with the promised shapes,
formats and class counts, and the pool truth beside it; and its scoring helpers on a made-up run."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from fewshot.data.layout import scan_root
from fewshot.data.roots import list_datasets

REPO = Path(__file__).resolve().parents[1]
SCALE = 0.1


@pytest.fixture(scope="module")
def shapes():
    """The benchmark script as a module."""
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(REPO / "benchmarks"))
    yield importlib.import_module("heldout_shapes")
    mp.undo()


@pytest.fixture(scope="module")
def built(shapes, tmp_path_factory):
    """A root built at SCALE and its pool truth."""
    root = tmp_path_factory.mktemp("shapes") / "root"
    truth = shapes.build_root(root, seed=0, scale=SCALE)
    return root, json.loads(truth.read_text())


def kinds(files) -> Counter:
    """(format, mode) of each image file."""
    out = Counter()
    for f in files:
        with Image.open(f) as im:
            out[(im.format, im.mode)] += 1
    return out


def test_root_is_accepted_with_the_promised_classes(built):
    root, _ = built
    assert list_datasets(root) == ["binary", "mix20", "tintfash"]
    infos = {i.name: i for i in scan_root(root, splits=("train", "val", "test"))}
    assert {n: len(i.classes) for n, i in infos.items()} == {"binary": 2, "mix20": 20, "tintfash": 10}
    for info in infos.values():
        assert info.answer_key is not None and len(info.test) > 0
        assert len(json.loads(info.answer_key.read_text())) == len(info.test)
        assert set(json.loads(info.answer_key.read_text()).values()) <= set(info.classes)


def test_shapes_and_formats(built):
    root, _ = built
    files = {ds: [p for p in (root / ds).rglob("*") if p.is_file() and p.suffix != ".json"]
             for ds in ("binary", "mix20", "tintfash")}
    sizes = {ds: {Image.open(f).size for f in fs} for ds, fs in files.items()}
    assert sizes == {"binary": {(96, 64)}, "mix20": {(64, 96)}, "tintfash": {(96, 64)}}
    colour = {("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "P"), ("WEBP", "RGB"), ("BMP", "RGB"), ("TIFF", "RGB"),
              ("PNG", "RGBA")}
    assert set(kinds(files["tintfash"])) == colour
    assert set(kinds(files["mix20"])) == colour | {("PNG", "I;16"), ("JPEG", "L")}
    with Image.open(next(f for f in files["tintfash"] if f.suffix == ".png" and Image.open(f).mode == "P")) as im:
        assert "transparency" in im.info


def test_pool_truth_beside_the_root(built, shapes):
    root, truth = built
    assert shapes.truth_path(root).parent == root.parent and not (root / shapes.truth_path(root).name).exists()
    assert truth["build"] == {"seed": 0, "scale": SCALE, "files": sum(1 for p in root.rglob("*") if p.is_file())}
    for ds, pool in truth["datasets"].items():
        assert set(pool) == {p.name for p in (root / "unlabeled" / ds).iterdir()}
    binary = Counter(truth["datasets"]["binary"].values())
    assert binary == {"tshirt": 1, "shirt": 1, None: 8}  # mostly other classes
    assert None not in truth["datasets"]["tintfash"].values() and None not in truth["datasets"]["mix20"].values()


def test_build_is_deterministic_and_refuses_a_foreign_root(shapes, built, tmp_path):
    root, truth = built
    again = tmp_path / "root"
    assert json.loads(shapes.build_root(again, seed=0, scale=SCALE).read_text()) == truth
    files = {d: sorted(p.relative_to(d) for p in d.rglob("*")) for d in (root, again)}
    assert files[again] == files[root]
    assert (again / "binary" / "test_labels.json").read_text() == (root / "binary" / "test_labels.json").read_text()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    with pytest.raises(SystemExit, match="not built by this script"):
        shapes.build_root(foreign, scale=SCALE)


def test_scoring_helpers(shapes, built, tmp_path):
    """test_accuracy reads indices in sorted class folders against the names of the key; pseudo_precision counts
    pseudo-labels of other-class pool images as wrong; pool_warnings reads pool_classes_check."""
    root, truth = built
    keys = {ds: json.loads((root / ds / "test_labels.json").read_text()) for ds in shapes.DATASETS}
    classes = {ds: sorted(p.name for p in (root / ds / "train").iterdir()) for ds in shapes.DATASETS}
    pred = {ds: {i: classes[ds].index(c) for i, c in key.items()} for ds, key in keys.items()}
    first = next(iter(keys["mix20"]))
    pred["mix20"][first] = (pred["mix20"][first] + 1) % 20
    (tmp_path / "pred_all.json").write_text(json.dumps({**pred, "n_parameters": 1}))
    acc = shapes.test_accuracy(tmp_path / "pred_all.json", root)
    assert acc["binary"] == acc["tintfash"] == 100.0 and acc["mix20"] == pytest.approx(100.0 * 19 / 20)
    pool = truth["datasets"]["binary"]
    own = next(f for f, c in pool.items() if c == "shirt")
    other = next(f for f, c in pool.items() if c is None)
    images = [{"path": f"unlabeled/binary/{f}", "dataset": "binary", "class": "shirt", "confidence": 0.9}
              for f in (own, other)]
    (tmp_path / "pseudo_labels_round2.json").write_text(json.dumps({"images": images}))
    row = shapes.pseudo_precision(tmp_path, truth)["pseudo_labels_round2"]["binary"]
    assert row == {"kept": 2, "right": 1, "other_class": 1, "precision": 50.0}
    summary = {"stages": {"finetune": {"pseudo_labels": {"datasets": {
        "binary": {"pool_classes_check": {"suspect": True}}, "mix20": {"pool_classes_check": None}}}}}}
    assert shapes.pool_warnings(summary) == {"binary": True, "mix20": None, "tintfash": None}


def test_summary_medians_and_table(shapes):
    """Medians over seeds of run, train and of the per-seed difference; warnings listed by seed."""
    def seed(s: int, run: float, train: float, warned: bool) -> dict:
        test = {ds: run for ds in (*shapes.DATASETS, "mean")}
        last = {"binary": {"precision": 40.0 + s}}
        return {"seed": s, "run": {"test": test, "seconds": 120.0, "pseudo_precision_last_round": last,
                                   "pool_warning": {"binary": warned, "mix20": False, "tintfash": None}},
                "train": {"test": {ds: train for ds in test}, "seconds": 125.0}}

    rows = shapes.summarize([seed(0, 90.0, 80.0, True), seed(1, 70.0, 75.0, False), seed(2, 80.0, 80.0, True)])
    assert rows["binary"] == {"run": 80.0, "train": 80.0, "run_minus_train": 0.0, "pseudo_precision": 41.0,
                              "pool_warning_seeds": [0, 2]}
    assert rows["mix20"]["pool_warning_seeds"] == [] and rows["tintfash"]["pseudo_precision"] is None
    text = shapes.table(rows, 3)
    assert "median of 3 seed(s)" in text and "binary" in text and "0,2" in text
