"""Review follow-ups on the torchrun settings check and on resuming a fine-tuning run: a pool path given per
node (data.unlabeled, refused saying why), a recorded GPU index the machine lacks, the order of the resume checks
(the checkpoint's kind first; under torchrun the ranks' agreement on last.pt first), the settings check before the
data check, and MoCo's pool key under linked folders."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

import fewshot.train.distributed as distributed
from fewshot.config import save_yaml
from fewshot.errors import UserError
from fewshot.train.distributed import DistContext, check_same_settings
from fewshot.train.finetune import run_finetune
from fewshot.train.resume_config import merge_resume_config
from helpers.tiny import altered_copy, build_digits, finetune_cfg, free_port, run_forked_ranks


def settings_seen(cfg: dict, monkeypatch, resuming: bool = False):
    """What check_same_settings gathers from a process with ``cfg`` (a rank's view of the exchange)."""
    seen = []
    monkeypatch.setattr(distributed, "all_gather_object", lambda ctx, obj: seen.append(obj) or [obj, obj])
    check_same_settings(DistContext(1, 2), cfg, resuming)
    return seen[0]


def check_two_ranks(cfg0: dict, cfg1: dict, monkeypatch, resuming=(False, False)):
    """check_same_settings on rank 0 of two, rank 1 holding ``cfg1``; its return value."""
    other = settings_seen(cfg1, monkeypatch, resuming[1])
    monkeypatch.setattr(distributed, "all_gather_object", lambda ctx, obj: [obj, other])
    return check_same_settings(DistContext(0, 2), cfg0, resuming[0])


def test_a_pool_under_each_nodes_home_is_refused_saying_why(tmp_path, monkeypatch):
    """`data.unlabeled=~/pool` is recorded absolute per node, and a resume cannot honour a pool per node (config.yaml
    records rank 0's; MoCo's key of a pool outside the root is of absolute paths): refused, saying why the same
    words named two folders (it was let through as a node's own path, and the resume was then refused)."""
    root = tmp_path / "data"
    cfgs = []
    for home in ("a", "b"):
        monkeypatch.setenv("HOME", str(tmp_path / home))
        cfgs.append(finetune_cfg(root, **{"data.unlabeled": "~/pool"}))
    assert cfgs[0]["data"]["unlabeled"] != cfgs[1]["data"]["unlabeled"]
    with pytest.raises(UserError) as refused:
        check_two_ranks(*cfgs, monkeypatch)
    said = str(refused.value)
    assert f"data.unlabeled: '{tmp_path / 'a' / 'pool'}' on rank 0, '{tmp_path / 'b' / 'pool'}' on rank 1" in said
    assert "data.unlabeled is resolved to an absolute path on each node (`~/pool` or a relative path names another " \
           "folder on a node with another HOME or working folder): give the same absolute path on every node" \
           in said, said
    assert check_two_ranks(cfgs[0], copy.deepcopy(cfgs[0]), monkeypatch) is True
    lr = copy.deepcopy(cfgs[0])
    lr["optim"]["lr"] = 0.5  # another difference is refused without the word on paths
    with pytest.raises(UserError, match=r"optim\.lr: .* on rank 0, 0\.5 on rank 1") as refused:
        check_two_ranks(cfgs[0], lr, monkeypatch)
    assert "absolute path" not in str(refused.value)
    # only some ranks resuming: left to the engine's agreement on last.pt, and said so to the caller
    assert check_two_ranks(cfgs[0], lr, monkeypatch, resuming=(True, False)) is False


def recorded_run(tmp_path: Path, device: str) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    cfg = finetune_cfg(tmp_path / "data", **{"train.device": device})
    cfg["optim"].update(lr=0.004, backbone_lr_mult=1.0)
    cfg["_chosen"] = {}
    save_yaml(cfg, out / "config.yaml")
    return out


def fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_a_run_recorded_on_a_gpu_this_machine_lacks_resumes_on_the_default_one(tmp_path, monkeypatch, capsys):
    """A run of cuda:1 resumed on a one-GPU machine (or under CUDA_VISIBLE_DEVICES=1) was refused as "device
    'cuda:1' was asked for (--device / train.device)", a flag the user never typed."""
    from fewshot.utils import resolve_device

    out = recorded_run(tmp_path, "cuda:1")
    fake_gpus(monkeypatch, 1)
    monkeypatch.delenv("RANK", raising=False)
    cfg = merge_resume_config(out, finetune_cfg(tmp_path / "data"), {})
    assert cfg["train"]["device"] == "cuda"
    assert resolve_device(cfg["train"]["device"]) == torch.device("cuda")
    said = capsys.readouterr().out
    assert f"'{out}' was trained on cuda:1 (its config.yaml), which this machine does not have (1 CUDA GPU(s) " \
           f"visible, cuda:0 to cuda:0); resuming on the default GPU" in said, said
    # a GPU the machine has is kept; one typed now is the user's, refused as such
    fake_gpus(monkeypatch, 2)
    assert merge_resume_config(out, finetune_cfg(tmp_path / "data"), {})["train"]["device"] == "cuda:1"
    fake_gpus(monkeypatch, 1)
    typed = merge_resume_config(out, finetune_cfg(tmp_path / "data"), {"train.device": "cuda:1"})
    with pytest.raises(UserError, match=r"device 'cuda:1' was asked for \(--device / train.device\)"):
        resolve_device(typed["train"]["device"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("fbr")
    root = build_digits(base / "data")
    cfg = tiny(root)
    run_finetune(cfg, base / "run")
    return root, base / "run"


def tiny(root: Path, **flags) -> dict:
    return finetune_cfg(root, **{"model.img_size": 16, "train.epochs": 1, "train.eval_every": 1, **flags})


def altered_run(trained, tmp_path: Path, **changes) -> Path:
    """A copy of the trained run whose last.pt has ``changes``."""
    return altered_copy(trained[1], tmp_path / "run", **changes)


def test_a_moco_checkpoint_is_said_to_be_one_before_its_images_are_counted(trained, tmp_path):
    """run_finetune's early checks compared a moco last.pt's images with the data ("trained on 999 training
    images") before the engine's check of the checkpoint's kind said what it is."""
    out = altered_run(trained, tmp_path, kind="moco", n_train=999)
    with pytest.raises(UserError) as refused:
        run_finetune(tiny(trained[0], **{"train.epochs": 2}), out, resume=True)
    assert f"{out / 'checkpoints' / 'last.pt'} is a moco checkpoint; cannot resume a supervised run from it" \
           in str(refused.value)


def test_other_datasets_per_rank_are_other_settings_said_before_the_data_and_before_config_yaml(tmp_path,
                                                                                              monkeypatch):
    """start_job checked the settings after the data and after rank 0 wrote config.yaml: another --datasets per
    rank was said as other data, and the refused run left its config.yaml behind."""
    import shutil

    import fewshot.train.finetune as finetune
    import fewshot.train.run_dir as run_dir
    from fewshot.data.layout import scan_root

    root = build_digits(tmp_path / "data")
    shutil.copytree(root / "digits", root / "digits2")
    mine = tiny(root, **{"data.datasets": ["digits"]})
    other = settings_seen(tiny(root, **{"data.datasets": ["digits", "digits2"]}), monkeypatch)
    other_data = distributed.data_fingerprint(scan_root(root, ["digits", "digits2"], splits=("train", "val")))
    # rank 1's side of each exchange: its settings, and the data its --datasets name
    monkeypatch.setattr(distributed, "all_gather_object",
                        lambda ctx, obj: [obj, other if isinstance(obj, tuple) else other_data])
    monkeypatch.setattr(finetune, "init_distributed", lambda device: (DistContext(0, 2), device))
    monkeypatch.setattr(run_dir, "barrier", lambda ctx: None)
    out = tmp_path / "run"
    with pytest.raises(UserError) as refused:
        run_finetune(mine, out)
    assert "the 2 processes were given different settings: data.datasets: ['digits'] on rank 0, ['digits', " \
           "'digits2'] on rank 1" in str(refused.value)
    assert not (out / "config.yaml").exists()


def resume_rank(rank: int, port: int, root: str, outs: list[str], said: str) -> None:
    """One process of a two-process resume where only rank 0's --out holds a last.pt: what each rank says."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    os.environ.pop("TORCHELASTIC_RESTART_COUNT", None)
    torch.set_num_threads(1)
    from fewshot.train.distributed import shutdown_distributed

    try:
        run_finetune(tiny(Path(root), **{"train.epochs": 2}), Path(outs[rank]), resume=True)
        message = "resumed"
    except UserError as exc:
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 - a peer gone from a collective: what this rank met
        message = f"{type(exc).__name__}: {exc}"
    finally:
        shutdown_distributed()
    Path(said, f"rank{rank}.txt").write_text(message)


def test_ranks_of_which_only_some_resume_all_say_out_must_be_shared(trained, tmp_path):
    """Under torchrun with last.pt on one node only, the resuming rank stopped in run_finetune's early checks (of
    its images, or start_job's of its process count) while the other waited in DDP's set-up until it was ended:
    the "--out must be shared storage" message of the engine's agreement on last.pt was never said."""
    out0 = altered_run(trained, tmp_path, n_train=999)  # written on 1 process, its images counted otherwise
    out1 = tmp_path / "node1" / "run"
    out1.mkdir(parents=True)
    said = tmp_path / "said"
    said.mkdir()
    run_forked_ranks(resume_rank, (free_port(), str(trained[0]), [str(out0), str(out1)], str(said)), 2, 60,
                     "the two resuming ranks")
    for rank in (0, 1):
        message = (said / f"rank{rank}.txt").read_text()
        assert "--resume: the processes do not see the same checkpoint" in message, (rank, message)
        assert "rank 1: no last.pt" in message and "--out must be a folder on storage that every node shares" \
               in message, (rank, message)


def test_a_pool_reached_through_a_linked_folder_is_the_pool_typed_by_its_real_path(tmp_path, monkeypatch):
    """MoCo's pool key took `..` as text: a pool reached through a linked folder (`link/../pool`, a linked home)
    was another pool than the same folder typed by its real path, and the resume was refused. Older checkpoints'
    keys (abspath) are still accepted: the legacy key is the old one."""
    from fewshot.train.semi import pool_key

    root, real = tmp_path / "data", tmp_path / "real"
    (real / "deep").mkdir(parents=True)
    (real / "pool").mkdir()
    (tmp_path / "link").symlink_to(real / "deep")
    monkeypatch.chdir(tmp_path)
    through_link = [Path("link") / ".." / "pool" / "a.png"]
    typed_real = [real / "pool" / "a.png"]
    assert pool_key(through_link, root, True) == pool_key(typed_real, root, True)
    # the file's own name is kept (a pool of links into a content store is not resolved to the store)
    (real / "pool" / "b.png").symlink_to(real / "pool" / "a.png")
    assert pool_key([real / "pool" / "b.png"], root, True) != pool_key(typed_real, root, True)
    # the key older checkpoints recorded: the files by os.path.abspath, as before
    import hashlib
    import json

    old = hashlib.sha1(json.dumps(sorted([os.path.abspath(through_link[0])])).encode()).hexdigest()
    assert pool_key(through_link, root, True, legacy=True) == old
    # files under the root keep their root-relative names (a moved root is the same pool), in either form
    inside = [root / "unlabeled" / "x" / "c.png"]
    assert pool_key(inside, root, True) == pool_key(inside, root, True, legacy=True) == pool_key(inside, root)
