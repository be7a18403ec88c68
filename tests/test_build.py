"""Tests for the demo dataset builder (fewshot.data.build)."""

from __future__ import annotations

import gzip
import json
import shutil
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot.data.build import CLASS_NAMES, DEFAULT_IDX_DIR, build_dataset, plan_splits, read_idx
from fewshot.errors import UserError

HAVE_FASHION = (DEFAULT_IDX_DIR / "train-images-idx3-ubyte.gz").is_file()
SMALL = dict(val_per_class=3, test_per_class=4, pool_per_class=5, progress=False)


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    data = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes() + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _synthetic_idx(folder: Path, per_class=(6, 3), gz=True) -> dict[str, np.ndarray]:
    """Tiny 4x5 IDX set whose every pixel equals the image's position, so images are traceable."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for split, n in zip(("train", "t10k"), per_class):
        labels = np.tile(np.arange(10), n)
        images = np.broadcast_to(np.arange(len(labels))[:, None, None], (len(labels), 4, 5))
        _write_idx(folder / f"{split}-images-idx3-ubyte", images, gz)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz)
        made[split] = labels
    return made


def _assert_disjoint(plan) -> None:
    by_source: dict[str, list[np.ndarray]] = {}
    for src, idx in plan.splits.values():
        assert len(np.unique(idx)) == len(idx)
        by_source.setdefault(src, []).append(idx)
    for arrays in by_source.values():
        for a, b in combinations(arrays, 2):
            assert not np.intersect1d(a, b).size


# ---------------------------------------------------------------- digits

def test_digits_layout_and_counts(tmp_path):
    summary = build_dataset("digits", tmp_path, shots=2, **SMALL)
    assert summary == {"dataset": "digits", "classes": 10, "train": 20, "val": 30, "test": 40,
                       "unlabeled": 50, "path": str(tmp_path / "digits"),
                       "unlabeled_path": str(tmp_path / "unlabeled" / "digits")}
    ds = tmp_path / "digits"
    for split, n in (("train", 2), ("val", 3)):
        assert sorted(p.name for p in (ds / split).iterdir()) == CLASS_NAMES["digits"]
        for c in CLASS_NAMES["digits"]:
            assert sorted(p.name for p in (ds / split / c).iterdir()) == [f"{i}.png" for i in range(n)]
    ids = sorted(int(p.stem) for p in (ds / "test").glob("*.png"))
    assert ids == list(range(40))
    labels = json.loads((ds / "test_labels.json").read_text())
    assert sorted(map(int, labels)) == ids
    assert np.bincount(list(labels.values()), minlength=10).tolist() == [4] * 10
    assert len(list((tmp_path / "unlabeled" / "digits").glob("*.png"))) == 50
    assert _png(ds / "test" / "0.png").shape == (8, 8)


def test_digits_pixels_and_answer_key_match_sklearn(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    build_dataset("digits", tmp_path, shots=2, seed=3, **SMALL)
    plan = plan_splits("digits", shots=2, seed=3, val_per_class=3, test_per_class=4, pool_per_class=5)
    ds = tmp_path / "digits"
    expected = lambda i: np.round(d.images[i] * 255 / 16).astype(np.uint8)  # noqa: E731
    labels = json.loads((ds / "test_labels.json").read_text())
    _, test_idx = plan.splits["test"]
    for n, i in enumerate(test_idx):
        assert labels[str(n)] == d.target[i]
        assert np.array_equal(_png(ds / "test" / f"{n}.png"), expected(i))
    _, train_idx = plan.splits["train"]
    for c in range(10):
        in_class = [i for i in train_idx if d.target[i] == c]
        for k, i in enumerate(in_class):
            assert np.array_equal(_png(ds / "train" / str(c) / f"{k}.png"), expected(i))
    # Test ids must not follow the class order.
    assert [labels[str(n)] for n in range(40)] != sorted(labels.values())


def test_digits_defaults_disjoint_and_pool_takes_the_rest():
    plan = plan_splits("digits")
    sizes = {k: len(v[1]) for k, v in plan.splits.items()}
    assert sizes == {"train": 100, "val": 200, "test": 300, "unlabeled": 1000}
    _assert_disjoint(plan)
    big = plan_splits("digits", pool_per_class=1000)
    assert len(big.splits["unlabeled"][1]) == 1797 - 600
    _assert_disjoint(big)


def test_determinism(tmp_path):
    build_dataset("digits", tmp_path / "a", seed=5, **SMALL)
    build_dataset("digits", tmp_path / "b", seed=5, **SMALL)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    p, q = plan_splits("digits", seed=0), plan_splits("digits", seed=1)
    assert not np.array_equal(p.splits["train"][1], q.splits["train"][1])
    assert not np.array_equal(p.splits["test"][1], q.splits["test"][1])


# ---------------------------------------------------------------- fashion-mnist

@pytest.mark.skipif(not HAVE_FASHION, reason="dataset-fashion-mnist not installed")
def test_fashion_installed(tmp_path):
    summary = build_dataset("fashion-mnist", tmp_path, shots=1, val_per_class=1, test_per_class=2,
                            pool_per_class=2, progress=False)
    assert (summary["train"], summary["val"], summary["test"], summary["unlabeled"]) == (10, 10, 20, 20)
    ds = tmp_path / "fashion-mnist"
    assert sorted(p.name for p in (ds / "train").iterdir()) == CLASS_NAMES["fashion-mnist"]
    assert _png(ds / "train" / "9_ankle_boot" / "0.png").shape == (28, 28)
    labels = json.loads((ds / "test_labels.json").read_text())
    assert sorted(map(int, labels)) == list(range(20))
    assert np.bincount(list(labels.values()), minlength=10).tolist() == [2] * 10


@pytest.mark.skipif(not HAVE_FASHION, reason="dataset-fashion-mnist not installed")
def test_fashion_default_plan_sizes_and_disjoint():
    plan = plan_splits("fashion-mnist")
    assert {k: (v[0], len(v[1])) for k, v in plan.splits.items()} == {
        "train": ("train", 100), "val": ("train", 500), "unlabeled": ("train", 1000), "test": ("t10k", 1000)}
    _assert_disjoint(plan)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_from_idx_dir(tmp_path, gz):
    made = _synthetic_idx(tmp_path / "idx", gz=gz)
    summary = build_dataset("fashion-mnist", tmp_path / "out", shots=2, idx_dir=tmp_path / "idx",
                            val_per_class=1, test_per_class=3, pool_per_class=10, progress=False)
    # Pool keeps what is left of the 6 train images per class: 6 - 2 - 1 = 3.
    assert (summary["train"], summary["val"], summary["test"], summary["unlabeled"]) == (20, 10, 30, 30)
    ds = tmp_path / "out" / "fashion-mnist"
    for c, folder in enumerate(CLASS_NAMES["fashion-mnist"]):
        for p in (ds / "train" / folder).iterdir():
            img = _png(p)
            assert img.shape == (4, 5) and len(np.unique(img)) == 1
            assert made["train"][img[0, 0]] == c
    labels = json.loads((ds / "test_labels.json").read_text())
    for n in range(30):
        assert made["t10k"][_png(ds / "test" / f"{n}.png")[0, 0]] == labels[str(n)]
    seen = [int(_png(p)[0, 0]) for p in ds.rglob("*.png") if "test" not in p.parts]
    seen += [int(_png(p)[0, 0]) for p in (tmp_path / "out" / "unlabeled" / "fashion-mnist").iterdir()]
    assert len(seen) == len(set(seen)) == 20 + 10 + 30


def test_read_idx_rejects_malformed_files(tmp_path):
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    truncated = tmp_path / "short"
    truncated.write_bytes(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + b"abc")
    not_gzip = tmp_path / "x.gz"
    not_gzip.write_bytes(b"this is not gzip")
    for p in (bad_magic, truncated, not_gzip):
        with pytest.raises(UserError):
            read_idx(p)
    ok = tmp_path / "ok"
    _write_idx(ok, np.arange(6).reshape(2, 3), gz=False)
    assert read_idx(ok).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_read_idx_rejects_a_damaged_gzip_stream_and_odd_shapes(tmp_path):
    """A damaged deflate stream raised zlib.error; (N, 0, 0) images crashed the PNG writer after --out was made;
    dims whose product overflows int64 passed the length check (np.prod wrapped to 0) and crashed reshape."""
    damaged = tmp_path / "damaged.gz"
    blob = bytearray(gzip.compress(bytes([0, 0, 8, 1]) + (3000).to_bytes(4, "big") + bytes(range(256)) * 12))
    blob[20:60] = b"\xff" * 40
    damaged.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="cannot read IDX file"):
        read_idx(damaged)
    empty = tmp_path / "empty"
    _write_idx(empty, np.zeros((3, 0, 0)), gz=False)
    huge = tmp_path / "huge"
    huge.write_bytes(b"\x00\x00\x08\x03" + np.array([2**31, 2**31, 4], ">u4").tobytes())
    for p in (empty, huge):
        with pytest.raises(UserError, match="IDX file"):
            read_idx(p)


def test_fashion_messages_name_what_is_wrong(tmp_path):
    _synthetic_idx(tmp_path / "idx")
    with pytest.raises(UserError, match=r"t10k source.*Lower --test-per-class\.$"):
        build_dataset("fashion-mnist", tmp_path / "out", idx_dir=tmp_path / "idx", shots=1, val_per_class=1,
                      test_per_class=4, progress=False)
    _write_idx(tmp_path / "idx" / "train-labels-idx1-ubyte", np.tile(np.arange(9), 7)[:60])  # no class 9
    with pytest.raises(UserError, match="no images of class '9_ankle_boot'"):
        build_dataset("fashion-mnist", tmp_path / "out", idx_dir=tmp_path / "idx", progress=False)
    (tmp_path / "idx" / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "idx" / "t10k-images-idx3-ubyte.gz").mkdir()
    with pytest.raises(UserError, match="is not a regular file"):
        build_dataset("fashion-mnist", tmp_path / "out", idx_dir=tmp_path / "idx", progress=False)
    assert not (tmp_path / "out").exists()


def test_fashion_malformed_idx_dir(tmp_path):
    _synthetic_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x08\x08\x08\x08garbage"))
    with pytest.raises(UserError, match="magic"):
        build_dataset("fashion-mnist", tmp_path / "out", idx_dir=tmp_path, progress=False)
    assert not (tmp_path / "out" / "fashion-mnist").exists()


def test_fashion_missing_files_message(tmp_path):
    with pytest.raises(UserError) as e:
        build_dataset("fashion-mnist", tmp_path / "out", idx_dir=tmp_path / "nowhere", progress=False)
    assert "apt-get install -y dataset-fashion-mnist" in str(e.value)
    assert "--idx-dir PATH" in str(e.value)


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("kwargs, match", [
    (dict(name="cifar"), "unknown demo dataset"),
    (dict(name="digits", shots=0), "at least 1"),
    (dict(name="digits", val_per_class=-1), "--val-per-class must be at least 1"),
    (dict(name="digits", val_per_class=0), "--val-per-class must be at least 1"),  # no val/: nothing could train
    (dict(name="digits", test_per_class=0), "--test-per-class must be at least 1"),
    (dict(name="digits", pool_per_class=-1), "--pool-per-class must be at least 0"),
    (dict(name="digits", seed=-1), "--seed must be 0 or more"),  # numpy's ValueError was an internal error
    (dict(name="digits", test_per_class=150), "only 174 images"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(UserError, match=match):
        build_dataset(out=tmp_path, progress=False, **kwargs)
    assert not any(tmp_path.iterdir())


def test_refuses_non_empty_output(tmp_path):
    (tmp_path / "digits").mkdir()
    build_dataset("digits", tmp_path, **SMALL)  # an existing empty folder is fine
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="not empty"):
        build_dataset("digits", tmp_path, seed=1, **SMALL)
    assert _tree(tmp_path) == before
    shutil.rmtree(tmp_path / "digits")  # the leftover pool folder alone also blocks a rebuild
    with pytest.raises(UserError, match="not empty"):
        build_dataset("digits", tmp_path, seed=1, **SMALL)
    assert not (tmp_path / "digits").exists()


def test_refuses_output_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        build_dataset("digits", tmp_path / "file", **SMALL)


def test_a_file_where_the_build_writes_a_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    """`ROOT/unlabeled` as a file crashed with FileExistsError after ROOT/digits was written, so the rerun was
    refused too; `--idx-dir` given for digits was ignored without a word (a probe/data hunt)."""
    from helpers.checks import run_main

    root = tmp_path / "root"
    root.mkdir()
    (root / "unlabeled").write_text("not a folder")
    with pytest.raises(UserError, match="is a file where the build writes a folder"):
        build_dataset("digits", root, shots=1, val_per_class=1, test_per_class=1, pool_per_class=1)
    assert sorted(p.name for p in root.iterdir()) == ["unlabeled"]
    rc, _, err = run_main("data", "digits", "--out", tmp_path / "other", "--idx-dir", tmp_path / "nowhere")
    assert rc == 2 and "takes no --idx-dir" in err and not (tmp_path / "other").exists(), err


def test_a_second_build_into_the_same_out_is_refused_while_the_first_writes(tmp_path, monkeypatch):
    """Both builds used one temporary folder, which the second deleted at its start: the first crashed with
    FileNotFoundError, or the second exited 0 with the first's images in its pool."""
    import fewshot.data.build as build

    refused = []

    def writing(jobs, **kw):  # halfway through the first build's writes, start the same build again
        for n, job in enumerate(jobs):
            if n == 10:
                with pytest.raises(UserError, match="is building into") as e:
                    build_dataset("digits", tmp_path, shots=1, val_per_class=1, test_per_class=1, pool_per_class=1)
                refused.append(str(e.value))
            yield job

    monkeypatch.setattr(build, "tqdm", writing)
    build_dataset("digits", tmp_path, shots=2, **SMALL)
    assert refused
    assert len(list((tmp_path / "unlabeled" / "digits").iterdir())) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "unlabeled"]  # no temporary folder or lock left


def test_a_stale_temporary_folder_is_cleaned(tmp_path):
    stale = tmp_path / ".fewshot-build-digits.tmp" / "pool"
    stale.mkdir(parents=True)
    (stale / "999.png").write_bytes(b"left by a killed build")
    build_dataset("digits", tmp_path, shots=2, **SMALL)
    assert len(list((tmp_path / "unlabeled" / "digits").iterdir())) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits", "unlabeled"]


def test_a_destination_that_appears_while_writing_is_refused_and_nothing_is_moved(tmp_path, monkeypatch):
    """The final move died with a raw OSError (directory not empty) after the dataset itself was moved."""
    import fewshot.data.build as build

    def writing(jobs, **kw):
        yield from jobs
        (tmp_path / "unlabeled" / "digits").mkdir(parents=True)
        (tmp_path / "unlabeled" / "digits" / "other.png").write_bytes(b"x")

    monkeypatch.setattr(build, "tqdm", writing)
    with pytest.raises(UserError, match="already exists"):
        build_dataset("digits", tmp_path, shots=2, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unlabeled"]


def test_a_failed_build_leaves_no_empty_out_folder(tmp_path, monkeypatch):
    import fewshot.data.build as build

    def broken(*a, **kw):
        raise ValueError("cannot write empty image")

    monkeypatch.setattr(build.Image, "fromarray", broken)
    with pytest.raises(ValueError):
        build_dataset("digits", tmp_path / "new" / "root", shots=2, **SMALL)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("inside", ["digits/train", "digits/val/0", "unlabeled", "unlabeled/digits"])
def test_out_inside_an_existing_dataset_is_refused(tmp_path, inside):
    """`--out ROOT/digits/train` added class folders to that split, after which train/eval refused ROOT."""
    build_dataset("digits", tmp_path, shots=1, val_per_class=1, test_per_class=1, pool_per_class=1, progress=False)
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="lies inside"):
        build_dataset("digits", tmp_path / inside, shots=1, **SMALL)
    assert _tree(tmp_path) == before and not (tmp_path / "digits" / "train" / "digits").exists()


def test_a_folder_merely_named_train_is_not_a_dataset_split(tmp_path):
    """Review: any ancestor named train counted as a split (`--out ~/ml/train/data` was refused)."""
    (tmp_path / "ml" / "train" / "notes").mkdir(parents=True)  # a train folder, but no class folder of images
    build_dataset("digits", tmp_path / "ml" / "train" / "data", shots=1, **SMALL)
    assert (tmp_path / "ml" / "train" / "data" / "digits" / "train").is_dir()


def test_a_planted_lock_link_is_refused_and_its_target_kept(tmp_path):
    """Review: the lock file was opened through a link and truncated: OUT/.fewshot-build-digits.lock -> ~/.bashrc
    in a shared folder emptied the victim's file."""
    victim = tmp_path / "bashrc"
    victim.write_text("keep me\n")
    out = tmp_path / "shared"
    out.mkdir()
    (out / ".fewshot-build-digits.lock").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        build_dataset("digits", out, shots=1, **SMALL)
    assert victim.read_text() == "keep me\n" and not (out / "digits").exists()


@pytest.mark.parametrize("link", ["root", "root/unlabeled", "root/digits", "root/unlabeled/digits"])
def test_broken_symlinks_are_refused_before_anything_is_written(tmp_path, link):
    """A broken link as --out or OUT/unlabeled raised FileExistsError, the latter after OUT/digits was moved into
    place without its pool, so a rerun was refused."""
    (tmp_path / link).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / link).symlink_to(tmp_path / "nowhere")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match="broken symbolic link"):
        build_dataset("digits", tmp_path / "root", shots=1, **SMALL)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
