"""A training step that survives a torch.compile failure (train.compile): redone eagerly where it can be undone,
else stopped with an error that says what failed and how to go on.

Apart from the loop (engine.py) because the fallback is its own story: what a failed compiled step changed, how it
is put back, and when it cannot be (DDP). CompileFallbackMixin's methods are the Engine's (they read and set its
state): the loop calls _compile_redo_possible() and _forward_backward(...) once a step.
"""

from __future__ import annotations

import sys

import torch

from fewshot.errors import UserError, one_line
from fewshot.runtime import compile_failure_text, compile_remedy, is_compile_failure, uncompile
from fewshot.utils import derive_seed


def add_note(exc: BaseException, text: str) -> None:
    """``exc.add_note(text)``, which Python 3.10 lacks (fewshot allows it): there the words go to stderr, so that the
    error a user sees still says what happened before it."""
    if hasattr(exc, "add_note"):
        exc.add_note(text)
    else:
        print(text, file=sys.stderr, flush=True)


class CompileFailedError(UserError):
    """torch.compile failed while training where the step cannot be redone eagerly (DDP): the backward graph, which
    compiles inside loss.backward(), or a check in the compiled code."""


class CompileFallbackMixin:
    """One step's forward and backward, redone eagerly after a compile failure where that can be undone."""

    def _compile_redo_possible(self) -> bool:
        """Whether a compile failure in this step's backward can be undone: compiled modules, outside DDP (whose
        reducer is left half-way by a failed backward and whose ranks would have to agree on the fallback). At any
        step, not only the first: an H200 run's compiled backward failed inductor's stride check, and a recompile
        (a new batch shape, a changed guard) compiles a backward again mid-run. Keeping the forward state costs a
        copy of the buffers (and MoCo's key encoder and queue) per step: one foreach copy into the last step's
        copies (_forward_state), a small share of a compiled MoCo step on a GPU."""
        return bool(self._compiled) and not self.ctx.enabled

    def _forward_backward(self, idx: torch.Tensor, batch, epoch: int, step: int, before: list | None, redo: bool):
        """One step's forward and, where its loss is finite, backward. Returns (loss, metrics, n, finite).

        A compile failure in either pass (``redo``: it can be undone) redoes the step eagerly: the compile undone,
        the forward's state changes (BatchNorm statistics, MoCo's key encoder and queue) restored from ``before``,
        gradients dropped, the batch rebuilt (a function of ``idx``, epoch and step) and the step's RNG seeded
        again, so the run goes on as an eager run from this step would (a resume does the same: it compiles,
        fails, and falls back here again)."""
        failure = remedy = self.step_redone = None
        for attempt in ("compiled", "eager"):
            try:
                with self.autocast():
                    loss, metrics, n = self.task.training_step(self.train_model, batch)
                if not self._finite(loss):
                    return loss, metrics, n, False
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                return loss, metrics, n, True
            except Exception as exc:
                if failure is not None:  # the eager redo failed too: the first failure belongs to its story
                    add_note(exc, f"(this step ran eagerly after its compiled run failed: {failure})")
                    raise
                if not (self._compiled and is_compile_failure(exc)):
                    raise
                # the words only: the exception's traceback holds the graph
                failure, remedy = compile_failure_text(exc), compile_remedy(exc)
                if not redo:
                    raise self._compile_failed(failure, remedy, epoch, step) from None
            # out of the except block: the failed attempt's graph and activations are let go before the eager redo
            # builds its own (held during it, the fallback needed twice a step's memory: out of memory where the
            # step itself fit)
            loss = metrics = batch = None
            try:  # restoring the state can fail too (a GPU's sticky error): its error names the first failure
                self._redo_eagerly(failure, remedy, before, epoch, step)
                batch = self.task.make_batch(idx, epoch, step)
            except Exception as exc:
                add_note(exc, f"(while redoing the step eagerly after its compiled run failed: {failure})")
                raise
            self.step_redone = failure
            self._seed_step(derive_seed(self.cfg["train"]["seed"], epoch, step, self.ctx.rank, 3))
        raise AssertionError("unreachable: the eager attempt returns or raises")

    def _redo_eagerly(self, failure: str, remedy: str, before: list, epoch: int, step: int) -> None:
        """Say why, undo the compile and put back the forward state the failed attempt changed."""
        if self.ctx.is_main:
            print(one_line(f"warning: torch.compile (train.compile={self.cfg['train']['compile']}) failed in the "
                           f"compiled training step at epoch {epoch + 1}, step {step + 1} ({failure}); the step is "
                           f"redone without compiling and training continues eagerly (slower on a GPU). "
                           f"{remedy}"), file=sys.stderr, flush=True)
        uncompile(self._compiled)
        self._compiled = []
        self.optimizer.zero_grad(set_to_none=True)
        self._restore_forward_state(before)

    def _compile_failed(self, failure: str, remedy: str, epoch: int, step: int) -> CompileFailedError:
        """The error for a compile failure that cannot be redone eagerly: what failed, and the two remedies. Built
        from this process's own view (no collective: under DDP another rank may not have failed)."""
        last = self.ckpt_dir / "last.pt"
        kept = (f" The last checkpoint is {last}: the same command with --resume and train.compile=false continues "
                f"the run from it."
                if last.is_file() else "")
        return CompileFailedError(one_line(
            f"torch.compile (train.compile={self.cfg['train']['compile']}) failed in the compiled training step "
            f"at epoch {epoch + 1}, step {step + 1}: {failure}. {remedy}{kept}"))
