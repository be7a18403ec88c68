"""Which class proportions should class-balanced prediction aim at? The first version against the present one.

For each trained run (with the data root it was trained on), the val and test logits of every dataset are computed
once; then each test split is scored plain (argmax), with the first version's choice (the train split's
proportions unless a one-sample chi-square, p < 0.01, rules them out; then proportions estimated through the val
confusion) and with the present one (fewshot.eval.balancing._test_prior: a two-sample test at p < 0.05, even
proportions as a second reference; and `auto` decides only with AUTO_MIN_VAL_PER_CLASS val images per class), both
behind `auto`'s val check ("before"; "now": balancing.aimed_plan, with uneven shots also on val re-weighted to
the aim wherever val's shares differ from it). Test splits per dataset, cut from the
real one by its answer key: `full` (as it is), `skew` (the first half of the classes whole, a tenth of the rest)
and, where the train split's shots are uneven, `prop` (each class cut to the train split's proportions), `anti`
(the other way) and `most90` / `fewest90` (~90 % the most- or fewest-shot class). Paired,
so the machine's load does not enter. Prints the mean gain over plain per scenario and writes JSON.

    python benchmarks/balance_priors.py runs/qbal/b3/st_s0/finetune=demo_data OTHER_RUN=OTHER_ROOT ...
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import statistics
from pathlib import Path

import torch

from fewshot.eval import balance as bal
from fewshot.eval import balancing as B
from fewshot.eval import model_data as M
from fewshot.eval import predict as P


def logits_of(run: Path, root: Path) -> dict:
    """{dataset: test logits and answers, val logits and targets, train counts}, in the dataset's own classes."""
    device = torch.device("cpu")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        tm = P.load_trained(run, device)
        # the run's own data.skip_bad_images, passed: predict no longer inherits it (fGG), and a root with a
        # broken test image stopped here with DataLayoutError (review rev109 #5)
        skip_bad = bool(tm.cfg["data"].get("skip_bad_images", False))
        infos, data = P._data_for(tm, root, "test", skip_bad=skip_bad, scoring=True)
        answers = P.read_answer_keys(infos, tm.space, data.image_ids, data.dataset_ids, warn=False)
        logits = P.compute_logits(tm.model, data.images, tm.normalize, device)
        out = {}
        for info in infos:
            d = tm.space.index(info.name)
            lo, size = tm.space.offsets[d], tm.space.sizes[d]
            rows = data.dataset_ids == d
            val_logits, val_targets, _ = B._val_logits(tm, root, info.name, device)
            train, _ = M._labelled_split(tm, root, info.name, "train")
            if val_logits is None or train is None:
                continue
            out[info.name] = {"test": logits[rows][:, lo:lo + size], "answers": answers[rows] - lo,
                              "val": (val_logits, val_targets),
                              "shots": torch.bincount(torch.tensor([k for _, k in train.train]), minlength=size)}
    return out


def first_version(train: torch.Tensor, val: tuple, test: torch.Tensor) -> torch.Tensor:
    """The choice of 2026-12-04: one-sample chi-square against the val confusion taken as exact, p < 0.01."""
    logits, targets = val
    n = len(train)
    pred, hard = logits.argmax(1), torch.zeros(n, n)
    for j in range(n):
        rows = targets == j
        hard[:, j] = (torch.bincount(pred[rows], minlength=n).float() + 1.0 / n) / (int(rows.sum()) + 1.0)
    expected = len(test) * (hard @ train)
    observed = torch.bincount(test.argmax(1), minlength=n).float()
    chi2 = float(((observed - expected) ** 2 / expected.clamp_min(1e-6)).sum())
    if float(torch.special.gammaincc(torch.tensor((n - 1) / 2.0), torch.tensor(chi2 / 2.0))) >= 0.01:
        return train
    estimated = bal.estimate_prior(bal.soft_confusion(logits.softmax(1), targets, n), test.softmax(1))
    return B.floored_shares(estimated, len(test))


def cuts(d: dict) -> dict:
    """{scenario: row indices of the test split}."""
    answers, shots = d["answers"], d["shots"]
    n = len(shots)
    by_class = [(answers == c).nonzero().flatten() for c in range(n)]
    out = {"full": torch.arange(len(answers)),
           "skew": torch.cat([idx if c < n // 2 else idx[: max(1, len(idx) // 10)] for c, idx in enumerate(by_class)])}
    if int(shots.min()) != int(shots.max()):
        share = shots.float() / shots.max()
        out["prop"] = torch.cat([idx[: max(1, round(float(share[c]) * len(idx)))] for c, idx in enumerate(by_class)])
        share = shots.min() / shots.float()  # the other way: the fewest-shot classes whole
        out["anti"] = torch.cat([idx[: max(1, round(float(share[c]) * len(idx)))] for c, idx in enumerate(by_class)])
        for name, major in (("most90", int(shots.argmax())), ("fewest90", int(shots.argmin()))):
            rest = max(1, len(by_class[major]) // (9 * (n - 1)))  # the others ~10 % together
            out[name] = torch.cat([idx if c == major else idx[:rest] for c, idx in enumerate(by_class)])
    return out


def previous_prior(train: torch.Tensor, val: tuple, test: torch.Tensor) -> torch.Tensor:
    """The choice of 2026-12-05: train's or even, else estimated (_test_prior's too since 2026-12-07; frozen here)."""
    logits, targets = val
    even = torch.full_like(train, 1.0 / len(train))
    refs = {"train": train} | ({} if torch.allclose(train, even) else {"even": even})
    fits = {name: bal.fits_proportions(logits, targets, test, prior) for name, prior in refs.items()}
    best = max(fits, key=fits.get)
    if fits[best] >= bal.SKEW_P:
        return refs[best]
    estimated = bal.estimate_prior(bal.soft_confusion(logits.softmax(1), targets, len(train)), test.softmax(1))
    return B.floored_shares(estimated, len(test))


def weighted_alone(train: torch.Tensor, val: tuple, test: torch.Tensor) -> torch.Tensor | None:
    """The offsets that val re-weighted to the aim alone would keep: aimed_plan's proportions and
    bal._weighted_val_decision's own yes (unrounded, with its tie rule), without the check of val as it is."""
    prior, _ = B._test_prior(train, val, test)
    shares = torch.bincount(val[1], minlength=len(train)).float() / len(val[1])
    used = bal._weighted_val_decision(*val, prior / prior.sum(), shares)["used"]
    return bal.class_offsets(test, prior) if used else None


def accuracy(logits: torch.Tensor, answers: torch.Tensor, prior: torch.Tensor | None,
             offsets: torch.Tensor | None = None) -> float:
    if offsets is not None:
        logits = logits + offsets
    elif prior is not None:
        logits = logits + bal.class_offsets(logits, prior)
    return round(100.0 * float((logits.argmax(1) == answers).float().mean()), 2)


def score(d: dict) -> dict:
    train = bal.train_prior(torch.repeat_interleave(torch.arange(len(d["shots"])), d["shots"]), len(d["shots"]))
    if B._skew_untestable(d["val"], len(train), None):  # auto predicts such a dataset plainly in both versions
        return {}
    use = bal.val_decision(*d["val"])["used"]  # auto's val check before 2026-12-07, the same for both versions
    enough_val = int(torch.bincount(d["val"][1], minlength=len(train)).min()) >= bal.AUTO_MIN_VAL_PER_CLASS
    out = {}
    for scenario, rows in cuts(d).items():
        test, answers = d["test"][rows], d["answers"][rows]
        if not bal.enough_images(len(test), len(train)):
            continue
        first = first_version(train, d["val"], test) if use else None
        before = previous_prior(train, d["val"], test) if use and enough_val else None
        plan = B.aimed_plan(train, "train", d["val"], test, "auto") if enough_val else {"used": False}
        now = plan["_offsets"] if plan["used"] else None
        # beside it: plain wherever val is not split like the aim (the safe fallback), and the re-weighted val alone
        plain_unfit = None if "val_weighted_to" in plan else now
        weighted_only = now if "val_weighted_to" not in plan else weighted_alone(train, d["val"], test)
        out[scenario] = {"off": accuracy(test, answers, None), "first": accuracy(test, answers, first),
                         "before": accuracy(test, answers, before), "now": accuracy(test, answers, None, now),
                         "plain_unfit": accuracy(test, answers, None, plain_unfit),
                         "weighted_only": accuracy(test, answers, None, weighted_only), "n_test": len(test),
                         "aim": plan.get("prior_from", plan.get("why", "")).split(":")[0],
                         "val": [plan.get("val_plain"), plan.get("val_balanced")]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", help="RUN=ROOT: a run folder (or fewshot run stage folder) and its data root")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/balance_priors.json"))
    ap.add_argument("--logits-cache", type=Path, help="a folder to keep each pair's logits in, for reruns")
    args = ap.parse_args()
    results = {}
    for pair in args.pairs:
        run, _, root = pair.partition("=")
        key = hashlib.sha1(pair.encode()).hexdigest()[:16]
        cached = args.logits_cache / f"{key}.pt" if args.logits_cache else None
        if cached is not None and cached.is_file():
            logits = torch.load(cached)
        else:
            logits = logits_of(Path(run), Path(root or "demo_data"))
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save(logits, cached)
        results[pair] = {name: score(d) for name, d in logits.items()}
        print(pair, json.dumps(results[pair]), flush=True)
    summary = {}
    for scenario in ("full", "skew", "prop", "anti", "most90", "fewest90"):
        rows = [s[scenario] for r in results.values() for s in r.values() if scenario in s]
        if not rows:
            continue
        summary[scenario] = {"n": len(rows)}
        for how in ("first", "before", "now", "plain_unfit", "weighted_only"):
            gains = [r[how] - r["off"] for r in rows]
            summary[scenario][how] = {"mean_gain": round(statistics.mean(gains), 2), "worst": round(min(gains), 2),
                                      "better": sum(g > 0 for g in gains), "worse": sum(g < 0 for g in gains)}
        print(f"{scenario} ({len(rows)} dataset splits): " + "; ".join(
            f"{how} {v['mean_gain']:+.2f} mean, worst {v['worst']:+.2f}, better/worse {v['better']}/{v['worse']}"
            for how, v in summary[scenario].items() if how != "n"))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"runs": results, "gain_over_off": summary}, indent=1))


if __name__ == "__main__":
    main()
