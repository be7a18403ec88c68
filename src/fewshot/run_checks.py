"""The start-up checks of `fewshot run`, before its run folder is started: the image size chosen for the images
(auto_img_size), the model built once (check_model), the MoCo batch against its queue (check_pretrain_settings),
the pool decoded as the stages will (check_pool_images), the labelled images decoded (preload_images) and the
fine-tuning batches planned (check_finetune_batches). Found by a stage instead, each of these left a started folder
that neither a rerun nor --resume could use."""

from __future__ import annotations

import contextlib
import copy
import math
import re
import time

import torch

from fewshot.data.cache import default_cache_dir, kept_rows_at
from fewshot.data.fit import fit_of
from fewshot.errors import DataLayoutError, UserError
from fewshot.utils import loads_run_json


# docs/recipes.md: at a 3-minute budget on CPU 64 px scored below 32 (4x the cost per step, fewer epochs); 64 px
# gained at 5 minutes on 56-px images
CPU_64PX_MIN_MINUTES = 5.0
# the most times the pixels of its own size that `fewshot run` moves to a size the model takes: 4x the side keeps
# inception_v3's 96 px for 32-px images (9x: it needs 75 px); efficientformer_l1's 224 px (49x) decoded 616 MB of
# the digits and timed 71 s steps on CPU before the budget refused it, so beyond it the run is refused at once
MOVE_MAX_PIXELS = 16.0


def auto_img_size(infos, device: torch.device, budget_minutes: float, model_cfg: dict | None = None,
                  fit="crop") -> tuple[int, str]:
    """The image size for these images, device and budget, and why, for the line that reports it (images_size),
    made one the model of ``model_cfg`` takes (model_size): vit_small_patch14_dinov2 was given 32 px, then refused
    the run's own choice ("cannot take 32 px inputs")."""
    size, why = images_size(infos, device, budget_minutes, fit)
    return model_size(model_cfg, size, why) if model_cfg else (size, why)


def run_img_size(cfg: dict, infos, device: torch.device, budget_minutes: float) -> tuple[int, str]:
    """`fewshot run`'s image size where none was given: auto_img_size for the crop or pad each dataset gets at that
    size. Chosen first for auto's choices without a size (no bound), 1600x32 strips were sized by their long side
    (160 px on GPU), then cropped at that size for the bound (aspect.MIN_PADDED_SIDE) and upscaled 5x (review rev91
    #3); where the bound changes a choice, the size is chosen again for the crops. auto's choices are not recorded
    here: settle_fit records them at the size."""
    fit = _fit_at(cfg, infos, None)
    size, why = auto_img_size(infos, device, budget_minutes, cfg["model"], fit)
    bounded = _fit_at(cfg, infos, size)
    if bounded != fit:  # a smaller size crops what it cropped at this one: the bound holds at the new size
        size, why = auto_img_size(infos, device, budget_minutes, cfg["model"], bounded)
    return size, why


def _fit_at(cfg: dict, infos, size: int | None):
    """fit_of at image size ``size`` on a copy of ``cfg``'s record (the run's own is left as it is), with the
    choices the --weights file records that settle_fit takes later (a size chosen for auto's letterbox of a file's
    crop)."""
    from fewshot.config.recorded import RESIZE_RECORD, resize_record
    from fewshot.data.weights_resize import pending_choices

    record = {**pending_choices(cfg, infos, size), **resize_record(cfg, "the run's config")}
    return fit_of({**cfg, "model": {**cfg["model"], "img_size": size}, RESIZE_RECORD: record}, infos)


def model_size(model_cfg: dict, size: int, why: str) -> tuple[int, str]:
    """The run's own ``size`` where the model takes it (or a meta try cannot tell: check_model decides), else a
    multiple of its patch next to it that it takes (the smaller first), else the nearest size it takes up to
    MOVE_MAX_PIXELS times the pixels (inception_v3 at 32 px was refused, naming 96 px, though the user typed no
    --img-size to change). Beyond that, or where no size near it could be confirmed, refused at once. The why
    says the size was moved instead of "--img-size to change" (a fixed-size model takes no other)."""
    from fewshot.models.input_sizes import patch_size, patch_sizes, size_problem, sizes_taken

    name, options = model_cfg.get("name"), size_options(model_cfg)
    takes, problem = size_problem(name, size, options) if name else (None, None)
    if takes is not False:
        return size, why
    patch = patch_size(name, size, options)
    off_grid = bool(patch) and size % patch != 0  # the patch rule refused it (else a forward failed)
    near = patch_sizes(name, size, patch, options) if off_grid else sizes_taken(name, size, options)
    around = [s for s in near if abs(s - size) < patch] if off_grid else []  # the multiples of the patch around it
    grounds = re.split(r"[:;]", why)[0]  # "chosen for these images and device", without its advice
    if around:  # the smaller where it works: the size was chosen for the budget
        return min(around), (f"{grounds} at {size} px, then {min(around)} px: {name}'s patches are {patch} px; "
                             f"--img-size to change")
    chosen = min(near, key=lambda s: (abs(s - size), s)) if near else None  # ties: the smaller, as for the budget
    pixels = (chosen / size) ** 2 if chosen else 0.0
    if chosen and pixels <= MOVE_MAX_PIXELS:
        return chosen, (f"{grounds} at {size} px, then {chosen} px: the nearest size {name} takes ({pixels:.3g}x "
                        f"the pixels)")
    own = f"{problem}; {size} px was `fewshot run`'s own choice ({grounds}), as no --img-size was given"
    if chosen:  # efficientformer_l1 (224 px only) at 32 px: 49x; decoded at 224 px, then refused on the budget
        raise UserError(f"{own}, and the nearest size it takes, {chosen} px, has {pixels:.3g}x the pixels (`fewshot "
                        f"run` moves its own choice up to {MOVE_MAX_PIXELS:g}x). Give --img-size "
                        f"{' or '.join(str(s) for s in sorted(near))} (checked to work).")
    raise UserError(f"{own}, and no size near it could be confirmed to work. Give --img-size N (see `fewshot models "
                    f"{name}` for its default size).")


def size_options(model_cfg: dict) -> dict:
    """create_backbone's options of ``model_cfg`` but its size, for the meta tries of input_sizes at other sizes."""
    from fewshot.models.backbone import backbone_options

    return {k: v for k, v in backbone_options(model_cfg).items() if k != "img_size"}


def images_size(infos, device: torch.device, budget_minutes: float, fit="crop") -> tuple[int, str]:
    """The image size for these images, device and budget, and why. Small native images (digits, MNIST-like)
    train at 32 px; larger ones at 160 on GPU, and on CPU at 64 px from CPU_64PX_MIN_MINUTES of budget, else at 32
    (at 64 px a short budget buys too few steps). A side is the short one where the images are cropped, the long
    one where padded (``fit``: fit.fit_of's): the letterbox scales that one to the size, and 40x100 images chosen
    32 px by their short side showed their content at 13x32 px (review rev87 #5)."""
    from fewshot.data.aspect import header_sizes, sample_paths

    sides = []
    for info in infos:
        paths = sample_paths(info)
        padded = (fit if isinstance(fit, str) else fit.of(paths[0]) if paths else "crop") == "pad"
        sides += [max(s) if padded else min(s) for s in header_sizes(paths)]
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


def check_pool_images(cfg: dict, infos, semi: str, moco_limit: int | None = None, cold: list | None = None,
                      fixmatch_limit: int | None = None) -> tuple[list[tuple[str, str]], int | None]:
    """Decode the pool as the MoCo and FixMatch stages will (their cache entries), before the run folder is
    started: a broken file under data.skip_bad_unlabeled=false stopped those stages in a started folder that
    a rerun then refused. Returns the files left out and the images MoCo can use (None: no MoCo); the images
    are not kept (only the cache is). ``moco_limit``: MoCo's seeded random share of its pool (moco_decode_limit);
    ``cold``: gets each decode the cache did not hold and now does (note_cold_decode: a slow start's refusal);
    ``fixmatch_limit``: FixMatch's share of its pool (fixmatch_decode_limit)."""
    from fewshot.data.cache import load_images
    from fewshot.data.pool import pool_paths
    from fewshot.train.semi import POOL_SKIP_NOTE

    skipped, n_moco, d = [], None, cfg["data"]
    if cfg["run"]["pretrain"]:  # MoCo decodes whole images (crop 1.0) of its pool, train images standing in
        paths = moco_pool_share(cfg, pool_paths(cfg, infos)[0], moco_limit)
        cached = _timed_decode(cfg, paths, 1.0, None, cold, lambda: load_images(
            paths, cfg["model"]["img_size"], default_cache_dir(d["root"], d["cache_dir"]), crop_pct=1.0,
            skip_bad=d["skip_bad_images"] or d["skip_bad_unlabeled"], desc="loading unlabeled pool",
            skip_note=POOL_SKIP_NOTE, max_gb=d.get("cache_max_gb"), bit_depth=d.get("bit_depth", "auto"),
            # digests kept for a later torchrun start, whose ranks compare them (next to free here)
            entry_digests=True, resize=fit_of(cfg, infos)))
        skipped, n_moco = list(dict.fromkeys(cached.bad)), int(cached.valid.sum())
        del cached
    if semi == "fixmatch":
        skipped = joined_skips(skipped, check_fixmatch_images(cfg, infos, fixmatch_limit, cold))
    return skipped, n_moco


def check_fixmatch_images(cfg: dict, infos, limit: int | None = None, cold: list | None = None) -> list:
    """FixMatch's pool decoded as its stage reads it (data.crop_pct, only real pool images: semi.pool_images, rows
    of MoCo's entry where it holds them), its seeded share ``limit`` only (semi.share_positions: a MocoFirst one
    inside MoCo's share first); returns the files left out."""
    from fewshot.train.semi import moco_entry_paths, moco_limit_of, pool_files, pool_images, share_positions

    paths = pool_files(cfg, infos, exclude_train=True)[0]
    subset = share_positions(cfg, infos, paths, limit)
    paths = paths if subset is None else [paths[i] for i in subset.tolist()]
    moco = moco_limit_of(limit)
    cached = _timed_decode(cfg, paths, cfg["data"]["crop_pct"], moco_entry_paths(cfg, infos, moco), cold,
                           lambda: pool_images(cfg, infos, paths, cfg["model"]["img_size"], moco))
    return list(cached.bad)


def _timed_decode(cfg: dict, paths: list, crop: float, within, cold: list | None, load):
    """``load()``, its time added to ``cold`` where the cache did not hold ``paths`` before (note_cold_decode)."""
    was_cold, t0 = not pool_is_cached(cfg, paths, crop, within), time.monotonic()
    cached = load()
    if was_cold and cold is not None:
        note_cold_decode(cfg, cold, time.monotonic() - t0, paths, crop, within)
    return cached


def joined_skips(skipped: list, more: list) -> list:
    """The files left out of two pools, each once (MoCo's and FixMatch's share pool files)."""
    seen = {b[0] for b in skipped}
    return skipped + [b for b in dict.fromkeys(more) if b[0] not in seen]


def pool_is_cached(cfg: dict, paths: list, crop: float, within: list | None = None) -> bool:
    """Whether the decode cache holds ``paths`` as the pool decodes them: a decode that was not cached is timed for
    the refusal of a slow start (hopeless_budget_error), which the same command's rerun no longer pays. ``within``:
    a longer list decoded at crop 1.0 (MoCo's pool: semi.moco_entry_paths) whose entry holds them as well."""
    from fewshot.data.cache import is_cached, rows_of_entry

    d = cfg["data"]
    size, depth = cfg["model"]["img_size"], d.get("bit_depth", "auto")
    cache = default_cache_dir(d["root"], d["cache_dir"])
    fit = fit_of(cfg)
    return (not paths or is_cached(paths, size, cache, crop, depth, fit)
            or (within is not None and rows_of_entry(paths, size, cache, within, 1.0, depth, fit) is not None))


def note_cold_decode(cfg: dict, cold: list, seconds: float, paths: list, crop: float,
                     within: list | None = None) -> None:
    """Add a decode the cache did not hold to ``cold`` as (seconds, files, their paths), only where the cache holds
    it now: the refusal says "they are cached now: run the same command again", which was false without a cache
    folder or after a failed write (the rerun decoded them all again)."""
    if pool_is_cached(cfg, paths, crop, within) and paths:
        cold.append((seconds, len(paths), frozenset(map(str, paths))))


def cold_decode_total(cold: list) -> list[tuple[float, int]]:
    """The start-up's cold decodes as hopeless_budget_error takes them: [(seconds, files)], each file counted once
    (MoCo's and self-training's pools share the files of a dataset's pool, decoded at two crops)."""
    if not cold:
        return []
    return [(sum(c[0] for c in cold), len(frozenset().union(*(c[2] for c in cold))))]


def moco_pool_share(cfg: dict, paths: list, limit: int | None) -> list:
    """MoCo's (or FixMatch's) pool files: all of them, or the seeded random ``limit`` of them (semi.pool_subset, in
    the pool's order) that start-up decoded and the stage trains on, the same files in every session of the run."""
    from fewshot.train.semi import pool_subset

    subset = pool_subset(len(paths), limit, int(cfg["train"]["seed"]))
    return list(paths) if subset is None else [paths[i] for i in subset.tolist()]


def recorded_moco_limit(data: dict) -> int | None:
    """The MoCo pool share a run's state records (moco_pool_decoded; None: the whole pool, also for a state from a
    version without it, which decoded the whole pool): the MoCo stage and a resumed start-up take it from there."""
    return recorded_limit(data, "moco_pool_decoded")


def recorded_limit(data: dict, field: str) -> int | None:
    """A pool share a run's state records under ``field`` (moco_pool_decoded, fixmatch_pool_decoded); None: the
    whole pool, also for a state from a version without the field, which decoded the whole pool. FixMatch's is a
    semi.MocoFirst where the state says it was drawn inside MoCo's share first (recorded_share)."""
    value = data.get(field)
    limit = value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
    return limit if field == "moco_pool_decoded" else recorded_share(data, limit)


MOCO_FIRST_FIELD = "pool_shares_moco_first"  # run_state.json: self-training's and FixMatch's shares are MocoFirst


def recorded_share(data: dict, limit: int | None):
    """Self-training's or FixMatch's recorded share ``limit`` as its first session drew it: inside MoCo's capped
    share first (semi.MocoFirst) where the state says so, else the pool's seeded order (a state from before)."""
    from fewshot.train.semi import MocoFirst

    moco = recorded_moco_limit(data)
    if limit is None or moco is None or data.get(MOCO_FIRST_FIELD) is not True:
        return limit
    return MocoFirst(limit, moco)


def share_source(cfg: dict, infos, paths: list,
                 moco_limit: int | None) -> tuple[list | None, torch.Tensor | None, frozenset[int]]:
    """Where self-training's or FixMatch's share of their pool ``paths`` comes from: the list whose cache entry MoCo's
    check wrote (semi.moco_entry_paths; None at another crop, whose pixels it does not hold), and where MoCo decoded
    only its seeded share of ``moco_limit`` files, the order the share is drawn in (semi.share_order: the files
    inside MoCo's share first) and the positions in ``paths`` of those its entry holds decoded (read from it, they
    cost no decoding: their count is cold_pool_limit's ``free``; handed on so that the entry is read once, review
    rev113 #2); else None and none (pool_subset's order)."""
    from fewshot.train.semi import moco_entry_paths, share_order

    within = moco_entry_paths(cfg, infos, moco_limit)
    if within is None or moco_limit is None:
        return within, None, frozenset()
    order, inside = share_order(paths, int(cfg["train"]["seed"]), within)
    head = order[:inside].tolist()
    return within, order, frozenset(head[i] for i in _held_at(cfg, [paths[i] for i in head], within))


def _held_at(cfg: dict, paths: list, within: list) -> set[int]:
    """The positions in ``paths`` (the pool files inside MoCo's share) whose rows MoCo's entry of ``within`` holds
    decoded (at crop 1.0, its own): a failure it recorded is no image (a broken one is not decoded again either),
    and an entry never written (a failed cache write) holds none, so those were counted as read from it though they
    were decoded (review rev80)."""
    from fewshot.data.cache import rows_held_at

    d = cfg["data"]
    return rows_held_at(paths, cfg["model"]["img_size"], default_cache_dir(d["root"], d["cache_dir"]), within, 1.0,
                        d.get("bit_depth", "auto"), fit_of(cfg))


def moco_first_limit(limit: int | None, paths: list, moco_limit: int | None, order) -> int | None:
    """The share ``limit`` of ``paths`` (None: all) as loaded and recorded where it is drawn inside MoCo's share first
    (``order`` from share_source): a semi.MocoFirst, the whole pool too (its rows MoCo decoded are copied, not
    decoded again); else ``limit`` as it is."""
    from fewshot.train.semi import MocoFirst

    if order is None or moco_limit is None or not paths:
        return limit
    return MocoFirst(len(paths) if limit is None else limit, moco_limit)


def say_cold_share(whose: str, n: int, limit: int | None, reused: bool, whole: str, free: int, uses: str) -> None:
    """The line of a cold pool decoded only in part (MoCo's, FixMatch's, self-training's, ``whose``): an earlier
    run's share reused, or the share decoded now (share_words); nothing where the whole pool is used."""
    if limit is None:
        return
    if reused:
        print(f"[run] {whose} {n:,} pool images are not in the decode cache, but a seeded random {limit:,} of them "
              f"are (an earlier run's): {uses} ({whole})", flush=True)
    else:
        print(f"[run] {whose} {n:,} pool images are not in the decode cache: {whole}; {share_words(limit, free)}, "
              f"{uses}", flush=True)


def share_words(limit: int, free: int) -> str:
    """How a cold pool's share of ``limit`` files is had: decoded, or where ``free`` files lead its order (inside
    MoCo's share, share_source) partly or wholly read from MoCo's cache entry."""
    inside = min(free, limit)
    if not inside:
        return f"decoding a seeded random {limit:,} of them"
    rest = f"decoding the other {limit - inside:,}" if limit > inside else "decoding none"
    return f"a seeded random {limit:,} of them, the {inside:,} MoCo decoded read from its cache entry and {rest}"


# of MoCo's share of the budget (run.pretrain_share), what decoding its cold pool may take: a 10k-file pool of
# 768 px PNGs took 59 s of a 1-minute run, which then ran 72 s and was refused (hunt hBK)
MOCO_DECODE_SHARE = 0.25
FIXMATCH_DECODE_SHARE = 0.25  # of the fine-tuning's time, what decoding FixMatch's cold pool may take (as MoCo's)
DECODE_SAMPLE = 256  # the pool files whose decoding is timed (MoCo's and self-training's, cold_pool_limit)
TIMING_FIRST = 32  # of them, timed first: a budget that cannot hold the rest, and the least share, is refused there


def moco_decode_limit(cfg: dict, infos, budget_s: float, n: int | None = None, refuse=None) -> int | None:
    """How many of MoCo's pool files `fewshot run --pretrain` decodes: all (None) when the decode cache holds them
    or decoding them takes at most a quarter of MoCo's share of the budget; else a seeded random share that fits
    (two MoCo batches and ``n`` at least), as self-training's (run_pseudo.pool_decode_limit): cold_pool_limit."""
    from fewshot.data.pool import pool_paths

    r, n = cfg["run"], n or DECODE_SAMPLE
    share = float(r["pretrain_share"]) * budget_s
    paths, seconds = pool_paths(cfg, infos)[0], MOCO_DECODE_SHARE * share
    limit, whole, reused = cold_pool_limit(cfg, paths, 1.0, seconds, max(n, 2 * int(r["pretrain_batch_size"])), n,
                                           refuse)
    whole += f" (a quarter of MoCo's {share:.0f} s share of the budget)"
    say_cold_share("MoCo's", len(paths), limit, reused, whole, 0, "the pool MoCo trains on")
    return limit


def fixmatch_decode_limit(cfg: dict, infos, budget_s: float, n: int | None = None, refuse=None,
                          moco_limit: int | None = None) -> int | None:
    """How many of FixMatch's pool files `fewshot run` decodes and FixMatch trains on: all (None) when the decode
    cache holds them (its own entry or MoCo's) or decoding them takes at most a quarter of the fine-tuning's time
    (the budget after MoCo's share); else a seeded random share that fits (one step's unlabeled images and ``n`` at
    least): cold_pool_limit, as MoCo's and self-training's. A cold 10k-file pool was decoded whole before planning.
    ``moco_limit``: MoCo decoded only that share of its pool, so FixMatch's is drawn inside it first (a
    semi.MocoFirst: share_source, moco_first_limit)."""
    from fewshot.train.semi import pool_files

    r, n = cfg["run"], n or DECODE_SAMPLE
    share = (1.0 - float(r["pretrain_share"]) if r["pretrain"] else 1.0) * budget_s
    paths, seconds = pool_files(cfg, infos, exclude_train=True)[0], FIXMATCH_DECODE_SHARE * share
    floor = max(n, int(cfg["semi"]["mu"]) * int(cfg["train"]["batch_size"]))
    within, order, held = share_source(cfg, infos, paths, moco_limit)
    limit, whole, reused = cold_pool_limit(cfg, paths, cfg["data"]["crop_pct"], seconds, floor, n, refuse, within,
                                           order, held)
    whole += f" (a quarter of the fine-tuning's {share:.0f} s of the budget)"
    say_cold_share("FixMatch's", len(paths), limit, reused, whole, len(held), "the pool FixMatch trains on")
    return moco_first_limit(limit, paths, moco_limit, order)


def cold_pool_limit(cfg: dict, paths: list, crop: float, seconds: float, floor: int, n: int,
                    refuse=None, within: list | None = None, order=None,
                    held: frozenset[int] = frozenset()) -> tuple[int | None, str, bool]:
    """How many of a pool's ``paths`` a run decodes at ``crop`` (MoCo's and self-training's, one rule): all (None)
    when the cache holds them or decoding them fits ``seconds`` (the timing's own seconds out of them), else a
    seeded random share that fits (semi.pool_subset, ``floor`` at least). An earlier run's share the cache holds is
    reused where at least half as large, before any timing where an earlier timing is recorded (a warm rerun paid
    the timing again). Timed on the tail of the seeded order, outside the share (its head): the sample was decoded
    twice. ``refuse(seconds, files)``: raises where the least share cannot fit the time left (checked after the
    first TIMING_FIRST files and after the timing). ``within``: pool_is_cached's (MoCo's entry may hold them all).
    ``order``, ``held``: share_source's (the shares' order, led by the ``free`` files at positions ``held`` that
    MoCo's entry holds, which cost no decoding: _free_share). The rows a stopped decode of the whole pool kept cost
    none either, those not among the ``held`` ones (_kept_count), for the whole pool only (a share is another list
    of files). Returns (the count, its words: of the files neither holds, whether reused)."""
    if len(paths) <= 2 * floor or pool_is_cached(cfg, paths, crop, within):
        return None, "", False
    free, kept = len(held), _kept_count(cfg, paths, crop, held)
    if len(paths) - kept <= 2 * floor:
        return None, "", False
    record = _subsets_record(cfg, paths, crop)
    rate = _recorded_rate(record)
    share_of = _share_of(cfg, paths, order)
    if rate is not None:
        limit = _free_share(len(paths), seconds, rate, floor, free, kept)
        if limit is None:  # the whole pool fits at the recorded rate: no earlier share (review rev74)
            return None, "", False
        reused = limit if limit <= free else _earlier_share(cfg, share_of, len(paths), crop, record, limit, within,
                                                            free)
        if reused is not None:
            words = _whole_words(len(paths), rate, "timed by an earlier run", seconds, "", kept, free)
            return reused, words, reused > free
    rate, timed_s = _timed_rate(cfg, paths, crop, n, max(0, floor - free), refuse, order)
    _record_rate(record, rate)
    left = max(0.0, seconds - timed_s)  # the timing is decoding too
    words = _whole_words(len(paths), rate, f"timed on {n} in {timed_s:.1f} s", seconds, ", the timing included",
                         kept, free)
    limit = _free_share(len(paths), left, rate, floor, free, kept)
    if limit is None:
        return None, words, False
    if limit <= free:  # inside MoCo's share: nothing to decode (nor to list as a share decoded)
        return limit, words, False
    reused = _earlier_share(cfg, share_of, len(paths), crop, record, limit, within, free)
    if reused is None and record is not None:
        with contextlib.suppress(OSError):
            from fewshot.data.cache import add_to_subsets_record

            add_to_subsets_record(record, limit)
    return (limit, words, False) if reused is None else (reused, words, True)


def _share_of(cfg: dict, paths: list, order=None):
    """The files of ``paths`` a share of m takes (in the pool's order): the head of ``order``, else of the pool's
    seeded order (semi.pool_subset's)."""
    from fewshot.train.semi import pool_subset

    def share(m: int) -> list:
        head = (pool_subset(len(paths), m, int(cfg["train"]["seed"])) if order is None
                else order[:m].sort().values)
        return [paths[i] for i in head.tolist()]

    return share


def _free_share(n_pool: int, seconds: float, per_file: float, floor: int, free: int = 0, kept: int = 0) -> int | None:
    """The share of a pool of ``n_pool`` files that ``seconds`` decode at ``per_file`` (``floor`` at least), None:
    the whole pool; its ``free`` files (read from MoCo's entry, share_source) take no time: the whole pool where the
    rest fits, else they and the share the time buys of the rest. They were charged as decoded: FixMatch trained on
    644 files where the time held about 1,800 (review rev80). ``kept``: rows a stopped decode of the whole pool
    kept, none of them among the ``free`` ones (_kept_count): free for the whole pool alone."""
    if per_file * (n_pool - free - kept) <= seconds:
        return None
    return min(n_pool, free + _share_size(seconds, per_file, max(0, floor - free)))


def _share_size(seconds: float, per_file: float, floor: int) -> int:
    """The files ``seconds`` decode at ``per_file``, ``floor`` at least."""
    return max(floor, int(seconds / max(per_file, 1e-9)))


# the files _whole_words counts, by (any kept by a stopped decode, any MoCo's entry holds)
_LEFT_WORDS = {(True, False): "that an earlier, stopped decode did not keep",
               (False, True): "that MoCo's entry does not hold",
               (True, True): "that neither MoCo's entry nor an earlier, stopped decode holds"}


def _whole_words(files: int, per_file: float, timed: str, seconds: float, included: str, kept: int = 0,
                 free: int = 0) -> str:
    """The words on a cold pool too slow to decode whole in ``seconds`` (``included``: the timing is part of them),
    of the files still to decode: not the ``kept`` ones a stopped decode kept, nor the ``free`` ones MoCo's entry
    holds (none of them kept: _kept_count). They counted the kept rows MoCo's entry holds as to decode, 8 s where 4
    were left (review rev113 #1)."""
    left = files - kept - free
    them = _LEFT_WORDS.get((kept > 0, free > 0))
    them = f"the {left:,} of them {them}" if them else "them all"
    return (f"decoding {them} would take about {per_file * left:.0f} s ({per_file * 1000:.1f} ms each, "
            f"{timed}), more than the {seconds:.0f} s that decoding may take{included}")


def _kept_count(cfg: dict, paths: list, crop: float, held: frozenset[int] = frozenset()) -> int:
    """How many of the pool's ``paths`` a stopped decode of them at ``crop`` kept in the cache (load_images copies
    them, not decoding them again), those at the positions ``held`` (share_source's, counted as ``free``) left out:
    a Ctrl-C at 90 % of a pool's decode was estimated as the whole pool again, and rows kept before MoCo's entry was
    written (a run without --pretrain, another budget's share) were subtracted twice (review rev111 #1)."""
    d = cfg["data"]
    kept = kept_rows_at(paths, cfg["model"]["img_size"], default_cache_dir(d["root"], d["cache_dir"]), crop,
                        d.get("bit_depth", "auto"), fit_of(cfg))
    return len(kept - held)  # the same files, by position: read from one of the two, not both


def _timed_rate(cfg: dict, paths: list, crop: float, n: int, floor: int, refuse=None,
                order=None) -> tuple[float, float]:
    """Seconds per file of decoding ``n`` of the pool's files (the tail of its seeded order, or of ``order``: every
    dataset of the pool, outside the share), and the seconds the timing took. ``refuse`` is asked first after
    TIMING_FIRST files (with the rest of the sample and the least share to decode: ``floor`` files), then with the
    least share alone (where it decodes any)."""
    from fewshot.data import decode_many

    d, t0 = cfg["data"], time.monotonic()
    if order is None:
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(int(cfg["train"]["seed"])))
    sample = [paths[i] for i in order[len(paths) - n:].tolist()]
    first, rest = sample[:TIMING_FIRST], sample[TIMING_FIRST:]

    def spent(part: list) -> float:
        return len(part) * decode_many.decode_seconds_per_image(part, cfg["model"]["img_size"], crop,
                                                                bit_depth=d.get("bit_depth", "auto"),
                                                                resize=fit_of(cfg))

    first_s = spent(first)
    rate = first_s / len(first)
    if refuse is not None:
        refuse(rate * (len(rest) + floor), len(rest) + floor)  # the count the seconds are of (review rev74)
    if rest:
        rate = (first_s + spent(rest)) / len(sample)
        if refuse is not None and floor:
            refuse(rate * floor, floor)
    return rate, math.floor(10 * (time.monotonic() - t0)) / 10  # in tenths of a second: the words say no finer


def _subsets_record(cfg: dict, paths: list, crop: float):
    """cache.subsets_record of a pool decoded at ``crop``: the sizes of its seeded shares decoded before."""
    from fewshot.data.cache import subsets_record

    d = cfg["data"]
    return subsets_record(paths, cfg["model"]["img_size"], default_cache_dir(d["root"], d["cache_dir"]), crop,
                          int(cfg["train"]["seed"]), d.get("bit_depth", "auto"), fit_of(cfg))


def _earlier_share(cfg: dict, share_of, n_pool: int, crop: float, record, limit: int, within: list | None = None,
                   free: int = 0) -> int | None:
    """An earlier run's share of the pool that the cache holds, at least half of ``limit``: the timing varies from
    run to run (564 to 972 files for the same time), and each new count decoded another share into a cache entry.
    ``share_of(m)``: the files of a share of m of the ``n_pool`` files (_share_of); ``within``, ``free``:
    cold_pool_limit's (a share of no more than ``free`` files is MoCo's, not an earlier run's)."""
    sizes: list[int] = []
    if record is not None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            sizes = sorted({int(m) for m in loads_run_json(record.read_text())}, reverse=True)
    for m in (m for m in sizes if limit / 2 <= m < n_pool and m > free):
        if pool_is_cached(cfg, share_of(m), crop, within):
            return m
    return None


def _rate_file(record):
    """Where the decoding rate timed on a pool is kept, beside its subsets record (None: no cache folder)."""
    return None if record is None else record.with_name(record.name.split(".seed")[0] + ".decode_rate.json")


def _recorded_rate(record) -> float | None:
    """The seconds per file an earlier run timed on this pool, or None."""
    path = _rate_file(record)
    if path is None:
        return None
    with contextlib.suppress(OSError, ValueError, TypeError):
        rate = float(loads_run_json(path.read_text()))
        return rate if 0 < rate < float("inf") else None
    return None


def _record_rate(record, rate: float) -> None:
    """Keep the timed rate for a warm rerun, which then finds its share without timing again."""
    from fewshot.data.cache import _write_cache_text

    path = _rate_file(record)
    if path is not None and 0 < rate < float("inf"):
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_cache_text(path, repr(float(rate)))


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
    labelled train ImageSet (its epoch plan is checked before the run folder is started), and the val and test
    images' digests (sets.held_out_digests: the pool's copies of them are warned of)."""
    from fewshot.data.label_space import LabelSpace
    from fewshot.data.sets import held_out_digests, load_splits, warn_split_copies
    from fewshot.eval.model_data import prediction_cache_dir, warn_about_blank_test_images

    d, size, space = cfg["data"], cfg["model"]["img_size"], LabelSpace.from_infos(infos)
    problems, hints, skipped, test_set, train_set, val_set = [], [], [], None, None, None
    for splits, cache, sources in ((("train", "val"), default_cache_dir(d["root"], d["cache_dir"]), infos),
                                   (("test",), prediction_cache_dir(d["root"]), test_infos)):
        try:
            sets = load_splits(sources, splits, space, size, cache, d["crop_pct"], d["skip_bad_images"],
                               d.get("cache_max_gb"), d.get("bit_depth", "auto"),
                               fit_of(cfg, [*infos, *test_infos]))
        except DataLayoutError as exc:
            problems += exc.problems
            hints = list(dict.fromkeys(hints + exc.hints))
            continue
        skipped += [bad for one in sets for bad in one.skipped]
        test_set = sets[0] if splits == ("test",) else test_set
        train_set, val_set = sets if splits == ("train", "val") else (train_set, val_set)
    if problems:
        raise DataLayoutError(problems, hints)
    warn_about_blank_test_images(test_set)
    warn_split_copies(train_set, {"test": test_set}, space)  # val's were said by load_splits
    return test_set, skipped, train_set, held_out_digests({"val": val_set, "test": test_set})


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
