"""Which evaluation a run's accuracies come from: metrics.json's val scores, else the best logged evaluation
(the one best.pt holds), and for a checkpoint file named as RUN its own epoch's and weights' evaluation or score.

Apart from report/runs.py so that the choice of the scores shown, and the note saying whose they are, is made in
one place (the report also re-reads it once the checkpoint is loaded: refresh_evaluation).
"""

from __future__ import annotations

import math
from pathlib import Path

from fewshot.errors import printable
from fewshot.report.run_files import WEIGHTS, _is_number, _read_json, clean_metrics, read_log
from fewshot.report.run_record import Run


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
