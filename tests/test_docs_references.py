"""The code names the docs point a reader to exist: after modules were split, docs/reliability.md sent readers to
`train.finetune.RESUME_MAY_CHANGE`, which had moved to train/resume_config.py (hunt hBF, finding 3). A backticked
dotted name in README.md or docs/*.md is a config key (DEFAULTS), a file name, a name of torch or the standard
library, or a fewshot module's attribute, given from `fewshot.` or from a module's own short name."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import fewshot
from fewshot.config.defaults import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"`((?:fewshot\.)?[a-z_]+(?:\.[a-z_]+)*\.[A-Za-z_]\w*)`")
OUTSIDE = ("torch", "nn", "os", "sys", "json", "pickle", "shutil", "tempfile")
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


def test_the_code_names_in_the_docs_exist():
    modules = {m.name.rsplit(".", 1)[-1]: m.name for m in pkgutil.walk_packages(fewshot.__path__, "fewshot.")}
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for ref in REFERENCE.findall(line):
                parts = ref.split(".")
                if (parts[0] in OUTSIDE or ref in PLACEHOLDERS or is_config_key(ref) or FILE_NAME.match(ref)):
                    continue
                tries = [parts] if parts[0] == "fewshot" else [["fewshot", *parts]]
                if parts[0] in modules:
                    tries.append([*modules[parts[0]].split("."), *parts[1:]])
                if not any(resolves(t) for t in tries):
                    missing.append(f"{doc.name}:{n}: {ref}")
    assert not missing, "\n".join(missing)
