"""Errors that the CLI turns into a one-paragraph message and exit code 2.

Anything else escaping a command is an internal error (exit 1, with a traceback).
"""

from __future__ import annotations

import re
import shlex
import unicodedata


# Bidirectional controls (embeddings, overrides, isolates, marks): a name holding U+202E shows the rest of the line
# reversed, so "txt.exe" can pass for "exe.txt"; escaped like control characters
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """Text safe for a terminal: control characters (ESC sequences that set the title or the clipboard, BEL, ...)
    and bidirectional controls from folder names or files are shown escaped, and so are the bytes of a name that
    is not valid UTF-8 (undecodable_escaped); line breaks and tabs stay."""
    return "".join(c if c in "\n\t" or (unicodedata.category(c) not in ("Cc", "Cs") and c not in BIDI_CONTROLS)
                   else _escaped(c) for c in text)


def undecodable_escaped(text: str) -> str:
    """A name with bytes that are not valid UTF-8 (os.fsdecode of b"o\\xff" is "o\\udcff"), as `o\\xff`: those
    lone surrogates crashed every writer of text (print to a strict stream, matplotlib's set_text), and shown
    raw they read as `\\udcff`, which is no byte of the name."""
    if is_utf8_name(text):
        return text
    return "".join(_escaped(c) if unicodedata.category(c) == "Cs" else c for c in text)


def is_utf8_name(name: str) -> bool:
    """Python decodes undecodable bytes of a file name as lone surrogates, which no text output can write."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def shell_quoted(path) -> str:
    """A path as a shell word to paste: shlex.quote's `'o\\udcff'` (shown `'o\\xff'`) named a folder that does not
    exist, so a name that is not UTF-8 is written in bash's `$'o\\xff'`, whose escapes are the name's bytes; so is
    one holding a control character or a line break, which a message shows escaped (`'a\\x1bb'`, read by bash as
    a backslash and `x1bb`)."""
    text = str(path)
    if one_line(text) == text:
        return shlex.quote(text)
    return "$'" + "".join(map(_shell_escaped, text)) + "'"


def path_argument(path) -> str:
    """A path as a word of a command to paste (shell_quoted): a relative one that starts with `-` gets `./` before
    it, as `--out ./-d` was typed; `--weights -d/checkpoints/last.pt` was read by argparse as an option ("expected
    one argument")."""
    text = str(path)
    return shell_quoted(f"./{text}" if text.startswith("-") else text)


def _shell_escaped(c: str) -> str:
    """One character inside $'...': a kept byte as that byte, controls as their UTF-8 bytes (never raw)."""
    if c in "\\'":
        return "\\" + c
    if "\udc80" <= c <= "\udcff":
        return _escaped(c)
    if unicodedata.category(c) in ("Cc", "Cs") or c in BIDI_CONTROLS:
        return "".join(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogatepass"))
    return c


# repr's escape of such a surrogate (after an even number of backslashes: in `\\\\udcff` a backslash is escaped)
_SURROGATE_REPR = re.compile(r"(?<!\\)((?:\\\\)*)\\udc([89a-f][0-9a-f])")


def quoted(text: str) -> str:
    """repr(text), with the bytes of a name that is not UTF-8 shown as those bytes (`'o\\xff'`, not `'o\\udcff'`)."""
    return _SURROGATE_REPR.sub(r"\1\\x\2", repr(text))


def _escaped(c: str) -> str:
    """One character as an escape: a byte that os.fsdecode kept as a surrogate (U+DC80..U+DCFF) as that byte."""
    if "\udc80" <= c <= "\udcff":
        return f"\\x{ord(c) - 0xdc00:02x}"
    return repr(c)[1:-1]


def one_line(text: str) -> str:
    """printable, with line breaks and tabs escaped too: for one-line texts that name files or folders (a folder
    may be called "a\\nb"; a table row or a list item must not be split)."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")


class UserError(Exception):
    """A mistake the user can fix: bad paths, bad data, bad options, bad files."""


class DataLayoutError(UserError):
    """Every problem found while scanning a dataset root, reported at once."""

    def __init__(self, problems: list[str], hints: list[str] | tuple[str, ...] = ()):
        # hints ("pass --skip-bad-images ...") are advice, printed after the list; they used to be told apart by a
        # leading "(", so a problem naming a folder like "(copy)/ds/val" was printed as advice under "0 problem(s)"
        self.problems, self.hints = list(problems), list(hints)
        hints, real = self.hints, self.problems
        shown = real[:50]
        more = len(real) - len(shown)
        # one line per problem: a newline in a folder's name split a path over two lines
        text = f"the data layout has {len(real)} problem(s):\n" + "\n".join(f"  - {one_line(p)}" for p in shown)
        if more:
            text += f"\n  ... and {more} more"
        if hints:
            text += "\n" + "\n".join(hints)
        super().__init__(text)


class CheckpointError(UserError):
    """A weights or checkpoint file that cannot be loaded safely or does not fit the model."""
