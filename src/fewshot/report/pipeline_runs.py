"""A `fewshot run` folder's summary.json as the report reads it: the self-training rounds and their pseudo-labels,
the class-balanced prediction, the budget's notes, the test metrics; and whether a folder holds a `fewshot run`
stopped before its first stage, and the order of its finetune_round<k> stages.

Apart from report/runs.py (which expands such a folder into its stage runs) so that summary.json's checks are in
one place.
"""

from __future__ import annotations

import math
from pathlib import Path

from fewshot.data.names import grouped_names
from fewshot.report.run_files import _is_number, _is_whole, _kind_of, _read_json, clean_metrics


def _pseudo_labels(x) -> dict | None:
    """A round's pseudo-label summary with the fields the report shows, each checked (None: not one)."""
    if not isinstance(x, dict):
        return None
    out = {k: x[k] for k in ("pool_size", "pool_labelled", "unknown_source_pool") if _is_whole(x.get(k))}
    out.update({k: x[k] for k in ("threshold", "precision") if _is_number(x.get(k))})
    datasets = x.get("datasets") if isinstance(x.get("datasets"), dict) else {}
    out["datasets"] = {str(n): _pseudo_dataset(v) for n, v in datasets.items()
                       if isinstance(v, dict) and _is_whole(v.get("kept"))}
    return out


def _pseudo_dataset(v: dict) -> dict:
    """One dataset's entry of a round's pseudo-labels: counts, the kept labels' mean confidence (measured), with
    run.pseudo_precision > 0 the per-class thresholds calibrated on val (null: the class kept nothing), and whether
    the pool check warned that the pool may hold other classes (pool_classes_suspect; absent: not measured)."""
    out = {k: v[k] for k in ("kept", "kept_from_unknown_source", "pool", "labelled") if _is_whole(v.get(k))}
    if _is_number(v.get("mean_confidence")):
        out["mean_confidence"] = v["mean_confidence"]
    thresholds = v.get("class_thresholds")
    if isinstance(thresholds, dict) and all(t is None or _is_number(t) for t in thresholds.values()):
        out["class_thresholds"] = dict(thresholds)
    check = v.get("pool_classes_check")  # the run's out-of-class warning (run_pseudo.pool_classes_checks)
    if isinstance(check, dict) and isinstance(check.get("suspect"), bool):
        out["pool_classes_suspect"] = check["suspect"]
    return out


def self_training_rounds(stages: dict) -> list[dict]:
    """The rounds of a self-training `fewshot run` from summary.json's stages, in order: stage, val mean acc@1 and
    the pseudo-labels it trained on (none for round 1). A summary of an older fewshot kept every round's labels in
    a list under finetune_labelled (round 2's first); [] when the run did no self-training."""
    if not isinstance(stages.get("finetune_labelled"), dict):
        return []
    older = stages["finetune_labelled"].get("pseudo_labels")
    older = older if isinstance(older, list) else []
    middle = sorted((n for n in stages if n.startswith("finetune_round")
                     and n.removeprefix("finetune_round").isdigit()),
                    key=lambda n: int(n.removeprefix("finetune_round")))
    middle = middle or [f"finetune_round{k}" for k in range(2, len(older) + 1)]  # an older summary: not listed
    names = ["finetune_labelled", *middle, "finetune"]
    rounds = []
    for k, name in enumerate(names, 1):
        entry = stages.get(name) if isinstance(stages.get(name), dict) else {}
        if name != "finetune_labelled" and not entry and not older:
            continue
        labels = entry.get("pseudo_labels", older[k - 2] if 2 <= k < len(older) + 2 and name != "finetune_labelled"
                           else None)
        val = entry.get("val_mean_acc1")
        rounds.append({"round": k, "stage": name, "val_mean_acc1": val if _is_number(val) else None,
                       "pseudo_labels": _pseudo_labels(labels)})
    return rounds


def gently_words(stages: dict) -> str:
    """summary.json's short self-training rounds that continued the round before's model gently (run_stages
    .gently_entry), as a clause for the report's note: "round 2 (1.2 epochs planned, under 4 epochs; lr 0.0004)"; ""
    where none did. Its val barely moving from the round before is then read as planned, not as pseudo-labels that
    did nothing."""
    said = []
    for r in self_training_rounds(stages):  # numbered as the self-training table numbers them
        entry = stages.get(r["stage"])
        g = entry.get("continued_gently") if isinstance(entry, dict) else None
        if not (isinstance(g, dict) and _is_number(g.get("lr")) and _is_number(g.get("planned_epochs"))):
            continue
        under = f", under {g['under_epochs']:g} epochs" if _is_number(g.get("under_epochs")) else ""
        said.append(f"round {r['round']} ({g['planned_epochs']:g} epochs planned{under}; lr {g['lr']:g})")
    return "; ".join(said)


def resumed_skip_words(skipped: dict) -> str:
    """summary.json's ``resumed_training_skipped`` (run_stages.skip_short_resumed_training) as the report's sentence:
    the stage, then the record's why, which names the seconds left and needed and what took the time. The report
    showed the stage's short training with no word why it stopped where it did."""
    why = skipped["why"].rstrip(".")
    return f"the resumed stage {skipped['stage']} trained no further (planned, not an error): {why}."


def _weighted(d: dict, aim: str) -> str:
    """summary.json's val accuracies re-weighted to the proportions aimed at (uneven shots), where it has them; said
    after ``aim`` (the words naming proportions other than the train split's), so that they are named once."""
    if not (_is_number(d.get("val_weighted_plain")) and _is_number(d.get("val_weighted_balanced"))):
        return ""
    from fewshot.eval.balancing import aim_words  # here: the report's modules load without the evaluation's

    # aim_words, not prior_from itself: an "even: ..." source is a sentence with p-values (rev88 #3)
    to = "them" if aim else aim_words(d.get("prior_from"))
    return f"; val re-weighted to {to} {d['val_weighted_plain']:.1f} plain, {d['val_weighted_balanced']:.1f} balanced"


def balance_words(datasets: dict) -> str:
    """summary.json's balanced_prediction as a sentence: which datasets' test predictions were evened out (to the
    train split's class proportions, or those named), with the val accuracies the choice was made on. Datasets that
    share their words are named together, as the run's own line does (12 datasets repeated one long reason 7 times)."""
    def words(d: dict) -> str:
        source = d.get("prior_from")
        aim = f"; aimed at proportions {source}" if d["used"] and isinstance(source, str) and source != "train" else ""
        if _is_number(d.get("val_plain")) and _is_number(d.get("val_balanced")):
            return f" (val {d['val_plain']:.1f} plain, {d['val_balanced']:.1f} balanced{aim}{_weighted(d, aim)})"
        if d["used"]:
            return f" ({aim[2:]})" if aim else ""
        return f" ({d.get('why') if isinstance(d.get('why'), str) else 'off'})"

    def listed(used: bool) -> str:
        said = grouped_names((n, words(d)) for n, d in rows.items() if d["used"] is used)
        return "; ".join(names + text for names, text in said)
    rows = {str(k): v for k, v in datasets.items() if isinstance(v, dict) and isinstance(v.get("used"), bool)}
    used, plain = listed(True), listed(False)
    parts = ([f"class-balanced for {used}"] if used else []) + ([f"plain argmax for {plain}"] if plain else [])
    return ", ".join(parts)


def _read_summary(folder: Path, notes: list[str]) -> dict | None:
    """summary.json of a `fewshot run` folder: only the parts the report reads, each checked. Missing from a run that
    finished (run_state.json says so), it is named: the test and self-training tables went without a word."""
    if not (folder / "summary.json").is_file():
        if _finished_pipeline(folder):
            state = "missing" if not (folder / "summary.json").exists() else "not a file"
            notes.append(f"{folder / 'summary.json'} is {state}, though run_state.json says the run finished: no "
                         f"test table, no self-training table, and which stage predicted is not known.")
        return None
    n_notes = len(notes)
    summary = _read_json(folder / "summary.json", notes)
    if len(notes) > n_notes:
        return None
    where = str(folder / "summary.json")
    if not isinstance(summary, dict):
        notes.append(f"{where} holds {_kind_of(summary)}, not an object: passed over.")
        return None
    out = {k: summary[k] for k in ("predicted_with",) if isinstance(summary.get(k), str)}
    skipped = summary.get("self_training_skipped")  # later rounds the budget could not hold (planned)
    if isinstance(skipped, dict) and isinstance(skipped.get("why"), str):
        out["self_training_skipped"] = skipped["why"]
        rounds = skipped.get("rounds")
        if isinstance(rounds, list) and all(_is_whole(k) for k in rounds):
            out["self_training_skipped_rounds"] = list(rounds)
    reduced = summary.get("self_training_reduced")  # middle rounds the budget could not hold (planned)
    if isinstance(reduced, dict) and isinstance(reduced.get("why"), str):
        kept, planned = reduced.get("kept"), reduced.get("planned")
        out["self_training_reduced"] = f"{kept} of {planned} rounds kept: {reduced['why']}"
    labelled_only = summary.get("self_training_labelled_only")  # the last round without the pool (planned)
    if isinstance(labelled_only, dict) and isinstance(labelled_only.get("why"), str):
        out["self_training_labelled_only"] = labelled_only["why"]
    for key in ("pretrain_skipped", "fixmatch_skipped"):  # a stage dropped at its planning (run_fallbacks)
        dropped = summary.get(key)
        if isinstance(dropped, dict) and isinstance(dropped.get("why"), str):
            out[key] = dropped["why"]
    from fewshot.run_state import resumed_skip_records

    # the resumed stages whose time left could not hold a least run: one record per stage (MoCo's and a later
    # session's fine-tuning's), or an older run's one
    resumed = [r for r in resumed_skip_records(summary.get("resumed_training_skipped"))
               if isinstance(r.get("why"), str)]
    if resumed:
        out["resumed_training_skipped"] = "; ".join(resumed_skip_words(r).removesuffix(".") for r in resumed) + "."
    lost = summary.get("last_round_lost")  # the val guard passed over a last round that lost beyond val's noise
    if isinstance(lost, dict) and isinstance(lost.get("why"), str):
        out["last_round_lost"] = lost["why"]
    near_chance = summary.get("near_chance")  # the run's last warning: a model little better than guessing
    if isinstance(near_chance, dict) and isinstance(near_chance.get("why"), str):
        out["near_chance"] = near_chance["why"]
    balanced = summary.get("balanced_prediction")  # test predictions evened out per dataset (run.balance)
    if isinstance(balanced, dict) and isinstance(balanced.get("datasets"), dict):
        words = balance_words(balanced["datasets"])
        if words:
            out["balanced_prediction"] = words
        # the test table marks these datasets' known-source scores (next to plain unknown-source ones)
        out["balanced_datasets"] = [str(k) for k, v in balanced["datasets"].items()
                                    if isinstance(v, dict) and v.get("used") is True]
    stages = summary.get("stages")
    if isinstance(stages, dict):  # epochs trained per stage: a budget stop's fraction the log does not always tell
        out["epochs"] = {k: v["epochs"] for k, v in stages.items()
                         if isinstance(v, dict) and _is_number(v.get("epochs")) and math.isfinite(v["epochs"])}
        rounds = self_training_rounds(stages)
        if rounds:
            out["self_training"] = rounds
        gently = gently_words(stages)
        if gently:
            out["self_training_gently"] = gently
    metrics = summary.get("metrics")
    if isinstance(metrics, dict):
        out["metrics"] = {k: m for k in ("test", "test_unknown") if metrics.get(k) is not None
                          for m in [clean_metrics(metrics[k], f"{where} metrics.{k}", notes)] if m is not None}
    return out


def _stopped_pipeline(folder: Path) -> bool:
    """Whether ``folder`` holds a `fewshot run` stopped before any stage had a log line or checkpoint: its
    run_state.json (written before the first stage) is there and not marked finished. Such a folder was told it
    held no run at all, naming stage folders the pipeline no longer writes. An unreadable state file still marks
    a `fewshot run` (only the pipeline writes one); --resume then says what is wrong with it."""
    return (folder / "run_state.json").is_file() and not _finished_pipeline(folder)


def resume_command(folder: Path) -> str:
    """The command that continues a stopped `fewshot run` in ``folder``: its stages are not continued by the
    `fewshot train` their notes seemed to name. The data root is run_state.json's (ROOT where it does not say);
    --resume takes the run's other settings from the state file."""
    from fewshot.errors import path_argument

    state = _read_json(folder / "run_state.json", [])
    root = ((state.get("config") or {}).get("data") or {}).get("root") if isinstance(state, dict) else None
    root = path_argument(root) if isinstance(root, str) and root else "ROOT"
    return f"`fewshot run --data {root} --out {path_argument(folder)} --resume`"


def pipeline_of(path: Path, group: Path | None = None) -> Path | None:
    """The `fewshot run` folder a run belongs to: ``group`` where it was given through it, else the parent of a stage
    folder given alone (pretrain/, finetune_labelled/, finetune_round<k>/, finetune/) that holds run_state.json; such
    a stage was told "the same command with --resume" continues it, which names a `fewshot train`."""
    if group is not None:
        return group
    from fewshot.run_state import is_run_stage

    return path.parent if is_run_stage(path) else None


def stopped_pipeline_note(folder: Path) -> str:
    """The note of a `fewshot run` folder whose run stopped (Ctrl-C, a kill) after a stage trained: its stages
    looked like runs of their own, a finished MoCo stage beside a fine-tuning one with no word of the stop."""
    return (f"the `fewshot run` in {folder} was stopped before it finished (its run_state.json says unfinished): "
            f"its stages are shown as far as they got, and what it does after them (later stages, the test "
            f"predictions) is missing. Continue it with {resume_command(folder)}.")


def pipeline_state_note(folder: Path) -> str:
    """What a `fewshot run` folder with stages says of its finish ("" where nothing is to be said): stopped where its
    run_state.json says unfinished; not known where that file cannot be read (it was called stopped, "its
    run_state.json says unfinished", with the test table printed above). summary.json, written after the test
    predictions, is proof of a finish either way."""
    if not (folder / "run_state.json").is_file() or (folder / "summary.json").is_file():
        return ""
    state = _read_json(folder / "run_state.json", [])
    if isinstance(state, dict):
        return "" if state.get("finished") is True else stopped_pipeline_note(folder)
    return (f"the run_state.json of the `fewshot run` in {folder} cannot be read, and the folder has no summary.json: "
            f"whether the run finished is not known; its stages are shown as far as they got. If it was stopped, "
            f"{resume_command(folder)} continues it (or says what is wrong with the file).")


def _finished_pipeline(folder: Path) -> bool:
    """Whether ``folder``'s run_state.json says its `fewshot run` finished (an unreadable one says nothing)."""
    state = _read_json(folder / "run_state.json", [])
    return isinstance(state, dict) and state.get("finished") is True


def _round_order(name: str) -> tuple[int, str]:
    """finetune_round10 after finetune_round2 (as text it came first)."""
    k = name.removeprefix("finetune_round")
    return (int(k), "") if k.isdigit() else (1 << 30, name)
