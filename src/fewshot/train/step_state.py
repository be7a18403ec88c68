"""The tensors a training step changes, and whether they and the loss stayed finite: copies kept where a step may
be skipped (train.skip_nonfinite) or redone eagerly (compile_fallback) and put back after it, the parameters the
optimizer trains outside the model, and the checks of the loss and the weights (nonfinite.py has their words).

Apart from the loop (engine.py) because what a step changes besides the gradients is one job of its own, asked by
the loop, the compile fallback and the disk-space estimate. StepStateMixin's methods are the Engine's: they read
its task, model, ema, optimizer, ctx, amp, ckpt_dir, _saved_step, nonfinite_skipped and epoch_skips_start, and
keep the last step's copies in _saved_forward_state.
"""

from __future__ import annotations

import torch

from fewshot.train.distributed import all_reduce_mean
from fewshot.train.nonfinite import (diverged_tensor, diverged_weights_error, last_good_checkpoint, nonfinite_causes,
                                     weights_finite)


class StepStateMixin:
    """A step's changed state kept and put back, the trained tensors outside the model, and the finite checks."""

    @torch.no_grad()
    def _forward_state(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the tensors a forward pass may change: buffers and parameters that get no gradient. Kept every
        step where a step may be skipped or redone (MoCo: the key encoder and queue too), so the last step's copies
        are reused, refilled by one foreach copy, while they still match (a fresh clone per tensor cost ~200
        allocations a step)."""
        tensors = list(self.model.buffers()) + [p for p in self.model.parameters() if not p.requires_grad]
        tensors += self._task_state_tensors()
        saved = getattr(self, "_saved_forward_state", None)
        if saved is not None and len(saved) == len(tensors) and all(
                x is y and x.shape == c.shape and x.dtype == c.dtype for x, (y, c) in zip(tensors, saved)):
            copies = [c for _, c in saved]
            torch._foreach_copy_(copies, [x.detach() for x in tensors])
        else:
            copies = [x.detach().clone() for x in tensors]
        self._saved_forward_state = list(zip(tensors, copies))
        return self._saved_forward_state

    def _trained_outside_model(self) -> list[torch.Tensor]:
        """Parameters the optimizer trains that the model does not hold (the joint MoCo loss's projection head)."""
        inside = {id(p) for p in self.model.parameters()}
        return [p for g in self.optimizer.param_groups for p in g["params"] if id(p) not in inside]

    def _task_state_tensors(self) -> list[torch.Tensor]:
        """Tensors the task keeps outside the model that a step changes (the joint MoCo loss's key encoder and
        queue: SupervisedTask.forward_state_tensors); none for most tasks."""
        hook = getattr(self.task, "forward_state_tensors", None)
        return list(hook()) if hook is not None else []

    @staticmethod
    @torch.no_grad()
    def _restore_forward_state(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for x, copy in saved:
            x.copy_(copy)

    def _check_weights_finite(self, epoch: int) -> None:
        """Stop before an epoch's evaluation and checkpoints when a weight or BatchNorm statistic is inf/NaN: with
        every loss finite (--lr 1e9) such a model was scored at chance, saved as best.pt and used by eval,
        predict and export without a word (one fused norm per epoch: nonfinite.weights_finite)."""
        named = self._named_state_tensors()
        if weights_finite(self.ctx, [x for _, x in named]):
            return
        culprit = diverged_tensor(self.ctx, named)
        kept = last_good_checkpoint(self.ctx, self.ckpt_dir, self._saved_step)
        skipped = self.nonfinite_skipped - self.epoch_skips_start  # the same on every rank (_finite agrees)
        raise diverged_weights_error(epoch, skipped, kept, self._nonfinite_causes(), self._base_lr(), culprit)

    def _named_state_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The floating-point tensors _check_weights_finite checks, with names for its error (which tensor went
        wrong: "inf/NaN" alone sent a user after the learning rate)."""
        models = [("", self.model)] + ([("EMA ", self.ema.module)] if self.ema is not None else [])
        named = [(p + n.replace("_orig_mod.", ""), x.detach()) for p, m in models
                 for n, x in (*m.named_parameters(), *m.named_buffers()) if x.is_floating_point()]
        named += [(f"a parameter trained outside the model (#{i})", x.detach())
                  for i, x in enumerate(self._trained_outside_model()) if x.is_floating_point()]
        named += [(f"a tensor of the task's state (#{i})", x.detach())
                  for i, x in enumerate(self._task_state_tensors()) if x.is_floating_point()]
        return named

    def _nonfinite_causes(self) -> str:
        """The causes this run shows besides the learning rate (nonfinite.nonfinite_causes)."""
        return nonfinite_causes(self.task, self.amp)

    def _finite(self, loss: torch.Tensor) -> bool:
        ok = bool(torch.isfinite(loss.detach()).all())
        if self.ctx.enabled:
            ok = all_reduce_mean(self.ctx, 1.0 if ok else 0.0) == 1.0
        return ok
