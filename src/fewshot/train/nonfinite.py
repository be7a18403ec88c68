"""A diverged run's diagnosis: whether the weights are still finite, and the words of the error that stops it.

Apart from the loop (engine.py) because these are texts and one check of a few arguments each; the loop only
decides when to ask. Each function that names a rank or a checkpoint is a collective: every rank calls it together,
so that every rank's message says the same.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fewshot.errors import UserError
from fewshot.train.distributed import all_gather_object, all_reduce_mean, broadcast_object


class NonFiniteLossError(UserError):
    """Training diverged; the last good checkpoint is kept."""


def weights_finite(ctx, tensors: list[torch.Tensor]) -> bool:
    """Whether every tensor holds only finite values, on every rank. One fused norm (an inf or NaN anywhere makes
    it non-finite): about 12 ms for a resnet18 and its EMA on one CPU thread, where an isfinite() per tensor took
    150 ms."""
    # an fp16 norm would overflow at 65504; a float32 one only past ~1e19 per value: a diverged model too
    ok = not tensors or bool(
        torch.isfinite(torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32))).all())
    if ctx.enabled:
        ok = all_reduce_mean(ctx, 1.0 if ok else 0.0) == 1.0
    return ok


def diverged_tensor(ctx, named: list[tuple[str, torch.Tensor]]) -> tuple[str, float | None]:
    """Which tensor failed weights_finite, the same on every rank: (name, None) for the first holding inf/NaN, else
    (name, largest |value|) for the first whose float32 norm overflowed with finite values (past ~1e19: a ghostnet
    MoCo run's running_var of 1e24 was called "inf/NaN"). Called by every rank together, only after a failed check
    (an isfinite per tensor is slow)."""
    found = next(((name, None) for name, x in named if not bool(torch.isfinite(x).all())), None)
    if found is None:
        found = next(((name, float(x.abs().max())) for name, x in named
                      if not math.isfinite(float(torch.linalg.vector_norm(x, dtype=torch.float32)))), None)
    return next((f for f in all_gather_object(ctx, found) if f is not None), ("a tensor", None))


def diverged_what(culprit: tuple[str, float | None] | None) -> tuple[str, str]:
    """The verb and the named tensor of diverged_weights_error's first sentence: inf/NaN only where a value is."""
    if culprit is None:
        return "became inf/NaN", ""
    name, largest = culprit
    if largest is None:
        return "became inf/NaN", f" ({name} holds inf/NaN)"
    if largest > 1.8e19:  # its own square is past float32's largest value (3.4e38)
        return ("grew too large for float32 arithmetic", f" ({name} reached {largest:.3g}: still finite, but past "
                f"~1e19, where float32 sums of squares such as norms and variances overflow to inf)")
    # review rev81: a big tensor of values under 1e19 (1e17 each) was said to be "past ~1e19"
    return ("grew too large for float32 arithmetic", f" ({name} reached {largest:.3g}: still finite, but the "
            f"float32 sum of the squares of its values overflows to inf)")


def diverged_weights_error(epoch: int, skipped: int, kept: str, causes: str, lr: float,
                           culprit: tuple[str, float | None] | None = None) -> NonFiniteLossError:
    """The error for weights or BatchNorm statistics gone inf/NaN (or finite but huge) in epoch index ``epoch``:
    ``skipped`` non-finite losses were skipped in it, ``kept`` says the last good checkpoint, ``causes`` is
    nonfinite_causes' text, ``lr`` the last step's learning rate and ``culprit`` diverged_tensor's answer."""
    losses = (f"after {skipped} non-finite loss(es) were skipped (train.skip_nonfinite) and the others stayed "
              f"finite" if skipped else "although the loss stayed finite")
    verb, named = diverged_what(culprit)
    return NonFiniteLossError(
        f"the model's weights or BatchNorm statistics {verb} in epoch {epoch + 1} {losses}{named}: training "
        f"diverged, and this epoch's model was neither evaluated nor saved. {kept}.{causes} "
        f"the learning rate (optim.lr=...; the last step's was {lr:g}) and start again.")


def nonfinite_causes(task, amp: torch.dtype | None) -> str:
    """The causes this run shows besides the learning rate, in sentences, then " Otherwise lower" (or " Lower"):
    the task's own (MoCo: a tiny moco.temperature), shuffle-BN groups of a few images and fp16 autocast's range.
    "Lower the learning rate" alone sent a run with moco.temperature=1e-30 after the wrong setting."""
    hint = getattr(task, "nonfinite_hint", None)
    causes = [text for text in ((hint() if hint is not None else None), small_split_bn_hint(task)) if text]
    if amp == torch.float16:
        causes.append("This run computes in fp16 autocast, whose values end at 65504: train.amp=bf16, or off "
                      "(fp32), keeps larger values finite")
    said = "".join(f" {text}." for text in causes)
    return f"{said} Otherwise lower" if causes else " Lower"


# at most this many images per shuffle-BN group is named as a cause: ghostnet_050's MoCo (8 groups of 2) blew up
# at the default lr and trained at moco.split_bn_groups=2 (8 each), where a 100x lower lr was needed otherwise
FEW_PER_GROUP = 4
ENOUGH_PER_GROUP = 8


def split_bn_batch(task) -> tuple[int, int] | None:
    """(groups, images per step) of a MoCo key encoder's split BatchNorm on one process: MoCo pretraining's
    (MoCo.split_bn_groups, the batch) or the joint loss's (JointMoCo.groups, semi.mu batches); None without."""
    cfg, model, joint = getattr(task, "cfg", None), getattr(task, "model", None), getattr(task, "joint", None)
    if not isinstance(cfg, dict) or "train" not in cfg:
        return None
    batch = int(cfg["train"]["batch_size"])
    if int(getattr(model, "split_bn_groups", 1)) > 1:
        return int(model.split_bn_groups), batch
    if int(getattr(joint, "groups", 1)) > 1:
        return int(joint.groups), int(cfg["semi"]["mu"]) * batch
    return None


def small_split_bn_hint(task) -> str | None:
    """Shuffle-BN groups of FEW_PER_GROUP images or fewer as a cause, with the setting that gives each group
    ENOUGH_PER_GROUP: "lower the learning rate" alone sent such a run after a 100x lower rate."""
    split = split_bn_batch(task)
    if split is None or split[1] // split[0] > FEW_PER_GROUP:
        return None
    groups, n = split
    fewer = max([g for g in range(1, groups) if n % g == 0 and n // g >= ENOUGH_PER_GROUP] or [1])
    return (f"MoCo's shuffle-BN splits each batch of {n} images into {groups} BatchNorm groups of {n // groups}, "
            f"whose statistics can be noisy enough to blow up: fewer groups (moco.split_bn_groups={fewer}, "
            f"{n // fewer} images each) or moco.shuffle_bn=off give each more images")


def last_good_checkpoint(ctx, ckpt_dir: Path, saved_step: int | None) -> str:
    """Where training can go back to, as rank 0 knows it (it alone writes last.pt; ``saved_step``: the global step
    of the last.pt this process wrote last), so that every rank's message says the same. Called by every rank
    together."""
    last = ckpt_dir / "last.pt"
    text = (f"The last good checkpoint is {last} (global step {saved_step})" if saved_step is not None
            else (f"The last good checkpoint is {last}" if last.is_file() else "No checkpoint was written"))
    return broadcast_object(ctx, text)


def nonfinite_loss_text(ctx, loss: torch.Tensor) -> str:
    """The non-finite loss, naming its rank under DDP: a rank's own loss may be finite when another's was not
    (Engine._finite decides for all of them). Called by every rank together."""
    values = all_gather_object(ctx, float(loss.detach().float().mean()))
    bad = [(rank, v) for rank, v in enumerate(values) if not math.isfinite(v)] or list(enumerate(values))
    return f"{bad[0][1]}" + (f" on rank {bad[0][0]}" if ctx.enabled else "")
