"""Run and report folders inside a data root, and two reports into one --out (hunt hAX, findings 1, 2 and 4).

A report being written into ROOT/rep (its PNGs before index.html) and a sweep's run two levels down
(ROOT/runs/sweep/a, its plots/*.png) were read as datasets, and every command on the root failed with
"missing split folder". Two `fewshot report --out SAME` at once deleted each other's PNGs.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest

from fewshot.data.roots import list_datasets, not_a_dataset

PNG = b"\x89PNG\r\n\x1a\n"


def _root(tmp_path: Path) -> Path:
    """A data root holding one dataset folder (what list_datasets looks at: train/ is there)."""
    root = tmp_path / "root"
    (root / "digits" / "train" / "0").mkdir(parents=True)
    (root / "digits" / "train" / "0" / "a.png").write_bytes(PNG)
    return root


def test_a_report_being_written_is_passed_over_from_its_first_file_on(tmp_path, capfd):
    """A report's PNGs come before its index.html: ROOT/rep holding the mark and one PNG (a report half-way, or
    killed there) was a dataset, and every command on the root failed with "ROOT/rep/train: missing split folder"."""
    root = _root(tmp_path)
    rep = root / "rep"
    rep.mkdir()
    (rep / ".fewshot_report").write_text("")
    (rep / "run-curves.png").write_bytes(PNG)
    capfd.readouterr()
    assert list_datasets(root) == ["digits"]
    assert f"{rep} is not a dataset (fewshot output" in capfd.readouterr().err
    (rep / "index.html").write_text("<html></html>")  # the page written: still passed over
    assert not_a_dataset(rep) == "fewshot output (a run or a report), no train/, val/ or test/"


@pytest.mark.parametrize("marker", ["config.yaml", ".fewshot_report"])
def test_a_run_or_report_two_levels_down_is_passed_over(tmp_path, capfd, marker):
    """`--out ROOT/runs/sweep/a` made ROOT/runs a dataset through runs/sweep/a/plots/*.png: the sweep's next run
    failed with "ROOT/runs/train: missing split folder"."""
    root = _root(tmp_path)
    run = root / "runs" / "sweep" / "a"
    (run / "plots").mkdir(parents=True)
    (run / marker).write_text("")
    (run / "plots" / "curves.png").write_bytes(PNG)
    capfd.readouterr()
    assert list_datasets(root) == ["digits"]
    assert f"{root / 'runs'} is not a dataset (fewshot output" in capfd.readouterr().err


def test_images_beside_a_deep_run_still_make_a_dataset_whose_problem_is_named(tmp_path):
    """Only the run's own folder is passed over: ROOT/x/Train/... (a misnamed split) beside ROOT/x/runs/sweep/a is
    still a dataset, so that its layout problem is named; a folder of neither stays "no images"."""
    root = _root(tmp_path)
    (root / "x" / "runs" / "sweep" / "a").mkdir(parents=True)
    (root / "x" / "runs" / "sweep" / "a" / "log.jsonl").write_text("")
    (root / "x" / "Train" / "0").mkdir(parents=True)
    (root / "x" / "Train" / "0" / "a.png").write_bytes(PNG)
    assert not_a_dataset(root / "x") is None
    (root / "empty" / "deep" / "er").mkdir(parents=True)
    assert not_a_dataset(root / "empty") == "no images, no train/, val/ or test/"


def _hand_written_run(folder: Path) -> Path:
    """A run folder a report reads without a model (log.jsonl and metrics.json): a page in well under a second."""
    folder.mkdir(parents=True)
    scores = {"mode": "known", "mean_acc1": 50.0, "datasets": {"digits": {"acc1": 50.0, "acc5": 100.0, "n": 30}}}
    rows = [{"epoch": e, "step": 4 * e, "lr": 1e-3, "loss": 2.0, "train_acc1": 20.0, "score": 10.0,
             "val": {"known": scores}} for e in (1, 2, 3)]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.json").write_text(json.dumps(scores))
    return folder


def _page_images(out: Path) -> list[str]:
    return re.findall(r'<img src="([^"<>]*)"', (out / "index.html").read_text())


def test_a_second_report_into_the_same_out_waits_for_the_first(tmp_path):
    """Two `report --out SAME` at once: each deleted, at its end, the earlier page's PNGs it had not drawn, and the
    page left showed images the other had deleted. A report holds OUT's lock for its whole build; a second one says
    it waits, touches nothing meanwhile, and then draws its page over the other's finished one."""
    fcntl = pytest.importorskip("fcntl")
    from fewshot.report.build import build_report

    run, out = _hand_written_run(tmp_path / "run"), tmp_path / "rep"
    build_report([str(run)], out, log=lambda *a: None, skip_images="test")
    fd = os.open(out, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "the other report", drawing its page now
    said, waiting, ended = [], threading.Event(), threading.Event()

    def log(message):
        said.append(message)
        if "waiting" in message:
            waiting.set()

    def second():
        try:
            build_report([str(run)], out, log=log, skip_images="test")
        finally:
            ended.set()

    worker = threading.Thread(target=second, daemon=True)
    try:
        worker.start()
        while not (waiting.is_set() or ended.is_set()):  # whichever comes first: no timing assumed
            ended.wait(0.05)
        assert waiting.is_set() and not ended.is_set(), said
        # the other report ends: its page shows a PNG the second one does not draw
        (out / "other.png").write_bytes(PNG)
        (out / "index.html").write_text('<title>fewshot report</title><img src="other.png">')
    finally:
        os.close(fd)  # gives the lock up
        worker.join(120)
    assert ended.is_set() and not worker.is_alive()
    shown = _page_images(out)
    assert shown and "other.png" not in shown and all((out / n).is_file() for n in shown), shown
    assert not (out / "other.png").exists()  # the earlier page's PNG, read once the lock was held
    assert [m for m in said if "waiting" in m] == [f"note: another fewshot report is writing {out}; waiting for it "
                                                   f"to finish, so that neither deletes the other's images"]


@pytest.mark.parametrize("how", ["no fcntl", "no locks on this file system"])
def test_a_report_goes_on_unguarded_where_out_cannot_be_locked(tmp_path, monkeypatch, how):
    """Where flock is missing (Windows) or refused (ENOLCK on some network mounts), a report is written as before."""
    import errno

    from fewshot.report import out_lock
    from fewshot.report.build import build_report

    if how == "no fcntl":
        monkeypatch.setattr(out_lock, "fcntl", None)
    else:
        fcntl = pytest.importorskip("fcntl")

        def no_locks(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")

        monkeypatch.setattr(out_lock, "fcntl", type("F", (), {"LOCK_EX": fcntl.LOCK_EX, "LOCK_NB": fcntl.LOCK_NB,
                                                               "flock": staticmethod(no_locks)}))
    said = []
    page = build_report([str(_hand_written_run(tmp_path / "run"))], tmp_path / "rep", log=said.append,
                        skip_images="test")
    assert all((page.parent / n).is_file() for n in _page_images(page.parent))
    assert not any("waiting" in m for m in said), said
