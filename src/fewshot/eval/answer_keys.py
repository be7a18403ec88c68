"""The test split's answer keys (ROOT/<dataset>/test_labels.json): read, checked against the test files before any
image is decoded, and turned into targets. Apart from predict.py: `eval --split test`, `fewshot run` and
score_predictions read them, and their refusals and hints are one job of their own."""

from __future__ import annotations

import contextlib
import json
import sys
import unicodedata
from pathlib import Path

import torch

from fewshot.data.label_space import LabelSpace
from fewshot.data.names import datasets_option
from fewshot.data.test_split import test_id
from fewshot.errors import UserError, one_line, printable
from fewshot.eval.model_data import _class_folders


def load_answer_key(path: Path, num_classes: int | None = None,
                    class_names: list[str] | tuple[str, ...] | None = None,
                    data_classes: list[str] | tuple[str, ...] | None = None) -> dict[str, int]:
    """{"<image id>": class index} from a test_labels.json, or a UserError naming the file. A class is its
    index in the dataset's sorted class folders, or (given ``class_names``, the model's) the class's name itself.
    ``data_classes``: the class folders found under the root now, named in the error where they differ from the
    model's (a key written from renamed folders names classes the model does not know)."""
    try:
        key = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"answer key {path} cannot be read as JSON: {exc}") from None
    if not isinstance(key, dict):
        raise UserError(f"answer key {path} must map image ids to class indices, e.g. {{\"17\": 3}}.")
    names = {unicodedata.normalize("NFC", n): k for k, n in enumerate(class_names)} if class_names else {}
    if num_classes is None and class_names:
        num_classes = len(class_names)
    out: dict[str, int] = {}
    for i, c in key.items():
        if isinstance(c, str) and unicodedata.normalize("NFC", c) in names:
            c = names[unicodedata.normalize("NFC", c)]
        if isinstance(c, bool) or not isinstance(c, int) or c < 0 or (num_classes is not None and c >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
            named = ""
            if class_names:
                listed = ", ".join(printable(n) for n in list(class_names)[:8])
                named = f" or one of the model's class names ({listed}{', ...' if len(class_names) > 8 else ''})"
                if data_classes is not None and list(names) != [unicodedata.normalize("NFC", n) for n in data_classes]:
                    theirs = ", ".join(printable(n) for n in list(data_classes)[:8])
                    named += (f". The data's class folders ({theirs}{', ...' if len(data_classes) > 8 else ''}) differ "
                              f"from the model's: the key is read with the model's names, so write those (or the "
                              f"indices) in it")
            quoted = _quoted_number_hint(c, num_classes, class_names)
            raise UserError(f"answer key {path}: image {i} has class {_as_written(c)}; a class must be a whole "
                            f"number in {bound}{named}.{quoted}")
        image_id = test_id(str(i))  # "0007" and "7" both name test image 7 (test_split.test_id)
        if out.get(image_id, c) != c:
            raise UserError(f"answer key {path}: image {image_id} is listed twice with different classes.")
        out[image_id] = c
    return out


def _quoted_number_hint(c, num_classes: int | None, class_names) -> str:
    """The hint for a key's class written as a number in quotes ({"0": "1"}: read as a name, and none). Writing it
    without quotes helps only where the number is one of the model's class indices: for "3" of 3 classes that advice
    was refused in turn, so there the key is said to name a class the model was not trained on."""
    text = c.strip() if isinstance(c, str) else ""
    if not (text.isascii() and text.isdigit()):  # "²" is a digit that no JSON number writes
        return ""
    digits = text.lstrip("0") or "0"  # int() refuses more than 4300 digits
    if num_classes is not None and (len(digits) > 9 or int(digits) >= num_classes):
        return (f" {text} is neither a class name nor a class index of the model's (0..{num_classes - 1}): the "
                f"image is of a class the model was not trained on, or the key counts classes from 1; correct the "
                f"key, or leave that image out of test/ and the key.")
    listed = ", ".join(printable(n) for n in list(class_names)[:5]) if class_names else ""
    return (f" A number in quotes is read as a class name: write the index without quotes ({text})"
            + (f", or a name such as {listed}" if listed else "") + ".")


def _as_written(value) -> str:
    """A key's class as JSON writes it: `true` and `null` read as "True" and "None", which the file never says. A
    name keeps its quotes; a long list or object is cut."""
    if isinstance(value, str):
        return repr(value)
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):  # nested deeper than json writes back
        text = f"a {type(value).__name__} nested too deep to show"
    return text if len(text) <= 60 else f"{text[:57]}..."


def warn_about_unknown_ids(path: Path, key: dict, test_ids) -> list[str]:
    """Ids of the answer key that are no image in test/ are not scored (n counts the test images); they are
    named on stderr, since a key and a test folder that disagree usually mean a copy went wrong."""
    unknown = sorted(set(key) - set(test_ids))
    if unknown:
        print(one_line(f"warning: answer key {path} lists {len(unknown)} id(s) that are not test images scored "
                       f"here ({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}): they are not scored."),
              file=sys.stderr, flush=True)
    return unknown


def _data_classes(info) -> list[str] | None:
    """_class_folders for an answer key's error, which an unreadable train/ must not replace."""
    try:
        return _class_folders(info)
    except OSError:  # an unreadable train/: the key's error says what the model knows, without the comparison
        return None


KEYED_HINT = " Score the datasets that have one with "  # read_answer_keys' hint, replaced by check_answer_keys'


def read_answer_keys(infos, space: LabelSpace, ids: list[str], dsids: torch.Tensor, warn: bool = True) -> torch.Tensor:
    """Global targets for test images from ROOT/<dataset>/test_labels.json (scoring only)."""
    keys = {}
    keyed = [info.name for info in infos if info.answer_key is not None]
    for info in infos:
        if info.answer_key is None:
            hint = (f"{KEYED_HINT}{datasets_option(keyed)}." if keyed else "")
            raise UserError(f"no answer key {info.root / 'test_labels.json'}: the test split of {info.name} cannot "
                            f"be scored.{hint}")
        keys[info.name] = load_answer_key(info.answer_key, class_names=space.classes[space.index(info.name)],
                                          data_classes=_data_classes(info))
    by_dataset: dict[str, set[str]] = {}
    for i, d in zip(ids, dsids.tolist()):
        by_dataset.setdefault(space.names[d], set()).add(str(i))
    for info in infos if warn else ():  # once: evaluate_run checks the keys before decoding, then reads them
        warn_about_unknown_ids(info.answer_key, keys[info.name], by_dataset.get(info.name, set()))
    missing: dict[str, list[str]] = {}
    for i, d in zip(ids, dsids.tolist()):
        if str(i) not in keys[space.names[d]]:
            missing.setdefault(space.names[d], []).append(str(i))
    if missing:  # all of them at once: the first alone made fixing a partial key one run per id
        raise UserError("test images missing from their answer key: " + "; ".join(
            f"{len(v)} of {name} ({', '.join(printable(x) for x in v[:5])}{', ...' if len(v) > 5 else ''}; "
            f"{next(info.answer_key for info in infos if info.name == name)})" for name, v in missing.items())
            + ". Every test image needs its class in the key to be scored.")
    return torch.tensor([space.global_label(d, keys[space.names[d]][str(i)]) for i, d in zip(ids, dsids.tolist())],
                        dtype=torch.long)


def check_answer_keys(infos, space: LabelSpace, warn: bool = True) -> None:
    """The answer keys of the test split, checked against the scanned test files before decoding them. One unusable
    key refuses them all: the refusal names the datasets whose keys can be scored (`--datasets A,B` scores them;
    without the hint, one bad key read as "eval cannot score this root")."""
    ids = [tid for info in infos for tid, _ in info.test]
    dsids = torch.tensor([space.index(info.name) for info in infos for _ in info.test], dtype=torch.long)
    try:
        read_answer_keys(infos, space, ids, dsids, warn=warn)
    except UserError as exc:
        if len(infos) < 2:
            raise
        # read_answer_keys' own hint for a missing key names every dataset with a key file, a broken one too
        words = str(exc).split(KEYED_HINT)[0].rstrip()
        usable = _usable_keys(infos, space)
        if usable:
            raise UserError(f"{words} The other datasets' keys are usable: score them with "
                            f"{_datasets_hint(usable)}.") from None
        if words != str(exc).rstrip():
            raise UserError(words) from None
        raise


def _datasets_hint(names: list[str]) -> str:
    """`--datasets A,B` for the datasets a refusal can still score; a name holding a comma is given alone (the option
    splits at commas: "--datasets x,y,z" for "x,y" and "z" named three unknown datasets)."""
    plain = [n for n in names if "," not in n]
    alone = [datasets_option([n]) for n in names if "," in n]
    parts = ([datasets_option(plain)] if plain else []) + alone
    return parts[0] if len(parts) == 1 else ", then ".join(parts) + " (a name with a comma goes alone)"


def _usable_keys(infos, space: LabelSpace) -> list[str]:
    """The datasets whose answer key scores their test split, each checked on its own (quietly)."""
    usable = []
    for info in infos:
        with contextlib.suppress(UserError):
            check_answer_keys([info], space, warn=False)
            usable.append(info.name)
    return usable
