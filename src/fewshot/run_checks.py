"""The start-up checks of `fewshot run`, before its run folder is started: the image size chosen for the images
(auto_img_size), the model built once (check_model), the MoCo batch against its queue (check_pretrain_settings),
the pool decoded as the stages will (check_pool_images), the labelled images decoded (preload_images) and the
fine-tuning batches planned (check_finetune_batches). Found by a stage instead, each of these left a started folder
that neither a rerun nor --resume could use."""

from __future__ import annotations

import copy

import torch

from fewshot.data.cache import default_cache_dir
from fewshot.errors import DataLayoutError, UserError


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


def check_pool_images(cfg: dict, infos, semi: str) -> tuple[list[tuple[str, str]], int | None]:
    """Decode the pool as the MoCo and FixMatch stages will (their cache entries), before the run folder is
    started: a broken file under data.skip_bad_unlabeled=false stopped those stages in a started folder that
    a rerun then refused. Returns the files left out and the images MoCo can use (None: no MoCo); the images
    are not kept (only the cache is)."""
    from fewshot.data.cache import load_images
    from fewshot.data.pool import pool_paths
    from fewshot.train.semi import POOL_SKIP_NOTE, pool_files

    d = cfg["data"]
    # MoCo decodes whole images (crop 1.0) of its pool, where train images stand in for a dataset without one;
    # FixMatch decodes as fine-tuning does (data.crop_pct) and only real pool images (the cache entry it reads)
    jobs = ([("moco", 1.0, pool_paths(cfg, infos)[0])] if cfg["run"]["pretrain"] else []) + \
        ([("fixmatch", d["crop_pct"], pool_files(cfg, infos, exclude_train=True)[0])] if semi == "fixmatch" else [])
    skipped, n_moco, seen = [], None, set()
    for stage, crop, paths in jobs:
        cached = load_images(paths, cfg["model"]["img_size"], default_cache_dir(d["root"], d["cache_dir"]),
                             crop_pct=crop, skip_bad=d["skip_bad_images"] or d["skip_bad_unlabeled"],
                             desc="loading unlabeled pool", skip_note=POOL_SKIP_NOTE, max_gb=d.get("cache_max_gb"),
                             bit_depth=d.get("bit_depth", "auto"))
        skipped += [b for b in cached.bad if b[0] not in seen]
        seen.update(b[0] for b in cached.bad)
        if stage == "moco":
            n_moco = int(cached.valid.sum())
        del cached
    return skipped, n_moco


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
