"""FixMatch-style use of the unlabeled pool during fine-tuning (Sohn et al. 2020).

A weak view of each unlabeled image gives a pseudo-label (softmax restricted to the image's
dataset when the pool folder tells it); the strong view is trained towards it when the
confidence clears the threshold. Views come from the batched tensor augmentation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from fewshot.data.augment import BatchAugment, preset
from fewshot.data.cache import default_cache_dir, load_images
from fewshot.data.image_rows import ImageRows
from fewshot.utils import make_generator


class Pool(NamedTuple):
    images: ImageRows  # uint8 [N, 3, S, S]: rows of the decode cache, read only when indexed
    dataset_ids: torch.Tensor  # [N], -1: unknown source
    paths: list[str]  # [N], the files the images were decoded from
    source: str  # where the pool came from, in words
    skipped: list[tuple[str, str]] = []  # undecodable files left out (path, reason): for skipped_images.json
    digests: list[str | None] | None = None  # each image's image_digest (read_pool's ``digests``), else None


def pool_files(cfg: dict, infos, exclude_train: bool = False) -> tuple[list[Path], list[int], str]:
    """The pool's files, their dataset ids (-1: unknown source) and where they came from, in words.
    ``exclude_train``: leave out the labelled train and val images (a dataset without a pool falls back to its
    train images, which MoCo may use but pseudo-labels may not; a val image trained on would inflate the val
    score that picks checkpoints)."""
    from fewshot.data.layout import real_paths
    from fewshot.data.pool import pool_with_sources

    paths, ids, source, stand_ins = pool_with_sources(cfg, infos)
    if exclude_train:
        labelled = set(real_paths(p for info in infos for p, _ in list(info.train) + list(info.val)))
        keep = [i for i, real in enumerate(real_paths(paths)) if real not in labelled]
        # the stand-in train images of a dataset without a pool are no pool images: only real pool files count
        # as dropped (data.unlabeled=ROOT/digits/train lost all 100 images while the error said "give
        # data.unlabeled=DIR", which the user had done)
        kept = set(keep)
        dropped = sum(1 for i in range(len(paths)) if i not in kept and ids[i] not in stand_ins)
        paths, ids = [paths[i] for i in keep], [ids[i] for i in keep]
        # a dataset without a pool stands in its train images for MoCo; here none of them is used
        source = source.replace(": train images", ": no pool (its train images are labelled)")
        if dropped:
            source += (f"; {'all ' if not paths else ''}{dropped:,} of the pool's images left out as labelled "
                       f"train or val images (they are trained on with their labels, and val picks checkpoints)")
    return paths, ids, source


def pool_subset(n_pool: int, limit: int | None, seed: int) -> torch.Tensor | None:
    """A seeded random ``limit`` of ``n_pool`` files (sorted positions), or None for all of them."""
    if limit is None or limit >= n_pool:
        return None
    return torch.randperm(n_pool, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


class MocoFirst(int):
    """A pool share's file count (load_pool's ``limit``) where `fewshot run` decoded only a seeded share of ``moco``
    files of MoCo's pool: the share takes the real pool files inside MoCo's share first (share_positions), whose rows
    MoCo's cache entry holds, and decodes only the others. Self-training and FixMatch drew shares of their own,
    and decoded again the files MoCo had (review rev76). A count wherever one is read; run_state.json records the
    count, and its pool_shares_moco_first says the share was drawn so (run_checks.recorded_share)."""

    moco: int

    def __new__(cls, files: int, moco: int):
        share = super().__new__(cls, files)
        share.moco = int(moco)
        return share

    def __reduce__(self):  # a copy keeps MoCo's share
        return MocoFirst, (int(self), self.moco)

    def __repr__(self) -> str:
        return f"MocoFirst({int(self)}, moco={self.moco})"


def moco_limit_of(limit) -> int | None:
    """MoCo's share (its file count) that a pool share ``limit`` is drawn in first; None: none (MoCo's whole pool)."""
    return limit.moco if isinstance(limit, MocoFirst) else None


def share_order(paths: list, seed: int, inside: list | None = None) -> tuple[torch.Tensor, int]:
    """The order in which a pool's seeded shares take its ``paths`` (a share of k: the first k; pool_subset's order),
    and how many lead it from ``inside`` (MoCo's decoded share): those first, each part in the seeded order."""
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))
    if not inside:
        return order, 0
    held = set(map(os.path.abspath, inside))
    first = torch.tensor([os.path.abspath(paths[i]) in held for i in order.tolist()], dtype=torch.bool)
    return torch.cat([order[first], order[~first]]), int(first.sum())


def share_positions(cfg: dict, infos, paths: list, limit: int | None) -> torch.Tensor | None:
    """The positions (sorted) of the pool files ``paths`` that a share of ``limit`` takes, None: all of them. A
    MocoFirst share takes those inside MoCo's share first (share_order), any other pool_subset's."""
    if limit is None or limit >= len(paths):
        return None
    moco = moco_limit_of(limit)
    inside = moco_share_paths(cfg, infos, moco) if moco is not None else None
    return share_order(paths, int(cfg["train"]["seed"]), inside)[0][:limit].sort().values


def moco_share_paths(cfg: dict, infos, moco_limit: int | None) -> list[Path]:
    """MoCo's pool files as `fewshot run` decodes them (pool_paths): all, or its seeded share of ``moco_limit``."""
    from fewshot.data.pool import pool_paths

    paths = pool_paths(cfg, infos)[0]
    subset = pool_subset(len(paths), moco_limit, int(cfg["train"]["seed"]))
    return paths if subset is None else [paths[i] for i in subset.tolist()]


def load_pool(cfg: dict, infos, size: int, exclude_train: bool = False, limit: int | None = None) -> Pool:
    """The unlabeled pool from the shared decode cache (see pool_files), as rows of the cache that are read only
    when indexed: copying the decodable ones out held a 100k-image pool in memory. ``limit``: decode only a
    seeded random share of that many files (share_positions; a cold pool too large for the time self-training
    has); a MocoFirst one draws it inside MoCo's share first."""
    return read_pool(cfg, infos, size, exclude_train, limit)[0]


def read_pool(cfg: dict, infos, size: int, exclude_train: bool = False, limit: int | None = None,
              digests: bool = False, files: tuple | None = None) -> tuple[Pool, str | None]:
    """load_pool, and with ``digests`` pool_fingerprint of its images (which torchrun's ranks compare) and each
    image's digest in Pool.digests. ``files``: pool_files' answer for ``exclude_train``, where the caller has it."""
    paths, ids, source = files if files is not None else pool_files(cfg, infos, exclude_train)
    subset = share_positions(cfg, infos, paths, limit)
    if subset is not None:
        paths, ids = [paths[i] for i in subset.tolist()], [ids[i] for i in subset.tolist()]
    if not paths:
        return Pool(ImageRows(torch.zeros(0, 3, size, size, dtype=torch.uint8)), torch.zeros(0, dtype=torch.long), [],
                    source, []), None
    cached = pool_images(cfg, infos, paths, size, moco_limit_of(limit), digests)
    valid = cached.valid
    rows = torch.arange(len(paths)) if cached.rows is None else cached.rows
    known = cached.known_digests if digests else None
    pool = Pool(ImageRows(cached.images, rows[valid]), torch.tensor(ids, dtype=torch.long)[valid],
                [str(p) for p, ok in zip(paths, valid.tolist()) if ok], source, list(cached.bad),
                None if known is None else [d for d, ok in zip(known, valid.tolist()) if ok])
    return pool, pool_fingerprint(cached)


def pool_fingerprint(cached) -> str | None:
    """decode_many.kept_fingerprint of a loaded pool's decodable images (cache.CachedImages; a blank one by its
    colour, read at its row), None where their digests are not known (load_images hashes none it was not asked
    for)."""
    from fewshot.data.decode_many import kept_fingerprint

    known = cached.known_digests
    if known is None:
        return None
    return kept_fingerprint(known, cached.images, torch.nonzero(cached.valid).flatten().tolist(), cached.rows)


def pool_images(cfg: dict, infos, paths: list, size: int, moco_limit: int | None = None, digests: bool = False):
    """The pool files ``paths`` at data.crop_pct from the decode cache: their own entry, else rows of MoCo's entry
    where it holds them all (moco_entry_paths; ``moco_limit``: MoCo decoded that share of its pool), else decoded
    into an entry of their own, the rows MoCo's entry holds copied from it (only the others decoded). ``digests``
    (under torchrun, which the ranks compare): each file's, as the entry read keeps them (MoCo's rows too, hashed
    where it keeps none); a new entry keeps them in any case (one-process runs: a later torchrun start hashed the
    whole pool on every rank)."""
    from fewshot.data.cache import is_cached, load_rows
    from fewshot.data.fit import fit_of

    d = cfg["data"]
    cache = default_cache_dir(d["root"], d["cache_dir"])
    skip, depth = d["skip_bad_images"] or d["skip_bad_unlabeled"], d.get("bit_depth", "auto")
    fit = fit_of(cfg, infos)
    within = moco_entry_paths(cfg, infos, moco_limit)
    desc = "loading unlabeled pool"
    if within is not None and not is_cached(paths, size, cache, d["crop_pct"], depth, fit):
        cached = load_rows(paths, size, cache, within, 1.0, skip_bad=skip, skip_note=POOL_SKIP_NOTE, bit_depth=depth,
                           desc=desc, digests=digests, resize=fit)
        if cached is not None:
            return cached
    return load_images(paths, size, cache, crop_pct=d["crop_pct"], skip_bad=skip, desc=desc,
                       skip_note=POOL_SKIP_NOTE, max_gb=d.get("cache_max_gb"), bit_depth=depth, digests=digests,
                       entry_digests=True, reuse=within, resize=fit)


def moco_entry_paths(cfg: dict, infos, moco_limit: int | None = None) -> list[Path] | None:
    """MoCo's pool as its check decoded it (moco_share_paths: its train-image stand-ins too; ``moco_limit``: only
    its seeded share), whose cache entry at crop 1.0 holds those pool files' pixels where data.crop_pct is 1.0:
    self-training and FixMatch read their rows there (cache.load_rows) rather than decode the same files into an
    entry of their own (hunt hBK #3). None at another crop."""
    if float(cfg["data"]["crop_pct"]) != 1.0:
        return None
    return moco_share_paths(cfg, infos, moco_limit)


POOL_SKIP_NOTE = "pool images; data.skip_bad_unlabeled=false stops instead"


def pool_key(paths, root, absolute_outside: bool = False, legacy: bool = False) -> str:
    """A fingerprint of the pool's files (sorted; relative to the data root when under it, which --resume may move),
    so that a resume can tell a pool that gained or lost files since the stop. ``absolute_outside``: files outside
    the root count by their real path (`--unlabeled ../pool` and `/abs/pool` are one pool); FixMatch's key keeps
    them as typed, as its older checkpoints recorded them. ``legacy``: the key MoCo checkpoints recorded before,
    with `..` resolved as text (root_relative), which a resume of one of them still accepts."""
    names = root_relative(paths, root, absolute_outside, legacy)
    return hashlib.sha1(json.dumps(sorted(names)).encode()).hexdigest()


def root_relative(paths, root, absolute_outside: bool = False, legacy: bool = False) -> list[str]:
    """The files relative to the data root when under it (others as they are, or by their real path with
    ``absolute_outside``), in their order: what a fingerprint of them hashes, since --resume may be given the same
    data at another place (a copied or moved root). The real path is the folder's with its links resolved (one
    realpath per folder; the file's own name is kept: a pool of links into a content store stays itself):
    os.path.abspath took `link/..` as text, so a pool reached through a linked folder (a linked cwd, a linked
    home) was another pool than the same folder typed by its real path. ``legacy``: abspath, as before."""
    root = Path(root)
    real_root, real_dirs = None, {}
    out = []
    for p in map(Path, paths):
        if p.is_relative_to(root):
            out.append(str(p.relative_to(root)))
        elif not absolute_outside:
            out.append(str(p))
        elif legacy:
            out.append(os.path.abspath(p))
        else:
            if real_root is None:
                real_root = Path(os.path.realpath(root))
            folder = real_dirs.get(p.parent)
            if folder is None:
                folder = real_dirs[p.parent] = Path(os.path.realpath(p.parent))
            real = folder / p.name
            out.append(str(real.relative_to(real_root)) if real.is_relative_to(real_root) else str(real))
    return out


def fixmatch_summary(cfg: dict, pool: Pool, files: int | None = None) -> dict:
    """FixMatch's settings and pool, for metrics.json (`fewshot train`) and summary.json (`fewshot run`). ``files``:
    the pool's file count where ``pool`` is a seeded random share of them (pool_share_facts)."""
    s = cfg["semi"]
    return {"method": "fixmatch", "pool_size": len(pool.images), "pool_source": pool.source, "mu": int(s["mu"]),
            "threshold": float(s["threshold"]), "weight": float(s["weight"]),
            "unknown_source": int((pool.dataset_ids < 0).sum()), **pool_share_facts(files)}


def pool_share_facts(files: int | None) -> dict:
    """The record of a pool that is a seeded random share of its ``files`` (None: the whole pool): `fewshot run`
    decodes a cold pool only as far as its stage's time can use, and pool_size alone read as the whole pool."""
    return {} if files is None else {"pool_subset_of": int(files)}


def pool_share_of(cfg: dict, infos, limit: int | None) -> int | None:
    """The file count of the pool (pool_files, exclude_train) where ``limit`` takes a share of it, else None."""
    if limit is None:
        return None
    files = len(pool_files(cfg, infos, exclude_train=True)[0])
    return files if limit < files else None


def datasets_without_pool(cfg: dict, infos, pool: Pool) -> list[str]:
    """The datasets with no pool images of their own (ROOT/unlabeled/<dataset>/), whose train images do not stand
    in for FixMatch; none with data.unlabeled, whose images belong to no dataset."""
    if cfg["data"]["unlabeled"]:
        return []
    return [info.name for d, info in enumerate(infos) if not bool((pool.dataset_ids == d).any())]


def fixmatch_note(summary: dict, without_pool: list[str]) -> str:
    """What FixMatch trains on, said at the start: its settings, the pool's size and source, and the datasets that
    have no pool of their own."""
    if summary.get("method") == "moco":  # the same line for the joint MoCo loss (finetune.py prints this one)
        from fewshot.train.semi_moco import joint_moco_note

        return joint_moco_note(summary, without_pool)
    note = (f"FixMatch (semi.mu={summary['mu']}, semi.threshold={summary['threshold']:g}, semi.weight="
            f"{summary['weight']:g}) on an unlabeled pool of {summary['pool_size']:,} images"
            + (f", a seeded random share of its {summary['pool_subset_of']:,} files" if summary.get("pool_subset_of")
               else "") + f" ({summary['pool_source']})")
    unknown = summary.get("unknown_source", 0)
    for name in without_pool:
        note += (f"; note: {name} has no pool of its own (no ROOT/unlabeled/{name}/): FixMatch has no images of it"
                 + (f" apart from the {unknown:,} of unknown source" if unknown else ""))
    return note


METHOD_NAMES = {"fixmatch": "FixMatch", "moco": "the joint MoCo loss"}


def no_pool_message(cfg: dict, pool: Pool, method: str) -> str:
    """What to do when semi.method=<method> finds no unlabeled pool (FixMatch and the joint MoCo loss alike)."""
    name = METHOD_NAMES.get(method, method)
    # data.unlabeled given: advising it again read as if the folder had been ignored (pool_files says why it is
    # empty: its images are the labelled ones, or none decodes)
    given = ("give data.unlabeled (`fewshot run --unlabeled`) folders of images that are not the labelled train or "
             "val images" if cfg["data"]["unlabeled"] else
             "give a folder of them with data.unlabeled=DIR (`fewshot run --unlabeled DIR`)")
    return (f"semi.method={method} needs an unlabeled pool, and these data have none ("
            f"{pool.source}{'; none of its files decodes' if pool.skipped else ''}): put images under "
            f"{Path(cfg['data']['root']) / 'unlabeled'}/<dataset>/, or {given}, or "
            f"train without semi.method={method} (a run stopped with {name} continues without it "
            f"from its weights: --weights RUN/checkpoints/last.pt and a new --out).")


class UnlabeledStream:
    """Draws `mu * batch` pool images per step, deterministically from (seed, epoch, step).

    Views (``semi.views``): ``randaug`` (default) makes the weak view the image as fine-tuning sees it
    without RandAugment (flipped only with ``data.hflip``) and the strong view the labelled images'
    RandAugment applied to every image, so the consistency target never teaches an invariance the
    labelled recipe rules out (a mirrored digit); ``mocov2`` is the earlier choice (MoCo v2 crops,
    colour, blur and flips for the strong view, a 0.6-1 crop and a flip for the weak one).
    """

    method = "fixmatch"  # what the pool is for, in the summary and the no-pool error (semi_moco: "moco")

    def __init__(self, cfg: dict, infos, size: int, mean, std, device: torch.device, limit: int | None = None):
        """``limit``: a seeded random share of the pool (load_pool's), the files `fewshot run` decoded at start-up."""
        # only real pool images: a dataset without a pool would stand in its labelled train images (pool_files)
        from fewshot.train.distributed import several_processes

        pool, self.digest = read_pool(cfg, infos, size, exclude_train=True, limit=limit, digests=several_processes())
        if len(pool.images) == 0:
            from fewshot.errors import UserError

            raise UserError(no_pool_message(cfg, pool, self.method))
        # rows of the decode cache: each step reads its mu * batch images (a copy held the whole pool in memory)
        self.images, self.dataset_ids, self.source = pool.images, pool.dataset_ids, pool.source
        self.skipped = pool.skipped
        self.key = pool_key(pool.paths, cfg["data"]["root"])  # checked on --resume (SupervisedTask)
        self.summary, self.without_pool = self.describe(cfg, pool), datasets_without_pool(cfg, infos, pool)
        self.summary.update(pool_share_facts(pool_share_of(cfg, infos, limit)))
        self.device = device
        self.set_views(cfg, size, mean, std, device)

    def describe(self, cfg: dict, pool: Pool) -> dict:
        """The method's settings and pool, for metrics.json and the start line."""
        return fixmatch_summary(cfg, pool)

    def set_views(self, cfg: dict, size: int, mean, std, device: torch.device) -> None:
        """FixMatch's weak and strong views (semi.views; see the class docstring)."""
        self.views = cfg["semi"].get("views", "mocov2")  # a config saved before semi.views: its own views
        d = cfg["data"]
        if self.views == "randaug":
            from fewshot.data.transforms import Normalize, TrainAugment

            self.normalize = Normalize(mean, std).to(device)
            self.flip = float(d["hflip"])
            self.randaug = TrainAugment(d["randaug_ops"], d["randaug_magnitude"], 1.0, 0.0, d["randaug_group"],
                                        float(d.get("gray_p", 0.0)))  # strong view only: weak keeps the colour
        else:  # mocov2 (the value is checked with the config: config.CHOICES)
            self.weak = BatchAugment(preset("mocov2", size, scale=(0.6, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0,
                                            flip_p=0.5, mean=mean, std=std)).to(device)
            self.strong = BatchAugment(preset("mocov2", size, mean=mean, std=std)).to(device)

    def draw(self, n: int, seed: int, epoch: int, step: int, rank: int = 0):
        gen = make_generator(seed, epoch, step, rank, 31)
        idx = torch.randint(len(self.images), (n,), generator=gen)
        if self.views == "randaug":
            x = self.images[idx]
            flip = torch.rand(n, generator=gen) < self.flip
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            strong = self.randaug(x, (seed, epoch, step, rank, 31))  # geometry shared with the weak view
            weak = self.normalize(x.to(self.device, non_blocking=True))
            strong = self.normalize(strong.to(self.device, non_blocking=True))
            return weak, strong, self.dataset_ids[idx].to(self.device)
        x = self.images[idx].to(self.device, non_blocking=True)
        hw = tuple(x.shape[-2:])
        weak = self.weak.apply(x, self.weak.sample_params(n, gen, hw))
        strong = self.strong.apply(x, self.strong.sample_params(n, gen, hw))
        return weak, strong, self.dataset_ids[idx].to(self.device)


def fixmatch_loss(logits_weak: torch.Tensor, logits_strong: torch.Tensor, dataset_ids: torch.Tensor, space,
                  threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked cross-entropy of strong views towards confident weak-view labels, mask rate)."""
    with torch.no_grad():
        weak = logits_weak.detach().float().clone()
        known = dataset_ids >= 0
        if bool(known.any()):
            weak[known] = space.restrict(weak[known], dataset_ids[known])
        probs = weak.softmax(dim=1)
        conf, pseudo = probs.max(dim=1)
        mask = (conf >= threshold).float()
    loss = (F.cross_entropy(logits_strong.float(), pseudo, reduction="none") * mask).mean()
    return loss, mask.mean()


def teacher_probabilities(logits: torch.Tensor, dataset_ids: torch.Tensor, space) -> torch.Tensor:
    """Softmax over the image's own dataset's classes (all classes for an unknown source): the soft
    targets of self-distillation and the confidences of hard pseudo-labels."""
    scores = logits.float().clone()
    known = dataset_ids >= 0
    if bool(known.any()):
        scores[known] = space.restrict(scores[known], dataset_ids[known])
    return scores.softmax(dim=1)


def precision_estimate(right: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The precision calibrated_thresholds credits ``right`` of ``k`` val images with: (right + 1) / (k + 2),
    one place, so that certifiable_precision's cap is the very number the thresholds compare."""
    return (right.float() + 1) / (k.float() + 2)


def certifiable_precision(n_val: torch.Tensor) -> torch.Tensor:
    """The highest precision calibrated_thresholds can certify for a class with ``n_val`` val images (all of them
    called that class, all right): (n + 1) / (n + 2), 0.955 at 20 images, 0.8 at 3. Asked for more, the class keeps
    no pool image whatever the teacher does, so `fewshot run` checks run.pseudo_precision against it at start-up."""
    n = torch.as_tensor(n_val)
    return precision_estimate(n, n)


def val_images_needed(precision: float) -> int:
    """The fewest val images of a class whose certifiable_precision reaches ``precision`` (< 1), for the
    message that asks for more val images."""
    n = max(0, math.ceil((2 * precision - 1) / (1 - precision)) - 1)
    while not bool(certifiable_precision(torch.tensor(n)) >= precision):
        n += 1
    return n


def calibrated_thresholds(val_probs: torch.Tensor, val_targets: torch.Tensor, precision: float,
                          unmeasured: float = float("inf")) -> torch.Tensor:
    """Per-class confidence thresholds at which the teacher's labels are right often enough, read off
    the labelled val split: for class c, the val images it calls c ranked by confidence; the threshold is
    the lowest confidence whose top-k still has a precision >= ``precision``, estimated as
    (right + 1) / (k + 2) so that a handful of lucky val images cannot open a class. A class never
    reaching it gets +inf (none of its pool images is kept). Why: a shared rank fills the classes the
    teacher confuses (shirt vs pullover) with wrong labels. Measured on the demo data (docs/recipes.md):
    the kept labels get cleaner (93 % right instead of 85 %) but val accuracy drops, since the closed
    classes are the ones that needed the labels; so `run.pseudo_precision` is off by default.
    ``unmeasured``: the threshold of a class without val images (held-out data may lack them), which val
    cannot measure; the run passes its shared run.pseudo_threshold rather than closing the class."""
    conf, pred = val_probs.max(dim=1)
    out = torch.full((val_probs.shape[1],), float("inf"))
    out[~torch.isin(torch.arange(val_probs.shape[1]), val_targets)] = unmeasured
    for c in range(val_probs.shape[1]):
        mine = torch.nonzero(pred == c).flatten()
        if len(mine) == 0:
            continue
        order = conf[mine].argsort(descending=True, stable=True)
        right = (val_targets[mine[order]] == c).float().cumsum(0)
        estimate = precision_estimate(right, torch.arange(1, len(mine) + 1))
        ok = torch.nonzero(estimate >= precision).flatten()
        if len(ok):
            out[c] = conf[mine[order[int(ok.max())]]]
    return out


def chance_floor(n_classes: torch.Tensor) -> torch.Tensor:
    """The confidence a pseudo-label must exceed to say more than chance: twice chance (2/C), or halfway from
    chance to certainty when that is lower (two classes: 0.75; one class: 1, so never). At 50 classes a near-chance
    teacher's labels (mean confidence 0.023) filled the quota when only the rank decided."""
    c = n_classes.float()
    return torch.minimum(2 / c, (1 + 1 / c) / 2)


def select_pseudo_labels(logits: torch.Tensor, dataset_ids: torch.Tensor, space, per_class: torch.Tensor,
                         threshold: float | torch.Tensor = 0.0, per_dataset: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offline self-training's labels: for every class, its most confident pool images.

    logits [N, C] of the pool; dataset_ids [N] (-1: unknown source, argmax over all classes);
    per_class [C]: how many images each class may take at most (class-balanced, so the classes the
    model already favours cannot flood the set); threshold: the minimum confidence, one for all or
    one per class [C]; per_dataset [D]: how many a dataset's classes may take together (None: no cap), the
    most confident of them. A confidence at or below chance_floor (of the classes the softmax ran over) is
    never kept, whatever the threshold. Returns (pool indices, global labels, confidences).
    """
    conf, label = teacher_probabilities(logits, dataset_ids, space).max(dim=1)
    known = dataset_ids >= 0
    n_classes = torch.full_like(label, space.num_classes)
    n_classes[known] = torch.tensor(space.sizes)[dataset_ids[known]]
    informative = conf > chance_floor(n_classes)
    thresholds = torch.as_tensor(threshold, dtype=torch.float32).expand(logits.shape[1])
    keep = []
    for c in range(logits.shape[1]):
        cand = torch.nonzero((label == c) & (conf >= thresholds[c]) & informative).flatten()
        if len(cand) and int(per_class[c]) > 0:
            order = conf[cand].argsort(descending=True, stable=True)
            keep.append(cand[order[: int(per_class[c])]])
    idx = torch.cat(keep).sort().values if keep else torch.zeros(0, dtype=torch.long)
    if per_dataset is not None and len(idx):
        owner = space.owner()[label[idx]]
        capped = []
        for d in range(len(space.names)):
            mine = idx[owner == d]
            capped.append(mine[conf[mine].argsort(descending=True, stable=True)[: int(per_dataset[d])]])
        idx = torch.cat(capped).sort().values
    return idx, label[idx], conf[idx]


class Quota(NamedTuple):
    per_class: torch.Tensor  # [C] long: the most a class may keep
    per_dataset: torch.Tensor  # [D] long: the most a dataset's classes may keep together


def labelled_counts(infos, space) -> torch.Tensor:
    """Labelled train images per global class [C] (the shots that pseudo-labels are weighed against)."""
    counts = torch.zeros(space.num_classes, dtype=torch.long)
    for d, info in enumerate(infos):
        for _, local in info.train:
            counts[space.offsets[d] + int(local)] += 1
    return counts


def class_quota(pool_dataset_ids: torch.Tensor, space, keep_frac: float, labelled: torch.Tensor | None = None,
                max_per_shot: float | None = None) -> Quota:
    """Per-class cap: keep_frac of the pool's images of a dataset, split evenly over its classes
    (the pool's class balance is unknown; even is the assumption that cannot favour a class), and at most
    ``max_per_shot`` times the class's ``labelled`` images [C] (run.pseudo_max_per_shot: with 1-2 shots and a
    100k pool the quota held 50k pseudo-labels against 150 true ones). Per dataset: at most keep_frac of its pool
    in all (``per_dataset`` of select_pseudo_labels), but at least one image for a dataset with a pool."""
    quota = torch.zeros(space.num_classes, dtype=torch.long)
    total = torch.zeros(len(space.names), dtype=torch.long)
    n_unknown = int((pool_dataset_ids < 0).sum())
    for d in range(len(space.names)):
        classes = torch.nonzero(space.mask(torch.tensor([d]))[0]).flatten()
        # the unknown-source share stays fractional: rounded down, a small pool gave a dataset no share
        n = int((pool_dataset_ids == d).sum()) + n_unknown * len(classes) / space.num_classes
        # at least one per class when the dataset has a pool (rounding down to 0 kept nothing at all), but no more
        # than keep_frac of the pool in all: one per class was all of a pool of one image per class
        quota[classes] = max(1 if n > 0 else 0, int(round(keep_frac * n / max(1, len(classes)))))
        # at least one for a dataset with a pool (a small unknown-source pool gave a dataset none); 1e-9: 0.29 * 100
        # is 28.999...
        total[d] = max(1 if n > 0 else 0, math.floor(keep_frac * n + 1e-9))
    if labelled is not None and max_per_shot is not None:
        quota = torch.minimum(quota, (labelled * max_per_shot).floor().long())
    return Quota(quota, total)


# The out-of-class check of a dataset's pool (pool_classes_check), set on the hunt hBH data (a 2-class dataset whose
# pool held 96 of 120 images of 8 other classes, 2 in-class datasets beside it; 4 runs, test_resnet and resnet18): the
# 0.3 quantile of the val confidences; the 0.1 and 0.2 ones missed a resnet18 run, the 0.4 and 0.5 ones parted the
# groups less widely. It compared the kept labels (the pool's top, right and wrong) with the correctly classified val
# images only (the surer ones): a weak 1-minute model's in-class pool read 46 % below against 30 % (hunt hBQ, #4). It
# now compares like with like, the whole labelled pool with all val images: images of the dataset's own classes are
# drawn as val's are, so both shares are the quantile's (0.3) but for sampling noise, whatever the model's strength.
POOL_CHECK_QUANTILE = 0.3
POOL_CHECK_MARGIN = 0.15  # how much larger the pool's share must be than val's, at the least
POOL_CHECK_NOISE = 2.0  # ... and at least this many standard errors of the difference of the two shares
POOL_CHECK_MIN_VAL = 10  # fewer val images: the quantile is too rough, not measured
POOL_CHECK_MIN_KEPT = 20  # fewer kept images: too few pseudo-labels to matter (and their pool too small to tell)
POOL_CHECK_MIN_CLASS = 10  # fewer pool images of a predicted class: that class is not tested on its own


def val_weights_in_pool_mix(pool_pred: torch.Tensor, val_pred: torch.Tensor) -> torch.Tensor:
    """Weights that give the val images the pool's mix of predicted classes, summing to 1: each predicted class of
    the pool weighs its share of the pool, spread over val's images of that class, so a pool holding more of a class
    the model is less sure of is measured against that class (rev84 #1). Weighing the pool in val's mix instead hid
    foreign images that the model puts into a few classes (rev88 #1). A class val never predicts has no val images
    of its own: its share is spread over all of val, so its pool images are still counted, against the whole val."""
    classes = int(max(pool_pred.max(), val_pred.max())) + 1
    n_pool = torch.bincount(pool_pred, minlength=classes).double()
    n_val = torch.bincount(val_pred, minlength=classes).double()
    share = n_pool / n_pool.sum()
    return (share / n_val.clamp(min=1))[val_pred] + float(share[n_val == 0].sum()) / len(val_pred)


def weighted_quantile(values: torch.Tensor, weights: torch.Tensor, q: float) -> float:
    """The q quantile of ``values`` under ``weights`` (each value at the middle of its weight, linear between)."""
    keep = weights > 0
    order = values[keep].double().argsort()
    xs, ws = values[keep].double()[order], weights[keep].double()[order]
    pos = (ws.cumsum(0) - ws / 2) / ws.sum()
    i = int(torch.searchsorted(pos, torch.tensor([q], dtype=torch.double)))
    if i == 0 or i == len(xs):
        return float(xs[min(i, len(xs) - 1)])
    t = (q - pos[i - 1]) / (pos[i] - pos[i - 1])
    return float(xs[i - 1] + t * (xs[i] - xs[i - 1]))


def classes_far_below(pool_below: torch.Tensor, pool_pred: torch.Tensor, val_below: torch.Tensor,
                      val_pred: torch.Tensor) -> list[int]:
    """The predicted classes whose pool images sit below the cut-off far more often than val's images of the same
    class: foreign images that the model puts into one class. Only classes with POOL_CHECK_MIN_CLASS pool images and
    some val images are tested; the margin is POOL_CHECK_MARGIN, or a one-sided two-proportion test at
    POOL_CHECK_NOISE's level divided among the classes tested (Bonferroni), so many classes do not add alarms."""
    from statistics import NormalDist

    n_pool, n_val = torch.bincount(pool_pred), torch.bincount(val_pred, minlength=len(torch.bincount(pool_pred)))
    tested = [c for c in range(len(n_pool)) if n_pool[c] >= POOL_CHECK_MIN_CLASS and n_val[c] > 0]
    if not tested:
        return []
    normal = NormalDist()
    z = normal.inv_cdf(1 - (1 - normal.cdf(POOL_CHECK_NOISE)) / len(tested))
    out = []
    for c in tested:
        xp, xv = float(pool_below[pool_pred == c].sum()), float(val_below[val_pred == c].sum())
        np_, nv = float(n_pool[c]), float(n_val[c])
        both = (xp + xv) / (np_ + nv)
        margin = max(POOL_CHECK_MARGIN, z * math.sqrt(both * (1 - both) * (1 / np_ + 1 / nv)))
        if xp / np_ - xv / nv >= margin - 1e-9:
            out.append(c)
    return out


def pool_classes_check(pool_conf: torch.Tensor, val_conf: torch.Tensor, kept: int,
                       pool_pred: torch.Tensor | None = None, val_pred: torch.Tensor | None = None) -> dict | None:
    """Whether a dataset's pool looks like it holds images of other classes: a closed-set softmax labels those
    confidently too (0.93 mean on a 2-class dataset whose pool was 80 % other classes), but less surely than the
    dataset's own images. Compares the share of ``pool_conf`` (every labelled pool image's top confidence) below a
    low quantile of ``val_conf`` (every val image's, right or wrong: images known to be of the dataset's classes)
    with val's own share; ``suspect`` when the pool's is larger by the margin (POOL_CHECK_MARGIN, or
    POOL_CHECK_NOISE standard errors where the samples are small). With the predicted classes (``pool_pred``,
    ``val_pred``) val is weighed in the pool's mix of them (val_weights_in_pool_mix; the quantile is taken under the
    same weights), so a pool that only holds more of a class the model is less sure of is not flagged; and a class
    whose pool images sit far below val's images of that class is flagged (classes_far_below). None when either is
    too small to tell, or fewer than POOL_CHECK_MIN_KEPT pseudo-labels were ``kept``."""
    val, pool = val_conf.float(), pool_conf.float()
    if len(val) < POOL_CHECK_MIN_VAL or len(pool) < POOL_CHECK_MIN_KEPT or kept < POOL_CHECK_MIN_KEPT:
        return None
    mix = pool_pred is not None and val_pred is not None
    if mix:
        w_val = val_weights_in_pool_mix(pool_pred.long(), val_pred.long())
        low = weighted_quantile(val, w_val, POOL_CHECK_QUANTILE)
        n_val = float(1 / (w_val ** 2).sum())  # val's effective size under the weights
    else:
        w_val, low, n_val = torch.full((len(val),), 1 / len(val), dtype=torch.double), \
            float(torch.quantile(val, POOL_CHECK_QUANTILE)), float(len(val))
    # in float64: in float32, 9/20 - 6/20 fell short of 0.15
    val_share = float((w_val * (val < low)).sum())
    pool_share = float((pool < low).double().mean())
    q = POOL_CHECK_QUANTILE * (1 - POOL_CHECK_QUANTILE)
    margin = max(POOL_CHECK_MARGIN, POOL_CHECK_NOISE * math.sqrt(q / n_val + q / len(pool)))
    flagged = classes_far_below(pool < low, pool_pred.long(), val < low, val_pred.long()) if mix else []
    return {"quantile": POOL_CHECK_QUANTILE, "val_confidence": round(low, 4), "val": len(val),
            "val_share_below": round(val_share, 4), "pool": len(pool), "pool_share_below": round(pool_share, 4),
            "class_mix": mix, "val_effective": round(n_val, 1), "classes_far_below": flagged,
            "margin": round(margin, 4), "kept": int(kept),
            "suspect": pool_share - val_share >= margin - 1e-9 or bool(flagged)}
