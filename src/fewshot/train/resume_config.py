"""What `--resume` continues with: the run's recorded config.yaml as the base, this command's settings merged in
where RESUME_MAY_CHANGE lets them differ, and the messages that refuse the rest or a config.yaml that lost them.

Apart from the engine's exact resume (resume.py, the state restored from last.pt) because this is decided from the
settings alone, before any model is built: by `fewshot train/pretrain --resume`, `fewshot run`'s stages and the
engine's own check of an edited config.yaml.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch

from fewshot.config import CHOSEN, NotAMapping, read_run_config
from fewshot.errors import UserError, one_line, path_argument, shell_quoted
from fewshot.run_state import is_run_stage


# What `--resume` may change: how long and where the run goes on, and how it reports. Anything else
# (model, image size, batch, seed, optimiser, schedule shape, augmentation, MoCo settings) would make the
# continued run a different one than its checkpoint's, or fail deep in torch on a shape mismatch.
# Fields whose absence from an older run's config.yaml means something other than today's default.
# What runs did before these fields existed (a field whose default is "off" needs no entry): a run saved before
# data.gray_p greyed 20 % of its samples from its resume on, and `--resume data.gray_p=0` was refused as a change.
ABSENT_MEANS = {"semi.views": "mocov2", "data.randaug_group": 1, "data.gray_p": 0.0, "data.resize": "crop"}

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
    if not is_run_stage(out) and not last.is_file():  # stopped before a checkpoint, or its last.pt moved away
        from fewshot.train.run_dir import RUN_END_ENTRIES, finished_run_refused, trained_session_files

        ended = sorted(name for name in RUN_END_ENTRIES if (Path(out) / name).is_file())
        if ended:  # a finished run: neither continued nor started over in place (prepare_run_dir says so after this)
            return finished_run_refused(Path(out), ended, task_command(cfg))
        written = trained_session_files(Path(out))
        if written:  # run_dir.refuse_trained_session refuses the start without --resume: not advised
            return UserError(f"{said} Its {shell_quoted(last)} is gone (moved away or deleted), while an earlier "
                             f"session's {', '.join(written[:3])} are there: {undo[0].lower()}{undo[1:]} to start it "
                             f"over in place as it was configured (which removes them), or start a run with these "
                             f"settings with another --out.")
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
    from fewshot.config.recorded import resize_record

    chosen = chosen_record(base, saved)
    resize_record(base, f"config file {saved}")

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
