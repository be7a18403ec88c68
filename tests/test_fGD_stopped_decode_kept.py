"""Hunt hBV #3: a Ctrl-C while the pool decoded lost every decoded image (the entry was a temporary file, deleted on
the stop), and the restart decoded them all again. The rows written before a stop are kept beside the cache and the
next load of the same files decodes only the rest; a file changed since is decoded again, a kept file cut short is
ignored with a note, and the part is never an entry. `fewshot run`'s stop line says what was kept."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import fewshot.data.decode_many as decode_many
from fewshot.data.cache import is_cached, load_images
from fewshot.data.cache_files import prune_cache
from helpers.checks import run_main
from helpers.tiny import build_digits

SIZE = 16


def real_images(root: Path) -> list[Path]:
    """The pool images of the session's digits root (real data, as demo_data's), in order."""
    return sorted(p for p in (root / "unlabeled" / "digits").rglob("*") if p.is_file())


def copied_pool(digits_root: Path, tmp_path: Path) -> list[Path]:
    """8 real digit images copied into a folder of this test's (0.png ... 7.png): the kept-decode tests' pool."""
    folder = tmp_path / "pool"
    folder.mkdir()
    paths = []
    for i, src in enumerate(real_images(digits_root)[:8]):
        paths.append(folder / f"{i}.png")
        shutil.copy(src, paths[-1])
    return paths


@pytest.fixture
def pool(digits_root, tmp_path) -> list[Path]:
    return copied_pool(digits_root, tmp_path)


def counted_decoder(monkeypatch, stop_after: int | None = None) -> list[str]:
    """Every file decode_resized is asked for; with ``stop_after``, a KeyboardInterrupt (a Ctrl-C) once that many
    decoded."""
    real, seen = decode_many.decode_resized, []

    def decode(path, *args):
        if stop_after is not None and len(seen) >= stop_after:
            raise KeyboardInterrupt
        seen.append(os.path.basename(path))
        return real(path, *args)

    monkeypatch.setattr(decode_many, "decode_resized", decode)
    return seen


def stopped_load(monkeypatch, paths: list[Path], cache_dir: Path, after: int) -> None:
    counted_decoder(monkeypatch, stop_after=after)
    with pytest.raises(KeyboardInterrupt):
        load_images(paths, SIZE, cache_dir, threads=1, digests=True)
    monkeypatch.undo()


def uncached(paths: list[Path]):
    return load_images(paths, SIZE, None, threads=1, digests=True)


def parts(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*.part.u8"))


def test_a_stopped_decode_keeps_its_rows_and_the_next_load_decodes_only_the_rest(pool, tmp_path, monkeypatch, capsys):
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=3)
    assert len(parts(cache_dir)) == 1 and not is_cached(paths, SIZE, cache_dir)  # a part, never the entry
    assert not list(cache_dir.glob("*.tmp")) and not list(cache_dir.glob("*.json"))
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1, digests=True)
    assert seen == [f"{i}.png" for i in range(3, 8)]  # the 3 kept rows are not decoded again
    assert "3 of the 8 images come from an earlier decode of them that was stopped" in capsys.readouterr().err
    want = uncached(paths)
    assert np.array_equal(got.images.numpy(), want.images.numpy()) and got.digests == want.digests
    assert is_cached(paths, SIZE, cache_dir) and parts(cache_dir) == []  # the entry replaces the part
    again = load_images(paths, SIZE, cache_dir, threads=1, digests=True)
    assert np.array_equal(again.images.numpy(), want.images.numpy()) and again.digests == want.digests


def test_a_second_stop_keeps_the_first_ones_rows_too(pool, tmp_path, monkeypatch):
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=2)
    stopped_load(monkeypatch, paths, cache_dir, after=3)  # 2 kept + 3 decoded
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1)
    assert seen == ["5.png", "6.png", "7.png"]
    assert np.array_equal(got.images.numpy(), uncached(paths).images.numpy())


def test_a_file_changed_since_the_stop_is_decoded_again(pool, digits_root, tmp_path, monkeypatch):
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=4)
    before = uncached(paths).images[1].clone()
    shutil.copy(real_images(digits_root)[20], paths[1])  # other pixels under a kept row's name
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1, digests=True)
    assert seen == ["1.png", "4.png", "5.png", "6.png", "7.png"]
    want = uncached(paths)
    assert np.array_equal(got.images.numpy(), want.images.numpy()) and got.digests == want.digests
    assert not np.array_equal(want.images[1].numpy(), before.numpy())  # the change is one the pixels show


def test_a_kept_part_cut_short_is_ignored_with_a_note(pool, tmp_path, monkeypatch, capsys):
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=4)
    (part,) = parts(cache_dir)
    with open(part, "r+b") as fh:  # a copy cut short, a disk that lost the file's end
        fh.truncate(part.stat().st_size - 5)
    capsys.readouterr()
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1)
    err = capsys.readouterr().err
    assert len(seen) == 8 and f"ignoring {part}" in err and "cut short" in err
    assert "decoding the images it kept again" in err
    assert np.array_equal(got.images.numpy(), uncached(paths).images.numpy()) and parts(cache_dir) == []


def test_a_kept_part_of_another_shape_or_bad_record_is_never_used(pool, tmp_path, monkeypatch, capsys):
    """Untrusted bytes: a record that is not JSON of this list, or rows of another size, decode everything again."""
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=4)
    (part,) = parts(cache_dir)
    data = part.read_bytes()
    tail = 8 + len(b"fewshot-part-v1\n")
    length = int.from_bytes(data[-tail:-tail + 8], "little")
    record = data[-tail - length:-tail]
    for bad in (b"x" * length, record.replace(b'"n": 8', b'"n": 9')):
        part.write_bytes(data[:-tail - length] + bad + data[-tail:])
        seen = counted_decoder(monkeypatch, stop_after=0)  # any decode stops it: none may be read from the part
        with pytest.raises(KeyboardInterrupt):
            load_images(paths, SIZE, cache_dir, threads=1)
        monkeypatch.undo()
        assert seen == [] and "ignoring" in capsys.readouterr().err
        assert not part.exists() or part.read_bytes() != data[:-tail - length] + bad + data[-tail:]


def test_a_kept_part_is_pruned_as_an_entry_is(pool, tmp_path, monkeypatch):
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=4)
    (part,) = parts(cache_dir)
    old = time.time() - 2 * 24 * 3600
    os.utime(part, (old, old))
    prune_cache(cache_dir, 1e-9, keep=cache_dir / "none.u8")
    assert not part.exists()


def test_run_stopped_while_decoding_the_pool_says_the_decoded_part_is_kept(tmp_path, monkeypatch):
    """The stop line said "nothing to resume" of a pool decode it had just kept a third of."""
    import fewshot.train.stop_signal as stop_signal

    monkeypatch.setattr(stop_signal, "_last_signal", [0.0])
    root = build_digits(tmp_path / "root", shots=2)
    real = decode_many.track

    def track(results, desc, **kwargs):  # a Ctrl-C once 30 of the pool's images are written
        for i, item in enumerate(real(results, desc=desc, **kwargs)):
            if desc == "loading unlabeled pool" and i == 30:
                os.kill(os.getpid(), signal.SIGINT)
            yield item

    monkeypatch.setattr(decode_many, "track", track)
    rc, _, err = run_main("run", "--data", root, "--out", tmp_path / "run", "--budget-minutes", "0.1", "--model",
                          "test_resnet", "--device", "cpu", "--no-progress", "run.pretrain=true", "run.report=false")
    assert rc == 128 + signal.SIGINT, err
    assert ("fewshot run: stopped by SIGINT before the run started; nothing to resume, but up to 30 of the 80 "
            "images decoded while loading unlabeled pool are kept in the image cache for the next load of the same "
            "files: start the same command again\n") in err, err  # "up to": a rank may rename its part over it
    assert len(parts(root / ".fewshot_cache")) == 1
