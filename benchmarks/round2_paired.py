"""Self-training variants compared from the *same* teacher: a paired benchmark of the last round.

`fewshot run` plans time-based schedules, so two runs of one seed do not train the same round-1
model (on a busy machine, or just by timing, round 1's val can differ by 1-2 points), and a
difference between two whole runs mixes the teacher's luck with the variant's effect. Here each
variant relabels the pool with one finished run's round-1 model (OUT/finetune_labelled, best val
checkpoint, EMA weights) and trains round 2 from it for the same wall time that run's round 2 had;
the report is each variant's val accuracy and its gain over that shared round 1. ``--seconds planned`` gives
round 2 the training time that run's round 2 planned (finetune_round2's config.yaml with more than 2 rounds, else
finetune's), not the whole stage's seconds (which count its step timing, evaluations and checkpoint writes too): a
short round 2 is replayed as short as it was; a run whose round 2 was skipped or labelled-only is refused;
``--seconds 4`` gives every run's round 2 4 s of training. The replay's pseudo-labels carry no round-1 lr, so a
short replayed round trains as its flags say (the run's own rule, run_stages.SHORT_ROUND_EPOCHS, is not applied).

    python benchmarks/round2_paired.py runs/quality/b3/st_s0 runs/quality/b3/st_s1 \\
        --variants hard="" soft="run.pseudo_targets=soft" p90="run.pseudo_precision=0.9 run.pseudo_keep=1.0"
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from fewshot.config import resolve
from fewshot.data.layout import scan_root
from fewshot.eval.predict import load_trained
from fewshot.run_pseudo import pseudo_label_pool
from fewshot.run_stages import RECIPE_FIELDS, finetune_stage
from fewshot.train.distributed import DistContext
from fewshot.train.supervised import SupervisedTask


def round2_stage(run: Path, summary: dict) -> str:
    """The stage folder of ``run``'s round 2: finetune_round2 with run.pseudo_rounds above 2, else finetune (the last
    round; with 3 rounds that is round 3, not round 2's plan). A run whose round 2 was skipped, or trained on the
    labelled images only, has no round 2 to replay: refused with the reason."""
    stages = summary.get("stages") or {}
    if "finetune_round2" in stages:
        return "finetune_round2"
    if (summary.get("self_training_labelled_only") or {}).get("round") == 2:
        raise SystemExit(f"{run}: round 2 trained on the labelled images only (no pseudo-labels): nothing to replay; "
                         f"pass runs whose round 2 trained on the pool.")
    if "finetune" not in stages or 2 in (summary.get("self_training_skipped") or {}).get("rounds", []):
        raise SystemExit(f"{run}: round 2 did not train (skipped, or the run did not finish): nothing to replay; "
                         f"pass finished runs whose round 2 trained.")
    return "finetune"


def planned_closing(run: Path, stage: str, end_time: float, seconds_from: str):
    """A ``closing`` for finetune_stage that leaves round 2 the training seconds the run's round 2 (``stage``) planned
    (or ``seconds_from`` seconds): what plan_stage keeps back for after the stage is the rest of ``end_time``."""
    if seconds_from == "planned":
        planned = float(yaml.safe_load((run / stage / "config.yaml").read_text())["train"]["budget_minutes"]) * 60
    else:
        planned = float(seconds_from)
    return lambda task, eval_s, step_s=0.0: max(0.0, end_time - time.monotonic() - step_s - planned)


def round2(run: Path, flags: list[str], work: Path, device: torch.device, seconds_from: str = "stage") -> dict:
    cfg = resolve(file=run / "finetune_labelled" / "config.yaml", overrides=flags)  # + fields newer than the run
    # the lr fields round 1 chose by rule come back unset (to be chosen again): round 2 takes round 1's, as in the run
    saved = yaml.safe_load((run / "finetune_labelled" / "config.yaml").read_text())
    for dotted in RECIPE_FIELDS:
        section, key = dotted.split(".")
        if cfg[section][key] is None:
            cfg[section][key] = saved[section][key]
    summary = json.loads((run / "summary.json").read_text())
    # the stage's own length (older summary.json files counted it from the run's start: rerun those runs)
    stage = round2_stage(run, summary)
    seconds = summary["stages"][stage]["seconds"]
    infos = scan_root(cfg["data"]["root"], cfg["data"]["datasets"], splits=("train", "val"))
    teacher = SupervisedTask(cfg, infos, device, DistContext())
    teacher.model.load_state_dict(load_trained(run / "finetune_labelled", device).model.state_dict())
    pseudo = pseudo_label_pool(teacher, cfg, infos, cfg["run"], work / "pseudo_labels.json")
    round1 = teacher.evaluate(teacher.model, 0)["val"]["known"]["mean_acc1"]
    del teacher
    end_time = time.monotonic() + seconds
    closing = planned_closing(run, stage, end_time, seconds_from) if seconds_from != "stage" else None
    task, metrics = finetune_stage(cfg, infos, device, DistContext(), work / "finetune", end_time,
                                   "(paired round 2)", pseudo, closing=closing)
    return {"round1_val": round1, "val": metrics["mean_acc1"], "gain": metrics["mean_acc1"] - round1,
            "epochs": task.epochs_run, "fit_seconds": round(task.fit_seconds, 2),
            "datasets": {k: v["acc1"] for k, v in metrics["datasets"].items()}, "seconds": seconds,
            "kept": {k: v["kept"] for k, v in pseudo["summary"]["datasets"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished `fewshot run` folders with self-training")
    ap.add_argument("--variants", nargs="+", default=['hard=', 'soft=run.pseudo_targets=soft'],
                    help='NAME="key=value key=value" (empty: the run\'s own settings)')
    ap.add_argument("--seconds", default="stage",
                    help="round 2's time: the run's whole stage (stage, the default), the training time it planned "
                         "(planned), or this many seconds of training")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/round2_paired.json"))
    args = ap.parse_args()
    device = torch.device("cpu")
    variants = {v.split("=", 1)[0]: v.split("=", 1)[1].split() for v in args.variants}
    results: dict = {}
    for run in args.runs:  # variants alternate within a run, so machine drift hits them alike
        for name, flags in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                r = round2(run, flags + ["train.progress=false"], Path(tmp), device, args.seconds)
            results.setdefault(name, {})[str(run)] = r
            print(f"{run} {name:8s} round 1 {r['round1_val']:.2f} -> {r['val']:.2f} ({r['gain']:+.2f}) "
                  f"{r['datasets']} kept {r['kept']} epochs {r['epochs']}", flush=True)
    print("val gain over the shared round 1, mean over runs:")
    for name, rows in results.items():
        gains = [r["gain"] for r in rows.values()]
        print(f"  {name:8s} {statistics.fmean(gains):+.2f} (per run: {', '.join(f'{g:+.2f}' for g in gains)})")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
