"""Per-dataset accuracy in known-source and unknown-source modes, and SPEC's metrics.json."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from fewshot.data.label_space import LabelSpace
from fewshot.errors import one_line
from fewshot.eval.routing import ROUTING_SHOWN_BELOW, dataset_routing, mean_routing, routing_summary
from fewshot.progress import track


@torch.no_grad()
def compute_logits(model: nn.Module, images: torch.Tensor, normalize: nn.Module, device: torch.device,
                   batch_size: int = 256, channels_last: bool = False, amp: torch.dtype | None = None,
                   desc: str = "evaluating") -> torch.Tensor:
    """Logits [N, C] (float32, CPU) for uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    outs = []
    ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    starts = range(0, len(images), batch_size)
    for s in track(starts, desc=desc, total=len(starts)):
        x = normalize(images[s:s + batch_size].to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx:
            outs.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(outs) if outs else torch.zeros(0, 0)


def _topk_hit(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == targets.unsqueeze(1)).any(dim=1)


def score(logits: torch.Tensor, targets: torch.Tensor, dataset_ids: torch.Tensor, space: LabelSpace,
          mode: str, n_parameters: int | None = None) -> dict:
    """SPEC's metrics dict: accuracies in percent; routing_acc only in unknown-source mode, counted over images,
    with each dataset's own routing_acc (and where its other images went) and mean_routing_acc, their mean."""
    if mode == "known":
        scored = space.restrict(logits, dataset_ids)
    elif mode == "unknown":
        scored = logits
    else:
        raise ValueError(f"mode must be known or unknown, not {mode!r}")
    pred_ds, _ = space.predict(logits, mode, dataset_ids)
    top1 = scored.argmax(dim=1) == targets
    datasets = {}
    for d, name in enumerate(space.names):
        m = dataset_ids == d
        n = int(m.sum())
        if n == 0:
            continue
        # top-5 within the dataset's own class count in known mode (k clipped for tiny class lists)
        k5 = 5 if mode == "unknown" else min(5, space.sizes[d])
        # topk and argmax break exact ties differently (acc@5 came out below acc@1): the argmax class, which the
        # predictions use, counts among the top 5
        hit5 = _topk_hit(scored[m], targets[m], k5) | top1[m]
        # counts over n in float64: a float32 mean wrote 11.999999731779099 for 12 % into metrics.json
        datasets[name] = {"acc1": 100.0 * int(top1[m].sum()) / n, "acc5": 100.0 * int(hit5.sum()) / n, "n": n}
    mean = sum(v["acc1"] for v in datasets.values()) / max(1, len(datasets))
    routing = 100.0 * int((pred_ds == dataset_ids).sum()) / len(targets) if mode == "unknown" and len(targets) else None
    out = {"mode": mode, "n_parameters": n_parameters, "mean_acc1": mean, "datasets": datasets, "routing_acc": routing}
    if mode == "unknown":
        for name, entry in dataset_routing(pred_ds, dataset_ids, list(space.names)).items():
            datasets[name].update(entry)
        out["mean_routing_acc"] = mean_routing(datasets)
    return out


def format_table(metrics: dict, title: str | None = None) -> str:
    """A plain per-dataset table for the terminal; the name column is as wide as the longest name (24 at least),
    counted in terminal cells: a CJK character takes two, and padding by characters misaligned the numbers."""
    from rich.cells import cell_len

    shown = [(one_line(str(name)), m) for name, m in metrics["datasets"].items()]  # a folder name's escapes: inert
    w = max([24] + [cell_len(name) for name, _ in shown])
    # unknown source: each dataset's share of images routed to itself, beside its accuracy
    routed = metrics.get("routing_acc") is not None and all("routing_acc" in m for _, m in shown)
    rows = [f"{'dataset':<{w}} {'acc@1':>7} {'acc@5':>7} {'n':>6}" + (f" {'routed to itself':>16}" if routed else "")]
    for name, m in shown:
        name = name + " " * (w - cell_len(name))
        rows.append(f"{name} {m['acc1']:7.2f} {m['acc5']:7.2f} {m['n']:6d}"
                    + (f" {m['routing_acc']:16.2f}" if routed else ""))
    mean_routing_acc = metrics.get("mean_routing_acc") if routed else None
    rows.append(f"{'mean':<{w}} {metrics['mean_acc1']:7.2f}"
                + (f" {'':>7} {'':>6} {mean_routing_acc:16.2f}" if mean_routing_acc is not None else ""))
    if metrics.get("routing_acc") is not None:
        rows.append(f"{'dataset routing':<{w}} {metrics['routing_acc']:7.2f} % of all images"
                    + (f" ({mean_routing_acc:.2f} mean over datasets)" if mean_routing_acc is not None else ""))
        went = routing_summary(metrics)
        if went:  # where each poorly routed dataset's images went: the datasets it is confused with
            rows.append(f"datasets routed to themselves less than {ROUTING_SHOWN_BELOW:.0f} % of the time:")
            rows += [f"  {one_line(line)}" for line in went]
    head = (f"{one_line(title)}  (mode: {metrics['mode']}, parameters: {metrics.get('n_parameters') or 0:,})\n"
            if title else "")
    return head + "\n".join(rows)
