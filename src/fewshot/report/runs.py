"""Finding and reading run directories for `fewshot report` and `fewshot compare`.

A RUN argument is one of
  - a fine-tuning run (`fewshot train`): config.yaml, log.jsonl, metrics*.json, checkpoints/;
  - a MoCo run (`fewshot pretrain`): config.yaml, log.jsonl, checkpoints/ (kind "moco");
  - a `fewshot run` output folder holding its stage runs (expanded): pretrain/, finetune_labelled/,
    finetune_round<k>/ and finetune/, those it ran;
  - a checkpoint file inside a run's checkpoints/ folder: its run, with the model-based parts (accuracies where
    log.jsonl holds the file's evaluation, confusion matrices, embedding map, grid, kNN) taken from that file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from fewshot.data.names import some_of
from fewshot.errors import UserError, one_line, path_argument, printable
from fewshot.utils import loads_run_json

STAGES = ("pretrain", "finetune_labelled", "finetune")  # finetune_labelled: self-training round 1
# the stage folders of a `fewshot run` (pipeline.py) as messages name them; finetune_round<k>: rounds 2 .. n-1
STAGE_FOLDERS = "pretrain/, finetune_labelled/, finetune_round<k>/ and finetune/ (those it ran)"
WEIGHTS = ("ema", "raw")  # the weight sets a fine-tuning evaluates: a log row's `weights` says which its val is of


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_text(path: Path, notes: list[str]) -> str | None:
    """A run file's text, or None with a note: an unreadable or non-UTF-8 file is passed over, not a crash."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        notes.append(f"{path} cannot be read ({exc.strerror or exc}): passed over.")
    except UnicodeDecodeError as exc:
        notes.append(f"{path} is not UTF-8 text (byte {exc.start}): not a file fewshot writes; passed over.")
    return None


def _read_json(path: Path, notes: list[str]):
    """The JSON value of a run file; None (with a note when it exists) when absent or unreadable."""
    if not path.is_file():
        return None
    text = _read_text(path, notes)
    if text is None:
        return None
    try:
        return loads_run_json(text)
    except ValueError as exc:
        notes.append(f"{path} is not valid JSON ({exc}): passed over.")
        return None


def _shown(x) -> str:
    """A bad value as a note quotes it: short (a file may hold anything)."""
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind_of(x) -> str:
    return "null" if x is None else {dict: "an object", list: "a list", str: "a string"}.get(type(x), "a number")


# Optional fields of a metrics file: (check, what it must be). A bad one is left out, the rest still shown.
METRICS_FIELDS = {"mode": (lambda x: x in ("known", "unknown"), "known or unknown"),
                  "split": (lambda x: isinstance(x, str), "a split name"),
                  "routing_acc": (_is_number, "a number"),
                  "n_parameters": (lambda x: _is_whole(x) and x > 0, "a whole number"),
                  "best_epoch": (lambda x: _is_whole(x) and x >= 0, "a whole number"),
                  "weights": (lambda x: x in WEIGHTS, "ema or raw")}


def _dataset_entry_ok(v) -> bool:
    return isinstance(v, dict) and all(_is_number(v[k]) for k in ("acc1", "acc5") if k in v) and \
        ("n" not in v or _is_whole(v["n"]))


def clean_metrics(m, where: str, notes: list[str]) -> dict | None:
    """A metrics object as fewshot writes it (mode, mean_acc1, datasets), or None with a note. Fields of the
    wrong shape are left out with a note, so that one bad value does not cost the rest of the report."""
    if not isinstance(m, dict):
        notes.append(f"{where} holds {_kind_of(m)}, not a metrics object (mode, mean_acc1, datasets): passed over.")
        return None
    if not _is_number(m.get("mean_acc1")):
        got = "no mean_acc1" if "mean_acc1" not in m else f"mean_acc1 {_shown(m['mean_acc1'])}, not a number"
        notes.append(f"{where} has {got}: not a metrics file fewshot writes; passed over.")
        return None
    m = dict(m)
    for key, (ok, what) in METRICS_FIELDS.items():
        if m.get(key) is not None and not ok(m[key]):  # null: absent (known-source files have no routing)
            notes.append(f"{where}: {key} {_shown(m.pop(key))} is not {what}; left out.")
    per_dataset = m.get("datasets")
    if "datasets" in m and not (isinstance(per_dataset, dict) and all(map(_dataset_entry_ok, per_dataset.values()))):
        notes.append(f"{where}: datasets is not an object of per-dataset scores (acc1, acc5, n); per-dataset rows "
                     f"left out.")
        del m["datasets"]
    return m


def _clean_val(val, left_out: list[str]) -> dict | None:
    """A log row's val part as the curves can draw it, or None: a mode that is no metrics object, or whose datasets
    are not per-dataset scores (null crashed the curves with a TypeError, a string drew one curve per letter). Other
    fields of the wrong type (routing_acc, weights) are left out alone, named in ``left_out``, as clean_metrics leaves
    them out of a metrics file: one bad value does not cost the rest."""
    if not isinstance(val, dict):
        return None
    val = dict(val)
    for mode in ("known", "unknown"):
        if val.get(mode) is None:
            continue
        cleaned = clean_metrics(val[mode], "", [])
        if cleaned is None or ("datasets" in val[mode] and "datasets" not in cleaned):
            return None
        left_out += [f"{mode}.{key}" for key in val[mode] if key not in cleaned]
        val[mode] = cleaned
    return val


def _clean_row(row, val_left_out: list[int], fields_left_out: dict[int, list[str]]) -> dict | None:
    """A log row usable by the report, or None: an object with a whole-number epoch; a val or knn_acc1 part of
    another shape is dropped (the rest of the row still draws; a dropped val's epoch goes to ``val_left_out``, the
    val fields left out of a kept one to ``fields_left_out`` by epoch)."""
    if not isinstance(row, dict) or not _is_whole(row.get("epoch")) or row["epoch"] < 0:
        return None
    if "val" in row:
        fields: list[str] = []
        val = _clean_val(row["val"], fields)
        if val is None:
            row = {k: v for k, v in row.items() if k != "val"}
            val_left_out.append(row["epoch"])
        else:
            row = {**row, "val": val}
            if fields:
                fields_left_out[row["epoch"]] = fields
    if "knn_acc1" in row and not (isinstance(row["knn_acc1"], dict) and all(map(_is_number, row["knn_acc1"].values()))):
        row = {k: v for k, v in row.items() if k != "knn_acc1"}
    return row


def read_log(run: Path, notes: list[str] | None = None) -> list[dict]:
    """log.jsonl as a list of dicts; a torn last line (a run killed mid-write) is ignored silently, any other line
    that is not a log row is passed over with a note (in ``notes`` when given), and a file of no rows says so."""
    path = Path(run) / "log.jsonl"
    notes = [] if notes is None else notes
    if not path.is_file():
        return []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        notes.append(f"{path} cannot be read ({exc.strerror or exc}): no training curves.")
        return []
    rows, bad, val_left_out = [], [], []
    fields_left_out: dict[int, list[str]] = {}
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = _clean_row(loads_run_json(raw.decode("utf-8")), val_left_out, fields_left_out)
        except (UnicodeDecodeError, ValueError):
            row = None if i < len(lines) else "torn"
        if row is None:
            bad.append(i)
        elif row != "torn":
            rows.append(row)
    if bad:
        what = (f"{len(bad)} line(s) are not log rows fewshot writes (a JSON object with a whole-number epoch; line "
                f"{some_of(bad, 5, str)})")
        # one note: a file of no rows was also called "missing or empty" (and "No log.jsonl") beside this one
        notes.append(f"{path}: {what}: passed over." if rows else
                     f"{path} has no training rows ({what}): no training curves.")
    elif not rows:
        torn = any(raw.strip() for raw in lines)
        notes.append(f"{path} has no training rows (its one line is cut off, as a run stopped mid-write leaves it): "
                     f"no training curves." if torn else f"{path} is empty: no training curves.")
    if val_left_out:
        notes.append(f"log.jsonl: the val scores of {_epochs(val_left_out)} are not what fewshot logs (a field of "
                     f"another type); left out.")
    if fields_left_out:
        fields = sorted({f"val.{f}" for found in fields_left_out.values() for f in found})
        notes.append(f"log.jsonl: {', '.join(fields)} in the val scores of {_epochs(fields_left_out)} "
                     f"{'is' if len(fields) == 1 else 'are'} not what fewshot logs (a value of another type); left "
                     f"out, the rest of those scores kept.")
    return rows


def _epochs(epochs) -> str:
    """`epochs 2, 3, 4, 5, 6 and 3 more` for a note: a long log's list cut without a word read as the whole list."""
    epochs = list(epochs)
    return f"epoch{'s' if len(epochs) > 1 else ''} {some_of(epochs, 5, str)}"


# config.yaml sections the report reads, and what their fields must be.
CONFIG_FIELDS = {("model", "name"): (lambda x: isinstance(x, str), "a model name"),
                 ("model", "img_size"): (lambda x: _is_whole(x) and x > 0, "a whole number of pixels"),
                 ("data", "root"): (lambda x: isinstance(x, str), "a folder path")}


def _read_config(run: Path, notes: list[str]) -> dict:
    """config.yaml with the fields the report reads checked: a file or field of another shape is passed over
    with a note (model, input size or data root then show as unknown), never a crash nor silence."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        return {}
    from fewshot.config import load_yaml

    try:
        cfg = dict(load_yaml(path))  # its checks: UTF-8, valid YAML, a mapping, not an alias bomb
    except UserError as exc:
        notes.append(f"{exc} Passed over: model, input size and data root unknown.")
        return {}
    for section in ("model", "data"):
        if section in cfg and not isinstance(cfg[section], dict):
            notes.append(f"{path}: {section} is {_shown(cfg.pop(section))}, not a mapping; left out.")
    for (section, key), (ok, what) in CONFIG_FIELDS.items():
        part = cfg.get(section)
        if isinstance(part, dict) and part.get(key) is not None and not ok(part[key]):
            cfg[section] = {k: v for k, v in part.items() if k != key}
            notes.append(f"{path}: {section}.{key} {_shown(part[key])} is not {what}; left out.")
    return cfg


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
    metrics_epoch: int | None = None    # the logged epoch the accuracies shown belong to (None: not known)
    from_log: bool = False              # accuracies from a log.jsonl evaluation (no usable metrics.json)
    group: Path | None = None           # the `fewshot run` folder this stage belongs to
    eval_note: str | None = None        # the note saying which logged evaluation stands in for metrics.json
    given_checkpoint: Path | None = None  # the checkpoint file named as RUN: the model-based parts use it, not best.pt
    given_epoch: int | None = None      # the logged epoch of given_checkpoint (None: unreadable)
    saved_steps: dict | None = None     # last.pt's epoch / step_in_epoch / global_step / steps_per_epoch (see epochs)
    given_weights: str | None = None    # "ema" or "raw": the weights given_checkpoint's readers predict with
    metrics_weights: str | None = None  # "ema" or "raw": the weights the accuracies shown are of (None: not known)

    # ------------------------------------------------------------------ derived values
    @property
    def model_name(self) -> str:
        return str((self.config.get("model") or {}).get("name") or "?")

    @property
    def img_size(self) -> int | None:
        return (self.config.get("model") or {}).get("img_size")  # checked in _read_config

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
        log holds it, else the best epoch, else the last one logged."""
        rows = [r for r in self.log if isinstance(r.get("knn_acc1"), dict)]
        if not rows:
            return None
        for epoch in (self.given_epoch, self.best_epoch):
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


def saved_fraction(saved: dict | None, last: dict | None) -> float | None:
    """Epochs trained as last.pt counts them, where it holds steps the log does not (a stop by a signal saves the
    step it reached without a log row: stopped at step 33 of 25 per epoch, the log's epoch 1 showed as 1, not 1.32;
    a pretraining stopped after 2 steps as 0). None where last.pt is not later than the log, or does not tell."""
    if not saved:
        return None
    epoch, part, per_epoch = saved["epoch"], saved["step_in_epoch"], saved.get("steps_per_epoch")
    if last is not None and (last["step"] >= saved["global_step"] if _is_whole(last.get("step"))
                             else epoch + (1 if part else 0) <= last["epoch"]):  # a log of an older fewshot: no step
        return None
    if not part:
        return float(epoch) if last is None or epoch > last["epoch"] else None
    if not per_epoch or per_epoch <= part:
        return None
    return partial_epochs(epoch + part / per_epoch)


def partial_epochs(x: float) -> float:
    """Epochs trained ending in a partial one, to 2 decimals but never a whole number: 1 step of 250 rounded to 0
    (a run that trained nothing) and 249 of 250 to a whole epoch it did not finish."""
    whole = math.floor(x)
    return min(max(round(float(x), 2), whole + 0.01), whole + 0.99)


def first_epoch_note(saved: dict | None, last_pt: Path) -> str | None:
    """The note of a run with no log row (stopped within its first epoch): how far its last.pt got, where the
    epochs column cannot show it, or that no epoch finished (the column showed a bare 0)."""
    if saved and saved.get("steps_per_epoch") and saved["epoch"] == 0 and saved["step_in_epoch"]:
        return (f"no epoch finished: the run stopped at step {saved['step_in_epoch']} of "
                f"{saved['steps_per_epoch']} of its first epoch (its last.pt).")
    if saved and saved["epoch"] == 0 and saved["step_in_epoch"]:
        return (f"no epoch finished: the run stopped at step {saved['step_in_epoch']} of its first epoch (its last.pt "
                f"does not say how many steps an epoch has).")
    if saved is None and not last_pt.is_file():
        return "no epoch finished: the run stopped within its first epoch, before it saved a last.pt."
    return None  # last.pt holds whole epochs (the log was removed), or is unreadable: other notes say so


def read_saved_steps(path: Path) -> dict | None:
    """last.pt's position (epoch, step_in_epoch, global_step) and its steps per epoch where the checkpoint tells:
    whole epochs done give it, else a MoCo run's pool and batch size (its epochs drop the last partial batch).
    Read with the safe loader (weights_only), its tensors memory-mapped, not read: the whole last.pt (weights, EMA,
    optimizer state) was loaded for a few integers. None where last.pt is missing or not a fewshot checkpoint."""
    if not path.is_file():
        return None
    import zipfile

    from fewshot.errors import CheckpointError
    from fewshot.models.weights_file import read_tensor_file
    from fewshot.train.checkpoint import FORMAT

    try:
        ck = read_tensor_file(path, mmap=True)
    except CheckpointError as exc:
        # only where the mapping itself failed (an old non-zip torch file, a file system that cannot map it) is the
        # whole file read: a file that maps and is damaged or foreign is not read a second time, in full
        cause = exc.__context__
        if zipfile.is_zipfile(path) and not isinstance(cause, OSError) and "mmap" not in str(cause):
            return None  # the log's count stands (eval and predict say what is wrong with the file)
        try:
            ck = read_tensor_file(path)
        except CheckpointError:
            return None
    if ck.get("format") != FORMAT:  # not a fewshot checkpoint (load_checkpoint's check; the fields are checked below)
        return None
    saved = {k: ck.get(k) for k in ("epoch", "step_in_epoch", "global_step")}
    if not all(_is_whole(v) and v >= 0 for v in saved.values()):
        return None
    epoch, part, total = saved["epoch"], saved["step_in_epoch"], saved["global_step"]
    if _is_whole(ck.get("steps_per_epoch")) and ck["steps_per_epoch"] > 0:  # the Engine's own count (newer last.pt)
        saved["steps_per_epoch"] = ck["steps_per_epoch"]
    elif epoch > 0 and (total - part) % epoch == 0:
        saved["steps_per_epoch"] = (total - part) // epoch
    elif ck.get("kind") == "moco":
        try:
            batch = int(ck["config"]["train"]["batch_size"]) * int(ck.get("world") or 1)
            saved["steps_per_epoch"] = int(ck["n_pool"]) // batch if batch > 0 else None
        except (KeyError, TypeError, ValueError):
            pass
    return saved


def logged_fraction(log: list[dict], last: dict) -> float | None:
    """last's epochs trained from its global step: an earlier row of a whole epoch gives the steps per epoch
    (its step / its epoch: every epoch before it is whole). None where the log does not tell."""
    if not _is_whole(last.get("step")):
        return None
    whole = [r for r in log if 0 < r["epoch"] < last["epoch"] and _is_whole(r.get("step")) and r["step"] > 0]
    if not whole:
        return None
    row = max(whole, key=lambda r: r["epoch"])
    return last["step"] / (row["step"] / row["epoch"])


def _labels(paths: list[Path], shortest: list[int]) -> list[str]:
    """Each run's shortest path suffix, of at least ``shortest`` parts, that no other run's path ends with (stages
    keep their parent folder, checkpoint files their run's: exp/checkpoints/last.pt): lab/a/x/exp and lab/b/x/exp
    are a/x/exp and b/x/exp, whatever the order of the arguments."""
    parts = [p.resolve().parts for p in paths]
    labels = []
    for i, own in enumerate(parts):
        label = str(paths[i].resolve())
        for n in range(min(shortest[i], max(1, len(own) - 1)), len(own)):
            if not any(j != i and other[-n:] == own[-n:] for j, other in enumerate(parts)):
                label = "/".join(own[-n:])
                break
        labels.append(label)
    # the label is shown escaped, and keys the run's slug, PNGs and notes: a folder named "x<newline>y" and one named
    # "x\\ny" (a backslash) must not show as one run. A label that needs no escaping keeps its text; the others
    # get " (2)", " (3)", ...
    shown, taken = [""] * len(labels), set()
    for i in sorted(range(len(labels)), key=lambda i: (one_line(labels[i]) != labels[i], labels[i])):
        base = label = one_line(labels[i])
        k = 2
        while label in taken:
            label, k = f"{base} ({k})", k + 1
        taken.add(label)
        shown[i] = label
    return shown


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
    scores there: the report's tables are val accuracies, so those are left out with a note, not shown as val.
    A file that is not what fewshot writes is passed over with a note naming it."""
    if not path.is_file():
        return None
    n_notes = len(run.notes)
    metrics = _read_json(path, run.notes)
    if len(run.notes) > n_notes:  # unreadable: already said why
        return None
    metrics = clean_metrics(metrics, str(path), run.notes)
    # "split": null is a split not recorded, as clean_metrics takes a null field (it was "--split None", left out)
    if metrics is not None and metrics.get("split") not in (None, "val"):
        run.notes.append(f"{path.name} holds {metrics.get('split')}-split scores (fewshot eval --split "
                         f"{metrics.get('split')} --out): left out of the val tables.")
        return None
    return metrics


def best_evaluation(log: list[dict], epoch: int | None = None) -> dict | None:
    """The log row of the best evaluation (the one best.pt holds), or of ``epoch`` when given."""
    evals = [r for r in log if isinstance(r.get("val"), dict)]
    if epoch is not None:
        return next((r for r in evals if r["epoch"] == epoch), None)
    # the last of equal scores, as the engine keeps
    return max(reversed(evals), key=lambda r: r["score"] if _is_number(r.get("score")) else -1e9, default=None)


def use_evaluation(run: Run, row: dict, why: str, holder: str = "best.pt") -> None:
    """Show the accuracies of a logged evaluation (a run without a usable metrics.json, or a checkpoint named as
    RUN: ``holder``, the file whose epoch it is)."""
    run.metrics_known = clean_metrics(row["val"].get("known"), "", []) if row["val"].get("known") else None
    run.metrics_unknown = clean_metrics(row["val"].get("unknown"), "", []) if row["val"].get("unknown") else None
    run.metrics = run.metrics_known
    run.metrics_epoch, run.from_log = row["epoch"], True
    run.metrics_weights = row.get("weights") if row.get("weights") in WEIGHTS else None
    note = f"{why}: accuracies are from the logged evaluation of epoch {row['epoch']}, the one {holder} holds."
    run.notes = [n for n in run.notes if n != run.eval_note] + [note]
    run.eval_note = note


def _same_weights(a: str | None, b: str | None) -> bool:
    """Whether two weight sets are one: an unknown one (an older file, a run without an EMA) is taken as the same."""
    return a is None or b is None or a == b


def _eval_mode(run: Run, row: dict) -> str:
    """The mode a log row's ``score`` is the mean acc@1 of: config.yaml's train.eval_mode, else the mode whose
    logged mean is the score."""
    mode = (run.config.get("train") if isinstance(run.config.get("train"), dict) else {}).get("eval_mode")
    if mode in ("known", "unknown"):
        return mode
    val = row.get("val") if isinstance(row.get("val"), dict) else {}
    # exact equality is safe: the score is a copy of that mode's mean (SupervisedTask.evaluate), and JSON writes and
    # reads a float back bit for bit; a mean that equals the other mode's is the same number either way
    return next((m for m in ("known", "unknown") if (val.get(m) or {}).get("mean_acc1") == row.get("score")), "known")


def use_score(run: Run, row: dict, given: Path) -> bool:
    """Show the one number log.jsonl holds of the given checkpoint's weights where its evaluation row is of the
    other set (score_ema or score_raw: the mean acc@1 of train.eval_mode): last.pt predicts with its EMA, while the
    row's per-dataset scores are of the raw weights when those scored higher (best.pt's). False where it has none."""
    weights, other = run.given_weights, row.get("weights")
    score = row.get(f"score_{weights}")
    if not _is_number(score) or not math.isfinite(score):
        return False
    mode = _eval_mode(run, row)
    own = {"mode": mode, "mean_acc1": score}
    run.metrics_known, run.metrics_unknown = (own, None) if mode == "known" else (None, own)
    run.metrics = own
    run.metrics_epoch, run.from_log, run.metrics_weights = row["epoch"], True, weights
    note = (f"{given.name} named as RUN predicts with its {weights.upper()} weights; log.jsonl's per-dataset "
            f"evaluation of epoch {row['epoch']} is of the {str(other).upper()} weights, which scored higher there "
            f"(a best.pt of that epoch holds those): only the {mode}-source mean acc@1 of {given.name}'s own weights "
            f"(score_{weights} in log.jsonl) is shown.")
    run.notes = [n for n in run.notes if n != run.eval_note] + [note]
    run.eval_note = note
    return True


def checkpoint_weights(ck: dict) -> str | None:
    """The set a checkpoint's readers take (predict, eval; chosen_weights: best.pt says, last.pt holds the EMA where
    the run kept one): "ema", "raw", or None for a value no fewshot writes."""
    from fewshot.train.finetune import chosen_weights

    chosen = chosen_weights(ck)
    return chosen if chosen in WEIGHTS else None


def _given_checkpoint(run: Run, given: Path) -> None:
    """A checkpoint file named as RUN: its epoch and weights, and the accuracies of those where log.jsonl holds
    their evaluation (metrics.json is best.pt's). Epochs alone do not tell: last.pt predicts with its EMA, while
    best.pt of the same epoch may hold the raw weights (they scored higher). Where the log holds none, the page
    says whose accuracies it shows instead: the model-based parts (predictions, kNN) are still the file's own."""
    from fewshot.train.checkpoint import load_checkpoint, logged_epoch

    run.given_checkpoint = given
    try:
        ck = load_checkpoint(given)
        run.given_epoch = logged_epoch(ck)
    except Exception as exc:  # damaged or foreign: the image-based parts say what is wrong when they load it
        run.notes.append(f"{given} cannot be read as a fewshot checkpoint ({printable(str(exc))[:200]}): its epoch "
                         f"is unknown; the accuracies shown are the run's.")
        return
    run.given_weights = checkpoint_weights(ck)
    shown = run.metrics_epoch if run.kind == "supervised" else run.best_epoch
    if shown == run.given_epoch and (run.kind != "supervised" or _same_weights(run.metrics_weights, run.given_weights)):
        return
    if run.kind == "supervised":
        row = best_evaluation(run.log, run.given_epoch)
        if row is not None and _same_weights(row.get("weights") if row.get("weights") in WEIGHTS else None,
                                             run.given_weights):
            use_evaluation(run, row, f"{given.name} named as RUN (metrics.json holds best.pt's)", given.name)
            return
        if row is not None and use_score(run, row, given):
            return
        has = f"the accuracies shown are of epoch {opt_epoch(shown)}" if (run.metrics or run.metrics_known) else \
            "no accuracies are shown"
        if row is not None:  # the epoch's evaluation is of the other weights, and the log has no score of these
            run.notes.append(f"{given.name} (named as RUN) predicts with its {str(run.given_weights).upper()} "
                             f"weights, but log.jsonl's evaluation of epoch {run.given_epoch} is of the other set: "
                             f"{has} ({str(run.metrics_weights or '?').upper()} weights), not {given.name}'s.")
            return
    else:
        if any(r.get("epoch") == run.given_epoch and isinstance(r.get("knn_acc1"), dict) for r in run.log):
            return
        has = f"the kNN accuracies shown are of epoch {opt_epoch(shown)}, the best"
    run.notes.append(f"{given.name} (named as RUN) holds epoch {run.given_epoch}, but log.jsonl holds no evaluation "
                     f"of that epoch: {has}, not {given.name}'s.")


def opt_epoch(epoch: int | None) -> str:
    return "?" if epoch is None else str(epoch)


def load_run(path: Path, label: str, pipeline: dict | None = None, checkpoint: Path | None = None) -> Run:
    """One run's files, read and checked; ``checkpoint``: the file named as RUN (else best.pt is the model)."""
    path = Path(path)
    notes: list[str] = []
    cfg = _read_config(path, notes)
    log = read_log(path, notes)
    kind = _kind(path, cfg, log)
    run = Run(path=path, label=label, kind=kind, config=cfg, log=log, pipeline=pipeline, notes=notes)
    if kind == "moco" or not (path / "metrics.json").is_file():  # a finished fine-tuning logged every step
        run.saved_steps = read_saved_steps(path / "checkpoints" / "last.pt")
    if kind == "supervised":
        run.metrics, run.metrics_known, run.metrics_unknown = (
            _val_metrics(run, path / name) for name in ("metrics.json", "metrics_known.json", "metrics_unknown.json"))
        if run.metrics is None and run.metrics_known is None:
            # A run still training (or stopped early): the best logged evaluation stands in, the one best.pt
            # holds and metrics.json will report (the last one is not: a stopped run's last epoch may be worse)
            best = best_evaluation(log)
            if best is not None:
                why = "metrics.json is not usable (see above)" if (path / "metrics.json").is_file() else \
                    "no metrics.json yet (the run is training or was stopped)"
                use_evaluation(run, best, why)
        if run.metrics is not None and not run.from_log:
            mode = run.metrics.get("mode")
            if mode == "known" and run.metrics_known is None:
                run.metrics_known = run.metrics
            if mode == "unknown" and run.metrics_unknown is None:
                run.metrics_unknown = run.metrics
        if not run.from_log:
            run.metrics_epoch = next((m["best_epoch"] for m in (run.metrics, run.metrics_known, run.metrics_unknown)
                                      if m and "best_epoch" in m), None)
            run.metrics_weights = next((m["weights"] for m in (run.metrics, run.metrics_known, run.metrics_unknown)
                                        if m and "weights" in m), None)
    if checkpoint is not None:
        _given_checkpoint(run, checkpoint)
    finished = run.metrics or run.metrics_known or run.metrics_unknown
    # a run still in its first epoch is not a stopped one: the report says it is being written
    first = (first_epoch_note(run.saved_steps, path / "checkpoints" / "last.pt")
             if not log and not finished and not run.being_written else None)
    if first is not None:
        run.notes.append(first)
    if not (path / "log.jsonl").is_file():  # read_log says why a file holds no rows (empty, damaged, unreadable)
        run.notes.append("log.jsonl is missing: no training curves." if not (path / "log.jsonl").exists() else
                         "log.jsonl is not a file: no training curves.")
    return run


def refresh_evaluation(run: Run, epoch: int) -> bool:
    """The checkpoint is read after the run's files: a run still training may have saved a newer best.pt
    meanwhile. Re-read log.jsonl and show the evaluation of the checkpoint's own epoch; False when the log does
    not hold it (yet) or the accuracies come from metrics.json."""
    if not run.from_log:
        return False
    log = read_log(run.path)
    row = best_evaluation(log, epoch)
    if row is None:
        return False
    run.log = log
    use_evaluation(run, row, "no metrics.json yet (the run is still training; log.jsonl re-read for the epoch "
                             "best.pt holds now)")
    return True


def _pseudo_labels(x) -> dict | None:
    """A round's pseudo-label summary with the fields the report shows, each checked (None: not one)."""
    if not isinstance(x, dict):
        return None
    out = {k: x[k] for k in ("pool_size", "pool_labelled") if _is_whole(x.get(k))}
    out.update({k: x[k] for k in ("threshold", "precision") if _is_number(x.get(k))})
    datasets = x.get("datasets") if isinstance(x.get("datasets"), dict) else {}
    out["datasets"] = {str(n): _pseudo_dataset(v) for n, v in datasets.items()
                       if isinstance(v, dict) and _is_whole(v.get("kept"))}
    return out


def _pseudo_dataset(v: dict) -> dict:
    """One dataset's entry of a round's pseudo-labels: counts, the kept labels' mean confidence (measured) and,
    with run.pseudo_precision > 0, the per-class thresholds calibrated on val (null: the class kept nothing)."""
    out = {k: v[k] for k in ("kept", "pool", "labelled") if _is_whole(v.get(k))}
    if _is_number(v.get("mean_confidence")):
        out["mean_confidence"] = v["mean_confidence"]
    thresholds = v.get("class_thresholds")
    if isinstance(thresholds, dict) and all(t is None or _is_number(t) for t in thresholds.values()):
        out["class_thresholds"] = dict(thresholds)
    return out


def self_training_rounds(stages: dict) -> list[dict]:
    """The rounds of a self-training `fewshot run` from summary.json's stages, in order: stage, val mean acc@1 and
    the pseudo-labels it trained on (none for round 1). A summary of an older fewshot kept every round's labels in
    a list under finetune_labelled (round 2's first); [] when the run did no self-training."""
    if not isinstance(stages.get("finetune_labelled"), dict):
        return []
    older = stages["finetune_labelled"].get("pseudo_labels")
    older = older if isinstance(older, list) else []
    middle = sorted((n for n in stages if n.startswith("finetune_round")
                     and n.removeprefix("finetune_round").isdigit()), key=lambda n: int(n.removeprefix("finetune_round")))
    middle = middle or [f"finetune_round{k}" for k in range(2, len(older) + 1)]  # an older summary: not listed
    names = ["finetune_labelled", *middle, "finetune"]
    rounds = []
    for k, name in enumerate(names, 1):
        entry = stages.get(name) if isinstance(stages.get(name), dict) else {}
        if name != "finetune_labelled" and not entry and not older:
            continue
        labels = entry.get("pseudo_labels", older[k - 2] if 2 <= k < len(older) + 2 and name != "finetune_labelled"
                           else None)
        val = entry.get("val_mean_acc1")
        rounds.append({"round": k, "stage": name, "val_mean_acc1": val if _is_number(val) else None,
                       "pseudo_labels": _pseudo_labels(labels)})
    return rounds


def balance_words(datasets: dict) -> str:
    """summary.json's balanced_prediction as a sentence: which datasets' test predictions were evened out (to the
    train split's class proportions, or those named), with the val accuracies the choice was made on."""
    def one(name: str, d: dict) -> str:
        source = d.get("prior_from")
        aim = f"; aimed at proportions {source}" if d["used"] and isinstance(source, str) and source != "train" else ""
        if _is_number(d.get("val_plain")) and _is_number(d.get("val_balanced")):
            return f"{name} (val {d['val_plain']:.1f} plain, {d['val_balanced']:.1f} balanced{aim})"
        if d["used"]:
            return f"{name} ({aim[2:]})" if aim else name
        return f"{name} ({d.get('why') if isinstance(d.get('why'), str) else 'off'})"
    rows = {str(k): v for k, v in datasets.items() if isinstance(v, dict) and isinstance(v.get("used"), bool)}
    used = [one(n, d) for n, d in rows.items() if d["used"]]
    plain = [one(n, d) for n, d in rows.items() if not d["used"]]
    parts = ([f"class-balanced for {'; '.join(used)}"] if used else []) + \
        ([f"plain argmax for {'; '.join(plain)}"] if plain else [])
    return ", ".join(parts)


def _read_summary(folder: Path, notes: list[str]) -> dict | None:
    """summary.json of a `fewshot run` folder: only the parts the report reads, each checked."""
    if not (folder / "summary.json").is_file():
        return None
    n_notes = len(notes)
    summary = _read_json(folder / "summary.json", notes)
    if len(notes) > n_notes:
        return None
    where = str(folder / "summary.json")
    if not isinstance(summary, dict):
        notes.append(f"{where} holds {_kind_of(summary)}, not an object: passed over.")
        return None
    out = {k: summary[k] for k in ("predicted_with",) if isinstance(summary.get(k), str)}
    skipped = summary.get("self_training_skipped")  # later rounds the budget could not hold (planned)
    if isinstance(skipped, dict) and isinstance(skipped.get("why"), str):
        out["self_training_skipped"] = skipped["why"]
    reduced = summary.get("self_training_reduced")  # middle rounds the budget could not hold (planned)
    if isinstance(reduced, dict) and isinstance(reduced.get("why"), str):
        kept, planned = reduced.get("kept"), reduced.get("planned")
        out["self_training_reduced"] = f"{kept} of {planned} rounds kept: {reduced['why']}"
    labelled_only = summary.get("self_training_labelled_only")  # the last round without the pool (planned)
    if isinstance(labelled_only, dict) and isinstance(labelled_only.get("why"), str):
        out["self_training_labelled_only"] = labelled_only["why"]
    near_chance = summary.get("near_chance")  # the run's last warning: a model little better than guessing
    if isinstance(near_chance, dict) and isinstance(near_chance.get("why"), str):
        out["near_chance"] = near_chance["why"]
    balanced = summary.get("balanced_prediction")  # test predictions evened out per dataset (run.balance)
    if isinstance(balanced, dict) and isinstance(balanced.get("datasets"), dict):
        words = balance_words(balanced["datasets"])
        if words:
            out["balanced_prediction"] = words
        # the test table marks these datasets' known-source scores (next to plain unknown-source ones)
        out["balanced_datasets"] = [str(k) for k, v in balanced["datasets"].items()
                                    if isinstance(v, dict) and v.get("used") is True]
    stages = summary.get("stages")
    if isinstance(stages, dict):  # epochs trained per stage: a budget stop's fraction the log does not always tell
        out["epochs"] = {k: v["epochs"] for k, v in stages.items()
                         if isinstance(v, dict) and _is_number(v.get("epochs")) and math.isfinite(v["epochs"])}
        rounds = self_training_rounds(stages)
        if rounds:
            out["self_training"] = rounds
    metrics = summary.get("metrics")
    if isinstance(metrics, dict):
        out["metrics"] = {k: m for k in ("test", "test_unknown") if metrics.get(k) is not None
                          for m in [clean_metrics(metrics[k], f"{where} metrics.{k}", notes)] if m is not None}
    return out


def _stopped_pipeline(folder: Path) -> bool:
    """Whether ``folder`` holds a `fewshot run` stopped before any stage had a log line or checkpoint: its
    run_state.json (written before the first stage) is there and not marked finished. Such a folder was told it
    held no run at all, naming stage folders the pipeline no longer writes. An unreadable state file still marks
    a `fewshot run` (only the pipeline writes one); --resume then says what is wrong with it."""
    path = folder / "run_state.json"
    if not path.is_file():
        return False
    state = _read_json(path, [])
    return not (isinstance(state, dict) and state.get("finished") is True)


def _round_order(name: str) -> tuple[int, str]:
    """finetune_round10 after finetune_round2 (as text it came first)."""
    k = name.removeprefix("finetune_round")
    return (int(k), "") if k.isdigit() else (1 << 30, name)


def expand_runs(paths: list[str | Path]) -> list[Run]:
    """RUN arguments -> Run objects; `fewshot run` folders become their stages (STAGE_FOLDERS)."""
    from fewshot.run_lock import being_written

    found: list[tuple[Path, dict | None, Path | None, list[str], Path | None]] = []
    for raw in paths:
        p, given = Path(raw), None
        if p.is_file() and p.parent.name == "checkpoints":
            p, given = p.parent.parent, p
        if not p.exists():
            raise UserError(f"'{raw}' does not exist (expected a run directory from `fewshot train`, "
                            f"`fewshot pretrain` or `fewshot run`).")
        if not p.is_dir():
            raise UserError(f"'{raw}' is not a run directory.")
        names = [STAGES[0], STAGES[1], *sorted((q.name for q in p.glob("finetune_round*")), key=_round_order),
                 STAGES[2]]
        stages = [p / s for s in names if (p / s).is_dir() and _is_run_dir(p / s)]
        if given is None and stages and (not _is_run_dir(p) or (p / "summary.json").is_file()):
            notes: list[str] = []
            summary = _read_summary(p, notes)
            found += [(s, summary, p, notes, None) for s in stages]
        elif _is_run_dir(p):
            found.append((p, None, None, [], given))
        elif (p / "metrics.json").is_file():
            # a probe's --out holds metrics.json alone: no curves, no model, no config to report on (its
            # accuracies are all there is, and probe prints them); told apart from a run missing its files
            raise UserError(f"'{raw}' holds metrics.json but no config.yaml, log.jsonl or checkpoints/: not a run "
                            f"folder. A run folder of `fewshot train` or `fewshot pretrain` holds log.jsonl or "
                            f"checkpoints/ (or metrics.json with its config.yaml); a `fewshot probe --out` folder "
                            f"is not a run: its metrics.json holds the table probe printed (read it there; report and "
                            f"compare take runs).")
        elif being_written(p):  # started (config.yaml, tensorboard/, run_state.json) and locked: no log line yet
            raise UserError(f"'{raw}' holds a run being written now that has no checkpoint or log.jsonl yet (it is "
                            f"starting, or still in its first epoch): try again once it has logged an epoch.")
        elif _stopped_pipeline(p):
            raise UserError(f"'{raw}' holds a `fewshot run` that stopped before its first stage trained (its "
                            f"run_state.json says unfinished, and no stage folder holds a log.jsonl or checkpoint "
                            f"yet): there is nothing to report. Continue it with the command that started it plus "
                            f"--resume (`fewshot run --data ROOT --out {path_argument(raw)} ... --resume`), then "
                            f"report it.")
        else:
            raise UserError(f"'{raw}' holds no run: a run folder of `fewshot train` or `fewshot pretrain` holds "
                            f"log.jsonl or checkpoints/ (or metrics.json with its config.yaml); a `fewshot run` "
                            f"folder holds run_state.json and its stages in {STAGE_FOLDERS}.")
    unique, seen = [], {}
    for item in found:  # a run and a checkpoint file of it are two reports: other weights, other predictions
        key = (item[0].resolve(), item[4].resolve() if item[4] is not None else None)
        if key not in seen:
            seen[key] = len(unique)
            unique.append(item)
        elif item[2] is not None and unique[seen[key]][2] is None:
            # a stage named both alone and through its `fewshot run` folder: the copy with the folder's summary.json
            # (its test table, self-training) stands, whichever came first
            unique[seen[key]] = item
    # a checkpoint file is labelled by its path (run/checkpoints/last.pt): the run's own row keeps the run's name
    labels = _labels([f[4] if f[4] is not None else f[0] for f in unique],
                     [3 if f[4] is not None else 2 if f[2] is not None or f[0].name in STAGES else 1 for f in unique])
    runs = []
    for (path, summary, group, notes, given), label in zip(unique, labels):
        run = load_run(path, label, summary, given)
        run.group, run.notes = group, notes + run.notes
        runs.append(run)
    return runs
