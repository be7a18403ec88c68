"""The image cache under memory pressure, against decompression bombs decoded by several threads, and its files.

A failed allocation is the machine's fault, not the file's: it used to be cached as a bad image for good. The
bomb limit depended on a race (warnings.catch_warnings() in each decoding thread), and the first build held the
whole [N, 3, S, S] array in memory instead of writing it into the memory-mapped cache file. That file needs
posix_fallocate (not on macOS or Windows), a unique temporary name and a folder that can be mapped for writing;
a large one is announced with its size and folder.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fewshot.data.cache as cache
import fewshot.data.cache_words as cache_words
import fewshot.data.decode_many as decode_many
from fewshot.data.cache import cache_key, load_images
from fewshot.data.decode import decode_resized
from fewshot.errors import DataLayoutError, UserError
from helpers.tiny import grey_pngs as images


def png_claiming(w: int, h: int) -> bytes:
    """A 1-bit PNG whose header claims w x h pixels, with almost no data (a bomb costs nothing to make)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))




def starving(monkeypatch, path: Path, times: int) -> list[int]:
    """decode_resized runs out of memory on ``path`` the first ``times`` times (numpy's error, a MemoryError)."""
    real, calls = decode_many.decode_resized, [0]

    def decode(p, *args):
        if Path(p) == path and calls[0] < times:
            calls[0] += 1
            raise MemoryError("Unable to allocate 618. MiB for an array with shape (9000, 9000) and data type float64")
        return real(p, *args)

    monkeypatch.setattr(decode_many, "decode_resized", decode)
    return calls


def test_a_file_that_ran_out_of_memory_among_threads_is_decoded_again_alone(tmp_path, monkeypatch):
    paths = images(tmp_path)
    starving(monkeypatch, paths[1], times=1)
    got = load_images(paths, 8, tmp_path / "cache", skip_bad=True, threads=2)
    assert bool(got.valid.all()) and got.bad == []
    assert np.array_equal(got.images[1].numpy(), decode_resized(paths[1], 8))
    meta = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert meta["bad"] == []


def test_out_of_memory_is_a_user_error_naming_the_file_and_is_not_cached(tmp_path, monkeypatch):
    paths = images(tmp_path)
    calls = starving(monkeypatch, paths[2], times=99)
    for skip_bad in (False, True):  # not "cannot be decoded", nor skipped: the file is fine
        with pytest.raises(UserError, match="out of memory while decoding") as err:
            load_images(paths, 8, tmp_path / "cache", skip_bad=skip_bad, threads=2)
        assert not isinstance(err.value, DataLayoutError)
        assert str(paths[2]) in str(err.value) and "(10x12 pixels)" in str(err.value)
    # nothing cached, no temporary file left: only the rows decoded before the failure, kept for the next load
    assert [p.name[20:] for p in (tmp_path / "cache").iterdir()] == [".part.u8"]
    calls[0] = 99  # memory to spare now
    got = load_images(paths, 8, tmp_path / "cache", threads=2)
    assert bool(got.valid.all())
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".json", ".u8"]  # the part gone with it


def test_a_memory_failure_cached_by_an_older_version_is_tried_again(tmp_path):
    paths = images(tmp_path)
    cache_dir = tmp_path / "cache"
    load_images(paths, 8, cache_dir, threads=1)
    meta = next(cache_dir.glob("*.json"))
    for why in ("Unable to allocate 618. MiB for an array with shape (9000, 9000) and data type float64",
                "MemoryError"):
        meta.write_text(json.dumps({"n": 3, "size": 8, "bad": [[str(paths[0]), why]]}))
        got = load_images(paths, 8, cache_dir, skip_bad=True, threads=1)
        assert bool(got.valid.all()) and got.bad == [], why


def test_bombs_decoded_by_threads_are_all_refused_and_warnings_are_untouched(tmp_path):
    """12000 x 12000 (144 M pixels) is over Pillow's warning limit and under its error limit: with threads, some
    used to be decoded as images, and an "error" filter was left in warnings.filters."""
    paths = []
    for i in range(48):
        p = tmp_path / f"bomb{i}.png"
        p.write_bytes(png_claiming(12000, 12000))
        paths.append(p)
    before, interval = list(warnings.filters), sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: the race showed on the first pass
    try:
        for _ in range(3):
            got = load_images(paths, 8, None, skip_bad=True, threads=8)
            assert not bool(got.valid.any())
            assert {why for _, why in got.bad} == {
                "image of 12000x12000 pixels exceeds the decompression-bomb limit of 89,478,485 pixels"}
            assert warnings.filters == before
    finally:
        sys.setswitchinterval(interval)


def test_pillows_bomb_warning_is_silenced_while_decoding_only(tmp_path):
    """A filter set at import silenced it for the whole process (over a user's -W error), and was gone under any
    catch_warnings() around the import (pytest's own): Pillow's warning then failed the decode under -W error."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(12000, 12000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as `python -W error` sets it
        before = list(warnings.filters)
        got = load_images([bomb], 8, None, skip_bad=True, threads=2)
        assert got.bad == [(str(bomb), "image of 12000x12000 pixels exceeds the decompression-bomb limit of "
                                       "89,478,485 pixels")]
        assert warnings.filters == before
        with pytest.raises(Image.DecompressionBombWarning):  # the user's filter holds again
            Image.open(bomb)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # decode_resized alone: Pillow's warns
def test_one_bomb_limit_in_every_message(tmp_path):
    """Pillow's errors gave 89,478,485 for one image and 178,956,970 for another, never the image's size."""
    mid, huge = tmp_path / "mid.png", tmp_path / "huge.png"
    mid.write_bytes(png_claiming(12000, 12000))
    huge.write_bytes(png_claiming(30000, 30000))
    with pytest.raises(ValueError, match=r"^image of 12000x12000 pixels exceeds the decompression-bomb limit of "
                                         r"89,478,485 pixels$"):
        decode_resized(mid, 8)
    with pytest.raises(ValueError, match=r"^image of 900,000,000 pixels exceeds the decompression-bomb limit of "
                                         r"89,478,485 pixels$"):
        decode_resized(huge, 8)


def test_a_png_with_a_huge_colour_profile_is_named_in_plain_words(tmp_path):
    p = tmp_path / "icc.png"
    Image.new("RGB", (8, 8)).save(p, icc_profile=b"\x00" * (2 * 2**20))
    _, why = decode_many._decode_one((p, 8, 1.0))
    assert "MAX_TEXT_CHUNK" not in why and "colour profile" in why and "1 MB" in why, why


def no_pool_sized_arrays(monkeypatch, shape):
    real = np.zeros

    def zeros(s, *args, **kwargs):
        if tuple(np.atleast_1d(s)) == shape:
            raise MemoryError(f"Unable to allocate the pool: {s}")
        return real(s, *args, **kwargs)

    monkeypatch.setattr(cache.np, "zeros", zeros)


def test_the_first_build_is_decoded_into_the_cache_file_not_an_array_in_memory(tmp_path, monkeypatch):
    paths = images(tmp_path)
    no_pool_sized_arrays(monkeypatch, (3, 3, 16, 16))
    cache_dir = tmp_path / "cache"
    got = load_images(paths, 16, cache_dir, threads=2)
    assert bool(got.valid.all())
    for i, p in enumerate(paths):
        assert np.array_equal(got.images[i].numpy(), decode_resized(p, 16))
    assert sorted(f.suffix for f in cache_dir.iterdir()) == [".json", ".u8"]  # no temporary file left
    got.images[0] += 1  # a caller's change to its images stays out of the cache
    again = load_images(paths, 16, cache_dir, threads=2)
    assert np.array_equal(again.images[0].numpy(), decode_resized(paths[0], 16))
    # without a cache folder the array must be in memory: a plain error naming the size, not a traceback
    with pytest.raises(UserError, match=r"not enough memory for 3 images at 16x16 pixels .* a smaller --img-size"):
        load_images(paths, 16, None)


def test_a_full_disk_at_the_first_build_decodes_into_memory_and_says_so(tmp_path, monkeypatch, capsys):
    paths = images(tmp_path)
    monkeypatch.setattr(cache_words, "_WARNED", set())

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", full)
    got = load_images(paths, 16, tmp_path / "cache", threads=2)
    assert bool(got.valid.all()) and list((tmp_path / "cache").iterdir()) == []
    assert "the disk is full (0.0 MB needed)" in capsys.readouterr().err


def test_a_stop_while_decoding_leaves_no_temporary_file_and_no_entry(tmp_path, monkeypatch):
    """Only the rows it decoded, kept as a part that is no entry (test_fGD_stopped_decode_kept)."""
    paths = images(tmp_path)

    def stop(results, **kwargs):
        yield next(iter(results))
        raise KeyboardInterrupt

    monkeypatch.setattr(decode_many, "track", stop)
    with pytest.raises(KeyboardInterrupt):
        load_images(paths, 16, tmp_path / "cache", threads=1)
    assert [p.name[20:] for p in (tmp_path / "cache").iterdir()] == [".part.u8"]


def test_a_cache_is_built_without_posix_fallocate(tmp_path, monkeypatch):
    """macOS and Windows have no os.posix_fallocate: every new cache was an internal error (AttributeError)."""
    paths = images(tmp_path)
    monkeypatch.delattr(cache.os, "posix_fallocate")
    cache_dir = tmp_path / "cache"
    got = load_images(paths, 16, cache_dir, threads=2)
    assert sorted(f.suffix for f in cache_dir.iterdir()) == [".json", ".u8"]
    for i, p in enumerate(paths):
        assert np.array_equal(got.images[i].numpy(), decode_resized(p, 16))


@pytest.mark.parametrize("error", [OSError(errno.ENODEV, "No such device"), ValueError("mmap failed")])
def test_a_folder_that_cannot_be_mapped_for_writing_still_gets_its_cache(tmp_path, monkeypatch, capsys, error):
    """Some FUSE and network mounts refuse a writable shared mapping: the cache was skipped (or the build crashed),
    where the older in-memory decode and plain write had worked."""
    paths = images(tmp_path)
    real = mmap.mmap

    def no_shared_writes(*args, access=mmap.ACCESS_DEFAULT, **kwargs):
        if access == mmap.ACCESS_WRITE:
            raise error
        return real(*args, access=access, **kwargs)

    monkeypatch.setattr(mmap, "mmap", no_shared_writes)
    cache_dir = tmp_path / "cache"
    got = load_images(paths, 16, cache_dir, threads=2)
    assert "warning" not in capsys.readouterr().err
    assert sorted(f.suffix for f in cache_dir.iterdir()) == [".json", ".u8"]
    monkeypatch.setattr(decode_many, "decode_resized", lambda *a: pytest.fail("decoded again: the cache was not used"))
    again = load_images(paths, 16, cache_dir, threads=2)
    for i, p in enumerate(paths):
        assert np.array_equal(again.images[i].numpy(), got.images[i].numpy())
        assert np.array_equal(got.images[i].numpy(), decode_resized(p, 16))


def test_another_hosts_temporary_file_of_the_same_pid_is_left_alone(tmp_path):
    """`KEY.tmp{pid}`: a process of another container or node with the same pid, building the same entry in a
    shared cache folder, had its file (open and mapped) emptied by this one's open, or renamed away."""
    paths = images(tmp_path)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    theirs = cache_dir / f"{cache_key(paths, 16, 1.0)}.tmp{os.getpid()}"
    theirs.write_bytes(b"\x07" * 2304)
    load_images(paths, 16, cache_dir, threads=1)
    assert theirs.read_bytes() == b"\x07" * 2304


def test_stale_temporary_files_are_deleted_and_others_kept(tmp_path):
    """A build killed (out of memory) leaves its full-size temporary file; no later build ever deleted it."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    key = "0123456789abcdef0123"
    stale = [cache_dir / f"{key}.k3_x9qz1.tmp", cache_dir / f"{key}.tmp4242"]  # this version's and the last one's
    # a build of the in-memory fallback writes its temporary file only at the end: hours old, and still decoding
    kept = [cache_dir / f"{key}.recent01.tmp", cache_dir / f"{key}.hours001.tmp", cache_dir / "notes.tmp",
            cache_dir / "mine.txt"]
    for f in stale + kept:
        f.write_bytes(b"x")
        if f.name != f"{key}.recent01.tmp":
            ago = os.path.getmtime(tmp_path) - (2 if f.name == f"{key}.hours001.tmp" else 25) * 3600
            os.utime(f, (ago, ago))
    load_images(images(tmp_path), 16, cache_dir, threads=1)  # a new entry, data.cache_max_gb unset
    assert not any(f.exists() for f in stale) and all(f.exists() for f in kept)


def test_a_large_new_entry_says_its_size_and_folder_once_and_a_warm_or_small_one_is_quiet(tmp_path, capsys,
                                                                                            monkeypatch):
    """A 1000-image pool at 224 px wrote 171 MB into ROOT/.fewshot_cache without a word (100k images: 15 GB)."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    paths = images(tmp_path) * 120  # 360 entries at 224 px: 54 MB, over NOTE_MIN_BYTES
    cache_dir = tmp_path / "data" / ".fewshot_cache"
    load_images(paths, 224, cache_dir, desc="loading unlabeled pool", threads=2, max_gb=20.0)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"note: loading unlabeled pool: decoding 360 images at 224 px into {cache_dir} "
                               f"(54 MB on disk, ")
    assert "data.cache_dir=DIR" in notes[0] and "data.cache_max_gb=20 caps the folder" in notes[0]
    load_images(paths, 224, cache_dir, desc="loading unlabeled pool", threads=2, max_gb=20.0)  # warm
    assert "note:" not in capsys.readouterr().err
    load_images(paths[:3], 224, cache_dir, threads=2)  # a new entry of 0.5 MB (a few-shot split)
    assert "note:" not in capsys.readouterr().err
    load_images(paths[3:], 224, cache_dir, threads=2)  # another large one in that folder: the settings once
    assert capsys.readouterr().err.splitlines()[0] == (f"note: decoding images: decoding 357 images at 224 px into "
                                                       f"{cache_dir} (54 MB on disk)")
    monkeypatch.setenv("WORLD_SIZE", "4")  # under torchrun: rank 0 only, and the copies each process decodes
    monkeypatch.setenv("RANK", "0")  # torchrun sets it (a hand launch without it is refused)
    load_images(paths, 224, tmp_path / "other", threads=2)
    assert "(54 MB on disk, 217 MB while the job's 4 processes each decode a copy, " in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    load_images(paths, 224, tmp_path / "third", threads=2)
    assert "note:" not in capsys.readouterr().err


def test_two_runs_listing_their_pool_subsets_together_keep_both(tmp_path, monkeypatch):
    """pool_decode_limit's record of the decoded subsets was read, extended and written back unlocked: two runs of
    one pool started together (a cluster user's seeds) each wrote their own list, and one size was lost."""
    import json
    import threading
    import time

    from fewshot.data import cache

    record = tmp_path / "cache" / "entry.seed0.subsets.json"
    write = cache.atomic_write_text

    def slow_write(path, text):  # the other run reads the list while this one is between its read and write
        time.sleep(0.3)
        write(path, text)

    monkeypatch.setattr(cache, "atomic_write_text", slow_write)
    runs = [threading.Thread(target=cache.add_to_subsets_record, args=(record, n)) for n in (595, 4489)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(10)
    assert json.loads(record.read_text()) == [595, 4489]
    cache.add_to_subsets_record(record, 595)  # a size listed again is listed once
    assert json.loads(record.read_text()) == [595, 4489]
