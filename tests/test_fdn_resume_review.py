"""--resume without last.pt starts a run over only in a folder of this command's run that did not end (rev65
finding 1): a finished run whose last.pt was moved away, and another command's run (a MoCo folder given to `fewshot
train --resume`), are refused with their best.pt kept, where the start over deleted them; an unreadable last.pt of a
finished run advises another --out. A resumed run's overrun note keeps the budget advice where the resume cannot
account for the overrun (finding 2)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from fewshot.run_words import overrun_note
from helpers.checks import run_main
from helpers.tiny import tiny_train_argv, trained_tiny_run

KEPT = ("config.yaml", "log.jsonl", "checkpoints/best.pt")


def pretrain_argv(root: Path, out: Path, *extra) -> list:
    """`fewshot pretrain` of one 1-epoch, 16 px test_resnet run on the root's pool: the cheapest MoCo run."""
    return ["pretrain", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "16", "--queue-size", "32", "--device", "cpu", "--no-progress", "train.tensorboard=false",
            "train.threads=1", *extra]


def resume_argv(command: str, root: Path, out: Path) -> list:
    """`fewshot COMMAND --resume` with the run's own settings (none given: a setting other than the run's is refused
    before the folder is looked at)."""
    return [command, "--data", root, "--out", out, "--resume", "--no-progress"]


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory):
    return trained_tiny_run(digits_root, tmp_path_factory.mktemp("fdn") / "run")


@pytest.fixture(scope="module")
def pretrained(digits_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("fdn-pt") / "pt"
    rc, _, err = run_main(*pretrain_argv(digits_root, out))
    assert rc == 0, err
    assert (out / "metrics.json").is_file() and (out / "checkpoints" / "best.pt").is_file()
    return out


def without_last(src: Path, dst: Path, finished: bool = True) -> tuple[Path, dict]:
    """A copy of run ``src`` without last.pt (moved away), and without its metrics files unless ``finished`` (a
    session killed before its end); with the bytes of the files a refusal must keep."""
    run = shutil.copytree(src, dst)
    (run / "checkpoints" / "last.pt").rename(dst.parent / "last.pt.moved")
    if not finished:
        for path in run.glob("metrics*.json"):
            path.unlink()
    names = KEPT + tuple(p.name for p in run.glob("metrics*.json"))
    return run, {name: (run / name).read_bytes() for name in names}


def assert_kept(run: Path, before: dict) -> None:
    assert {name: (run / name).read_bytes() for name in before} == before


def test_train_resume_of_a_finished_pretrain_folder_is_refused_and_keeps_its_backbone(digits_root, pretrained,
                                                                                      tmp_path):
    run, before = without_last(pretrained, tmp_path / "pt")
    rc, out, err = run_main(*resume_argv("train", digits_root, run))
    assert rc == 2, out + err
    assert "holds a `fewshot pretrain` run (its config.yaml says so), not a `fewshot train` one" in err, err
    assert "It finished: choose another --out" in err
    assert f"`fewshot train --weights {run / 'checkpoints' / 'best.pt'} --out NEW`" in err
    assert "starting fresh" not in out
    assert_kept(run, before)


def test_train_resume_of_a_killed_pretrain_folder_is_refused(digits_root, pretrained, tmp_path):
    run, before = without_last(pretrained, tmp_path / "pt", finished=False)
    rc, out, err = run_main(*resume_argv("train", digits_root, run))
    assert rc == 2, out + err
    assert "holds a `fewshot pretrain` run" in err and "`fewshot pretrain --resume` starts it over there" in err
    assert_kept(run, before)


def test_pretrain_resume_of_a_killed_train_folder_is_refused(digits_root, trained, tmp_path):
    run, before = without_last(trained, tmp_path / "run", finished=False)
    rc, out, err = run_main(*resume_argv("pretrain", digits_root, run))
    assert rc == 2, out + err
    assert "holds a `fewshot train` run (its config.yaml says so), not a `fewshot pretrain` one" in err, err
    assert_kept(run, before)


def test_extending_a_finished_run_whose_last_pt_is_gone_is_refused_and_keeps_its_model(digits_root, trained,
                                                                                        tmp_path):
    run, before = without_last(trained, tmp_path / "run")
    rc, out, err = run_main(*tiny_train_argv(digits_root, run, "--resume"), "--epochs", "2")
    assert rc == 2, out + err
    assert f"the run folder '{run}' holds a run that finished (metrics.json" in err, err
    assert f"but not its {run / 'checkpoints' / 'last.pt'} (moved away or deleted)" in err
    assert "Put last.pt back to continue it" in err and "choose another --out" in err
    assert_kept(run, before)
    new = tmp_path / "new"  # the advice, as given: a new run from the finished model
    weights = re.search(r"`fewshot train --weights (\S+) --out NEW`", err)
    assert weights and Path(weights.group(1)) == run / "checkpoints" / "best.pt", err
    rc, _, err = run_main(*tiny_train_argv(digits_root, new, "--weights", weights.group(1)))
    assert rc == 0, err


def test_a_truncated_last_pt_of_a_finished_run_advises_another_out(digits_root, trained, tmp_path):
    run = shutil.copytree(trained, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    with open(last, "r+b") as fh:
        fh.truncate(last.stat().st_size // 2)
    rc, _, err = run_main(*tiny_train_argv(digits_root, run, "--resume"))
    assert rc == 2 and "truncated" in err
    assert "--resume again to start this run over" not in err and "mv " not in err, err
    assert "the run finished (metrics.json" in err and "it is not started over in place" in err
    assert "choose another --out; `fewshot train --weights" in err
    # moved away all the same, --resume refuses it as the message says (it deleted the finished model)
    last.rename(last.with_name("last.pt.broken"))
    rc, _, err = run_main(*tiny_train_argv(digits_root, run, "--resume"))
    assert rc == 2 and "holds a run that finished" in err, err
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "metrics.json").is_file()


def test_an_overrun_the_resume_cannot_account_for_keeps_the_budget_advice():
    """Stopped at 20 s of 90, done at 150 s: the resumed session alone took 130 s of the 70 s left; at most the
    20 s before the stop were done again."""
    said = overrun_note(150.0, 90.0, 40.0, 20.0)
    assert "more than one session" in said
    assert "not the budget" not in said, said
    assert "A budget of at least 3 minutes leaves training a fair share" in said


def test_an_overrun_past_the_resume_under_a_large_enough_budget_blames_the_machine_not_the_resume():
    said = overrun_note(400.0, 300.0, 280.0, 5.0)
    assert "not the budget" not in said and "A budget of at least" not in said, said
    assert "more than the resume can have added" in said
