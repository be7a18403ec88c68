"""Resuming where another number of GPUs is visible than the run's last.pt was written with: last.pt holds one CUDA
random state per GPU of the writing process, and torch.cuda.set_rng_state_all sets device i for each, so a machine
with fewer GPUs (or a narrower CUDA_VISIBLE_DEVICES) failed with an IndexError from inside torch. No GPU here:
torch.cuda's functions are replaced by ones that behave as torch's do on a machine with ``visible`` GPUs."""

from __future__ import annotations

import random

import pytest
import torch

from fewshot.train.checkpoint import set_rng_state


def fake_gpus(monkeypatch, visible: int) -> list[tuple[int, int]]:
    """CUDA with ``visible`` GPUs; returns the (device, state's first byte) pairs set. A device past the last one
    raises IndexError, as torch.cuda.default_generators[idx] does."""
    seen: list[tuple[int, int]] = []

    def set_one(state, device="cuda"):
        idx = device if isinstance(device, int) else 0
        if idx >= visible:
            raise IndexError("tuple index out of range")
        seen.append((idx, int(state[0])))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_one)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_one)  # what torch's set_rng_state_all calls
    return seen


def state_of(gpus: int) -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": [torch.full((16,), i, dtype=torch.uint8) for i in range(gpus)]}


@pytest.mark.parametrize("saved, visible, restored, said", [
    (4, 1, [(0, 0)], "holds the CUDA random-number states of 4 GPU(s) and 1 are visible here: those of the first 1 "
                     "are restored."),
    (1, 3, [(0, 0)], "states of 1 GPU(s) and 3 are visible here: those of the first 1 are restored; the other 2 keep "
                     "their own."),
    (2, 2, [(0, 0), (1, 1)], None),
])
def test_the_cuda_states_of_the_gpus_both_machines_have_are_restored(monkeypatch, saved, visible, restored, said):
    seen = fake_gpus(monkeypatch, visible)
    note = set_rng_state(state_of(saved))
    assert seen == restored
    assert (note is None) if said is None else (note.startswith("note: ") and said in note and "\n" not in note)


def test_a_checkpoint_without_cuda_states_or_a_machine_without_cuda_sets_none(monkeypatch):
    seen = fake_gpus(monkeypatch, 2)
    assert set_rng_state({k: v for k, v in state_of(0).items() if k != "cuda"}) is None and seen == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert set_rng_state(state_of(2)) is None and seen == []
