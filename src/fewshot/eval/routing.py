"""Unknown-source routing per dataset: how many of each dataset's images went to their own dataset and where the
others went. One pooled figure over images hid that a whole small dataset was never routed to itself (hunt hBS:
68 % pooled, 0 % for one dataset, 54.5 % as the mean over datasets)."""

from __future__ import annotations

import math

ROUTING_SHOWN_BELOW = 90.0  # a dataset routed to itself less often than this (percent) is named in the summary


def dataset_routing(pred_ds, dataset_ids, names: list[str]) -> dict:
    """Per dataset with images: {"routing_acc": percent routed to itself, "routed_to_others": {name: images}}, the
    other datasets largest first (left out where none went elsewhere). ``pred_ds``, ``dataset_ids``: tensors; torch
    is imported here, not with the module, which report and compare read without it."""
    import torch

    out = {}
    for d, name in enumerate(names):
        m = dataset_ids == d
        n = int(m.sum())
        if n == 0:
            continue
        went = torch.bincount(pred_ds[m], minlength=len(names)).tolist()
        entry: dict = {"routing_acc": 100.0 * went[d] / n}
        others = sorted(((c, names[o]) for o, c in enumerate(went) if o != d and c), key=lambda x: (-x[0], x[1]))
        if others:
            entry["routed_to_others"] = {other: c for c, other in others}
        out[name] = entry
    return out


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def mean_routing(per_dataset: dict) -> float | None:
    """The mean over datasets of their own routing_acc (each dataset counts once, as mean_acc1 counts them), or
    None where a dataset has none (an older metrics.json)."""
    values = [v.get("routing_acc") if isinstance(v, dict) else None for v in per_dataset.values()]
    return sum(values) / len(values) if values and all(map(_number, values)) else None


def routing_summary(metrics: dict, below: float = ROUTING_SHOWN_BELOW) -> list[str]:
    """One line per dataset routed to itself less than ``below`` percent, where its other images went:
    "oneshot: 0 % routed to itself; 33 to fashion, 6 to twoclass". Empty for metrics without per-dataset routing."""
    lines = []
    per_dataset = metrics.get("datasets")
    for name, v in (per_dataset.items() if isinstance(per_dataset, dict) else ()):
        acc = v.get("routing_acc") if isinstance(v, dict) else None
        if not _number(acc) or acc >= below:
            continue
        others = v.get("routed_to_others")
        went = ", ".join(f"{c} to {other}" for other, c in others.items() if _number(c)) \
            if isinstance(others, dict) else ""
        lines.append(f"{name}: {acc:.0f} % routed to itself" + (f"; {went}" if went else ""))
    return lines


def routed_elsewhere(routing: dict) -> dict[str, tuple[int, int]]:
    """From predict's routing ({dataset: {id: dataset routed to}}): per dataset with any image routed to another
    dataset, (those images, all its images). pred_all.json holds -1 for each of them."""
    out = {}
    for name, ids in routing.items():
        away = sum(1 for to in ids.values() if to != name)
        if away:
            out[name] = (away, len(ids))
    return out


def routing_words(metrics: dict) -> str:
    """"routing 68.12 % of images, 54.50 mean over datasets" for a one-line unknown-source score; the pooled figure
    alone beside a mean acc@1 over datasets read as a mean of the same kind."""
    pooled, mean = metrics.get("routing_acc"), metrics.get("mean_routing_acc")
    if not _number(pooled):
        return "routing -"
    return f"routing {pooled:.2f} % of images" + (f", {mean:.2f} mean over datasets" if _number(mean) else "")
