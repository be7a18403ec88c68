"""Training curves from log.jsonl, saved as PNGs in RUN/plots/ (matplotlib, headless)."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(run: Path) -> list[dict]:
    path = Path(run) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_pretrain_curves(run: Path) -> Path | None:
    """loss, contrastive acc@1/acc@5, lr and kNN accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_log(run)
    if not rows:
        return None
    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    axes[0].plot(ep, [r.get("loss") for r in rows], marker=".")
    axes[0].set_title("InfoNCE loss")
    axes[1].plot(ep, [r.get("contrast_acc1") for r in rows], marker=".", label="acc@1")
    axes[1].plot(ep, [r.get("contrast_acc5") for r in rows], marker=".", label="acc@5")
    axes[1].set_title("contrastive accuracy (%)")
    axes[1].legend()
    axes[2].plot(ep, [r.get("lr") for r in rows], marker=".")
    axes[2].set_title("learning rate")
    knn_rows = [r for r in rows if r.get("knn_acc1")]
    for name in (knn_rows[0]["knn_acc1"] if knn_rows else {}):
        axes[3].plot([r["epoch"] for r in knn_rows], [r["knn_acc1"][name] for r in knn_rows], marker=".", label=name)
    axes[3].set_title("kNN accuracy on val (%)")
    if knn_rows:
        axes[3].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run) / "plots" / "pretrain_curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
