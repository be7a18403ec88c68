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


def diverged_weights_error(epoch: int, skipped: int, kept: str, causes: str, lr: float) -> NonFiniteLossError:
    """The error for weights or BatchNorm statistics gone inf/NaN in epoch index ``epoch``: ``skipped`` non-finite
    losses were skipped in it, ``kept`` says the last good checkpoint, ``causes`` is nonfinite_causes' text and
    ``lr`` the last step's learning rate."""
    losses = (f"after {skipped} non-finite loss(es) were skipped (train.skip_nonfinite) and the others stayed "
              f"finite" if skipped else "although the loss stayed finite")
    return NonFiniteLossError(
        f"the model's weights or BatchNorm statistics became inf/NaN in epoch {epoch + 1} {losses}: training "
        f"diverged, and this epoch's model was neither evaluated nor saved. {kept}.{causes} "
        f"the learning rate (optim.lr=...; the last step's was {lr:g}) and start again.")


def nonfinite_causes(task, amp: torch.dtype | None) -> str:
    """The causes this run shows besides the learning rate, in sentences, then " Otherwise lower" (or " Lower"):
    the task's own (MoCo: a tiny moco.temperature) and fp16 autocast's range. "Lower the learning rate" alone
    sent a run with moco.temperature=1e-30 after the wrong setting."""
    hint = getattr(task, "nonfinite_hint", None)
    causes = [text for text in ((hint() if hint is not None else None),) if text]
    if amp == torch.float16:
        causes.append("This run computes in fp16 autocast, whose values end at 65504: train.amp=bf16, or off "
                      "(fp32), keeps larger values finite")
    said = "".join(f" {text}." for text in causes)
    return f"{said} Otherwise lower" if causes else " Lower"


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
