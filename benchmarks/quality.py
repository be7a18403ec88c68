"""Accuracy at equal CPU budgets: `fewshot run` (and its ablations: MoCo, FixMatch) vs supervised from scratch.

The scratch baseline gets its learning rate chosen on the val splits (mean val acc@1, first
seed) from a grid, full backbone lr, the same strong augmentation, EMA and schedule. Each
method gets the same wall-clock budget per run. Reports test accuracy (answer keys) per
dataset as mean +- std over seeds, and writes JSON + a markdown table + a plot.

    python benchmarks/quality.py --data demo_data --budgets 5 10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


# the MoCo setting that learns at 32 px (configs/moco_cpu_small.yaml): small stem, half width, 2 split-BN groups, lr 0.06
SMALL_MOCO = ["run.pretrain=true", "model.small_stem=true", "model.width=0.5", "moco.split_bn_groups=2",
              "run.pretrain_lr=0.06"]


VARIANTS = [  # (run folder prefix, name, extra arguments of `fewshot run`); the first is the default
    ("st", "fewshot run: self-training on the pool (default)", ["run.semi_method=pseudo", "--no-pretrain"]),
    ("mst", "ablation: MoCo + self-training", ["run.semi_method=pseudo", "run.pretrain=true"]),
    ("v1", "ablation: MoCo + plain fine-tune", ["run.semi_method=off", "run.pretrain=true"]),
    ("v0", "ablation: MoCo + FixMatch fine-tune", ["run.semi_method=fixmatch", "run.pretrain=true"]),
    ("v2", "ablation: FixMatch, no MoCo", ["--no-pretrain", "run.semi_method=fixmatch"]),
    # stride-1 stem at half width: about the plain network's FLOPs, 4x the spatial positions at 32 px
    ("stc", "ablation: self-training, small stem + half width", ["run.semi_method=pseudo", "--no-pretrain",
                                                                 "model.small_stem=true", "model.width=0.5"]),
    # the official per-GPU batch: 2 shuffle-BN groups of 32 at batch 64 instead of 8 groups of 8
    ("v1g2", "ablation: MoCo (2 split-BN groups) + plain fine-tune", ["run.semi_method=off", "run.pretrain=true",
                                                                      "moco.split_bn_groups=2"]),
    # issue 4 at a longer budget: two thirds of it to MoCo (fine-tuning plateaus after a few minutes)
    ("v1p", "ablation: MoCo (2/3 of the budget) + plain fine-tune", ["run.semi_method=off", "run.pretrain=true",
                                                                     "run.pretrain_share=0.667"]),
    ("v1c", "ablation: MoCo + plain fine-tune, small stem + half width", ["run.semi_method=off", "run.pretrain=true",
                                                                         "model.small_stem=true", "model.width=0.5"]),
    # MoCo that learns in minutes (2026-12-02): small stem + half width, 2 split-BN groups of 32, lr 0.06 at batch 64
    ("v1n", "ablation: MoCo (small stem, half width, 2 BN groups, lr 0.06) + plain fine-tune",
     ["run.semi_method=off", *SMALL_MOCO]),
    ("mstn", "ablation: MoCo (small stem, half width, 2 BN groups, lr 0.06) + self-training",
     ["run.semi_method=pseudo", *SMALL_MOCO]),
    # issue 4 at 20 minutes (2026-12-02): that MoCo for 2/3 of the budget, then fine-tuning that keeps the features
    # (backbone lr x0.1; one 30-min MoCo + 5-min fine-tune reached val 87.55 against <= 86.85 for scratch)
    ("v1nb", "ablation: MoCo (small stem, half width, 2 BN groups, lr 0.06; 2/3 of the budget) + fine-tune at backbone lr x0.1",
     ["run.semi_method=off", *SMALL_MOCO, "run.pretrain_share=0.667", "run.finetune_backbone_mult=0.1"]),
    # the same with 85 % of the budget to MoCo: at 2/3 the fine-tuning peaked on val after an eighth of its epochs
    ("v1nb85", "ablation: MoCo (small stem, half width, 2 BN groups, lr 0.06; 85 % of the budget) + fine-tune at backbone lr x0.1",
     ["run.semi_method=off", *SMALL_MOCO, "run.pretrain_share=0.85", "run.finetune_backbone_mult=0.1"]),
    # issue 4/8 (2026-12-02): that MoCo (2/3 of the budget) as the start of self-training, both rounds at backbone lr
    # x0.1 (fine-tuning from it peaks within an eighth of its epochs, so the rounds get the last third)
    ("mstnb", "ablation: MoCo (small stem, half width, 2 BN groups, lr 0.06; 2/3 of the budget) + self-training at backbone lr x0.1",
     ["run.semi_method=pseudo", *SMALL_MOCO, "run.pretrain_share=0.667", "run.finetune_backbone_mult=0.1"]),
    # horizontal flips for the classes whose mean image is mirror-symmetric (fewshot.data.symmetry)
    ("sym", "ablation: scratch (lr 4e-3) + flips of mirror-symmetric classes",
     ["--no-pretrain", "run.semi_method=off", "optim.lr=0.004", "data.hflip_symmetric=0.5"]),
    ("stsym", "ablation: self-training + flips of mirror-symmetric classes",
     ["run.semi_method=pseudo", "--no-pretrain", "data.hflip_symmetric=0.5"]),
    # mixup / CutMix with partners from the same dataset (fewshot.data.mix), on scratch and on self-training
    ("mix", "ablation: scratch (lr 4e-3) + mixup 0.4", ["--no-pretrain", "run.semi_method=off", "optim.lr=0.004",
                                                        "data.mixup_alpha=0.4"]),
    ("cmix", "ablation: scratch (lr 4e-3) + CutMix 1.0", ["--no-pretrain", "run.semi_method=off", "optim.lr=0.004",
                                                          "data.cutmix_alpha=1.0"]),
    ("bmix", "ablation: scratch (lr 4e-3) + mixup 0.4 / CutMix 1.0", ["--no-pretrain", "run.semi_method=off",
                                                                      "optim.lr=0.004", "data.mixup_alpha=0.4",
                                                                      "data.cutmix_alpha=1.0"]),
    ("stmix", "ablation: self-training + mixup 0.4", ["run.semi_method=pseudo", "--no-pretrain",
                                                      "data.mixup_alpha=0.4"]),
    ("stcmix", "ablation: self-training + CutMix 1.0", ["run.semi_method=pseudo", "--no-pretrain",
                                                        "data.cutmix_alpha=1.0"]),
    # bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16 / AMX): more steps in the same time
    ("bf", "ablation: scratch (lr 4e-3), bf16 autocast", ["--no-pretrain", "run.semi_method=off", "optim.lr=0.004",
                                                          "train.amp=bf16"]),
    ("stbf", "ablation: self-training, bf16 autocast", ["run.semi_method=pseudo", "--no-pretrain", "train.amp=bf16"]),
    # scratch on the small-stem, half-width network (2026-12-02): on a CPU with native bf16 `train.amp=auto` runs it in
    # bf16 (1.4x a step), so it is the fair scratch baseline for the small-stem MoCo variants on such a CPU
    ("scc", "ablation: scratch (lr 4e-3), small stem + half width", ["--no-pretrain", "run.semi_method=off",
                                                                      "optim.lr=0.004", "model.small_stem=true",
                                                                      "model.width=0.5"]),
]


DEFAULT_RESULTS = "benchmarks/results/quality.json"
CACHED_ONLY = False  # --cached-only: tabulate the runs already on disk, start none


def run_one(data: Path, out: Path, budget: float, seed: int, extra: list[str], no_pretrain: bool) -> dict | None:
    summary = out / "summary.json"
    if not summary.is_file() and CACHED_ONLY:
        print(f"  {out}: not run yet, left out (--cached-only)", flush=True)
        return None
    if not summary.is_file():
        cmd = [sys.executable, "-m", "fewshot", "run", "--data", str(data), "--out", str(out), "--budget-minutes",
               str(budget), "--seed", str(seed), "--device", "cpu", "--no-progress", "run.report=false"]
        if no_pretrain:
            cmd.append("--no-pretrain")
        if out.is_dir():  # an interrupted earlier run: `fewshot run` wants a fresh folder
            shutil.rmtree(out)
        t0 = time.time()
        proc = subprocess.run(cmd + extra, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd + extra)}\n{proc.stderr[-3000:]}")
        print(f"  {out.name}: {time.time() - t0:.0f} s", flush=True)
    s = json.loads(summary.read_text())
    m = s["metrics"]
    return {"seed": seed, "val": {k: v["acc1"] for k, v in m["val"]["datasets"].items()},
            "val_mean": m["val"]["mean_acc1"],
            "test": {k: v["acc1"] for k, v in m["test"]["datasets"].items()},
            "test_mean": m["test"]["mean_acc1"], "seconds": s["seconds"]}


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def load_results(path: str) -> dict:
    """An earlier results file for --merge, refused clearly where it is not one."""
    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--merge {path}: cannot read it as a results JSON ({exc})") from None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("budgets"), dict):
        raise SystemExit(f"--merge {path}: not a results file of benchmarks/quality.py (no 'budgets')")
    for entry in earlier["budgets"].values():  # files older than the "n_seeds" field: count the runs
        entry.setdefault("n_seeds", {name: n_runs(entry, name) for name in entry.get("table", {})})
    return earlier


def scratch_choice(entry: dict | None) -> str | None:
    """The scratch lr (its key in entry["scratch"]) that an earlier results entry chose, or None."""
    if not entry or not entry.get("scratch"):
        return None
    chosen = entry.get("scratch_best_lr")
    for lr in entry["scratch"]:
        if chosen is not None and float(lr) == float(chosen):
            return lr
    return max(entry["scratch"], key=lambda lr: entry["scratch"][lr][0]["val_mean"])  # the rule it was chosen by


def n_runs(entry: dict, name: str) -> int:
    """The runs behind a table row."""
    if name in entry.get("variants", {}):
        return len(entry["variants"][name])
    return len(entry["scratch"][scratch_choice(entry)])


def with_seeds(runs: list[dict], old_seeds: list[int]) -> list[dict]:
    """Runs are recorded in seed order; records older than the "seed" field take it from there."""
    return [r if "seed" in r else {**r, "seed": old_seeds[i] if i < len(old_seeds) else None}
            for i, r in enumerate(runs)]


def planned_runs(args: argparse.Namespace, old: dict | None) -> dict[tuple[str, str], set[int]]:
    """(kind, method) -> the seeds this invocation runs, for the up-front overlap check of --merge."""
    plan: dict[tuple[str, str], set[int]] = {}
    lr = scratch_choice(old)
    if lr is not None and not args.no_scratch:  # with an earlier lr choice, its lr runs every seed
        plan[("scratch", lr)] = set(args.seeds)
    for v, (folder, name, _) in enumerate(VARIANTS):
        if (v and args.no_ablations) or (args.variants and folder not in args.variants):
            continue
        plan[("variants", name)] = set(args.seeds if not v else (args.ablation_seeds or args.seeds))
    return plan


def check_merge_overlap(args: argparse.Namespace, earlier: dict) -> None:
    """Refuse before any run starts, not after hours of runs, when a method would get a seed the earlier file has."""
    for budget in args.budgets:
        old = earlier.get("budgets", {}).get(f"{budget:g}")
        if not old:
            continue
        for (kind, method), seeds in planned_runs(args, old).items():
            runs = with_seeds(old.get(kind, {}).get(method, []), earlier.get("seeds", []))
            both = seeds & {r["seed"] for r in runs}
            label = method if kind == "variants" else f"scratch lr {method}"
            if both:
                raise SystemExit(f"--merge {args.merge}: at {budget:g} min, '{label}' already has seeds "
                                 f"{sorted(both)}; run other --seeds (or leave out --merge)")


def merge_runs(into: dict, old: dict, old_seeds: list[int], source: str) -> None:
    """Adds an earlier file's runs (method -> runs) to this invocation's; a method's seeds must not overlap."""
    for key, runs in old.items():
        runs = with_seeds(runs, old_seeds)
        both = {r["seed"] for r in runs} & {r["seed"] for r in into.get(key, [])}
        if both:
            raise SystemExit(f"--merge: {key} has runs of seeds {sorted(both)} in both {source} and this one")
        into.setdefault(key, [])[:0] = runs


def tabulate(entry: dict, best_lr: str | None) -> None:
    """entry["table"] (test acc@1 mean and std per dataset and overall) and entry["n_seeds"], one row a method."""
    entry["scratch_best_lr"] = None if best_lr is None else float(best_lr)
    entry["table"], entry["n_seeds"] = {}, {}
    scratch_row = [] if best_lr is None else [("scratch (lr %s, chosen on val)" % best_lr, entry["scratch"][best_lr])]
    for name, runs in scratch_row + list(entry["variants"].items()):
        datasets = runs[0]["test"].keys()
        entry["table"][name] = {d: mean_std([r["test"][d] for r in runs]) for d in datasets}
        entry["table"][name]["mean"] = mean_std([r["test_mean"] for r in runs])
        entry["n_seeds"][name] = len(runs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="demo_data")
    ap.add_argument("--out", default="runs/quality")
    ap.add_argument("--budgets", type=float, nargs="+", default=[5.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scratch-lrs", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3])
    ap.add_argument("--extra", nargs="*", default=[], help="key=value overrides for both methods")
    ap.add_argument("--results", default=None, help=f"results JSON (default {DEFAULT_RESULTS}); .md and .png beside it")
    ap.add_argument("--no-ablations", action="store_true", help="only scratch and the default `fewshot run`")
    ap.add_argument("--ablation-seeds", type=int, nargs="*", help="seeds for the ablation variants (default: all)")
    ap.add_argument("--variants", nargs="*", help="run folder prefixes of the variants to run "
                    f"(default: all; {', '.join(v[0] for v in VARIANTS)})")
    ap.add_argument("--no-scratch", action="store_true", help="run no scratch baseline (the variants only; their "
                    "comparison is then with a baseline from another results file)")
    ap.add_argument("--merge", help="a results JSON of an earlier invocation: its runs of the same budgets and methods "
                    "are added to this one's (e.g. a third seed run later; a method's seeds must not overlap), and its other "
                    "budgets are kept; its scratch lr choice is kept too (this one runs that lr only)")
    ap.add_argument("--cached-only", action="store_true", help="start no run: tabulate and plot the runs already "
                    "under --out (a seed missing for a budget is left out of that budget's mean)")
    args = ap.parse_args(argv)
    if args.results is None:  # the parsed value, not argv: --res is argparse's abbreviation of --results
        if args.cached_only:
            ap.error("--cached-only needs an explicit --results, so that a partial table cannot overwrite the "
                     f"committed {DEFAULT_RESULTS}")
        args.results = DEFAULT_RESULTS
    global CACHED_ONLY
    CACHED_ONLY = args.cached_only
    root = Path(args.out)
    earlier = load_results(args.merge) if args.merge else None
    if earlier is not None:
        check_merge_overlap(args, earlier)
    seeds = sorted(set(args.seeds) | set(earlier.get("seeds", []) if earlier else []))
    results: dict = {"budgets": {}, "seeds": seeds, "scratch_lrs": args.scratch_lrs}
    for budget in args.budgets:
        print(f"budget {budget:g} min", flush=True)
        entry: dict = {"scratch": {}, "variants": {}}
        data = Path(args.data)
        old = (earlier or {}).get("budgets", {}).get(f"{budget:g}")
        # 1) the scratch learning rate is chosen on the val splits with the first seed; with --merge, the earlier
        # file's choice is kept (choosing again on this seed could pick another lr and drop its runs)
        s0 = args.seeds[0]
        best_lr = scratch_choice(old)
        if best_lr is not None:
            print(f"  scratch lr {best_lr}: chosen on val in {args.merge}, kept", flush=True)
        for lr in [] if args.no_scratch or best_lr is not None else args.scratch_lrs:
            entry["scratch"][str(lr)] = [run_one(data, root / f"b{budget:g}/scratch_lr{lr:g}_s{s0}", budget, s0,
                                                 args.extra + [f"optim.lr={lr}", "run.semi_method=off"],
                                                 no_pretrain=True)]
        if best_lr is None:
            missing = [lr for lr, runs in entry["scratch"].items() if runs[0] is None]
            entry["scratch"] = {lr: runs for lr, runs in entry["scratch"].items() if runs[0] is not None}
            if not entry["scratch"] and not args.no_scratch:
                print(f"  WARNING: no scratch run of seed {s0} for {budget:g} min: budget left out", flush=True)
                continue
            if missing:
                print(f"  WARNING: the scratch lr is chosen among {', '.join(entry['scratch'])} only "
                      f"({', '.join(missing)} not run)", flush=True)
            best_lr = max(entry["scratch"], key=lambda lr: entry["scratch"][lr][0]["val_mean"]) if entry["scratch"] else None
            scratch_seeds = [s for s in args.seeds if s != s0]  # s0's run is the grid's
        else:
            scratch_seeds = [] if args.no_scratch else args.seeds
        # 2) both methods over every seed, alternating so machine noise hits both alike
        for seed in args.seeds:
            for v, (folder, name, vargs) in enumerate(VARIANTS):
                if v and (args.no_ablations or seed not in (args.ablation_seeds or args.seeds)):
                    continue
                if args.variants and folder not in args.variants:
                    continue
                entry["variants"].setdefault(name, []).append(
                    run_one(data, root / f"b{budget:g}/{folder}_s{seed}", budget, seed, args.extra + vargs, no_pretrain=False))
            if seed in scratch_seeds:
                entry["scratch"].setdefault(best_lr, []).append(
                    run_one(data, root / f"b{budget:g}/scratch_lr{float(best_lr):g}_s{seed}", budget, seed,
                            args.extra + [f"optim.lr={best_lr}", "run.semi_method=off"], no_pretrain=True))
        entry["scratch"] = {lr: [r for r in runs if r is not None] for lr, runs in entry["scratch"].items()}
        entry["variants"] = {n: [r for r in runs if r is not None] for n, runs in entry["variants"].items()}
        entry["variants"] = {n: runs for n, runs in entry["variants"].items() if runs}
        if old:  # add the earlier invocation's runs of the same methods (other seeds) or of other methods
            merge_runs(entry["scratch"], old.get("scratch", {}), earlier.get("seeds", []), args.merge)
            merge_runs(entry["variants"], old.get("variants", {}), earlier.get("seeds", []), args.merge)
        entry["scratch"] = {lr: runs for lr, runs in entry["scratch"].items() if runs}
        if best_lr not in entry["scratch"]:  # its runs are not on disk yet (--cached-only)
            best_lr = None
        tabulate(entry, best_lr)
        if not entry["table"]:
            print(f"  WARNING: no runs for {budget:g} min: budget left out", flush=True)
            continue
        results["budgets"][f"{budget:g}"] = entry
    if earlier:  # budgets this invocation did not touch stay as they were
        merged = {**earlier.get("budgets", {}), **results["budgets"]}
        results["budgets"] = {b: merged[b] for b in sorted(merged, key=float) if merged[b].get("table")}
    if not results["budgets"]:
        raise SystemExit("no budget has runs to tabulate")
    cols = list(next(iter(next(iter(results["budgets"].values()))["table"].values())))
    lines = ["| budget (min) | method | seeds | " + " | ".join(cols) + " |", "|" + "---|" * (3 + len(cols))]
    for budget, entry in results["budgets"].items():
        for name, row in entry["table"].items():
            lines.append(f"| {budget} | {name} | {entry['n_seeds'].get(name, '?')} | "
                         + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in row.values()) + " |")
    table = "\n".join(lines)
    print(table)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)  # the table is built: write JSON and .md together
    Path(args.results).write_text(json.dumps(results, indent=2))
    Path(args.results).with_suffix(".md").write_text(table + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        budgets = [float(b) for b in results["budgets"]]
        labels = list(next(iter(results["budgets"].values()))["table"])
        fig, axes = plt.subplots(1, 1 if len(budgets) == 1 else len(cols), squeeze=False,
                                 figsize=(7, 4.8) if len(budgets) == 1 else (4.2 * len(cols), 4.8))
        ax = axes[0][0]
        if len(budgets) == 1:  # one budget: bars per method, per dataset and the mean
            table = next(iter(results["budgets"].values()))["table"]
            cols = list(table[labels[0]])
            width = 0.8 / len(labels)
            for idx, label in enumerate(labels):
                xs = [c + (idx - (len(labels) - 1) / 2) * width for c in range(len(cols))]
                ax.bar(xs, [table[label][c][0] for c in cols], width, yerr=[table[label][c][1] for c in cols],
                       capsize=3, label=label)
            ax.set_xticks(range(len(cols)), cols)
            ax.set_ylim(50, 100)
            ax.set_title(f"{budgets[0]:g} CPU-minutes per run (2 cores), mean ± std over seeds")
        else:  # one panel per dataset and the mean: accuracy against budget, one line per method
            def method(name: str) -> str:  # the scratch row's name carries its lr, which may differ by budget
                return "scratch (lr chosen on val)" if name.startswith("scratch") else name

            names = list(dict.fromkeys(method(n) for e in results["budgets"].values() for n in e["table"]))
            for ax, col in zip(axes[0], cols):
                for label in names:  # a method missing at a budget is a gap in its line, not a shifted one
                    pts = [(float(b), row[col]) for b, e in results["budgets"].items()
                           for n, row in e["table"].items() if method(n) == label]
                    ax.errorbar([b for b, _ in pts], [m for _, (m, _) in pts], yerr=[sd for _, (_, sd) in pts],
                                marker="o", capsize=4, label=label)
                ax.set_title(col)
                ax.set_xlabel("budget per run (CPU minutes, 2 cores)")
                ax.grid(alpha=0.3)
            ax = axes[0][0]
        ax.set_ylabel("test acc@1 (%), mean ± std over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)
        fig.tight_layout()
        fig.savefig(Path(args.results).with_suffix(".png"), dpi=100)
    except Exception as exc:  # plotting is a convenience
        print(f"(no plot: {exc})")


if __name__ == "__main__":
    main()
