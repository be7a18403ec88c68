"""A run's method in a few words for the overview ("self-training r2", "fixmatch, from MoCo"): `fewshot compare`
read "fine-tune" for a default, a --baseline, a FixMatch and a MoCo-started run alike. Read from what the run
recorded: config.yaml's semi.method (the key the page's semi-supervised fact reads), a `fewshot run` stage's
run.semi_method and run.pretrain, model.weights, and summary.json's self-training rounds and the stages the run
dropped at its planning (``pretrain_skipped``, ``fixmatch_skipped``: a run whose --pretrain was dropped read
"labelled only" with no word why, review rev86)."""

from __future__ import annotations

from fewshot.report.run_record import Run

SEMI_WORDS = {"fixmatch": "fixmatch", "moco": "joint MoCo"}  # semi.method: the keys of semi_facts.SEMI_FACTS
SKIPPED_FLAGS = {"pretrain_skipped": "--pretrain", "fixmatch_skipped": "--semi fixmatch"}  # summary.json's keys


def _section(r: Run, name: str) -> dict:
    got = r.config.get(name)
    return got if isinstance(got, dict) else {}


def _round(r: Run) -> str:
    """The self-training round a `fewshot run` stage is: summary.json's rounds, else its folder's name."""
    name = r.path.name
    for x in (r.pipeline or {}).get("self_training") or []:
        if x.get("stage") == name:
            return f" r{x['round']}"
    if name == "finetune_labelled":
        return " r1"
    k = name.removeprefix("finetune_round")
    return f" r{k}" if k.isdigit() else ""


def method_words(r: Run) -> str:
    """What the run did, in a few words: "MoCo pretrain", or a fine-tuning's semi-supervised method ("labelled
    only" without one) and where its weights came from, where not random init ("from MoCo" in a `fewshot run
    --pretrain`, else "from weights": a `fewshot train` records the file, not what wrote it)."""
    if r.kind == "moco":
        return "MoCo pretrain"
    stage = r.group is not None  # a standalone run's run.* settings are defaults it never used
    semi = _section(r, "semi").get("method")
    words = SEMI_WORDS.get(semi) if isinstance(semi, str) else None
    if words is None and stage and _section(r, "run").get("semi_method") == "pseudo":
        words, skipped = _self_training(r)
    else:
        skipped = ""
    words = words or "labelled only"
    if _section(r, "model").get("weights"):
        words += ", from MoCo" if stage and _section(r, "run").get("pretrain") is True else ", from weights"
    dropped = ", ".join(f"{flag} skipped" for flag, _ in skipped_stages(r))
    said = [x for x in (skipped, dropped) if x]
    return words + (f" ({'; '.join(said)})" if said else "")


def skipped_stages(r: Run) -> list[tuple[str, str]]:
    """The stages the `fewshot run` of a fine-tuning stage dropped at its planning: (its flag, why) each."""
    if r.kind == "moco" or r.group is None:
        return []
    summary = r.pipeline or {}  # its why, as pipeline_runs read it
    return [(flag, summary[key]) for key, flag in SKIPPED_FLAGS.items() if isinstance(summary.get(key), str)]


def skipped_note(runs: list[Run]) -> str:
    """The overview's note of the stages dropped, with why, once per run folder ("" where none was)."""
    named: dict[tuple, list[str]] = {}
    for r in runs:
        for flag, why in skipped_stages(r):
            named.setdefault((r.group, flag, why), []).append(r.label)
    return " ".join(f"{flag} was skipped in the `fewshot run` of {', '.join(labels)} (planned, not an error): {why}."
                    for (_, flag, why), labels in named.items())


def _self_training(r: Run) -> tuple[str, str]:
    """A self-training stage's words and what was skipped: "self-training r1" read as more than a --baseline where
    the budget skipped every later round (summary.json's self_training_skipped), though round 1 trains on the
    labelled images only."""
    words = "self-training" + _round(r)
    k = words.removeprefix("self-training r")
    skipped = (r.pipeline or {}).get("self_training_skipped_rounds") or []
    if not k.isdigit() or int(k) + 1 not in skipped:
        return words, ""
    return ("labelled only", "self-training skipped") if k == "1" else (words, "later rounds skipped")
