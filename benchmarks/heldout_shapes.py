"""`fewshot run` vs `fewshot train` at equal wall-clock on held-out data of other shapes than the demo's (hunt hBH).

The demo data is square, grey, one format and balanced; the held-out data need not be. This builds, from local
real images only (Fashion-MNIST's t10k split and sklearn's bundled digits; no download, no noise images), seeded:

- tintfash: 10 Fashion-MNIST classes, 96x64 colour with one tint per class, 10 and 1 shots in turn, colour formats
  (PNG, JPEG, palette PNG with transparency, RGBA PNG, WebP, BMP, TIFF);
- mix20: 20 classes (10 digits + 10 fashion), 64x96 portrait, 5 shots, also 16-bit PNG and greyscale JPEG;
- binary: 2 classes (t-shirt, shirt) whose pool holds mostly images of 8 other classes.

The pool's true classes go beside the root (ROOT.pool_truth.json; null: not one of the dataset's classes). Then,
per seed, `fewshot run --budget-minutes M` and `fewshot train` with a time-based schedule of the run's image size
and --train-share of M (train's budget counts no start-up; the run's counts everything), and `fewshot predict` of
the train run. Both are scored on test acc@1 against the answer keys; for the run also the precision of its
pseudo-labels against the pool truth and whether its pool warning (pool_classes_check) fired. Prints medians over
seeds and run minus train, and writes JSON to benchmarks/results/heldout_shapes_<date>.json.

    OMP_NUM_THREADS=1 python benchmarks/heldout_shapes.py --minutes 2 --seeds 0 1
    python benchmarks/heldout_shapes.py --build-only --root /tmp/shapes --scale 0.2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fewshot.data.build import DEFAULT_IDX_DIR, load_digits_source, read_idx

FASHION = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
TINTS = [(255, 80, 80), (80, 255, 80), (80, 80, 255), (255, 255, 60), (255, 60, 255), (60, 255, 255),
         (255, 160, 40), (160, 40, 255), (40, 160, 160), (200, 200, 200)]
COLOR_FORMATS = ("png", "jpg", "pal", "webp", "bmp", "tif", "rgba")
ALL_FORMATS = ("png", "jpg", "png16", "pal", "grayjpg", "webp", "bmp", "tif", "rgba")
SUFFIX = {"jpg": ".jpg", "grayjpg": ".jpeg", "webp": ".webp", "bmp": ".bmp", "tif": ".tif"}  # others: .png
DATASETS = ("binary", "mix20", "tintfash")


@dataclass(frozen=True)
class Spec:
    """One dataset of the root: source classes ("f3": fashion class 3, "d7": digit 7) and their folder names."""

    name: str
    classes: tuple[str, ...]
    names: tuple[str, ...]
    shots: tuple[int, ...]
    val: int
    test: int
    size: tuple[int, int]  # (width, height)
    tint: bool
    formats: tuple[str, ...]
    pool: int  # pool images per class, of its own classes and of `others`
    others: tuple[str, ...] = ()


SPECS = (
    Spec("tintfash", tuple(f"f{c}" for c in range(10)), tuple(FASHION), (10, 1) * 5, 4, 10, (96, 64), True,
         COLOR_FORMATS, 8),
    Spec("mix20", tuple(f"d{c}" for c in range(10)) + tuple(f"f{c}" for c in range(10)),
         tuple(f"k{c}" for c in range(20)), (5,) * 20, 3, 5, (64, 96), False, ALL_FORMATS, 4),
    Spec("binary", ("f0", "f6"), ("tshirt", "shirt"), (10, 10), 10, 30, (96, 64), True, ALL_FORMATS, 12,
         tuple(f"f{c}" for c in (1, 2, 3, 4, 5, 7, 8, 9))),
)


# ---------------------------------------------------------------- building the root

@functools.lru_cache(maxsize=2)
def load_source(idx_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST t10k and the digits (upscaled to 28x28) as one array, with labels "f<c>" / "d<c>"."""
    fx = read_idx(idx_dir / "t10k-images-idx3-ubyte.gz")
    fy = read_idx(idx_dir / "t10k-labels-idx1-ubyte.gz")
    digits = load_digits_source()
    dx = np.stack([np.asarray(Image.fromarray(x).resize((28, 28), Image.BILINEAR)) for x in digits.images])
    labels = np.array([f"f{c}" for c in fy] + [f"d{c}" for c in digits.labels])
    images = np.concatenate([fx, dx])
    images.flags.writeable = False  # cached: shared by every build of this process
    return images, labels


def scaled(n: int, scale: float) -> int:
    """A count at --scale, at least one image."""
    return max(1, round(n * scale))


def make_image(gray: np.ndarray, size: tuple[int, int], tint, rng: np.random.Generator) -> Image.Image:
    """The grey image upscaled to the canvas height, centred on a (width, height) black canvas; tinted: RGB with
    the tint (jittered per image) on a dark grey background, as a colour photo of one object."""
    width, height = size
    side = min(width, height)
    canvas = Image.new("L", (width, height), 0)
    canvas.paste(Image.fromarray(gray, "L").resize((side, side), Image.BILINEAR),
                 ((width - side) // 2, (height - side) // 2))
    if tint is None:
        return canvas
    a = np.asarray(canvas, np.float32)[..., None] / 255.0
    colour = (np.array(tint, np.float32) * (0.85 + 0.3 * rng.random(3))).clip(0, 255)
    rgb = 30.0 * (1 - a) + colour * a
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def save_image(img: Image.Image, stem: Path, fmt: str) -> Path:
    """Writes ``img`` as ``fmt`` (see ALL_FORMATS) at ``stem`` + its suffix; the path written."""
    path = stem.with_name(stem.name + SUFFIX.get(fmt, ".png"))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png16":
        Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257).save(path)
    elif fmt == "pal":
        img.convert("RGB").quantize(64).save(path, transparency=0)
    elif fmt == "grayjpg":
        img.convert("L").save(path, quality=90)
    elif fmt == "rgba":
        rgba = img.convert("RGB")
        rgba.putalpha(Image.fromarray(np.where(np.asarray(img.convert("L")) > 40, 255, 0).astype(np.uint8), "L"))
        rgba.save(path)
    else:
        img.convert("RGB").save(path, **({"quality": 90} if fmt in ("jpg", "webp") else {}))
    return path


class Picker:
    """Source images drawn without replacement over the whole root, in a seeded order per class, so that no image
    is in two places (a test image of one dataset is no train image of another)."""

    def __init__(self, labels: np.ndarray, rng: np.random.Generator):
        self.order = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}

    def take(self, cls: str, n: int) -> list[int]:
        taken, self.order[cls] = self.order[cls][:n], self.order[cls][n:]
        if len(taken) < n:
            raise SystemExit(f"the source holds too few images of class {cls} for this --scale")
        return taken


class Writer:
    """Writes one dataset's images, cycling through its formats file by file."""

    def __init__(self, spec: Spec, images: np.ndarray, rng: np.random.Generator):
        self.spec, self.images, self.rng, self.count = spec, images, rng, 0

    def write(self, index: int, tint_of: int, stem: Path) -> Path:
        tint = TINTS[tint_of % len(TINTS)] if self.spec.tint else None
        fmt = self.spec.formats[self.count % len(self.spec.formats)]
        self.count += 1
        return save_image(make_image(self.images[index], self.spec.size, tint, self.rng), stem, fmt)


def build_dataset(root: Path, spec: Spec, images: np.ndarray, picker: Picker, rng: np.random.Generator,
                  scale: float) -> dict[str, str | None]:
    """train/val per class, a shuffled test/ with its answer key (class names), the pool under unlabeled/; returns
    the pool's truth: file name -> the dataset's class name, or None for an image of another class."""
    ds, writer, test = root / spec.name, Writer(spec, images, rng), []
    for ci, (cls, name) in enumerate(zip(spec.classes, spec.names)):
        for split, n in (("train", spec.shots[ci]), ("val", spec.val)):
            for j, i in enumerate(picker.take(cls, scaled(n, scale))):
                writer.write(i, ci, ds / split / name / f"{j}")
        test += [(i, ci) for i in picker.take(cls, scaled(spec.test, scale))]
    key = {}
    for t, o in enumerate(rng.permutation(len(test))):
        i, ci = test[o]
        writer.write(i, ci, ds / "test" / f"{t}")
        key[str(t)] = spec.names[ci]
    (ds / "test_labels.json").write_text(json.dumps(key, indent=0))
    pool = [(i, ci, int(cls[1:])) for ci, cls in enumerate(spec.classes + spec.others)
            for i in picker.take(cls, scaled(spec.pool, scale))]
    truth = {}
    for u, o in enumerate(rng.permutation(len(pool))):
        i, ci, number = pool[o]
        own = ci < len(spec.classes)
        path = writer.write(i, ci if own else number, root / "unlabeled" / spec.name / f"u{u}")
        truth[path.name] = spec.names[ci] if own else None
    return truth


def truth_path(root: Path) -> Path:
    """The pool truth beside the root, not in it: a file in the root would be read as one of its entries."""
    return root.with_name(root.name + ".pool_truth.json")


def build_root(root: Path, seed: int = 0, scale: float = 1.0, idx_dir: Path = DEFAULT_IDX_DIR) -> Path:
    """Writes the three datasets under ``root`` (replacing a root this script built) and the pool truth beside it;
    returns the truth file. Deterministic for a (seed, scale)."""
    if root.exists():
        if not truth_path(root).is_file():
            raise SystemExit(f"{root} exists and was not built by this script (no {truth_path(root).name}); "
                             "choose another --root")
        shutil.rmtree(root)
    images, labels = load_source(idx_dir)
    rng = np.random.default_rng(seed)
    picker = Picker(labels, rng)
    truth = {spec.name: build_dataset(root, spec, images, picker, rng, scale) for spec in SPECS}
    build = {"seed": seed, "scale": scale, "files": sum(1 for p in root.rglob("*") if p.is_file())}
    truth_path(root).write_text(json.dumps({"build": build, "datasets": truth}, indent=1))
    return truth_path(root)


def ensure_root(root: Path, seed: int, scale: float, idx_dir: Path) -> dict:
    """The root's pool truth, building the root unless one of this seed and scale is there already."""
    path = truth_path(root)
    if root.is_dir() and path.is_file():
        truth = json.loads(path.read_text())
        if truth["build"]["seed"] == seed and truth["build"]["scale"] == scale:
            return truth
    build_root(root, seed, scale, idx_dir)
    truth = json.loads(path.read_text())
    print(f"built {root}: {truth['build']['files']} files (seed {seed}, scale {scale:g}); pool truth {path}",
          flush=True)
    return truth


# ---------------------------------------------------------------- running and scoring

def call_fewshot(args: list[str], log: Path) -> float:
    """Runs `python -m fewshot ARGS` with its output in ``log``; its wall-clock seconds. Stops on failure."""
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "fewshot", *args], stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): fewshot {' '.join(args)}; see {log}")
    return time.monotonic() - t0


def fresh(folder: Path) -> None:
    """An interrupted earlier attempt's folder goes: both commands want a new --out."""
    if folder.exists():
        shutil.rmtree(folder)


def run_method(root: Path, out: Path, seed: int, args: argparse.Namespace) -> dict:
    """`fewshot run` on the root (reused where its summary.json is there); its folder, seconds and image size."""
    folder = out / f"run_s{seed}"
    seconds = None
    if not (folder / "summary.json").is_file():
        fresh(folder)
        words = ["run", "--data", str(root), "--out", str(folder), "--budget-minutes", f"{args.minutes:g}",
                 "--model", args.model, "--seed", str(seed), "--device", "cpu", "--no-progress", "run.report=false"]
        seconds = call_fewshot(words, out / f"run_s{seed}.log")
    summary = json.loads((folder / "summary.json").read_text())
    return {"folder": str(folder), "seconds": seconds if seconds is not None else summary.get("seconds"),
            "img_size": summary["img_size"], "summary": summary}


def train_method(root: Path, out: Path, seed: int, img_size: int, args: argparse.Namespace) -> dict:
    """`fewshot train` on a time-based schedule of --train-share of the run's minutes, then `fewshot predict`."""
    folder = out / f"train_s{seed}"
    seconds = None
    if not (folder / "pred_all.json").is_file():
        fresh(folder)
        budget = args.minutes * args.train_share
        words = ["train", "--data", str(root), "--out", str(folder), "--model", args.model, "--img-size",
                 str(img_size), "--seed", str(seed), "--device", "cpu", "--epochs", "100000", "--no-progress",
                 f"train.budget_minutes={budget:g}", "sched.time_based=true"]
        seconds = call_fewshot(words, out / f"train_s{seed}.log")
        words = ["predict", str(folder), "--data", str(root), "--out", str(folder / "pred_all.json")]
        seconds += call_fewshot(words, out / f"train_s{seed}_predict.log")
    return {"folder": str(folder), "seconds": seconds}


def test_accuracy(pred_file: Path, root: Path) -> dict[str, float]:
    """Test acc@1 (%) per dataset and their mean, of a pred_all.json (indices in sorted class folders) against the
    answer keys (class names)."""
    pred = json.loads(pred_file.read_text())
    out = {}
    for ds in DATASETS:
        classes = sorted(p.name for p in (root / ds / "train").iterdir())
        key = json.loads((root / ds / "test_labels.json").read_text())
        mine = pred.get(ds, {})
        right = sum(1 for i, cls in key.items() if 0 <= mine.get(i, -1) < len(classes) and classes[mine[i]] == cls)
        out[ds] = 100.0 * right / len(key)
    out["mean"] = statistics.fmean(out[ds] for ds in DATASETS)
    return out


def pseudo_precision(run_folder: Path, truth: dict) -> dict:
    """Per round record and dataset: pseudo-labels kept, right (the pool image's true class), of other classes,
    and the precision (%), against the pool truth."""
    out = {}
    records = run_folder.glob("pseudo_labels_round*.json")
    for record in sorted(records, key=lambda p: int(p.stem.rsplit("round", 1)[1] or 0)):
        counts = {ds: {"kept": 0, "right": 0, "other_class": 0} for ds in DATASETS}
        for image in json.loads(record.read_text())["images"]:
            row, true = counts[image["dataset"]], truth["datasets"][image["dataset"]].get(Path(image["path"]).name)
            row["kept"] += 1
            row["right"] += int(true == image["class"])
            row["other_class"] += int(true is None)
        for row in counts.values():
            row["precision"] = 100.0 * row["right"] / row["kept"] if row["kept"] else None
        out[record.stem] = counts
    return out


def pool_warnings(summary: dict) -> dict[str, bool | None]:
    """Per dataset, whether the run's pool warning fired (pool_classes_check "suspect") in any self-training round;
    None where no round measured it."""
    fired: dict[str, bool | None] = {ds: None for ds in DATASETS}
    for stage in summary.get("stages", {}).values():
        for ds, row in ((stage.get("pseudo_labels") or {}).get("datasets") or {}).items():
            check = row.get("pool_classes_check")
            if check is not None and ds in fired:
                fired[ds] = bool(fired[ds]) or bool(check["suspect"])
    return fired


def one_seed(root: Path, out: Path, seed: int, truth: dict, args: argparse.Namespace) -> dict:
    """Both methods on one seed, scored."""
    run = run_method(root, out, seed, args)
    train = train_method(root, out, seed, run["img_size"], args)
    precision = pseudo_precision(Path(run["folder"]), truth)
    last = list(precision.values())[-1] if precision else None
    result = {"seed": seed, "img_size": run["img_size"],
              "run": {"test": test_accuracy(Path(run["folder"]) / "pred_all.json", root), "seconds": run["seconds"],
                      "pseudo_labels": precision, "pseudo_precision_last_round": last,
                      "pool_warning": pool_warnings(run["summary"])},
              "train": {"test": test_accuracy(Path(train["folder"]) / "pred_all.json", root),
                        "seconds": train["seconds"]}}
    print(f"  seed {seed}: run {result['run']['test']['mean']:.1f}, train {result['train']['test']['mean']:.1f}",
          flush=True)
    return result


# ---------------------------------------------------------------- summary

def median(xs: list) -> float | None:
    """The median of the values that are there."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def last_precision(result: dict, ds: str) -> float | None:
    """The precision (%) of a seed's last self-training round's pseudo-labels of ``ds``."""
    return ((result["run"]["pseudo_precision_last_round"] or {}).get(ds) or {}).get("precision")


def summarize(results: list[dict]) -> dict:
    """Medians over seeds per dataset: run, train, run minus train (per seed, then the median), the pseudo-labels'
    precision; and the seeds whose run warned of the dataset's pool."""
    rows = {}
    for ds in (*DATASETS, "mean"):
        run = [r["run"]["test"][ds] for r in results]
        train = [r["train"]["test"][ds] for r in results]
        own = ds != "mean"
        rows[ds] = {"run": median(run), "train": median(train),
                    "run_minus_train": median([a - b for a, b in zip(run, train)]),
                    "pseudo_precision": median([last_precision(r, ds) for r in results]) if own else None,
                    "pool_warning_seeds": [r["seed"] for r in results if own and r["run"]["pool_warning"][ds]]}
    rows["seconds"] = {"run": median([r["run"]["seconds"] for r in results]),
                       "train": median([r["train"]["seconds"] for r in results])}
    return rows


def fmt(x, spec: str = ".1f") -> str:
    """A number of the table, '-' where there is none."""
    return "-" if x is None else format(x, spec)


def table(rows: dict, n_seeds: int) -> str:
    """The printed table: test acc@1 medians, run minus train, pseudo-label precision and pool warnings."""
    lines = [f"test acc@1 (%), median of {n_seeds} seed(s)",
             f"{'dataset':<10} {'run':>6} {'train':>6} {'run-train':>10} {'pseudo prec':>12}  pool warning (seeds)",
             "-" * 72]
    for ds in (*DATASETS, "mean"):
        r = rows[ds]
        warned = "" if ds == "mean" else (",".join(map(str, r["pool_warning_seeds"])) or "none")
        lines.append(f"{ds:<10} {fmt(r['run']):>6} {fmt(r['train']):>6} {fmt(r['run_minus_train'], '+.1f'):>10} "
                     f"{fmt(r['pseudo_precision']):>12}  {warned}")
    s = rows["seconds"]
    lines.append(f"wall-clock seconds (median): run {fmt(s['run'], '.0f')}, train + predict {fmt(s['train'], '.0f')}")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/heldout_shapes"), help="run folders and logs")
    ap.add_argument("--root", type=Path, default=None, help="the data root to build (default: OUT/root)")
    ap.add_argument("--data-seed", type=int, default=0, help="the seed the root is built with")
    ap.add_argument("--scale", type=float, default=1.0, help="images per split and class x this (at least 1)")
    ap.add_argument("--idx-dir", type=Path, default=DEFAULT_IDX_DIR, help="Fashion-MNIST's IDX files")
    ap.add_argument("--build-only", action="store_true", help="build the root and its pool truth, run nothing")
    ap.add_argument("--minutes", type=float, default=2.0, help="the wall-clock budget of each method")
    ap.add_argument("--train-share", type=float, default=0.9,
                    help="train.budget_minutes as a share of --minutes (train's budget counts no start-up)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--model", default="test_resnet", help="both methods' model (hBH: test_resnet)")
    ap.add_argument("--results", type=Path, default=None,
                    help="results JSON (default benchmarks/results/heldout_shapes_<date>.json)")
    args = ap.parse_args(argv)
    if args.scale <= 0 or args.minutes <= 0 or not 0 < args.train_share <= 1:
        ap.error("--scale and --minutes must be positive and --train-share in (0, 1]")
    args.root = args.root or args.out / "root"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.build_only:
        print(f"built {args.root}; pool truth {build_root(args.root, args.data_seed, args.scale, args.idx_dir)}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    truth = ensure_root(args.root, args.data_seed, args.scale, args.idx_dir)
    results = [one_seed(args.root, args.out, seed, truth, args) for seed in args.seeds]
    rows = summarize(results)
    print(table(rows, len(results)))
    path = args.results or Path(f"benchmarks/results/heldout_shapes_{time.strftime('%Y-%m-%d')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    about = {"minutes": args.minutes, "train_budget_minutes": args.minutes * args.train_share, "model": args.model,
             "seeds": args.seeds, "data_seed": args.data_seed, "scale": args.scale, "build": truth["build"],
             "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
             "machine": platform.processor() or platform.machine()}
    path.write_text(json.dumps({"about": about, "summary": rows, "seeds": results}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
