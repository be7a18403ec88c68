"""How long fewshot takes to look at a large data root before any image is decoded: `scan_root` over the train, val
and test splits (every command's first step) and the check that an existing `eval`/`predict --out` is no file the
data links to (every rerun of those). Empty files with image names stand in for images: scanning never decodes.
Builds the root once under --root (classes x shots train images, 20 val images per class, --test test images), then
prints the median of --runs timings and writes JSON.

    python benchmarks/scan_speed.py --root /tmp/scan_root --results benchmarks/results/scan_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from fewshot.data import layout, output_guard


def build(root: Path, classes: int, shots: int, test: int) -> Path:
    """ROOT/big/{train,val}/cXXX/*.png and ROOT/big/test/*.png as empty files; reused when already complete."""
    stamp = root / f".built-{classes}-{shots}-{test}"
    if stamp.exists():
        return root
    ds = root / "big"
    for c in range(classes):
        for split, n in (("train", shots), ("val", 20)):
            folder = ds / split / f"c{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"{i:05d}.png").touch()
    (ds / "test").mkdir(parents=True, exist_ok=True)
    for i in range(test):
        (ds / "test" / f"{i}.png").touch()
    stamp.touch()
    return root


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, required=True, help="where the stand-in root is built (or reused)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--shots", type=int, default=1000, help="train images per class")
    p.add_argument("--test", type=int, default=100_000, help="test images")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--results", type=Path, help="JSON file to write")
    args = p.parse_args(argv)
    if min(args.classes, args.shots, args.test, args.runs) < 1:
        p.error("--classes, --shots, --test and --runs must be at least 1")
    root = build(args.root, args.classes, args.shots, args.test)
    out = args.root / "pred_all.json"
    out.write_text("{}")  # an existing --out: the rerun case the check reads the data for
    scan = median_seconds(lambda: layout.scan_root(root, ["big"], splits=("train", "val", "test")), args.runs)
    check = median_seconds(lambda: output_guard.check_result_file_is_not_an_input(out, root, args.root / "no-run",
                                                                                  kind="predictions"), args.runs)
    files = args.classes * (args.shots + 20) + args.test
    result = {"files": files, "runs": args.runs, "scan_root_s": round(scan, 4), "out_check_s": round(check, 4)}
    print(f"{files} files: scan_root (train, val, test) {scan:.2f} s, eval/predict --out check {check:.3f} s "
          f"(medians of {args.runs})")
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
