"""The tables of `fewshot report` and `fewshot compare` (cells.Table, drawn as HTML or text by render.py).

Tables hold strings already formatted (accuracies with 2 decimals, as in `fewshot eval`), so the
page and the terminal show exactly the same numbers.
"""

from __future__ import annotations

from fewshot.eval.routing import ROUTING_SHOWN_BELOW, routing_summary
from fewshot.report.cells import (ABSURD, DASH, UNKNOWN, Table, count, duration, epochs, flops, number, opt, pct,
                                  rate, routing, shown)
from fewshot.report.render import print_tables, to_html, to_text
from fewshot.report.run_method import method_words, skipped_note
from fewshot.report.run_record import Run

# the cells (cells.py) and their drawing (render.py) live in their own modules; callers read them here, beside the
# tables built of them
__all__ = ["ABSURD", "DASH", "UNKNOWN", "Table", "count", "duration", "epochs", "flops", "number", "opt", "pct",
           "rate", "routing", "shown", "print_tables", "to_html", "to_text", "dataset_table", "differing_datasets",
           "knn_table", "overview_table", "run_tables", "self_training_table", "test_table"]


FEW_NAMES = 3  # names a caption lists before "and N more"


def _few(names: list[str]) -> str:
    """``names`` joined, past FEW_NAMES shortened to the first few and a count."""
    if len(names) <= FEW_NAMES + 1:  # "and 1 more" is no shorter than the name
        return ", ".join(names)
    return f"{', '.join(names[:FEW_NAMES])} and {len(names) - FEW_NAMES} more"


def differing_datasets(labels: list[str], metrics: list[dict[str, dict | None]]) -> str:
    """A note where the runs were scored on different datasets ("" where they agree): the means shown (bars,
    overview) then average different datasets (a 2-dataset run's mean stood next to a 1-dataset run's without a
    word). It names the datasets not every run has, per run (every run named), shortened past a few: listing
    every run's datasets made a caption of 120 names for 10 runs on 12 datasets."""
    sets = []
    for x in metrics:
        names: list[str] = []
        for mode in ("known", "unknown"):
            names += [n for n in ((x.get(mode) or {}).get("datasets") or {}) if n not in names]
        sets.append(names)
    if len({frozenset(s) for s in sets}) < 2:
        return ""
    shared = [n for n in sets[0] if all(n in s for s in sets[1:])]
    groups: dict[tuple, list[str]] = {}  # runs with the same datasets besides the shared ones, named together
    for label, names in zip(labels, sets):
        groups.setdefault(tuple(n for n in names if n not in shared), []).append(label)
    each = "; ".join(f"{', '.join(runs)}: {_few(list(extra)) or 'none'}" for extra, runs in groups.items())
    common = f"all on {_few(shared)}; besides those, " if shared else ""
    return (f"The runs were scored on different datasets ({common}{each}): their means average different "
            f"datasets, so compare them dataset by dataset.")


# ---------------------------------------------------------------------- tables
def overview_table(runs: list[Run], flop_counts: dict[str, float | None]) -> Table:
    """One row per run: method, model, size, cost and headline accuracy."""
    cols = ["run", "method", "model", "parameters", "FLOPs / image", "input", "epochs", "training time",
            "throughput", "best epoch", "mean acc@1 known", "mean acc@1 unknown", "routing (% images)",
            "kNN mean acc@1"]
    rows = []
    for r in runs:
        known, unknown = r.metrics_known or {}, r.metrics_unknown or {}
        knn = r.knn or {}
        rows.append([r.label, method_words(r), r.model_name, count(r.n_parameters),
                     flops(flop_counts.get(r.label)), f"{r.img_size} px" if r.img_size else DASH, epochs(r.epochs),
                     duration(r.training_seconds), rate(r.throughput), opt(r.best_epoch),
                     pct(known.get("mean_acc1")), pct(unknown.get("mean_acc1")), pct(routing(unknown)),
                     pct(knn.get("mean"))])
    numeric = [False, False, False] + [True] * (len(cols) - 3)
    # Columns that apply to none of the runs (kNN without MoCo runs, accuracies without fine-tuning) go.
    keep = [i for i in range(len(cols)) if i < 3 or any(row[i] != DASH for row in rows)]
    cols, numeric = [cols[i] for i in keep], [numeric[i] for i in keep]
    rows = [[row[i] for i in keep] for row in rows]
    differ = " ".join(filter(None, [_differing_means(runs), skipped_note(runs)]))
    differ = f" {differ}" if differ else ""
    return Table("Runs", cols, rows, numeric=numeric,
                 caption=f"Accuracies in % on the val split {_accuracy_source(runs)}.{differ} FLOPs: one "
                         "forward pass of one image at the input size (torch.utils.flop_counter; a multiply-add "
                         "counts 2); for MoCo runs parameters and FLOPs are those of the backbone. Epochs: epochs "
                         "trained, the part of a stopped one as a fraction (5.75). Training time: sum of the epochs' "
                         "training time (evaluation excluded); throughput: median training images/s over the epochs. "
                         "Best epoch: the logged epoch whose evaluation gave the best checkpoint, as in metrics.json "
                         "(a run stopped mid-epoch is evaluated at the stop, under that epoch's number).")


def _differing_means(runs: list[Run]) -> str:
    """differing_datasets of the runs whose means the overview shows: `fewshot compare` put a 2-dataset run's mean
    next to a 1-dataset run's without a word (only the page's bar chart said so). A MoCo run counts by its kNN
    datasets; a run with no accuracies yet shows no mean and is left out. Datasets are keyed by name and class list
    (scored_on): a 10-class and a 2-class `digits` were one dataset to compare by."""
    from fewshot.report.scored_on import keyed, scored_keys

    shown_runs, metrics = [], []
    for r in runs:
        if r.kind == "supervised":
            m = {"known": r.metrics_known, "unknown": r.metrics_unknown}
        else:
            m = {"known": {"datasets": {n: v for n, v in (r.knn or {}).items() if n != "mean"}}}
        if any((x or {}).get("datasets") for x in m.values()):
            shown_runs.append(r)
            metrics.append(m)
    keys, split = scored_keys(shown_runs)
    metrics = [{mode: keyed(x, key) for mode, x in m.items()} for m, key in zip(metrics, keys)]
    differ = differing_datasets([r.label for r in shown_runs], metrics)
    return " ".join(filter(None, [split, differ]))


def _given_evaluation(run: Run) -> bool:
    """Whether the logged accuracies shown are those of the checkpoint named as RUN (metrics.json, which may well
    be there, holds best.pt's), not a stand-in for a missing metrics.json."""
    return run.given_checkpoint is not None and run.from_log and run.metrics_epoch == run.given_epoch


def _accuracy_source(runs: list[Run]) -> str:
    """Where the overview's accuracies come from, as its caption says: metrics.json, or log.jsonl for a run
    stopped before writing one or a checkpoint named as RUN ("(no usable metrics.json)" was said of one that has
    it); a MoCo run's kNN accuracies are always log.jsonl's ("(metrics.json)" was said of those too)."""
    # a run stopped before its first evaluation has no accuracies: "(metrics.json)" was said of those too
    supervised = [r for r in runs if r.kind == "supervised" and (r.metrics or r.metrics_known or r.metrics_unknown)]
    logged = [r for r in supervised if r.from_log]
    at = "at the best epoch or that of the checkpoint named as RUN" + _last_pt_words(runs)
    knn = f"kNN accuracies of MoCo runs: from log.jsonl, {at}"
    moco = f"; {knn}" if any(r.kind != "supervised" for r in runs) else ""
    if not supervised and any(r.kind == "supervised" for r in runs):
        return f"(none yet: no fine-tuning run here has logged an evaluation){moco}"
    if not supervised:
        return f"from log.jsonl (kNN accuracies, {at})"
    files = _files_words(supervised)
    if not logged:
        return f"at the best checkpoint ({files}){moco}"
    given = [_given_evaluation(r) for r in logged]
    why = ("the checkpoint named as RUN; metrics.json holds best.pt's" if all(given) else
           "no usable metrics.json" if not any(given) else
           "a checkpoint named as RUN, or no usable metrics.json")
    if len(logged) == len(supervised):
        return f"from the logged evaluation in log.jsonl of the epoch each run's notes name ({why}){moco}"
    return (f"at the best checkpoint ({files}); for {', '.join(r.label for r in logged)}: from the logged "
            f"evaluation in log.jsonl of the epoch its notes name ({why}){moco}")


def _files_words(runs: list[Run]) -> str:
    """The metrics files the runs' accuracies come from: "metrics.json", and for runs whose metrics.json is gone,
    metrics_known.json named with them (the caption said metrics.json of those too)."""
    others = [r.label for r in runs if not r.from_log and _metrics_file(r)[0] != "metrics.json"]
    if not others:
        return "metrics.json"
    if len(others) == len([r for r in runs if not r.from_log]):
        return "metrics_known.json: metrics.json is missing or unusable"
    return f"metrics.json; for {', '.join(others)}: metrics_known.json, its metrics.json missing or unusable"


def _last_pt_words(runs: list[Run]) -> str:
    """Where a MoCo run's kNN figure is last.pt's, not the best epoch's (a `fewshot run` stage: knn_table)."""
    used = [r for r in runs if r.kind == "moco" and r.used_epoch is not None and r.used_epoch != r.best_epoch
            and (r.knn_row or {}).get("epoch") == r.used_epoch]
    return ("; of a `fewshot run`'s MoCo stage, at last.pt's epoch, the backbone it fine-tuned from (as its "
            "metrics.json)" if used else "")


def _per_class_thresholds(p: dict) -> str:
    """The per-class thresholds cell: run.pseudo_precision is a setting (0: no per-class calibration, the shared
    floor alone), not a measured precision; where it is on, the range per dataset of the thresholds calibrated on
    val that the round used (class_thresholds; a class that reached none kept nothing)."""
    precision = p.get("precision")
    if precision is None:
        return DASH
    if number(precision) == 0:
        return "off (run.pseudo_precision 0)"
    parts = []
    for name, v in p["datasets"].items():
        ts = v.get("class_thresholds")
        if ts is None:
            continue
        used = [number(t) for t in ts.values() if number(t) is not None]
        closed = len(ts) - len(used)
        text = f"{min(used):.2f}–{max(used):.2f}" if used else "none"
        parts.append(f"{name} {text}" + (f" ({closed} of {len(ts)} classes closed)" if closed else ""))
    head = f"for precision {shown(precision, lambda v: f'{v:g}')} on val"
    return f"{head}: {'; '.join(parts)}" if parts else f"{head} (thresholds not recorded)"


def _kept_words(name: str, v: dict, unknown_pool) -> str:
    """One dataset's kept pseudo-labels: "digits 38 (of 80; mean confidence 0.85)". Those kept from pool images of
    unknown source count in kept but not in "of" (the dataset's own pool): said apart, as `fewshot run`'s line says
    them ("49 (of 80)" read as 49 of its 80 where 11 came from the 41 of unknown source)."""
    labelled, in_pool = v.get("labelled", v.get("pool")), v.get("pool")
    of = f"{opt(labelled)}" + (f" / {in_pool}" if in_pool is not None and in_pool != labelled else "")
    sure = shown(v.get("mean_confidence"), lambda x: f"mean confidence {x:.2f}")
    foreign = v.get("kept_from_unknown_source")
    other = "; the pool may hold other classes" if v.get("pool_classes_suspect") else ""  # the run's warning
    if not foreign:
        return f"{name} {v['kept']} (of {of}{'' if sure == DASH else f'; {sure}'}{other})"
    source = f"the {unknown_pool} of unknown source" if unknown_pool else "pool images of unknown source"
    return (f"{name} {v['kept']} ({foreign} of them from {source}) of {of}{'' if sure == DASH else f' ({sure})'}"
            f"{other}")


def self_training_table(label: str, rounds: list[dict], predicted_with: str | None = None) -> Table:
    """Per round of a `fewshot run`'s self-training (summary.json): the pool share labelled, the pseudo-labels kept
    per dataset and their mean confidence, the confidence settings (run.pseudo_threshold, run.pseudo_precision: the
    run's settings, not measured values, so "precision 0.0" read as a result) and the round's val score, which
    picks the round that predicts."""
    cols = ["round", "stage", "pool labelled / pool size",
            "kept per dataset (of labelled / in the pool; mean confidence)", "min confidence (run.pseudo_threshold)",
            "per-class thresholds (run.pseudo_precision)", "val mean acc@1 (best.pt's: a maximum, optimistic)"]
    rows, emphasis = [], []
    for r in rounds:
        p = r["pseudo_labels"]
        if p is None:
            pool = kept = floor = per_class = DASH
        else:
            pool = f"{count(p.get('pool_labelled'))} / {count(p.get('pool_size'))}"
            kept = "; ".join(_kept_words(name, v, p.get("unknown_source_pool"))
                             for name, v in p["datasets"].items()) or DASH
            floor = shown(p.get("threshold"), lambda x: f"{x:g}")
            per_class = _per_class_thresholds(p)
        if r["stage"] == predicted_with:
            emphasis.append(len(rows))
        rows.append([str(r["round"]), r["stage"], pool, kept, floor, per_class, pct(r["val_mean_acc1"])])
    return Table(f"{label}: self-training", cols, rows, numeric=[True, False, True, False, True, False, True],
                 emphasis=emphasis,
                 caption="Per round of self-training (summary.json): round 1 trains on the labelled images, each "
                         "later round also on the pool images the round before it labelled (pool labelled: all of "
                         "the pool, or the share its time allowed), keeping per dataset the most confident ones "
                         "(mean confidence: of the labels kept; those kept from pool images of unknown source "
                         "count for the dataset of their class, said apart from the dataset's own pool). Min "
                         "confidence and per-class thresholds are the run's settings: a label needs at least "
                         "run.pseudo_threshold (and more than twice chance); run.pseudo_precision > 0 also sets per "
                         "class the confidence at which the model that labelled is right that often on val (shown: "
                         "the range of those used; a closed class keeps none), 0 leaves it off. Val mean acc@1 "
                         "(known source): the round that scores highest of round 1 and the last predicts (in bold). "
                         "\"The pool may hold other classes\": the images of the dataset's own pool (with one "
                         "dataset, those of unknown source too) were clearly less sure than its val images (the "
                         "run's warning; pool_classes_check in summary.json).")


def dataset_table(run: Run, title: str | None = None, known: dict | None = None, unknown: dict | None = None,
                  caption: str = "", balanced: list[str] = ()) -> Table:
    """Per-dataset acc@1/acc@5 of a fine-tuned run in known- and unknown-source mode, mean and routing.
    ``balanced``: datasets whose known-source scores are of class-balanced predictions, said in the header (and
    marked "*" where only some are): "known 70.33" next to "unknown 23.00" read as one kind of prediction."""
    known = run.metrics_known if known is None and title is None else known
    unknown = run.metrics_unknown if unknown is None and title is None else unknown
    names: list[str] = []
    for m in (known, unknown):
        for n in ((m or {}).get("datasets") or {}):
            if n not in names:
                names.append(n)
    cols = ["dataset", "n", "known acc@1", "known acc@5", "unknown acc@1", "unknown acc@5"]
    some = [n for n in names if n in set(balanced)]
    every = bool(some) and len(some) == len(names)
    if some:
        known_kind = " (class-balanced)" if every else " (* class-balanced)"
        cols[2:] = [c + known_kind for c in cols[2:4]] + [c + " (plain)" for c in cols[4:]]

    def mark(n: str, cell: str) -> str:  # only where some datasets' scores are balanced and some plain
        return f"{cell}*" if some and not every and n in some and cell != DASH else cell

    routed = routing(unknown) is not None
    # each dataset's share routed to itself, a column of its own where recorded: an older metrics.json drew dashes
    own = routed and any(isinstance(d, dict) and "routing_acc" in d for d in (unknown.get("datasets") or {}).values())
    if own:
        cols.append("unknown: routed to itself")
    rows = []
    for n in names:
        k = ((known or {}).get("datasets") or {}).get(n) or {}
        u = ((unknown or {}).get("datasets") or {}).get(n) or {}
        rows.append([n, str(k.get("n", u.get("n", DASH))), mark(n, pct(k.get("acc1"))), mark(n, pct(k.get("acc5"))),
                     pct(u.get("acc1")), pct(u.get("acc5"))] + ([pct(u.get("routing_acc"))] if own else []))
    mean = pct((known or {}).get("mean_acc1"))
    mean_routed = [pct(unknown.get("mean_routing_acc"))] if own else []
    rows.append(["mean", "", f"{mean}*" if some and not every and mean != DASH else mean, "",
                 pct((unknown or {}).get("mean_acc1")), ""] + mean_routed)
    emphasis = [len(rows) - 1]
    if routed:  # counted over images, where large datasets weigh most: said apart from the mean over datasets
        rows.append(["dataset routing (% of all images)", "", "", "", pct(routing(unknown)), ""]
                    + ([""] if own else []))
        emphasis.append(len(rows) - 1)
        went = routing_summary(unknown)
        if went:
            caption = " ".join(filter(None, [caption, f"Unknown source, datasets routed to themselves less than "
                                                      f"{ROUTING_SHOWN_BELOW:.0f} % of the time: {'; '.join(went)}."]))
    if title is None and run.from_log:  # no usable metrics.json, or a checkpoint named as RUN: say which
        why = f"the epoch {run.given_checkpoint.name} holds" if _given_evaluation(run) else \
            "no usable metrics.json" if (run.path / "metrics.json").is_file() else "no metrics.json"
        title = f"{run.label}: val accuracy (logged evaluation of epoch {opt(run.metrics_epoch)} in log.jsonl; " \
                f"{why})"
    elif title is None:
        source, metrics = _metrics_file(run)
        mode = (metrics or {}).get("mode", "known")
        title = f"{run.label}: val accuracy (best epoch {opt(run.best_epoch)}{_best_of(run)}; {source} " \
                f"mode: {mode})"
    return Table(title, cols, rows, emphasis=emphasis, caption=caption)


def _metrics_file(run: Run) -> tuple[str, dict | None]:
    """The file a run's val accuracies come from (not from_log) and its contents: metrics.json, else (gone or
    unusable) metrics_known.json, which the tables named metrics.json."""
    if run.metrics is not None or run.metrics_known is None:
        return "metrics.json", run.metrics
    return "metrics_known.json", run.metrics_known


def _best_of(run: Run) -> str:
    """That the val figure is the best of many scores (metrics.json's val_scores_compared): on a small val a
    maximum is optimistic. metrics_known.json has no such count: the log's evaluations give it (as the run counted)."""
    source, metrics = _metrics_file(run)
    compared = (metrics or {}).get("val_scores_compared")
    if compared is None and source != "metrics.json":
        compared = _val_scores_logged(run.log)
    if type(compared) is not int or compared < 2:  # older runs have none; a bad value says nothing
        return ""
    return f", the best of {compared} val scores: optimistic"


def _val_scores_logged(log: list[dict]) -> int:
    """How many val scores best.pt was chosen among, as finetune.val_scores_logged counts them: each logged score,
    its raw and EMA weights' two where both were scored."""
    return sum(1 + (r.get("score_raw") is not None and r.get("score_ema") is not None)
               for r in log if isinstance(r.get("score"), (int, float)) and not isinstance(r.get("score"), bool))


def knn_table(run: Run) -> Table:
    """A MoCo run's kNN accuracies, titled with the epoch and file they are of (Run.knn_row): a checkpoint named as
    RUN shows its own epoch, which the title called best.pt's."""
    row = run.knn_row or {}
    knn = run.knn or {}
    rows = [[n, pct(v)] for n, v in knn.items() if n != "mean"]
    rows.append(["mean", pct(knn.get("mean"))])
    best, shown = run.best_epoch, row.get("epoch")
    caption = "Frozen backbone features; each val image is classified by a weighted vote of its nearest labelled " \
              "training images of the same dataset (the MoCo monitor)."
    last = max(run.log, key=lambda r: r["epoch"], default=None)
    if best is not None and last is not None and last["epoch"] != best and shown == best:
        # this table gives best.pt's score; the backbone exported is last.pt's (as MoCo's own code)
        last_knn = last["knn_acc1"].get("mean") if isinstance(last.get("knn_acc1"), dict) else None
        caption += f" Epoch {best} is the best kNN score (best.pt); `fewshot export` writes last.pt, epoch " \
                   f"{last['epoch']}" + (f", kNN mean {pct(last_knn)}." if last_knn is not None else ".")
    if run.given_checkpoint is not None and shown == run.given_epoch:
        where = f"epoch {shown}, {run.given_checkpoint.name}"
    elif shown is not None and shown == run.used_epoch and shown != best:
        where = f"epoch {shown}, last.pt"
        caption += _best_aside(run, shown)
    elif shown is not None and shown == best:
        where = f"epoch {shown}, best.pt"
    else:
        where = f"epoch {opt(shown)}, the last logged"
    return Table(f"{run.label}: kNN accuracy @1 on val ({where})", ["dataset", "kNN acc@1"], rows,
                 emphasis=[len(rows) - 1], caption=caption)


def _best_aside(run: Run, shown: int) -> str:
    """A `fewshot run` stage's kNN table headlines last.pt, the backbone it exported and fine-tuned from (its
    metrics.json and summary.json give that figure); best.pt's score, which the report used to headline, is the
    aside."""
    best = run.best_epoch
    row = next((r for r in run.log if r.get("epoch") == best and isinstance(r.get("knn_acc1"), dict)), None)
    score = f", kNN mean {pct(row['knn_acc1'].get('mean'))}" if row is not None else ""
    aside = f" The best kNN score is epoch {best}'s (best.pt{score})." if best is not None else ""
    return (f" Epoch {shown} is last.pt, the epoch metrics.json scores: the backbone exported, which `fewshot run` "
            f"fine-tunes from.{aside}")


def test_table(run: Run) -> Table | None:
    """Test accuracy scored by `fewshot run` against the answer keys, when its summary.json has it."""
    m = ((run.pipeline or {}).get("metrics") or {})
    if run.kind != "supervised" or not m.get("test"):
        return None
    predicted_with = (run.pipeline or {}).get("predicted_with")
    if predicted_with and run.path.name != predicted_with:  # the scores belong to the stage that predicted
        return None
    # the known-source scores are of pred_all.json, whose predictions may be class-balanced (run.balance): a
    # table without the word read as plain argmax next to `fewshot eval`'s numbers
    words = (run.pipeline or {}).get("balanced_prediction")
    caption = " ".join(filter(None, [f"Known-source predictions (pred_all.json): {words}." if words else "",
                                     _not_scored_words(m)]))
    table = dataset_table(run, title=f"{run.label}: test accuracy (answer keys, scored by `fewshot run`)",
                          known=m.get("test"), unknown=m.get("test_unknown"), caption=caption,
                          balanced=(run.pipeline or {}).get("balanced_datasets") or ())
    if _not_scored(m):  # the mean row: over the scored datasets only, said where it stands
        table.rows[table.emphasis[0]][0] = "mean (scored datasets)"
    return table


def _not_scored(m: dict) -> list[str]:
    """summary.json's test not_scored: the datasets `fewshot run` predicted but could not score (no usable key)."""
    names: list[str] = []
    for mode in ("test", "test_unknown"):
        got = (m.get(mode) or {}).get("not_scored")
        names += [n for n in (got if isinstance(got, list) else []) if isinstance(n, str) and n not in names]
    return names


def _not_scored_words(m: dict) -> str:
    """Which datasets the test table leaves out and why, as `fewshot run` said it: its "mean 72.14" over the one
    scored dataset read as a mean over both."""
    names = _not_scored(m)
    if not names:
        return ""
    scored = [n for n in ((m.get("test") or {}).get("datasets") or {}) if n not in names]
    plural = "s" if len(scored) != 1 else ""
    return (f"Not scored: {_few(names)} (no usable answer key: test_labels.json is missing, or lacks a class for some "
            f"test images; `fewshot run` said which when it ran): predicted in pred_all.json, left out of this table. "
            f"The means are over the {len(scored)} scored dataset{plural} only ({_few(scored)}).")


def run_tables(run: Run) -> list[Table]:
    if run.kind == "moco":
        return [knn_table(run)] if run.knn else []
    out = []
    if run.metrics_known or run.metrics_unknown:
        out.append(dataset_table(run))
    t = test_table(run)
    if t is not None:
        out.append(t)
    return out
