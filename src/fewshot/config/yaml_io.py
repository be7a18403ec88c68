"""Reading config files: the safe, stricter YAML loader, finding a --config file or a shipped recipe, and reading
each file once per command (one_read_per_file), so that every reader of a config file gets the same checks and the
same version of it."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import re
import stat
import sys
from pathlib import Path

import yaml

from fewshot.config.fields import NONE_WORDS, TEXT_LIST, none_is_a_word
from fewshot.errors import UserError, one_line
from fewshot.process_state import said_once


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where YAML 1.1 surprised users: a key given twice in one mapping is an
    error (PyYAML kept the last one, so a second `model:` section silently dropped the first), and `1:30` stays
    text (YAML 1.1 reads it as the base-60 number 90)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden by its own keys
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: PyYAML names it below
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"'{key}' is given twice in one section",
                                                            key_node.start_mark)
        return super().construct_mapping(node, deep)

    def compose_scalar_node(self, anchor):
        """Marks a scalar whose tag the user wrote (`!!int 5`, `!!python/name:x`; TAG_WRITTEN): its node looks
        like a plain one YAML resolved, and keep_text_as_typed read it as text (`!!python/name:os.system x`,
        refused by the safe loader, became the dataset 'x')."""
        tag = self.peek_event().tag
        node = super().compose_scalar_node(anchor)
        setattr(node, TAG_WRITTEN, tag not in (None, "!"))
        return node

    def _number_unless_base60(self, node, construct):
        text = self.construct_scalar(node)
        return text if ":" in text else construct(self, node)

    def _int_unless_leading_zero(self, node):
        """YAML 1.1 reads `040` as the octal 32 (`img_size: 040` trained at 32 px, `datasets: 01` named dataset
        1): a number with leading zeros stays the text as typed, which a number field reads as decimal
        (validate) and a list of names keeps ("01")."""
        text = self.construct_scalar(node)
        digits = text.lstrip("+-").replace("_", "")
        if len(digits) > 1 and digits.startswith("0") and digits.isdigit():
            return text
        return self._number_unless_base60(node, yaml.SafeLoader.construct_yaml_int)


ConfigLoader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: loader._int_unless_leading_zero(node))
ConfigLoader.add_constructor("tag:yaml.org,2002:float", lambda loader, node: loader._number_unless_base60(
    node, yaml.SafeLoader.construct_yaml_float))


MAX_DEPTH = 32  # no config field nests more than two levels (aug.scale: a list in a section)


STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"  # a name field's null is still none (every dataset); `on` may name a folder
TAG_WRITTEN = "fewshot_tag_written"  # a scalar node's attribute (ConfigLoader.compose_scalar_node)


def keep_text_as_typed(node, field: str | None = None):
    """``node`` with the plain scalars of the name fields (TEXT_LIST) read as text, before they are built: YAML read
    a dataset folder `1_000` as 1000, `0x10` as 16, `+5` as 5 and `2020-01-01` as a date, and the run then looked
    for a folder of that other name. ``field``: the dotted field ``node`` is the value of (a key=value word); None:
    ``node`` is a config file's document, whose sections' fields are looked at, through merge keys too (`<<: *m`).
    New nodes replace the ones changed: an alias shares one node (`epochs: &e 10` ... `datasets: *e`), and a
    retag in place turned the other field's number into text. A tag the user wrote (`!!int 5`) is kept."""
    if field is None:
        memo: dict = {}
        return _with_fields(node, "", memo, lambda section, fields: _with_fields(
            fields, section, memo, lambda key, value: keep_text_as_typed(value, f"{section}.{key}")))
    node = _none_word_as_null(node, field)  # data.unlabeled's too: a path field (data.datasets keeps it as a name)
    if field not in TEXT_LIST:
        return node
    if isinstance(node, yaml.SequenceNode):
        return yaml.SequenceNode(node.tag, [_as_typed(item) for item in node.value], node.start_mark, node.end_mark,
                                 node.flow_style)
    return _as_typed(node)


def _none_word_as_null(node, field: str):
    """A null node for a plain `None` / `none` / `NONE` (NONE_WORDS) of a field where it is no word or name: a config
    file's `cache_dir: None` filled a folder named None (a key=value word's was read as null already). Quoted it
    stays text, as a word's does; a tag the user wrote is kept."""
    if isinstance(node, yaml.ScalarNode) and node.style is None and node.value in NONE_WORDS and \
            not getattr(node, TAG_WRITTEN, False) and not none_is_a_word(field):
        return yaml.ScalarNode(NULL_TAG, node.value, node.start_mark, node.end_mark, node.style)
    return node


def _as_typed(item):
    """A new text node for a plain scalar whose tag YAML resolved itself (none written; null still none); else
    ``item``."""
    if isinstance(item, yaml.ScalarNode) and item.style is None and item.tag != NULL_TAG and \
            not getattr(item, TAG_WRITTEN, False):
        return yaml.ScalarNode(STR_TAG, item.value, item.start_mark, item.end_mark, item.style)
    return item


MERGE_TAG = "tag:yaml.org,2002:merge"


def _with_fields(node, where: str, memo: dict, edit):
    """A copy of mapping ``node`` whose plain text keys' values are edit(key, value), and whose merged mappings
    (`<<: *m` or `<<: [*a, *b]`, whose keys it takes as its own) are copied alike; any other node as is. ``memo``:
    the copies made, by node and ``where`` (the section, or "" for the document), so that a mapping merged many
    times is walked once; a mapping merged into itself is left to PyYAML."""
    if not isinstance(node, yaml.MappingNode):
        return node
    key = (id(node), where)
    if key in memo:
        return memo[key] or node
    memo[key] = None
    pairs = []
    for name, value in node.value:
        if name.tag == MERGE_TAG and isinstance(value, yaml.SequenceNode):
            value = yaml.SequenceNode(value.tag, [_with_fields(item, where, memo, edit) for item in value.value],
                                      value.start_mark, value.end_mark, value.flow_style)
        elif name.tag == MERGE_TAG:
            value = _with_fields(value, where, memo, edit)
        elif isinstance(name, yaml.ScalarNode) and name.tag == STR_TAG:
            value = edit(name.value, value)
        pairs.append((name, value))
    memo[key] = yaml.MappingNode(node.tag, pairs, node.start_mark, node.end_mark, node.flow_style)
    return memo[key]


def read_yaml(text, source: str = "the YAML text", field: str | None = None):
    """One YAML document (str or bytes) read with ConfigLoader, its name fields kept as typed (keep_text_as_typed;
    ``field``: the field a key=value word's value is for). Brackets nested hundreds deep overflowed Python's stack
    while being read or copied (RecursionError, an internal error): refused, naming ``source``."""
    try:
        loader = ConfigLoader(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(keep_text_as_typed(node, field))
        finally:
            loader.dispose()
    except RecursionError:
        data, deep = None, True
    else:
        deep = deeper_than(data, MAX_DEPTH)
    if deep:
        raise UserError(f"{source} nests values more than {MAX_DEPTH} levels deep ([[[... or {{{{{{...); a fewshot "
                        f"config nests at most two: check its brackets.")
    return data


def deeper_than(data, limit: int, budget: int = 100_000) -> bool:
    """Whether ``data`` nests lists/dicts more than ``limit`` deep, counting containers only: 65 nested empty lists
    and 65 holding a value are alike (leaves counted as a level told them apart). Iterative (no stack to
    overflow); at most ``budget`` containers looked at, so that an alias bomb is left to _check_size."""
    stack = [(data, 1)] if isinstance(data, (dict, list)) else []
    while stack and budget > 0:
        item, depth = stack.pop()
        budget -= 1
        if depth > limit:
            return True
        values = item.values() if isinstance(item, dict) else item
        stack.extend((v, depth + 1) for v in values if isinstance(v, (dict, list)))  # leaves nest nothing
    return False


RECIPES = Path(__file__).parent.parent / "configs"  # the shipped recipes (configs/ in the repository links here)
_NOTED_RECIPES: set[str] = said_once(__name__, "_NOTED_RECIPES")


def find_config(path: str | Path) -> Path:
    """A config file as given (`.yaml` may be left out), else the shipped recipe of that name (`moco_cpu_small`, or
    the README's `configs/moco_cpu_small.yaml` from a folder that has no configs/, as after `pip install`)."""
    path = Path(path).expanduser()
    if path.is_file() or _special_kind(path):  # a pipe is there, not missing: its reader says what it is
        return path
    if path.suffix not in (".yaml", ".yml"):  # `--config myexp` for ./myexp.yaml, before a shipped recipe's name
        for local in (path.with_name(f"{path.name}.yaml"), path.with_name(f"{path.name}.yml")):
            if local.is_file():
                return local
    if len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "configs"):  # a recipe's name, not a path
        for candidate in (RECIPES / path.name, RECIPES / f"{path.name}.yaml"):
            if candidate.is_file():
                if str(path) not in _NOTED_RECIPES and rank_zero_says():
                    _NOTED_RECIPES.add(str(path))
                    print(f"note: {path} is not here; using fewshot's recipe {candidate}", file=sys.stderr,
                          flush=True)
                return candidate
    if path.is_dir():
        inside = ", ".join(sorted(p.name for p in path.glob("*.yaml"))[:5]) or "none"
        raise UserError(f"config file {path} is a folder; give a YAML file (the .yaml files in it: {inside}).")
    if _DESCRIPTOR_PATH.fullmatch(str(path)):
        raise UserError(_descriptor_not_here(path))
    names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
    raise UserError(f"config file not found: {path} (fewshot's own recipes, usable by name: {names}).")


def rank_zero_says() -> bool:
    """Whether this process says the notes of config resolution: every torchrun process resolves the config, and
    each said them once per process. Torch is loaded (launch_rank) only under several processes."""
    from fewshot.cli_ranks import launch_rank, world_size_env

    return world_size_env() < 2 or launch_rank() == 0


# what `<(...)` and `|` name: a descriptor of the process that ran the shell's command, not a file
_DESCRIPTOR_PATH = re.compile(r"/dev/fd/\d+|/proc/(self|\d+)/fd/\d+|/dev/std(in|out|err)")


def _descriptor_not_here(path: Path) -> str:
    """Why `--config <(...)` is missing: torchrun's workers do not inherit the shell's descriptor, and were told
    "config file not found: /dev/fd/63" of a file the user never made."""
    from fewshot.cli_ranks import world_size_env

    where = " (torchrun does not pass it on to its worker processes)" if world_size_env() > 1 else ""
    return (f"config file {path} names an open file descriptor (a pipe, or a process substitution `<(...)`) that "
            f"this process does not have{where}; save the settings to a file and give --config that file's path.")


def _special_kind(path: Path) -> str | None:
    """What an existing path that is neither a regular file nor a folder is (a process substitution's /dev/fd/63
    is a pipe), else None. Judged by stat, without opening: opening a FIFO waits for a writer."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return ("a pipe (FIFO)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode) else
            "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


MAX_PIPED_BYTES = 1 << 20  # a config is a few KB: a device that never ends (/dev/zero) is not read past this
_PIPED: dict[tuple[int, int], bytes] = {}  # what each nameless pipe given as --config held, by (device, inode)


def _piped_bytes(path: Path, kind: str) -> bytes:
    """The text of a --config that is a pipe or device (`--config <(...)`, /dev/stdin). A nameless pipe is read once
    per process: it gives its text to one reader only, and never other text once read to its end. A named FIFO
    (mkfifo) takes a new writer for each command, so it is kept for one command only (one_read_per_file): kept
    here, a second command of the process (cli.main again, a notebook) silently got the first one's text."""
    try:
        info = path.stat()
        key = (info.st_dev, info.st_ino)
        if _nameless_pipe(info) and key in _PIPED:
            return _PIPED[key]
        with open(path, "rb") as fh:
            data = fh.read(MAX_PIPED_BYTES + 1)
    except OSError as exc:
        raise UserError(f"config file {path} is {kind} and cannot be read ({exc.strerror or exc}); save the settings "
                        f"to a file and give --config that file's path.") from None
    if len(data) > MAX_PIPED_BYTES:
        raise UserError(f"config file {path} is {kind} that gives more than {MAX_PIPED_BYTES >> 20} MB; a fewshot "
                        f"config is a few KB of YAML: save it to a file and give --config that file's path.")
    if _nameless_pipe(info):
        _PIPED[key] = data
    return data


@functools.lru_cache(maxsize=1)
def _pipe_device() -> int:
    """The device that nameless pipes (os.pipe, `|`, `<(...)`) live on: a named FIFO's is its file system's."""
    r, w = os.pipe()
    try:
        return os.fstat(r).st_dev
    finally:
        os.close(r)
        os.close(w)


def _nameless_pipe(info: os.stat_result) -> bool:
    return stat.S_ISFIFO(info.st_mode) and info.st_dev == _pipe_device()


def _refuse_under_torchrun(path: Path, kind: str) -> None:
    """Under torchrun every process reads --config itself: a pipe gives its text to one of them (the others got
    defaults, then a false "given different settings" error), a named FIFO left a rank waiting for ever in open(),
    and /dev/stdin is /dev/null in the workers. Refused before it is opened."""
    from fewshot.cli_ranks import world_size_env

    if world_size_env() > 1:  # /dev/null gives every reader the same nothing: "one reader only" is a pipe's reason
        why = " (a pipe gives its text to one reader only)" if "FIFO" in kind else ""
        raise UserError(f"config file {path} is {kind}: a pipe or device is not a file every process can read the "
                        f"same way{why}, and each of the {world_size_env()} torchrun processes reads --config itself; "
                        f"save the settings to a file and give --config that file's path.")


def _config_bytes(path: Path, piped: bool) -> bytes:
    """A config file's bytes. A pipe or device is read only where the user gave it as --config (``piped``): a
    run folder's config.yaml is fewshot's own file, and a FIFO put there would hang --resume or report."""
    kind = _special_kind(path)
    if kind is None:
        return path.read_bytes()
    if not piped:
        raise UserError(f"config file {path} exists but is {kind}, not a file fewshot wrote; delete it (or save "
                        f"the settings to a file by that name).")
    _refuse_under_torchrun(path, kind)
    return _piped_bytes(path, kind)


def load_yaml(path: str | Path, piped: bool = False) -> dict:
    """load_yaml_or_none, with {} for a file that holds no value."""
    data = load_yaml_or_none(path, piped)
    return {} if data is None else data


class NotAMapping(UserError):
    """A config file that is valid YAML but holds no mapping (`false`, `0`, `''`, a list): beside a run's checkpoint
    no settings are left in it (resume_config.settings_lost), where a YAML error is an edit to correct."""


def load_yaml_or_none(path: str | Path, piped: bool = False) -> dict | None:
    """A config file's mapping, or None where it holds no YAML value at all (0 bytes, blank lines, comments, a bare
    `~`): an --out folder's config.yaml is said to be empty only then. The path is found as --config finds it
    (find_config: a recipe's name, a folder refused). Refused (UserError): text that is not UTF-8 (or UTF-16 with a
    BOM), a control character, invalid YAML, values nested too deep (read_yaml) or expanding past a config's size
    (aliases: _check_size), and any other value, NotAMapping (`0`, `false` and `''` were taken for an empty file).
    ``piped``: a --config that is a pipe or device is read (_config_bytes); otherwise it is refused by its kind."""
    path = find_config(path)
    text = _config_bytes(path, piped)
    try:
        # bytes: PyYAML reads UTF-8 (with or without a BOM) and UTF-16 with a BOM, and names any other encoding
        data = read_yaml(text, f"config file {path}")
    except yaml.reader.ReaderError as exc:
        if exc.encoding == "unicode":  # decoded fine, but YAML allows no control characters
            code = exc.character if isinstance(exc.character, int) else ord(exc.character)
            raise UserError(f"config file {path} holds the control character U+{code:04X} at character "
                            f"{exc.position}, which YAML does not allow; delete it.") from None
        raise UserError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.position}); save it as "
                        f"UTF-8.") from None
    except yaml.YAMLError as exc:
        # one paragraph: PyYAML's own message spans several lines with a caret drawing
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"config file {path} is not valid YAML{where}: {what}.") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        shown = one_line(yaml.safe_dump(data, default_flow_style=True).splitlines()[0])
        held = "a list" if isinstance(data, list) else f"`{shown[:40]}{'...' if len(shown) > 40 else ''}` alone"
        raise NotAMapping(f"config file {path} must hold a mapping of sections (model:, optim:, ...), but it holds "
                          f"{held}.")
    _check_size(data, path)
    return data


def _check_size(data, path: Path, limit: int = 100_000) -> None:
    """YAML aliases can nest a document into billions of values ("billion laughs") that a few hundred bytes
    describe; a run's config.yaml may come from anyone, and printing such a value exhausted the memory. A config
    holds a few hundred values: one that expands to more is refused."""
    seen, stack = 0, [data]
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            raise UserError(f"config file {path} expands to more than {limit:,} values (nested YAML aliases?); it "
                            f"is not a fewshot config.")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


_READS: dict | None = None  # the --config files read in the scope of one_read_per_file, by resolved path


@contextlib.contextmanager
def one_read_per_file():
    """A scope (one command; one resolve()) in which each --config file is read and parsed once: its settings,
    its CHOSEN record, its preset and the warnings about it were read apart, and a file saved in between (an
    editor, a run writing its config.yaml) gave a config mixed from two versions of it. Scopes nest."""
    global _READS
    outer = _READS
    _READS = {} if outer is None else outer
    try:
        yield
    finally:
        _READS = outer


def config_data(path: str | Path) -> dict:
    """load_yaml(path) for a --config file: within one_read_per_file, the version first read (a copy, which the
    caller may change); outside it, the file as it is now."""
    if _READS is None:
        return load_yaml(path, piped=True)
    key = str(find_config(path).resolve())
    if key not in _READS:
        _READS[key] = load_yaml(path, piped=True)
    return copy.deepcopy(_READS[key])
