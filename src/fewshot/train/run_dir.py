"""The run folder a train / pretrain start writes into: refused where it holds another run or the user's files,
locked, cleared of stale temp files, and put back as it was when the start fails.

Apart from fine-tuning (finetune.py) because both training commands share it (ssl/pretrain.py starts there too)
and because what a folder may hold before a start is its own set of rules.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path

from fewshot.config import read_run_config
from fewshot.data.cache_files import ensure_writable_dir
from fewshot.data.output_guard import check_output_is_not_in_data, pool_read_by
from fewshot.errors import UserError, one_line, path_argument, shell_quoted
from fewshot.run_lock import lock_run_dir, made_lock_file, refuse_if_being_written, unlock_and_remove
from fewshot.train.distributed import barrier
from fewshot.utils import missing_parents, refuse_links_in_run_dir, resolved


# What a train / pretrain run writes before its first checkpoint: a folder holding only these is a start that
# failed or was stopped early, which the same command may start again without --resume.
RUN_START_ENTRIES = frozenset({"config.yaml", "log.jsonl", "tensorboard", "plots", "checkpoints",
                               "skipped_images.json"})
# What a run writes at its end (a finished or budget-stopped run): beside the run's config.yaml without last.pt,
# --resume refuses them as a run that ended (finished_run_refused), not as the user's files; a start over there
# would remove its best.pt and metrics (resume.remove_earlier_session)
RUN_END_ENTRIES = frozenset({"metrics.json", "metrics_known.json", "metrics_unknown.json"})
# the command that trains a run of each task kind (Task.kind; a run's config.yaml records `_task: moco` for MoCo)
KIND_COMMANDS = {"moco": "pretrain", "supervised": "train"}


def prepare_run_dir(out: Path, resume: bool, cfg: dict, ctx=None, start: RunStart | None = None,
                    kind: str | None = None) -> dict:
    """Create RUN; refuse to overwrite a finished/started run unless resuming (then reuse its config), and a
    folder that holds anything else (another command's output, the user's files). ``start`` notes what RUN
    held before, so that a start failing later removes only what it made; ``kind``: the command's task kind
    (KIND_COMMANDS), which a --resume without last.pt must share with the folder's run before it starts over."""
    out = Path(out)
    check_output_is_not_in_data(out, cfg["data"]["root"], cfg["data"].get("unlabeled"), reads_pool=pool_read_by(cfg))
    if out.exists() and not out.is_dir():
        # ensure_writable_dir's refusal of a file, met by every rank before the barrier (it writes nothing then):
        # found by rank 0 alone after it, rank 1 was left at the next collective and blamed a closed connection
        ensure_writable_dir(out, "run")
    if ctx is None or ctx.is_main:  # a run being written is refused as such, not as one to --resume
        refuse_if_being_written(out)
    existing = out / "checkpoints" / "last.pt"
    if existing.is_file() and not resume:
        raise UserError(f"'{out}' already holds a run ({existing}). Pass --resume to continue it, "
                        f"or choose another --out.")
    if not existing.is_file() and out.is_dir():  # also with --resume: without last.pt it starts fresh
        try:
            entries = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        except OSError as exc:
            raise UserError(f"cannot read the run folder '{out}': {exc.strerror or exc}.") from None
        foreign = [e for e in entries if e not in RUN_START_ENTRIES]
        unreadable = None
        empty = None
        settings = None
        if "config.yaml" in entries:
            try:
                # a run's start, judged on its content alone, or the user's (a recipe copied there was written over)
                settings, by_run = read_run_config(out / "config.yaml")
                if not by_run:
                    foreign.insert(0, "config.yaml")
                    # no recipe either: no YAML value at all, or `{}` (a `0` or `false` is no config: unreadable)
                    empty = ("is empty (no settings; blank lines or comments at most)" if settings is None else
                             "is an empty mapping (`{}`: no settings)" if not settings else None)
            except UserError as exc:  # no recipe either: a file broken off, a list, not YAML at all
                unreadable = f"is not a config fewshot can read ({one_line(str(exc)).rstrip('.')})"
                foreign.insert(0, "config.yaml")
            except OSError as exc:  # "cannot be read" only for what the system refused (a YAML list was said so)
                unreadable = f"cannot be read ({one_line(exc.strerror or str(exc)).rstrip('.')})"
                foreign.insert(0, "config.yaml")
        if resume and "config.yaml" in entries and "config.yaml" not in foreign:
            # a run's folder that --resume would start over (Engine._start_fresh removes its files): only this
            # command's run, and only one that did not end (its best.pt and metrics are all that is left of it)
            ended = [e for e in foreign if e in RUN_END_ENTRIES]
            refuse_another_commands_run(out, settings, kind, ended)
            if ended:
                raise finished_run_refused(out, ended, run_command(settings))
        if foreign == ["config.yaml"] and unreadable is not None:
            raise UserError(f"the run folder '{out}' is not empty (config.yaml) and holds no run to resume: its "
                            f"config.yaml {unreadable}, and a new run would write its own there. Move that file "
                            f"away (or delete it, if nothing of yours is in it), or choose another --out.")
        if foreign == ["config.yaml"] and empty:  # no recipe: it was called one ("a recipe?")
            raise UserError(f"the run folder '{out}' is not empty (config.yaml) and holds no run to resume: its "
                            f"config.yaml {empty}, so no run wrote it, and a run writes its own config.yaml there. "
                            f"Delete that file (or move it away, if its comments are yours), or choose another --out.")
        if foreign == ["config.yaml"]:  # a recipe copied there: "empty the folder" told the user to delete it
            raise UserError(f"the run folder '{out}' is not empty (config.yaml) and holds no run to resume: its "
                            f"config.yaml is not one a run wrote (a recipe?), and a run writes its own config.yaml "
                            f"there. Keep yours elsewhere and give --config from there, or choose another --out.")
        if foreign:
            shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
            raise UserError(f"the run folder '{out}' is not empty ({shown}) and holds no run to resume; a new run "
                            f"would write over what is there. Choose another --out, or empty the folder.")
        if not resume:
            refuse_trained_session(out, settings, kind)
    # only now, in a folder that holds a run or its start: a folder of the user's own files (a venv's links) was
    # walked whole and refused with advice to replace its links; every rank checks, so all refuse together
    refuse_links_in_run_dir(out)
    if ctx is not None:
        barrier(ctx)  # under torchrun every rank has looked at the folder before rank 0 writes into it
    if ctx is None or ctx.is_main:
        if start is not None:
            start.note_before()
        ensure_writable_dir(out, "run")
        locked = lock_run_dir(out)  # one writer per run folder (the same command started twice, --resume during
        if start is not None:        # a run); without a lock (a file system without locks) nothing is undone:
            start.armed = locked     # another command may be writing there. With it, what appears is its own
        remove_stale_temp_files(out)
    return cfg


def run_command(settings: dict | None) -> str:
    """The command that trains the run of a run's config.yaml ``settings``: `pretrain` for MoCo (`_task`)."""
    return "pretrain" if isinstance(settings, dict) and settings.get("_task") == "moco" else "train"


def start_from_best(out: Path, command: str) -> str:
    """The way to a new run from the model of ``out``'s run, where its best.pt is there ("" where it is not)."""
    best = Path(out) / "checkpoints" / "best.pt"
    if not best.is_file():
        return ""
    return f"; `fewshot {command} --weights {path_argument(best)} --out NEW` starts a new run from its model"


def finished_run_refused(out: Path, ended: list[str], command: str) -> UserError:
    """--resume of a run that ended (``ended``: its metrics files) whose last.pt is gone (moved away, deleted): it
    cannot be continued, and a start over in place would delete the finished model (best.pt) and its metrics."""
    last = shell_quoted(Path(out) / "checkpoints" / "last.pt")
    return UserError(f"the run folder '{out}' holds a run that finished ({', '.join(ended)}) but not its {last} "
                     f"(moved away or deleted): without it the run can be neither continued nor started over in "
                     f"place, which would delete its best.pt and metrics. Put last.pt back to continue it (more "
                     f"--epochs extend it), or choose another --out{start_from_best(out, command)}.")


def refuse_another_commands_run(out: Path, settings: dict | None, kind: str | None, ended: list[str]) -> None:
    """--resume without last.pt in another command's run folder (a `fewshot pretrain` run given to `fewshot train
    --resume`): refused before anything is removed; taken for a start over, it deleted the MoCo run's best.pt and
    fine-tuned there with the MoCo run's settings."""
    ours = KIND_COMMANDS.get(kind or "")
    theirs = run_command(settings)
    if ours is None or ours == theirs:
        return
    how = "It finished: choose another --out" if ended else \
        f"`fewshot {theirs} --resume` starts it over there (no last.pt to continue from), or choose another --out"
    raise UserError(f"the run folder '{out}' holds a `fewshot {theirs}` run (its config.yaml says so), not a `fewshot "
                    f"{ours}` one, and no checkpoints/last.pt: `fewshot {ours} --resume` can neither continue it nor "
                    f"start it over there, which would delete what it wrote. {how}{start_from_best(out, ours)}.")


def trained_session_files(out: Path) -> list[str]:
    """The files of ``out`` that only a session that trained writes (SESSION_FILES: log.jsonl rows and best.pt come
    after the first last.pt). Not best.pt.pending, which the first evaluation writes before it: a kill in the first
    epoch was called a run that trained."""
    from fewshot.train.resume import BEST_PENDING, SESSION_FILES

    def written(name: str) -> bool:  # an empty log.jsonl holds no row: a start's, killed before its first epoch
        path = out / name
        return path.is_symlink() or path.is_file() and (name != "log.jsonl" or path.stat().st_size > 0)

    return [name for name in SESSION_FILES if not name.endswith(BEST_PENDING) and written(name)]


def refuse_trained_session(out: Path, settings: dict | None, kind: str | None) -> None:
    """A start without --resume in a run folder whose training wrote files (trained_session_files) but whose last.pt
    is gone (moved away to save space, deleted): it was taken for a failed start, appended its epochs to the old
    log.jsonl (1,2,3,1,2,...) and wrote over the earlier best.pt. The same command's --resume starts it over with
    those files removed (Engine._start_fresh), which the user chooses knowingly; with other settings, --resume refuses
    them (resume_config.resume_refused), so another --out is the way to those."""
    written = trained_session_files(out)
    if not written:
        return
    theirs = run_command(settings)
    ours = KIND_COMMANDS.get(kind or "", theirs)
    whose = f"a `fewshot {theirs}` run" if settings is not None else "a run"
    last = shell_quoted(Path(out) / "checkpoints" / "last.pt")
    how = ("Put last.pt back and pass --resume to continue it; pass --resume to start it over in place as it was "
           "configured (which removes those files); or choose another --out, for a run with other settings"
           if ours == theirs and settings is not None else
           f"Choose another --out (`fewshot {theirs} --resume` continues it there, with its last.pt put back)"
           if settings is not None else "Choose another --out, or move those files away")
    shown = ", ".join(written[:3]) + (", ..." if len(written) > 3 else "")
    raise UserError(f"the run folder '{out}' holds {whose} that trained ({shown}) but not its {last} (moved away or "
                    f"deleted); a new `fewshot {ours}` run there would append to its log and write over its best.pt. "
                    f"{how}{start_from_best(out, ours)}.")


class RunStart:
    """What a train / pretrain start added to RUN (and above it), for removal when the start fails before
    training: a bad --model or weights file left RUN with config.yaml and the lock file, and the corrected
    command was refused with --resume (the leftover config names the bad model) or needed another --out. Only
    names a run's start writes are removed, and only new ones: a folder the user made stays, as do the files
    that were there before."""

    def __init__(self, out: Path):
        self.written = Path(out)  # as given: `x/../run` makes x, which the normalised path does not name
        # the folder the kernel writes to: `link/../run` is run beside the link's target, not beside the link (a
        # text-normalised path looked in the wrong folder and left config.yaml and the lock behind)
        self.out = resolved(self.written)
        self.armed = False  # set once this command holds RUN's lock: before that, what is there is not its own
        self.existed = True
        self.entries_before: set[str] = set()
        self.made_before = False  # a lock file this command made and held before this start (library callers)
        self.new_parents: list[Path] = []  # folders above RUN that --out created (a/b of a/b/run), nearest first

    def note_before(self) -> None:
        """RUN's entries (and missing parents) before the start writes anything."""
        self.existed = os.path.lexists(self.out)
        self.new_parents = missing_parents(self.written)  # `x/../run` makes x whether or not run is there
        self.made_before = made_lock_file(self.out)
        if self.existed:
            with contextlib.suppress(OSError):
                self.entries_before = set(os.listdir(self.out))

    def undo(self) -> None:
        """Remove what this start made: RUN's new start entries, then RUN and its parents if they are new and
        empty. Errors are swallowed: the start's own error is the one to report."""
        if not self.armed:
            return
        self.armed = False
        with contextlib.suppress(OSError):
            for name in set(os.listdir(self.out)) - self.entries_before:
                if name in RUN_START_ENTRIES or ATOMIC_TEMP.fullmatch(name):
                    _remove(self.out / name)
        # only a lock file this start created (O_EXCL), not one judged new on the listing above: another
        # command's can appear (or vanish, and this start make its own) between that listing and the lock
        if made_lock_file(self.out) and not self.made_before:  # another's stays; its lock goes with the command
            unlock_and_remove(self.out)
        made = {*self.new_parents, *(() if self.existed else (self.out,))}  # `x/../run` with run there made x
        for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only an empty one: a file someone else put there keeps it (and its parents)


def _remove(path: Path) -> None:
    """A file, or a folder with what is in it (checkpoints/, tensorboard/), never following a link."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def undone_if_start_fails(out: Path):
    """Run a job's start (the run folder, its config, the model, the engine) inside; if it raises, what it added
    to the run folder is removed (RunStart.undo), so the corrected command starts afresh in the same --out."""
    start = RunStart(out)
    try:
        yield start
    except BaseException:
        start.undo()
        raise


# utils.atomic_write_bytes's temp file: .NAME.XXXXXXXX.tmp (tempfile.mkstemp's 8 random characters)
ATOMIC_TEMP = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_stale_temp_files(out: Path, older_than_s: float = 600.0) -> None:
    """The temp files a kill during an atomic write left in RUN (.metrics.json.*.tmp): with the folder's lock held
    no write of this run is under way, and nothing else removed them (the engine cleans checkpoints/ only). Only
    old ones: `eval`/`predict --out RUN/x.json` take no lock and may be writing theirs now."""
    now = time.time()
    for p in out.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if ATOMIC_TEMP.fullmatch(p.name) and p.is_file() and not p.is_symlink() \
                    and now - p.stat().st_mtime > older_than_s:
                p.unlink(missing_ok=True)
