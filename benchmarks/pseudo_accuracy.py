"""How right were the pseudo-labels? Scores a run's pseudo_labels_round*.json on the demo data.

The demo pool's true classes are not on disk (it is unlabeled by design), but the demo builder is
deterministic: `plan_splits(name, seed)` says which source image became `unlabeled/<name>/<n>.png`.
This script re-derives those classes (and checks a few files against the source images), then prints,
per run, round and dataset, how many images were kept and how many of them carry the right class.

    python benchmarks/pseudo_accuracy.py runs/quality/b3/st_s0 [more runs ...] [--seed 0] [--shots 10 ...]

The plan depends on the seed and on the split sizes, so give the `fewshot data` flags the root was built with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from fewshot.data.build import CLASS_NAMES, plan_splits


SIZES = ("shots", "val_per_class", "test_per_class", "pool_per_class")  # the `fewshot data` flags the plan reads


def pool_classes(name: str, seed: int, root: Path | None, sizes: dict | None = None) -> dict[str, str]:
    """file name in unlabeled/<name>/ -> true class folder name. ``sizes``: SIZES given (None: the builder's)."""
    sizes = {k: v for k, v in (sizes or {}).items() if v is not None}
    plan = plan_splits(name, seed=seed, **sizes)
    src_name, idx = plan.splits["unlabeled"]
    src = plan.sources[src_name]
    if root is not None:  # the files on disk must be the planned ones, else the scores mean nothing
        for n in sorted({0, len(idx) // 2, len(idx) - 1}):
            path = root / "unlabeled" / name / f"{n}.png"
            on_disk = np.asarray(Image.open(path)) if path.is_file() else None
            if on_disk is None or not np.array_equal(on_disk, np.ascontiguousarray(src.images[idx[n]])):
                # the seed and the split sizes both decide which image lands where: a seed alone was blamed
                given = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in sizes.items())
                raise SystemExit(f"{path} {'is not' if on_disk is not None else 'is missing, not'} the image the "
                                 f"demo plan (--seed {seed}{', ' + given if given else ''}; other sizes the "
                                 "builder's defaults) puts there: the root was built with another --seed or other "
                                 "split sizes. Pass the --seed, --shots, --val-per-class, --test-per-class and "
                                 "--pool-per-class that `fewshot data` built it with.")
    return {f"{n}.png": CLASS_NAMES[name][int(src.labels[i])] for n, i in enumerate(idx)}


def score(record: dict, truth: dict[str, dict[str, str]]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for entry in record.get("images", []):
        name = entry["dataset"]
        if name not in truth:
            continue
        row = out.setdefault(name, {"kept": 0, "correct": 0})
        row["kept"] += 1
        row["correct"] += int(truth[name].get(Path(entry["path"]).name) == entry["class"])
    for row in out.values():
        row["accuracy"] = round(100.0 * row["correct"] / max(1, row["kept"]), 2)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--seed", type=int, default=0, help="the seed the demo data was built with")
    for size in SIZES:  # as `fewshot data` takes them; not given: its defaults
        flag = "--" + size.replace("_", "-")
        ap.add_argument(flag, type=int, help=f"the {flag} the demo data was built with (default: fewshot data's)")
    ap.add_argument("--data", type=Path, default=Path("demo_data"), help="the demo root, to check the files")
    args = ap.parse_args(argv)
    if not (args.data / "unlabeled").is_dir():  # unchecked, files of another plan scored as if they were ours
        ap.error(f"--data {args.data}: no unlabeled/ folder there; pass the demo root the runs were trained on")
    sizes = {k: getattr(args, k) for k in SIZES}
    # the demo datasets the root holds (a root of digits alone looked for fashion-mnist's files)
    truth = {name: pool_classes(name, args.seed, args.data, sizes) for name in CLASS_NAMES
             if (args.data / "unlabeled" / name).is_dir()}
    result = {}
    for run in args.runs:
        for record_path in sorted(run.glob("pseudo_labels_round*.json")):
            scores = score(json.loads(record_path.read_text()), truth)
            result[str(record_path)] = scores
            for name, row in scores.items():
                print(f"{record_path}: {name:15s} kept {row['kept']:5d}, correct {row['accuracy']:6.2f} %")
    if not result:
        print("no pseudo_labels_round*.json with per-image records in the given runs")


if __name__ == "__main__":
    main()
