"""Upper bounds for self-training: demo roots whose pool images are labelled (truly or as a run did).

Self-training can at best turn the pool into labelled images. These roots measure how much that
would be worth, by plain supervised training on them (`fewshot run --baseline`):

    # every pool image with its true class: the ceiling of any use of the pool as labels
    python benchmarks/oracle_data.py --out /tmp/oracle
    # the images a run pseudo-labelled, with their true classes / with the run's classes
    python benchmarks/oracle_data.py --out /tmp/diag_true --record RUN/pseudo_labels_round2.json --labels true
    python benchmarks/oracle_data.py --out /tmp/diag_pseudo --record RUN/pseudo_labels_round2.json --labels pseudo
    fewshot run --data /tmp/oracle --out runs/oracle --budget-minutes 3 --baseline

With --record, the labelled images appear --repeat times (3, as `run.pseudo_labelled_repeat`). The
roots are symlinks into --data (val, test and answer keys unchanged), so they cost no disk.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fewshot.data.build import CLASS_NAMES
from pseudo_accuracy import pool_classes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("demo_data"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0, help="the seed the demo data was built with")
    ap.add_argument("--record", type=Path, help="a run's pseudo_labels_roundK.json: only its images join train")
    ap.add_argument("--labels", choices=("true", "pseudo"), default="true")
    ap.add_argument("--repeat", type=int, default=None, help="copies of each labelled image (default: 1, 3 with --record)")
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; choose a new --out")
    src = args.data.resolve()
    if args.labels == "pseudo" and not args.record:
        ap.error("--labels pseudo needs --record RUN/pseudo_labels_roundK.json (the pseudo labels come from it)")
    repeat = args.repeat or (3 if args.record else 1)
    names = [n for n in CLASS_NAMES if (src / n / "train").is_dir()]
    truth = {n: pool_classes(n, args.seed, src) for n in names}
    if args.record:
        record = json.loads(args.record.read_text())
        chosen = [(e["dataset"], Path(e["path"]).name, e["class"]) for e in record["images"]]
    else:
        chosen = [(n, f, None) for n in names for f in truth[n]]
    for name in names:
        ds = args.out / name
        ds.mkdir(parents=True)
        for entry in ("val", "test", "test_labels.json"):
            if (src / name / entry).exists():
                os.symlink(src / name / entry, ds / entry)
        for cls in CLASS_NAMES[name]:
            (ds / "train" / cls).mkdir(parents=True)
            for f in sorted((src / name / "train" / cls).iterdir()):
                for r in range(repeat):
                    os.symlink(f, ds / "train" / cls / (f.name if r == 0 else f"copy{r}_{f.name}"))
    counts = {n: 0 for n in names}
    for name, file, pseudo in chosen:
        if name not in truth:
            continue
        cls = pseudo if args.labels == "pseudo" and pseudo is not None else truth[name][file]
        os.symlink(src / "unlabeled" / name / file, args.out / name / "train" / cls / f"pool_{file}")
        counts[name] += 1
    print(f"wrote {args.out}: pool images added to train ({args.labels} labels): {counts}")


if __name__ == "__main__":
    main()
