"""What each run was scored on: a dataset's name plus its class list (the checkpoint's label space), so that two
datasets of one name and different classes (a 10-class `digits` and a 2-class one cut from another root) are not
one bar group, one mean and one "compare them dataset by dataset" (10.00 next to 50.00 read as a 40-point gap
where both were chance level).

Apart from the tables and plots that show the keys, so that both key the runs the same way.
"""

from __future__ import annotations

from pathlib import Path

from fewshot.report.run_record import Run

FEW_CLASSES = 4  # class names a key lists where two class sets of one name have the same count


def checkpoint_classes(path: Path | None) -> dict[str, tuple[str, ...]] | None:
    """Dataset name -> class names of a checkpoint's label space, its tensors memory-mapped, not read (None: no
    checkpoint, or one that does not say)."""
    if path is None or not path.is_file():
        return None
    from fewshot.train.checkpoint import load_checkpoint

    try:
        space = load_checkpoint(path, mmap=True).get("label_space") or {}
        return {str(n): tuple(str(c) for c in cls) for n, cls in zip(space["names"], space["classes"], strict=True)}
    except Exception:  # an unreadable checkpoint: its own notes say so; the runs are keyed by name alone
        return None


def _key(name: str, classes: tuple[str, ...], counts: list[int]) -> str:
    n = len(classes)
    if counts.count(n) == 1:
        return f"{name} ({n} classes)"
    listed = ", ".join(sorted(classes)[:FEW_CLASSES]) + (", ..." if n > FEW_CLASSES else "")
    return f"{name} ({n} classes: {listed})"


def scored_keys(runs: list[Run]) -> tuple[list[dict[str, str]], str]:
    """Per run, its dataset names -> the names to group them by: the name itself, or "digits (2 classes)" where
    the runs' class lists of that name differ; and a sentence naming those (\"\" where none differ). A run whose
    checkpoint does not tell its classes keeps the bare name."""
    lists = [r.class_lists or {} for r in runs]
    sets: dict[str, list[tuple[str, ...]]] = {}
    for found in lists:
        for name, classes in found.items():
            if not any(set(classes) == set(s) for s in sets.setdefault(name, [])):
                sets[name].append(classes)
    split = {name: s for name, s in sets.items() if len(s) > 1}
    keys = []
    for found in lists:
        keys.append({name: _key(name, found[name], [len(s) for s in split[name]])
                     for name in found if name in split})
    if not split:
        return keys, ""
    parts = []
    for name in split:
        owners: dict[str, list[str]] = {}
        for r, k in zip(runs, keys):
            if name in k:
                owners.setdefault(k[name], []).append(r.label)
        parts.append("; ".join(f"{key} in {', '.join(labels)}" for key, labels in owners.items()))
    names = ", ".join(split)
    return keys, (f"The name {names} means different class sets here ({'; '.join(parts)}): shown apart, as different "
                  f"datasets; their accuracies are not comparable (other classes; chance level is 100 % over the "
                  f"class count).")


def keyed(metrics: dict | None, key: dict[str, str]) -> dict | None:
    """A metrics dict with its datasets renamed by ``key`` (scored_keys), the rest as it was."""
    if not metrics or not key or not isinstance(metrics.get("datasets"), dict):
        return metrics
    return {**metrics, "datasets": {key.get(n, n): v for n, v in metrics["datasets"].items()}}
