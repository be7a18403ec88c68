"""Dataset and class names in messages and options: quoted where a name holds a comma, a space or a quote, lists cut
with a count of the rest, and `--datasets A,B` parsed, and written back for a hint. Apart from layout.py: the
commands' own messages use these as much as the scan does."""

from __future__ import annotations

import unicodedata

from fewshot.errors import quoted, shell_quoted


def datasets_option(names) -> str:
    """`--datasets A,B` for a hint, as it must be pasted into a shell: quoted when a name holds a space, and in the
    `--datasets=...` form when it starts with '-' (`--datasets -x,...` failed: "expected one argument"), quoted as
    $'...' when a name is not UTF-8 or holds a control character (shell_quoted)."""
    joined = ",".join(names)
    value = shell_quoted(joined)
    return f"--datasets={value}" if joined.startswith("-") else f"--datasets {value}"


def usable_datasets_hint(known: str, usable, what: str) -> str:
    """The sentence after a refused scan that names the `--datasets` leaving out the datasets without ``what`` (a
    usable test split): predict and eval said it, `fewshot run` refused the same root with only the problem.
    ``known``: the datasets the command would have used, in words."""
    return f"{known}; to use only those with {what} under this root, pass {datasets_option(usable)}."


def names_list(names) -> str:
    """Dataset names joined for a message, a name that holds a comma, a space or a quote (or is empty) in quotes:
    "trained on  b, 1e3, a, a,b only" hid which of the four names were the datasets."""
    return ", ".join(shown_name(n) for n in names)


def grouped_names(pairs) -> list[tuple[str, str]]:
    """(name, words) pairs as (names_list of the names, words), one per distinct words in first-seen order: 12
    datasets repeated one long reason (or "train images") 12 times where one line could say it once."""
    said: dict[str, list[str]] = {}
    for name, words in pairs:
        said.setdefault(words, []).append(name)
    return [(names_list(names), words) for words, names in said.items()]


def shown_name(name: str) -> str:
    """A folder or file name for a list in a message: quoted (as quoted() does) where it holds a comma, a space or a
    quote, or is empty: "val classes not in train: 3 , x" hid the class folder named "3 " (a trailing space)."""
    plain = name and not any(c in name for c in ",'\"") and not any(c.isspace() for c in name)
    return name if plain else quoted(name)


def some_of(items, limit: int, shown=shown_name) -> str:
    """The first ``limit`` of ``items`` for a message, each as ``shown`` gives it, and how many more there are: a list
    cut at 10 of 12 without a word read as the whole list."""
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(shown(i) for i in items[:limit]) + more


def parse_datasets(value: str, names) -> list[str]:
    """`--datasets A,B` as a list of names. A folder may be named "a,b" or " spaced ": the whole value, or a part as
    typed (unstripped), that names one of ``names`` is taken as it is; other parts are stripped of spaces. Adjacent
    parts that together name a dataset are that one (the longest such run): the hints' `--datasets a,b,c` for the
    datasets `a,b` and `c` was refused ("a, b not found"), and no comma can be escaped."""
    forms = {unicodedata.normalize("NFC", n) for n in names}

    def exists(d: str) -> bool:
        return unicodedata.normalize("NFC", d) in forms

    if exists(value):
        return [value]
    parts, chosen, i = value.split(","), [], 0
    while i < len(parts):  # the longest run of parts that names a dataset: "a,b,c" is `a,b` and `c` where "a,b" is one
        j = next((j for j in range(len(parts), i + 1, -1) if exists(",".join(parts[i:j]))), i + 1)
        name = ",".join(parts[i:j])
        if exists(name) or name.strip():
            chosen.append(name if exists(name) else name.strip())
        i = j
    return chosen
