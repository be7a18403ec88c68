"""torchrun's environment without torchrun: missing or bad variables are user errors that name the variable,
and under torchrun a user error or a stop is said by the first process of a node only. No process group is
formed here (every case is refused before the rendezvous), so these tests are fast."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fewshot.errors import UserError
from fewshot.train.distributed import DistContext, init_distributed
from helpers.checks import run_main

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


@pytest.fixture
def env(monkeypatch):
    from fewshot import cli, cli_ranks

    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # as torchrun's agent sets it: LOCAL_RANK is torchrun's
    # under torchrun the first process fails too and torchrun ends the others (tests/test_ddp_errors.py: when not)
    monkeypatch.setattr(cli, "_speaker_failed_too", lambda: True)
    monkeypatch.setattr(cli_ranks, "_speaker_failed_too", lambda: True)

    def set_env(**values):
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
    return set_env


@pytest.mark.parametrize("values, named", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
    ({"WORLD_SIZE": "2"}, "RANK is not set"),  # was KeyError 'RANK'
    ({"WORLD_SIZE": "2", "RANK": ""}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK='2' must be a whole number from 0 to 1"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "x"}, "LOCAL_RANK='x'"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR is not set"),  # was the env:// rendezvous' ValueError
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT is not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"}, "MASTER_PORT='99999'"),
])
def test_a_bad_torchrun_environment_is_a_user_error_naming_the_variable(env, values, named):
    env(**values)
    with pytest.raises(UserError) as info:
        init_distributed(torch.device("cpu"))
    assert named in str(info.value) and "torchrun" in str(info.value)


def test_an_empty_world_size_is_one_process(env):
    """`int("")` was an internal error; cli.world_size_env reads an empty WORLD_SIZE as unset too."""
    env(WORLD_SIZE="")
    assert init_distributed(torch.device("cpu")) == (DistContext(), torch.device("cpu"))


def test_a_bad_environment_is_said_by_every_process_and_exits_2(env, digits_root, tmp_path):
    """Started by hand as rank 1 there is no rank 0 to say it (no process group, so no KeyError traceback)."""
    env(WORLD_SIZE="2", RANK="1")
    rc, _, err = run_main("train", "--data", digits_root, "--out", tmp_path / "run", "--model", "test_resnet",
                          "--img-size", "32", "--epochs", "1", "--device", "cpu")
    assert rc == 2 and "MASTER_ADDR is not set" in err and "internal error" not in err, err


def test_a_user_error_is_printed_by_the_first_process_only(env, tmp_path):
    """Under torchrun every rank met the same error and printed it, N times interleaved on one line."""
    for rank, printed in (("1", False), ("0", True)):
        env(WORLD_SIZE="2", RANK=rank, LOCAL_RANK=rank)
        rc, _, err = run_main("eval", tmp_path, "--data", tmp_path)  # eval refuses to run under torchrun
        assert rc == 2 and ("runs in one process" in err) == printed, (rank, err)
    env(WORLD_SIZE="2", RANK="1", LOCAL_RANK=None)  # a lone process in a pod that sets RANK (not torchrun): it speaks
    assert "runs in one process" in run_main("eval", tmp_path, "--data", tmp_path)[2]
    env(WORLD_SIZE="3", RANK="2", LOCAL_RANK="0")  # the first process of the second node says it for its node
    assert "runs in one process" in run_main("eval", tmp_path, "--data", tmp_path)[2]


def test_argparse_errors_and_help_are_printed_by_the_first_process_only(env, monkeypatch, tmp_path):
    """`torchrun ... -m fewshot train --lr abc` (or a missing --out, or `help train`) printed argparse's usage and
    error once per process; the others now exit with the same code without a word."""
    from fewshot import cli_ranks

    monkeypatch.setattr(cli_ranks, "ARGPARSE_GRACE_S", 0.0, raising=False)
    cases = [(["train", "--data", tmp_path, "--out", tmp_path / "r", "--lr", "abc"], 2, "invalid float value"),
             (["train", "--data", tmp_path], 2, "the following arguments are required: --out"),
             (["eval", "RUN", "--data", tmp_path, "optim.lr=1"], 2, "unrecognized arguments: optim.lr=1"),
             (["help", "train"], 0, "usage: fewshot train")]
    for argv, code, said in cases:
        for rank, printed in (("1", False), ("0", True)):
            env(WORLD_SIZE="2", RANK=rank, LOCAL_RANK=rank)
            rc, out, err = run_main(*argv)
            assert rc == code and (said in out + err) == printed, (argv, rank, out, err)
            assert printed or out + err == "", (argv, out, err)


def test_no_usable_temporary_folder_is_said_by_the_first_process_only(env, monkeypatch, tmp_path):
    """Every torchrun process found no writable temporary folder and said so, once per process."""
    import tempfile

    from fewshot import cli_ranks

    monkeypatch.setattr(cli_ranks, "ARGPARSE_GRACE_S", 0.0, raising=False)

    def none(*a, **kw):
        raise FileNotFoundError(2, "No usable temporary directory found")

    monkeypatch.setattr(tempfile, "gettempdir", none)
    for rank, printed in (("1", False), ("0", True)):
        env(WORLD_SIZE="2", RANK=rank, LOCAL_RANK=rank)
        rc, out, err = run_main("train", "--data", tmp_path, "--out", tmp_path / "r")
        assert rc == 2 and ("Set TMPDIR" in err) == printed and (printed or out + err == ""), (rank, out, err)


def test_a_layout_error_under_torchrun_is_printed_by_rank_0_only(env, monkeypatch, copy_root, tmp_path):
    from fewshot.train import finetune

    (copy_root / "digits" / "val").rename(copy_root / "digits" / "valid")
    for rank, printed in ((1, False), (0, True)):
        env(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
        monkeypatch.setattr(finetune, "init_distributed", lambda device, r=rank: (DistContext(r, 2, r), device))
        # no process group here: the ranks agree on their settings (the first collective) and meet the layout after
        monkeypatch.setattr(finetune, "check_same_settings", lambda ctx, cfg, resuming: True)
        rc, _, err = run_main("train", "--data", copy_root, "--out", tmp_path / f"run{rank}", "--model",
                              "test_resnet", "--img-size", "32", "--epochs", "1", "--device", "cpu")
        assert rc == 2 and ("the data layout has" in err) == printed, (rank, err)
        assert printed or err == "", err


def test_the_stop_line_is_printed_by_rank_0_only(env, tmp_path, capsys):
    """SIGTERM under torchrun: every rank stops at the same step; the line came once per rank."""
    import signal

    from fewshot import cli
    from fewshot.train.stop_signal import StopRequested

    def stopped(args, extra):
        raise StopRequested(signal.SIGTERM, str(tmp_path / "last.pt"))

    for rank, printed in (("1", False), ("0", True)):
        env(WORLD_SIZE="2", RANK=rank, LOCAL_RANK=rank)
        assert cli._dispatch(SimpleNamespace(command="train", out=str(tmp_path)), [], {"train": stopped}) == 143
        assert ("stopped by SIGTERM" in capsys.readouterr().err) == printed


def test_queue_advice_never_suggests_a_batch_that_is_refused():
    """2 processes on a pool of 6: "--batch-size 1 per process (a global batch of at most 1 images)", refused
    (BatchNorm needs 2 images, and 1 per process is a global batch of 2); one process with 2 shuffle-BN groups:
    "a batch of at most 1 images", refused as well."""
    from fewshot.ssl.pretrain_settings import queue_advice

    ddp = queue_advice(6, 4, 2)
    assert "--batch-size" not in ddp and "too small" in ddp and "one process" in ddp and "--queue-size 4 to 5" in ddp
    groups = queue_advice(6, 4, 1, groups=2)
    assert "too small" in groups and "moco.split_bn_groups=1 with --batch-size 2" in groups
    assert "--batch-size 5 per process (a global batch of 10 images)" in queue_advice(44, 48, 2)
    assert "--batch-size 2 per process (a global batch of 4 images), then --queue-size 4" in queue_advice(8, 8, 2)
    assert "--batch-size 10, then --queue-size 22" in queue_advice(44, 48, 1, groups=2)
    assert "(--queue-size 50;" in queue_advice(100, 20, 1)


def test_the_pretrain_header_names_the_shuffle_across_processes():
    from fewshot.ssl.pretrain_settings import bn_protection

    model = SimpleNamespace(encoder_q=torch.nn.BatchNorm2d(3), split_bn_groups=1)
    assert bn_protection(model, 2) == "shuffle-BN across 2 processes"
    # one group on one process is the whole batch: a hunt read "split-BN groups=1" as a guard, which it is not
    assert bn_protection(model).startswith("no shuffle-BN (split-BN groups=1 on one process)")
    assert bn_protection(SimpleNamespace(encoder_q=torch.nn.BatchNorm2d(3), split_bn_groups=4)).startswith(
        "split-BN groups=4")
    model.shuffle_across_ranks = False  # moco.shuffle_bn=off: the header said "shuffle-BN across 2 processes"
    assert bn_protection(model, 2).startswith("no shuffle-BN (moco.shuffle_bn=off, 2 processes)")


def test_shuffle_bn_off_keeps_the_keys_on_their_process_under_ddp(monkeypatch):
    """moco.shuffle_bn=off was ignored under DDP: the key batch was shuffled across the processes anyway."""
    import fewshot.ssl.moco as moco_module
    from fewshot.ssl.moco import MoCo

    calls = []
    monkeypatch.setattr(moco_module, "_ddp", lambda: True)
    monkeypatch.setattr(moco_module, "batch_shuffle_ddp", lambda x, g: calls.append("shuffle") or (x, None))
    monkeypatch.setattr(moco_module, "batch_unshuffle_ddp", lambda x, idx: x)
    from fewshot.models.backbone import create_backbone

    x = torch.randn(4, 3, 32, 32)
    for across, expected in ((True, ["shuffle"]), (False, [])):
        calls.clear()
        model = MoCo(create_backbone("test_resnet"), dim=8, queue_size=16, mlp=False, shuffle_across_ranks=across)
        keys = model.keys(x, torch.Generator().manual_seed(0))
        assert calls == expected and keys.shape == (4, 8)


def test_the_pool_smaller_than_one_batch_says_fewer_processes_under_ddp():
    from fewshot.train.engine import empty_epoch_error

    task = SimpleNamespace(kind="moco", pool=[0] * 6)
    assert "fewer processes" in str(empty_epoch_error(task, {"train": {"batch_size": 4}}, 2))
    assert "fewer processes" not in str(empty_epoch_error(task, {"train": {"batch_size": 8}}, 1))


def test_a_joint_moco_run_resumed_on_more_processes_is_not_told_to_start_anew_there(tmp_path):
    """The advice "to continue on 2, start a new run from this one's weights" led a semi.method=moco run into a
    refusal: its joint loss runs on one process only."""
    from fewshot.errors import UserError
    from fewshot.train.start_checks import check_same_world

    path = tmp_path / "last.pt"
    with pytest.raises(UserError) as joint:
        check_same_world(path, {"world": 1, "kind": "supervised", "joint_moco": {}}, 2)
    assert "runs on one process only" in str(joint.value) and "To continue on 2" not in str(joint.value)
    with pytest.raises(UserError) as plain:
        check_same_world(path, {"world": 1, "kind": "supervised"}, 2)
    assert "To continue on 2, start a new run" in str(plain.value)
