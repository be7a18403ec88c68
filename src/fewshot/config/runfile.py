"""Whether a config.yaml is a run's own (it saved every section, or beside a run's files) or the user's: what a
run chose itself is chosen again, and an --out folder reused, only from a run's."""

from __future__ import annotations

from pathlib import Path

from fewshot.config import yaml_io
from fewshot.config.defaults import DEFAULTS
from fewshot.config.yaml_io import find_config
from fewshot.errors import UserError


# the sections every fewshot (from the first) saved into a run's config.yaml; a recipe names the few it changes
RUN_SECTIONS = ("model", "data", "optim", "sched", "train", "moco", "aug")


RUN_FILES = ("log.jsonl", "checkpoints", "metrics.json", "run_state.json")  # what a run folder holds beside it


def missing_run_sections(data: dict | None) -> list[str]:
    """The RUN_SECTIONS that ``data`` (a config file's mapping, None: none) does not hold as a mapping."""
    return [section for section in RUN_SECTIONS if not isinstance((data or {}).get(section), dict)]


def written_by_run(data: dict, path: str | Path, run_files: bool = True) -> bool:
    """Whether a config file (``data``, read from ``path``) is a run's config.yaml rather than the user's own: what
    a run chose itself is chosen again only from a run's. A run records `_task` (MoCo) or saves every section in a
    folder with a run's files; ``run_files=False`` judges the content alone (an --out folder's start)."""
    if "_task" in data:
        return True
    if missing_run_sections(data):
        return False
    return not run_files or any((find_config(path).parent / name).exists() for name in RUN_FILES)


def read_run_config(path: str | Path) -> tuple[dict | None, bool]:
    """An --out folder's config.yaml: its settings (None where it holds none: load_yaml_or_none) and whether a run
    wrote them, on its content alone (written_by_run): the one answer of prepare_run_dir, which refuses a folder
    whose config.yaml no run wrote, and of --resume, which takes a run's as the settings. Raises UserError or
    OSError where it cannot be read."""
    data = yaml_io.load_yaml_or_none(path)  # looked up at call time: tests replace it there
    by_run = data is not None and written_by_run(data, path, run_files=False)
    if by_run:
        refuse_scalar_sections(data, path)
    return data, by_run


def refuse_scalar_sections(data: dict, path: str | Path) -> None:
    """A run's config.yaml with a value where a section belongs (`semi: fixmatch`), refused as --config refuses it
    (deep_merge): with_defaults put the defaults in its place, and --resume then named one of them as changed
    ("semi.views ('randaug' in the run, 'mocov2' now)"), a setting the user never touched."""
    for section, fields in DEFAULTS.items():
        value = data.get(section)
        if isinstance(fields, dict) and value is not None and not isinstance(value, dict):
            raise UserError(f"config file {path}: section '{section}' must hold fields ({section}: then indented "
                            f"`name: value` lines, e.g. {section}.{next(iter(fields), 'name')}), not {value!r}; "
                            f"correct it there to resume the run.")
