"""Follow-ups of the torchrun settings and resume checks and of `fewshot run`'s refused resume: the network each
node fills in from its own weights file compared in the data exchange, last.pt agreed on by every rank before any
rank checks it alone, "unset" for a field a rank left unset, the pool path's reason only where it is said, a
budget_minutes of 10**307 said as damage, and a refused resume's state put back only with the lock, as the file
held it once the lock was taken."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from helpers.checks import run_main
from helpers.run_patch import patch_pipeline
from helpers.tiny import build_digits, finetune_cfg
from test_run_resume import _cmd, sigterm_in_stage

import fewshot.train.checkpoint as checkpoint
import fewshot.train.distributed as distributed
import fewshot.train.finetune as finetune
import fewshot.train.run_dir as run_dir
import fewshot.train.start_checks as start_checks
from fewshot.errors import UserError
from fewshot.run_state import STATE_FILE
from fewshot.train.distributed import DistContext, check_same_settings
from fewshot.train.finetune import run_finetune


class Stop(Exception):
    """Where a simulated rank stops: after the exchanges a test is about."""


def as_rank(monkeypatch, rank: int, theirs: list | None = None) -> list:
    """start_job on ``rank`` of two without a process group: the other rank gathers ``theirs[i]`` in the i-th
    collective (where given), else what this one does. Returns this rank's objects, in order."""
    mine: list = []

    def gathered(ctx, obj):
        mine.append(obj)
        other = theirs[len(mine) - 1] if theirs is not None else obj
        return [obj, other] if rank == 0 else [other, obj]

    monkeypatch.setattr(distributed, "all_gather_object", gathered)
    monkeypatch.setattr(start_checks, "all_gather_object", gathered)
    monkeypatch.setattr(finetune, "init_distributed", lambda device: (DistContext(rank, 2), device))
    monkeypatch.setattr(run_dir, "barrier", lambda ctx: None)
    return mine


def test_the_network_each_node_reads_from_its_weights_file_is_compared(tmp_path, monkeypatch):
    """The settings are compared as typed, before each node fills in model.width and img_size from its own weights
    file: files of other networks ended in DDP's shape-mismatch error (an internal bug, by its words), or trained each
    rank at its own size without a word."""
    import fewshot.models.weights as weights

    root = build_digits(tmp_path / "data", shots=2)
    records = {"w0.safetensors": {"img_size": 32}, "w1.safetensors": {"img_size": 24, "width": 0.5}}
    monkeypatch.setattr(weights, "architecture_of", lambda path: dict(records.get(Path(path).name, {})) if path else {})

    def stopped(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(finetune, "prepare_run_dir", stopped)
    cfg = {"model.img_size": None, "train.epochs": 1}
    rank_1 = as_rank(monkeypatch, 1)  # rank 1 alone, to learn what it sends
    with pytest.raises(Stop):
        run_finetune(finetune_cfg(root, **cfg, **{"model.weights": str(tmp_path / "w1.safetensors")}), tmp_path / "r")
    assert len(rank_1) == 2  # the settings, then the data: no collective added
    calls = as_rank(monkeypatch, 0, rank_1)
    with pytest.raises(UserError) as refused:
        run_finetune(finetune_cfg(root, **cfg, **{"model.weights": str(tmp_path / "w0.safetensors")}), tmp_path / "r")
    text = str(refused.value)
    assert text.startswith("the 2 processes filled in different settings: model.img_size: 32 on rank 0, 24 on rank "
                           "1; model.width: 1.0 on rank 0, 0.5 on rank 1."), text
    assert "from its node's own weights file" in text and "same weights file" in text, text
    assert len(calls) == 2
    # the same network on both: the start goes on
    records["w0.safetensors"] = records["w1.safetensors"]
    as_rank(monkeypatch, 0, rank_1)
    with pytest.raises(Stop):
        run_finetune(finetune_cfg(root, **cfg, **{"model.weights": str(tmp_path / "w0.safetensors")}), tmp_path / "r")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("fbz")
    root = build_digits(base / "data", shots=2)
    run_finetune(tiny(root), base / "run")
    return root, base / "run"


def tiny(root: Path, **flags) -> dict:
    return finetune_cfg(root, **{"model.img_size": 16, "train.epochs": 1, "train.eval_every": 1, **flags})


def copied_run(trained, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained[1], out)
    return out


def rank_1_sees(monkeypatch, view) -> None:
    """Rank 0 of two, where rank 1 sends what rank 0 does but for last.pt, of which it sees ``view`` (the third
    collective: the ranks' agreement on one file)."""
    calls: list = []

    def gathered(ctx, obj):
        calls.append(obj)
        return [obj, view if len(calls) == 3 else obj]

    as_rank(monkeypatch, 0)
    monkeypatch.setattr(distributed, "all_gather_object", gathered)
    monkeypatch.setattr(start_checks, "all_gather_object", gathered)


def test_a_last_pt_other_on_one_node_is_said_before_any_rank_checks_it(trained, tmp_path, monkeypatch):
    """Under torchrun each rank checked its own last.pt before the ranks agreed on one: with a node-local --out,
    rank 0's (of other images here) was refused by rank 0 alone, and rank 1 waited until torchrun killed it."""
    out = copied_run(trained, tmp_path)
    last = out / "checkpoints" / "last.pt"
    ck = checkpoint.load_checkpoint(last)
    ck.update(n_train=999, world=2)
    checkpoint.save_checkpoint(last, ck)
    rank_1_sees(monkeypatch, (10**6, 1.0))
    with pytest.raises(UserError) as refused:
        run_finetune(tiny(trained[0], **{"train.epochs": 2}), out, resume=True)
    text = str(refused.value)
    assert "--resume: the processes do not see the same checkpoint" in text and "--out must be a folder" in text, text
    assert "999" not in text, text


def test_an_unreadable_last_pt_on_one_node_is_said_by_every_rank(trained, tmp_path, monkeypatch):
    """One rank's unreadable last.pt stopped that rank alone before the ranks' agreement."""
    out = copied_run(trained, tmp_path)
    (out / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    rank_1_sees(monkeypatch, (5, 1.0))
    with pytest.raises(UserError, match=r"rank 0: an unreadable last\.pt .*rank 1: last\.pt at global step 5"):
        run_finetune(tiny(trained[0], **{"train.epochs": 2}), out, resume=True)
    # unreadable alike on every rank: each says its own error, once the others heard of it
    as_rank(monkeypatch, 0)
    with pytest.raises(UserError) as refused:
        run_finetune(tiny(trained[0], **{"train.epochs": 2}), out, resume=True)
    assert "do not see the same checkpoint" not in str(refused.value), str(refused.value)


def test_one_process_still_checks_last_pt_before_the_task_is_built(trained, tmp_path, monkeypatch):
    out = copied_run(trained, tmp_path)
    last = out / "checkpoints" / "last.pt"
    ck = checkpoint.load_checkpoint(last)
    ck.update(n_train=999)
    checkpoint.save_checkpoint(last, ck)

    def no_engine(*args, **kwargs):
        raise AssertionError("the engine was built before the checkpoint's images were checked")

    monkeypatch.setattr(finetune, "Engine", no_engine)
    with pytest.raises(UserError, match="trained on 999 training images"):
        run_finetune(tiny(trained[0], **{"train.epochs": 2}), out, resume=True)


def differences_said(mine: dict, theirs: dict, monkeypatch) -> str:
    """check_same_settings' refusal on rank 0 of two, rank 1 holding ``theirs``."""
    seen = []
    monkeypatch.setattr(distributed, "all_gather_object", lambda ctx, obj: seen.append(obj) or [obj, obj])
    check_same_settings(DistContext(1, 2), theirs, False)
    monkeypatch.setattr(distributed, "all_gather_object", lambda ctx, obj: [obj, seen[0]])
    with pytest.raises(UserError) as refused:
        check_same_settings(DistContext(0, 2), mine, False)
    return str(refused.value)


def test_a_field_one_rank_left_unset_is_said_unset(tmp_path, monkeypatch):
    """A field left unset on one rank read "None on rank 1", a word the user never typed."""
    text = differences_said(finetune_cfg(tmp_path, **{"optim.lr": 0.01}), finetune_cfg(tmp_path), monkeypatch)
    assert "optim.lr: 0.01 on rank 0, unset on rank 1" in text, text
    assert "None" not in text, text


def test_the_pool_paths_reason_comes_only_with_the_pool_path(tmp_path, monkeypatch):
    """data.unlabeled's reason (an absolute path per node) was added though the field was beyond the five shown."""
    early = {"aug.blur_p": 0.1, "aug.flip_p": 0.1, "aug.gray_p": 0.1, "aug.jitter_p": 0.1, "data.crop_pct": 0.9}
    mine = finetune_cfg(tmp_path, **early, **{"data.unlabeled": str(tmp_path / "a")})
    text = differences_said(mine, finetune_cfg(tmp_path, **{"data.unlabeled": str(tmp_path / "b")}), monkeypatch)
    assert "(and 1 more)" in text and "data.unlabeled" not in text, text
    assert "absolute path" not in text, text
    text = differences_said(finetune_cfg(tmp_path, **{"data.unlabeled": str(tmp_path / "a")}),
                            finetune_cfg(tmp_path, **{"data.unlabeled": str(tmp_path / "b")}), monkeypatch)
    assert "data.unlabeled is resolved to an absolute path on each node" in text, text


def test_resumable_device_reads_the_process_count_as_the_cli_does(tmp_path, monkeypatch, capsys):
    """resumable_device read WORLD_SIZE itself, a copy of cli_ranks.world_size_env: one source now."""
    from fewshot import cli_ranks
    from fewshot.train.resume_config import resumable_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(cli_ranks, "world_size_env", lambda: 2)
    assert resumable_device(tmp_path, "cuda:1") == "cuda"
    assert "note:" not in capsys.readouterr().out  # several processes: no note
    monkeypatch.setattr(cli_ranks, "world_size_env", lambda: 1)
    assert resumable_device(tmp_path, "cuda:1") == "cuda"
    assert "which this machine does not have" in capsys.readouterr().out


@pytest.mark.parametrize("minutes", [10**307, 10**400, 1e307], ids=["10**307", "10**400", "1e307"])
def test_a_budget_whose_seconds_overflow_is_damage_not_a_traceback(tmp_path, minutes):
    """10**307 passed the amount check, then math.isfinite(10**307 * 60), an int too large for a float, raised an
    OverflowError."""
    from fewshot.run_state import check_state_fields

    data = {"version": 1, "budget_minutes": minutes, "config": {}, "seconds": 0.0, "stages": {}}
    with pytest.raises(UserError, match="is damaged: budget_minutes must be a number above 0 whose seconds are"):
        check_state_fields(tmp_path / STATE_FILE, data)
    check_state_fields(tmp_path / STATE_FILE, {**data, "budget_minutes": 10**6})  # a whole number that fits


def _state(out: Path) -> dict:
    return json.loads((out / STATE_FILE).read_text())


def stopped_run_refused_on_resume(copy_root: Path, out: Path, monkeypatch) -> list:
    """A `fewshot run` stopped in its fine-tuning, then its root's first class renamed: a resume is refused over its
    data. Returns the command."""
    from fewshot.train.supervised import SupervisedTask

    cmd = _cmd(copy_root, out, "run.semi_method=off")
    with monkeypatch.context() as mp:
        sigterm_in_stage(mp, "finetune", SupervisedTask, 2)
        rc, _, err = run_main(*cmd)
    assert rc == 128 + signal.SIGTERM, err
    dataset = sorted(p.name for p in copy_root.iterdir() if (p / "train").is_dir())[-1]
    first = sorted(p.name for p in (copy_root / dataset / "train").iterdir() if p.is_dir())[0]
    for split in ("train", "val"):
        (copy_root / dataset / split / first).rename(copy_root / dataset / split / "renamed")
    return cmd


def test_a_refused_resume_puts_back_the_state_as_it_was_once_locked(copy_root, tmp_path, monkeypatch):
    """The copy a refused resume puts back was taken from the state read before the lock: a session that wrote the
    file between that read and the lock lost what it wrote."""
    from fewshot import run_startup

    out = tmp_path / "run"
    cmd = stopped_run_refused_on_resume(copy_root, out, monkeypatch)
    lock, written = run_startup.lock_run_dir, []

    def another_session_first(folder):
        if not written:  # another session's record, between this one's read of the state and its lock
            state = _state(out)
            state["seconds"] = float(state["seconds"]) + 100.0
            (out / STATE_FILE).write_text(json.dumps(state))
            written.append(state)
        return lock(folder)

    patch_pipeline(monkeypatch, "lock_run_dir", another_session_first)
    rc, _, err = run_main(*cmd, "--resume")
    assert rc == 2 and "classes differ" in err, err
    assert _state(out) == written[0]


def test_a_refused_resume_without_a_lock_writes_no_copy_back(copy_root, tmp_path, monkeypatch):
    """On a file system without locks another session may be writing the state: the refused resume wrote its copy
    over it. Without the lock the session's time counts, as any stop's (note_stop)."""
    out = tmp_path / "run"
    cmd = stopped_run_refused_on_resume(copy_root, out, monkeypatch)
    before = _state(out)
    patch_pipeline(monkeypatch, "lock_run_dir", lambda folder: False)
    rc, _, err = run_main(*cmd, "--resume")
    assert rc == 2 and "classes differ" in err, err
    assert _state(out)["seconds"] > before["seconds"]


def test_the_ranks_checkpoint_views_cannot_raise_on_one_rank_and_a_nan_time_matches_itself(tmp_path, monkeypatch):
    """agree_on_checkpoint built its view before the gather with int()/float() of unchecked fields: a bad value
    raised on that rank alone (the others waited in the gather); a NaN train_seconds, unequal to itself once read
    back, made two identical files "not the same checkpoint"."""
    sent = []

    def gather(ctx, view):
        sent.append(view)
        return [view, view]  # every rank saw what this one saw

    monkeypatch.setattr(start_checks, "all_gather_object", gather)
    ctx = DistContext(0, 2)
    start_checks.agree_on_checkpoint(ctx, tmp_path / "last.pt", {"global_step": 5, "train_seconds": float("nan")})
    start_checks.agree_on_checkpoint(ctx, tmp_path / "last.pt", {"global_step": "five", "train_seconds": 1.0})
    assert sent[1][0] == "unreadable" and "no number" in sent[1][1]
    monkeypatch.setattr(start_checks, "all_gather_object", lambda ctx, view: [view, (5, repr(1.0))])
    with pytest.raises(UserError, match=r"rank 0: an unreadable last\.pt .*rank 1: last\.pt at global step 5"):
        start_checks.agree_on_checkpoint(ctx, tmp_path / "last.pt", {"global_step": [1], "train_seconds": 1.0})
