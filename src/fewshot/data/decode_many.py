"""Decoding a list of image files into one uint8 array [N, 3, S, S] with threads: each failure kept with its reason
(a file out of memory tried again alone, after the others), the 16-bit images' largest value and each image's digest
gathered as they decode, and the rate of it timed for a cold cache.

Apart from data/decode.py (one file's pixels: formats, bit depths, sizes) because this part knows about many files
and threads, and apart from data/cache.py (which decides where the array lives and when it is reused) because it
knows nothing about the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from fewshot.data.decode import decode_resized
from fewshot.errors import UserError
from fewshot.progress import track

OUT_OF_MEMORY = "out of memory"  # _decode_one's reason for a failed allocation: the machine's fault, never cached
# _decode_one's reason for a file listed at the start and gone when read: no bad image (it was called "undecodable")
VANISHED = "removed while the command ran (listed at its start, no longer there when read)"
PNG_METADATA = (f"its PNG metadata (a colour profile or text) decompresses to more than Pillow allows "
                f"({PngImagePlugin.MAX_TEXT_CHUNK // 2**20} MB a chunk, {PngImagePlugin.MAX_TEXT_MEMORY // 2**20} "
                f"MB in all); save the image again without it")


def _decode_one(args):
    """(path, size, crop_pct[, bit_depth, peaks, resize]) -> (CHW uint8 or None, None or why it failed)."""
    path, size, crop_pct, *more = args
    try:
        return decode_resized(path, size, crop_pct, *more), None
    except MemoryError:  # numpy's "Unable to allocate ...", Pillow's allocations: a busy machine, not a bad file
        return None, OUT_OF_MEMORY
    except Exception as exc:  # every other decoding failure is a user-data problem, reported with its path
        reason = str(exc).strip() or type(exc).__name__
        if isinstance(exc, PermissionError):
            reason = "permission denied"
        elif isinstance(exc, FileNotFoundError) and not os.path.lexists(path):  # a dangling link keeps its reason
            reason = VANISHED
        elif isinstance(exc, OSError) and reason.startswith("out of memory"):  # a Pillow codec's allocation
            return None, OUT_OF_MEMORY
        elif "MAX_TEXT_CHUNK" in reason or "MAX_TEXT_MEMORY" in reason:  # Pillow's names, not what the file has
            reason = PNG_METADATA
        return None, reason.splitlines()[0][:200]


def _decode_peak(args):
    """(path, size, crop_pct, bit_depth, digest, resize) -> _decode_one's pair, the file's largest value if it is
    16-bit, and (``digest`` True) its image_digest, taken in the decoding thread."""
    path, size, crop_pct, bit_depth, digest, resize = args
    peaks: list[int] = []
    arr, err = _decode_one((path, size, crop_pct, bit_depth, peaks, resize))
    return (arr, err, (peaks[0] if peaks and err is None else None),
            image_digest(arr) if digest and err is None else None)


def image_digest(image: np.ndarray) -> str | None:
    """A digest of a decoded (channels-first) image's pixels, to find the same image in two splits
    (sets.warn_split_copies) without reading any file again; None for a blank image (each channel one value
    throughout: black, or a solid colour such as red), whose copies tell nothing."""
    image = np.ascontiguousarray(image)
    if image.size == 0:
        return None
    planes = image.reshape(image.shape[0] if image.ndim > 2 else 1, -1)
    if bool((planes == planes[:, :1]).all()):
        return None
    return hashlib.sha1(image, usedforsecurity=False).hexdigest()[:16]  # the fastest of hashlib's here (SHA-NI)


def blank_digest(image) -> str:
    """What the ranks compare of a blank image, whose image_digest is None: its colour (one value per channel). Both
    were '-', so a black image on one node and a white one under its name on another trained without a word; only
    here, as warn_split_copies tells nothing by blank copies."""
    return "blank:" + np.asarray(image[:, 0, 0], dtype=np.uint8).tobytes().hex()


def kept_fingerprint(known: list, images, kept, rows=None) -> str:
    """digests_fingerprint of the images at the positions ``kept`` (decodable ones: a None digest is a blank image),
    each a blank one by its colour (blank_digest, read from ``images``, at ``rows[i]`` where rows are given)."""
    def digest(i: int) -> str:
        return known[i] if known[i] is not None else blank_digest(images[i if rows is None else int(rows[i])])

    return digests_fingerprint(digest(i) for i in kept)


def digests_fingerprint(digests) -> str:
    """One hash over image_digest's of a list of images, in their order (None: a blank or bad image): what torchrun's
    ranks compare of the pixels they decoded (distributed.check_same_image_counts), without hashing any image again."""
    h = hashlib.sha1(usedforsecurity=False)
    for digest in digests:
        h.update(f"{digest or '-'}\n".encode())
    return h.hexdigest()[:16]


def _out_of_memory(path: Path, threads: int) -> UserError:
    """A file that ran out of memory even when decoded on its own: the machine's limit, not a bad file."""
    dims = ""
    with contextlib.suppress(Exception), Image.open(path) as img:
        dims = f" ({img.size[0]}x{img.size[1]} pixels)"
    alone = f"even alone (not one of {threads} decoding at a time)" if threads > 1 else "with one decoding thread"
    return UserError(f"out of memory while decoding {path}{dims}, {alone}: the file is not at fault, this process "
                     f"may not use enough memory for it; free memory, raise the limit (ulimit -v, the container's "
                     f"limit) or shrink the image")


def decode_seconds_per_image(paths: list[Path], size: int, crop_pct: float = 1.0, threads: int | None = None,
                             bit_depth: int | str = "auto", resize: str = "crop") -> float:
    """Seconds per file of decoding ``paths`` as load_images does (its threads), into memory and not cached: the
    rate at which a cold cache would be filled. Bad files count as decoded (they are reported by load_images)."""
    if not paths:
        return 0.0
    out = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _decode_into(out, [Path(p) for p in paths], size, crop_pct, "timing the decoding",
                     threads or min(8, os.cpu_count() or 1), bit_depth, resize=resize)
    return (time.perf_counter() - t0) / len(paths)


def _decode_into(out: np.ndarray, paths: list[Path], size: int, crop_pct: float, desc: str, threads: int,
                 bit_depth: int | str = "auto", digests: list | None = None,
                 resize: str = "crop", done=None) -> tuple[list[tuple[int, str]], dict | None]:
    """Decode ``paths`` into ``out`` with ``threads`` threads; returns the bad files (by index) with their reasons,
    and the 16-bit images' largest value with their common folder (None: no 16-bit image), gathered as they decode.
    Files that ran out of memory are decoded again one at a time after the others, never reported as bad.
    ``digests``: filled with each image's image_digest (None for a bad file). ``resize``: data.resize. ``done``:
    called as done(i, its 16-bit peak or None) once row i is written, so that a stopped decode keeps its rows."""
    bad: list[tuple[int, str]] = []
    starved: list[int] = []
    peak, folders = -1, set()

    def seen(i: int, value: int | None, digest: str | None) -> None:
        nonlocal peak
        if digests is not None:
            digests[i] = digest
        if value is not None:
            peak = max(peak, value)
            folders.add(os.path.dirname(os.path.abspath(paths[i])))
        if done is not None:
            done(i, value)

    pool = ThreadPoolExecutor(threads)
    try:
        hashed = digests is not None
        results = pool.map(_decode_peak, ((p, size, crop_pct, bit_depth, hashed, resize) for p in paths), chunksize=64)
        for i, (arr, err, value, digest) in enumerate(track(results, desc=desc, total=len(paths))):
            if err is None:
                out[i] = arr
                seen(i, value, digest)
            elif err == OUT_OF_MEMORY:
                starved.append(i)
            else:
                bad.append((i, err))
    except BaseException:  # a stop (SIGTERM, Ctrl-C) must not wait for every queued decode of a large pool
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    for i in starved:  # the other decodes' memory is free now
        arr, err, value, digest = _decode_peak((paths[i], size, crop_pct, bit_depth, digests is not None, resize))
        if err == OUT_OF_MEMORY:
            raise _out_of_memory(paths[i], threads)
        if err is None:
            out[i] = arr
            seen(i, value, digest)
        else:
            bad.append((str(paths[i]), err))
    return bad, ({"peak": peak, "folder": os.path.commonpath(sorted(folders))} if folders else None)
