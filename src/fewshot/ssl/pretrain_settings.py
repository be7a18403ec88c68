"""MoCo pretraining's settings: the defaults chosen at run time (lr, queue checks), the shuffle-BN groups of one
process, and the start-up words about the queue and BatchNorm (what guards the positive pair, what to change
when the pool is too small for the queue)."""

from __future__ import annotations

from fewshot.errors import UserError
from fewshot.models.backbone import adopt_weights_architecture


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
    from fewshot.train.start_checks import batch_size_named

    mode = cfg["moco"]["shuffle_bn"]
    bs = cfg["train"]["batch_size"]
    named = batch_size_named(bs)  # a word or a config file gives it as often as --batch-size does
    batch_norm = backbone is None or has_batch_norm(backbone)
    if batch_norm and bs < 2:  # it used to fail in the first forward pass, as an internal error
        raise UserError(f"{named}: BatchNorm needs at least 2 images per batch"
                        f"{' on each process' if world > 1 else ''}; use a batch size of 2 or more.")
    if mode in (False, "off", "none") or world > 1 or not batch_norm:
        return 1
    g = int(cfg["moco"]["split_bn_groups"])
    if g > 1 and bs % g:
        raise UserError(f"{named} must be a multiple of moco.split_bn_groups={g} (single-device "
                        f"shuffle-BN splits each batch into that many groups).")
    if g > 1 and bs // g < 2:
        # One sample per group: BatchNorm has no batch statistics where the feature map is 1x1.
        raise UserError(f"{named} with moco.split_bn_groups={g} leaves {bs // g} sample per shuffle-BN "
                        f"group; each group needs at least 2. Use moco.split_bn_groups={max(1, bs // 2)} or less "
                        f"(a divisor of the batch size), or a larger batch size.")
    return max(1, g)
