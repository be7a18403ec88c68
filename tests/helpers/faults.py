"""`python -m helpers.faults ARGS...` runs `fewshot ARGS...` with test-only faults injected from outside.

Nothing in src/fewshot knows about this file: it wraps the real code from the outside (process-wide
patches of os.fsync / os.replace and of the tasks' make_batch) and then calls fewshot.cli.main, so
the checkpoint writer under test is the real one. Every fault is a real SIGKILL of this process.
Each variable is inert unless set; N counts writes of checkpoints/last.pt in this process (1-based).

  FEWSHOT_FAULT_KILL_AFTER_SAVE=N    die right after the N-th last.pt write completed (renamed into place)
  FEWSHOT_FAULT_KILL_BEFORE_RENAME=N die when the N-th last.pt temp file is complete and fsynced, before
                                     the rename: the temp file is left behind
  FEWSHOT_FAULT_KILL_MID_WRITE=N     die in the middle of the N-th last.pt write: the temp file holds
                                     only the first half of the bytes and was never fsynced
  FEWSHOT_FAULT_DIE_AT=R:E:S         rank R dies when it builds the batch of epoch E, step S (0-based),
                                     on the first torchrun attempt only (TORCHELASTIC_RESTART_COUNT 0)
  FEWSHOT_FAULT_NOTE=PATH            append one line per injected kill (what, where) to PATH
"""

from __future__ import annotations

import os
import signal
import sys

_real_fsync, _real_replace = os.fsync, os.replace
_count = {"fsync": 0, "replace": 0}


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v else None


def _note(text: str) -> None:
    path = os.environ.get("FEWSHOT_FAULT_NOTE")
    if path:
        with open(path, "a") as fh:
            fh.write(text + "\n")
            fh.flush()
            _real_fsync(fh.fileno())


def _die(text: str) -> None:
    _note(text)
    os.kill(os.getpid(), signal.SIGKILL)


def _is_last_tmp(fd: int) -> bool:
    try:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return False
    return name.startswith(".last.pt.") and name.endswith(".tmp")


def fsync(fd):
    if _is_last_tmp(fd):
        _count["fsync"] += 1
        if _count["fsync"] == _env_int("FEWSHOT_FAULT_KILL_MID_WRITE"):
            size = os.fstat(fd).st_size
            os.ftruncate(fd, size // 2)  # what a kill in the middle of write() leaves on disk
            _die(f"mid-write of last.pt write #{_count['fsync']} ({size // 2} of {size} bytes)")
    return _real_fsync(fd)


def replace(src, dst, *args, **kwargs):
    is_last = os.path.basename(os.fspath(dst)) == "last.pt"
    if is_last:
        _count["replace"] += 1
        if _count["replace"] == _env_int("FEWSHOT_FAULT_KILL_BEFORE_RENAME"):
            _die(f"before the rename of last.pt write #{_count['replace']}")
    out = _real_replace(src, dst, *args, **kwargs)
    if is_last and _count["replace"] == _env_int("FEWSHOT_FAULT_KILL_AFTER_SAVE"):
        _die(f"after last.pt write #{_count['replace']}")
    return out


def _install_die_at(spec: str) -> None:
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return  # only the first attempt dies; the restarted group must finish
    rank, epoch, step = (int(x) for x in spec.split(":"))
    if int(os.environ.get("RANK", "0")) != rank:
        return
    from fewshot.ssl.pretrain import MoCoTask
    from fewshot.train.supervised import SupervisedTask

    for cls in (SupervisedTask, MoCoTask):
        orig = cls.make_batch

        def make_batch(self, idx, e, s, _orig=orig):
            if (e, s) == (epoch, step):
                _die(f"rank {rank} at epoch {e} step {s} (pid {os.getpid()})")
            return _orig(self, idx, e, s)

        cls.make_batch = make_batch


def main() -> int:
    os.fsync, os.replace = fsync, replace
    if os.environ.get("FEWSHOT_FAULT_DIE_AT"):
        _install_die_at(os.environ["FEWSHOT_FAULT_DIE_AT"])
    from fewshot.cli import main as fewshot_main

    return fewshot_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
