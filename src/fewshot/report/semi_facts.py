"""The report's "semi-supervised" fact of a fine-tuning run (FixMatch, joint MoCo loss) in words: the settings
the run used and the unlabeled pool it drew from, as metrics.json and config.yaml recorded them."""

from __future__ import annotations

from fewshot.report import tables as T
from fewshot.report.run_record import Run


def _recorded_semi(r: Run) -> dict:
    """metrics.json's semi (what the run resolved and drew from); {} for a run written before it was recorded."""
    got = (r.metrics or {}).get("semi")
    return got if isinstance(got, dict) else {}


def _pool_words(got: dict) -> str:
    """The unlabeled pool's size and source as metrics.json recorded them."""
    source = got.get("pool_source") if isinstance(got.get("pool_source"), str) else None
    return (f"an unlabeled pool of {T.count(got['pool_size'])} images" + (f" ({source})" if source else "")
            if isinstance(got.get("pool_size"), int) else "an unlabeled pool (its size not recorded)")


def fixmatch_fact(r: Run) -> str:
    """FixMatch's settings (config.yaml) and the pool it drew from (metrics.json's semi; a run written before it was
    recorded: not known)."""
    s = r.config["semi"]
    return f"FixMatch on {_pool_words(_recorded_semi(r))}; mu {T.opt(s.get('mu'))}, " \
           f"threshold {T.opt(s.get('threshold'))}, weight {T.opt(s.get('weight'))}"


def moco_fact(r: Run) -> str:
    """The joint MoCo loss's settings in words: metrics.json's semi holds what the run used, including the queue size
    and shuffle-BN groups it resolved (neither is in config.yaml, which holds only their caps); config.yaml stands in
    for the settings of a run written before they were recorded."""
    s, m, got = r.config["semi"], r.config.get("moco") or {}, _recorded_semi(r)

    def value(key: str, fallback):
        v = got.get(key, fallback)
        return T.DASH if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    queue = got.get("queue_size")
    queue = f"a queue of {T.count(queue)} keys" if isinstance(queue, int) else "queue size not recorded"
    groups = got.get("split_bn_groups")
    shuffle = (f"key batches shuffled across {groups} BatchNorm groups" if isinstance(groups, int) and groups > 1
               else "no shuffle-BN split" if groups == 1 else "shuffle-BN groups not recorded")
    return (f"joint MoCo loss on {_pool_words(got)}: each step adds weight {value('weight', s.get('weight'))} x "
            f"InfoNCE on mu {value('mu', s.get('mu'))} x batch size pool images to the labelled loss; key-encoder "
            f"momentum {value('momentum', s.get('moco_momentum'))}, temperature "
            f"{value('temperature', m.get('temperature'))}, {queue}, {shuffle}")


SEMI_FACTS = {"fixmatch": fixmatch_fact, "moco": moco_fact}
