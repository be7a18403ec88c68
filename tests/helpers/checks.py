"""Assertions and the in-process CLI runner shared by the test files."""

from __future__ import annotations

import contextlib
import io
import math

import torch

from fewshot.cli import main


def run_main(*argv) -> tuple[int, str, str]:
    """fewshot.cli.main(argv) with stdout/stderr captured; argparse's SystemExit becomes the return code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return rc, out.getvalue(), err.getvalue()


def train_tiny(root, run, epochs: int = 1):
    """A tiny model trained on every dataset of ``root`` into ``run`` (what the predict and balance tests read)."""
    rc, _, err = run_main("train", "--data", root, "--out", run, "--model", "test_resnet", "--img-size", "32",
                          "--epochs", str(epochs), "--batch-size", "16", "--device", "cpu", "--no-progress")
    assert rc == 0, err
    return run


def assert_same(a, b, path="ckpt"):
    """Recursive exact equality of checkpoint payloads (tensors with torch.equal, NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs (max abs diff {(a.double() - b.double()).abs().max().item()})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def engine_clock(monkeypatch) -> dict:
    """engine's time.monotonic gives one "second" per call: fit() reads it once, then once after every step, so
    train.budget_minutes=(k - 0.5) / 60 stops after step k, whatever the machine's speed; ``clock["t"]`` can be
    moved on by hand. The time-based schedule's module (stage_cap, the Engine's methods too) reads the same clock."""
    import types

    import fewshot.train.engine as engine_mod
    import fewshot.train.stage_cap as stage_cap

    clock = {"t": 0.0}

    def monotonic():
        clock["t"] += 1.0
        return clock["t"]

    fake = types.SimpleNamespace(monotonic=monotonic, perf_counter=engine_mod.time.perf_counter)
    monkeypatch.setattr(engine_mod, "time", fake)
    monkeypatch.setattr(stage_cap, "time", fake)
    return clock
