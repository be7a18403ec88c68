"""`fewshot export --out /dev/fd/N`: a descriptor that appends (or sits at its file's end, or is a pipe) is written
through, replacing nothing; one that would write over its file's first bytes is judged by that file, as any --out."""

from __future__ import annotations

import os
import threading

import pytest

from helpers.checks import run_main


@pytest.fixture(scope="module")
def pre(digits_root, tmp_path_factory):
    """A tiny MoCo run to export (read-only)."""
    run = tmp_path_factory.mktemp("fd") / "pre"
    rc, _, err = run_main("pretrain", "--data", digits_root, "--out", run, "--queue-size", "64", "--model",
                          "test_resnet", "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                          "--no-progress", "train.tensorboard=false", "train.threads=1", "moco.split_bn_groups=2")
    assert rc == 0, err
    return run


@pytest.mark.parametrize("via_link", [False, True])
def test_a_read_write_descriptor_on_another_file_is_refused(pre, tmp_path, via_link):
    """`--out /dev/fd/3 3<> notes.txt` (or a link to /dev/fd/3) passed as a descriptor the shell opened, and the
    export replaced the notes' first bytes: the descriptor writes at the file's start, not after its end."""
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes, not an export\n" * 4)
    before = notes.read_bytes()
    fd = os.open(notes, os.O_RDWR)
    try:
        out = tmp_path / "link.safetensors" if via_link else f"/dev/fd/{fd}"
        if via_link:
            out.symlink_to(f"/dev/fd/{fd}")
        rc, _, err = run_main("export", pre, "--out", out)
    finally:
        os.close(fd)
    assert rc == 2 and f"--out {out} already holds a file that is not an earlier `fewshot export`" in err, err
    assert notes.read_bytes() == before


@pytest.mark.parametrize("how", ["append", "read-write at the end"])
def test_a_descriptor_that_writes_after_the_files_end_is_written_through(pre, tmp_path, how):
    """`--out /dev/fd/3 3>> log` appends; so does a `3<> log` whose offset is already at the log's end."""
    log = tmp_path / "log"
    log.write_bytes(b"earlier lines\n")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND) if how == "append" else os.open(log, os.O_RDWR)
    try:
        if how != "append":
            os.lseek(fd, 0, os.SEEK_END)
        rc, _, err = run_main("export", pre, "--out", f"/dev/fd/{fd}")
    finally:
        os.close(fd)
    assert rc == 0, err
    got = log.read_bytes()
    assert got.startswith(b"earlier lines\n") and b'"model":"test_resnet"' in got


def test_a_pipe_is_written_in_place(pre):
    """`--out /dev/stdout | consumer`: a pipe holds no file to replace."""
    read_end, write_end = os.pipe()
    got = bytearray()

    def drain():
        with os.fdopen(read_end, "rb") as fh:
            got.extend(fh.read())

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        rc, _, err = run_main("export", pre, "--out", f"/dev/fd/{write_end}")
    finally:
        os.close(write_end)
        reader.join(timeout=60)
    assert rc == 0, err
    assert b'"__metadata__"' in got and b'"model":"test_resnet"' in got
