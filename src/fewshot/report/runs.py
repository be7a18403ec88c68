"""Finding and reading run directories for `fewshot report` and `fewshot compare`.

A RUN argument is one of
  - a fine-tuning run (`fewshot train`): config.yaml, log.jsonl, metrics*.json, checkpoints/;
  - a MoCo run (`fewshot pretrain`): config.yaml, log.jsonl, checkpoints/ (kind "moco");
  - a `fewshot run` output folder holding pretrain/ and/or finetune/ stage runs (expanded);
  - a checkpoint file inside a run's checkpoints/ folder (its run is used).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from fewshot.errors import UserError

STAGES = ("pretrain", "finetune_labelled", "finetune")  # finetune_labelled: self-training round 1


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc}).") from None


def read_log(run: Path) -> list[dict]:
    """log.jsonl as a list of dicts; a torn last line (a run killed mid-write) is ignored."""
    path = Path(run) / "log.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _read_config(run: Path) -> dict:
    path = Path(run) / "config.yaml"
    if not path.is_file():
        return {}
    from fewshot.config import load_yaml

    try:
        return load_yaml(path) or {}
    except Exception:
        return {}


@dataclass
class Run:
    """Everything the report needs from one run directory (no model loaded)."""

    path: Path
    label: str
    kind: str                           # "supervised" | "moco"
    config: dict
    log: list[dict]
    metrics: dict | None = None         # metrics.json (the configured mode)
    metrics_known: dict | None = None
    metrics_unknown: dict | None = None
    pipeline: dict | None = None        # summary.json of the `fewshot run` folder this stage belongs to
    notes: list[str] = field(default_factory=list)
    model_n_parameters: int | None = None  # counted on the model when the metrics have none (MoCo backbones)

    # ------------------------------------------------------------------ derived values
    @property
    def model_name(self) -> str:
        return str((self.config.get("model") or {}).get("name") or "?")

    @property
    def img_size(self) -> int | None:
        size = (self.config.get("model") or {}).get("img_size")
        return int(size) if size else None

    @property
    def data_root(self) -> str | None:
        return (self.config.get("data") or {}).get("root")

    @property
    def checkpoint(self) -> Path | None:
        for name in ("best.pt", "last.pt"):
            p = self.path / "checkpoints" / name
            if p.is_file():
                return p
        return None

    @property
    def n_parameters(self) -> int | None:
        for m in (self.metrics, self.metrics_known, self.metrics_unknown):
            if m and m.get("n_parameters"):
                return int(m["n_parameters"])
        return self.model_n_parameters

    @property
    def training_seconds(self) -> float | None:
        times = [r["epoch_time_s"] for r in self.log if isinstance(r.get("epoch_time_s"), (int, float))]
        return float(sum(times)) if times else None

    @property
    def throughput(self) -> float | None:
        """Median training images/s over the logged epochs."""
        vals = sorted(float(r["images_per_s"]) for r in self.log
                      if isinstance(r.get("images_per_s"), (int, float)) and math.isfinite(r["images_per_s"]))
        if not vals:
            return None
        mid = len(vals) // 2
        return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2

    @property
    def epochs(self) -> int:
        return max((int(r.get("epoch", 0)) for r in self.log), default=0)

    @property
    def best_epoch(self) -> int | None:
        if self.kind == "supervised":
            for m in (self.metrics, self.metrics_known):
                if m and m.get("best_epoch") is not None:
                    return int(m["best_epoch"])
        scored = [r for r in self.log if isinstance(r.get("score"), (int, float))]
        if not scored:
            return None
        return int(max(scored, key=lambda r: r["score"])["epoch"])  # first of equal scores, as the engine keeps

    @property
    def knn(self) -> dict | None:
        """kNN accuracy per dataset (and mean) at the best epoch of a MoCo run."""
        rows = [r for r in self.log if isinstance(r.get("knn_acc1"), dict)]
        if not rows:
            return None
        best = self.best_epoch
        for r in rows:
            if r.get("epoch") == best:
                return dict(r["knn_acc1"])
        return dict(rows[-1]["knn_acc1"])

    @property
    def dataset_names(self) -> list[str]:
        for m in (self.metrics, self.metrics_known, self.metrics_unknown):
            if m and m.get("datasets"):
                return list(m["datasets"])
        knn = self.knn
        if knn:
            return [k for k in knn if k != "mean"]
        return []


def _label_for(path: Path, taken: set[str], stage: bool = False) -> str:
    parts = path.resolve().parts
    for n in range(2 if stage and len(parts) > 1 else 1, len(parts) + 1):
        label = "/".join(parts[-n:])
        if label not in taken:
            return label
    return str(path)


def _is_run_dir(path: Path) -> bool:
    return ((path / "log.jsonl").is_file() or (path / "checkpoints").is_dir()
            or ((path / "metrics.json").is_file() and (path / "config.yaml").is_file()))


def _kind(path: Path, cfg: dict, log: list[dict]) -> str:
    if cfg.get("_task") == "moco" or any("contrast_acc1" in r or "knn_acc1" in r for r in log):
        return "moco"
    if (path / "metrics.json").is_file() or any("val" in r or "train_acc1" in r for r in log):
        return "supervised"
    ck = None
    for name in ("last.pt", "best.pt"):
        if (path / "checkpoints" / name).is_file():
            ck = path / "checkpoints" / name
            break
    if ck is not None:
        from fewshot.train.checkpoint import load_checkpoint

        try:
            return str(load_checkpoint(ck).get("kind") or "supervised")
        except Exception:
            pass
    return "supervised"


def _val_metrics(run: Run, path: Path) -> dict | None:
    """A metrics file of val scores, or None. `fewshot eval --split test --out RUN/metrics.json` may have put test
    scores there: the report's tables are val accuracies, so those are left out with a note, not shown as val."""
    metrics = _read_json(path)
    if metrics is not None and not isinstance(metrics, dict):
        raise UserError(f"{path} is not a metrics file (a JSON object with mode, mean_acc1 and datasets).")
    if metrics is not None and metrics.get("split", "val") != "val":
        run.notes.append(f"{path.name} holds {metrics.get('split')}-split scores (fewshot eval --split "
                         f"{metrics.get('split')} --out): left out of the val tables.")
        return None
    return metrics


def load_run(path: Path, label: str, pipeline: dict | None = None) -> Run:
    path = Path(path)
    cfg = _read_config(path)
    log = read_log(path)
    kind = _kind(path, cfg, log)
    run = Run(path=path, label=label, kind=kind, config=cfg, log=log, pipeline=pipeline)
    if kind == "supervised":
        run.metrics, run.metrics_known, run.metrics_unknown = (
            _val_metrics(run, path / name) for name in ("metrics.json", "metrics_known.json", "metrics_unknown.json"))
        if run.metrics is None and run.metrics_known is None:
            # A run still training (or stopped early): the best logged evaluation stands in, the one best.pt
            # holds and metrics.json will report (the last one is not: a stopped run's last epoch may be worse)
            evals = [r for r in log if isinstance(r.get("val"), dict)]
            best = max(evals, key=lambda r: r.get("score") if isinstance(r.get("score"), (int, float)) else -1e9,
                       default=None)
            if best is not None:
                run.metrics_known = best["val"].get("known")
                run.metrics_unknown = best["val"].get("unknown")
                run.metrics = run.metrics_known
                run.notes.append(f"no metrics.json yet: accuracies are from the best logged evaluation "
                                 f"(epoch {best.get('epoch')}, the one best.pt holds).")
        if run.metrics is not None:
            mode = run.metrics.get("mode")
            if mode == "known" and run.metrics_known is None:
                run.metrics_known = run.metrics
            if mode == "unknown" and run.metrics_unknown is None:
                run.metrics_unknown = run.metrics
    if not log:
        run.notes.append("log.jsonl is missing or empty: no training curves.")
    return run


def expand_runs(paths: list[str | Path]) -> list[Run]:
    """RUN arguments -> Run objects; `fewshot run` folders become their pretrain/finetune stages."""
    found: list[tuple[Path, dict | None]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file() and p.parent.name == "checkpoints":
            p = p.parent.parent
        if not p.exists():
            raise UserError(f"'{raw}' does not exist (expected a run directory from `fewshot train`, "
                            f"`fewshot pretrain` or `fewshot run`).")
        if not p.is_dir():
            raise UserError(f"'{raw}' is not a run directory.")
        names = [STAGES[0], STAGES[1], *sorted(q.name for q in p.glob("finetune_round*")), STAGES[2]]
        stages = [p / s for s in names if (p / s).is_dir() and _is_run_dir(p / s)]
        if stages and (not _is_run_dir(p) or (p / "summary.json").is_file()):
            summary = _read_json(p / "summary.json")
            found += [(s, summary) for s in stages]
        elif _is_run_dir(p):
            found.append((p, None))
        else:
            raise UserError(f"'{raw}' holds no run: expected log.jsonl, metrics.json or checkpoints/ "
                            f"(or pretrain/ and finetune/ folders of `fewshot run`).")
    runs, taken, seen = [], set(), set()
    for path, summary in found:
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        label = _label_for(path, taken, stage=summary is not None or path.name in STAGES)
        taken.add(label)
        runs.append(load_run(path, label, summary))
    return runs
