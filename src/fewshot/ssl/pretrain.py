"""`fewshot pretrain`: MoCo on an unlabeled pool, with the kNN monitor on the labelled splits."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import torch

from fewshot.data.augment import BatchAugment, preset as aug_preset
from fewshot.data.cache import default_cache_dir, load_images
from fewshot.data.label_space import LabelSpace
from fewshot.data.image_files import has_images, is_image
from fewshot.data.layout import find_unlabeled_images, real_paths, warn_once
from fewshot.data.roots import list_datasets
from fewshot.data.samplers import epoch_batches
from fewshot.data.sets import load_splits
from fewshot.data.skipped import write_skipped
from fewshot.data.transforms import Normalize
from fewshot.errors import DataLayoutError, UserError, one_line
from fewshot.eval.features import backbone_features
from fewshot.models.backbone import (adopt_weights_architecture, backbone_options, check_input_size, create_backbone,
                                     input_size, mean_std)
from fewshot.models.weights import load_backbone_weights, weights_note
from fewshot.ssl.functional import high_temperature_warning, temperature_hint, topk_accuracy
from fewshot.ssl.knn import knn_predict
from fewshot.ssl.moco import MoCo
from fewshot.train.distributed import DistContext
from fewshot.train.engine import Engine
from fewshot.train.semi import POOL_SKIP_NOTE, pool_key
from fewshot.utils import make_generator


def pool_paths(cfg: dict, infos) -> tuple[list[Path], str]:
    paths, _, source, _ = pool_with_sources(cfg, infos)
    return paths, source


_POOL_MEMO: dict = {}  # the last pool found: inputs -> (its folders' stamp, (paths, ids, source, stand-in ids))
STAMP_SETTLE_S = 2.0  # a folder changed more recently may change again within its timestamp's granularity


def _folders_stamp(root: Path, pool_folders: list[Path]) -> tuple | None:
    """The root, its folders and every folder below the pool folders (links not followed), each with its inode
    and mtime: adding, removing or renaming a file changes its folder's mtime. None when one changed within
    STAMP_SETTLE_S (a second change in the same clock tick would go unseen). Listing only the folders costs a
    tenth of the scan."""
    try:  # hidden folders are no datasets; ROOT/.fewshot_cache changes with every cache write (review)
        shallow = [root, *(entry.path for entry in os.scandir(root) if entry.is_dir() and entry.name[:1] != ".")]
    except OSError:
        return None
    linked: list[str] = []

    def deep():
        for folder in pool_folders:
            for dirpath, dirnames, _ in os.walk(folder):
                if dirpath == os.fspath(folder):  # ROOT/unlabeled/<dataset> as a link is scanned through
                    linked.extend(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
                yield dirpath

    stamp, limit = [], time.time_ns() - int(STAMP_SETTLE_S * 1e9)
    for folder in itertools.chain(shallow, deep()):
        if linked:  # the scan follows such a link, os.walk does not: changes behind it would go unseen
            return None
        try:
            st = os.stat(folder)
        except OSError:
            return None
        if st.st_mtime_ns > limit:
            return None
        stamp.append((os.fspath(folder), st.st_ino, st.st_mtime_ns))
    return tuple(stamp)


def pool_with_sources(cfg: dict, infos) -> tuple[list[Path], list[int], str, list[int]]:
    """The pool (see _pool_with_sources), scanned once per process while its folders are unchanged: `fewshot run`
    asks for it 3-6 times (start-up checks, MoCo, every self-training round), 60 s each on a 100k-file pool.
    (paths, ids, source, stand-in ids), always the four: a flag that dropped the last made its type a bare tuple."""
    d = cfg["data"]
    root = Path(d["root"])
    folders = d["unlabeled"] if isinstance(d["unlabeled"], list) else [d["unlabeled"]] if d["unlabeled"] else []
    key = (str(root), tuple(str(f) for f in folders), tuple(infos))
    stamp = _folders_stamp(root, [Path(f) for f in folders] or [root / "unlabeled"])
    hit = _POOL_MEMO.get(key)
    if stamp is not None and hit is not None and hit[0] == stamp:
        paths, ids, source, standing = hit[1]
        paths, ids, standing = list(paths), list(ids), list(standing)
    else:
        paths, ids, source, standing = _pool_with_sources(cfg, infos)
        _POOL_MEMO.clear()  # one pool at a time: a 100k-file list is tens of MB
        if stamp is not None:
            _POOL_MEMO[key] = (stamp, (list(paths), list(ids), source, list(standing)))
    return paths, ids, source, standing


def _pool_with_sources(cfg: dict, infos) -> tuple[list[Path], list[int], str, list[int]]:
    """The unlabeled pool: --unlabeled folders; else ROOT/unlabeled/<dataset>; else train images; plus the
    images under ROOT/unlabeled/ outside any dataset's folder (loose files, other sub-folders), of unknown source.

    Also returns each image's dataset index (-1 when unknown: from --unlabeled folders, or ROOT/unlabeled/
    outside the datasets' folders; self-training routes those by the teacher's most probable class), and the
    indices of the datasets whose train images stand in (self-training leaves those out: they are labelled).
    """
    d = cfg["data"]
    root = Path(d["root"])
    if d["unlabeled"]:
        folders = d["unlabeled"] if isinstance(d["unlabeled"], list) else [d["unlabeled"]]
        paths = given_pool_images(folders, root)
        # what the user typed: pretrain and run take --unlabeled (the MoCo stage, `_task: moco`, is theirs alone);
        # `fewshot train` has no such flag, and its start line named one (data.unlabeled=DIR there)
        typed = ("--unlabeled folder(s)" if cfg.get("_task") == "moco"
                 else "data.unlabeled folder(s) (`fewshot run --unlabeled`)")
        return paths, [-1] * len(paths), f"{len(folders)} {typed}", []
    pool = root / "unlabeled"
    if os.path.lexists(pool) and not pool.is_dir():  # a file there: the train images stood in without a word
        what = "a broken symbolic link" if pool.is_symlink() and not pool.exists() else "a file"
        warn_once([f"{pool} is {what}, not a folder: no unlabeled pool is read from it (MoCo falls back to the "
                   f"train images; self-training and FixMatch find no pool). Move it away and put the pool's "
                   f"images in a folder {pool}/<dataset>/, or give a folder of them with --unlabeled DIR"])
    paths, ids, sources, stand_ins = [], [], [], []
    for index, info in enumerate(infos):
        folder = root / "unlabeled" / info.name
        if folder.is_dir() and _pool_holds_images(folder):  # hidden files (.thumbnails/, ._IMG.png) do not count
            found, left_out = without_held_out(find_unlabeled_images([folder]), root)
            if left_out:
                warn_once([f"leaving out {left_out} val/test image(s) of the data root linked from {folder} (val "
                           f"picks the best checkpoint, test judges the run)"], "note")
            sources.append(f"{info.name}: unlabeled/")
        else:
            # No pool for this dataset: its labelled training images stand in (labels unused).
            found = [p for p, _ in info.train]
            sources.append(f"{info.name}: train images")
            stand_ins.append(index)
            warn_misplaced_pool(root, info.name)
        paths += found
        ids += [index] * len(found)
    unsorted = unsorted_pool_images(root, known=paths)
    if unsorted:
        paths += unsorted
        ids += [-1] * len(unsorted)
        sources.append(f"{len(unsorted)} images of unknown source: unlabeled/ outside the datasets' folders")
    return paths, ids, "; ".join(sources), stand_ins


def _pool_holds_images(folder: Path) -> bool:
    """has_images for a dataset's pool folder, with the folders that cannot be listed named (DataLayoutError, as
    find_unlabeled_images names them) where no image was found: os.walk passed them over, an unreadable pool was
    "holds no images", and the train images silently took its place."""
    unreadable: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable.append):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(is_image(Path(f)) for f in filenames):
            return True  # the pool is read: find_unlabeled_images names any folder of it that cannot be listed
    if unreadable:
        raise DataLayoutError([f"{exc.filename}: cannot list the folder ({exc.strerror or exc})" for exc in unreadable])
    return False


def warn_misplaced_pool(root: Path, name: str) -> None:
    """A dataset without images in ROOT/unlabeled/<name>/ whose pool lies where a user may well have put it: inside
    the dataset's own folder (never read: the run said only "no unlabeled pool"), under a folder name that differs
    in case (read as images of unknown source, silently), or behind symlinked folders in its own pool folder."""
    own = root / "unlabeled" / name
    if own.is_dir():  # there, but without an image: its train images stand in, which went unsaid
        warn_once([_imageless_pool_note(own, name)], "note")
    inside = root / name / "unlabeled"
    if inside.is_dir() and has_images(inside):
        warn_once([f"{inside} is not read: a dataset's unlabeled pool belongs in {root / 'unlabeled' / name}/ "
                   f"(move the folder there to use its images)"])
    try:  # the exact name is the pool folder itself (it may hold no image): "rename digits to digits" was said
        near = [p for p in (root / "unlabeled").iterdir()
                if p.is_dir() and p.name != name and p.name.casefold() == name.casefold()]
    except OSError:
        return
    for folder in near:
        warn_once([f"{folder} differs from the dataset name '{name}' only in case: its images count as images of "
                   f"unknown source; rename it to {root / 'unlabeled' / name} to make them {name}'s pool"])


def linked_folders(folder: Path) -> list[str]:
    """The symlinked folders at any depth below ``folder``, hidden ones aside. The pool scan does not follow them
    (find_unlabeled_images: a link to / or to a test split would pull those in); only a pool folder that is itself
    a link (ROOT/unlabeled/<name>, an --unlabeled folder) is read through."""
    links: list[str] = []
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        links += [os.path.join(dirpath, d) for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
    return links


def _imageless_pool_note(folder: Path, name: str | None) -> str:
    """Why a pool folder without images adds nothing: a folder of symlinked sub-folders (ROOT/unlabeled/digits/more
    -> /elsewhere) lost its 111 images without a word. ``name``: the dataset whose train images stand in (None: a
    folder of images of unknown source)."""
    instead = f"{name}'s train images stand in as its pool" if name else "it adds nothing to the pool"
    links = linked_folders(folder)
    if not links:
        return f"{folder} holds no images: {instead}"
    shown = ", ".join(links[:3]) + (f" and {len(links) - 3} more" if len(links) > 3 else "")
    return (f"{folder} holds no images of its own, only {len(links)} symlinked folder(s), which the pool scan does "
            f"not follow: {shown}; {instead}. Move the images into {folder}, or make {folder} itself the link")


def given_pool_images(folders: list, root: Path) -> list[Path]:
    """The images under the --unlabeled folders, each file once (the same folder given twice, or one inside
    another, counted its images twice), without the val and test images of the data root: val drives the kNN
    score that picks best.pt and test is what the run is judged on (``--unlabeled ROOT`` took both)."""
    kept, left_out = without_held_out(find_unlabeled_images(folders), root)
    if left_out:
        note = f"{left_out} val/test image(s) of the data root {root} under the --unlabeled folders"
        if not kept:
            raise UserError(f"the --unlabeled folders hold only {left_out} val/test image(s) of the data root {root}; "
                            f"the pool must not hold the images that score the run. Give folders of unlabeled images.")
        warn_once([f"leaving out {note} (val picks the best checkpoint, test judges the run)"], "note")
    return kept


def without_held_out(found: list[Path], root: Path) -> tuple[list[Path], int]:
    """``found`` without repeats (by real file) and without the data root's val and test images, with the count
    left out. A linked file counts as its target: a pool of links to test images put the test split into
    MoCo, the pseudo-labels and FixMatch (only the links' folders were resolved). Copies are not detected."""
    held_out = [os.path.realpath(Path(root) / name / split) for name in _datasets_or_none(root)
                for split in ("val", "test")]
    scoring: dict[str, bool] = {}  # real folder -> inside a val or test split (checked once per folder)
    seen: set[str] = set()
    kept, left_out = [], 0
    for path, real in zip(found, real_paths(found)):
        if real in seen:
            continue
        seen.add(real)
        folder = os.path.dirname(real)
        if folder not in scoring:
            scoring[folder] = any(_inside(folder, held) for held in held_out)
        if scoring[folder]:
            left_out += 1
        else:
            kept.append(path)
    return kept, left_out


def _inside(path: str, folder: str) -> bool:
    """Path.is_relative_to for real (absolute, normalised) paths as strings."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _datasets_or_none(root: Path) -> list[str]:
    try:
        return list_datasets(root)
    except UserError:  # no readable root: nothing to leave out (the labelled splits fail on their own)
        return []


def unsorted_pool_images(root: Path, known: list[Path] = ()) -> list[Path]:
    """Images in ROOT/unlabeled/ that no dataset's folder holds: loose files and sub-folders not named after a
    dataset of the root (a pool laid out as ROOT/unlabeled/*.png used to be ignored without a word). A folder named
    after a dataset that is not trained on (`--datasets`) stays that dataset's. Empty folders are passed over; a
    file that is one of ``known`` or that lies in a dataset's own folder (reached through a symlink) is left out,
    so no image is pseudo-labelled twice and no test image joins the pool. Loose files that are not images by
    their extension (IMG_001.HEIC) are said once, as the pool's folders say theirs (system files aside)."""
    from fewshot.data.image_files import is_image, is_unread_file, unread_files_note

    pool = root / "unlabeled"
    if not pool.is_dir():
        return []
    datasets = set(list_datasets(root))
    found: list[Path] = []
    try:
        with os.scandir(pool) as it:
            listed = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise UserError(f"cannot list the unlabeled folder '{pool}': {exc.strerror or exc}.") from None
    unread = [e.name for e in listed if is_unread_file(e)]  # dropped without a word, where a pool folder's are said
    if unread:
        warn_once([unread_files_note(f"the unlabeled pool {pool}", "directly in it", unread)])
    for entry in (pool / e.name for e in listed):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name not in datasets and has_images(entry):  # empty folders, lost+found: nothing
            found += find_unlabeled_images([entry])
        elif entry.is_dir() and entry.name not in datasets and linked_folders(entry):
            warn_once([_imageless_pool_note(entry, None)], "note")
        elif entry.is_file() and is_image(entry):
            found.append(entry)
    if not found:  # the usual layout: resolving every known file (30 s for 100k) would be wasted
        return []
    seen = set(real_paths(known))
    dataset_dirs = [os.path.realpath(folder) for name in datasets for folder in (root / name, pool / name)]
    kept = []
    for path, real in zip(found, real_paths(found)):
        if real not in seen and not any(_inside(real, d) for d in dataset_dirs):
            seen.add(real)
            kept.append(path)
    return kept


def queue_advice(pool: int, global_batch: int, world: int = 1, groups: int = 1, batch_norm: bool = True,
                 symmetric: bool = False) -> str:
    """The sentence that says how to get a queue of about half the pool, which must still hold one step's keys: a
    global batch, two with ``symmetric`` (moco.symmetric enqueues both views' keys, and resolve_pretrain_defaults
    refuses a queue under twice the batch; the advice suggested such queues). A smaller batch is suggested only
    where pretraining accepts it: a multiple of the shuffle-BN groups with 2 images per group for BatchNorm, on
    each process (--batch-size is per process)."""
    half = pool // 2
    per = 2 if symmetric else 1  # keys enqueued per image of the global batch
    usual = "A queue of about half the pool is the usual choice here"
    if global_batch * per <= half:
        return f"{usual} (--queue-size {half}; `fewshot run` sets it so)."
    least = 2 * groups if batch_norm else 1
    of = "global batch" if world > 1 else "batch"
    keys = f" ({global_batch * per} keys a step: moco.symmetric enqueues both views')" if symmetric else ""
    for limit in (pool // 4, half):  # room for two steps' keys in the queue, else for one
        batch = limit // per // world // groups * groups
        if batch >= least:
            size = f"{batch} per process (a global batch of {batch * world} images)" if world > 1 else f"{batch}"
            return (f"{usual} (--batch-size {size}, then --queue-size {half}: a {of} of {global_batch}{keys} does "
                    f"not fit in half of this pool; `fewshot run` sets it so).")
    if world > 1:
        smallest = f"{least} images per process (a global batch of {least * world})"
    else:
        smallest = f"{least} images" + (f" ({groups} shuffle-BN groups of 2)" if groups > 1 else "")
    ways = []
    room = half // per  # the largest global batch whose keys fit in half the pool
    if world > 1 and room >= least:  # one process splits its batch into moco.split_bn_groups instead
        n = room // least
        ways.append(f"fewer processes (at most {n} for this pool)" if n > 1 else
                    "one process" + (" with moco.split_bn_groups=1" if batch_norm else ""))
    per_process = room // world  # --batch-size is per process: each of the world's processes enqueues its keys
    if groups > 1 and batch_norm and per_process >= 2:
        ways.append(f"fewer shuffle-BN groups (moco.split_bn_groups={per_process // 2} with --batch-size "
                    f"{per_process // 2 * 2}" + (" per process)" if world > 1 else ")"))
    if global_batch * per < pool:
        queue = f"{global_batch * per}" + (f" to {pool - 1}" if global_batch * per < pool - 1 else "")
        ways.append(f"--queue-size {queue} (less than the pool, at least one step's keys)" if symmetric else
                    f"--queue-size {queue} (less than the pool, at least one {of})")
    if symmetric and least * world <= half:  # one view's keys a step: that smallest batch fits
        ways.append(f"moco.symmetric=false (one view's keys a step) with --batch-size {least}"
                    + (" per process" if world > 1 else ""))
    use = f"Use {', '.join(ways)}, or add images to the pool." if ways else "Add images to the pool."
    more = (f"enqueues {least * world * 2} keys a step (moco.symmetric enqueues both views'), more than half the "
            f"pool" if symmetric else "is more than half the pool")
    return (f"This pool of {pool} images is too small for a queue of about half of it: the smallest batch "
            f"pretraining accepts here, {smallest}, {more}. {use}")


def has_batch_norm(module) -> bool:
    from torch import nn

    return any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in module.modules())


def bn_protection(model, world: int = 1) -> str:
    """What guards the positive pair against BatchNorm leakage, for the start-up line (a ViT has nothing to guard;
    under DDP the key batch is shuffled across the processes, and "split-BN groups=1" read as no guard)."""
    if not has_batch_norm(model.encoder_q):
        return "no BatchNorm (no shuffle needed)"
    if world > 1:
        if not getattr(model, "shuffle_across_ranks", True):
            return (f"no shuffle-BN (moco.shuffle_bn=off, {world} processes): the positive pair can match through "
                    f"BatchNorm statistics")
        return f"shuffle-BN across {world} processes"
    if model.split_bn_groups <= 1:  # one group is the whole batch: moco.shuffle_bn=off or split_bn_groups=1
        return ("no shuffle-BN (split-BN groups=1 on one process): the positive pair can match through BatchNorm "
                "statistics")
    shared = shared_batch_norms(model)
    if shared:  # a BatchNorm type split BN cannot convert: those layers still see the whole batch
        more = f", ... ({len(shared)} in all)" if len(shared) > 3 else ""
        return (f"split-BN groups={model.split_bn_groups} except {len(shared)} BatchNorm layer(s) that still "
                f"normalise over the whole batch ({', '.join(shared[:3])}{more})")
    return f"split-BN groups={model.split_bn_groups}"


def unused_split_bn_note(cfg: dict, model, world: int) -> str | None:
    """Under DDP the key batch is shuffled across the processes and moco.split_bn_groups is not used: a value other
    than the default (config.yaml records it) was dropped without a word, where one process refuses a batch the
    groups do not divide."""
    from fewshot.config import DEFAULTS

    groups = cfg["moco"]["split_bn_groups"]
    if world <= 1 or groups == DEFAULTS["moco"]["split_bn_groups"] or not has_batch_norm(model.encoder_q) or \
            not getattr(model, "shuffle_across_ranks", True):
        return None
    return (f"note: moco.split_bn_groups={groups} is not used on {world} processes: shuffle-BN across the processes "
            f"replaces split BN (the setting applies to a run on one process).")


def shared_bn_warning(model, world: int = 1) -> str | None:
    """The warning for layers split BN left shared: the positive pair can still match through their statistics."""
    shared = shared_batch_norms(model) if world == 1 else []
    if not shared:
        return None
    return (f"warning: moco.split_bn_groups={model.split_bn_groups} cannot split {len(shared)} BatchNorm layer(s) "
            f"of this backbone ({', '.join(shared)}): their statistics are shared by the whole batch, through which "
            f"the positive pair can match (BatchNorm1d/2d and timm's BatchNormAct2d are split). Use another model, "
            f"or run on several processes (shuffle-BN across processes).")


def shared_batch_norms(model) -> list[str]:
    """The encoder's BatchNorm layers that single-process split BN did not convert (none when it is off)."""
    from fewshot.ssl.split_bn import unsplit_batch_norms

    return unsplit_batch_norms(model.encoder_q) if model.split_bn_groups > 1 else []


def keys_per_step(global_batch: int, symmetric: bool) -> int:
    """The keys a MoCo step enqueues: one per image, two with moco.symmetric (both views'), what a queue must hold."""
    return int(global_batch) * (2 if symmetric else 1)


def resolve_pretrain_defaults(cfg: dict, world: int) -> dict:
    """The lr scaled with the global batch and the network a --weights export records, where the config leaves
    them unset; listed as chosen at run time (config.CHOSEN), so that the run's config.yaml given back as
    --config with another batch size scales the lr again."""
    from fewshot.config import record_chosen, run_time_values

    o, t, m = cfg["optim"], cfg["train"], cfg["moco"]
    before = run_time_values(cfg)
    adopt_weights_architecture(cfg["model"])
    if o["lr"] is None:  # the official 0.03 at batch 256, scaled linearly (the course: 0.015 at 128)
        o["lr"] = 0.03 * t["batch_size"] * world / 256
    if o["backbone_lr_mult"] is None:
        o["backbone_lr_mult"] = 1.0
    record_chosen(cfg, before)
    global_batch = t["batch_size"] * world
    # moco.symmetric enqueues both views' keys each step: a queue under twice the batch dropped some unused
    keys = keys_per_step(global_batch, bool(m.get("symmetric")))
    if m["queue_size"] < keys:
        what = (f"the {keys} keys a step enqueues (moco.symmetric=true enqueues both views' keys: 2 x the global "
                f"batch of {global_batch} = {t['batch_size']} x {world} processes)" if keys != global_batch else
                f"the global batch ({global_batch} = {t['batch_size']} x {world} processes)")
        raise UserError(f"moco.queue_size ({m['queue_size']}) is smaller than {what}: the queue could not hold one "
                        f"step's keys. Raise --queue-size or lower --batch-size (`fewshot run`: run.queue_size=K, "
                        f"run.pretrain_batch_size=N).")
    return cfg


def split_groups(cfg: dict, world: int, backbone=None) -> int:
    """Single-process shuffle-BN groups; under DDP the shuffle across ranks does the job, and a backbone without
    BatchNorm (a ViT) has no batch statistics to leak through."""
    mode = cfg["moco"]["shuffle_bn"]
    bs = cfg["train"]["batch_size"]
    batch_norm = backbone is None or has_batch_norm(backbone)
    if batch_norm and bs < 2:  # it used to fail in the first forward pass, as an internal error
        raise UserError(f"--batch-size {bs}: BatchNorm needs at least 2 images per batch"
                        f"{' on each process' if world > 1 else ''}; use a --batch-size of 2 or more.")
    if mode in (False, "off", "none") or world > 1 or not batch_norm:
        return 1
    g = int(cfg["moco"]["split_bn_groups"])
    if g > 1 and bs % g:
        raise UserError(f"--batch-size {bs} must be a multiple of moco.split_bn_groups={g} (single-device "
                        f"shuffle-BN splits each batch into that many groups).")
    if g > 1 and bs // g < 2:
        # One sample per group: BatchNorm has no batch statistics where the feature map is 1x1.
        raise UserError(f"--batch-size {bs} with moco.split_bn_groups={g} leaves {bs // g} sample per shuffle-BN "
                        f"group; each group needs at least 2. Use moco.split_bn_groups={max(1, bs // 2)} or less "
                        f"(a divisor of the batch size), or a larger --batch-size.")
    return max(1, g)


class MoCoTask:
    kind = "moco"
    supports_ema = False
    drop_last = True

    def __init__(self, cfg: dict, infos, device: torch.device, ctx: DistContext, resuming: bool = False,
                 quiet_weights: bool = False):
        """``resuming``: last.pt replaces the model, so model.weights are not read (the file may be gone, as for
        `fewshot train --resume`); ``quiet_weights``: the model.strict=false warning was given already."""
        self.cfg, self.device, self.ctx = cfg, device, ctx
        m, d = cfg["moco"], cfg["data"]
        warn_once([said] if (said := high_temperature_warning(float(m["temperature"]))) else [])
        backbone = create_backbone(cfg["model"]["name"], **backbone_options(cfg["model"]))
        self.weights_loaded = None  # load_backbone_weights' counts, for the start-up line
        self.last_knn: tuple | None = None  # (the last evaluate's result, its knn_metrics): write_knn_metrics
        if cfg["model"]["weights"] and not resuming:
            self.weights_loaded = load_backbone_weights(backbone, cfg["model"]["weights"],
                                                        strict=cfg["model"]["strict"], quiet=quiet_weights)
        self.size = input_size(backbone, cfg["model"]["img_size"])
        check_input_size(backbone, self.size, cfg["model"]["name"])
        mean, std = mean_std(backbone)
        self.normalize = Normalize(mean, std).to(device)
        self.model = MoCo(backbone, dim=m["dim"], queue_size=m["queue_size"], momentum=m["momentum"],
                          temperature=m["temperature"], mlp=m["mlp"], mlp_hidden=m["mlp_hidden"],
                          split_bn_groups=split_groups(cfg, ctx.world, backbone), symmetric=m["symmetric"],
                          shuffle_across_ranks=m["shuffle_bn"] not in (False, "off", "none"))
        self.channels_last = cfg["train"]["channels_last"] is True or (
            cfg["train"]["channels_last"] == "auto" and device.type == "cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        from fewshot.runtime import compile_modules

        # train.compile auto: CUDA only (on the CPU it was measured not to help; docs/performance.md)
        self.compiled = compile_modules([self.model.encoder_q, self.model.encoder_k], cfg["train"]["compile"], device)
        a = cfg["aug"]
        try:
            aug = aug_preset(m["preset"], self.size, scale=tuple(a["scale"]), jitter=tuple(a["jitter"]),
                             jitter_p=a["jitter_p"], gray_p=a["gray_p"], blur_p=a["blur_p"], flip_p=a["flip_p"],
                             mean=mean, std=std)
        except (ValueError, TypeError) as exc:  # aug.* out of range: the user's settings, not a bug
            raise UserError(f"aug settings: {exc}") from None
        self.augment = BatchAugment(aug).to(device)
        cache = default_cache_dir(d["root"], d["cache_dir"])
        paths, self.pool_source = pool_paths(cfg, infos)
        pool = load_images(paths, self.size, cache, crop_pct=1.0, desc="loading unlabeled pool",
                           skip_bad=d["skip_bad_images"] or d["skip_bad_unlabeled"], skip_note=POOL_SKIP_NOTE,
                           max_gb=d.get("cache_max_gb"), bit_depth=d.get("bit_depth", "auto"))
        self.pool = pool.images[pool.valid] if not bool(pool.valid.all()) else pool.images
        self.pool_skipped = list(pool.bad)
        # the files the pool's images come from: a resume refuses a pool whose files changed (images drawn by position)
        kept = [p for p, ok in zip(paths, pool.valid.tolist()) if ok]
        self.pool_key = pool_key(kept, d["root"], True)
        self.legacy_pool_key = pool_key(kept, d["root"], True, legacy=True)  # what older checkpoints recorded
        self.space = LabelSpace.from_infos(infos)
        self.train_set, self.val_set = load_splits(infos, ("train", "val"), self.space, self.size, cache,
                                                   d["crop_pct"], d["skip_bad_images"], d.get("cache_max_gb"),
                                                   d.get("bit_depth", "auto"))
        self.eval_every = m["knn_every"]
        self.n_parameters = sum(p.numel() for p in self.model.encoder_q.backbone.parameters())

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.model.encoder_q.parameters() if p.requires_grad],
                 "weight_decay": self.cfg["optim"]["weight_decay"], "lr_scale": 1.0}]

    def plan_epoch(self, epoch: int) -> list[torch.Tensor]:
        t = self.cfg["train"]
        return epoch_batches(len(self.pool), t["batch_size"], epoch, t["seed"], "shuffle", self.ctx.rank,
                             self.ctx.world, drop_last=True)

    def make_batch(self, idx: torch.Tensor, epoch: int, step: int):
        """Two views per image. Parameters are drawn for the global batch and sliced per rank, so one
        process given the global batch sees exactly what the ranks see together."""
        bs, seed = len(idx), self.cfg["train"]["seed"]
        gen = make_generator(seed, epoch, step, 1)
        hw = tuple(self.pool.shape[-2:])
        total = bs * self.ctx.world
        lo, hi = self.ctx.rank * bs, (self.ctx.rank + 1) * bs
        pq = {k: v[lo:hi] for k, v in self.augment.sample_params(total, gen, hw).items()}
        pk = {k: v[lo:hi] for k, v in self.augment.sample_params(total, gen, hw).items()}
        x = self.pool[idx].to(self.device, non_blocking=True)
        return (self.augment.apply(x, pq, self.channels_last), self.augment.apply(x, pk, self.channels_last),
                make_generator(seed, epoch, step, 2))

    def training_step(self, model, batch):
        im_q, im_k, gen = batch
        loss, logits = model(im_q, im_k, gen)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        acc1, acc5 = topk_accuracy(logits.detach(), target, (1, 5))
        return loss, {"contrast_acc1": acc1, "contrast_acc5": acc5}, logits.shape[0]

    def nonfinite_hint(self) -> str | None:
        """The Engine's non-finite message names a tiny moco.temperature as the likely cause (temperature_hint)."""
        return temperature_hint(float(self.cfg["moco"]["temperature"]))

    def evaluate(self, model, epoch: int) -> dict:
        """kNN accuracy per dataset: the dataset's labelled train images vote for its val images. The whole
        result (acc5, n) is kept in ``last_knn``: `fewshot run`'s metrics.json of the weights its stage ends with
        is the engine's closing evaluation, not a second one."""
        full = self.knn_metrics(model)
        per = {name: m["acc1"] for name, m in full.items()}
        per["mean"] = sum(per.values()) / max(1, len(per))
        result = {"score": per["mean"], "knn_acc1": per}
        self.last_knn = (result, full)
        return result

    def knn_metrics(self, model) -> dict[str, dict]:
        """Per dataset {acc1, acc5, n} of the weighted kNN monitor (k, t from moco.knn_*) on val."""
        backbone = model.encoder_q.backbone
        tr = backbone_features(backbone, self.train_set.images, self.normalize, self.device)
        va = backbone_features(backbone, self.val_set.images, self.normalize, self.device)
        k, t = self.cfg["moco"]["knn_k"], self.cfg["moco"]["knn_t"]
        out = {}
        for d, name in enumerate(self.space.names):
            mt, mv = self.train_set.dataset_ids == d, self.val_set.dataset_ids == d
            off = self.space.offsets[d]
            labels = self.val_set.targets[mv] - off
            scores = knn_predict(tr[mt], self.train_set.targets[mt] - off, va[mv], self.space.sizes[d], k, t)
            n = int(labels.numel())
            acc1, acc5 = topk_accuracy(scores, labels, (1, 5)) if n else (float("nan"), float("nan"))
            out[name] = {"acc1": acc1, "acc5": acc5, "n": n}
        return out

    def checkpoint_extra(self) -> dict:
        return {"label_space": self.space.to_dict(), "n_parameters": self.n_parameters, "img_size": self.size,
                "model_name": self.cfg["model"]["name"], "n_pool": len(self.pool), "pool_key": self.pool_key}

    def load_checkpoint_extra(self, ck: dict) -> None:
        """The pool the run trained on: the same count, and the same files (a checkpoint saved before the key was
        kept: the count only); swapped files of the same count resumed without a word."""
        from fewshot.train.checkpoint import check_same_images

        check_same_images(ck, "n_pool", len(self.pool), "pool images")
        if ck.get("pool_key") not in (None, self.pool_key, self.legacy_pool_key):
            raise UserError(f"--resume continues a MoCo run on the unlabeled pool it trained with, but the pool "
                            f"({self.pool_source}) has other files now ({len(self.pool)} images, as in the run; files "
                            f"renamed or moved count as other files). Restore the pool's files to resume, or start a "
                            f"new run with another --out.")


def run_pretrain(cfg: dict, out: Path, resume: bool = False) -> dict:
    from fewshot.train.finetune import start_job, undone_if_start_fails

    cfg["_task"] = "moco"
    with undone_if_start_fails(out) as start:  # a bad model or weights file leaves no run folder behind
        # its last.pt is left unheld (mapped, it kept a replaced file on disk while the run trained)
        device, ctx, infos, resuming = start_job(cfg, out, resume,
                                                 lambda ctx, resuming: resolve_pretrain_defaults(cfg, ctx.world),
                                                 start, "moco")[:4]  # MoCoTask.kind
        task = MoCoTask(cfg, infos, device, ctx, resuming=resuming)
        engine = Engine(task, cfg, out, device, ctx)
        announce_pretrain(cfg, out, task, engine, device, ctx)
    result = engine.fit(resume=resume)
    if ctx.is_main:
        from fewshot.report.plots import plot_pretrain_curves

        plot_pretrain_curves(Path(out))
        written = write_knn_metrics(engine, task, Path(out))
        if written:
            print(one_line(knn_summary(written, result)))
    return result or {}


def announce_pretrain(cfg: dict, out: Path, task: MoCoTask, engine: Engine, device, ctx) -> None:
    """The start's lines (rank 0): what is pretrained on what, and the warnings about the queue and BatchNorm;
    skipped_images.json."""
    if ctx.is_main:
        write_skipped(out, task.pool_skipped + task.train_set.skipped + task.val_set.skipped)
        m = cfg["moco"]
        print(one_line(f"MoCo ({m['preset']}) pretraining {cfg['model']['name']}"
                       f"{weights_note(task.weights_loaded, cfg['model']['weights'])} on {len(task.pool)} unlabeled "
                       f"images ({task.pool_source}) at {task.size}px on {device} x{ctx.world} ({engine.precision}"
                       f"{speed_settings(task)}): "
                       f"K={m['queue_size']}, m={m['momentum']}, T={m['temperature']}, "
                       f"{bn_protection(task.model, ctx.world)}; run directory {out}"))
        for said in (unused_split_bn_note(cfg, task.model, ctx.world), shared_bn_warning(task.model, ctx.world)):
            if said:
                print(said, flush=True)
        if m["queue_size"] >= len(task.pool):
            advice = queue_advice(len(task.pool), cfg["train"]["batch_size"] * ctx.world, ctx.world,
                                  task.model.split_bn_groups, has_batch_norm(task.model.encoder_q),
                                  bool(m.get("symmetric")))
            print(f"warning: the queue (K={m['queue_size']}) holds at least as many keys as the pool has images "
                  f"({len(task.pool)}): each query meets older keys of its own image as negatives. {advice}",
                  flush=True)


def speed_settings(task: MoCoTask) -> str:
    """The start line's word on channels_last and train.compile where they are on: a run's speed depends on them,
    and the first epoch's images_per_s (log.jsonl) also counts the minutes compiling takes."""
    on = ", channels_last" if task.channels_last else ""
    return on + (", compiled: the first epoch's speed includes compiling" if task.compiled else "")


def knn_k_words(task: MoCoTask, k: int) -> str:
    """The k the kNN monitor used: knn_predict caps it at each dataset's train images (k=200 on a 100-image train
    set was said as k=200, and was 100)."""
    used = {name: max(1, min(k, int((task.train_set.dataset_ids == d).sum())))  # as knn_predict caps it
            for d, name in enumerate(task.space.names)}
    if all(u == k for u in used.values()):
        return f"k={k}"
    if len(set(used.values())) == 1:
        return f"k={next(iter(used.values()))}: moco.knn_k={k} capped at the train images"
    return f"moco.knn_k={k} capped at the train images: " + ", ".join(f"{n} k={u}" for n, u in used.items())


def knn_summary(written: dict, last_eval: dict | None) -> str:
    """The console's last word agrees with metrics.json (the best checkpoint's kNN accuracy); the last
    epoch's mean is added when it differs, so a user who exports last.pt sees both."""
    per = ", ".join(f"{name} {d['acc1']:.2f}" for name, d in written["datasets"].items())
    line = (f"kNN accuracy (val) of {written['checkpoint']} (epoch {written['best_epoch']}): {per}, "
            f"mean {written['mean_acc1']:.2f}")
    last = (last_eval or {}).get("knn_acc1", {}).get("mean")
    if last is not None and abs(last - written["mean_acc1"]) > 5e-3:
        line += f"; last evaluated epoch: mean {last:.2f}"
    return line


def write_knn_metrics(engine: Engine, task: MoCoTask, out: Path, which: str = "best") -> dict | None:
    """RUN/metrics.json in the SPEC's format (every run directory has one): the kNN monitor on the val splits,
    known-source mode, of the checkpoint ``which`` names, said in its ``checkpoint`` and ``epoch``. "best" (a
    standalone `fewshot pretrain`): best.pt (the epoch with the best mean kNN accuracy; last.pt without one),
    read from disk. "last" (`fewshot run`'s stage): the weights the engine ended with, which are last.pt's and
    the exported backbone's: its metrics.json scored best.pt next to an export of last.pt. Returns what it wrote
    plus the checkpoint's file name (None without a checkpoint)."""
    from fewshot.train.checkpoint import load_checkpoint, logged_epoch
    from fewshot.utils import write_json

    if which == "last":
        ckpt = out / "checkpoints" / "last.pt"
        epoch = logged_epoch({"epoch": engine.epoch, "step_in_epoch": engine.step_in_epoch})
        # the engine's last evaluation, of these weights (it evaluates after its last step), where this session
        # made it; else (resumed with the stop evaluated before the kill, or nothing left to train) scored now
        kept = task.last_knn
        per = kept[1] if kept is not None and kept[0] is engine.last_eval else task.knn_metrics(task.model)
        extra = {"checkpoint": ckpt.name, "epoch": epoch}
    else:
        ckpt = out / "checkpoints" / "best.pt"
        ckpt = ckpt if ckpt.is_file() else out / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            return None
        ck = load_checkpoint(ckpt)
        task.model.load_state_dict(ck["model"])
        per = task.knn_metrics(task.model)
        extra = {"checkpoint": ckpt.name, "epoch": logged_epoch(ck), "best_epoch": logged_epoch(ck)}
    m = task.cfg["moco"]
    metrics = {
        "mode": "known", "n_parameters": task.n_parameters,
        "mean_acc1": sum(d["acc1"] for d in per.values()) / max(1, len(per)), "datasets": per, "routing_acc": None,
        "split": "val", "metric": f"kNN ({knn_k_words(task, int(m['knn_k']))}, t={m['knn_t']}) on frozen backbone "
                                  f"features", **extra}
    write_json(out / "metrics.json", metrics)
    return dict(metrics)
