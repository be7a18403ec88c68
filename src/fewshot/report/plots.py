"""Figures for runs and reports, saved as PNGs (matplotlib's object API with the Agg canvas: headless,
no pyplot global state).

- training curves from log.jsonl (fine-tuning and MoCo), EMA-smoothed with the raw points visible;
- grouped bars of per-dataset accuracy of several runs;
- confusion matrices, 2-D embedding maps and grids of images with predictions.

The plumbing they share (the Figure and its save, fonts, colours, legends, smoothing, axes) is report/figure.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fewshot.report.figure import (DPI, LEGEND_MAX_NAMED, _color, _dataset_legend, _empty, _figure, _finish,
                                   _literal_text, _save, _share_epochs, _short, plot_smoothed, smoothing_weight)
from fewshot.report.run_files import read_log
from fewshot.report.tables import differing_datasets, pct, routing

CONFUSION_MAX_DPI = 200  # a big confusion matrix gets up to this dpi (one pixel per class), then is pooled


def curve_smoothing(rows: list[dict], moco: bool) -> list[tuple[str, float]]:
    """(which curves, EMA weight) as the curve plots smooth them, each series by its own number of points: 30
    epochs evaluated every 2nd smooth the per-epoch curves at 0.87, the val curves (15 points) at 0.73."""
    key = "knn_acc1" if moco else "val"
    counts = [("per-epoch curves", len(_series(rows, lambda r: r["loss"])[0])),
              ("kNN curves" if moco else "val curves", sum(isinstance(r.get(key), dict) for r in rows))]
    return [(name, smoothing_weight(n)) for name, n in counts if n]


def _series(rows: list[dict], get) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        try:
            v = get(r)
        except (KeyError, TypeError):
            v = None
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r.get("epoch", len(xs) + 1))
            ys.append(float(v))
    return xs, ys


def _dataset_names(rows: list[dict], key: str) -> list[str]:
    names: list[str] = []
    for r in rows:
        d = r.get(key)
        if isinstance(d, dict):
            for k in d:
                if k != "mean" and k not in names:
                    names.append(k)
    return names


class SemiCurves(NamedTuple):
    """A semi-supervised method's two extra log.jsonl series and their labels in the fine-tuning curves."""

    loss_key: str
    total_label: str  # the logged loss: labelled + semi.weight x the method's loss
    loss_label: str
    rate_key: str
    rate_label: str
    rate_title: str


SEMI_CURVES = {
    "fixmatch": SemiCurves("unlabeled_loss", "train loss (labelled + weight x unlabeled)",
                           "unlabeled loss (FixMatch)", "pseudo_label_rate", "pseudo-label rate (FixMatch)",
                           "train acc@1 and pseudo-label rate (%)"),
    "moco": SemiCurves("moco_loss", "train loss (labelled + weight x InfoNCE)", "InfoNCE loss (joint MoCo)",
                       "moco_acc1", "contrastive acc@1 (joint MoCo)", "train acc@1 and contrastive acc@1 (%)"),
}


def _semi_method(rows: list[dict]) -> str | None:
    """Which semi-supervised loss a fine-tuning log holds, told by the key its rows carry (a row's value may be
    null where a step's loss was not finite, so presence, not a finite value, decides)."""
    for method, curves in SEMI_CURVES.items():
        if any(isinstance(r, dict) and curves.loss_key in r for r in rows):
            return method
    return None


@_literal_text
def plot_finetune_curves(rows: list[dict], out: Path, title: str = "") -> Path:
    """loss, learning rate, train acc@1 and val acc@1 per dataset (known solid, unknown dashed); with FixMatch
    (semi.method=fixmatch) also its unlabeled loss and the share of pool images over its threshold, with the joint
    MoCo loss (semi.method=moco) its InfoNCE loss and contrastive acc@1."""
    fig = _figure(16, 3.6)
    axes = fig.subplots(1, 4)
    semi = SEMI_CURVES.get(_semi_method(rows))
    # with either method the logged loss is the labelled loss plus semi.weight x the method's own loss
    plot_smoothed(axes[0], *_series(rows, lambda r: r["loss"]), color=_color(0),
                  label=semi.total_label if semi else "train loss")
    if semi:
        plot_smoothed(axes[0], *_series(rows, lambda r: r[semi.loss_key]), color=_color(3), label=semi.loss_label)
    _finish(axes[0], "training loss", legend=semi is not None)
    xs, ys = _series(rows, lambda r: r["lr"])
    axes[1].plot(xs, ys, marker="o", markersize=3, linewidth=1.4, color=_color(1))
    _finish(axes[1], "learning rate (head)", log=bool(ys) and min(ys) > 0)
    plot_smoothed(axes[2], *_series(rows, lambda r: r["train_acc1"]), color=_color(2), label="train acc@1")
    if semi:
        plot_smoothed(axes[2], *_series(rows, lambda r: r[semi.rate_key]), color=_color(4), label=semi.rate_label)
    _finish(axes[2], semi.rate_title if semi else "train accuracy @1 (%, augmented batches)", legend=semi is not None)
    val_rows = [r for r in rows if isinstance(r.get("val"), dict)]
    ax = axes[3]
    if val_rows:
        names = []
        for r in val_rows:  # read_log drops a val of other types; rows from elsewhere are not trusted either
            known = r["val"].get("known")
            datasets = known.get("datasets") if isinstance(known, dict) else None
            for n in datasets if isinstance(datasets, dict) else ():
                if n not in names:
                    names.append(n)
        one = len(names) == 1  # one dataset: its two curves named in the panel, as they always were
        modes_drawn = set()
        for i, name in enumerate(names):
            for j, (mode, ls) in enumerate((("known", "-"), ("unknown", "--"))):
                xs, ys = _series(val_rows, lambda r, m=mode, n=name: r["val"][m]["datasets"][n]["acc1"])
                # one dataset: its two curves in two colours and markers; in one colour their legend entries
                # looked alike, and with one dataset the two scores often agree, so one curve hid the other
                plot_smoothed(ax, xs, ys, label=f"{name} ({mode})" if one else None,
                              color=_color(j) if one else _color(i, len(names)), linestyle=ls,
                              marker=("o", "s")[j] if one else "o", hollow=one and mode == "unknown")
                modes_drawn |= {mode} if xs else set()
        note = ""
        if one:
            _finish(ax, "val accuracy @1 (%)", legend=True)
        else:
            from matplotlib.lines import Line2D

            for mode, ls in (("known", "-"), ("unknown", "--")):
                xs, ys = _series(val_rows, lambda r, m=mode: r["val"][m]["mean_acc1"])
                plot_smoothed(ax, xs, ys, color="black", linestyle=ls, behind=True)
            # the style key in thin black: grey is a dataset colour (tab10's 8th) and would read as one
            keys = [(Line2D([], [], color="black", linestyle=ls, linewidth=1.0), f"{mode} source ({style})")
                    for mode, ls, style in (("known", "-", "solid"), ("unknown", "--", "dashed")) if mode in modes_drawn]
            keys.append((Line2D([], [], color="black", linewidth=1.8, marker="o", markerfacecolor="none"),
                         "mean over datasets"))
            xs, ys = _series(val_rows, lambda r: r["val"]["unknown"]["routing_acc"])
            if ys:
                ax.plot(xs, ys, linestyle=":", color="0.45", linewidth=1.2, marker=".")
                keys.append((Line2D([], [], linestyle=":", color="0.45", linewidth=1.2, marker="."),
                             "dataset routing (unknown)"))
            note = _dataset_legend(fig, ax, names, keys, "val accuracy @1")
            _finish(ax, "val accuracy @1 (%)" + note)
    else:
        _empty(ax, "no evaluation logged")
        _finish(ax, "val accuracy @1 (%)")
    _share_epochs(axes)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, out)


@_literal_text
def plot_moco_curves(rows: list[dict], out: Path, title: str = "") -> Path:
    """InfoNCE loss, contrastive acc@1/acc@5, kNN accuracy per dataset, learning rate."""
    fig = _figure(16, 3.6)
    axes = fig.subplots(1, 4)
    plot_smoothed(axes[0], *_series(rows, lambda r: r["loss"]), color=_color(0), label="loss")
    _finish(axes[0], "InfoNCE loss")
    plot_smoothed(axes[1], *_series(rows, lambda r: r["contrast_acc1"]), color=_color(1), label="acc@1")
    plot_smoothed(axes[1], *_series(rows, lambda r: r["contrast_acc5"]), color=_color(2), label="acc@5")
    _finish(axes[1], "contrastive accuracy (%)", legend=True)
    knn_rows = [r for r in rows if isinstance(r.get("knn_acc1"), dict)]
    names = _dataset_names(knn_rows, "knn_acc1")
    if knn_rows:
        for i, name in enumerate(names):
            plot_smoothed(axes[2], *_series(knn_rows, lambda r, n=name: r["knn_acc1"][n]), color=_color(i, len(names)))
        keys = []
        if len(names) > 1:
            from matplotlib.lines import Line2D

            plot_smoothed(axes[2], *_series(knn_rows, lambda r: r["knn_acc1"]["mean"]), color="black", behind=True)
            keys.append((Line2D([], [], color="black", linewidth=1.8, marker="o", markerfacecolor="none"),
                         "mean over datasets"))
        note = _dataset_legend(fig, axes[2], names, keys, "kNN accuracy on val")
        _finish(axes[2], "kNN accuracy on val (%)" + note)
    else:
        _empty(axes[2], "no kNN evaluation logged")
        _finish(axes[2], "kNN accuracy on val (%)")
    xs, ys = _series(rows, lambda r: r["lr"])
    axes[3].plot(xs, ys, marker="o", markersize=3, linewidth=1.4, color=_color(3))
    _finish(axes[3], "learning rate", log=bool(ys) and min(ys) > 0)
    _share_epochs(axes)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, out)


def plot_pretrain_curves(run: Path) -> Path | None:
    """RUN/plots/pretrain_curves.png of a MoCo run (loss, contrastive acc@1/acc@5, kNN accuracy, lr)."""
    rows = read_log(run)
    if not rows:
        return None
    return plot_moco_curves(rows, Path(run) / "plots" / "pretrain_curves.png")


def plot_train_curves(run: Path) -> Path | None:
    """RUN/plots/finetune_curves.png of a `fewshot train` run (loss, val accuracy, lr per epoch)."""
    rows = read_log(run)
    if not rows:
        return None
    return plot_finetune_curves(rows, Path(run) / "plots" / "finetune_curves.png")


BAR_IN = 0.28  # preferred width of one bar (inches); the figure widens to it, up to BARS_MAX_WIDTH
BARS_MAX_WIDTH = 24.0  # inches (2400 px): past it the bars get thinner
BAR_VALUE_FONT = 6.5


def _text_in(chars: int, fontsize: float) -> float:
    """Rough width in inches of `chars` characters of DejaVu Sans at `fontsize` (digits and lower case)."""
    return chars * 0.6 * fontsize / 72


def _tick_rotation(labels: list[str], spacing_in: float, fontsize: float) -> int:
    """The smallest angle at which neighbouring tick labels `spacing_in` apart do not run into each other
    (20 degrees at least for names over 10 characters, as before)."""
    width, height = _text_in(max(map(len, labels)), fontsize), 1.3 * fontsize / 72
    if width <= 0.9 * spacing_in and max(map(len, labels)) <= 10:
        return 0
    for angle in (20, 30, 45):
        if spacing_in * math.sin(math.radians(angle)) >= height:
            return angle
    return 90


def _tick(key: str, n: int) -> str:
    """A bar group's tick: a dataset key cut to n characters inside its name, never in its class-set mark
    (`digits [A]`, scored_on): cut at its end, two sets of one long name drew as the same tick."""
    name, mark = key, ""
    if key.endswith("]") and " [" in key:
        name, mark = key[:key.rindex(" [")], key[key.rindex(" ["):]
    return _short(name, max(8, n - len(mark))) + mark


@_literal_text
def plot_accuracy_bars(labels: list[str], metrics: list[dict[str, dict | None]], out: Path) -> Path:
    """Grouped bars: one group per dataset (+ mean, + routing for unknown source where a run has one), one bar per
    run.

    metrics[i] = {"known": metrics dict or None, "unknown": metrics dict or None} of run labels[i].
    The figure widens with groups x runs (up to BARS_MAX_WIDTH; wide panels are stacked, not side by side),
    tick labels turn as far as they must not to collide, values are written on bars wide enough for them.
    """
    modes = [m for m in ("known", "unknown") if any(x.get(m) for x in metrics)]
    groups_of = {}
    for mode in modes:
        names: list[str] = []
        for x in metrics:
            for n in ((x.get(mode) or {}).get("datasets") or {}):
                if n not in names:
                    names.append(n)
        groups_of[mode] = names
    # routing only where some run has one: with one dataset (routing None) an empty "routing" group was drawn
    routed = any(routing(x.get("unknown")) is not None for x in metrics)
    n_runs = len(labels)
    n_groups = max([len(g) + (2 if m == "unknown" and routed else 1) for m, g in groups_of.items()] or [1])
    margin_in = 0.9  # y label, ticks and padding of one panel
    panel_in = margin_in + n_groups * max(0.35, BAR_IN * n_runs / 0.8)
    small_w = max(7.0, 3.2 + 4.6 * len(modes))  # the width of old, enough for a few datasets side by side
    stacked = len(modes) > 1 and panel_in * len(modes) > small_w
    cols = 1 if stacked else max(1, len(modes))
    fig_w = min(BARS_MAX_WIDTH, max(small_w, panel_in * cols))
    axes_in = fig_w / cols - margin_in
    fig = _figure(fig_w, (3.8 * len(modes) if stacked else 4.4) + 0.22 * math.ceil(n_runs / 4))
    axes = fig.subplots(len(modes) if stacked else 1, 1 if stacked else max(1, len(modes)), squeeze=False).ravel()
    for ax, mode in zip(axes, modes):
        names = groups_of[mode]
        # keyed apart from the datasets' names: a dataset named "routing" drew the routing accuracy as its bar
        groups = [("dataset", n) for n in names] + [("mean", "mean")] + \
            ([("routing", "routing")] if mode == "unknown" and routed else [])
        width = 0.8 / max(1, n_runs)
        pos = np.arange(len(groups))
        spacing_in = axes_in / ((len(groups) - 0.2) * 1.1)  # the bars' span plus matplotlib's 5 % margins
        show_values = width * spacing_in >= 0.32  # "100.00" at 6.5 pt is 0.32 in wide: it fits above its bar
        for i, (label, x) in enumerate(zip(labels, metrics)):
            m = x.get(mode) or {}
            vals = []
            for key, g in groups:
                if key == "mean":
                    v = m.get("mean_acc1")
                elif key == "routing":
                    v = routing(m)
                else:
                    v = ((m.get("datasets") or {}).get(g) or {}).get("acc1")
                vals.append(float(v) if isinstance(v, (int, float)) else np.nan)
            bars = ax.bar(pos - 0.4 + width * (i + 0.5), vals, width, label=label, color=_color(i, n_runs))
            _mark_zeros(ax, pos - 0.4 + width * (i + 0.5), vals, _color(i, n_runs), width, show_values)
            if show_values:
                # the tables' numbers (79.55 was "79.5" here: f"{:.1f}" rounds the float 79.5499...)
                ax.bar_label(bars, labels=["" if np.isnan(v) else pct(v) for v in vals], fontsize=BAR_VALUE_FONT,
                             padding=1)
        ticks = [_tick(g, 24) for _, g in groups]
        rotation = _tick_rotation(ticks, spacing_in, 7)
        ax.set_xticks(pos, ticks, fontsize=7, rotation=rotation, ha="right" if 0 < rotation < 90 else "center",
                      rotation_mode="anchor" if 0 < rotation < 90 else "default")
        if ("mean", "mean") in groups:
            ax.axvline(len(names) - 0.5, color="0.6", linewidth=0.8, linestyle=":")
        ax.set_ylim(0, 108)
        ax.set_ylabel("val accuracy @1 (%)", fontsize=8)
        ax.set_title(f"{mode}-source val accuracy" + (" and dataset routing" if mode == "unknown" and routed else ""),
                     fontsize=10)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:  # one legend for both panels, below them, never over a bar
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), fontsize=8, frameon=False)
    if differing_datasets(labels, metrics):  # the figure alone says it too (the page's caption names them)
        fig.suptitle("note: the runs were scored on different datasets; their means are not like for like",
                     fontsize=9, color="0.3")
    return _save(fig, out)


def _mark_zeros(ax, xs: np.ndarray, vals: list[float], color, width: float, labelled: bool) -> None:
    """A flat bar in the run's colour over the axis, and a "0" above it where the bars carry no value labels, at
    each real 0.00 score: a bar of height 0 drew nothing, as the empty place of a dataset the run does not have
    (NaN) does, and a failing run read as a missing one."""
    zeros = [x for x, v in zip(xs, vals) if v == 0]
    if not zeros:
        return
    ax.hlines([0.0] * len(zeros), [x - width / 2 for x in zeros], [x + width / 2 for x in zeros], colors=[color],
              linewidth=3, clip_on=False, zorder=3)
    if not labelled:
        for x in zeros:
            ax.text(x, 1.5, "0", ha="center", va="bottom", fontsize=BAR_VALUE_FONT, color="0.2")


@_literal_text
def plot_confusion(cm: np.ndarray, classes: list[str], title: str, out: Path) -> Path:
    """Confusion matrix, rows = true class, colour = share of the row; counts printed for <= 20 classes.

    Drawn with at least one pixel per class: past ~650 classes the dpi grows (up to CONFUSION_MAX_DPI), past
    that k x k blocks of classes are pooled to their largest share (nearest-neighbour resampling into fewer
    pixels than classes silently dropped whole rows and columns, and a confusion with them)."""
    n = len(classes)
    small = n <= 20
    side = min(9.0, max(3.6, 0.3 * n + 2.2)) if small else 7.0
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, np.maximum(rows, 1), dtype=float)
    dpi, pool = DPI, 1
    if not small:
        axes_in = 6.4  # the matrix's side in a 7.9 x 7 in figure (6.56 in, measured), with a margin
        pool = max(1, math.ceil(n / (axes_in * CONFUSION_MAX_DPI)))
        m = math.ceil(n / pool)
        dpi = min(CONFUSION_MAX_DPI, max(DPI, math.ceil(m / axes_in)))
        if pool > 1:
            padded = np.zeros((m * pool, m * pool))
            padded[:n, :n] = share
            share = padded.reshape(m, pool, m, pool).max(axis=(1, 3))
    fig = _figure(side + 0.9, side)
    fig.set_dpi(dpi)
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest",
                   extent=(-0.5, share.shape[1] * pool - 0.5, share.shape[0] * pool - 0.5, -0.5))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="share of the true class")
    if small:
        short = [_short(c, 14) for c in classes]  # the class folders' names, as ticks: escaped (_short)
        rotate = max(map(len, short)) > 2
        ax.set_xticks(range(n), short, rotation=50 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
        ax.set_yticks(range(n), short, fontsize=8)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=9 if n <= 12 else 7,
                            color="white" if share[i, j] > 0.55 else "black")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted class", fontsize=8)
    ax.set_ylabel("true class", fontsize=8)
    ax.set_title(title + (f"\n(each pixel: the largest share in a block of {pool} x {pool} classes)" if pool > 1 else ""),
                 fontsize=10)
    return _save(fig, out)


@_literal_text
def plot_embedding(coords: np.ndarray, classes: np.ndarray, class_names: list[str], dataset_ids: np.ndarray,
                   dataset_names: list[str], method: str, out: Path) -> Path:
    """Two scatter plots of the same 2-D map: coloured by class and by dataset."""
    from matplotlib.lines import Line2D

    fig = _figure(13, 5.6)
    ax_c, ax_d = fig.subplots(1, 2)
    n_cls = len(class_names)
    palette = np.array([_color(i, n_cls) for i in range(n_cls)]).reshape(-1, 4)
    colors = palette[np.asarray(classes, dtype=np.int64) % max(1, n_cls)]
    ax_c.scatter(coords[:, 0], coords[:, 1], c=colors, s=14, alpha=0.85, linewidths=0)
    if n_cls <= 20:
        handles = [Line2D([], [], marker="o", linestyle="", color=palette[i], markersize=5, label=_short(name))
                   for i, name in enumerate(class_names)]
        ax_c.legend(handles=handles, fontsize=6.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax_c.set_title(f"val features ({method}), coloured by class ({n_cls})", fontsize=10)
    n_ds = len(dataset_names)
    for d, name in enumerate(dataset_names):
        m = dataset_ids == d
        if m.any():
            ax_d.scatter(coords[m, 0], coords[m, 1], color=_color(d, n_ds), s=14, alpha=0.85, linewidths=0,
                         label=_short(name))
    title = f"val features ({method}), coloured by dataset"
    if n_ds <= 10:
        ax_d.legend(fontsize=7, loc="best")
    elif n_ds <= LEGEND_MAX_NAMED:  # beside the panel, in columns of at most 15 (in it, they hid the points)
        ax_d.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
                    ncol=math.ceil(n_ds / 15), columnspacing=0.8, handletextpad=0.2)
    else:  # 60 names were taller than the figure: both panels collapsed to a strip
        title += f"\n({n_ds} datasets, too many to name)"
    ax_d.set_title(title, fontsize=10)
    for ax in (ax_c, ax_d):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{method} 1", fontsize=8)
        ax.set_ylabel(f"{method} 2", fontsize=8)
    return _save(fig, out)


GRID_DATASET_CHARS = 16  # a dataset's name in a grid title: 12 cut "fashion-mnist" to "fashion-mni…"
GRID_TITLE_CHARS = 26    # characters a 1.75-inch cell holds at 7 pt (bold); longer titles get a smaller font


def _grid_title_size(text: str) -> float:
    """The font size that fits a grid title's longest line in its cell (7 pt, down to 5 for the longest)."""
    longest = max(map(len, text.splitlines()), default=0)
    return 7.0 if longest <= GRID_TITLE_CHARS else max(5.0, 7.0 * GRID_TITLE_CHARS / longest)


@_literal_text
def plot_prediction_grid(images: np.ndarray, true_names: list[str], pred_names: list[str], correct: list[bool],
                         out: Path, cols: int = 8, datasets: list[str] | None = None) -> Path:
    """Images (uint8 [N, 3, H, W]) with their predicted class; wrong ones titled and framed in red.

    datasets[i]: the dataset of image i (known source: of its true and predicted class); when the grid shows
    more than one, titles start with it (datasets may share class names: `9` of two digit sets)."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    # a fixed layout: constrained layout measured every title of every cell and took ~3 s per grid
    fig = _figure(1.75 * cols, 1.95 * rows, layout=None)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / (1.95 * rows), wspace=0.12,
                        hspace=0.45 / 1.95 * 1.6)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()

    def short(s: str) -> str:
        return s if len(s) <= 15 else s[:14] + "…"

    prefix = datasets is not None and len(set(datasets)) > 1
    for ax in axes:
        ax.set_axis_off()
    for i in range(n):
        ax = axes[i]
        ax.set_axis_on()
        ax.imshow(np.transpose(images[i], (1, 2, 0)), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ok = bool(correct[i])
        color = "#1a7f37" if ok else "#d1242f"
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(1.5 if ok else 3.5)
        text = short(pred_names[i]) if ok else f"{short(pred_names[i])}\n(true: {short(true_names[i])})"
        if prefix:
            text = f"{_short(datasets[i], GRID_DATASET_CHARS)}: {text}"
        ax.set_title(text, fontsize=_grid_title_size(text), color=color, fontweight="normal" if ok else "bold")
    return _save(fig, out)
