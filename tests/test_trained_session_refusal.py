"""A start without --resume in a run folder whose training wrote files but whose last.pt is gone (moved away to
save space, deleted) is refused with the files kept: it was taken for a failed start, appended its epochs to the
old log.jsonl and wrote over the earlier best.pt. The advice given (--resume starts it over) works."""

from __future__ import annotations

import json

import pytest

from helpers.checks import run_main
from helpers.tiny import tiny_train_argv, trained_tiny_run
from test_fdn_resume_review import assert_kept, pretrain_argv, without_last


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory):
    return trained_tiny_run(digits_root, tmp_path_factory.mktemp("tsr") / "run")


@pytest.fixture(scope="module")
def pretrained(digits_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tsr-pt") / "pt"
    rc, _, err = run_main(*pretrain_argv(digits_root, out))
    assert rc == 0, err
    return out


def test_train_without_resume_in_a_killed_run_without_last_pt_is_refused(digits_root, trained, tmp_path):
    run, before = without_last(trained, tmp_path / "run", finished=False)
    rc, _, err = run_main(*tiny_train_argv(digits_root, run))
    assert rc == 2, err
    assert "holds a `fewshot train` run that trained (log.jsonl, checkpoints/best.pt" in err, err
    assert "pass --resume to start it over in place" in err and "another --out" in err
    assert_kept(run, before)
    rc, out, err = run_main(*tiny_train_argv(digits_root, run, "--resume"))  # the advice, taken
    assert rc == 0, err
    rows = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    assert rows == [1] and "starting fresh" in out


def test_train_without_resume_in_a_killed_pretrain_folder_is_refused(digits_root, pretrained, tmp_path):
    run, before = without_last(pretrained, tmp_path / "pt", finished=False)
    rc, _, err = run_main(*tiny_train_argv(digits_root, run))
    assert rc == 2, err
    assert "holds a `fewshot pretrain` run that trained" in err and "a new `fewshot train` run there" in err, err
    assert "`fewshot pretrain --resume` continues it there" in err and "--weights" in err
    assert_kept(run, before)
