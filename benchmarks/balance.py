"""Does class-balanced prediction help? Test acc@1 of trained runs with `--balance off`, `on` and `auto`.

The same model is scored three ways, so the comparison is paired and does not depend on the machine's load:
plain argmax (off); per-class offsets fitted on the test images so that the predicted classes follow the train
split's proportions (on); and the default, which keeps the offsets of a dataset only where the same correction
fitted on its val images does not lower val accuracy (auto). Prints a line per run and a mean per dataset; writes
JSON.

    python benchmarks/balance.py runs/quality/b10/st_s0/finetune runs/quality/b10/scratch_lr0.004_s0/finetune ...
    python benchmarks/balance.py RUNS ... --skewed-copy /tmp/skewed   # the same runs on a skewed test split

`--skewed-copy DIR` first copies --data to DIR and keeps, in each dataset's test split, every image of the first
half of the classes but only a tenth of the others (answer keys cut to match): a test split that is not drawn
like the train split, where evening out to the train proportions would cost accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
from pathlib import Path

import torch

from fewshot.eval.predict import evaluate_run, load_trained

HOW = ("off", "on", "auto")


def scores(run: Path, data: Path) -> dict:
    """{how: {dataset: test acc@1}} of one run; the predict lines of `auto` are kept (they carry the val evidence)."""
    out, said = {}, ""
    # the run's own data.skip_bad_images, passed: evaluate_run no longer inherits it (fGG), and a root with a broken
    # test image stopped with DataLayoutError (review rev109 #5)
    with contextlib.redirect_stdout(io.StringIO()):
        skip_bad = bool(load_trained(run, torch.device("cpu")).cfg["data"].get("skip_bad_images", False))
    for how in HOW:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            metrics = evaluate_run(run, data, "known", torch.device("cpu"), split="test", skip_bad=skip_bad,
                                   balance=how)
        if how == "auto":
            said = next((s for s in buf.getvalue().splitlines() if "class-balanced" in s), "")
        out[how] = {name: round(d["acc1"], 2) for name, d in metrics["datasets"].items()}
        out[how]["mean"] = round(metrics["mean_acc1"], 2)
    out["auto_said"] = said
    return out


def skewed_copy(data: Path, out: Path) -> Path:
    """A copy of the root whose test splits keep all images of the first half of the classes, a tenth of the rest."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(data, out)
    for key_file in sorted(out.glob("*/test_labels.json")):
        key = json.loads(key_file.read_text())
        by_class: dict = {}
        for image_id, c in key.items():
            by_class.setdefault(c, []).append(image_id)
        classes = sorted(by_class, key=lambda c: (isinstance(c, str), c))
        keep = {}
        for rank, c in enumerate(classes):
            ids = by_class[c] if rank < len(classes) // 2 else by_class[c][: max(1, len(by_class[c]) // 10)]
            keep.update({i: c for i in ids})
        for image in (key_file.parent / "test").iterdir():
            if image.stem not in keep:
                image.unlink()
        key_file.write_text(json.dumps(keep))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders or fewshot run stage folders (OUT/finetune)")
    ap.add_argument("--data", type=Path, default=Path("demo_data"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/balance.json"))
    ap.add_argument("--skewed-copy", type=Path, help="score on a copy of --data with skewed test splits, made here")
    args = ap.parse_args()
    if args.skewed_copy:
        args.data = skewed_copy(args.data, args.skewed_copy)
    rows = {}
    for run in args.runs:
        rows[str(run)] = row = scores(run, args.data)
        print(run, " | ".join(f"{how}: {row[how]}" for how in HOW), flush=True)
        print("   ", row["auto_said"], flush=True)
    names = [k for k in next(iter(rows.values()))["off"]]
    summary = {}
    for name in names:
        gains = {how: [r[how][name] - r["off"][name] for r in rows.values()] for how in ("on", "auto")}
        summary[name] = {how: {"mean_gain": round(statistics.fmean(g), 2), "per_run": [round(x, 2) for x in g],
                               "better": sum(x > 0 for x in g), "worse": sum(x < 0 for x in g)}
                         for how, g in gains.items()}
        print(f"{name}: " + "; ".join(f"{how} {v['mean_gain']:+.2f} (better in {v['better']}, worse in {v['worse']} "
                                      f"of {len(rows)})" for how, v in summary[name].items()))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"runs": rows, "gain_over_off": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
