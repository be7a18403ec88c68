"""The memory MoCo's queue and projection head would take, against this machine's: a size that cannot fit is refused
at start-up, naming the field that is too big, rather than failing when the queue is allocated."""

from __future__ import annotations

import os

from fewshot.config.defaults import DEFAULTS
from fewshot.config.fields import FieldError, _is_whole


def memory_bytes() -> int | None:
    """This machine's physical memory (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


MOCO_MEMORY_CAP = 1 << 40  # 1 TiB: where the machine's memory is unknown, no MoCo queue may need more
HEAD_WIDTH_GUESS = 2048  # a ResNet-50's features: the widest MLP head input the presets build


def moco_head_params(dim: int, hidden: int | None, mlp: bool = True) -> int:
    """The weights of MoCo's projection head on a backbone HEAD_WIDTH_GUESS wide: width x hidden and hidden x dim
    (hidden: the width where unset), or one width x dim layer without an MLP. The first layer was left out, so
    moco.mlp_hidden=2000000 on resnet50 was estimated at about 4 GiB of the 60 it takes."""
    if not mlp:
        return HEAD_WIDTH_GUESS * dim
    hidden = hidden or HEAD_WIDTH_GUESS
    return HEAD_WIDTH_GUESS * hidden + hidden * dim


def moco_bytes(queue_size: int, dim: int, batch: int, hidden: int | None, mlp: bool = True) -> int:
    """About the memory MoCo's queue takes in a step: the queue and its copy in the loss (K x dim floats each), the
    logits with their gradient and softmax (3 x batch x K), and the projection heads' weights with gradients and
    optimiser state (4 copies of moco_head_params)."""
    return 4 * (2 * queue_size * dim + 3 * batch * queue_size + 4 * moco_head_params(dim, hidden, mlp))


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n < 2**40 else f"{n / 2**40:,.1f} TiB"


def check_moco_memory(cfg: dict) -> None:
    """A queue (moco.queue_size, run.queue_size) or a projection (moco.dim, moco.mlp_hidden) that cannot fit in this
    machine's memory is refused now, naming the field that is too big: `--queue-size 1000000000000` ended in a
    RuntimeError traceback when the queue was allocated."""
    moco, train, run = cfg.get("moco"), cfg.get("train"), cfg.get("run")
    if not all(isinstance(s, dict) for s in (moco, train, run)):
        return
    total = memory_bytes() or MOCO_MEMORY_CAP
    where = f"this machine's {_gib(total)} of memory" if memory_bytes() else f"{_gib(total)}"
    # the hidden width builds a layer only in an MLP head (moco.mlp: false is one linear layer)
    mlp = moco.get("mlp") is not False
    hidden = moco.get("mlp_hidden") if _is_whole(moco.get("mlp_hidden")) and mlp else None
    for field, size, batch in (("moco.queue_size", moco.get("queue_size"), train.get("batch_size")),
                               ("run.queue_size", run.get("queue_size"), run.get("pretrain_batch_size"))):
        if not all(_is_whole(v) for v in (size, moco.get("dim"), batch)):
            continue  # unset (run.queue_size: None), or refused by validate with its own message
        need = moco_bytes(size, moco["dim"], batch, hidden, mlp)
        if need <= total:
            continue
        batch_field = "train.batch_size" if field == "moco.queue_size" else "run.pretrain_batch_size"
        if moco_bytes(size, moco["dim"], min(batch, 256), hidden, mlp) <= total:  # the batch, not the queue:
            # fine-tuning (`train train.batch_size=100000000000`, no MoCo queue at all) was told to shrink
            # moco.queue_size
            # the figure is MoCo's (its scores against the queue); fine-tuning has no queue, yet its images, logits
            # and activations grow with the batch as well, and a batch this size fits neither
            used = (f"with {field} {size}, MoCo pretraining's scores alone would need about {_gib(need)}"
                    if batch_field == "run.pretrain_batch_size" else
                    f"the images, activations and logits of one batch all grow with it; in MoCo pretraining, with "
                    f"{field} {size}, its scores alone would need about {_gib(need)}")
            raise FieldError(batch_field, f"{batch_field} {batch} is too large: a batch of {batch} images cannot "
                                          f"fit in {where} ({used}). Give a batch size of a few hundred at most.")
        wide = hidden is not None and hidden > HEAD_WIDTH_GUESS  # too wide for any queue: no queue can make room
        if hidden is not None and (moco_bytes(size, moco["dim"], batch, None) <= total
                                   or wide and moco_bytes(1, moco["dim"], batch, hidden) > total):
            # the head's width, not the queue: `moco.mlp_hidden=100000000` was told to shrink the queue
            raise FieldError("moco.mlp_hidden", f"moco.mlp_hidden {hidden} (with moco.dim {moco['dim']}) needs about "
                                                f"{_gib(need)} for MoCo's projection head and its copies, more than "
                                                f"{where}. Give a moco.mlp_hidden of a few thousand at most, or "
                                                f"moco.mlp_hidden=null for the backbone's feature width (default).")
        if moco_bytes(size, DEFAULTS["moco"]["dim"], batch, hidden, mlp) <= total:  # the queue fits, the width not
            raise FieldError("moco.dim", f"moco.dim {moco['dim']} (with {field} {size}) needs about {_gib(need)} "
                                         f"for MoCo's queue of negative keys and its projection, more than {where}. "
                                         f"Give a moco.dim of a few hundred at most (default 128).")
        raise FieldError(field, f"{field} {size} with moco.dim {moco['dim']} needs about {_gib(need)} for MoCo's "
                                f"queue of negative keys, more than {where}. Give a smaller queue (the MoCo papers "
                                f"use 4096 to 65536 keys; at most about "
                                f"{_max_queue(total, moco['dim'], batch, hidden, mlp)} fit here).")


def _max_queue(total: int, dim: int, batch: int, hidden: int | None = None, mlp: bool = True) -> str:
    """The largest queue moco_bytes lets fit in ``total`` bytes beside the projection head (``hidden`` wide),
    rounded down to a power of two, as text."""
    most = max(1, (total // 4 - 4 * moco_head_params(dim, hidden, mlp)) // (2 * dim + 3 * batch))
    return f"{1 << (int(most).bit_length() - 1):,}"
