"""Whether a resumed run's setting differs from the one it recorded: the same word in another spelling, or the same
file or folders by another path, is no change, so that --resume refuses only real changes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from fewshot.config.fields import canonical_value
from fewshot.config.yaml_io import rank_zero_says
from fewshot.errors import printable
from fewshot.process_state import said_once


def same_folders(before, now) -> bool:
    """data.unlabeled as a run recorded it and as given now (one folder or a list): same_recorded_path per
    folder."""
    if before == now:
        return True
    as_list = (lambda v: v if isinstance(v, list) else [v])
    if before is None or now is None or len(as_list(before)) != len(as_list(now)):
        return False
    return all(isinstance(old, str) and isinstance(new, str) and same_recorded_path(old, new)
               for old, new in zip(as_list(before), as_list(now)))


def same_weights_file(saved, now) -> bool:
    """model.weights as a run recorded it (``saved``) and as given now, for --resume (same_recorded_path)."""
    if not saved or not now:
        return not saved and not now
    return same_recorded_path(saved, now)


def same_recorded_path(saved, now) -> bool:
    """Whether a path a run recorded and one given now name the same file or folder. Runs record paths absolute;
    older ones kept the text as typed, relative to a folder they did not record: such a path matches when it is
    the tail of the path given now (`w/t.pth` of `/home/u/w/t.pth`), so that the same file reached from another
    folder resumes, and one of another name or folder is still refused."""
    saved, now = os.path.expanduser(os.fspath(saved)), os.path.abspath(os.path.expanduser(os.fspath(now)))
    if os.path.isabs(saved):
        return os.path.normpath(saved) == now
    tail = [part for part in Path(os.path.normpath(saved)).parts if part not in (".", "..")]
    same = bool(tail) and list(Path(now).parts[-len(tail):]) == tail
    if same and (saved, now) not in _TAIL_NOTED and rank_zero_says():  # a bare `pool` matches any folder so named
        _TAIL_NOTED.add((saved, now))  # say what was taken, once, and under torchrun by rank 0 alone
        print(printable(f"note: the run recorded {saved} relative to a folder it did not record (an older "
                        f"fewshot); taken as {now}"), file=sys.stderr, flush=True)
    return same


_TAIL_NOTED: set = said_once(__name__, "_TAIL_NOTED")


def setting_changed(dotted: str, was: Any, now: Any) -> bool:
    """Whether a resume's setting differs from the run's: the same word in another spelling, the same folders or
    the same weights file by another path are no change."""
    if canonical_value(dotted, was) == canonical_value(dotted, now):
        return False
    if dotted == "data.unlabeled":
        return not same_folders(was, now)
    if dotted == "model.weights":
        return not same_weights_file(was, now)
    return True
