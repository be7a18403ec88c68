"""The Run record: everything the report needs from one run directory, and the values derived from its files
(model, input size, checkpoint, parameters, time, throughput, epochs, best epoch, kNN, datasets).

Apart from report/runs.py (which reads the files and fills a Run in) so that the record and what it derives are
read in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from fewshot.report.run_files import _is_number, _is_whole
from fewshot.report.saved_steps import logged_fraction, partial_epochs, saved_fraction


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
    model_img_size: int | None = None   # the input size of the model counted (config.yaml's null: its default)
    metrics_epoch: int | None = None    # the logged epoch the accuracies shown belong to (None: not known)
    from_log: bool = False              # accuracies from a log.jsonl evaluation (no usable metrics.json)
    group: Path | None = None           # the `fewshot run` folder this stage belongs to
    eval_note: str | None = None        # the note saying which logged evaluation stands in for metrics.json
    given_checkpoint: Path | None = None  # the checkpoint file named as RUN: the model-based parts use it, not best.pt
    given_epoch: int | None = None      # the logged epoch of given_checkpoint (None: unreadable)
    saved_steps: dict | None = None     # last.pt's epoch / step_in_epoch / global_step / steps_per_epoch (see epochs)
    given_weights: str | None = None    # "ema" or "raw": the weights given_checkpoint's readers predict with
    metrics_weights: str | None = None  # "ema" or "raw": the weights the accuracies shown are of (None: not known)
    used_epoch: int | None = None       # last.pt's epoch where a MoCo run's metrics.json scored it (a `fewshot run`)

    # ------------------------------------------------------------------ derived values
    @property
    def model_name(self) -> str:
        return str((self.config.get("model") or {}).get("name") or "?")

    @property
    def img_size(self) -> int | None:
        # checked in _read_config; a run at the model's default size records null: the counted model's size
        return (self.config.get("model") or {}).get("img_size") or self.model_img_size

    @property
    def data_root(self) -> str | None:
        return (self.config.get("data") or {}).get("root")

    @property
    def checkpoint(self) -> Path | None:
        """The file the model-based parts use: the one named as RUN, else best.pt, else last.pt."""
        if self.given_checkpoint is not None:
            return self.given_checkpoint
        for name in ("best.pt", "last.pt"):
            p = self.path / "checkpoints" / name
            if p.is_file():
                return p
        return None

    @cached_property
    def class_lists(self) -> dict[str, tuple[str, ...]] | None:
        """Dataset name -> class names the run was scored on: its checkpoint's label space, else its `fewshot run`
        folder's run_state.json (checkpoints are large and get deleted); None: not known."""
        from fewshot.report.pipeline_runs import pipeline_of
        from fewshot.report.scored_on import checkpoint_classes, state_classes

        return checkpoint_classes(self.checkpoint) or state_classes(pipeline_of(self.path, self.group))

    @property
    def n_parameters(self) -> int | None:
        for m in (self.metrics, self.metrics_known, self.metrics_unknown):
            if m and m.get("n_parameters"):
                return m["n_parameters"]  # a whole number: checked in clean_metrics
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
    def epochs(self) -> float | None:
        """Epochs trained, a stopped run's partial last epoch as a fraction (as summary.json's "epochs"): the log
        numbers that epoch as the next whole one, so 5.75 epochs showed as 6 and 0.27 as 1. None where no epoch
        finished and last.pt does not tell how much of the first one was trained (first_epoch_note says which):
        a bare 0 read as a run that trained nothing."""
        last = max(self.log, key=lambda r: (r["epoch"], r.get("step") if _is_whole(r.get("step")) else -1),
                   default=None)
        saved = saved_fraction(self.saved_steps, last)
        if saved is not None:  # last.pt holds steps after the last log row (a run stopped by a signal)
            return saved
        if last is None:
            return None
        logged = last["epoch"]
        done = logged_fraction(self.log, last)
        if done is None:  # no whole epoch logged before it: the stage's summary.json entry, when it fits the log
            done = ((self.pipeline or {}).get("epochs") or {}).get(self.path.name)
        if _is_number(done) and logged - 1 < done < logged:
            return partial_epochs(done)
        return logged

    @property
    def best_epoch(self) -> int | None:
        if self.kind == "supervised":
            for m in (self.metrics, self.metrics_known):
                if m and m.get("best_epoch") is not None:
                    return m["best_epoch"]
        scored = [r for r in self.log if isinstance(r.get("score"), (int, float))]
        if not scored:
            return None
        return int(max(reversed(scored), key=lambda r: r["score"])["epoch"])  # last of equals, as the engine keeps

    @property
    def knn_row(self) -> dict | None:
        """The log row whose kNN accuracies a MoCo run shows: the epoch of the checkpoint named as RUN where the
        log holds it, else that of last.pt where metrics.json scored it (a `fewshot run` stage fine-tunes from
        last.pt: best.pt's score was headlined, a checkpoint the run never used), else the best epoch, else the last
        one logged."""
        rows = [r for r in self.log if isinstance(r.get("knn_acc1"), dict)]
        if not rows:
            return None
        for epoch in (self.given_epoch, self.used_epoch, self.best_epoch):
            for r in rows:
                if epoch is not None and r.get("epoch") == epoch:
                    return r
        return rows[-1]

    @property
    def knn(self) -> dict | None:
        """kNN accuracy per dataset (and mean) of a MoCo run at knn_row's epoch."""
        row = self.knn_row
        return None if row is None else dict(row["knn_acc1"])

    @property
    def evaluated(self) -> bool:
        """Whether log.jsonl holds an evaluation (then best.pt was saved, unless removed since)."""
        return any(isinstance(r.get("val"), dict) or _is_number(r.get("score")) for r in self.log)

    @property
    def being_written(self) -> bool:
        """Whether a fewshot command is writing the run now: it holds the folder's writer lock (run_lock)."""
        from fewshot.run_lock import being_written

        return any(being_written(folder) for folder in (self.path, self.group) if folder is not None)

    @property
    def dataset_names(self) -> list[str]:
        for m in (self.metrics, self.metrics_known, self.metrics_unknown):
            if m and m.get("datasets"):
                return list(m["datasets"])
        knn = self.knn
        if knn:
            return [k for k in knn if k != "mean"]
        return []
