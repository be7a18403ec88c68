"""Finding and reading run directories for `fewshot report` and `fewshot compare`.

A RUN argument is one of
  - a fine-tuning run (`fewshot train`): config.yaml, log.jsonl, metrics*.json, checkpoints/;
  - a MoCo run (`fewshot pretrain`): config.yaml, log.jsonl, checkpoints/ (kind "moco");
  - a `fewshot run` output folder holding its stage runs (expanded): pretrain/, finetune_labelled/,
    finetune_round<k>/ and finetune/, those it ran;
  - a checkpoint file inside a run's checkpoints/ folder: its run, with the model-based parts (accuracies where
    log.jsonl holds the file's evaluation, confusion matrices, embedding map, grid, kNN) taken from that file.

The parts are their own modules: report/run_files.py reads and checks a run's files, report/run_record.py is the Run
record, report/saved_steps.py how far a stopped run trained, report/run_score.py which evaluation its accuracies
come from, and report/pipeline_runs.py a `fewshot run` folder's summary.json.
"""

from __future__ import annotations

from pathlib import Path

from fewshot.errors import UserError, one_line
from fewshot.report.pipeline_runs import (_finished_pipeline, _read_summary, _round_order, _stopped_pipeline,
                                         pipeline_state_note, resume_command)
from fewshot.report.run_files import _is_number, _is_whole, _read_config, _read_json, read_log
from fewshot.report.run_record import Run
from fewshot.report.run_score import _given_checkpoint, _val_metrics, best_evaluation, use_evaluation
from fewshot.report.saved_steps import first_epoch_note, read_saved_steps

STAGES = ("pretrain", "finetune_labelled", "finetune")  # finetune_labelled: self-training round 1
# the stage folders of a `fewshot run` (pipeline.py) as messages name them; finetune_round<k>: rounds 2 .. n-1
STAGE_FOLDERS = "pretrain/, finetune_labelled/, finetune_round<k>/ and finetune/ (those it ran)"


def _labels(paths: list[Path], shortest: list[int]) -> list[str]:
    """Each run's shortest path suffix, of at least ``shortest`` parts, that no other run's path ends with (stages
    keep their parent folder, checkpoint files their run's: exp/checkpoints/last.pt): lab/a/x/exp and lab/b/x/exp
    are a/x/exp and b/x/exp, whatever the order of the arguments."""
    parts = [p.resolve().parts for p in paths]
    labels = []
    for i, own in enumerate(parts):
        label = str(paths[i].resolve())
        for n in range(min(shortest[i], max(1, len(own) - 1)), len(own)):
            if not any(j != i and other[-n:] == own[-n:] for j, other in enumerate(parts)):
                label = "/".join(own[-n:])
                break
        labels.append(label)
    # the label is shown escaped, and keys the run's slug, PNGs and notes: a folder named "x<newline>y" and one named
    # "x\\ny" (a backslash) must not show as one run. A label that needs no escaping keeps its text; the others
    # get " (2)", " (3)", ...
    shown, taken = [""] * len(labels), set()
    for i in sorted(range(len(labels)), key=lambda i: (one_line(labels[i]) != labels[i], labels[i])):
        base = label = one_line(labels[i])
        k = 2
        while label in taken:
            label, k = f"{base} ({k})", k + 1
        taken.add(label)
        shown[i] = label
    return shown


def _is_run_dir(path: Path) -> bool:
    return ((path / "log.jsonl").is_file() or (path / "checkpoints").is_dir()
            or ((path / "metrics.json").is_file() and (path / "config.yaml").is_file()))


def _kind(path: Path, cfg: dict, log: list[dict]) -> str:
    if cfg.get("_task") == "moco" or any("contrast_acc1" in r or "knn_acc1" in r for r in log):
        return "moco"
    if (path / "metrics.json").is_file() or any("val" in r or "train_acc1" in r for r in log):
        return "supervised"
    ck = None
    for name in ("last.pt", "best.pt"):
        if (path / "checkpoints" / name).is_file():
            ck = path / "checkpoints" / name
            break
    if ck is not None:
        from fewshot.train.checkpoint import load_checkpoint

        try:
            return str(load_checkpoint(ck).get("kind") or "supervised")
        except Exception:
            pass
    return "supervised"


def _scored_last_epoch(path: Path) -> int | None:
    """The logged epoch of last.pt where a MoCo run's metrics.json scored it: a `fewshot run` stage scores and
    exports last.pt, which its fine-tuning starts from; a `fewshot pretrain` scores best.pt (None: best.pt stays the
    one shown). A file that is not fewshot's is passed over (its notes come from nothing else the report shows)."""
    metrics = _read_json(path / "metrics.json", [])
    if isinstance(metrics, dict) and metrics.get("checkpoint") == "last.pt" and _is_whole(metrics.get("epoch")):
        return metrics["epoch"]
    return None


def load_run(path: Path, label: str, pipeline: dict | None = None, checkpoint: Path | None = None,
             group: Path | None = None) -> Run:
    """One run's files, read and checked; ``checkpoint``: the file named as RUN (else best.pt is the model);
    ``group``: the `fewshot run` folder it is a stage of."""
    path = Path(path)
    notes: list[str] = []
    cfg = _read_config(path, notes)
    torn: list[int] = []
    log = read_log(path, notes, torn)
    kind = _kind(path, cfg, log)
    run = Run(path=path, label=label, kind=kind, config=cfg, log=log, pipeline=pipeline, notes=notes, group=group)
    # a finished fine-tuning logged every step, unless its log lost its last row since (then last.pt counts)
    if kind == "moco" or not (path / "metrics.json").is_file() or torn:
        run.saved_steps = read_saved_steps(path / "checkpoints" / "last.pt")
    if kind == "moco":
        run.used_epoch = _scored_last_epoch(path)
    if kind == "supervised":
        run.metrics, run.metrics_known, run.metrics_unknown = (
            _val_metrics(run, path / name) for name in ("metrics.json", "metrics_known.json", "metrics_unknown.json"))
        if run.metrics is None and run.metrics_known is None:
            # A run still training (or stopped early): the best logged evaluation stands in, the one best.pt
            # holds and metrics.json will report (the last one is not: a stopped run's last epoch may be worse)
            best = best_evaluation(log)
            if best is not None:
                why = "metrics.json is not usable (see above)" if (path / "metrics.json").is_file() else \
                    "no metrics.json yet (the run is training or was stopped)"
                use_evaluation(run, best, why)
        if run.metrics is not None and not run.from_log:
            mode = run.metrics.get("mode")
            if mode == "known" and run.metrics_known is None:
                run.metrics_known = run.metrics
            if mode == "unknown" and run.metrics_unknown is None:
                run.metrics_unknown = run.metrics
        if not run.from_log:
            run.metrics_epoch = next((m["best_epoch"] for m in (run.metrics, run.metrics_known, run.metrics_unknown)
                                      if m and "best_epoch" in m), None)
            run.metrics_weights = next((m["weights"] for m in (run.metrics, run.metrics_known, run.metrics_unknown)
                                        if m and "weights" in m), None)
        _metrics_file_note(run)
    if checkpoint is not None:
        _given_checkpoint(run, checkpoint)
    _damaged_log_note(run, torn)
    if kind == "supervised" and not run.from_log and not run.being_written and _extended_after_metrics(path, log):
        run.notes.append("log.jsonl holds epochs trained after the finish metrics.json records: the run was resumed "
                         "after it finished (e.g. --resume --epochs N) and stopped before its end; the accuracies "
                         "shown are of the earlier "
                         "finish (metrics.json), not of the epochs trained since. Resume it to the end, or run "
                         "`fewshot eval` on it.")
    finished = run.metrics or run.metrics_known or run.metrics_unknown
    # a run still in its first epoch is not a stopped one: the report says it is being written
    first = (first_epoch_note(run.saved_steps, path / "checkpoints" / "last.pt")
             if not log and not finished and not run.being_written else None)
    if first is not None:
        run.notes.append(first)
    if not (path / "log.jsonl").is_file():  # read_log says why a file holds no rows (empty, damaged, unreadable)
        run.notes.append("log.jsonl is missing: no training curves." if not (path / "log.jsonl").exists() else
                         "log.jsonl is not a file: no training curves.")
    return run


def _metrics_file_note(run: Run) -> None:
    """Where metrics.json is gone or unusable and metrics_known.json stands in: which file the figures are from (the
    tables named metrics.json, whose mode and "best of N" warning they no longer had)."""
    if run.from_log or run.metrics is not None or run.metrics_known is None:
        return
    state = "missing" if not (run.path / "metrics.json").exists() else "not usable (see above)"
    files = "metrics_known.json" + (" and metrics_unknown.json" if run.metrics_unknown is not None else "")
    run.notes.append(f"metrics.json is {state}: the accuracies are from {files}, written beside it by the same "
                     f"evaluation of the best checkpoint.")


def _extended_after_metrics(path: Path, log: list[dict]) -> bool:
    """Whether log.jsonl holds training after the finish metrics.json records: `train --resume --epochs N` on a
    finished run keeps the old metrics files while it trains, so a stopped extension is not a finished run (its
    cut-off last line is a stop). Told from the files' contents, not their times (a plain `cp -r` wrote log.jsonl
    a second after metrics.json and the copy was called resumed): a finish evaluates its last epoch and counts the
    val scores logged (val_scores_compared), so more logged scores, or an unscored row after the last scored one
    with none lost, is training since. A metrics.json without that count (older runs) says nothing."""
    metrics = _read_json(path / "metrics.json", [])
    compared = metrics.get("val_scores_compared") if isinstance(metrics, dict) else None
    if not _is_whole(compared) or not log:
        return False
    from fewshot.report.tables import _val_scores_logged

    logged = _val_scores_logged(log)
    scored = [r["epoch"] for r in log if _is_number(r.get("score"))]
    return logged > compared or (logged == compared and bool(scored) and log[-1]["epoch"] > max(scored))


EXTENDED_AFTER_S = 1.0  # a MoCo log.jsonl written this much after metrics.json: a later session trained on


def _moco_written_after_metrics(path: Path) -> bool:
    """Whether a MoCo run's log.jsonl was written after its metrics.json: a MoCo metrics.json records no count of
    the scores it compared, so its file times still tell a stopped `pretrain --resume --epochs N` (called damaged
    by the contents rule, which trusts a metrics.json without the count) from a finish."""
    try:
        return (path / "log.jsonl").stat().st_mtime > (path / "metrics.json").stat().st_mtime + EXTENDED_AFTER_S
    except OSError:
        return False


def _finished_by(run: Run) -> str | None:
    """What says the run finished (then its log is complete, and a cut-off line is damage, not a stop), or None."""
    extended = _moco_written_after_metrics(run.path) if run.kind == "moco" else \
        _extended_after_metrics(run.path, run.log)
    if (run.path / "metrics.json").is_file() and not extended:
        return "metrics.json"
    if run.group is not None and _finished_pipeline(run.group):
        return f"the run_state.json of its `fewshot run` folder {run.group}"
    return None


def _damaged_log_note(run: Run, torn: list[int]) -> None:
    """A finished run's log.jsonl that lost its last row (cut off) or more: said, as the epochs, time and best epoch
    shown no longer agree. A run being written, or stopped by a signal, leaves a cut-off last line: no note."""
    finished_by = _finished_by(run)
    if finished_by is None or not run.log or run.being_written:
        return
    last = max(r["epoch"] for r in run.log)
    best = run.best_epoch
    past = best is not None and best > last
    if not torn and not past:
        return
    what = [f"its last line (line {torn[0]}) is cut off, though the run finished ({finished_by} says so): that row "
            f"is left out, so the training time and throughput shown miss it"] if torn else []
    if past:
        what.append(f"the best epoch shown, {best}, is past the last epoch it holds ({last})")
    counted = " (the epochs shown are last.pt's count)" if run.saved_steps and run.epochs != last else ""
    run.notes.append(f"log.jsonl is damaged: {'; '.join(what)}{counted}.")


def expand_runs(paths: list[str | Path]) -> list[Run]:
    """RUN arguments -> Run objects; `fewshot run` folders become their stages (STAGE_FOLDERS)."""
    from fewshot.run_lock import being_written

    found: list[tuple[Path, dict | None, Path | None, list[str], Path | None]] = []
    for raw in paths:
        p, given = Path(raw), None
        if p.is_file() and p.parent.name == "checkpoints":
            p, given = p.parent.parent, p
        if not p.exists():
            raise UserError(f"'{raw}' does not exist (expected a run directory from `fewshot train`, "
                            f"`fewshot pretrain` or `fewshot run`).")
        if not p.is_dir():
            raise UserError(f"'{raw}' is not a run directory.")
        names = [STAGES[0], STAGES[1], *sorted((q.name for q in p.glob("finetune_round*")), key=_round_order),
                 STAGES[2]]
        stages = [p / s for s in names if (p / s).is_dir() and _is_run_dir(p / s)]
        if given is None and stages and (not _is_run_dir(p) or (p / "summary.json").is_file()):
            notes: list[str] = []
            summary = _read_summary(p, notes)
            state_note = pipeline_state_note(p)
            if state_note and not being_written(p):  # a run in progress: its stages say they are
                notes.append(state_note)
            found += [(s, summary, p, notes, None) for s in stages]
        elif _is_run_dir(p):
            found.append((p, None, None, [], given))
        elif (p / "metrics.json").is_file():
            # a probe's --out holds metrics.json alone: no curves, no model, no config to report on (its
            # accuracies are all there is, and probe prints them); told apart from a run missing its files
            raise UserError(f"'{raw}' holds metrics.json but no config.yaml, log.jsonl or checkpoints/: not a run "
                            f"folder. A run folder of `fewshot train` or `fewshot pretrain` holds log.jsonl or "
                            f"checkpoints/ (or metrics.json with its config.yaml); a `fewshot probe --out` folder "
                            f"is not a run: its metrics.json holds the table probe printed (read it there; report and "
                            f"compare take runs).")
        elif being_written(p):  # started (config.yaml, tensorboard/, run_state.json) and locked: no log line yet
            raise UserError(f"'{raw}' holds a run being written now that has no checkpoint or log.jsonl yet (it is "
                            f"starting, or still in its first epoch): try again once it has logged an epoch.")
        elif _stopped_pipeline(p):
            raise UserError(f"'{raw}' holds a `fewshot run` that stopped before its first stage trained (its "
                            f"run_state.json says unfinished, and no stage folder holds a log.jsonl or checkpoint "
                            f"yet): there is nothing to report. Continue it with {resume_command(p)}, then report "
                            f"it.")
        else:
            raise UserError(f"'{raw}' holds no run: a run folder of `fewshot train` or `fewshot pretrain` holds "
                            f"log.jsonl or checkpoints/ (or metrics.json with its config.yaml); a `fewshot run` "
                            f"folder holds run_state.json and its stages in {STAGE_FOLDERS}.")
    unique, seen = [], {}
    for item in found:  # a run and a checkpoint file of it are two reports: other weights, other predictions
        key = (item[0].resolve(), item[4].resolve() if item[4] is not None else None)
        if key not in seen:
            seen[key] = len(unique)
            unique.append(item)
        elif item[2] is not None and unique[seen[key]][2] is None:
            # a stage named both alone and through its `fewshot run` folder: the copy with the folder's summary.json
            # (its test table, self-training) stands, whichever came first
            unique[seen[key]] = item
    # a checkpoint file is labelled by its path (run/checkpoints/last.pt): the run's own row keeps the run's name
    labels = _labels([f[4] if f[4] is not None else f[0] for f in unique],
                     [3 if f[4] is not None else 2 if f[2] is not None or f[0].name in STAGES else 1 for f in unique])
    runs, told = [], set()
    for (path, summary, group, notes, given), label in zip(unique, labels):
        run = load_run(path, label, summary, given, group)
        # a folder's notes (its summary.json) go with its first stage: printed once, not once per stage
        run.group, run.notes = group, ([] if group is not None and group in told else notes) + run.notes
        told.add(group)
        runs.append(run)
    return runs
