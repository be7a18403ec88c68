"""Self-training's pseudo-labelling of the unlabeled pool in `fewshot run`: how much of the pool a round can afford
to decode and label in its time, the labelling itself and its record (pseudo_labels_round<k>.json, reused by a
resumed run) and what run.pseudo_precision the val split can certify. Tests fake the labelling's speed by patching
measure_prediction_seconds on this module: its calls look the name up here."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
from pathlib import Path

import torch

from fewshot.errors import one_line
from fewshot.run_budget import LABEL_SHARE, measure_prediction_seconds
from fewshot.run_words import pseudo_label_line
from fewshot.utils import loads_run_json, write_json


def recorded_pseudo_labels(record: Path) -> dict | None:
    """The pseudo-labels a finished round trained on, as its record (pseudo_labels_round<k>.json) holds them: a
    resumed run whose round was done labelled the whole pool again (and rewrote the record) only for the summary
    of it, inside the budget. The images stay on disk (``images``: the kept files' entries, not tensors; the
    round is reused, not trained). None when the record cannot be read: the pool is labelled again."""
    try:
        saved = loads_run_json(record.read_text())
        kept = list(saved["images"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(saved, dict):
        return None
    summary = {k: v for k, v in saved.items() if k not in ("pool_key", "images")}
    _say_pool_warnings(summary)  # the session that labelled the round said them; this one's log would not
    return {"images": kept, "summary": summary, "key": None, "recorded": True}


def _say_pool_warnings(summary: dict) -> None:
    """The pool check's warnings of a round's summary (its datasets' pool_classes_check), one line each, and its note
    of the unknown-source images it could not check (unknown_source_unchecked)."""
    unchecked = summary.get("unknown_source_unchecked")
    if isinstance(unchecked, int) and unchecked > 0:
        print(unchecked_note(unchecked), flush=True)
    datasets = summary.get("datasets")
    if not isinstance(datasets, dict):
        return
    try:
        calibrated = float(summary.get("precision") or 0) > 0
    except (TypeError, ValueError):
        calibrated = False
    places = summary.get("unknown_source_in") if len(datasets) == 1 else None  # one dataset: checked with its own
    for name, entry in datasets.items():
        check = entry.get("pool_classes_check") if isinstance(entry, dict) else None
        if isinstance(check, dict) and check.get("suspect") is True:
            try:
                line = pool_classes_warning(name, check, calibrated, summary.get("unknown_source_pool"), places)
            except (KeyError, TypeError, ValueError):  # a hand-edited record: the warning is not worth a crash
                continue
            print(one_line(line), flush=True)


def pool_share_in_time(task, images: torch.Tensor, seconds: float, record: Path, seed: int,
                       pool_key: str | None = None) -> torch.Tensor | None:
    """Which pool images a round can afford to label: all of them (None), unless labelling them would take more
    than ``seconds`` (a 100k-image pool took 5 minutes of a 1-minute budget); then a seeded random share that
    fits. A resumed run takes the count its first session chose (the round's record), so that it labels the same
    images and the stopped round's checkpoint continues on the same training set; unless the pool changed since
    (its size or ``pool_key``, the fingerprint of its files): the saved count, applied to another pool, labelled
    8000 of 9000 images without a word, so the time decides again and the run says so."""
    n_pool = len(images)
    n = None
    if record.is_file():  # a record without the count: a version that labelled the whole pool wrote it (review)
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            saved = loads_run_json(record.read_text())
            then, key = saved.get("pool_size"), saved.get("pool_key")
            if then not in (None, n_pool) or (pool_key is not None and key not in (None, pool_key)):
                sizes = f"{int(then):,} images then, {n_pool:,} now" if then is not None else f"{n_pool:,} images now"
                print(f"[run] the unlabeled pool changed since the run started ({sizes}): this round labels what "
                      f"its time allows, not the stopped session's share", flush=True)
            else:
                n = int(saved.get("pool_labelled", n_pool))
    if n is None:
        if n_pool <= 256:  # one batch: not worth timing (nor cutting)
            return None
        per_image = measure_prediction_seconds(task, images)
        if per_image * n_pool <= seconds:
            return None
        per_image = measure_prediction_seconds(task, images)  # the first batch paid the warm-up (review)
        if per_image * n_pool <= seconds:
            return None
        n = max(256, int(seconds / per_image))  # one batch at least: the time measuring it took
        print(share_line(n, n_pool, per_image * n_pool, seconds), flush=True)
    if n >= n_pool:
        return None
    order = torch.randperm(n_pool, generator=torch.Generator().manual_seed(seed))
    return order[:n].sort().values


def share_line(n: int, n_pool: int, whole_s: float, seconds: float) -> str:
    """The note of a labelled share, each number what it says: "more than a quarter of the time left (5 s)" read
    as 5 s left, where 20 s were and 5 s was the quarter the labelling may take."""
    return (f"[run] labelling {n:,} of the {n_pool:,} pool images, a random share: the whole pool would take about "
            f"{whole_s:.0f} s, more than the {seconds:.0f} s the labelling may take (a quarter of the "
            f"{seconds / LABEL_SHARE:.0f} s left)")


def pool_decode_limit(cfg: dict, paths: list, seconds: float, n: int = 256, refuse=None,
                      within: list | None = None, order=None, held: frozenset[int] = frozenset()) -> int | None:
    """How many pool files self-training decodes: all (None) when the decode cache holds them or decoding them
    takes at most ``seconds``; else a seeded random share that fits (``n`` at least; semi.pool_subset), an earlier
    run's share reused where the cache holds one at least half as large (run_checks.cold_pool_limit, MoCo's rule). A
    cold 100k-file pool was decoded whole before the stages were planned, inside the budget, though the rounds label
    only the share their time allows (pool_share_in_time). ``refuse``: cold_pool_limit's check of the time left;
    ``within``: MoCo's pool (semi.moco_entry_paths), whose cache entry may hold every file already (hunt hBK #3);
    ``order``, ``held``: where MoCo decoded only a share of it, the share is drawn inside it first, and the files
    at positions ``held`` are read from its entry (run_checks.share_source)."""
    from fewshot.run_checks import cold_pool_limit, say_cold_share

    limit, whole, reused = cold_pool_limit(cfg, paths, cfg["data"]["crop_pct"], seconds, n, n, refuse, within, order,
                                           held)
    say_cold_share("the", len(paths), limit, reused, f"{whole} (a quarter of the time after round 1)", len(held),
                   "the pool the rounds label")
    return limit


def pseudo_label_pool(task, cfg: dict, infos, r: dict, record: Path, seconds: float = math.inf,
                      seed: int = 0, pool_limit: int | None = None) -> dict:
    """Label the pool with the round-1 model (best val checkpoint, EMA weights): the most confident
    images of every class, class-balanced, become training images of round 2. ``seconds``: the time the
    labelling may take (a larger pool is labelled in a random share: pool_share_in_time); ``pool_limit``: the
    files decoded at start-up (pool_decode_limit). The pool stays in its cache file: only the share is read (in
    batches), and the returned images are the kept ones' rows, read once by the next round."""
    from fewshot.eval.evaluate import compute_logits
    from fewshot.train.semi import (POOL_CHECK_MIN_KEPT, calibrated_thresholds, class_quota, labelled_counts,
                                    load_pool, root_relative, select_pseudo_labels, teacher_probabilities)

    pool = load_pool(cfg, infos, task.size, exclude_train=True, limit=pool_limit)
    images, dataset_ids, paths, source = pool[:4]  # by position: stand-ins return plain tuples
    n_pool, pool_ids = len(images), dataset_ids
    # which files the pool holds: a resumed round labels the stopped session's share only of the same pool (named
    # relative to the data root: a resume from a moved root relabelled and retrained a stopped round)
    root = cfg["data"]["root"]
    pool_key = hashlib.sha1(json.dumps(root_relative(paths, root)).encode()).hexdigest()
    share = pool_share_in_time(task, images, seconds, record, seed, pool_key) if n_pool else None
    if share is not None:
        images, dataset_ids, paths = images.select(share), dataset_ids[share], [paths[i] for i in share.tolist()]
    if len(images) == 0:
        # what follows is said by the caller (its round is skipped: RoundsMixin.skip_without_pseudo_labels); "the
        # next round trains on the labelled images only" followed by "round 2 skipped" (review rev84, #5)
        # the folder is named only when the pool itself is empty; usually it was the time share (rev88 #4)
        print("[run] no pool image was left to label: " + ("the pool is empty (ROOT/unlabeled/ or --unlabeled DIR)"
              if n_pool == 0 else f"no time was left to label any of its {n_pool} images"), flush=True)
    logits = compute_logits(task.model, images, task.normalize, task.device, channels_last=task.channels_last,
                            desc="pseudo-labelling the pool") if len(images) else torch.zeros(0, task.space.num_classes)
    quota = class_quota(dataset_ids, task.space, r["pseudo_keep"], labelled_counts(infos, task.space),
                        r["pseudo_max_per_shot"])
    threshold = torch.tensor(float(r["pseudo_threshold"]))
    val = task.val_set
    val_probs = None  # one val pass at most, shared by the calibration and the out-of-class check
    if float(r["pseudo_precision"]) > 0:
        val_probs = teacher_probabilities(task.val_logits(task.model), val.dataset_ids, task.space)
        threshold = calibrated_thresholds(val_probs, val.targets, float(r["pseudo_precision"]),
                                          unmeasured=float(threshold)).clamp(min=threshold)
    idx, labels, conf = select_pseudo_labels(logits, dataset_ids, task.space, quota.per_class, threshold,
                                             quota.per_dataset)
    owner = task.space.owner()[labels]
    from_unknown = dataset_ids[idx] < 0
    per_dataset = {name: {"kept": int((owner == d).sum()),
                          "kept_from_unknown_source": int(((owner == d) & from_unknown).sum()),
                          "pool": int((pool_ids == d).sum()), "labelled": int((dataset_ids == d).sum()),
                          "mean_confidence": (round(float(conf[owner == d].mean()), 4) if bool((owner == d).any())
                                              else None)}
                   for d, name in enumerate(task.space.names)}
    summary = {"source": source, "pool_size": n_pool, "pool_labelled": len(images),
               "keep_frac": r["pseudo_keep"], "max_per_shot": r["pseudo_max_per_shot"],
               "threshold": r["pseudo_threshold"],
               "precision": r["pseudo_precision"], "targets": r["pseudo_targets"],
               "unknown_source_pool": int((dataset_ids < 0).sum()),
               "datasets": per_dataset}
    if float(r["pseudo_precision"]) > 0:  # per class: the confidence needed (null: the class keeps nothing)
        for d, name in enumerate(task.space.names):
            per_dataset[name]["class_thresholds"] = {
                cls: (round(float(t), 4) if torch.isfinite(t) else None)
                for cls, t in zip(task.space.classes[d], threshold[task.space.offsets[d]:][:task.space.sizes[d]])}
    # the images the check can measure: of known source, and with one dataset those of unknown source too (their
    # softmax runs over its classes, val's scale; a digits root whose pool was 97 % Fashion-MNIST went unchecked)
    one = len(task.space.names) == 1
    check_ids = dataset_ids.clamp(min=0) if one else dataset_ids
    checked_kept = torch.bincount(owner if one else owner[~from_unknown], minlength=len(task.space.names))
    # said once, where some dataset kept enough of them that its check would have run on them (its own floor, per
    # dataset: 3 datasets keeping 10 each said it, though no check would have measured them, review rev92 #1)
    unknown_kept = torch.bincount(owner[from_unknown], minlength=len(task.space.names))
    if not one and bool((unknown_kept >= POOL_CHECK_MIN_KEPT).any()):
        summary["unknown_source_unchecked"] = int((dataset_ids < 0).sum())
    if one and bool(from_unknown.any()):  # checked with its own: the warning names where they lie (rev92 #4)
        summary["unknown_source_in"] = unknown_source_places(cfg, [p for p, i in zip(paths, dataset_ids) if i < 0])
    if val_probs is None and len(val.targets) and bool((checked_kept >= POOL_CHECK_MIN_KEPT).any()):
        # the check's, only where some dataset kept enough images it can check (rev69)
        val_probs = teacher_probabilities(task.val_logits(task.model), val.dataset_ids, task.space)
    # every labelled pool image the check measures, as select_pseudo_labels saw it: the check's sample of the pool
    pool_conf, pool_pred = teacher_probabilities(logits, dataset_ids, task.space).max(dim=1)
    checks = pool_classes_checks(task.space, pool_conf, check_ids, checked_kept, val, val_probs, pool_pred)
    for name, check in checks.items():
        per_dataset[name]["pool_classes_check"] = check
    local = task.space.to_local(labels)[1]
    # dataset: the image's own, or for an unknown-source image (source_known false) the predicted one
    kept = [{"path": paths[i], "dataset": task.space.names[d], "class": task.space.classes[d][c],
             "confidence": round(float(p), 4), "source_known": bool(dataset_ids[i] >= 0)}
            for i, d, c, p in zip(idx.tolist(), owner.tolist(), local.tolist(), conf.tolist())]
    # per image: which file became which class, how sure; the pool's fingerprint for a resumed round
    write_json(record, {**summary, "pool_key": pool_key, "images": kept})
    print(pseudo_label_line(per_dataset, summary["unknown_source_pool"]))
    _say_pool_warnings(summary)
    soft = teacher_probabilities(logits[idx], dataset_ids[idx], task.space) if r["pseudo_targets"] == "soft" else None
    # which file became which class: a resumed run continues a stopped stage only on the same labels
    names = root_relative([k["path"] for k in kept], root)
    key = hashlib.sha1(json.dumps([(n, k["dataset"], k["class"]) for n, k in zip(names, kept)]).encode()).hexdigest()
    return {"images": images.select(idx), "targets": labels, "soft": soft, "dataset_ids": owner, "summary": summary,
            "state": copy.deepcopy(task.model.state_dict()), "key": key}


def unknown_source_places(cfg: dict, paths: list) -> str:
    """Where a pool's images of unknown source lie, in words: the --unlabeled folders, or the folders of
    ROOT/unlabeled/ outside the datasets' own (its loose files: ROOT/unlabeled/ itself), three named at most."""
    from fewshot.train.semi import root_relative

    given = cfg["data"].get("unlabeled")
    if given:
        folders = given if isinstance(given, list) else [given]
        return "the --unlabeled folder" + ("s " if len(folders) > 1 else " ") + ", ".join(map(str, folders))
    places: list[str] = []
    for rel in root_relative(paths, Path(cfg["data"]["root"]) / "unlabeled"):
        parts = Path(rel).parts
        place = f"ROOT/unlabeled/{parts[0]}/" if len(parts) > 1 else "ROOT/unlabeled/ (files outside its folders)"
        if place not in places:
            places.append(place)
    more = f" and {len(places) - 3} more folders" if len(places) > 3 else ""
    return ", ".join(places[:3]) + more


def unchecked_note(n: int) -> str:
    """The note of the unknown-source pool images the check left out with several datasets: their confidence (the
    routing softmax over every dataset's classes) is lower than val's within-dataset one, and renormalised within
    the dataset they are routed to, that dataset's sample holds the other datasets' misrouted images, which an
    in-class pool would then be flagged for: the check's false-alarm rate there is unmeasured."""
    return (f"[run] note: {n} pool images of unknown source were not checked for other classes: with several "
            f"datasets their confidence runs over every dataset's classes, not on the scale of a dataset's val "
            f"images. Put each dataset's pool images under ROOT/unlabeled/<dataset>/ to have them checked.")


def pool_classes_checks(space, pool_conf: torch.Tensor, pool_ids: torch.Tensor, kept: torch.Tensor, val,
                        val_probs, pool_pred: torch.Tensor | None = None) -> dict:
    """Per dataset, pool_classes_check of its labelled pool images (``pool_ids``: their dataset, -1 unknown source,
    left out: with several datasets an unknown-source image's softmax runs over every class, another scale than
    val's; with one the caller gives them its id) against all its val images, on the same model; ``kept``: each
    dataset's kept pseudo-labels of the images checked; ``pool_pred``: the pool images' predicted classes, to
    measure val in the pool's mix of them. Null where it is not measured (too few val, pool or kept images, no val
    pass)."""
    from fewshot.train.semi import pool_classes_check

    out = {}
    for d, name in enumerate(space.names):
        mine = val.dataset_ids == d if val_probs is not None else None
        if mine is None or not bool(mine.any()):
            out[name] = None
            continue
        val_conf, val_pred = val_probs[mine].max(dim=1)
        out[name] = pool_classes_check(pool_conf[pool_ids == d], val_conf, int(kept[d]),
                                       None if pool_pred is None else pool_pred[pool_ids == d], val_pred)
    return out


def pool_classes_warning(name: str, check: dict, calibrated: bool = False, unknown: int | None = None,
                         places: str | None = None) -> str:
    """The warning of a dataset whose pool looks like it holds images of other classes (pool_classes_check): what
    was measured, what it may mean and what to do; the run trains on its kept pseudo-labels all the same.
    ``calibrated``: run.pseudo_precision is on already, so it is not advised. ``unknown`` images of unknown source
    at ``places`` (one dataset: checked with its own) are named: "keep only its own classes in its pool" sent the
    user to ROOT/unlabeled/<dataset>/, which may hold only good images (review rev92 #4)."""
    mix = " (val weighed in the pool's mix of predicted classes)" if check.get("class_mix") else ""
    where = f" ({unknown} of them of unknown source, from {places})" if unknown and places else ""
    return (f"[run] warning: {name}: {check['pool_share_below']:.0%} of its {check['pool']} pool images{where}{mix} "
            f"have a confidence below {check['val_confidence']:.3f}, against {check['val_share_below']:.0%} of its "
            f"{check['val']} val images (that confidence is their {check['quantile']:g} quantile): its pool may hold "
            f"images of classes {name} does not have (or images unlike its labelled ones: another source, size or "
            f"colour), which get a pseudo-label of one of its classes anyway ({check['kept']} were kept). Keep only "
            f"{name}'s own classes in its pool{f' ({places} included)' if where else ''}, "
            f"{'' if calibrated else 'or set run.pseudo_precision (per-class thresholds from val), '}"
            f"or run.semi_method=off")


def precision_cap(infos, precision: float) -> tuple[str | None, str | None]:
    """run.pseudo_precision against what the val split can certify (certifiable_precision: (n + 1) / (n + 2) for a
    class with n val images): (refusal, warning). Asked above it for every class, every threshold was inf and
    every later round trained on the labelled images again ("kept 0/N"), silently. A class without val images
    is not closed (it takes run.pseudo_threshold). Counts from the scan: skipped bad files only lower them."""
    from fewshot.train.semi import certifiable_precision, val_images_needed

    best, closed, sizes, caps = {}, {}, {}, []
    for info in infos:
        counts = torch.bincount(torch.tensor([label for _, label in info.val], dtype=torch.long),
                                minlength=len(info.classes))
        full = certifiable_precision(counts)
        cap = full[counts > 0]  # compared as tensors, as calibrated_thresholds compares (float32)
        closed[info.name] = [c for c, shut in zip(info.classes, ((counts > 0) & (full < precision)).tolist()) if shut]
        sizes[info.name], caps = len(info.classes), caps + cap.tolist()
        if len(cap):
            best[info.name] = (float(cap.max()), int(counts.max()))
    if not any(closed.values()):
        return None, None
    rule = (f"run.pseudo_precision={precision:g} is more than this val split can certify for {{}}: a class with n "
            f"val images certifies at most (n + 1) / (n + 2) (the estimate of the thresholds), so {precision:g} needs "
            f"{val_images_needed(precision)} val images of a class")
    if all(len(closed[name]) == sizes[name] for name in closed):  # every class has val images and is closed
        per = "; ".join(f"{name}: at most {cap:.3f}, {n} val images in its largest class"
                        for name, (cap, n) in best.items())
        return (f"{rule.format('any class')} ({per}). Every round after the first would keep no pool image and "
                f"train on the labelled images again. Give run.pseudo_precision={math.floor(max(caps) * 1000) / 1000:g}"
                f" or lower (0: no per-class thresholds, the shared rank only), or add val images."), None
    shut = "; ".join(f"{name}: {len(c)} of {sizes[name]} classes"
                     + (f" ({', '.join(c[:3])}{', ...' if len(c) > 3 else ''})" if len(c) < sizes[name] else "")
                     for name, c in closed.items() if c)
    # floored to 3 digits: never above the cap, so the value suggested opens them
    return None, (f"[run] warning: {rule.format('some classes')}. These keep no pool image in the later rounds "
                  f"({shut}); run.pseudo_precision={math.floor(min(caps) * 1000) / 1000:g} or lower keeps every class "
                  f"with val images open, or add val images.")
