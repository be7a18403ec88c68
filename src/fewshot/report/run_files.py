"""Reading and cleaning one run's files for `fewshot report` and `fewshot compare`: the text and JSON of a run
file, a metrics file's fields, log.jsonl's rows and config.yaml's sections the report reads.

Apart from report/runs.py (which finds runs and puts a Run together) so that the checks of what a file may hold
are in one place: a file or field of another shape is passed over with a note, never a crash nor silence.
"""

from __future__ import annotations

from pathlib import Path

from fewshot.data.names import some_of
from fewshot.errors import UserError
from fewshot.utils import loads_run_json

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


def read_log(run: Path, notes: list[str] | None = None, torn: list[int] | None = None) -> list[dict]:
    """log.jsonl as a list of dicts; a torn last line (a run killed mid-write) is left out without a note, its
    number put in ``torn`` (when given: the caller knows whether the run finished, where the line is damage, not a
    stop); any other line that is not a log row is passed over with a note (in ``notes`` when given), and a file of
    no rows says so."""
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
        elif row == "torn":
            (torn if torn is not None else []).append(i)
        else:
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
