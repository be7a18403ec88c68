"""`fewshot report RUN [RUN ...] --out DIR`: the page and its PNGs.

The report is DIR/index.html plus the PNGs beside it (relative links, no scripts, no network):
an overview table of every run, grouped per-dataset accuracy bars, and per run its training
curves, per-dataset tables and, for fine-tuned runs whose data is at hand, confusion matrices,
a 2-D map of val features and a grid of val images with their predictions. Which --out it may write
into: out_folder.py; `fewshot compare` and the FLOPs per run: compare.py; a semi-supervised run's fact:
semi_facts.py.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import re
from pathlib import Path

import numpy as np

from fewshot.data.roots import REPORT_MARK
from fewshot.errors import UserError, printable, shell_quoted, undecodable_escaped
from fewshot.report import html as H
from fewshot.report import tables as T
from fewshot.report.compare import compute_flops
from fewshot.report.out_folder import _earlier_report_pngs, check_report_out
from fewshot.report.run_record import Run
from fewshot.report.run_score import refresh_evaluation
from fewshot.report.runs import expand_runs
from fewshot.report.semi_facts import SEMI_FACTS

GRID_IMAGES = 40
# --grid above this is refused, not quietly capped: the grid is a column of rows of 8 (400 images: 50 rows, ~10,000
# px tall; --grid 100000 drew 13 MB, 68,250 px, in 2 minutes), and refusing up front, before any prediction, keeps
# the caption's count the one asked for
MAX_GRID_IMAGES = 400
MAX_CONFUSION_IMAGES = 12  # datasets with a confusion-matrix picture per run (the pairs are always listed)


NAME_PART_MAX = 60  # characters of a run or dataset name in a PNG's name: a 230-character folder name made
# "File name too long" (255 bytes) and no report


def _slugs(runs: list[Run]) -> dict[str, str]:
    """A file-name part per run label; `A` and `a` are two slugs: _png makes names differing only in case unique."""
    out, taken = {}, set()
    for r in runs:
        base = _safe_name(r.label, "run")
        slug, i = base, 2
        while slug in taken:
            slug, i = f"{base}-{i}", i + 1
        taken.add(slug)
        out[r.label] = slug
    return out


def _safe_name(s: str, empty: str = "x") -> str:
    """s as a short portable file-name part; a long one keeps its start and a hash of the whole (stays unique)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.") or empty
    if len(name) <= NAME_PART_MAX:
        return name
    digest = hashlib.blake2b(s.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()
    return f"{name[:NAME_PART_MAX - 9].rstrip('-.')}-{digest}"


def _map_name(method: str, tsne: bool, n: int) -> str:
    """What the embedding map shows, for its caption: embed_2d draws raw coordinates where the method cannot run."""
    if method != "raw":
        return method
    asked = "t-SNE" if tsne else "PCA"
    return f"The first two coordinates (too few {'images' if n < 3 else 'feature dimensions'} for {asked})"


def _smoothing_caption(weights: list[tuple[str, float]]) -> str:
    """What the curves' lines are: each series is smoothed by its own number of points (plot_smoothed)."""
    smoothed = [(name, w) for name, w in weights if w > 0]
    raw = [name for name, w in weights if w == 0]
    if not smoothed:
        return " Too few points to smooth: lines join the raw values."
    if len(weights) == 1 or len({round(w, 2) for _, w in weights}) == 1:
        text = f" Lines: EMA-smoothed (weight {smoothed[0][1]:.2f}); faint points: the raw values."
    else:
        text = " Lines: EMA-smoothed (weight " + " and ".join(f"{w:.2f} for the {name}" for name, w in smoothed) + \
            "); faint points: the raw values."
    return text + (f" The {raw[0]}: too few points to smooth, lines join the raw values." if raw else "")


def file_weights(path: Path | None) -> str | None:
    """The weights ("ema" or "raw") the file the image parts predicted with holds: a run folder without best.pt
    predicts with last.pt's EMA while the log row shown may be of the raw weights. None where it cannot be read."""
    from fewshot.report.run_score import checkpoint_weights
    from fewshot.train.checkpoint import load_checkpoint

    if path is None:
        return None
    try:
        return checkpoint_weights(load_checkpoint(path, mmap=True))
    except Exception:  # noqa: BLE001 - analyse_run read it a moment ago; unknown weights are taken as the same
        return None


def _folder_label(run) -> str:
    """A `fewshot run` folder's name in the report's notes: its stages' labels are FOLDER/STAGE."""
    return run.label.rsplit("/", 1)[0] if "/" in run.label else str(run.group)


class ReportBuilder:
    def __init__(self, paths: list[str], out: Path, data: str | None = None, device: str = "auto",
                 tsne: bool = False, grid_images: int = GRID_IMAGES, log=print, skip_images: str | None = None,
                 skip_bad: bool = False):
        if grid_images > MAX_GRID_IMAGES:
            raise UserError(f"--grid {grid_images} is more than the {MAX_GRID_IMAGES} val images a prediction grid "
                            f"shows (rows of 8: a picture too tall to view); give --grid {MAX_GRID_IMAGES} or less.")
        self.paths = [str(p) for p in paths]  # as given: the footer's command rebuilds this report
        self.runs = expand_runs(paths)
        self.out = Path(out)
        self.data = data
        self.tsne = tsne
        self.grid_images = grid_images
        self.log = log
        self.skip_images = skip_images  # why the image-based parts are left out (`fewshot run` out of time), or None
        self.skip_bad = skip_bad  # --skip-bad-images: undecodable val images left out of the image-based parts
        from fewshot.utils import resolve_device

        self.device = resolve_device(device)
        self.slugs = _slugs(self.runs)
        self.analyses: dict = {}
        self.data_notes: dict[str, str] = {}
        self.skipped: list[tuple[str, str]] = []  # (run label, why its image-based parts were skipped): printed
        self.images: list[Path] = []
        self._taken: set[str] = set()  # the PNG names given, lower-cased

    # ------------------------------------------------------------------ helpers
    def _png(self, name: str) -> str:
        """A file name beside index.html (returned relative, as the page references it). Names are made of slugs
        that may hold '-': run "x" with a dataset "d-curves" and run "x-confusion-0-d" both made
        x-confusion-0-d-curves.png, one figure drawn over the other; a name taken already (case aside, for file
        systems that ignore it) gets "-2", "-3", ..."""
        stem, k = name.removesuffix(".png"), 2
        while name.lower() in self._taken:
            name, k = f"{stem}-{k}.png", k + 1
        self._taken.add(name.lower())
        path = self.out / name
        self.images.append(path)
        return name

    def _analyse(self) -> None:
        from fewshot.report.analysis import analyse_run, resolve_data_root

        for r in self.runs:
            if r.kind != "supervised":
                continue
            if r.checkpoint is None:
                self.data_notes[r.label] = "no checkpoint in checkpoints/: predictions, confusion matrices, " \
                                           "embedding map and image grid skipped."
                continue
            predicted_with = (r.pipeline or {}).get("predicted_with")
            if predicted_with and r.path.name != predicted_with:  # an earlier round of a `fewshot run`
                if r.group is not None and not (r.group / predicted_with).is_dir():
                    self.data_notes[r.label] = f"confusion matrices, embedding map and image grid are drawn for " \
                                               f"the stage that predicted ({predicted_with}, named in summary.json), " \
                                               f"but its folder {r.group / predicted_with} is missing: skipped."
                    self.skipped.append((r.label, self.data_notes[r.label]))
                else:
                    self.data_notes[r.label] = f"confusion matrices, embedding map and image grid are drawn for " \
                                               f"the stage that predicted ({predicted_with}), not for this one."
                continue
            if self.skip_images:
                self.data_notes[r.label] = f"Confusion matrices, embedding map and prediction grid skipped: " \
                                           f"{self.skip_images}"
                continue
            root, why = resolve_data_root(r, self.data)
            if root is None:
                self.data_notes[r.label] = f"No data for the image-based parts ({why}): confusion matrices, " \
                                           f"embedding map and prediction grid skipped."
                continue
            try:
                self.log(f"report: predicting the val images of {r.label} ({root})")
                a = self.analyses[r.label] = analyse_run(r, root, self.device, skip_bad=self.skip_bad)
                self.data_notes[r.label] = f"val images from {root} ({why})."
                if a.left_out:
                    here = [n for n in a.space.names if n not in a.left_out]
                    self.data_notes[r.label] += (
                        f" {root} holds no {', '.join(a.left_out)} of the model's datasets: left out; confusion "
                        f"matrices, embedding map and prediction grid cover {', '.join(here)} only (pass --data a "
                        f"root with every dataset for all of them).")
                self._match_checkpoint_epoch(r, a.epoch, a.checkpoint)
            except UserError as exc:
                self.data_notes[r.label] = f"Image-based parts skipped: {exc}"
                self.skipped.append((r.label, self.data_notes[r.label]))  # printed too: the command exits 0

    def _match_checkpoint_epoch(self, r: Run, epoch: int | None, checkpoint: Path | None = None) -> None:
        """best.pt is read after the run's files: a run still training may have replaced it meanwhile. The
        accuracies shown must be those of the checkpoint predicted with (re-read from the log), else said why
        not: best.pt missing (last.pt predicted), a run being written (its lock held), or files that disagree."""
        if epoch is None or r.metrics_epoch is None or r.metrics_epoch == epoch:
            return
        if r.given_checkpoint is not None:  # the file named as RUN: load_run said whose accuracies are shown
            return
        if checkpoint is not None and checkpoint.name != "best.pt":
            r.notes.append(f"The image-based parts predict with {checkpoint.name} (epoch {epoch}), the accuracies "
                           f"shown are of epoch {r.metrics_epoch}, the best evaluation: best.pt is missing.")
            return
        if refresh_evaluation(r, epoch):
            return
        if r.being_written:
            r.notes.append(f"The checkpoint predicted with holds epoch {epoch}, the accuracies shown are of epoch "
                           f"{r.metrics_epoch}: the run is still being written (training, or evaluating epoch "
                           f"{epoch}). Report it again once it has finished.")
        else:
            r.notes.append(f"The checkpoint predicted with holds epoch {epoch}, the accuracies shown are of epoch "
                           f"{r.metrics_epoch}: the run's files disagree (best.pt replaced or copied in after the run "
                           f"wrote its {'log.jsonl' if r.from_log else 'metrics.json'}).")

    def _folder_words(self, key: str):
        """(folder label, words) of each `fewshot run` folder whose summary.json (as pipeline_runs read it) has
        ``key``: its notes are said once per folder, not once per stage."""
        said = set()
        for r in self.runs:
            words = (r.pipeline or {}).get(key)
            if words and r.group not in said:
                said.add(r.group)
                yield _folder_label(r), words

    # ------------------------------------------------------------------ sections
    def _overview(self, flop_counts: dict) -> list[str]:
        body = ['<h2 id="overview">Overview</h2>', T.to_html(T.overview_table(self.runs, flop_counts), with_title=False)]
        shown = set()
        for r in self.runs:  # a `fewshot run` folder's self-training, once per folder
            rounds = (r.pipeline or {}).get("self_training")
            if rounds and r.group not in shown:
                shown.add(r.group)
                label = _folder_label(r)
                body.append(T.to_html(T.self_training_table(label, rounds, r.pipeline.get("predicted_with"))))
                if r.pipeline.get("self_training_skipped"):
                    body.append(H.note(f"Later rounds of self-training were skipped (planned, not an error): "
                                       f"{r.pipeline['self_training_skipped']}."))
                if r.pipeline.get("last_round_lost"):  # beside the table's mark of the round that predicted
                    body.append(H.note(f"The last round did not predict: {r.pipeline['last_round_lost']}"))
                if r.pipeline.get("self_training_reduced"):
                    body.append(H.note(f"Self-training's middle rounds were dropped (planned, not an error): "
                                       f"{r.pipeline['self_training_reduced']}."))
                if r.pipeline.get("self_training_gently"):  # a short round's val barely moves: here is why
                    body.append(H.note(f"Short self-training rounds continued the round before's model at a tenth of "
                                       f"round 1's lr, without a warm-up (planned, not an error): "
                                       f"{r.pipeline['self_training_gently']}."))
                if r.pipeline.get("self_training_labelled_only"):  # its row has no pseudo-labels: here is why
                    body.append(H.note(f"The last round trained on the labelled images only, without pseudo-labels "
                                       f"(planned, not an error): {r.pipeline['self_training_labelled_only']}."))
        for label, words in self._folder_words("resumed_training_skipped"):  # its stage's short training: why
            body.append(H.note(f"{label}: {words}"))
        for label, words in self._folder_words("near_chance"):  # the run's last warning
            body.append(H.note(f"{label}: warning: {words}"))
        for label, words in self._folder_words("balanced_prediction"):  # its test predictions (run.balance)
            body.append(H.note(f"{label}: the test predictions (pred_all.json) are {words}. Balancing evens out "
                               f"the predicted classes to the train split's proportions (or even ones, or the "
                               f"test split's own where it is skewed), with per-class offsets fitted on the test "
                               f"images; under auto it is kept where the same on val does not lower val "
                               f"accuracy, with 10 val images per class or more to decide on (run.balance)."))
        sup = [r for r in self.runs if r.kind == "supervised" and (r.metrics_known or r.metrics_unknown)]
        if sup:
            from fewshot.report.plots import differing_datasets, plot_accuracy_bars

            name = self._png("accuracy_bars.png")
            from fewshot.report.scored_on import keyed, scored_keys

            labels = [r.label for r in sup]
            keys, split = scored_keys(sup)  # one name, different classes: bars grouped apart
            metrics = [{"known": keyed(r.metrics_known, k), "unknown": keyed(r.metrics_unknown, k)}
                       for r, k in zip(sup, keys)]
            plot_accuracy_bars(labels, metrics, self.out / name)
            differ = " ".join(filter(None, [split, differing_datasets(labels, metrics)]))
            routed = any(T.routing(r.metrics_unknown) is not None for r in sup)  # as the figure draws routing
            body.append(H.figure(name, "Val accuracy @1 per dataset for each fine-tuned run, with the mean over "
                                       "datasets; known source (the dataset of each image is given) and unknown "
                                       "source (predicted over all classes)"
                                       + (", where routing is the share of images assigned to the right dataset."
                                          if routed else ".") + " A score of 0 is drawn as a flat bar over the "
                                       "axis; a dataset a run does not have is left empty."
                                       + (f" {differ}" if differ else "")))
        return body

    def _curves(self, r: Run) -> list[str]:
        from fewshot.report.plots import curve_smoothing, plot_finetune_curves, plot_moco_curves

        if not r.log:  # the run's notes say why (missing, empty, no training rows): "No log.jsonl" was said of them all
            return []
        name = self._png(f"{self.slugs[r.label]}-curves.png")
        if r.kind == "moco":
            plot_moco_curves(r.log, self.out / name)
            cap = "MoCo training: InfoNCE loss, contrastive accuracy of the positive key among the queue's " \
                  "negatives (acc@1/acc@5), kNN accuracy of frozen features on val per dataset, learning rate."
        else:
            plot_finetune_curves(r.log, self.out / name)
            cap = "Fine-tuning: training loss, learning rate, accuracy on the (augmented) training batches, val " \
                  "accuracy per dataset in known-source (solid) and unknown-source (dashed) mode."
            if any("unlabeled_loss" in row for row in r.log):
                cap += " FixMatch: the training loss is the labelled loss plus semi.weight times the unlabeled " \
                       "loss (drawn on its own); the pseudo-label rate is the share of drawn pool images whose " \
                       "weak view clears semi.threshold."
            if any("moco_loss" in row for row in r.log):
                cap += " Joint MoCo loss: the training loss is the labelled loss plus semi.weight times the InfoNCE " \
                       "loss on pool images (drawn on its own); the contrastive acc@1 is the share of pool queries " \
                       "whose positive key outscores every key in the queue."
        smooth = _smoothing_caption(curve_smoothing(r.log, r.kind == "moco"))
        return ["<h3>Training curves</h3>", H.figure(name, cap + smooth)]

    def _facts(self, r: Run, flop_counts: dict) -> str:
        items = [("directory", str(r.path)), ("kind", "MoCo pretraining" if r.kind == "moco" else "fine-tuning"),
                 ("model", r.model_name), ("parameters", T.count(r.n_parameters)
                                           + (" (backbone)" if r.kind == "moco" else "")),
                 ("FLOPs / image", T.flops(flop_counts.get(r.label))),
                 ("input size", f"{r.img_size} px" if r.img_size else T.DASH), ("epochs", T.epochs(r.epochs)),
                 ("training time", T.duration(r.training_seconds)), ("throughput", T.rate(r.throughput)),
                 ("best epoch", T.opt(r.best_epoch))]
        if r.given_checkpoint is not None:  # its predictions, not best.pt's
            items.append(("checkpoint", f"{r.given_checkpoint} (named as RUN; epoch {T.opt(r.given_epoch)})"))
        semi = r.config.get("semi")
        if r.kind == "supervised" and isinstance(semi, dict) and semi.get("method") in SEMI_FACTS:
            items.append(("semi-supervised", SEMI_FACTS[semi["method"]](r)))
        if r.kind == "supervised" and r.metrics:
            where = f"log.jsonl, epoch {T.opt(r.metrics_epoch)}" if r.from_log else "metrics.json"
            items.append((f"mean acc@1 ({where})", f"{T.pct(r.metrics.get('mean_acc1'))} "
                                                   f"({r.metrics.get('mode', 'known')} source)"))
        return H.facts(items)

    def _image_parts(self, r: Run) -> list[str]:
        from fewshot.report.analysis import (confusion, embed_2d, recomputed_mean_acc1, sample_for_grid,
                                             top_confusions)
        from fewshot.report.plots import plot_confusion, plot_embedding, plot_prediction_grid

        a = self.analyses.get(r.label)
        if a is None:
            return [H.note(self.data_notes.get(r.label, "Image-based parts skipped."))]
        slug = self.slugs[r.label]
        checkpoint = a.checkpoint or r.checkpoint
        if r.given_checkpoint is not None:
            which = f"{checkpoint} (the checkpoint named as RUN, epoch {T.opt(a.epoch)})"
        elif checkpoint is not None and checkpoint.name == "best.pt":
            which = "the best checkpoint"
        elif r.evaluated:  # log.jsonl holds evaluations: best.pt was saved, and is gone
            which = "the last checkpoint (best.pt is missing, though log.jsonl holds evaluations)"
        elif r.being_written:
            which = "the last checkpoint (the run is still being written, before its first evaluation: no best.pt yet)"
        else:
            which = "the last checkpoint (the run stopped before its first evaluation: no best.pt yet)"
        body = [f'<p class="caption">Predictions of {which}, known source; '
                f'{H.e(self.data_notes[r.label])}</p>']
        got = recomputed_mean_acc1(a)
        want = (r.metrics_known or {}).get("mean_acc1")
        if a.left_out:  # the run's mean is over every dataset, these images over some: compare like with like
            per = (r.metrics_known or {}).get("datasets") or {}
            accs = [(per.get(n) or {}).get("acc1") for n in a.space.names if n not in a.left_out]
            want = sum(accs) / len(accs) if accs and all(isinstance(x, (int, float)) for x in accs) else None
        same_epoch = r.metrics_epoch is None or a.epoch is None or r.metrics_epoch == a.epoch
        differ = same_epoch and isinstance(want, (int, float)) and abs(got - want) > 0.01
        # best.pt's scores are of its own weights; the file predicted with may hold the other set (last.pt's EMA,
        # named as RUN or used where best.pt is missing, beside a log row of the raw weights that scored higher):
        # then the numbers differ with the same data. The file is read only where that can be the reason (a
        # report of many runs loaded each one's checkpoint again for nothing)
        if r.given_checkpoint is not None:
            used = r.given_weights  # load_run's note says whose accuracies are shown
        else:
            used = file_weights(a.checkpoint) if differ and r.metrics_weights is not None else None
        same_weights = used is None or r.metrics_weights is None or used == r.metrics_weights
        if differ and not same_weights and r.given_checkpoint is None:
            name = a.checkpoint.name if a.checkpoint is not None else "the checkpoint"
            body.append(H.note(f"{name} predicts with its {used.upper()} weights, but the accuracies shown (epoch "
                               f"{T.opt(r.metrics_epoch)}) are of the other set ({r.metrics_weights.upper()} "
                               f"weights), not {name}'s: its mean acc@1 on these val images is {got:.2f}, theirs "
                               f"{want:.2f}."))
        if differ and same_weights:
            over = " over the same datasets" if a.left_out else ""
            weights = f", {r.metrics_weights.upper()} weights" if r.metrics_weights else ""
            body.append(H.note(f"Recomputed known-source mean acc@1 on these val images is {got:.2f}, but the "
                               f"run's metrics say {want:.2f}{over} for the same checkpoint (epoch "
                               f"{T.opt(a.epoch if a.epoch is not None else r.metrics_epoch)}{weights}): the val "
                               f"images differ from those the run was evaluated on (another --data, or files "
                               f"changed since)."))
        # confusion matrices
        body.append("<h3>Confusion matrices (val, known source)</h3>")
        if len(a.space.names) > MAX_CONFUSION_IMAGES:
            body.append(H.note(f"Pictures are shown for the first {MAX_CONFUSION_IMAGES} datasets only (of "
                               f"{len(a.space.names)}); every dataset keeps its heading and its table of most "
                               f"confused pairs."))
        cells = []
        for d, name in enumerate(a.space.names):
            classes = list(a.space.classes[d])
            cm = confusion(a, d)
            if cm.sum() == 0:
                continue
            acc = 100.0 * np.trace(cm) / cm.sum()
            part = [f"<h4>{H.e(name)} — {len(classes)} classes, {int(cm.sum())} images, acc@1 {acc:.2f}</h4>"]
            if d < MAX_CONFUSION_IMAGES:
                png = self._png(f"{slug}-confusion-{d}-{_safe_name(name)}.png")
                plot_confusion(cm, classes, f"{name}: confusion (val)", self.out / png)
                part.append(H.figure(png, "Rows: true class; columns: predicted class; colour: share of the row"
                                     + ("; numbers: image counts." if len(classes) <= 20 else
                                        " (too many classes to label; see the most confused pairs below).")))
            pairs = top_confusions(cm, classes, k=10 if len(classes) > 20 else 5)
            if pairs:
                t = T.Table(f"most confused pairs of {name}", ["true class", "predicted as", "images", "% of class"],
                            [[p[0], p[1], str(p[2]), f"{p[3]:.1f}"] for p in pairs], numeric=[False, False, True, True])
                part.append(T.to_html(t))
            else:
                part.append('<p class="caption">No confusions: every val image is classified correctly.</p>')
            cells.append("<div>" + "\n".join(part) + "</div>")
        body.append('<div class="grid2">' + "\n".join(cells) + "</div>")
        # embedding map
        try:
            coords, method = embed_2d(a.features, "tsne" if self.tsne else "pca")
            png = self._png(f"{slug}-embedding.png")
            class_names = [f"{n}: {c}" if len(a.space.names) > 1 else c
                           for n, cls in zip(a.space.names, a.space.classes) for c in cls]
            plot_embedding(coords, a.targets, class_names, a.dataset_ids, list(a.space.names), method, self.out / png)
            body += ["<h3>Embedding of val features</h3>",
                     H.figure(png, f"{_map_name(method, self.tsne, len(a.targets))} of the backbone's pooled, "
                                   f"L2-normalised features of {len(a.targets)} val image(s); left coloured by "
                                   f"class, right by dataset.")]
        except Exception as exc:  # a degenerate map must not lose the rest of the report
            body.append(H.note(f"Embedding map skipped: {exc}"))
        # prediction grid
        idx = sample_for_grid(a, self.grid_images) if self.grid_images > 0 else np.zeros(0, dtype=np.int64)
        if len(idx):
            names_of = lambda d, c: a.space.classes[d][c]  # noqa: E731
            ds = a.dataset_ids[idx]
            true = [names_of(d, c) for d, c in zip(ds, a.true_local[idx])]
            pred = [names_of(d, c) for d, c in zip(ds, a.pred_local[idx])]
            ok = a.correct[idx].tolist()
            png = self._png(f"{slug}-predictions.png")
            plot_prediction_grid(a.images[idx].numpy(), true, pred, ok, self.out / png,
                                 datasets=[a.space.names[d] for d in ds])
            n_bad = len(ok) - sum(ok)
            body += ["<h3>Val images with predictions</h3>",
                     H.figure(png, f"{len(idx)} val images sampled evenly over the datasets; title = "
                                   + ("dataset: " if len(set(ds.tolist())) > 1 else "")
                                   + f"predicted class (known source); {n_bad} wrong ones framed and titled in red "
                                     f"with the true class.")]
        return body

    def _run_section(self, r: Run, flop_counts: dict) -> list[str]:
        body = [f'<h2 id="run-{H.e(self.slugs[r.label])}">{H.e(r.label)} '
                f'<span class="sub">({"MoCo" if r.kind == "moco" else "fine-tuning"}, {H.e(r.model_name)})</span></h2>',
                self._facts(r, flop_counts)]
        body += [H.note(n) for n in r.notes]
        body += self._curves(r)
        for t in T.run_tables(r):
            body.append(T.to_html(t))
        if r.kind == "supervised":
            body += self._image_parts(r)
        return body

    # ------------------------------------------------------------------ the page
    def command(self) -> str:
        """The command that rebuilds this report: its RUN arguments as given (a `fewshot run` folder, a checkpoint
        file), --out and the options that change what it shows. The stage paths it listed were not what was
        given, and named no --out. A folder named with bytes that are not UTF-8 is written as bash's $'o\\xff'
        (shell_quoted): shlex's 'o\\udcff', shown as 'o\\xff', named no folder."""
        words = ["fewshot", "report", *self.paths, "--out", str(self.out)]
        if self.data is not None:
            words += ["--data", str(self.data)]
        if self.tsne:
            words.append("--tsne")
        if self.grid_images != GRID_IMAGES:
            words += ["--grid", str(self.grid_images)]
        if self.skip_bad:
            words.append("--skip-bad-images")
        return " ".join(map(shell_quoted, words))

    def build(self) -> Path:
        from fewshot.data.cache_files import ensure_writable_dir
        from fewshot.report.out_lock import report_out_locked

        check_report_out(self.out, self.runs, self.data)
        ensure_writable_dir(self.out, "report")
        with report_out_locked(self.out, self.log):  # another report into OUT finishes first (out_lock.py)
            return self._write()

    def _write(self) -> Path:
        """The page and its PNGs into OUT, whose report lock this report holds."""
        from fewshot.utils import atomic_write_text

        atomic_write_text(self.out / REPORT_MARK, "")  # a link put there since the check is replaced, not followed
        earlier = _earlier_report_pngs(self.out)  # before this report rewrites any of them
        self._analyse()
        flop_counts = compute_flops(self.runs, self.analyses)
        body = [H.toc([("overview", "Overview")] + [(f"run-{self.slugs[r.label]}", r.label) for r in self.runs])]
        body += self._overview(flop_counts)
        for r in self.runs:
            body += self._run_section(r, flop_counts)
        now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        n_ft = sum(r.kind == "supervised" for r in self.runs)
        subtitle = (f"{len(self.runs)} run(s): {n_ft} fine-tuning, {len(self.runs) - n_ft} MoCo pretraining. "
                    f"Generated {now}.")
        from fewshot import __version__

        text = H.page("fewshot report", subtitle, body, f"fewshot {__version__} · {self.command()}")
        index = self.out / "index.html"
        atomic_write_text(index, undecodable_escaped(text))  # a run folder named with bytes that are not UTF-8
        # The earlier report's PNGs that this one did not write again go only now: a report failing halfway leaves
        # the earlier page whole (its PNGs all there)
        for name in earlier - {p.name for p in self.images}:
            with contextlib.suppress(OSError):
                (self.out / name).unlink()
        for r in self.runs:  # on the page too; printed so that a file passed over is not passed over unseen
            for n in r.notes:
                self.log(printable(f"note ({r.label}): {n}"))
        for label, n in self.skipped:
            self.log(printable(f"note ({label}): {n}"))
        return index


def build_report(paths: list[str], out: Path, data: str | None = None, device: str = "auto", tsne: bool = False,
                 grid_images: int = GRID_IMAGES, log=print, skip_images: str | None = None,
                 skip_bad: bool = False) -> Path:
    """Write OUT/index.html (+ PNGs) for the given runs; returns the page's path. ``skip_images``: why the
    image-based parts (val predictions, confusion matrices, embedding map, grid) are left out, or None;
    ``skip_bad`` (--skip-bad-images): undecodable val images are left out of them instead of skipping them all."""
    return ReportBuilder(paths, Path(out), data=data, device=device, tsne=tsne, grid_images=grid_images,
                         log=log, skip_images=skip_images, skip_bad=skip_bad).build()
