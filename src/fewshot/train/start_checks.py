"""Why a run cannot start or resume here: the checks made before any training, each a UserError that says what
to change.

Apart from the loop (engine.py) because finetune.start_job and `fewshot run`'s planning make the same checks
before an Engine exists (a refused resume must be said before the task is built), and every rank makes them
together: agree_on_checkpoint is a collective.
"""

from __future__ import annotations

from pathlib import Path

from fewshot.errors import UserError
from fewshot.train.distributed import all_gather_object


def batch_size_named(bs) -> str:
    """The batch size as a message names it, true however it was given: "--batch-size 1" named a flag the user
    never typed where train.batch_size=1 (a key=value word or a config file) set it."""
    return f"train.batch_size={bs} (or --batch-size {bs})"


def empty_epoch_error(task, cfg: dict, world: int) -> UserError:
    """Why an epoch plan holds no batch, and what the user can change."""
    bs = cfg["train"]["batch_size"]
    if task.kind == "moco":
        of = f"{bs * world} ({bs} per process x {world} processes)" if world > 1 else f"{bs}"
        fewer = ", run on fewer processes" if world > 1 else ""
        n = len(task.pool)
        if n == 0:  # no batch size helps ("has 0 images, fewer than one batch of 4: lower --batch-size")
            return UserError(f"the unlabeled pool ({getattr(task, 'pool_source', 'as found')}) holds no images: MoCo "
                             f"has nothing to train on. Add images to the pool.")
        return UserError(f"the unlabeled pool has {n} image{'' if n == 1 else 's'}, fewer than one batch of {of} "
                         f"(MoCo drops an incomplete batch): lower --batch-size (`fewshot run`: "
                         f"run.pretrain_batch_size=N){fewer} or add images to the pool.")
    if bs < 2:
        return UserError(f"{batch_size_named(bs)}: BatchNorm needs at least 2 images per batch in training; use 2 or "
                         f"more.")
    return UserError(f"{len(task.train_set)} training images give no batch of at least 2 images per process "
                     f"({world} process(es)): add training images or run on fewer processes.")


def check_same_world(path: Path, ck: dict, world: int) -> None:
    """A run resumes only on the number of processes that wrote it: steps per epoch, the global batch and the
    schedule's length all depend on it."""
    saved = int(ck.get("world", world))
    if saved != world:
        head = (f"{path} was written by a run on {saved} process(es); resume it on {saved} in all "
                f"(nnodes x nproc_per_node: `torchrun --nproc_per_node={saved} ...` on one machine"
                f"{', or without torchrun' if saved == 1 else ''}). "
                f"On {world} the epoch plan differs: the learning-rate schedule would jump and "
                f"a mid-epoch stop would skip or repeat batches.")
        if "joint_moco" in ck and world > 1:  # the advice below would lead to a refusal
            raise UserError(f"{head} (semi.method=moco, its joint MoCo loss, runs on one process only.)")
        raise UserError(f"{head} To continue on {world}, start a "
                        f"new run from this one's weights (`--weights {path}`), with a new schedule and optimizer"
                        + (": `train --weights` takes the pretrained-backbone recipe (lr 1e-4, backbone x0.1) unless "
                           "--lr and optim.backbone_lr_mult repeat the run's config.yaml."
                           if ck.get("kind") == "supervised" else "."))


def check_resume_fits(path: Path, ck: dict, kind: str, world: int) -> None:
    """What a checkpoint must be before its content is compared with the run's: of the task's kind and written
    on this many processes (Engine.resume, and start_job's before the task is built: its settings checks answered
    another process count with advice that leads nowhere, and run_finetune's said "trained on 999 training images"
    of a moco last.pt)."""
    if ck.get("kind") != kind:
        raise UserError(f"{path} is a {ck.get('kind')} checkpoint; cannot resume a {kind} run from it.")
    check_same_world(path, ck, world)


def agree_on_checkpoint(ctx, path: Path, ck: dict | None, unreadable: Exception | None = None) -> None:
    """Every rank resumes from the same last.pt, or none does. Each reads it from its own --out: on nodes with
    node-local disks a rank that saw no last.pt started from scratch beside rank 0's resume, and the ranks'
    collectives met out of step (gloo: "collective mismatch"; nccl: a hang). Called by every rank together (by
    Engine.resume, and by finetune.start_job before its own checks of the file)."""
    if not ctx.enabled:
        return
    # the training time it was written at tells apart two files of one global step (copies of other sessions).
    # Built so that it cannot raise on one rank alone (the others would wait in the gather), and compared as text
    # (a NaN read back is unequal to itself: identical files looked different)
    try:
        view = (("unreadable", str(unreadable)) if unreadable is not None else None if ck is None else
                (int(ck.get("global_step") or 0), repr(float(ck.get("train_seconds") or 0.0))))
    except (TypeError, ValueError, OverflowError) as exc:
        view = ("unreadable", f"global_step or train_seconds is no number: {exc}")
    seen = all_gather_object(ctx, view)
    if len(set(seen)) == 1:
        return  # the same view everywhere (an unreadable file: each rank raises its own error next)
    views: dict = {}
    for rank, view in enumerate(seen):
        views.setdefault(view, []).append(str(rank))
    steps = [view[0] for view in views if view is not None]

    def said_of(view) -> str:
        if view is None:
            return "no last.pt"
        if view[0] == "unreadable":
            return f"an unreadable last.pt ({view[1]})"
        step, seconds = view
        return f"last.pt at global step {step}" + (f" after {float(seconds):.1f} s of training"
                                                    if steps.count(step) > 1 else "")

    said = "; ".join(f"rank{'s' if len(ranks) > 1 else ''} {', '.join(ranks)}: {said_of(view)}"
                     for view, ranks in views.items())
    raise UserError(f"--resume: the processes do not see the same checkpoint {path} ({said}). --out must be a "
                    f"folder on storage that every node shares: each process reads last.pt from it and rank 0 "
                    f"alone writes it. Put the run on a shared file system (or copy it to the same path on "
                    f"every node) and resume again.")


def image_counts(task) -> dict[str, int]:
    """The images a task decoded and trains on, which every rank's epoch plan is built from."""
    counts = {split: len(getattr(task, f"{split}_set")) for split in ("train", "val") if hasattr(task, f"{split}_set")}
    pool = getattr(task, "pool", None)  # MoCo's unlabeled pool
    if pool is None and getattr(task, "unlabeled", None) is not None:  # FixMatch's
        pool = task.unlabeled.images
    if pool is not None:
        counts["unlabeled"] = len(pool)
    return counts


def image_fingerprints(task) -> dict[str, str]:
    """What the ranks compare of the pixels a task decoded (check_same_image_counts), by part as a message names it:
    each labelled split per dataset (ImageSet.fingerprints) and the pool; a part whose digests are not known is left
    out here, and distributed._check_same_pixels says which part a rank could not compare."""
    out = {}
    for split in ("train", "val"):
        for name, fingerprint in (getattr(getattr(task, f"{split}_set", None), "fingerprints", None) or {}).items():
            out[f"{split} images of {name}"] = fingerprint
    pool = getattr(task, "pool_digest", None)  # MoCo's unlabeled pool
    if pool is None:  # FixMatch's
        pool = getattr(getattr(task, "unlabeled", None), "digest", None)
    if pool is not None:
        out["the pool"] = pool
    return out
