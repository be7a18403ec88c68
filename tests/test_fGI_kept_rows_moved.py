"""Review rev105 of the kept part of a stopped decode (KEY.part.u8): the rows moved to the part's start were never
compared by pixel (a move removed or run backwards served wrong pixels and every test passed); a stop while a part's
rows were copied kept them without their 16-bit peaks; a full disk deleted the part even where that could not make
room; rows copied from another list's entry were stored again and counted as decoded; a large keep said nothing
while the exit waited on it; the ignored-part note said "all N images" where another entry gave some of them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import fewshot.data.cache_partial as cache_partial
import fewshot.data.cache_words as cache_words
from fewshot.data.cache import is_cached, load_images
from test_fGD_stopped_decode_kept import SIZE, copied_pool, counted_decoder, parts, stopped_load
from test_fGF_kept_part_size import ROW, room_for_one_entry, trailer


@pytest.fixture
def pool(digits_root, tmp_path) -> list[Path]:
    return copied_pool(digits_root, tmp_path)


def plain(paths: list[Path], **kw):
    """``paths`` decoded without a cache: the pixels every cached load must give."""
    return load_images(paths, SIZE, None, threads=1, **kw)


def test_rows_after_a_failed_file_are_moved_with_their_own_pixels(pool, tmp_path, monkeypatch):
    """Rows [0, 2, 3] go to the part's rows 0, 1, 2: without the move, or moved last first, row 2 held 2.png's
    place with another image's pixels."""
    paths, cache_dir = pool, tmp_path / "cache"
    paths[1].write_bytes(b"not an image")
    counted_decoder(monkeypatch, stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        load_images(paths, SIZE, cache_dir, threads=1, skip_bad=True, skip_note=None)
    monkeypatch.undo()
    assert trailer(parts(cache_dir)[0])[1]["rows"] == [0, 2, 3]
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1, skip_bad=True, skip_note=None)
    assert seen == ["1.png", "4.png", "5.png", "6.png", "7.png"]
    assert np.array_equal(got.images.numpy(), plain(paths, skip_bad=True, skip_note=None).images.numpy())


@pytest.mark.parametrize("reuse_again", [True, False])
def test_a_stop_in_a_load_that_reuses_a_shifted_entry_keeps_only_its_decoded_rows(pool, tmp_path, monkeypatch,
                                                                                   reuse_again):
    """Files 1, 5, 6, 7 come from another list's entry (at its rows 0-3); 0, 2, 3 are decoded before the stop. The
    part holds those three (moved to its rows 0-2), not the entry's rows again, and the stop line counts them only."""
    paths, cache_dir = pool, tmp_path / "cache"
    other = [paths[i] for i in (1, 5, 6, 7)]
    load_images(other, SIZE, cache_dir, threads=1)
    counted_decoder(monkeypatch, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        load_images(paths, SIZE, cache_dir, threads=1, reuse=other)
    monkeypatch.undo()
    (part,) = parts(cache_dir)
    rows, record = trailer(part)
    assert record["rows"] == [0, 2, 3] and len(rows) == 3 * ROW
    assert "up to 3 of the 8 images decoded while decoding images" in cache_partial.kept_note()
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1, reuse=other if reuse_again else None)
    assert seen == (["4.png"] if reuse_again else ["1.png", "4.png", "5.png", "6.png", "7.png"])
    assert np.array_equal(got.images.numpy(), plain(paths).images.numpy())


def save(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values).save(path)


def test_a_stop_while_a_parts_rows_are_copied_keeps_their_16_bit_peaks(tmp_path, monkeypatch):
    """The peaks were added after the copy loop: a stop inside it kept row 0 with no peak, and the entry's bits16
    was None (no 16-bit warning on any hit)."""
    folder, cache_dir = tmp_path / "pool", tmp_path / "cache"
    folder.mkdir()
    ramp = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    paths = [folder / f"{i}.png" for i in range(4)]
    save(paths[0], (ramp * 60000).astype(np.uint16))
    for p in paths[1:]:
        save(p, (ramp * 255).astype(np.uint8))
    stopped_load(monkeypatch, paths, cache_dir, after=2)
    assert trailer(parts(cache_dir)[0])[1]["peaks"] == [60000, None]
    real = cache_partial._read

    class StopAtRow1:
        def __init__(self, images):
            self.images = images

        def __getitem__(self, row):
            if row == 1:
                raise KeyboardInterrupt
            return self.images[row]

    monkeypatch.setattr(cache_partial, "_read", lambda *a: (lambda got: (StopAtRow1(got[0]), got[1]))(real(*a)))
    with pytest.raises(KeyboardInterrupt):
        load_images(paths, SIZE, cache_dir, threads=1)
    monkeypatch.undo()
    record = trailer(parts(cache_dir)[0])[1]
    assert (record["rows"], record["peaks"]) == ([0], [60000])  # row 0 kept with its own peak
    load_images(paths, SIZE, cache_dir, threads=1)
    (meta,) = cache_dir.glob("*.json")
    assert json.loads(meta.read_text())["bits16"]["peak"] == 60000


def test_a_full_disk_keeps_the_part_where_deleting_it_would_not_make_room(pool, tmp_path, monkeypatch,
                                                                          capsys):
    """The part was deleted, the entry still did not fit, and every row was decoded again in memory."""
    paths, cache_dir = pool, tmp_path / "cache"
    stopped_load(monkeypatch, paths, cache_dir, after=2)
    (part,) = parts(cache_dir)
    before, nbytes = part.read_bytes(), 8 * ROW
    blocks = part.stat().st_blocks * 512
    assert blocks < nbytes  # the part's space alone is too little for the entry
    refused = room_for_one_entry(monkeypatch, cache_dir, capacity=0)
    free = nbytes - blocks - 1  # with the part's blocks, one byte short of the entry
    vfs = SimpleNamespace(f_bavail=free, f_bfree=free, f_frsize=1, f_blocks=1 << 40)  # root or not: the same
    monkeypatch.setattr(os, "statvfs", lambda where: vfs)
    capsys.readouterr()
    seen = counted_decoder(monkeypatch)
    got = load_images(paths, SIZE, cache_dir, threads=1)
    err = capsys.readouterr().err
    assert refused == [nbytes] and "ignoring" not in err and "could not write the image cache" in err, err
    assert seen == [f"{i}.png" for i in range(2, 8)]  # the part's two rows copied, not decoded again
    assert part.read_bytes() == before and not is_cached(paths, SIZE, cache_dir)
    assert np.array_equal(got.images.numpy(), plain(paths).images.numpy())


def test_the_ignored_part_note_counts_only_the_rows_decoded_again(pool, tmp_path, monkeypatch, capsys):
    """Rows 0 and 1 of the dropped part are still copied from another list's entry: 2 decoded again, not "all 8"."""
    paths, cache_dir = pool, tmp_path / "cache"
    other = paths[:2]
    load_images(other, SIZE, cache_dir, threads=1)
    stopped_load(monkeypatch, paths, cache_dir, after=4)
    used = sum(e.stat().st_size for e in os.scandir(cache_dir) if e.is_file())
    part_size = parts(cache_dir)[0].stat().st_size
    refused = room_for_one_entry(monkeypatch, cache_dir, capacity=used - part_size + 8 * ROW)
    capsys.readouterr()
    seen = counted_decoder(monkeypatch)
    load_images(paths, SIZE, cache_dir, threads=1, reuse=other)
    err = capsys.readouterr().err
    assert refused == [8 * ROW] and "no room for it beside the new entry; decoding its 2 images again" in err, err
    assert len(seen) == 6 and is_cached(paths, SIZE, cache_dir)


def test_a_large_keep_is_said_before_it_is_written(pool, tmp_path, monkeypatch, capsys):
    paths, cache_dir = pool, tmp_path / "cache"
    capsys.readouterr()
    stopped_load(monkeypatch, paths, cache_dir, after=3)
    assert "keeping" not in capsys.readouterr().err  # 2 KB: nothing to wait for
    monkeypatch.setattr(cache_words, "KEEP_NOTE_BYTES", 3 * ROW)
    stopped_load(monkeypatch, paths, cache_dir, after=1)  # the 3 kept rows copied, then 1 decoded
    err = capsys.readouterr().err
    assert "decoding images: keeping up to 4 decoded images in the image cache (0 MB)" in err, err
