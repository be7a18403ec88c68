"""Follow-ups of the torchrun settings check and the resume checks: the settings compared as typed (before the
job's defaults, which one rank alone may refuse), whether weights are given at all, the early resume checks under
torchrun where every rank resumes, the checkpoint's kind before its process count (last.pt read once), and no note
on a recorded GPU index under torchrun."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fewshot.train.checkpoint as checkpoint
import fewshot.train.distributed as distributed
import fewshot.train.finetune as finetune
import fewshot.train.run_dir as run_dir
import fewshot.train.resume as resume
import fewshot.train.start_checks as start_checks
from fewshot.errors import UserError
from fewshot.train.distributed import DistContext, check_same_settings
from fewshot.train.finetune import run_finetune
from fewshot.train.resume_config import merge_resume_config
from helpers.tiny import altered_copy, build_digits, finetune_cfg, pretrain_cfg
from test_fbr_resume_and_settings import recorded_run


def settings_seen(cfg: dict, monkeypatch) -> tuple:
    """What check_same_settings gathers from a process holding ``cfg`` (rank 1's side of the exchange)."""
    seen = []
    monkeypatch.setattr(distributed, "all_gather_object", lambda ctx, obj: seen.append(obj) or [obj, obj])
    check_same_settings(DistContext(1, 2), cfg, False)
    return seen[0]


def as_rank_0_of_2(monkeypatch, other=None) -> list:
    """start_job on rank 0 of two without a process group: rank 1 gathers ``other`` where given (the settings'
    exchange), else what rank 0 does. Returns the collectives' objects, in order."""
    calls = []

    def gathered(ctx, obj):
        calls.append(obj)
        return [obj, other if other is not None and isinstance(obj, tuple) else obj]

    monkeypatch.setattr(distributed, "all_gather_object", gathered)
    monkeypatch.setattr(start_checks, "all_gather_object", gathered)  # the ranks' agreement on last.pt
    monkeypatch.setattr(finetune, "init_distributed", lambda device: (DistContext(0, 2), device))
    monkeypatch.setattr(run_dir, "barrier", lambda ctx: None)
    return calls


def test_settings_are_compared_before_a_default_one_rank_refuses(tmp_path, monkeypatch):
    """resolve_defaults ran before the settings check: a --batch-size that resolve_pretrain_defaults refused on
    rank 0 alone (the queue cannot hold a step's keys) stopped it there, while rank 1 waited in the settings check,
    and "different settings" was never said."""
    from fewshot.ssl.pretrain import run_pretrain

    root = build_digits(tmp_path / "data")
    other = settings_seen(pretrain_cfg(root), monkeypatch)  # batch 8: 16 keys a step, the queue holds 52
    calls = as_rank_0_of_2(monkeypatch, other)
    mine = pretrain_cfg(root, **{"train.batch_size": 32})  # 64 keys a step: refused by resolve_pretrain_defaults
    with pytest.raises(UserError) as refused:
        run_pretrain(mine, tmp_path / "run")
    assert "the 2 processes were given different settings: train.batch_size: 32 on rank 0, 8 on rank 1" \
           in str(refused.value), str(refused.value)
    assert len(calls) == 1 and isinstance(calls[0], tuple)  # the first collective of the job
    # the same settings on both: the job's own refusal, once the ranks agree
    calls = as_rank_0_of_2(monkeypatch)
    with pytest.raises(UserError, match=r"moco\.queue_size \(52\) is smaller than"):
        run_pretrain(pretrain_cfg(root, **{"train.batch_size": 32}), tmp_path / "run2")
    assert len(calls) == 1


def test_weights_given_on_one_node_only_are_other_settings(tmp_path, monkeypatch):
    """The weights file is a node's own, but whether there is one is not: compared once resolved, the lr it picks
    told the nodes apart; compared as typed, nothing did."""
    root = tmp_path / "data"
    bare = finetune_cfg(root)
    weighted = finetune_cfg(root, **{"model.weights": str(tmp_path / "w.pth")})
    other = settings_seen(bare, monkeypatch)
    monkeypatch.setattr(distributed, "all_gather_object", lambda ctx, obj: [obj, other])
    with pytest.raises(UserError, match="model.weights: a file on rank 0, none on rank 1"):
        check_same_settings(DistContext(0, 2), weighted, False)
    # another file per node is the node's own
    other = settings_seen(finetune_cfg(root, **{"model.weights": str(tmp_path / "v.pth")}), monkeypatch)
    monkeypatch.setattr(distributed, "all_gather_object", lambda ctx, obj: [obj, other])
    assert check_same_settings(DistContext(0, 2), weighted, False) is True


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("fbv")
    root = build_digits(base / "data")
    run_finetune(tiny(root), base / "run")
    return root, base / "run"


def tiny(root: Path, **flags) -> dict:
    return finetune_cfg(root, **{"model.img_size": 16, "train.epochs": 1, "train.eval_every": 1, **flags})


def altered_run(trained, tmp_path: Path, **changes) -> Path:
    """A copy of the trained run whose last.pt has ``changes``."""
    return altered_copy(trained[1], tmp_path / "run", **changes)


def count_reads(monkeypatch) -> list:
    """The last.pt reads of a start, by either name the code reads it through."""
    reads, read = [], checkpoint.load_checkpoint

    def counted(path, *args, **kwargs):
        reads.append(Path(path).name)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_checkpoint", counted)
    monkeypatch.setattr(resume, "load_checkpoint", counted)
    return reads


def test_a_checkpoint_of_another_kind_is_said_so_before_its_process_count(trained, tmp_path, monkeypatch):
    """In one process the process count was checked first: a moco last.pt of 2 processes was refused as "written
    by a run on 2 process(es)", with advice to resume it under torchrun as a supervised run."""
    out = altered_run(trained, tmp_path, kind="moco", world=2)
    with pytest.raises(UserError) as refused:
        run_finetune(tiny(trained[0], **{"train.epochs": 2}), out, resume=True)
    assert str(refused.value).startswith(f"{out / 'checkpoints' / 'last.pt'} is a moco checkpoint; cannot resume "
                                         f"a supervised run from it"), str(refused.value)


def test_the_early_resume_checks_read_last_pt_once(trained, tmp_path, monkeypatch):
    """start_job read last.pt for its process count and run_finetune again for its kind and images."""
    out = altered_run(trained, tmp_path, n_train=999)
    reads = count_reads(monkeypatch)
    with pytest.raises(UserError, match="trained on 999 training images"):
        run_finetune(tiny(trained[0], **{"train.epochs": 2}), out, resume=True)
    assert reads == ["last.pt"], reads


def test_every_rank_resuming_makes_the_early_checks_under_torchrun(trained, tmp_path, monkeypatch):
    """Under torchrun the early checks were skipped even where every rank resumes (safe then): a last.pt of other
    images announced and built the engine (DDP's set-up) before Engine.resume refused it."""
    out = altered_run(trained, tmp_path, n_train=999, world=2)
    as_rank_0_of_2(monkeypatch)

    def no_engine(*args, **kwargs):
        raise AssertionError("the engine was built before the checkpoint's images were checked")

    monkeypatch.setattr(finetune, "Engine", no_engine)
    with pytest.raises(UserError, match="the run being resumed trained on 999 training images"):
        run_finetune(tiny(trained[0], **{"train.epochs": 2}), out, resume=True)


@pytest.mark.parametrize("gpus", [1, 2])
def test_a_recorded_gpu_index_is_dropped_without_a_note_under_torchrun(tmp_path, monkeypatch, capsys, gpus):
    """A one-process run of cuda:1 resumed under torchrun said "resuming on the default GPU" and was then refused
    for its process count; each process takes cuda:LOCAL_RANK there, so the index tells nothing."""
    from fewshot.utils import resolve_device

    out = recorded_run(tmp_path, "cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = merge_resume_config(out, finetune_cfg(tmp_path / "data"), {})
    assert cfg["train"]["device"] == "cuda"  # not refused as "cuda:1 was asked for" on a one-GPU node
    assert resolve_device(cfg["train"]["device"]) == torch.device("cuda")
    assert "note:" not in capsys.readouterr().out
    monkeypatch.delenv("WORLD_SIZE")  # one process still says it where the machine lacks the GPU
    merge_resume_config(out, finetune_cfg(tmp_path / "data"), {})
    assert ("which this machine does not have" in capsys.readouterr().out) == (gpus == 1)
