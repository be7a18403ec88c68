"""A command a message suggests names its path even when the path starts with `-`: `--out -d` or `--data -d`
pasted into a shell was read by argparse as an option ("expected one argument")."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from fewshot.cli_parser import build_parser
from fewshot.data.layout import list_datasets
from fewshot.errors import UserError
from helpers.checks import run_main


def _pasted(command: str):
    """The parsed arguments of a suggested command, as the shell splits it (`...` stands for the user's flags)."""
    words = [w for w in shlex.split(command) if w != "..."]
    assert words[0] == "fewshot", command
    return build_parser().parse_args(words[1:])


def _layout(root: Path) -> Path:
    """ROOT/digits/{train,val,test}/0/a.png: one dataset, enough for the layout's near-miss checks."""
    for split in ("train", "val", "test"):
        folder = root / "digits" / split / "0"
        folder.mkdir(parents=True)
        (folder / "a.png").write_bytes(b"")
    return root


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_report_of_a_stopped_run_named_like_an_option_suggests_a_resume_that_names_it(in_tmp):
    (in_tmp / "-d").mkdir()
    (in_tmp / "-d" / "run_state.json").write_text(json.dumps({"finished": False}))
    rc, _, err = run_main("report", "--out", "rep", "--", "-d")
    assert rc == 2 and "stopped before its first stage trained" in err, err
    command = re.search(r"`(fewshot run [^`]*)`", err).group(1)
    args = _pasted(command)
    assert args.command == "run" and args.resume and Path(args.out).resolve() == in_tmp / "-d", command


@pytest.mark.parametrize("given, pattern", [
    ("-d/digits", r"Pass its parent instead: (--data .*?) \(or leave"),  # a dataset folder given as the root
    ("-d/digits/train", r"Pass (--data .*?) \(or leave"),  # a split folder given as the root
])
def test_a_folder_inside_the_root_suggests_a_root_named_like_an_option(in_tmp, given, pattern):
    _layout(in_tmp / "-d")
    with pytest.raises(UserError) as info:
        list_datasets(Path(given))
    flags = re.search(pattern, str(info.value)).group(1)
    args = _pasted(f"fewshot predict RUN --out p.json {flags}")
    assert Path(args.data).resolve() == in_tmp / "-d" and args.datasets == "digits", flags


def test_a_missing_root_named_like_an_option_suggests_building_the_demo_data_there(in_tmp):
    """The CLI makes --data absolute; a caller of the Python API may pass it as typed."""
    with pytest.raises(UserError, match="does not exist or is not a folder") as info:
        list_datasets(Path("-d"))
    command = re.search(r"`(fewshot data digits [^`]*)`", str(info.value)).group(1)
    args = _pasted(command)
    assert args.command == "data" and Path(args.out).resolve() == in_tmp / "-d", command
