"""The images --skip-bad-images (or data.skip_bad_unlabeled) left out: listed on stderr once per command, and
written to the run folder (RUN/skipped_images.json).

Apart from data/cache.py because the training commands write the list of a whole run (its splits and pool) after
the cache has loaded each of them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fewshot.data.decode_many import VANISHED
from fewshot.errors import one_line
from fewshot.process_state import said_once
from fewshot.train.distributed import launch_rank
from fewshot.utils import atomic_write_text

_REPORTED: set[tuple[str, str]] = said_once(__name__, "_REPORTED")  # skipped files already listed by this command


def report_skipped(bad: list[tuple[str, str]], limit: int = 50, note: str = "--skip-bad-images") -> None:
    """--skip-bad-images (or the pool's data.skip_bad_unlabeled): list what was skipped on stderr (rank 0 only)."""
    if launch_rank() != 0:
        return
    bad = [item for item in bad if item not in _REPORTED]  # `fewshot run` loads its pool once per round
    if not bad:
        return
    _REPORTED.update(bad)
    gone = [p for p, why in bad if why == VANISHED]
    bad = [(p, why) for p, why in bad if why != VANISHED]
    if gone:  # deleted while the command ran: no bad image, and the user should know the folder changed under it
        print(f"warning: {len(gone)} image(s) were removed while the command ran (listed at its start, no longer "
              f"there when read; {one_line(note)}): skipped like undecodable images. Run the command again once "
              f"nothing changes the data folder, for results on the data as it is.\n"
              + _listed([(p, "") for p in gone], limit),
              file=sys.stderr, flush=True)
    if bad:
        print(f"warning: skipping {len(bad)} undecodable image(s) ({one_line(note)}):\n" + _listed(bad, limit),
              file=sys.stderr, flush=True)


def vanished(skipped: list[tuple[str, str]]) -> int:
    """How many of the skipped files were removed while the command ran (not undecodable)."""
    return sum(why == VANISHED for _, why in skipped)


def _listed(bad: list[tuple[str, str]], limit: int) -> str:
    """The lines naming the files (with their reasons, where given), the first ``limit`` of them."""
    lines = ["  - " + one_line(f"{p}: {why}" if why else p) for p, why in bad[:limit]]  # a newline forged an item
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


def write_skipped(run_dir: Path, skipped: list[tuple[str, str]]) -> None:
    """RUN/skipped_images.json: the files --skip-bad-images left out of this run, with the reasons."""
    skipped = list(dict.fromkeys((str(p), why) for p, why in skipped))  # the pool may repeat train images
    if skipped:
        atomic_write_text(Path(run_dir) / "skipped_images.json",
                          json.dumps([{"path": p, "reason": why} for p, why in skipped], indent=2) + "\n")
