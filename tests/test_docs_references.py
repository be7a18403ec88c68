"""The code names the docs point a reader to exist: after modules were split, docs/reliability.md sent readers to
`train.finetune.RESUME_MAY_CHANGE`, which had moved to train/resume_config.py (hunt hBF, finding 3). A backticked
dotted name in README.md or docs/*.md is a config key (DEFAULTS), a file name, a name of torch or the standard
library, or a fewshot module's attribute, given from `fewshot.` or from a module's own short name."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

import fewshot
from fewshot.config.defaults import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"`((?:fewshot\.)?[a-z_]\w*(?:\.[a-z_]\w*)*\.[A-Za-z_]\w*)`")
SOURCE_PATH = re.compile(r"`((?:[a-z_]\w*/)+[a-z_]\w*\.py)`")  # `train/run_dir.py`: under src/fewshot
OUTSIDE = ("nn",)  # torch.nn as the docs shorten it; other outside names are those of an importable module
FILE_NAME = re.compile(r"^[\w.]+\.(py|yaml|json|pt|md|sh|jsonl|png|html|txt|safetensors)$")
PLACEHOLDERS = {"model.X", "model.backbone.X"}  # a state dict's key patterns, not names


def is_config_key(ref: str) -> bool:
    node = DEFAULTS
    for part in ref.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def resolves(parts: list[str]) -> bool:
    """Whether the longest importable module prefix of ``parts`` holds the rest as attributes."""
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for name in parts[k:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def outside(name: str, modules: dict) -> bool:
    """Whether ``name`` starts the name of another library (torch, os, timm, pathlib) or is a timm model's
    (`resnet18.a1_in1k`: a model and its weights' tag), not a fewshot module."""
    import timm

    return name in OUTSIDE or name not in modules and name != "fewshot" and (
        importlib.util.find_spec(name) is not None or timm.is_model(name))


def candidates(parts: list[str], modules: dict) -> list[list[str]]:
    """The fewshot names ``parts`` may stand for: from `fewshot.`, or from a module's short name (any of them)."""
    tries = [parts] if parts[0] == "fewshot" else [["fewshot", *parts]]
    return tries + [[*module.split("."), *parts[1:]] for module in modules.get(parts[0], [])]


def docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_code_names_in_the_docs_exist():
    modules: dict[str, list[str]] = {}  # a short name may be two modules' (data/build.py, report/build.py)
    for m in pkgutil.walk_packages(fewshot.__path__, "fewshot."):
        modules.setdefault(m.name.rsplit(".", 1)[-1], []).append(m.name)
    missing = []
    for doc in docs():
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for ref in REFERENCE.findall(line):
                parts = ref.split(".")
                if ref in PLACEHOLDERS or is_config_key(ref) or FILE_NAME.match(ref):
                    continue
                if outside(parts[0], modules) and parts[0] not in DEFAULTS:  # `sched.min_lrr`: a config key's
                    continue                                                   # typo, not the stdlib's sched
                if not any(resolves(t) for t in candidates(parts, modules)):
                    missing.append(f"{doc.name}:{n}: {ref}")
    assert not missing, "\n".join(missing)


def test_the_source_files_in_the_docs_exist():
    """`train/run_dir.py`, the form the docs mostly use: a file under src/fewshot (`fewshot/run_lock.py`: under src;
    `benchmarks/x.py`: the repository's own)."""
    missing = [f"{doc.name}:{n}: {path}" for doc in docs() for n, line in enumerate(doc.read_text().splitlines(), 1)
               for path in SOURCE_PATH.findall(line)
               if not any((folder / path).is_file() for folder in (ROOT / "src" / "fewshot", ROOT / "src", ROOT))]
    assert not missing, "\n".join(missing)
