"""The start-up checks of `fewshot run`, before its run folder is started: the image size chosen for the images
(auto_img_size), the model built once (check_model), the MoCo batch against its queue (check_pretrain_settings),
the pool decoded as the stages will (check_pool_images), the labelled images decoded (preload_images) and the
fine-tuning batches planned (check_finetune_batches). Found by a stage instead, each of these left a started folder
that neither a rerun nor --resume could use."""

from __future__ import annotations

import contextlib
import copy
import time

import torch

from fewshot.data.cache import default_cache_dir
from fewshot.errors import DataLayoutError, UserError
from fewshot.utils import loads_run_json


# docs/recipes.md: at a 3-minute budget on CPU 64 px scored below 32 (4x the cost per step, fewer epochs); 64 px
# gained at 5 minutes on 56-px images
CPU_64PX_MIN_MINUTES = 5.0


def auto_img_size(infos, device: torch.device, budget_minutes: float) -> tuple[int, str]:
    """The image size for these images, device and budget, and why, for the line that reports it. Small native
    images (digits, MNIST-like) train at 32 px; larger ones at 160 on GPU, and on CPU at 64 px from
    CPU_64PX_MIN_MINUTES of budget, else at 32 (at 64 px a short budget buys too few steps)."""
    from PIL import Image

    sides = []
    for info in infos:
        for p, _ in info.train[:20]:
            try:
                with Image.open(p) as im:
                    sides.append(min(im.size))
            except (OSError, ValueError, Image.DecompressionBombError):
                continue  # an unreadable file is reported (or skipped) by the image loader, not here
    median = sorted(sides)[len(sides) // 2] if sides else 224
    chosen = "chosen for these images and device; --img-size to change"
    if median <= 40:
        return 32, chosen
    if device.type != "cpu":
        return 160, chosen
    if budget_minutes < CPU_64PX_MIN_MINUTES:
        return 32, (f"chosen for these images, device and the {budget_minutes:g}-minute budget: 64 px costs 4x per "
                    f"step and pays on CPU from --budget-minutes {CPU_64PX_MIN_MINUTES:g}; --img-size 64 to override")
    return 64, chosen


def check_model(cfg: dict, load_weights: bool = True):
    """Build the backbone once and run a blank image through it, before the run folder is written: an unknown
    model, an option it does not take (small_stem on a ViT), weights that do not fit or an image size it cannot
    take would otherwise stop the first stage and leave a run that neither a rerun nor --resume can use.
    The model.strict=false warning is given here, once; the stages load the file quietly. ``load_weights``
    False: a resumed stage's checkpoint replaces model.weights (weights_replaced_by), which are not read."""
    from fewshot.models.backbone import (adopt_weights_architecture, backbone_options, check_input_size,
                                         create_backbone, input_size)
    from fewshot.models.weights import load_backbone_weights

    m = adopt_weights_architecture(copy.deepcopy(cfg["model"]))
    backbone = create_backbone(m["name"], **backbone_options(m))
    if m.get("weights") and load_weights:
        load_backbone_weights(backbone, m["weights"], strict=m["strict"])
    check_input_size(backbone, input_size(backbone, m["img_size"]), m["name"])
    return backbone


def check_pool_images(cfg: dict, infos, semi: str, moco_limit: int | None = None,
                      cold: list | None = None) -> tuple[list[tuple[str, str]], int | None]:
    """Decode the pool as the MoCo and FixMatch stages will (their cache entries), before the run folder is
    started: a broken file under data.skip_bad_unlabeled=false stopped those stages in a started folder that
    a rerun then refused. Returns the files left out and the images MoCo can use (None: no MoCo); the images
    are not kept (only the cache is). ``moco_limit``: MoCo's seeded random share of its pool (moco_decode_limit);
    ``cold``: gets (seconds, files) of each decode the cache did not hold (the refusal of a slow start names them)."""
    from fewshot.data.cache import load_images
    from fewshot.data.pool import pool_paths
    from fewshot.train.semi import POOL_SKIP_NOTE, pool_files

    d = cfg["data"]
    # MoCo decodes whole images (crop 1.0) of its pool, where train images stand in for a dataset without one;
    # FixMatch decodes as fine-tuning does (data.crop_pct) and only real pool images (the cache entry it reads)
    jobs = ([("moco", 1.0, moco_pool_share(cfg, pool_paths(cfg, infos)[0], moco_limit))]
            if cfg["run"]["pretrain"] else []) + \
        ([("fixmatch", d["crop_pct"], pool_files(cfg, infos, exclude_train=True)[0])] if semi == "fixmatch" else [])
    skipped, n_moco, seen = [], None, set()
    for stage, crop, paths in jobs:
        was_cold, t0 = not pool_is_cached(cfg, paths, crop), time.monotonic()
        cached = load_images(paths, cfg["model"]["img_size"], default_cache_dir(d["root"], d["cache_dir"]),
                             crop_pct=crop, skip_bad=d["skip_bad_images"] or d["skip_bad_unlabeled"],
                             desc="loading unlabeled pool", skip_note=POOL_SKIP_NOTE, max_gb=d.get("cache_max_gb"),
                             bit_depth=d.get("bit_depth", "auto"))
        if was_cold and cold is not None:
            cold.append((time.monotonic() - t0, len(paths)))
        skipped += [b for b in cached.bad if b[0] not in seen]
        seen.update(b[0] for b in cached.bad)
        if stage == "moco":
            n_moco = int(cached.valid.sum())
        del cached
    return skipped, n_moco


def pool_is_cached(cfg: dict, paths: list, crop: float) -> bool:
    """Whether the decode cache holds ``paths`` as the pool decodes them: a decode that was not cached is timed for
    the refusal of a slow start (hopeless_budget_error), which the same command's rerun no longer pays."""
    from fewshot.data.cache import is_cached

    d = cfg["data"]
    return not paths or is_cached(paths, cfg["model"]["img_size"], default_cache_dir(d["root"], d["cache_dir"]),
                                  crop, d.get("bit_depth", "auto"))


def moco_pool_share(cfg: dict, paths: list, limit: int | None) -> list:
    """MoCo's pool files: all of them, or the seeded random ``limit`` of them (semi.pool_subset, in the pool's
    order) that start-up decoded and the MoCo stage trains on, the same files in every session of the run."""
    from fewshot.train.semi import pool_subset

    subset = pool_subset(len(paths), limit, int(cfg["train"]["seed"]))
    return list(paths) if subset is None else [paths[i] for i in subset.tolist()]


def recorded_moco_limit(data: dict) -> int | None:
    """The MoCo pool share a run's state records (moco_pool_decoded; None: the whole pool, also for a state from a
    version without it, which decoded the whole pool): the MoCo stage and a resumed start-up take it from there."""
    value = data.get("moco_pool_decoded")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# of MoCo's share of the budget (run.pretrain_share), what decoding its cold pool may take: a 10k-file pool of
# 768 px PNGs took 59 s of a 1-minute run, which then ran 72 s and was refused (hunt hBK)
MOCO_DECODE_SHARE = 0.25
DECODE_SAMPLE = 256  # MoCo's pool files whose decoding is timed (as run_pseudo.pool_decode_limit's)


def moco_decode_limit(cfg: dict, infos, budget_s: float, n: int | None = None) -> int | None:
    """How many of MoCo's pool files `fewshot run --pretrain` decodes: all (None) when the decode cache holds them
    or decoding them takes at most a quarter of MoCo's share of the budget, at the rate timed on a seeded ``n`` of
    them; else a seeded random share that fits (two MoCo batches and ``n`` at least), as self-training's
    (run_pseudo.pool_decode_limit), an earlier run's share reused where the cache holds it."""
    from fewshot.data.pool import pool_paths

    r, n = cfg["run"], n or DECODE_SAMPLE
    share = float(r["pretrain_share"]) * budget_s
    floor = max(n, 2 * int(r["pretrain_batch_size"]))
    paths = pool_paths(cfg, infos)[0]
    if len(paths) <= 2 * floor or pool_is_cached(cfg, paths, 1.0):
        return None
    seconds = MOCO_DECODE_SHARE * share
    per_file = _decode_rate(cfg, paths, n)
    if per_file * len(paths) <= seconds:
        return None
    limit = max(floor, int(seconds / max(per_file, 1e-9)))
    whole = f"decoding them all would take about {per_file * len(paths):.0f} s ({per_file * 1000:.1f} ms each, " \
            f"timed on {n}), more than the {seconds:.0f} s that decoding may take (a quarter of MoCo's " \
            f"{share:.0f} s share of the budget)"
    reused = _earlier_moco_share(cfg, paths, limit)
    if reused is not None:
        print(f"[run] MoCo's {len(paths):,} pool images are not in the decode cache, but a seeded random "
              f"{reused:,} of them are (an earlier run's): the pool MoCo trains on ({whole})", flush=True)
        return reused
    _record_moco_share(cfg, paths, limit)
    print(f"[run] MoCo's {len(paths):,} pool images are not in the decode cache: {whole}; decoding a seeded random "
          f"{limit:,} of them, the pool MoCo trains on", flush=True)
    return limit


def _decode_rate(cfg: dict, paths: list, n: int) -> float:
    """Seconds per file of decoding a seeded ``n`` of MoCo's pool files (from every dataset of the pool: its first
    n are one dataset's, of other sizes and formats), whole images (crop 1.0) as MoCo decodes them."""
    from fewshot.data.decode_many import decode_seconds_per_image

    d = cfg["data"]
    sample = torch.randperm(len(paths), generator=torch.Generator().manual_seed(int(cfg["train"]["seed"])))[:n]
    return decode_seconds_per_image([paths[i] for i in sample.tolist()], cfg["model"]["img_size"], 1.0,
                                    bit_depth=d.get("bit_depth", "auto"))


def _subsets_record(cfg: dict, paths: list):
    """cache.subsets_record of MoCo's pool (crop 1.0): the sizes of its seeded shares decoded before."""
    from fewshot.data.cache import subsets_record

    d = cfg["data"]
    return subsets_record(paths, cfg["model"]["img_size"], default_cache_dir(d["root"], d["cache_dir"]), 1.0,
                          int(cfg["train"]["seed"]), d.get("bit_depth", "auto"))


def _earlier_moco_share(cfg: dict, paths: list, limit: int) -> int | None:
    """An earlier run's share of MoCo's pool that the cache holds, at least half of ``limit``: the timing varies from
    run to run, and each new count decoded another share into a cache entry of its own."""
    record = _subsets_record(cfg, paths)
    sizes: list[int] = []
    if record is not None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            sizes = sorted({int(m) for m in loads_run_json(record.read_text())}, reverse=True)
    for m in (m for m in sizes if limit / 2 <= m < len(paths)):
        if pool_is_cached(cfg, moco_pool_share(cfg, paths, m), 1.0):
            return m
    return None


def _record_moco_share(cfg: dict, paths: list, limit: int) -> None:
    """List ``limit`` in MoCo's pool's subsets record, for a later run's reuse (_earlier_moco_share)."""
    from fewshot.data.cache import add_to_subsets_record

    record = _subsets_record(cfg, paths)
    if record is not None:
        with contextlib.suppress(OSError):
            add_to_subsets_record(record, limit)


def check_pretrain_settings(cfg: dict, backbone) -> None:
    """The MoCo stage's batch against its queue and shuffle-BN groups, before the run folder is started: found by
    the stage, a bad pair left a folder that only deleting freed (a rerun wanted --resume, and --resume refused
    the corrected setting)."""
    from fewshot.ssl.pretrain_settings import keys_per_step, split_groups

    r = cfg["run"]
    batch = int(r["pretrain_batch_size"])
    # moco.symmetric enqueues both views' keys each step (ssl.pretrain_settings.resolve_pretrain_defaults refuses
    # the queue under 2x the batch): checked only there, K=96 at batch 64 decoded the pool and started the folder
    # first
    symmetric = bool(cfg["moco"].get("symmetric"))
    keys = keys_per_step(batch, symmetric)
    if r["queue_size"] is not None and int(r["queue_size"]) < keys:
        what = (f"the {keys} keys a MoCo step enqueues with moco.symmetric=true (both views' keys: 2 x "
                f"run.pretrain_batch_size={batch})" if symmetric else
                f"the MoCo batch (run.pretrain_batch_size={batch})")
        raise UserError(f"run.queue_size={r['queue_size']} is smaller than {what}: the queue could not hold one "
                        f"step's keys. Raise run.queue_size to {keys} or more, or lower run.pretrain_batch_size"
                        f"{' (or drop moco.symmetric=true)' if symmetric else ''}.")
    try:
        split_groups({"moco": cfg["moco"], "train": {"batch_size": batch}}, 1, backbone)
    except UserError as exc:
        raise UserError(f"the MoCo stage's batch: {run_batch_named(str(exc), batch)} (in `fewshot run` the MoCo "
                        f"batch size is run.pretrain_batch_size)") from None


def run_batch_named(message: str, batch: int) -> str:
    """pretrain's message with the batch named as `fewshot run` sets it: "train.batch_size=N (or --batch-size N)"
    named a field and a flag the run's MoCo stage does not read."""
    from fewshot.train.start_checks import batch_size_named

    return message.replace(batch_size_named(batch), f"run.pretrain_batch_size={batch}")


def preload_images(cfg: dict, infos, test_infos):
    """Decode the train, val and test images before the stages are planned (into the caches the stages and
    prediction read): every undecodable file is listed in one error now, before the run folder is started,
    rather than the test split's first and the labelled splits' after a rerun (which then needed --resume);
    decoding (slow for large photos) is paid up front instead of overrunning the end. Returns the test
    ImageSet, which prediction reuses, the files --skip-bad-images left out of the three splits, and the
    labelled train ImageSet (its epoch plan is checked before the run folder is started)."""
    from fewshot.data.label_space import LabelSpace
    from fewshot.data.sets import load_splits, warn_split_copies
    from fewshot.eval.model_data import prediction_cache_dir, warn_about_blank_test_images

    d, size, space = cfg["data"], cfg["model"]["img_size"], LabelSpace.from_infos(infos)
    problems, hints, skipped, test_set, train_set = [], [], [], None, None
    for splits, cache, sources in ((("train", "val"), default_cache_dir(d["root"], d["cache_dir"]), infos),
                                   (("test",), prediction_cache_dir(d["root"]), test_infos)):
        try:
            sets = load_splits(sources, splits, space, size, cache, d["crop_pct"], d["skip_bad_images"],
                               d.get("cache_max_gb"), d.get("bit_depth", "auto"))
        except DataLayoutError as exc:
            problems += exc.problems
            hints = list(dict.fromkeys(hints + exc.hints))
            continue
        skipped += [bad for one in sets for bad in one.skipped]
        test_set = sets[0] if splits == ("test",) else test_set
        train_set = sets[0] if splits == ("train", "val") else train_set
    if problems:
        raise DataLayoutError(problems, hints)
    warn_about_blank_test_images(test_set)
    warn_split_copies(train_set, {"test": test_set}, space)  # val's were said by load_splits
    return test_set, skipped, train_set


def check_finetune_batches(cfg: dict, train_set) -> None:
    """The fine-tuning stages' epoch plan on the labelled images, before the run folder is started: found by the
    first stage (train.batch_size=1, a single training image), the error left a folder that blocked the rerun
    (not empty) and --resume (the corrected setting)."""
    from fewshot.train.supervised import plan_training_batches

    if plan_training_batches(cfg, train_set, 0):  # the later rounds add pseudo-labelled images, never fewer
        return
    bs, n = cfg["train"]["batch_size"], len(train_set)
    if bs < 2:
        raise UserError(f"train.batch_size={bs}: BatchNorm needs at least 2 images per batch in training; use 2 "
                        f"or more.")
    if cfg["data"]["sampler"] == "grouped":
        raise UserError("data.sampler=grouped keeps each dataset's batches apart, and no dataset has 2 training "
                        "images (BatchNorm cannot train on 1): use data.sampler=shuffle or add training images.")
    raise UserError(f"{n} training image{'s give' if n != 1 else ' gives'} no batch of at least 2 images, which "
                    f"BatchNorm needs in training: add training images.")
