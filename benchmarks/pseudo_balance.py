"""Would class-balancing the pool's predictions give cleaner pseudo-labels? An offline check on finished runs.

`fewshot predict` balances test predictions with per-class offsets fitted on the images themselves
(fewshot.eval.balance.class_offsets). The same could be done to the pool before self-training picks its
pseudo-labels: a teacher that files shirts under pullover would then call more of them shirt. This script
takes each run's round-1 teacher (OUT/finetune_labelled, best val checkpoint), labels the demo pool with and
without offsets that even its predictions out over each dataset's classes, selects the pseudo-labels as
`fewshot run` does (class quota, threshold) at two quota sizes, and scores them against the demo pool's true
classes (benchmarks/pseudo_accuracy.py re-derives them). Nothing is trained.

    python benchmarks/pseudo_balance.py runs/r1/st_s0 runs/r1/st_s1 --results benchmarks/results/pseudo_balance.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pseudo_accuracy import pool_classes  # noqa: E402

from fewshot.config import resolve  # noqa: E402
from fewshot.data.layout import scan_root  # noqa: E402
from fewshot.eval.balance import class_offsets  # noqa: E402
from fewshot.eval.evaluate import compute_logits  # noqa: E402
from fewshot.eval.predict import load_trained  # noqa: E402
from fewshot.train.distributed import DistContext  # noqa: E402
from fewshot.train.semi import class_quota, labelled_counts, load_pool, select_pseudo_labels  # noqa: E402
from fewshot.train.supervised import SupervisedTask  # noqa: E402


def balanced(logits: torch.Tensor, ids: torch.Tensor, space) -> torch.Tensor:
    """The pool's logits with each dataset's classes evened out over that dataset's pool images."""
    out = logits.clone()
    for d in range(len(space.names)):
        rows = torch.nonzero(ids == d).flatten()
        cols = torch.arange(space.offsets[d], space.offsets[d] + space.sizes[d])
        if len(rows):
            sub = logits[rows][:, cols]
            out[rows[:, None], cols] = sub + class_offsets(sub, torch.full((len(cols),), 1.0 / len(cols)))
    return out


def score(logits, ids, paths, space, truth, quota, threshold) -> dict:
    idx, labels, _ = select_pseudo_labels(logits, ids, space, quota.per_class, threshold, quota.per_dataset)
    owner, local = space.owner()[labels], space.to_local(labels)[1]
    out = {}
    for d, name in enumerate(space.names):
        mine = owner == d
        right = sum(truth[name][Path(paths[i]).name] == space.classes[d][c]
                    for i, c in zip(idx[mine].tolist(), local[mine].tolist()))
        rows = torch.nonzero(ids == d).flatten()
        cols = slice(space.offsets[d], space.offsets[d] + space.sizes[d])
        pred = logits[rows][:, cols].argmax(1).tolist()
        pool_right = sum(truth[name][Path(paths[i]).name] == space.classes[d][p] for i, p in zip(rows.tolist(), pred))
        out[name] = {"kept": int(mine.sum()), "right": int(right), "pool_argmax_acc": pool_right / max(1, len(rows))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished `fewshot run` folders (self-training) on demo data")
    ap.add_argument("--keep", nargs="+", type=float, default=[0.5, 1.0], help="run.pseudo_keep values to score")
    ap.add_argument("--demo-seed", type=int, default=0, help="the seed the demo data was built with")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/pseudo_balance.json"))
    args = ap.parse_args()
    device, results = torch.device("cpu"), {}
    for run in args.runs:
        cfg = resolve(file=run / "finetune_labelled" / "config.yaml", overrides=[])
        infos = scan_root(cfg["data"]["root"], cfg["data"]["datasets"], splits=("train", "val"))
        task = SupervisedTask(cfg, infos, device, DistContext())
        task.model.load_state_dict(load_trained(run / "finetune_labelled", device).model.state_dict())
        images, ids, paths, _, _ = load_pool(cfg, infos, task.size, exclude_train=True)
        logits = compute_logits(task.model, images, task.normalize, device, channels_last=False, desc="pool")
        space, r = task.space, cfg["run"]
        truth = {n: pool_classes(n, args.demo_seed, Path(cfg["data"]["root"])) for n in space.names}
        results[str(run)] = {}
        for how, lg in (("plain", logits), ("balanced", balanced(logits, ids, space))):
            for keep in args.keep:
                quota = class_quota(ids, space, keep, labelled_counts(infos, space), r["pseudo_max_per_shot"])
                got = score(lg, ids, paths, space, truth, quota, float(r["pseudo_threshold"]))
                results[str(run)][f"{how}_keep{keep}"] = got
                print(run, how, f"keep {keep}:", "  ".join(
                    f"{n} {v['right']}/{v['kept']} right (pool argmax {100 * v['pool_argmax_acc']:.1f} %)"
                    for n, v in got.items()), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
