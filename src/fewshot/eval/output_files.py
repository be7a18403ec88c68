"""What eval, predict and probe may overwrite: a file is told to be one of their own earlier results by its content
(never by its name or place), and anything else is refused before the work. Apart from predict.py: the CLI,
cli_probe and data/output_guard ask these questions without predicting anything."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from fewshot.errors import UserError


# No output of ours is near this: a pred_all.json of 100k test images is ~3 MB, metrics and routing files smaller.
# A larger file is the user's (a dataset dump, a log), told apart without reading gigabytes into memory to parse.
OWN_OUTPUT_MAX_BYTES = 64 * 2**20


def _read_own_output(path: Path):
    """The JSON in ``path``, or None where it holds none of ours (not a regular file, over OWN_OUTPUT_MAX_BYTES,
    unreadable, not UTF-8, not JSON, nested too deep). Its size is looked up first: the whole file was read."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > OWN_OUTPUT_MAX_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def holds_predictions(path: Path) -> bool:
    """Whether ``path`` holds a pred_all.json as `predict` writes it ({"n_parameters": int, "<dataset>": {"<id>":
    int}}): the only file `predict --out` may replace. Judged by content, not name or place: `--out notes.json`
    replaced the user's notes without a word."""
    data = _read_own_output(path)
    if not isinstance(data, dict):
        return False
    n = data.get("n_parameters")
    return isinstance(n, int) and not isinstance(n, bool) and all(
        isinstance(v, dict) and all(isinstance(c, int) and not isinstance(c, bool) for c in v.values())
        for k, v in data.items() if k != "n_parameters")


def _holds_nothing(path: Path) -> bool:
    """An empty file, or one holding only `{}` or blanks: a placeholder (`touch pred.json`), nothing to lose."""
    try:
        if path.stat().st_size > 64:
            return False
        return path.read_bytes().strip() in (b"", b"{}")
    except OSError:
        return False


def holds_routing(path: Path) -> bool:
    """Whether ``path`` is a routing file as `predict --mode unknown` writes it ({"<dataset>": {"<id>": "<dataset
    it was routed to>"}}), a plain file and not a link (predict never writes one): the only .routing.json beside
    --out that predict may replace or delete. A user's own n.routing.json beside `--out n.json` was deleted, and
    so was one holding `{}` (a placeholder of the user's: predict writes every dataset it predicted)."""
    if path.is_symlink() or not path.is_file():
        return False
    data = _read_own_output(path)
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and all(isinstance(d, str) for d in v.values()) for v in data.values())


# what each command's metrics.json holds, by which an earlier one is told from a user's file: `eval --out` names its
# checkpoint, `probe` its protocol
EVAL_METRICS = ("datasets", "split", "checkpoint")
PROBE_METRICS = ("datasets", "split", "protocol")


def holds_metrics(path: Path, fields: tuple[str, ...]) -> bool:
    """Whether ``path`` holds a metrics dict with ``fields`` (EVAL_METRICS, PROBE_METRICS): an earlier result of the
    command that writes them. The one rule (output_guard's check inside a run folder asks it too), by content, not
    name."""
    data = _read_own_output(path)
    return isinstance(data, dict) and isinstance(data.get("datasets"), dict) and set(fields) <= set(data)


def check_own_output(out: Path, shown: str, command: str, holds, content: str, advice: str,
                     what: str = "result") -> None:
    """Refuse, before any work, to replace a file that ``command`` did not write: ``out`` (``shown`` as said) must be
    new, empty (or `{}`), a pipe or device, or hold that command's earlier result (``holds(out)``; ``content``
    names what that holds). `eval --out notes.md` and probe's metrics.json replaced the user's files (exit 0)."""
    from fewshot.utils import is_special_file

    if out.is_file() and not is_special_file(out) and not (_holds_nothing(out) or holds(out)):
        raise UserError(f"{shown} already holds a file that is not an earlier {what} of `fewshot {command}` (no "
                        f"{content}); {command} replaces only its own results. {advice}")


def check_predict_out(out: Path, routing_file: Path, shown: str, unknown: bool) -> None:
    """Refuse, before any work, to replace a file that `predict` did not write: --out (``shown``, as typed) must be
    new, empty (or `{}`) or an earlier prediction, and with --mode unknown so must the routing file beside it.
    Inside a run or data folder check_result_file_is_not_an_input guards more; this holds everywhere."""
    check_own_output(out, f"--out {shown}", "predict", holds_predictions,
                     "pred_all.json content: n_parameters and each dataset's predictions",
                     f"Give --out a new file name, or move {shown} away first.", what="prediction")
    if unknown and (routing_file.exists() or routing_file.is_symlink()) and not holds_routing(routing_file):
        raise UserError(f"--out {shown}: --mode unknown also writes each image's predicted dataset beside it, to "
                        f"{routing_file}, which already holds a file that is not an earlier routing file of "
                        f"`fewshot predict`; move {routing_file} away or choose another --out.")
