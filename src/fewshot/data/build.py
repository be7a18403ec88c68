"""Build small, real few-shot demo datasets from data already on this machine.

`fewshot data digits|fashion-mnist --out ROOT` writes the same layout as the course's
datasets (train/val per class, an unlabelled test folder with a separate answer key, and
an unlabelled pool for MoCo) so every other command can be tried end to end without a
download. Nothing here touches the network.
"""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import shutil
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from fewshot.data.roots import RUN_MARKERS, _holds_run, full_datasets_in, holds_a_dataset
from fewshot.errors import UserError, path_argument

try:
    import fcntl
except ImportError:  # Windows: no flock, builds go unguarded
    fcntl = None

DEFAULT_IDX_DIR = Path("/usr/share/datasets/fashion-mnist")

# Folder names sort in label order, so "class index = position in sorted folder list"
# reproduces the original labels.
CLASS_NAMES = {
    "digits": [str(i) for i in range(10)],
    "fashion-mnist": ["0_tshirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat",
                      "5_sandal", "6_shirt", "7_sneaker", "8_bag", "9_ankle_boot"],
}
# Per-class defaults for (val, test): digits has only ~180 images per class.
DEFAULT_SIZES = {"digits": (20, 30), "fashion-mnist": (50, 100)}
IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
FLAGS = {"train": "--shots", "val": "--val-per-class", "test": "--test-per-class"}


@dataclass
class Source:
    """One pool of labelled source images: uint8 (N, H, W) and int labels (N,)."""

    images: np.ndarray
    labels: np.ndarray


@dataclass
class Plan:
    """Which source image goes where; `splits[s] = (source_name, indices)` in file order."""

    name: str
    sources: dict[str, Source]
    splits: dict[str, tuple[str, np.ndarray]]


# ---------------------------------------------------------------- loading sources

def load_digits_source() -> Source:
    """sklearn's bundled 8x8 digits, rescaled from 0..16 to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * 255.0 / 16.0).astype(np.uint8)
    return Source(images, d.target.astype(np.int64))


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) of unsigned bytes; UserError if malformed."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged deflate stream inside a valid gzip header
        raise UserError(f"cannot read IDX file {path}: {e}. Re-install it or pass --idx-dir PATH "
                        "to a folder with intact Fashion-MNIST files.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic number "
                        f"{data[:4].hex() or 'none'}; expected 0000080N). Pass --idx-dir PATH to a "
                        "folder with the original Fashion-MNIST files.")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"IDX file {path} is truncated inside its header.")
    shape = tuple(int(x) for x in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if 0 in shape:  # (N, 0, 0) images cannot be written as PNGs
        raise UserError(f"cannot read IDX file {path}: it declares shape {shape}, with an empty dimension. "
                        "Pass --idx-dir PATH to a folder with intact Fashion-MNIST files.")
    size = math.prod(shape)  # Python ints: np.prod wrapped (2**31, 2**31, 4) around to 0
    if len(data) - header != size:
        raise UserError(f"IDX file {path} declares shape {shape} ({size} bytes) "
                        f"but holds {len(data) - header} bytes of data; it is truncated or corrupt.")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def load_fashion_sources(idx_dir: Path | None = None) -> dict[str, Source]:
    """Fashion-MNIST's train and t10k splits from IDX files (.gz or uncompressed)."""
    idx_dir = Path(idx_dir) if idx_dir is not None else DEFAULT_IDX_DIR
    paths, missing = {}, []
    for stem in IDX_FILES:
        candidates = (idx_dir / f"{stem}.gz", idx_dir / stem)
        found = [p for p in candidates if p.is_file()]
        if found:
            paths[stem] = found[0]
        elif any(p.exists() for p in candidates):  # a folder (or a device) of that name is not "missing"
            odd = next(p for p in candidates if p.exists())
            raise UserError(f"{odd} is not a regular file; --idx-dir must hold the Fashion-MNIST IDX files "
                            "themselves. Move it away or pass --idx-dir PATH to another folder.")
        else:
            missing.append(f"{stem}.gz")
    if missing:
        raise UserError(f"Fashion-MNIST IDX files not found in {idx_dir}: missing {', '.join(missing)}. "
                        "Install them with `apt-get install -y dataset-fashion-mnist` (puts them in "
                        f"{DEFAULT_IDX_DIR}) or pass `--idx-dir PATH` to a folder holding "
                        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz.")
    sources = {}
    for split in ("train", "t10k"):
        img_path, lab_path = paths[f"{split}-images-idx3-ubyte"], paths[f"{split}-labels-idx1-ubyte"]
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"IDX files {img_path} and {lab_path} do not match: images have shape "
                            f"{images.shape}, labels {labels.shape}; expected (N, H, W) and (N,).")
        if labels.size and labels.max() >= 10:
            raise UserError(f"{lab_path} holds label {int(labels.max())}; Fashion-MNIST has labels 0..9.")
        sources[split] = Source(images, labels.astype(np.int64))
    return sources


# ---------------------------------------------------------------- planning splits

def _take_per_class(src: Source, name: str, src_name: str, counts: dict[str, int],
                    pool_per_class: int | None, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Shuffle each class and cut it into consecutive, hence disjoint, chunks.

    `counts` are exact per-class sizes; a pool (if asked) takes up to `pool_per_class`
    of what is left. Raises UserError when the exact sizes do not fit a class.
    """
    need = sum(counts.values())
    per_class = np.bincount(src.labels, minlength=10)
    smallest = int(per_class.argmin())
    if per_class[smallest] == 0:  # no flag can fix a source that lacks a class
        raise UserError(f"{name}'s {src_name} source has no images of class {CLASS_NAMES[name][smallest]!r} at "
                        "all; its files are incomplete or not the original ones. Pass --idx-dir PATH to a folder "
                        "with the original Fashion-MNIST files.")
    if need > per_class[smallest]:
        asked = " + ".join(f"{k} {v}" for k, v in counts.items())
        flags = [FLAGS[k] for k in counts]
        lower = flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} or {flags[-1]}"
        raise UserError(f"{name} has only {per_class[smallest]} images of class "
                        f"{CLASS_NAMES[name][smallest]!r} in its {src_name} source, but {asked} = {need} "
                        f"per class were requested. Lower {lower}.")
    out: dict[str, list[np.ndarray]] = {k: [] for k in counts}
    pool: list[np.ndarray] = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(src.labels == c))
        start = 0
        for split, n in counts.items():
            out[split].append(idx[start:start + n])
            start += n
        if pool_per_class is not None:
            pool.append(idx[start:start + pool_per_class])
    result = {k: np.concatenate(v) for k, v in out.items()}
    if pool_per_class is not None:
        result["unlabeled"] = np.concatenate(pool)
    return result


def plan_splits(name: str, shots: int = 10, seed: int = 0, idx_dir: Path | None = None,
                val_per_class: int | None = None, test_per_class: int | None = None,
                pool_per_class: int = 100) -> Plan:
    """Decide, without writing anything, which source image lands in which split.

    train/val are ordered by class; test and the unlabelled pool are shuffled so that
    file ids reveal nothing about the class.
    """
    if name not in CLASS_NAMES:
        raise UserError(f"unknown demo dataset {name!r}; choose one of: {', '.join(CLASS_NAMES)}.")
    val = DEFAULT_SIZES[name][0] if val_per_class is None else val_per_class
    test = DEFAULT_SIZES[name][1] if test_per_class is None else test_per_class
    if shots < 1:
        raise UserError(f"--shots must be at least 1 (got {shots}).")
    # every command needs val (best checkpoint, kNN monitor) and the test split is what is predicted
    for what, n, least in (("--val-per-class", val, 1), ("--test-per-class", test, 1),
                           ("--pool-per-class", pool_per_class, 0)):
        if n is not None and n < least:
            raise UserError(f"{what} must be at least {least} (got {n}).")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more (got {seed}).")
    rng = np.random.default_rng(seed)
    if name == "digits":
        sources = {"digits": load_digits_source()}
        cut = _take_per_class(sources["digits"], name, "digits",
                              {"train": shots, "val": val, "test": test}, pool_per_class, rng)
        splits = {k: ("digits", v) for k, v in cut.items()}
    else:
        sources = load_fashion_sources(idx_dir)
        cut = _take_per_class(sources["train"], name, "train",
                              {"train": shots, "val": val}, pool_per_class, rng)
        test_cut = _take_per_class(sources["t10k"], name, "t10k", {"test": test}, None, rng)
        splits = {k: ("train", v) for k, v in cut.items()}
        splits["test"] = ("t10k", test_cut["test"])
    for k in ("test", "unlabeled"):
        src_name, idx = splits[k]
        splits[k] = (src_name, rng.permutation(idx))
    return Plan(name, sources, splits)


# ---------------------------------------------------------------- writing

def _nonempty(p: Path) -> bool:
    return p.exists() and (not p.is_dir() or any(p.iterdir()))


def _half_moved(stage: Path, ds_dir: Path, pool_dir: Path) -> bool:
    """A build killed between its two renames (kill -9): OUT/<name> in place, its pool still in the stage folder.
    A rerun refused OUT/<name> as "already exists"; it builds again instead."""
    return (stage / "pool").is_dir() and not (stage / "ds").exists() and _nonempty(ds_dir) \
        and not _nonempty(pool_dir)


def _inside_a_dataset(out: Path) -> tuple[str, Path] | None:
    """What existing dataset folder or root OUT lies in, and the root to build into instead (None: none).
    `--out ROOT/digits/train` added class folders to that split, and `--out ROOT/unlabeled` put a whole dataset into
    ROOT's pool."""
    real = out.resolve()
    for a in (real, *real.parents):
        try:
            if a.name in ("train", "val", "test") and holds_a_dataset(a.parent):
                return f"the {a.name} split of the dataset {a.parent}", a.parent.parent
            if a.name == "unlabeled" and any(c != a and holds_a_dataset(c) for c in a.parent.iterdir()):
                return f"the unlabeled pool of the dataset root {a.parent}", a.parent
        except OSError:
            continue
    return _in_a_dataset_or_root(real)


def _in_a_dataset_or_root(real: Path) -> tuple[str, Path] | None:
    """A dataset folder OUT is, or the dataset root a new OUT would be made in. `--out ROOT/digitz` (a typo's "build
    the demo data" advice) built a root inside the root, whose folder then broke training on it; `--out ROOT/digits`
    wrote digits/ and unlabeled/ into a dataset. Only a fewshot root counts (a dataset in it has train/ and val/):
    any folder above OUT with train/<class>/<image> refused a project's `--out fewshot_data`, and a Kaggle set
    beside a new OUT refused `--out demo_data`. An existing OUT beside a dataset folder is the root the user chose
    (pytest's tmp_path beside another test's)."""
    try:
        if real != real.parent and holds_a_dataset(real):
            return f"the dataset folder {real}", real.parent
    except OSError:
        pass
    if real.exists():
        return None
    home = next((a for a in real.parents if a.is_dir()), None)
    held = full_datasets_in(home) if home is not None and home != home.parent else []
    if held:
        return f"the dataset root {home} (it holds {', '.join(held[:5])})", home
    return None


def _run_folder_marks(out: Path) -> list[str]:
    """The names that make OUT a fewshot run or report folder (roots._holds_run, the test that passes such folders
    over as datasets), else none. run_state.json or a report's mark or page counts alone; config.yaml, checkpoints/
    and log.jsonl only together, with a config.yaml a run wrote (its content): a data root holding a log.jsonl, or a
    project folder with a copy of a run's config.yaml, is no run (review rev75)."""
    if not out.is_dir() or not _holds_run(out):
        return []
    found = [m for m in RUN_MARKERS if os.path.lexists(out / m)]
    if set(found) <= {"config.yaml", "checkpoints", "log.jsonl"} and not (
            len(found) >= 2 and "config.yaml" in found and _runs_config(out / "config.yaml")):
        return []
    return found


def _run_folder_around(out: Path) -> tuple[Path, list[str]] | None:
    """OUT or one of its two folders above that is a run or report folder, with its marks (`--out RUN/checkpoints`
    wrote the dataset beside last.pt)."""
    for folder in (out, *list(out.parents)[:2]):
        found = _run_folder_marks(folder)
        if found:
            return folder, found
    return None


def _runs_config(path: Path) -> bool:
    """Whether ``path`` is a config.yaml a fewshot run wrote (read_run_config), False where it cannot be read."""
    from fewshot.config.runfile import read_run_config

    try:
        return path.is_file() and read_run_config(path)[1]
    except (UserError, OSError):
        return False


def _refuse_a_run_folder(out: Path) -> None:
    """`--out RUN` added the dataset beside the run's checkpoints/ and plots/, and eval/train on RUN then took plots/
    for a dataset; report, probe and predict refuse such an --out too."""
    around = _run_folder_around(out)
    if around:
        run, found = around
        shown = ", ".join(f"{m}/" if (run / m).is_dir() else m for m in found[:4])
        where = "is" if run == out else f"lies in {run}, which is"
        raise UserError(f"--out {out} {where} a fewshot run or report folder ({shown}): a dataset built there would "
                        f"mix into it. Give --out a dataset root of its own.")


def _root_to_suggest(root: Path, name: str) -> bool:
    """Whether a refusal names ROOT to build into: only a fewshot root (full_datasets_in) that lacks the dataset (a
    project or Downloads folder above an ImageFolder was named, and the demo data went into the user's home)."""
    return bool(full_datasets_in(root)) and not (root / name).exists() and not (root / "unlabeled" / name).exists()


def _lock_build(path: Path, name: str, out: Path) -> int | None:
    """Hold an exclusive lock on PATH (the descriptor; None where this system cannot lock). Two builds of one
    dataset into one OUT shared a temporary folder: the second deleted the first's files and crashed it, or
    exited 0 with the first's images in its pool. The lock goes with the process, so a killed build leaves
    nothing stale behind."""
    if fcntl is None:
        return None
    while True:
        try:  # never through a link: a planted OUT/.fewshot-build-x.lock -> ~/.bashrc would be truncated below
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                         0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP or path.is_symlink():
                raise UserError(f"{path} is a symbolic link, not a lock file a build wrote: remove it and build "
                                f"again.") from None
            return None  # an unwritable OUT fails, with its own message, at the first write
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UserError(f"{path} is not a regular file, so it cannot be the build's lock file: remove it and "
                            f"build again.")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"another `fewshot data {name}`{f' (pid {holder})' if holder else ''} is building "
                                f"into {out}: two builds would mix their images. Wait for it to finish, or choose "
                                "another --out.") from None
            return None  # ENOLCK, EOPNOTSUPP, ...: this file system cannot lock
        try:  # the holder before us removes the file when done: a lock on that unlinked file guards nothing
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _unlock_build(path: Path, fd: int | None) -> None:
    if fd is not None:
        try:
            path.unlink()  # still holding the lock, so no one else is using the file
        except OSError:
            pass
        os.close(fd)


def build_dataset(name: str, out: Path, shots: int = 10, seed: int = 0, idx_dir: Path | None = None,
                  val_per_class: int | None = None, test_per_class: int | None = None,
                  pool_per_class: int = 100, progress: bool = True) -> dict:
    """Write OUT/<name>/{train,val,test}, OUT/<name>/test_labels.json and OUT/unlabeled/<name>.

    Files are staged in a hidden folder under OUT and moved into place at the end, so an
    interrupted build never leaves a half-written dataset that a later run would refuse.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder.")
    ds_dir, pool_dir = out / name, out / "unlabeled" / name
    # a broken link where a folder is made raised FileExistsError, for OUT/unlabeled after OUT/<name> was written
    for p in (*reversed(out.parents), out, ds_dir, out / "unlabeled", pool_dir):
        if p.is_symlink() and not p.exists():
            raise UserError(f"{p} is a broken symbolic link (to {os.readlink(p)}) where the build needs a folder; "
                            "remove it or choose another --out.")
    for p in (ds_dir, pool_dir):  # the built folders are moved there, which cannot replace a link
        if p.is_symlink():
            raise UserError(f"{p} is a symbolic link (to {os.readlink(p)}) where the build moves its own folder; "
                            "remove it or choose another --out.")
    _refuse_a_run_folder(out)
    inside = _inside_a_dataset(out)
    if inside:
        words, root = inside
        there = (f", or that root itself (--out {path_argument(root)} adds {name}/ beside its datasets)"
                 if _root_to_suggest(root, name) else "")
        raise UserError(f"--out {out} lies inside {words}, which a build there would break (its folders would "
                        f"join that data). Give --out a dataset root of its own{there}.")
    for p in (ds_dir, out / "unlabeled", pool_dir):  # a file there crashed after the dataset was written
        if p.exists() and not p.is_dir():
            raise UserError(f"{p} is a file where the build writes a folder; move it away or choose another --out.")
    stage, lock = out / f".fewshot-build-{name}.tmp", out / f".fewshot-build-{name}.lock"
    for p in (ds_dir, pool_dir):
        if _nonempty(p) and not _half_moved(stage, ds_dir, pool_dir):
            raise UserError(f"{p} already exists and is not empty; refusing to mix a new build into it. "
                            "Delete it or choose another --out.")
    plan = plan_splits(name, shots, seed, idx_dir, val_per_class, test_per_class, pool_per_class)
    classes = CLASS_NAMES[name]

    jobs: list[tuple[Path, np.ndarray]] = []  # (relative path, image)
    test_labels: dict[str, int] = {}
    for split, (src_name, idx) in plan.splits.items():
        src = plan.sources[src_name]
        per_class = [0] * len(classes)  # train/val files are numbered within their class
        for n, i in enumerate(idx):
            if split in ("train", "val"):
                c = int(src.labels[i])
                rel = Path("ds", split, classes[c], f"{per_class[c]}.png")
                per_class[c] += 1
            elif split == "test":
                rel = Path("ds", "test", f"{n}.png")
                test_labels[str(n)] = int(src.labels[i])
            else:
                rel = Path("pool", f"{n}.png")
            jobs.append((rel, src.images[i]))

    made = [p for p in (out, *out.parents) if not os.path.lexists(p)]  # removed again if the build fails
    out.mkdir(parents=True, exist_ok=True)
    try:
        fd = _lock_build(lock, name, out)
        try:
            _write_and_move(stage, jobs, test_labels, name, ds_dir, pool_dir, progress)
        except OSError as exc:
            if exc.filename is None:  # a full disk met by an image's write (PIL names no file): said without a path
                raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            _unlock_build(lock, fd)
    except BaseException:
        for p in made:  # an empty --out left behind looked like a finished build
            try:
                p.rmdir()
            except OSError:
                break
        raise
    counts = {k: len(v[1]) for k, v in plan.splits.items()}
    return {"dataset": name, "classes": len(classes), "train": counts["train"], "val": counts["val"],
            "test": counts["test"], "unlabeled": counts["unlabeled"], "path": str(ds_dir),
            "unlabeled_path": str(pool_dir) if counts["unlabeled"] else None}


def _write_and_move(stage: Path, jobs: list[tuple[Path, np.ndarray]], test_labels: dict[str, int], name: str,
                    ds_dir: Path, pool_dir: Path, progress: bool) -> None:
    """Write every image into STAGE, then move the dataset and its pool into place (both or neither)."""
    if _half_moved(stage, ds_dir, pool_dir):  # under the lock: a killed build's, no build is between its renames
        print(f"note: {ds_dir} is an earlier build's that was stopped before its pool was moved into place; "
              f"building {name} again.", flush=True)
        shutil.rmtree(ds_dir)
    for p in (ds_dir, pool_dir):  # a build of the same dataset that finished while this one was planning
        if _nonempty(p):
            raise UserError(f"{p} already exists and is not empty; refusing to mix a new build into it. "
                            "Delete it or choose another --out.")
    if stage.is_symlink():
        stage.unlink()
    shutil.rmtree(stage, ignore_errors=True)  # left by a killed build: this one holds the lock
    for folder in {rel.parent for rel, _ in jobs}:
        (stage / folder).mkdir(parents=True, exist_ok=True)
    for rel, img in tqdm(jobs, desc=f"writing {name}", unit="img", disable=None if progress else True):
        Image.fromarray(np.ascontiguousarray(img)).save(stage / rel)
    if test_labels:
        (stage / "ds" / "test_labels.json").write_text(json.dumps(test_labels, indent=0) + "\n")
    (stage / "ds").mkdir(exist_ok=True)
    moved: list[tuple[Path, Path]] = []
    try:
        for src, dst in ((stage / "ds", ds_dir), (stage / "pool", pool_dir)):
            if not src.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_dir():
                dst.rmdir()  # empty at the check above; OSError if something was written there meanwhile
            src.rename(dst)
            moved.append((src, dst))
    except BaseException as exc:  # also Ctrl-C / SIGTERM between the renames
        for s, d in reversed(moved):  # no dataset without its pool: a rerun would refuse it
            d.rename(s)
        if not isinstance(exc, OSError):
            raise
        if os.path.lexists(dst):
            raise UserError(f"{dst} already exists and is not empty (it appeared while this build was "
                            "writing); refusing to mix a new build into it. Delete it or choose another "
                            "--out.") from None
        raise UserError(f"cannot move the built files into {dst}: {exc.strerror or exc}.") from None
