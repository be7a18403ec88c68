"""What each run was scored on: a dataset's name plus its class list (the checkpoint's label space, else its
`fewshot run` folder's run_state.json), so that two datasets of one name and different classes (a 10-class
`digits` and a 2-class one cut from another root) are not one bar group, one mean and one "compare them dataset by
dataset" (10.00 next to 50.00 read as a 40-point gap where both were chance level).

Apart from the tables and plots that show the keys, so that both key the runs the same way.
"""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

from fewshot.report.run_record import Run

LISTED_CLASSES = 12  # a class set's names the sentence lists in full; a longer set: its first ones and a digest
UNKNOWN = "?"  # the key's mark of a run whose class list could not be read, where its name's sets differ


def checkpoint_classes(path: Path | None) -> dict[str, tuple[str, ...]] | None:
    """Dataset name -> class names of a checkpoint's label space, its tensors memory-mapped, not read (None: no
    checkpoint, or one that does not say). Normalised as the layout reads them (LabelSpace.from_dict: NFC), so an
    older checkpoint's NFD names are not another class set."""
    if path is None or not path.is_file():
        return None
    from fewshot.data.label_space import LabelSpace
    from fewshot.train.checkpoint import load_checkpoint

    try:
        space = LabelSpace.from_dict(load_checkpoint(path, mmap=True).get("label_space") or {})
        return {str(n): tuple(str(c) for c in cls) for n, cls in zip(space.names, space.classes, strict=True)}
    except Exception:  # an unreadable checkpoint: its own notes say so; other records are tried
        return None


def state_classes(folder: Path | None) -> dict[str, tuple[str, ...]] | None:
    """Dataset name -> class names a `fewshot run` folder's run_state.json records for all its stages (None: no
    folder, or a file that does not say): a stage whose checkpoints were deleted was shown as a dataset apart."""
    from fewshot.report.run_files import _read_json

    if folder is None:
        return None
    state = _read_json(folder / "run_state.json", [])
    found = state.get("classes") if isinstance(state, dict) else None
    if not isinstance(found, dict) or not all(isinstance(c, list) for c in found.values()):
        return None
    return {str(n): tuple(unicodedata.normalize("NFC", str(x)) for x in c) for n, c in found.items()}


def _letters(i: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA: a class set's mark in its key."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(ord("A") + r) + out
    return out


def _described(classes: tuple[str, ...]) -> str:
    """A class set in the sentence: every name where few, else the first ones and a digest of the whole list (two
    sets of 40 classes differing in the last one read the same by their first names)."""
    names = sorted(classes)
    if len(names) <= LISTED_CLASSES:
        return f"{len(names)} classes: {', '.join(names)}"
    digest = hashlib.sha1("\n".join(names).encode("utf-8", "surrogateescape")).hexdigest()[:6]
    return f"{len(names)} classes: {', '.join(names[:LISTED_CLASSES - 2])}, ... (list digest {digest})"


def scored_keys(runs: list[Run]) -> tuple[list[dict[str, str]], str]:
    """Per run, its dataset names -> the names to group them by: the name itself, or `digits [A]`, `digits [B]`
    where the runs' class lists of that name differ (one mark per set, so two sets never share a key, and short
    enough for a bar chart's tick); and a sentence saying which classes each mark stands for ("" where none differ).
    The runs under each key are named by differing_datasets, which follows it. A run whose class list could not be
    read goes with the others of its name where those agree among themselves (said), else under `digits [?]`."""
    lists = [r.class_lists or {} for r in runs]
    sets: dict[str, list[frozenset[str]]] = {}
    for found in lists:
        for name, classes in found.items():
            if frozenset(classes) not in sets.setdefault(name, []):
                sets[name].append(frozenset(classes))
    split = {name for name, s in sets.items() if len(s) > 1}
    keys, unread = [], {}
    for r, found in zip(runs, lists):
        key = {name: f"{name} [{_letters(sets[name].index(frozenset(found[name])))}]"
               for name in found if name in split}
        for name in _scored_names(r):
            if name not in found and name in sets:
                unread.setdefault(name, []).append(r.label)
                if name in split:
                    key[name] = f"{name} [{UNKNOWN}]"
        keys.append(key)
    parts = []
    for name in sorted(split):
        marks = "; ".join(f"{name} [{_letters(i)}] = {_described(tuple(s))}" for i, s in enumerate(sets[name]))
        parts.append(marks + (f"; {name} [{UNKNOWN}] = not known" if name in unread else ""))
    sentence = ""
    if split:
        many = len(split) > 1
        sentence = (f"The {'names' if many else 'name'} {', '.join(sorted(split))} {'mean' if many else 'means'} "
                    f"different class sets here ({'; '.join(parts)}): shown apart, as different datasets; their "
                    f"accuracies are not comparable (other classes; chance level is 100 % over the class count).")
    notes = [f"The class list of {', '.join(labels)} on {name} could not be read (no readable checkpoint or "
             f"run_state.json): " + (f"shown as {name} [{UNKNOWN}]." if name in split else
                                     f"grouped with the other {name} runs by its name, as their class lists agree.")
             for name, labels in unread.items()]
    return keys, " ".join([sentence, *notes]).strip()


def _scored_names(r: Run) -> list[str]:
    """The dataset names a run's accuracies (or a MoCo run's kNN ones) are given for."""
    names: list[str] = []
    for m in (r.metrics_known, r.metrics_unknown, {"datasets": r.knn or {}}):
        names += [n for n in ((m or {}).get("datasets") or {}) if n != "mean" and n not in names]
    return names


def keyed(metrics: dict | None, key: dict[str, str]) -> dict | None:
    """A metrics dict with its datasets renamed by ``key`` (scored_keys), the rest as it was."""
    if not metrics or not key or not isinstance(metrics.get("datasets"), dict):
        return metrics
    return {**metrics, "datasets": {key.get(n, n): v for n, v in metrics["datasets"].items()}}
