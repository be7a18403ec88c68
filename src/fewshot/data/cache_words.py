"""The words of the decode cache: the notes and warnings it prints (a large new entry, a cache it cannot write, no
home folder for one, 16-bit images that do not fit data.bit_depth, the rows of a stopped decode taken up again), most
said once per command, the error for images that do not fit in memory and the hint for files that cannot be decoded.

Apart from data/cache.py because these are text only, built from what the cache has already found: nothing here
reads, decodes or writes the cache.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from fewshot.errors import UserError, one_line, printable
from fewshot.process_state import said_once
from fewshot.train.distributed import launch_rank

_WARNED: set[str] = said_once(__name__, "_WARNED")


def _too_big(n: int, size: int, nbytes: int) -> UserError:
    return UserError(f"not enough memory for {n} images at {size}x{size} pixels ({nbytes / 1e9:.2f} GB); a smaller "
                     f"--img-size (model.img_size), fewer images or more memory (ulimit -v, the container's limit)")


FEW_BITS = 14  # with data.bit_depth auto, 16-bit images whose values all stay below 2**FEW_BITS are warned about

def warn_bit_depth(desc: str, sixteen: dict | None, bit_depth: int | str) -> None:
    """One warning (rank 0, once per message) when a split's 16-bit images do not fit data.bit_depth: with auto,
    values that all stay below 2**FEW_BITS (10-, 12- or 14-bit microscopy, medical or astronomy data in 16-bit
    files) decode dark and in few grey levels; with a number, larger values are clipped to white. Values over 65535
    (32-bit images) are clipped whatever the setting: auto, once advised for them, clips them the same, unwarned."""
    if sixteen is None or launch_rank() != 0:
        return
    peak, folder = sixteen["peak"], sixteen["folder"]
    if peak > 65535:
        message = (f"warning: {desc}: the 32-bit images in {folder} hold values up to {peak}, more than 16 bits "
                   f"(65535), the most any data.bit_depth (auto included) scales from: brighter pixels are clipped "
                   f"to white; save them as 16-bit images scaled to 0..65535 (or as 8-bit ones) to keep them")
    elif bit_depth == "auto":
        if not 0 < peak < 2 ** FEW_BITS:
            return
        bits = next(b for b in (8, 10, 12, 14) if peak < 2 ** b)  # a split's peak may sit below its data's depth
        message = (f"warning: {desc}: the 16-bit images in {folder} use at most {bits} bits (largest value {peak} of "
                   f"65535), so they decode dark, as values 0..{round(peak / 65535 * 255)} of 255; if they hold "
                   f"{bits}-bit data, add data.bit_depth={bits} to the train, pretrain, run or probe command "
                   f"(eval and predict take it from the run)")
    elif peak > 2 ** int(bit_depth) - 1:
        fits = f"data.bit_depth={next(b for b in (10, 12, 14, 16) if peak < 2 ** b)}"
        message = (f"warning: {desc}: 16-bit images in {folder} hold values up to {peak}, more than the "
                   f"{2 ** int(bit_depth) - 1} of data.bit_depth={bit_depth}: brighter pixels are clipped to white; "
                   f"give {fits} if they hold more bits")
    else:
        return
    if message not in _WARNED:  # `fewshot run` loads its pool once per round
        _WARNED.add(message)
        print(one_line(message), file=sys.stderr, flush=True)


def _warn_no_cache(cache_dir: Path, exc: OSError, nbytes: int) -> None:
    local_rank = (os.environ.get("LOCAL_RANK") or "0").strip()  # once per node (not RANK: a lone RANK=1 pod)
    if str(cache_dir) not in _WARNED and local_rank in ("", "0"):  # and once per folder
        _WARNED.add(str(cache_dir))
        full = exc.errno == errno.ENOSPC or "requested and" in str(exc)  # numpy's short write on a full disk
        world = os.environ.get("WORLD_SIZE", "").strip()  # under torchrun every process writes its own copy
        each = f" by each of the job's {world} processes" if world.isdigit() and int(world) > 1 else ""
        why = f"the disk is full ({nbytes / 1e6:.1f} MB needed{each})" if full else _fault(exc)
        if cache_dir.name == ".fewshot_cache" and os.access(cache_dir.parent, os.W_OK | os.X_OK):
            # a writable data root is where predict and eval cache, whatever XDG_CACHE_HOME says (advised here,
            # it changed nothing): only room there, or another folder for the commands that take one, helps
            where = (f"predict and eval cache only there while {cache_dir.parent} can be written: "
                     f"{'free some space on its disk' if full else 'fix that'} to cache them")
        else:
            where = ("predict and eval use ROOT/.fewshot_cache, else $XDG_CACHE_HOME/fewshot (~/.cache/fewshot): "
                     "XDG_CACHE_HOME=DIR chooses another")
        print(printable(f"warning: could not write the image cache in {cache_dir}: {why}; continuing "
                        f"without it (train, pretrain and run: data.cache_dir=DIR chooses another folder; {where})"),
              file=sys.stderr, flush=True)


def _fault(exc: OSError) -> str:
    """What went wrong with the cache folder: a file where it (or a folder above it) should be said only "[Errno 17]
    File exists", which named no file to move."""
    if isinstance(exc, FileExistsError) and exc.filename and not os.path.isdir(exc.filename):
        return f"{exc.filename} is a file, where the cache folder (or one above it) should be"
    return str(exc)


NOTE_MIN_BYTES = 50e6  # a new entry this large is announced (_note_new_entry); the few-shot splits stay quiet


def _gb_or_mb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.0f} MB"


def _note_new_entry(desc: str, n: int, size: int, cache_dir: Path, nbytes: int, max_gb: float | None) -> None:
    """Say where a large new entry goes and how much disk it takes (rank 0): a 100k-image pool at 224 px wrote
    15 GB beside the data without a word. A warm cache only maps its file, quietly."""
    if nbytes < NOTE_MIN_BYTES or launch_rank() != 0:
        return
    world = os.environ.get("WORLD_SIZE", "").strip()  # as _warn_no_cache: every process writes its own copy
    each = (f", {_gb_or_mb(nbytes * int(world))} while the job's {world} processes each decode a copy"
            if world.isdigit() and int(world) > 1 else "")
    hint = ""
    if f"noted:{cache_dir}" not in _WARNED:  # the settings once per folder (a first run writes the pool and splits)
        _WARNED.add(f"noted:{cache_dir}")
        cap = f"; data.cache_max_gb={max_gb:g} caps the folder" if max_gb else ""
        hint = f", reused by later commands; train, pretrain and run: data.cache_dir=DIR chooses another folder{cap}"
    print(one_line(f"note: {desc}: decoding {n:,} images at {size} px into {cache_dir} ({_gb_or_mb(nbytes)} on "
                   f"disk{each}{hint})"), file=sys.stderr, flush=True)


def _note_kept_part(desc: str, kept: int, n: int) -> None:
    """Say that a load starts from the rows an earlier, stopped decode of the same files kept (rank 0)."""
    if launch_rank() == 0:
        print(one_line(f"note: {desc}: {kept:,} of the {n:,} images come from an earlier decode of them that was "
                       f"stopped (kept in the image cache); the rest are decoded now"),
              file=sys.stderr, flush=True)


def _note_part_ignored(desc: str, part: Path, why: str, again: int | None = None) -> None:
    """Say that the rows a stopped decode kept in ``part`` cannot be used (rank 0): the load decodes ``again`` of
    them anew (None: as many as it kept, not known here). "all N images" was said where another entry still gave
    some of the rows (review rev105 #6)."""
    if launch_rank() == 0:
        them = "the images it kept" if again is None else f"its {again:,} image{'s' if again != 1 else ''}"
        print(printable(f"note: {desc}: ignoring {part}, the images kept from an earlier decode that was stopped: "
                        f"{why}; decoding {them} again"), file=sys.stderr, flush=True)


KEEP_NOTE_BYTES = 100e6  # a stop keeping this much is said first: moving and syncing it can take a while


def _note_keeping(desc: str, kept: int, nbytes: int) -> None:
    """Say, before a stop keeps ``kept`` rows of ``nbytes`` (cache_partial.keep_rows), why the exit waits: a stop at
    34% of a 15 GB pool moved and synced 5 GB within a Ctrl-C or a SIGTERM's grace period without a word (review
    rev105 #4). "Up to", and nothing said of a second Ctrl-C: said before the keep, which may fail; for a SIGTERM
    or a failure too; a second Ctrl-C within a second is ignored, one after the rename keeps them (review rev109
    #2). Said by every process that keeps (keep_rows asks cache_partial._keeps_here first: the first process of
    each node), not by rank 0 alone: another node's first process kept its rows without a word (review rev111 #3)."""
    if nbytes >= KEEP_NOTE_BYTES:
        print(one_line(f"note: {desc}: keeping up to {kept:,} decoded images in the image cache "
                       f"({_gb_or_mb(nbytes)}) for the next load of the same files; writing them can take a while"),
              file=sys.stderr, flush=True)


SKIP_HINT = ("(pass --skip-bad-images to skip these files and go on)",)



def _warn_no_home(root: str | Path) -> None:
    """user_cache_dir found no home folder for ``root``'s cache: said once per root, by rank 0."""
    if f"no-home:{root}" not in _WARNED and launch_rank() == 0:  # as the unwritable cache's
        _WARNED.add(f"no-home:{root}")
        print(printable(f"warning: no folder for the image cache: {root} cannot be written and there is no home "
                        f"folder (HOME unset, no passwd entry); continuing without it (train, pretrain and run: "
                        f"data.cache_dir=DIR chooses a folder)"), file=sys.stderr, flush=True)
