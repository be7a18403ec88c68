"""Whether a run folder has room for the run before it trains: bytes for its checkpoints and inodes for its files.

Apart from the loop (engine.py) because it asks the file system, not the model: the loop only says how large one
checkpoint is (Engine.checkpoint_bytes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from fewshot.errors import UserError
from fewshot.train.resume import BEST_ASIDE


def check_room(run_dir: Path, ckpt_dir: Path, budget: bool, checkpoint_bytes: int) -> None:
    """Fail before training when ``run_dir`` cannot hold last.pt + best.pt + a temp copy, and with a ``budget``
    also the best.pt that a budget stop keeps aside (BEST_ASIDE), each of ``checkpoint_bytes``; or when its file
    system has too few free inodes left for the files a run writes."""
    names = ("last.pt", "best.pt", BEST_ASIDE)
    have = sum(p.stat().st_size for p in (ckpt_dir / n for n in names) if p.is_file())
    need = (4 if budget else 3) * checkpoint_bytes - have + (1 << 20)
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        return
    if free < need:
        raise UserError(f"not enough free space for the checkpoints in '{run_dir}': about "
                        f"{need / 2**20:.1f} MiB needed (last.pt, best.pt, a temporary copy"
                        f"{' and the best.pt a budget stop keeps aside' if budget else ''}), "
                        f"{free / 2**20:.1f} MiB free. Free some space or choose another --out.")
    # inodes too: a file system out of them (a tmpfs's nr_inodes, many small files) failed after epoch 1 with
    # "No space left on device" while df showed room. A run writes about run_files files and folders
    # (checkpoints, temporary copies, metrics, logs, plots); those there are only replaced. f_files 0: no limit
    run_files = 24
    try:
        vfs = os.statvfs(run_dir)
        there = sum(1 for _ in zip(range(run_files), run_dir.rglob("*")))
    except (OSError, AttributeError):  # no statvfs (Windows), or the folder unreadable: the writes will say
        return
    need_files = max(run_files - there, 0) + 2
    # root may use the inodes reserved for it (f_ffree); others only f_favail
    left = vfs.f_ffree if getattr(os, "geteuid", lambda: -1)() == 0 else vfs.f_favail
    if not vfs.f_files or left >= need_files:
        return
    # a FUSE or network file system may count inodes it does not track (f_files set, f_favail 0): refused
    # on every train. Only files that cannot be made are believed: as many as the run needs, removed again,
    # named as atomic writes' temp files (remove_stale_temp_files clears those a kill left)
    made: list[str] = []
    try:
        for _ in range(need_files):
            fd, name = tempfile.mkstemp(prefix=".inode-probe.", suffix=".tmp", dir=run_dir)
            made.append(name)
            os.close(fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # not the inodes (a permission): the writes will say
            return
        raise UserError(f"no room for the run's files in '{run_dir}': its file system has "
                        f"{left} free inodes (file entries) left, and a run writes about {need_files} "
                        f"more (checkpoints, metrics, logs), though {free / 2**20:.1f} MiB are free: a new "
                        f"file could not be made there ({exc.strerror or exc}). Delete some files on that file "
                        f"system or choose another --out.") from None
    finally:
        for name in made:
            with contextlib.suppress(OSError):
                os.unlink(name)
