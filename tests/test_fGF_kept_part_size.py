"""Review rev103 of hBV #3 (a stopped decode keeps its rows as KEY.part.u8): the part was as big as the whole entry
with one row kept, so on a disk with room for one entry the next load found no room for its own, decoded in memory,
wrote nothing and the cache stayed off for good; the stop wrote and synced the whole size. Now a part holds the kept
rows only, a load without room for its entry beside the part deletes the part and tries again, the 16-bit record is
taken from the rows still valid, and three mutants the tests let through (a failed file's row kept, the settings
left out of the part's name, the size check removed) each fail here."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fewshot.data.cache as cache
from fewshot.data.cache import is_cached, load_images
from fewshot.data.cache_partial import PART_MAGIC
from test_fGD_stopped_decode_kept import SIZE, copied_pool, counted_decoder, parts, stopped_load, uncached

ROW = 3 * SIZE * SIZE
TAIL = 8 + len(PART_MAGIC)


@pytest.fixture
def pool(digits_root, tmp_path) -> list[Path]:
    return copied_pool(digits_root, tmp_path)


def trailer(part: Path) -> tuple[bytes, dict]:
    """The part's rows' bytes and its record."""
    data = part.read_bytes()
    length = int.from_bytes(data[-TAIL:-TAIL + 8], "little")
    return data[:-TAIL - length], json.loads(data[-TAIL - length:-TAIL])


def test_a_part_holds_only_the_rows_kept(pool, tmp_path, monkeypatch):
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=1)
    (part,) = parts(cache_dir)
    rows, record = trailer(part)
    assert len(rows) == ROW and record["rows"] == [0]  # one row, not the 8 of an entry
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1)
    assert seen == [f"{i}.png" for i in range(1, 8)]
    assert np.array_equal(got.images.numpy(), uncached(paths).images.numpy())


def test_a_folder_that_cannot_be_mapped_keeps_only_the_rows_kept_too(pool, tmp_path, monkeypatch):
    """Decoded into memory: the stop wrote all 8 rows, zeros after the kept ones."""
    real = cache._mapped_file

    def unmappable(fh, shape, nbytes):
        real(fh, shape, nbytes)  # sized as where mapping fails
        return None

    monkeypatch.setattr(cache, "_mapped_file", unmappable)
    paths, cache_dir = pool, tmp_path / "cache"
    counted_decoder(monkeypatch, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        load_images(paths, SIZE, cache_dir, threads=1)
    monkeypatch.undo()
    (part,) = parts(cache_dir)
    assert len(trailer(part)[0]) == 3 * ROW
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1)
    assert seen == [f"{i}.png" for i in range(3, 8)]
    assert np.array_equal(got.images.numpy(), uncached(paths).images.numpy())


def room_for_one_entry(monkeypatch, folder: Path, capacity: int) -> list[int]:
    """A disk of ``capacity`` bytes for the cache folder: posix_fallocate fails with ENOSPC where the files already
    there leave no room. Returns the sizes asked for that did not fit."""
    real, refused = os.posix_fallocate, []

    def fallocate(fd, offset, length):
        used = sum(e.stat().st_size for e in os.scandir(folder) if e.is_file())
        if used + length > capacity:
            refused.append(length)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    return refused


def test_a_disk_with_room_for_one_entry_drops_the_part_and_writes_the_entry(pool, tmp_path, monkeypatch, capsys):
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=6)  # 6 of 8 rows kept: no room for 8 more beside them
    (part,) = parts(cache_dir)
    refused = room_for_one_entry(monkeypatch, cache_dir, capacity=8 * ROW + 4096)
    capsys.readouterr()
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1)
    err = capsys.readouterr().err
    assert refused == [8 * ROW] and f"ignoring {part}" in err and "no room for it beside the new entry" in err
    assert "could not write" not in err and "come from an earlier decode" not in err, err
    assert len(seen) == 8 and is_cached(paths, SIZE, cache_dir) and parts(cache_dir) == []
    assert np.array_equal(got.images.numpy(), uncached(paths).images.numpy())
    seen.clear()
    load_images(paths, SIZE, cache_dir, threads=1)
    assert seen == []  # the cache is on again


def test_a_part_that_fits_beside_the_entry_is_used(pool, tmp_path, monkeypatch):
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=2)
    refused = room_for_one_entry(monkeypatch, cache_dir, capacity=10 * ROW + 4096)
    seen = counted_decoder(monkeypatch)
    load_images(paths, SIZE, cache_dir, threads=1)
    assert refused == [] and len(seen) == 6 and is_cached(paths, SIZE, cache_dir) and parts(cache_dir) == []


def test_a_failed_files_row_is_never_kept(pool, tmp_path, monkeypatch):
    """Mutant a of rev103: done(i, None) for a failed file stamped its all-zero row as an image."""
    paths, cache_dir = pool, tmp_path / "cache"
    paths[1].write_bytes(b"not an image")
    stopped_load(monkeypatch, paths, cache_dir, after=4)
    assert trailer(parts(cache_dir)[0])[1]["rows"] == [0, 2, 3]
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1, skip_bad=True, skip_note=None)
    assert seen == ["1.png"] + [f"{i}.png" for i in range(4, 8)] and not bool(got.valid[1])


@pytest.mark.parametrize("stopped_at", [{"crop_pct": 0.875}, {"bit_depth": 16}, {"resize": "pad"}])
def test_a_part_of_other_settings_is_never_used(pool, tmp_path, monkeypatch, capsys, stopped_at):
    """Mutant b of rev103: the rows' stamps do not cover the settings, only the part's name does."""
    paths, cache_dir = pool, tmp_path / "cache"
    counted_decoder(monkeypatch, stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        load_images(paths, SIZE, cache_dir, threads=1, **stopped_at)
    monkeypatch.undo()
    assert len(parts(cache_dir)) == 1
    capsys.readouterr()
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1)
    assert len(seen) == 8 and "come from an earlier decode" not in capsys.readouterr().err
    assert np.array_equal(got.images.numpy(), uncached(paths).images.numpy())


def test_a_part_whose_size_is_not_its_rows_and_record_is_ignored(pool, tmp_path, monkeypatch, capsys):
    """Mutant c of rev103: without the size check, a row's worth of bytes before the rows shifts every row."""
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=4)
    (part,) = parts(cache_dir)
    part.write_bytes(b"\xff" * ROW + part.read_bytes())
    capsys.readouterr()
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1)
    err = capsys.readouterr().err
    assert len(seen) == 8 and f"ignoring {part}" in err and "not of these images' number and size" in err
    assert np.array_equal(got.images.numpy(), uncached(paths).images.numpy())


def save(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values).save(path)


def test_the_16_bit_record_comes_from_the_rows_still_valid(tmp_path, monkeypatch):
    """A 16-bit file replaced since the stop left its peak in the next entry's record (warn_bit_depth on each hit)."""
    folder, cache_dir = tmp_path / "pool", tmp_path / "cache"
    folder.mkdir()
    ramp = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    paths = [folder / f"{i}.png" for i in range(4)]
    save(paths[0], (ramp * 60000).astype(np.uint16))
    save(paths[1], (ramp * 1000).astype(np.uint16))
    for p in paths[2:]:
        save(p, (ramp * 255).astype(np.uint8))
    stopped_load(monkeypatch, paths, cache_dir, after=2)
    assert trailer(parts(cache_dir)[0])[1]["peaks"] == [60000, 1000]
    shutil.copy(paths[2], paths[0])  # the file of the large peak is an 8-bit one now
    load_images(paths, SIZE, cache_dir, threads=1)
    (meta,) = cache_dir.glob("*.json")
    assert json.loads(meta.read_text())["bits16"]["peak"] == 1000
