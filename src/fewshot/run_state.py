"""DIR/run_state.json: how far a `fewshot run` got, so that `fewshot run --resume` can go on after a stop.

A cluster's time limit (SIGTERM) or a Ctrl-C stops a stage cleanly with a fresh last.pt; this file
records, at every stage boundary, which stages finished and how much of the budget the run had used,
so that a resumed run skips the finished stages (reusing their best checkpoints), continues the
stopped one from its last.pt on its planned schedule, and gives the stages after it only what is
left of the budget. Written atomically after each event: a SIGKILL loses at most the current stage's
steps since its last save, never the record of the stages before it.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

from fewshot.config import (DEFAULTS, PER_INVOCATION, canonical_value, flatten_dotted, get_dotted, set_dotted,
                            setting_changed)
from fewshot.config.recorded import resize_record
from fewshot.errors import UserError, one_line
from fewshot.train.distributed import launch_rank
from fewshot.utils import loads_run_json, write_json

STATE_FILE = "run_state.json"

# what a resumed `fewshot run` may change when the command gives it: where the data and the cache are, the device,
# threads and progress output (not given, the cache and TensorBoard settings are the run's, progress this command's:
# adopt_untyped_settings). Anything else would make the later stages belong to another run than the earlier ones.
RUN_RESUME_MAY_CHANGE = frozenset({"data.root", "data.cache_dir", "train.device", "train.threads",
                                   "train.adapt_threads", "train.progress", "train.tensorboard"})
# of those, the ones that belong to the machine, never taken from the run: a run made with --device cuda, resumed on
# a CPU box by the short command, failed "--device cuda was asked for"
MACHINE_SETTINGS = frozenset({"train.device", "train.threads"})


def holds_finished_run(folder: Path, data: dict | None = None) -> bool:
    """Whether ``folder`` holds a `fewshot run` that finished (run_state.json says finished and summary.json is
    there): one test for a new run's refusal and --resume's "finished already" (PipelineRun.resume_state), which
    passes the ``data`` of the state it read. A state file that cannot be read counts as unfinished: --resume then
    says what is wrong with it."""
    if data is None:
        try:
            data = loads_run_json((folder / STATE_FILE).read_text())
        except (OSError, ValueError):
            return False
    return isinstance(data, dict) and data.get("finished") is True and (folder / "summary.json").is_file()


def _is_amount(value, positive: bool = False) -> bool:
    """A JSON number (not a bool) that is finite and >= 0 (> 0 with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        value = float(value)  # an int of 400 digits is a valid JSON number float() cannot hold
    except OverflowError:
        return False
    return math.isfinite(value) and (value > 0 if positive else value >= 0)


def _finite_seconds(minutes) -> bool:
    """Whether ``minutes`` (an amount) in seconds is a finite float: an int of 10**307 passes _is_amount, and
    math.isfinite of it times 60 (an int too large for a float) raised an OverflowError."""
    try:
        return math.isfinite(float(minutes) * 60)
    except OverflowError:
        return False


def check_state_fields(path: Path, data) -> None:
    """The fields a resume computes with, checked where the file is read: "seconds": "abc" crashed the budget
    arithmetic (an internal error) and NaN gave "done in nan of 0.7 minutes"."""
    def bad(field: str, what: str):
        return UserError(f"--resume: {path} is damaged: {field} must be {what}. The file is written by `fewshot run` "
                         f"and not meant to be edited; start the run again with another --out (or without "
                         f"--resume after emptying the folder).")

    if not isinstance(data, dict):
        raise bad("its content", "a JSON object")
    if not isinstance(data.get("config"), dict):
        raise bad("config", "an object of settings")
    # the cap on new budgets (config.MAX_BUDGET_MINUTES) is not applied here: a run an older fewshot started with
    # more is still resumable, since its budget cannot be changed on resume; only one whose seconds overflow is damaged
    if not _is_amount(data.get("budget_minutes"), positive=True) or not _finite_seconds(data["budget_minutes"]):
        raise bad("budget_minutes", "a number above 0 whose seconds are finite")
    for field in ("seconds", "stage_clock"):
        if (field in data or field == "seconds") and not _is_amount(data.get(field)):
            raise bad(field, "a finite number of seconds, 0 or more")
    size = data.get("img_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise bad("img_size", "a whole number of pixels above 0 (or null)")
    if not isinstance(data.get("finished", False), bool):
        raise bad("finished", "true or false")
    if not isinstance(data.get("session_open", False), bool):
        raise bad("session_open", "true or false")
    lost = data.get("unrecorded_sessions", 0)
    if isinstance(lost, bool) or not isinstance(lost, int) or lost < 0:
        raise bad("unrecorded_sessions", "a whole number of sessions, 0 or more")
    summary = data.get("summary")
    if summary is not None and not (isinstance(summary, dict) and isinstance(summary.get("stages"), dict)):
        raise bad("summary", "an object with an object of stages (or null)")
    classes = data.get("classes")  # "digits": 5 stopped the resume's data check with a TypeError
    if classes is not None and not (isinstance(classes, dict) and all(
            isinstance(c, list) and all(isinstance(n, str) for n in c) for c in classes.values())):
        raise bad("classes", "an object of datasets, each a list of class names (or null)")
    check_self_training_field(data.get("self_training"), bad)
    # the run's crop or pad per dataset (run_fit_record): a hand edit crashed the decode
    resize_record(data, f"--resume: {path} is damaged", "take the record from the run's first stage that holds "
                  "one (where none does, each dataset is decided again from its images)")
    pool = data.get("pool_decoded")
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 0):
        raise bad("pool_decoded", "a whole number of images, 0 or more (or null)")
    if "writes_bps" in data and not _is_amount(data["writes_bps"], positive=True):  # PipelineRun.note_writes
        raise bad("writes_bps", "a number of bytes a second above 0")
    fit = data.get("fit_seconds")
    if fit is not None and not (isinstance(fit, list) and all(_is_amount(v) for v in fit)):
        raise bad("fit_seconds", "a list of finite numbers of seconds, 0 or more")
    stages = data.get("stages")
    if not isinstance(stages, dict):
        raise bad("stages", "an object of stages")
    for name, st in stages.items():
        name = one_line(str(name))
        if not isinstance(st, dict):
            raise bad(f"stages.{name}", "an object")
        if st.get("status") not in (None, "began", "trained", "done"):
            raise bad(f"stages.{name}.status", "began, trained or done")
        # a stage that began always recorded where its fit began: seconds_used reads it (a KeyError without it)
        if ("fit_at" in st or st.get("status") == "began") and not _is_amount(st.get("fit_at")):
            raise bad(f"stages.{name}.fit_at", "a finite number of seconds, 0 or more")
        for field in ("kept_s", "after_s", "trained_at", "planned_step_s"):
            if field in st and not _is_amount(st[field]):
                raise bad(f"stages.{name}.{field}", "a finite number of seconds, 0 or more")
        skipped = st.get("resumed_training_skipped")  # summary.json takes its fields (PipelineRun.finetune)
        if skipped is not None and not isinstance(skipped, dict):
            raise bad(f"stages.{name}.resumed_training_skipped", "an object (or null)")
        if st.get("pseudo_key") is not None and not isinstance(st["pseudo_key"], str):
            raise bad(f"stages.{name}.pseudo_key", "a text (or null)")
        if "epochs" in st and not _is_amount(st["epochs"]):  # 5.75: a stage stopped within its sixth epoch
            raise bad(f"stages.{name}.epochs", "a finite number, 0 or more")


def check_self_training_field(skip, bad) -> None:
    """run_state.json's self-training plan, as PipelineRun.self_train and later_rounds read it (``bad``: the
    damaged-file error of check_state_fields): a round count of "2" or a missing one stopped them with a TypeError
    or KeyError."""
    def whole(value, least: int) -> bool:
        return not isinstance(value, bool) and isinstance(value, int) and value >= least

    if skip is None:
        return
    if not isinstance(skip, dict):
        raise bad("self_training", "an object (or absent)")
    if not whole(skip.get("rounds"), 1):
        raise bad("self_training.rounds", "a whole number of rounds, 1 or more")
    if skip.get("skipped_from") is not None and not whole(skip["skipped_from"], 2):
        raise bad("self_training.skipped_from", "a round number, 2 or more (or null)")
    for field in ("reduced_to", "labelled_only"):
        if skip.get(field) is not None and not whole(skip[field], 1):
            raise bad(f"self_training.{field}", "a whole number of rounds, 1 or more (or null)")
    # the words summary.json gives each change of plan, read where the change is
    for field, why in (("skipped_from", "why"), ("labelled_only", "labelled_only_why"), (None, "reduced_why")):
        needed = field is not None and skip.get(field) is not None
        if (needed or skip.get(why) is not None) and not isinstance(skip.get(why), str):
            raise bad(f"self_training.{why}", "a text" + (f", where {field} is set" if field else " (or null)"))


def is_stage_name(name: str) -> bool:
    """Whether ``name`` is a folder name a `fewshot run` gives its stages: pretrain, finetune_labelled,
    finetune_round<k>, finetune."""
    return name in ("pretrain", "finetune_labelled", "finetune") or (
        name.startswith("finetune_round") and name.removeprefix("finetune_round").isdigit())


def resumed_skip_records(value) -> list[dict]:
    """summary.json's ``resumed_training_skipped`` as its records, one per resumed stage that trained no further,
    each an object naming its stage: a list, or the one record a run summarised before there was a list (one record
    lost MoCo's skip to a later session's fine-tuning skip, review rev117 #2); anything else holds none."""
    records = value if isinstance(value, list) else [value]
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("stage"), str)]


def is_run_stage(out: Path) -> bool:
    """Whether the train or pretrain folder ``out`` is a `fewshot run` stage (a stage's name, in a folder holding
    run_state.json): such a stage is started over, and stopped, by the run, not by a train command. The parent's
    file alone took a user's `fewshot train --out RUN/mine` for a stage (no budget reserve; review rev89 #6)."""
    out = Path(out)
    return is_stage_name(out.name) and (out.parent / STATE_FILE).is_file()


def recorded_setting(out: Path, dotted: str):
    """One setting (dotted) of the run in ``out`` as its run_state.json recorded it; None where there is no run, the
    file cannot be read or lacks the field (RunState.resume then says what is wrong)."""
    try:
        data = loads_run_json((Path(out) / STATE_FILE).read_text())
        return flatten_dotted(data["config"]).get(dotted)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def adopt_untyped_settings(out: Path, cfg: dict, typed: set[str]) -> dict:
    """On --resume, the run's recorded value for each setting this command line does not give (``typed``: its flags,
    key=value words and --config file keys, dotted), as --budget-minutes takes the run's: `run --data D --out O
    --resume` after a Ctrl-C was refused as a change of model.name ('test_resnet' in the run, 'resnet18' now) though
    it named no model. Every setting is taken but data.root (--data, which the command always gives) and the
    machine's (MACHINE_SETTINGS: device and threads, this session's defaults) and config.PER_INVOCATION (progress
    bars: one `--no-progress` hid them on every later resume); the cache and TensorBoard settings are taken too: the
    short command otherwise stopped the run's TensorBoard logs and decoded the images again into
    ROOT/.fewshot_cache beside its --cache-dir. A setting the command gives is still compared (RunState.resume),
    and one of RUN_RESUME_MAY_CHANGE given may differ. Returns {dotted: value} of those taken."""
    try:
        recorded = recorded_settings(loads_run_json((Path(out) / STATE_FILE).read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # no run, or a damaged record: RunState.resume says what is wrong
    note_device_not_taken(out, cfg, typed, recorded.get("train.device"))
    taken = {}
    for dotted, value in recorded.items():
        if dotted == "data.root" or dotted in MACHINE_SETTINGS or dotted in PER_INVOCATION or dotted.startswith("_") \
                or any(dotted == t or dotted.startswith(t + ".") for t in typed):
            continue
        keys = dotted.split(".")
        try:
            now = get_dotted(cfg, keys)
        except KeyError:  # a field this fewshot no longer has: RunState.resume judges it
            continue
        # compared as JSON sees them, as RunState.resume does (a tuple in the settings is a list in the file)
        if isinstance(now, dict) or not setting_changed(dotted, value, json.loads(json.dumps(now))):
            continue
        set_dotted(cfg, keys, copy.deepcopy(value))
        taken[dotted] = value
    return taken


def recorded_settings(config: dict) -> dict:
    """A run's recorded settings (dotted), with what the run did for the fields it lacks where that is not today's
    default (resume_config.ABSENT_MEANS): the later stages and rounds of a run begun before data.gray_p greyed 20 %."""
    from fewshot.train.resume_config import ABSENT_MEANS

    recorded = flatten_dotted(config)
    return {**{k: v for k, v in ABSENT_MEANS.items() if k not in recorded}, **recorded}


def note_device_not_taken(out: Path, cfg: dict, typed: set[str], was) -> None:
    """The run's device is not taken on --resume (MACHINE_SETTINGS), so a run started with a deliberate
    `--device cpu` on a GPU machine went on silently on this session's `auto` (the GPU): one note line where the
    untyped device differs from the one the run recorded."""
    now = cfg.get("train", {}).get("device")
    if any(t in ("train", "train.device") for t in typed) or not isinstance(was, str) or not was \
            or not setting_changed("train.device", was, now):
        return
    print(one_line(f"note: the run in '{out}' used --device {was} and this session uses {now} (given no --device); "
                   f"give --device {was} to keep the run's."), file=sys.stderr, flush=True)


# settings a run records unset (null) in its config and then chooses itself, with run_state.json's field that holds
# its choice and the unit a message gives it: `run --resume --img-size 32` of a run that chose 32 px was refused as a
# change of "the model's default input size"
STATE_CHOSEN_FIELDS = {"model.img_size": ("img_size", " px")}


def changed_settings(before: dict, now: dict, data: dict) -> list[str]:
    """The settings (dotted) a resume's command changes against the run's (``before``: recorded; ``data``: its
    run_state.json), each in the words of the refusal. A value the run chose itself (STATE_CHOSEN_FIELDS) is
    compared with what the command gives: giving the run's own choice is no change."""
    changed = []
    for k in sorted(set(now) | set(before)):
        if k in RUN_RESUME_MAY_CHANGE:
            continue
        field, unit = STATE_CHOSEN_FIELDS.get(k, (None, ""))
        chosen = data.get(field) if field is not None and before.get(k) is None else None
        if chosen is not None and now.get(k) is not None:
            if setting_changed(k, chosen, now.get(k)):
                changed.append(f"{k} ({worded(k, chosen)}{unit}, chosen by the run; {worded(k, now.get(k))} now)")
        elif setting_changed(k, before.get(k), now.get(k)):
            changed.append(f"{k} ({worded(k, before.get(k))} in the run, {worded(k, now.get(k))} now)")
    return changed


# what an unset (null) setting means, as the messages comparing a resume's settings with the run's word it
NONE_MEANS = {"data.datasets": "every dataset under the root", "model.weights": "no weights file",
              "data.unlabeled": "ROOT/unlabeled/", "data.cache_dir": "ROOT/.fewshot_cache", "data.root": "no data root"}


def worded(dotted: str, value) -> str:
    """A setting as a message shows it to users: in the words they type (true, [0.2, 1.0], what an unset field
    means), not Python's repr ("data.datasets ('two,uni' in the run, None now)")."""
    from fewshot.config import OPTIONAL_NULL

    value = canonical_value(dotted, value)
    if value is None:
        return NONE_MEANS.get(dotted) or OPTIONAL_NULL.get(dotted, ("unset",))[0]
    if isinstance(value, str):
        return repr(value)
    return _yaml_word(value)


def _yaml_word(value) -> str:
    """A value as YAML (a --config file, a key=value word) writes it: true, null, [a, b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_word(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_word(v)}" for k, v in value.items()) + "}"
    return str(value)


def dataset_names(value, root) -> list[str] | None:
    """The datasets a data.datasets value names under ``root``, in its order and each once (scan_root's reading of
    it; None: all of them, in name order); None where the root cannot be listed (the scan says why later)."""
    import unicodedata

    from fewshot.data.names import parse_datasets
    from fewshot.data.roots import list_datasets

    try:
        available = list_datasets(Path(root))
    except (UserError, OSError, TypeError):
        return None
    if value is None:
        names = available
    elif isinstance(value, str):
        names = parse_datasets(value, available)
    else:
        names = [str(v) for v in value]
    return list(dict.fromkeys(unicodedata.normalize("NFC", n) for n in names))


def datasets_in_run_order(was, now, root):
    """``was`` (the run's data.datasets) where ``now`` names the same datasets, in another order or spelling, else
    ``now``. The joint head's class offsets follow the dataset order (LabelSpace), so `--datasets B,A` on a run
    trained on A,B was refused as other data although it names the same; it continues in the run's order, with a
    note."""
    if was == now:
        return now
    run, given = dataset_names(was, root), dataset_names(now, root)
    if not run or given is None or sorted(run) != sorted(given):
        return now
    if run != given and launch_rank() == 0:
        print(one_line(f"note: the datasets given ({', '.join(given)}) are the run's in another order; it continues "
                       f"in its own order, {', '.join(run)} (the joint label space's class order follows it)"),
              file=sys.stderr, flush=True)
    return was


def class_order_changes(saved: dict, now: dict) -> dict[str, tuple[list[str], list[str]]]:
    """{dataset: (the run's classes, the folders' classes now)} where a run's dataset has the same classes as the
    data now, in another order (its heads number them in its order, so it cannot continue on the new one)."""
    return {name: (list(saved[name]), list(now[name])) for name in saved
            if name in now and list(saved[name]) != list(now[name]) and sorted(saved[name]) == sorted(now[name])}


def class_order_refusal(out: Path | None, changes: dict[str, tuple[list[str], list[str]]]) -> str:
    """Why a --resume is refused when only the class order changed, which classes, and what to do (it said only
    "<dataset>'s classes differ"). Classes now follow their folder names as written (NFC only to match names);
    a run started before sorted the NFC forms, so decomposed accents (macOS) give its folders another order."""
    parts = []
    for name, (was, now) in changes.items():
        moved = [(c, d) for c, d in zip(was, now) if c != d]  # the places whose class changed
        parts.append(f"{name}: {', '.join(c for c, _ in moved)} in the run's order, {', '.join(d for _, d in moved)} "
                     f"in the folders'")
    run = f"'{out}'" if out is not None else "the run"
    return one_line(f"--resume continues {run} with its classes in the order it recorded, but the class folders "
                    f"now give another order ({'; '.join(parts)}): classes follow the folder names as written (a run "
                    f"started before that sorted their composed, NFC, forms; a decomposed accent, as macOS writes "
                    f"it, sorts otherwise), and the run's classifier numbers the classes in its own order. Start a new "
                    f"run with another --out, or rename these class folders to their composed form (e.g. `convmv -r "
                    f"-f utf8 -t utf8 --nfc --notest ROOT`) to resume.")


class RunState:
    """The run's requested settings and budget, and per stage (named by its folder: pretrain,
    finetune_labelled, finetune_round<k>, finetune) its status: began (planned and training; its
    config.yaml holds the plan), trained (fit returned), done (metrics written)."""

    def __init__(self, out: Path, data: dict, resumed: bool = False):
        self.out = Path(out)
        self.data = data
        self.resumed = resumed  # this session continues a run (--resume): its budget and settings are fixed

    @classmethod
    def start(cls, out: Path, cfg: dict, budget_minutes: float, img_size: int, seconds: float,
              classes: dict[str, list[str]] | None = None) -> "RunState":
        """``cfg``: the settings as requested; ``img_size``: the size the run chose (a resumed run keeps it);
        ``seconds``: the budget already used by start-up and decoding; ``classes``: dataset -> class names,
        which a resume must find again (data.root may move, the data may not change)."""
        state = cls(out, {"version": 1, "budget_minutes": budget_minutes, "config": copy.deepcopy(cfg),
                          "img_size": img_size, "seconds": seconds, "stages": {}, "summary": None,
                          "fit_seconds": [], "finished": False, "classes": classes, "stage_clock": seconds,
                          "session_open": True})
        state.save()
        return state

    def check_same_data(self, classes: dict[str, list[str]]) -> None:
        """A --resume on a root with other datasets or classes reused stages trained on the old ones: a head of
        the wrong size (exit 1), or a submission for only some of the datasets the run started on."""
        saved = self.data.get("classes")
        if saved is None:  # a run started before the classes were recorded: its stages' checkpoints hold them
            saved = self._classes_of_a_stage()
        if saved is None or saved == classes:
            return
        changes = class_order_changes(saved, classes)
        if changes and set(saved) == set(classes) and all(saved[n] == classes[n] for n in saved if n not in changes):
            raise UserError(class_order_refusal(self.out, changes))
        parts = []
        for name in sorted(set(saved) | set(classes)):
            if name not in classes:
                parts.append(f"{name} is missing")
            elif name not in saved:
                parts.append(f"{name} is new")
            elif saved[name] != classes[name]:
                parts.append(f"{name}'s classes differ")
        raise UserError(f"--resume continues '{self.out}' on the datasets it started with, but this data root "
                        f"differs ({'; '.join(parts)}). Resume with the same data, or start a new run with "
                        f"another --out.")

    def _classes_of_a_stage(self) -> dict[str, list[str]] | None:
        """{dataset: classes} from the first fine-tuning stage checkpoint found (None: no such stage yet)."""
        from fewshot.errors import CheckpointError
        from fewshot.train.checkpoint import load_checkpoint

        for stage in self.data.get("stages", {}):
            for name in ("best.pt", "last.pt"):
                path = self.out / stage / "checkpoints" / name
                if path.is_file():
                    try:
                        space = load_checkpoint(path).get("label_space")
                    except CheckpointError:  # a damaged stage checkpoint: that stage starts over anyway
                        continue
                    if space:
                        return {n: list(c) for n, c in zip(space["names"], space["classes"])}
        return None

    @classmethod
    def resume(cls, out: Path, cfg: dict, budget_minutes: float | None) -> "RunState":
        """The saved state of ``out``; refuses a folder that holds no `fewshot run`, and a command whose
        settings differ from the run's (beyond RUN_RESUME_MAY_CHANGE) or whose budget differs."""
        path = Path(out) / STATE_FILE
        if not path.is_file():
            what = "does not exist" if not Path(out).exists() else f"holds no {STATE_FILE}"
            raise UserError(f"--resume: '{out}' {what}, so there is no `fewshot run` to continue there. Start "
                            f"one without --resume (a `fewshot train`/`pretrain` run directory resumes with "
                            f"those commands).")
        try:
            data = loads_run_json(path.read_text())
            data["config"], data["budget_minutes"], data["stages"], data["seconds"]  # noqa: B018 (what it reads)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--resume: {path} cannot be read ({type(exc).__name__}: {exc}); it is written by "
                            f"`fewshot run` and not meant to be edited.") from None
        # the budget is read as a number once checked: float() of a 400-digit budget_minutes was an OverflowError
        check_state_fields(path, data)
        saved_cfg, saved_budget = data["config"], float(data["budget_minutes"])
        if budget_minutes is not None and abs(float(budget_minutes) - saved_budget) > 1e-9:
            raise UserError(f"--resume continues '{out}' in its budget of {saved_budget:g} minutes (its stages were "
                            f"planned from it), not {budget_minutes:g}: drop --budget-minutes to resume.")
        # compared as JSON sees them (a tuple in the settings is a list in the file)
        # a setting added to fewshot since the run started counts as its default there
        now = flatten_dotted(json.loads(json.dumps(cfg)))
        before = {**flatten_dotted(json.loads(json.dumps(DEFAULTS))), **recorded_settings(saved_cfg)}
        changed = changed_settings(before, now, data)
        if changed:
            raise UserError(f"--resume continues '{out}' with the settings it started with, but this command "
                            f"changes {', '.join(changed)}. Drop those settings to resume (`fewshot run --resume` "
                            f"takes the run's own value of each setting it is not given), or start a new run with "
                            f"another --out.")
        return cls(out, data, resumed=True)

    def save(self) -> None:
        write_json(self.out / STATE_FILE, self.data)

    @property
    def budget_minutes(self) -> float:
        return float(self.data["budget_minutes"])

    def status(self, name: str) -> str | None:
        return self.data["stages"].get(name, {}).get("status")

    def stage(self, name: str) -> dict:
        return self.data["stages"].get(name, {})

    def seconds_used(self) -> float:
        """The budget the run had used when it stopped: when its session ended (note_stop; a SIGKILL: the last
        recorded event), or for a stage stopped in training, where its fit began plus the training time its last.pt
        holds."""
        from fewshot.train.checkpoint import load_checkpoint

        used = float(self.data["seconds"])
        for name, st in self.data["stages"].items():
            last = self.out / name / "checkpoints" / "last.pt"
            if st.get("status") == "began" and last.is_file():
                try:
                    trained = float(load_checkpoint(last).get("train_seconds", 0.0))
                except Exception:  # noqa: BLE001 - an unreadable last.pt: the stage restarts, at its start time
                    trained = 0.0
                used = max(used, float(st["fit_at"]) + trained)
        return used

    def record(self, name: str, status: str, seconds: float, **fields) -> None:
        self.data["stages"].setdefault(name, {}).update(status=status, **fields)
        self.data["seconds"] = max(float(self.data["seconds"]), seconds)
        self.save()

    def stage_seconds(self, seconds: float) -> float:
        """The length of the stage that ends at ``seconds`` on the run's clock: since the stage before it ended (the
        first: since the start-up did), so its planning and the labelling of its pool count, over every session
        (summary.json gave the time since the run started: 92.9 s of a 101 s run for round 1)."""
        return max(0.0, seconds - float(self.data.get("stage_clock", 0.0)))

    def keep_summary(self, summary: dict, fit_seconds: list[float], seconds: float) -> None:
        """At the end of a stage (``seconds`` on the run's clock), with its summary entry."""
        self.data.update(summary=summary, fit_seconds=list(fit_seconds), stage_clock=seconds)
        self.data["seconds"] = max(float(self.data["seconds"]), seconds)
        self.save()

    def note_stop(self, seconds: float) -> None:
        """A session stopped (a signal) at ``seconds`` on the run's clock: the time since the last recorded event
        was spent, though its work is redone, and counts. seconds_used() stopped at the stage's last checkpoint:
        four sessions of one run took 219 s and the run reported 200 s."""
        if not self.data.get("finished"):
            self.data["seconds"] = max(float(self.data["seconds"]), seconds)
        self.data["session_open"] = False
        self.save()

    def open_session(self) -> bool:
        """A resumed session begins: whether the one before ended without recording its time (kill -9, a crash, a
        machine that went down: no note_stop), which it then counts in ``unrecorded_sessions``. What such a
        session ran after its last record is known to no clock, and the run's "done in" time leaves it out."""
        lost = bool(self.data.get("session_open"))
        if lost:
            self.data["unrecorded_sessions"] = int(self.data.get("unrecorded_sessions") or 0) + 1
        self.data["session_open"] = True
        self.save()
        return lost

    def finish(self, seconds: float) -> None:
        self.data.update(finished=True, seconds=seconds, session_open=False)
        self.save()
