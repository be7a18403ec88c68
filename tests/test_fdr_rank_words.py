"""Words of a torchrun job (a DDP hunt): the notes and warnings of the start said once per job, not once per process;
a full disk under TensorBoard's flush thread ends its events with one warning line, no thread traceback; and a
rank whose peer was SIGKILLed (no message of its own) is not told that the peer's message says why."""

from __future__ import annotations

import errno
import sys
import threading
from types import SimpleNamespace

import pytest

from fewshot.cli_config import note_flags_overridden
from fewshot.cli_warnings import (warn_pretrain_config, warn_replaced_config_fields, warn_replaced_overrides,
                                  warn_unused_overrides)
from fewshot.config import find_config, same_recorded_path
from fewshot.config import yaml_io


def _as_rank(monkeypatch, rank: int) -> None:
    """A process of a two-process torchrun job, as launch_rank reads it (no process group is formed)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))


def _start_notes() -> None:
    """The notes and warnings of train's start (and `fewshot run`'s, whose words share the helpers)."""
    flags, names = {"optim.lr": 0.01}, {"optim.lr": "--lr"}
    note_flags_overridden(flags, names, ["optim.lr=0.02", "train.eval_every=1", "train.eval_every=100"])
    find_config("moco_cpu_small")
    warn_pretrain_config("moco_cpu_small", "train")
    warn_replaced_overrides(["moco.queue_size=64"])
    same_recorded_path("pool", "/somewhere/pool")


@pytest.fixture
def fresh_notes(monkeypatch):
    """The once-a-process memories of the notes, emptied: each test sees its notes said."""
    from fewshot.config import changes

    monkeypatch.setattr(yaml_io, "_NOTED_RECIPES", set())
    monkeypatch.setattr(changes, "_TAIL_NOTED", set())


def test_rank_0_says_the_start_notes(monkeypatch, capsys, fresh_notes):
    _as_rank(monkeypatch, 0)
    _start_notes()
    err = capsys.readouterr().err
    for words in ("optim.lr=0.02 replaces --lr 0.01", "train.eval_every=100 replaces train.eval_every=1 given",
                  "moco_cpu_small is not here", "looks like a `fewshot pretrain` recipe", "moco.queue_size=64 is "
                  "replaced", "the run recorded pool relative"):
        assert words in err, (words, err)


def test_another_rank_says_none_of_them(monkeypatch, capsys, fresh_notes):
    """Every process resolves the same config (it must), and each printed its notes: twice under 2 processes."""
    _as_rank(monkeypatch, 1)
    _start_notes()
    assert find_config("moco_cpu_small").is_file()  # the config is still resolved on this rank
    assert same_recorded_path("pool", "/somewhere/pool")
    assert capsys.readouterr().err == ""


def test_another_rank_gives_no_run_config_warning(monkeypatch, capsys, tmp_path):
    """The warnings of a `--config` file are rank 0's too (as warn_unused_overrides' already were)."""
    path = tmp_path / "f.yaml"
    path.write_text("semi:\n  method: pseudo\n")
    _as_rank(monkeypatch, 1)
    warn_replaced_config_fields(str(path))
    warn_unused_overrides("train", {}, [])
    assert capsys.readouterr().err == ""
    _as_rank(monkeypatch, 0)
    warn_replaced_config_fields(str(path))
    assert "is replaced by run.semi_method" in capsys.readouterr().err


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_ends_the_event_files_with_one_line(monkeypatch, capsys, tmp_path):
    """The writer's flush thread raised the OSError and Python printed its traceback ("Exception in thread"), beside
    fewshot's own message for the same full disk; the next flush raised it again and stopped training."""
    pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.summary.writer import record_writer

    from fewshot.train import tensorboard_log

    seen = []
    monkeypatch.setattr(threading, "excepthook", seen.append)  # what would be printed as a thread's traceback
    before = set(threading.enumerate())
    writer = tensorboard_log.open_writer(tmp_path, None)
    threads = set(threading.enumerate()) - before  # the writer's flush thread
    monkeypatch.setattr(record_writer.RecordWriter, "write", _full_disk)
    tensorboard_log.add_scalars(writer, {"epoch": 1, "loss": 0.5})  # raised OSError out of training
    for thread in threads:
        thread.join(timeout=10)
    tensorboard_log.add_scalars(writer, {"epoch": 2, "loss": 0.4})  # the events stopped: nothing more is tried
    writer.close()
    err = capsys.readouterr().err
    assert [e.exc_type for e in seen] == [], seen  # no thread traceback
    assert err.count("warning: TensorBoard") == 1 and "No space left on device" in err, err
    assert "Traceback" not in err


def test_another_threads_exception_still_reaches_the_hook(monkeypatch, tmp_path):
    """Only the writer's own threads are quiet: another thread's OSError is the hook's as before."""
    pytest.importorskip("torch.utils.tensorboard")
    from fewshot.train import tensorboard_log

    seen = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    tensorboard_log.open_writer(tmp_path, None).close()
    thread = threading.Thread(target=_full_disk)
    thread.start()
    thread.join()
    assert [e.exc_type for e in seen] == [OSError]


def test_a_rank_whose_peer_was_killed_is_not_sent_to_its_message(monkeypatch, capsys):
    """A SIGKILLed rank prints nothing: "its own message says why" pointed at a message that never came."""
    import torch.distributed as dist

    from fewshot.cli import _dispatch

    def collective_failed(args, extra):
        raise dist.DistBackendError("[pair.cc:598] Read error [127.0.0.1]:5150: Connection reset by peer")

    _as_rank(monkeypatch, 1)
    assert _dispatch(SimpleNamespace(command="train"), [], {"train": collective_failed}) == 1
    err = capsys.readouterr().err
    assert "ended first" in err and "Connection reset by peer" in err, err
    assert "its own message says why" not in err and "if any" in err and "exit code" in err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
