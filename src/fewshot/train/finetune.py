"""`fewshot train`: resolve the config, prepare the run directory, fit, write metrics.json."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from fewshot.config import (CHOSEN, NotAMapping, note_chosen, note_rechosen, read_run_config, run_time_values,
                            save_yaml)
from fewshot.data.cache_files import ensure_writable_dir
from fewshot.data.layout import scan_root
from fewshot.data.output_guard import check_output_is_not_in_data, pool_read_by
from fewshot.data.skipped import write_skipped
from fewshot.errors import UserError, one_line, path_argument, shell_quoted
from fewshot.eval.evaluate import format_table
from fewshot.models.weights import weights_note
from fewshot.progress import set_enabled
from fewshot.train.distributed import barrier, check_same_data, check_same_settings, init_distributed
from fewshot.run_lock import lock_run_dir, made_lock_file, refuse_if_being_written, unlock_and_remove
from fewshot.run_state import is_run_stage
from fewshot.train.engine import Engine
from fewshot.train.start_checks import agree_on_checkpoint, check_resume_fits
from fewshot.train.supervised import SupervisedTask, resolve_finetune_defaults
from fewshot.utils import (missing_parents, refuse_links_in_run_dir, resolve_device, resolved, seed_everything,
                           write_json)


# What a train / pretrain run writes before its first checkpoint: a folder holding only these is a start that
# failed or was stopped early, which the same command may start again without --resume.
RUN_START_ENTRIES = frozenset({"config.yaml", "log.jsonl", "tensorboard", "plots", "checkpoints",
                               "skipped_images.json"})


def prepare_run_dir(out: Path, resume: bool, cfg: dict, ctx=None, start: RunStart | None = None) -> dict:
    """Create RUN; refuse to overwrite a finished/started run unless resuming (then reuse its config), and a
    folder that holds anything else (another command's output, the user's files). ``start`` notes what RUN
    held before, so that a start failing later removes only what it made."""
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


# What `--resume` may change: how long and where the run goes on, and how it reports. Anything else
# (model, image size, batch, seed, optimiser, schedule shape, augmentation, MoCo settings) would make the
# continued run a different one than its checkpoint's, or fail deep in torch on a shape mismatch.
# Fields whose absence from an older run's config.yaml means something other than today's default.
# What runs did before these fields existed (a field whose default is "off" needs no entry): a run saved before
# data.gray_p greyed 20 % of its samples from its resume on, and `--resume data.gray_p=0` was refused as a change.
ABSENT_MEANS = {"semi.views": "mocov2", "data.randaug_group": 1, "data.gray_p": 0.0}

RESUME_MAY_CHANGE = frozenset({
    "train.epochs", "train.budget_minutes", "train.threads", "train.adapt_threads", "train.progress",
    "train.tensorboard", "train.device", "train.save_interval_s", "train.save_every_steps", "train.eval_every",
    "train.skip_nonfinite", "train.compile", "train.channels_last", "train.deterministic", "train.amp",
    # the data may have moved; the checkpoint's classes are compared with the data's when it is loaded
    "data.root", "data.datasets", "data.cache_dir", "data.skip_bad_images",
})


def resume_changes(before: dict, now: dict) -> list[str]:
    """The settings (dotted) that ``now`` gives other values than the run's ``before``, beyond RESUME_MAY_CHANGE,
    as a message lists them; a path compares as the file or folder it names."""
    from fewshot.config import setting_changed
    from fewshot.run_state import worded

    changed = []
    for dotted, value in now.items():
        if dotted in RESUME_MAY_CHANGE or dotted not in before:
            continue
        was = before[dotted]
        if setting_changed(dotted, was, value):
            changed.append(f"{dotted} ({worded(dotted, was)} in the run, {worded(dotted, value)} now)")
    return changed


def task_command(cfg: dict) -> str:
    """The command that trains a run of ``cfg``: MoCo goes on as MoCo (`_task`), not fine-tuning."""
    return "pretrain" if cfg.get("_task") == "moco" else "train"


def start_over(out: Path, command: str) -> str:
    """What starts a new run instead of resuming ``out``: `fewshot COMMAND --weights` from its last.pt, or for a
    `fewshot run` stage (no train command there) `fewshot run`, which starts that run over."""
    out = Path(out)
    if is_run_stage(out):
        return f"`fewshot run` starts over; this stage belongs to the run in {shell_quoted(out.parent)}"
    return f"`fewshot {command} --weights {path_argument(out / 'checkpoints' / 'last.pt')}` starts from its weights"


def resume_refused(out: Path, cfg: dict, by: str, changed: list[str], undo: str,
                   undo_clause: str | None = None) -> UserError:
    """Why --resume refuses settings that differ from the run's (the command line's or an edited config.yaml).
    ``undo`` opens a sentence (`Drop those settings`); ``undo_clause`` is the same within one, offered where
    nothing was trained yet (the engine refuses only on loading last.pt: it needs none)."""
    said = f"--resume continues '{out}' exactly as it was configured, but {by} changes {', '.join(changed)}."
    last = Path(out) / "checkpoints" / "last.pt"
    if not is_run_stage(out) and not last.is_file():  # stopped before a checkpoint
        also = f", or {undo_clause} to start it as it was configured" if undo_clause else ""
        return UserError(f"{said} Nothing was trained there yet (no {shell_quoted(last)}): run the same command "
                         f"without --resume to start it afresh with these settings{also} (or give another --out).")
    return UserError(f"{said} {undo} to resume, or start a new run with another --out "
                     f"({start_over(out, task_command(cfg))}).")


def refuse_unknown_fields(saved: dict, path: Path) -> None:
    """A typo in a run's config.yaml (`epochz: 6` under train:) was silently ignored by --resume, while --config
    and key=value words refuse unknown fields: refused the same way, naming the key and the file."""
    from fewshot.config import unknown_fields

    unknown = unknown_fields(saved)
    if unknown:
        names = ", ".join(f"'{name}'" for name in unknown)
        raise UserError(f"{path} holds the unknown config field(s) {names}, which would silently do nothing (a "
                        f"typo?). Correct or delete them in that file (every field and its default: DEFAULTS in "
                        f"fewshot/config/defaults.py), then resume again.")


def keep_dataset_order(base: dict, explicit: dict, was) -> None:
    """--datasets naming the run's datasets in another order: the run's order, which its head's classes follow
    (`--datasets B,A` on a run of A,B was refused as "the datasets or classes differ", listing the same sets)."""
    from fewshot.run_state import datasets_in_run_order

    if "data.datasets" in explicit:
        root = explicit.get("data.root") or base.get("data", {}).get("root")
        explicit["data.datasets"] = datasets_in_run_order(was, explicit["data.datasets"], root)


def resumes_from_config(out: Path) -> bool:
    """Whether --resume takes RUN's config.yaml as the run's settings (merge_resume_config): one a run wrote (its
    content alone). Another (empty, a recipe, unreadable) is no run's: prepare_run_dir refuses it as such, and
    merge_resume_config beside a checkpoint; taken for the run's, an empty one "changed" model.name from resnet18."""
    saved = Path(out) / "config.yaml"
    try:
        return saved.is_file() and read_run_config(saved)[1]
    except (UserError, OSError):
        return False


def recorded_config(last: Path) -> dict | None:
    """The settings a run's checkpoint records (its `config`, which the run's config.yaml held), or None where it
    cannot be read or records no run's (its tensors are mapped, not read)."""
    from fewshot.config import written_by_run
    from fewshot.train.checkpoint import load_checkpoint

    try:
        config = load_checkpoint(last, mmap=True).get("config")
    except (UserError, OSError):
        return None
    return config if isinstance(config, dict) and written_by_run(config, last, run_files=False) else None


def restore_config_command(last: Path, saved: Path) -> str:
    """A shell line that writes the settings ``last`` records back into ``saved`` (atomically: save_yaml)."""
    code = ("import sys; from fewshot.config import save_yaml; from fewshot.train.checkpoint import load_checkpoint; "
            "save_yaml(load_checkpoint(sys.argv[1])['config'], sys.argv[2])")
    return f'{path_argument(sys.executable or "python")} -c "{code}" {path_argument(last)} {path_argument(saved)}'


def settings_lost(out: Path, cfg: dict, what: str) -> UserError:
    """--resume of a run (or a `fewshot run` stage) whose config.yaml beside its checkpoint holds no run's settings
    (``what`` it is: emptied, `{}`, `false`, a recipe copied over it): merged into the defaults, it was refused as
    the command "changing" model.name from resnet18. last.pt records them: the message gives the line that puts
    them back, where it can be read."""
    out = Path(out)
    last, saved = out / "checkpoints" / "last.pt", out / "config.yaml"
    recorded = recorded_config(last) if last.is_file() else None
    if recorded is not None:
        back = (f"{shell_quoted(last)} records them (its `config`): `{restore_config_command(last, saved)}` writes "
                f"them back into config.yaml; then resume again")
    else:
        back = "Put the run's config.yaml back (from a copy or a backup) and resume again"
    # a checkpoint always records its config: none read means last.pt itself cannot be used, not even as --weights;
    # a `fewshot run` stage is started over by `fewshot run` all the same (another --out alone is no way for it)
    stage = is_run_stage(out)
    weights = f" ({start_over(out, task_command(recorded or cfg))})" if recorded is not None or stage else ""
    return UserError(f"--resume cannot continue {shell_quoted(out)}: its config.yaml {what}, so the settings the run "
                     f"was configured with, which a resume keeps, are gone from it. {back}, or start a new run with "
                     f"another --out{weights}.")


def lost_settings(settings: dict | None) -> str:
    """What an --out folder's config.yaml that no run wrote is (read_run_config's ``settings``), as settings_lost
    says it."""
    from fewshot.config import missing_run_sections

    if settings is None:
        return "is empty"
    if not settings:
        return "holds no settings (`{}`)"
    lacks = ", ".join(f"{name}:" for name in missing_run_sections(settings))
    return f"is not the one the run wrote: it lacks the section(s) {lacks} that a run saves (a recipe?)"


def resumed_settings(out: Path, cfg: dict, stage: bool = False) -> dict | None:
    """``out``'s config.yaml as the settings --resume continues with (read_run_config). Where nothing was trained (no
    last.pt), None for a folder without a run's: no config.yaml (a fresh start), an empty one, a recipe, an
    unreadable one (prepare_run_dir refuses those). Beside last.pt, or for a `fewshot run` ``stage`` being resumed
    or reused, a file with no run's settings in it is settings_lost (``cfg``: the command's), and so is a deleted
    one (the engine took the command's settings for an edit of it); a YAML error is said as such (the run's own
    file, broken by an edit)."""
    saved = Path(out) / "config.yaml"
    begun = stage or (Path(out) / "checkpoints" / "last.pt").is_file()
    if not os.path.lexists(saved):
        if begun:
            raise settings_lost(out, cfg, "is missing")
        return None
    try:
        settings, by_run = read_run_config(saved)
    except NotAMapping as exc:
        if begun:
            raise settings_lost(out, cfg, f"is not a config fewshot can read ({one_line(str(exc)).rstrip('.')})") \
                from None
        return None
    except (UserError, OSError):
        if begun:
            raise
        return None
    if not by_run:
        if begun:
            raise settings_lost(out, cfg, lost_settings(settings))
        return None
    return settings


def merge_resume_config(out: Path, cfg: dict, explicit: dict) -> dict:
    """On --resume the saved config is the base; only what was given on this command line changes,
    and only the settings in RESUME_MAY_CHANGE may differ from the saved ones."""
    saved = Path(out) / "config.yaml"
    base = resumed_settings(out, cfg)
    if base is None:  # nothing to resume (a fresh start), or a folder prepare_run_dir refuses
        return cfg
    refuse_unknown_fields(base, saved)
    from fewshot.config import DEFAULTS, chosen_record, get_dotted, same_value, set_dotted

    chosen = chosen_record(base, saved)

    def in_run(keys: list[str]):
        try:
            return get_dotted(base, keys)
        except KeyError:  # a field newer than the run: what the run did without it
            dotted = ".".join(keys)
            if dotted in ABSENT_MEANS:
                return ABSENT_MEANS[dotted]
            try:
                return get_dotted(DEFAULTS, keys)
            except KeyError:
                return None

    keep_dataset_order(base, explicit, in_run(["data", "datasets"]))
    changed = resume_changes({dotted: in_run(dotted.split(".")) for dotted in explicit}, explicit)
    if changed:
        raise resume_refused(out, base, "this command", changed, "Drop those settings", "drop those settings")
    for dotted, value in explicit.items():
        keys = dotted.split(".")
        try:
            set_dotted(base, keys, value)
        except UserError:  # a field newer than the run's config.yaml (the command line's fields are known
            section = base  # ones: resolve() refused typos before this)
            for key in keys[:-1]:
                section = section.setdefault(key, {})
            section[keys[-1]] = value
    # what this command gives (--device cpu over a chosen cuda), or an edit of config.yaml, is the user's now
    kept = {dotted: value for dotted, value in chosen.items()
            if dotted not in explicit and same_value(in_run(dotted.split(".")), value)}
    if kept or CHOSEN in base:  # an emptied record stays: without one the run's file is taken for an older fewshot's
        base[CHOSEN] = kept
    saved_device = str(base.get("train", {}).get("device") or "")
    if "train.device" not in explicit and saved_device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"'{out}' was trained on {saved_device} (its config.yaml) and no CUDA GPU is available "
                        f"here; pass --device cpu to resume it on the CPU.")
    device = resumable_device(out, saved_device) if "train.device" not in explicit else saved_device
    if device != saved_device:
        base["train"]["device"] = device
    from fewshot.config import validate, with_defaults

    # recorded: the run's budget stays resumable where an older fewshot took one above MAX_BUDGET_MINUTES (what
    # this command gave was validated with the cap by resolve()); a value edited into config.yaml since is the
    # user's new input, as the other edits are (the chosen record above), and keeps the cap
    return validate(with_defaults(base, ABSENT_MEANS), recorded=budget_as_recorded(out, base))


def resumable_device(out: Path, saved: str) -> str:
    """The device a resume takes from the run's config.yaml: a GPU index this machine does not have (a run of cuda:1
    copied to a one-GPU machine, or resumed under CUDA_VISIBLE_DEVICES=1, where that GPU is cuda:0) becomes the
    default GPU, with a line saying so; refused as "asked for (--device)", it named a flag the user never typed.
    The device is no part of what the run trains (RESUME_MAY_CHANGE), and cuda is what auto would take here. Under
    torchrun the index is dropped without a word: each process takes cuda:LOCAL_RANK, and a one-process run resumed
    there is refused for its process count (the note told of a resume that did not happen)."""
    index = re.fullmatch(r"cuda:(\d+)", saved)
    if index is None or not torch.cuda.is_available():
        return saved
    from fewshot.cli_ranks import world_size_env  # 1 where WORLD_SIZE is bad: init_distributed refuses it, naming it

    if world_size_env() > 1:
        return "cuda"
    if int(index[1]) < torch.cuda.device_count():
        return saved
    count = torch.cuda.device_count()
    print(one_line(f"note: '{out}' was trained on {saved} (its config.yaml), which this machine does not have "
                   f"({count} CUDA GPU(s) visible, cuda:0 to cuda:{count - 1}); resuming on the default GPU, "
                   f"cuda (--device cuda:N picks another)."), flush=True)
    return "cuda"


def budget_as_recorded(out: Path, settings: dict) -> bool:
    """Whether ``settings``' train.budget_minutes is the one the run in ``out`` wrote: its last.pt records the config
    it trained with (read with the tensors mapped). A budget above the cap typed into config.yaml by hand resumed
    unchecked when every value there counted as the run's own."""
    from fewshot.config import get_dotted, same_value

    last = Path(out) / "checkpoints" / "last.pt"
    recorded = recorded_config(last) if last.is_file() else None
    if recorded is None:
        return False
    try:
        keys = ["train", "budget_minutes"]
        return same_value(get_dotted(recorded, keys), get_dotted(settings, keys))
    except KeyError:
        return False


def configure_threads(cfg: dict) -> None:
    """Threads (train.threads, None: one per core) and the allocator setting of fewshot.runtime."""
    from fewshot.runtime import configure_cpu

    configure_cpu(cfg["train"].get("threads"))


def warn_random_backbone_at_a_pretrained_lr(cfg: dict) -> None:
    """The course recipes (configs/course_*.yaml) are for pretrained backbones: lr 1e-4 with the backbone at 0.1x.
    Without --weights the random backbone barely moves at 1e-5 and the run quietly ends near a linear probe of
    random features."""
    o = cfg["optim"]
    backbone_lr = float(o["lr"]) * float(o["backbone_lr_mult"])
    if not cfg["model"]["weights"] and backbone_lr < 1e-4:
        print(f"warning: the backbone starts from random init but trains at lr {backbone_lr:g} (optim.lr "
              f"{o['lr']:g} x backbone_lr_mult {o['backbone_lr_mult']:g}), a rate for pretrained weights. Pass "
              f"--weights FILE, or train from scratch at the measured default (optim.lr=4e-3 "
              f"optim.backbone_lr_mult=1).", flush=True)


def start_job(cfg: dict, out: Path, resume: bool, resolve_defaults, start: RunStart | None = None,
              kind: str = "supervised") -> tuple:
    """The start every training job shares (fine-tuning and MoCo): threads, device and process group, the
    job's defaults (``resolve_defaults(ctx, resuming)``), the datasets, the run directory and its config,
    the seed. ``start`` (undone_if_start_fails) records what the run directory held before; ``kind``: the task's
    (its checkpoints'). Returns (device, ctx, infos, resuming, ck): ``ck`` is last.pt (its tensors mapped) once
    its kind and process count fit, None where nothing is resumed or only some ranks resume (Engine.resume says
    it: a check by the resuming ranks alone would leave the others waiting in the next collective)."""
    set_enabled(bool(cfg["train"]["progress"]))
    configure_threads(cfg)
    device = resolve_device(cfg["train"]["device"])
    ctx, device = init_distributed(device)
    auto = cfg["train"]["device"] == "auto"
    # the device used, with its index (`cuda:1` was saved as `cuda`, and a --resume moved the run to GPU 0); under
    # torchrun each process has its own (LOCAL_RANK), so the type is what all of them share
    cfg["train"]["device"] = str(device) if device.index is not None and ctx.world == 1 else str(device.type)
    if auto:  # config.yaml saves the device used: given back, auto chooses again
        note_chosen(cfg, "train.device")
    # a record even if empty where this run writes the first config.yaml (also a --resume that starts fresh): a
    # run's config.yaml without one is taken for an older fewshot's, and a given --lr 0.004 or --device cpu there
    # for the run's choice
    if not (resume and resumes_from_config(out)):  # cfg is not the run's (merge_resume_config)
        cfg.setdefault(CHOSEN, {})
    if cfg["train"]["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
    last = Path(out) / "checkpoints" / "last.pt"
    resuming = resume and last.is_file()
    # the first collective, on every rank, of the settings as typed: resolve_defaults may refuse on one rank alone
    # (its --batch-size, its own weights file), and the others waited here without the settings' difference said;
    # other --datasets per rank were said as other data (check_same_data), and rank 0 had written its config.yaml
    alike = check_same_settings(ctx, cfg, resuming)
    resolve_defaults(ctx, resuming)
    # test/ too where it exists: its duplicate ids and sub-folders stopped predict only, after the training
    infos = scan_root(cfg["data"]["root"], cfg["data"]["datasets"], splits=("train", "val"), if_present=("test",))
    # with what resolve_defaults filled in from each node's own weights file (its network), in the same exchange
    check_same_data(ctx, infos, run_time_values(cfg))
    prepare_run_dir(out, resume, cfg, ctx, start)
    note_rechosen(cfg, say=ctx.is_main)  # a run's config.yaml as --config: what this command chose otherwise
    if ctx.is_main and not resuming:
        save_yaml(cfg, Path(out) / "config.yaml")  # a resumed run's is written once its checkpoint has loaded
    ck = None
    # its kind, then its process count, before the task is built: the settings checks building runs (shuffle-BN
    # groups against the batch size) answered another process count with advice that leads nowhere, and a moco
    # last.pt was counted as images. Read once, its tensors mapped; every rank reads it only where all resume, and
    # the ranks first agree that they read one file (agree_on_checkpoint)
    if resuming and alike:
        from fewshot.train.checkpoint import load_checkpoint

        try:
            ck, unreadable = load_checkpoint(last, mmap=True), None
        except (UserError, OSError) as exc:  # said after the other ranks heard of it: alone, they waited
            ck, unreadable = None, exc
        agree_on_checkpoint(ctx, last, ck, unreadable)
        if unreadable is not None:
            raise unreadable
        check_resume_fits(last, ck, kind, ctx.world)
    seed_everything(cfg["train"]["seed"])
    return device, ctx, infos, resuming, ck


def run_finetune(cfg: dict, out: Path, resume: bool = False) -> dict:
    with undone_if_start_fails(out) as start:  # a bad model or weights file leaves no run folder behind
        device, ctx, infos, resuming, ck = start_job(cfg, out, resume,
                                                     lambda ctx, resuming: resolve_finetune_defaults(cfg, resuming),
                                                     start, "supervised")  # SupervisedTask.kind
        task = SupervisedTask(cfg, infos, device, ctx, resuming=resuming)
        # refused before the start line, not after it, and after start_job's checks of its kind and process count
        # (Engine.resume makes them first too). Where only some ranks resume, ck is None: the ranks first agree on
        # one last.pt in Engine.resume (the ranks that resume stopped here while the others waited in DDP's set-up)
        if ck is not None:
            task.check_resumable(ck)
            del ck  # its tensors mapped: Engine.resume reads the file again
        engine = Engine(task, cfg, out, device, ctx)
        announce_finetune(cfg, out, task, engine, device, ctx)
    engine.fit(resume=resume)
    metrics = final_metrics(engine, task, out)
    if ctx.is_main:
        from fewshot.report.plots import plot_train_curves

        plot_train_curves(Path(out))  # SPEC: a run directory holds plots/ (`fewshot run`'s report draws its own)
    return metrics


def announce_finetune(cfg: dict, out: Path, task: SupervisedTask, engine: Engine, device, ctx) -> None:
    """The start's lines (rank 0): what is trained on what, and the warnings about settings that learn little;
    skipped_images.json."""
    if ctx.is_main:
        pool_skipped = task.unlabeled.skipped if task.unlabeled is not None else []  # FixMatch's pool
        write_skipped(out, task.train_set.skipped + task.val_set.skipped + pool_skipped)
        processes = f" x{ctx.world}" if ctx.world > 1 else ""  # as pretrain's line says it (docs/performance.md)
        print(one_line(f"fine-tuning {cfg['model']['name']} ({task.n_parameters:,} parameters)"
                       f"{weights_note(task.weights_loaded, cfg['model']['weights'])} on "
                       f"{', '.join(task.space.names)}: {task.space.num_classes} "
                       f"class{'es' if task.space.num_classes != 1 else ''}, {len(task.train_set)} train / "
                       f"{len(task.val_set)} val images at {task.size}px{size_note(cfg)} on {device}{processes} "
                       f"({engine.precision}); run directory {out}"))
        if task.unlabeled is not None:
            from fewshot.train.semi import fixmatch_note

            print(one_line(fixmatch_note(task.unlabeled.summary, task.unlabeled.without_pool)))
        warn_random_backbone_at_a_pretrained_lr(cfg)
        if cfg["train"]["compile"] is True:  # it was accepted and silently ignored (auto: no word, as documented)
            print("note: train.compile applies to MoCo pretraining only; fine-tuning runs eagerly.", flush=True)
        left_out = task.datasets_left_out()
        if left_out:
            print(one_line(f"warning: {', '.join(left_out)} never reach(es) a training batch: with data.sampler="
                           f"{cfg['data']['sampler']} on {ctx.world} process(es) each of its batches would give a "
                           f"process fewer than 2 images, which BatchNorm cannot train on. Use data.sampler=shuffle, "
                           f"fewer processes, or more images."), file=sys.stderr)
        if task.space.num_classes == 1:  # the loss is 0 from the first step: a silent run that learns nothing
            print(one_line(f"warning: {task.space.names[0]} has one class and no other dataset is trained with it: "
                           f"the loss is 0 and nothing is learned; every image is predicted as "
                           f"{task.space.classes[0][0]!r}. Add classes or datasets (--datasets)."), file=sys.stderr)


def size_note(cfg: dict) -> str:
    """Why the input size is what it is when the user did not choose one: a model's default (often 224 px) costs
    10-50x the compute of the 32-64 px that small images need, and `fewshot run` picks smaller sizes by itself."""
    if cfg["model"].get("img_size") is not None:
        return ""
    return " (the model's default input size; --img-size sets it)"


def load_best_checkpoint(model, out: Path) -> dict:
    """Load into ``model`` the weights a run's metrics belong to: best.pt (its EMA when it has one), else
    last.pt. Returns the checkpoint."""
    from fewshot.train.checkpoint import load_checkpoint

    best = Path(out) / "checkpoints" / "best.pt"
    ck = load_checkpoint(best if best.is_file() else Path(out) / "checkpoints" / "last.pt")
    model.load_state_dict(ck["ema"] if ck.get("ema") is not None else ck["model"])
    return ck


def chosen_weights(ck: dict) -> str:
    """Which weights a checkpoint's readers take: "ema" or "raw" (best.pt says; older ones hold the EMA's if any)."""
    return ck.get("weights") or ("ema" if ck.get("ema") is not None else "raw")


def final_metrics(engine: Engine, task: SupervisedTask, out: Path) -> dict:
    """Evaluate the best checkpoint on val in both modes; metrics.json holds the configured mode."""
    from fewshot.train.checkpoint import logged_epoch

    if not engine.ctx.is_main:
        return {}
    model = task.model
    ck = load_best_checkpoint(model, out)
    best_epoch = logged_epoch(ck)
    result = task.evaluate(model, best_epoch)
    mode = task.cfg["train"]["eval_mode"]
    metrics = dict(result["val"][mode])
    weights = chosen_weights(ck)
    compared, last_score = val_scores_logged(Path(out))
    metrics.update({"split": "val", "best_epoch": best_epoch, "weights": weights, "val_scores_compared": compared})
    if task.unlabeled is not None:  # what the unlabeled pool added to the labelled images
        metrics["semi"] = task.unlabeled.summary
    write_json(Path(out) / "metrics.json", metrics)
    for m in ("known", "unknown"):
        write_json(Path(out) / f"metrics_{m}.json", {**result["val"][m], "split": "val", "best_epoch": best_epoch,
                                                     "weights": weights})  # as metrics.json says it
    # the table is of train.eval_mode, the mode metrics.json holds and the best epoch was chosen by
    print(format_table(metrics, title=f"val accuracy, best epoch {best_epoch}, {weights} weights"
                                      f"{best_of_words(compared, len(task.val_set), last_score)}"))
    if weights == "raw" and task.cfg["train"]["ema"]:
        print("note: best.pt holds the raw (non-EMA) weights: they scored higher on val than the EMA's (log.jsonl: "
              "score_raw, score_ema); eval, predict and export use them.", flush=True)
    if mode == "known":
        print(f"unknown-source: mean acc@1 {result['val']['unknown']['mean_acc1']:.2f}, "
              f"routing {result['val']['unknown']['routing_acc']:.2f}")
    else:
        print(f"known-source: mean acc@1 {result['val']['known']['mean_acc1']:.2f}")
    return metrics


def val_scores_logged(out: Path) -> tuple[int, float | None]:
    """How many val scores best.pt was chosen among (log.jsonl's evaluations; raw and EMA weights each count) and
    the last evaluation's score: the best of many scores of a small val is a maximum, above what new images give
    (4 classes x 10 val images: best of 130 scores 77.5, test 57.5)."""
    compared, last = 0, None
    with contextlib.suppress(OSError):
        for line in (out / "log.jsonl").read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and isinstance(row.get("score"), (int, float)):
                    compared += 1 + (row.get("score_raw") is not None and row.get("score_ema") is not None)
                    last = float(row["score"])
    return compared, last


def best_of_words(compared: int, images: int, last_score: float | None) -> str:
    """The table title's note that its figure is a maximum (none where only one score was taken)."""
    if compared < 2:
        return ""
    last = f"; the last evaluation {last_score:.2f}" if last_score is not None else ""
    return f": the best of {compared} val scores of {images} images (a maximum: optimistic{last})"
