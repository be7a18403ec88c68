"""A start without --resume in a run folder whose training wrote files but whose last.pt is gone (moved away to
save space, deleted) is refused with the files kept: it was taken for a failed start, appended its epochs to the
old log.jsonl and wrote over the earlier best.pt. The advice given (--resume starts it over) works."""

from __future__ import annotations

import json
import shutil

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


def test_a_kill_in_the_first_epoch_is_no_trained_run(digits_root, trained, tmp_path):
    """The first evaluation writes best.pt.pending before the first last.pt: a kill between the two left a folder
    whose start again without --resume was refused as a run that trained (review rev67, finding 2)."""
    run, _ = without_last(trained, tmp_path / "run", finished=False)
    (run / "log.jsonl").unlink()
    shutil.rmtree(run / "plots")  # drawn from the log's rows
    (run / "checkpoints" / "best.pt").rename(run / "checkpoints" / "best.pt.pending")
    rc, _, err = run_main(*tiny_train_argv(digits_root, run))
    assert rc == 0, err


def test_other_settings_are_sent_to_another_out_not_back_and_forth(digits_root, trained, tmp_path):
    """Refused without --resume, then with it (other settings than the run's): the second message advised the start
    without --resume that the first refused (review rev67, finding 1)."""
    run, before = without_last(trained, tmp_path / "run", finished=False)
    rc, _, err = run_main(*tiny_train_argv(digits_root, run, "--lr", "0.01"))
    assert rc == 2 and "choose another --out, for a run with other settings" in err, err
    rc, _, err = run_main(*tiny_train_argv(digits_root, run, "--lr", "0.01", "--resume"))
    assert rc == 2, err
    assert "without --resume" not in err and "another --out" in err and "drop those settings to start it over" in err
    assert_kept(run, before)


def test_a_trained_sessions_files_without_config_are_kept(digits_root, trained, tmp_path):
    run, before = without_last(trained, tmp_path / "run", finished=False)
    (run / "config.yaml").unlink()
    before.pop("config.yaml")
    rc, _, err = run_main(*tiny_train_argv(digits_root, run))
    assert rc == 2 and "holds a run that trained (log.jsonl, checkpoints/best.pt" in err, err
    assert_kept(run, before)


def test_other_settings_for_a_finished_run_without_last_pt_are_refused_as_finished(digits_root, trained, tmp_path):
    """The changed-settings refusal advised "drop those settings to start it over in place", which the finished-run
    refusal then refused (review rev68, finding 1)."""
    run, before = without_last(trained, tmp_path / "run", finished=True)
    rc, _, err = run_main(*tiny_train_argv(digits_root, run, "--lr", "0.5", "--resume"))
    assert rc == 2 and "holds a run that finished" in err and "drop those settings" not in err, err
    assert_kept(run, before)
