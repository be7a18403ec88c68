"""The unlabeled pool's files: which folders hold it (--unlabeled folders, ROOT/unlabeled/<dataset>, the train
images standing in, loose images of unknown source), scanned once while its folders stay unchanged, without the
data root's val and test images; read by MoCo pretraining, self-training and FixMatch alike."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from fewshot.data.image_files import has_images, is_image
from fewshot.data.layout import real_paths
from fewshot.data.names import grouped_names
from fewshot.data.pool_scan import find_unlabeled_images
from fewshot.data.roots import list_datasets
from fewshot.data.warn_once import recorded, warn_once
from fewshot.errors import DataLayoutError, UserError


def pool_paths(cfg: dict, infos) -> tuple[list[Path], str]:
    paths, _, source, _ = pool_with_sources(cfg, infos)
    return paths, source


# the last pool found: inputs -> (its folders' stamp, (paths, ids, source, stand-in ids), its warnings)
_POOL_MEMO: dict = {}
STAMP_SETTLE_S = 2.0  # a folder changed more recently may change again within its timestamp's granularity


def _folders_stamp(root: Path, pool_folders: list[Path]) -> tuple | None:
    """The root, its folders (with a dataset's misplaced unlabeled/ folder) and every folder below the pool folders
    (links not followed), each with its inode and mtime: adding, removing or renaming a file changes its folder's
    mtime. None when one changed within STAMP_SETTLE_S (a second change in the same clock tick would go unseen).
    Listing only the folders costs a tenth of the scan."""
    try:  # hidden folders are no datasets; ROOT/.fewshot_cache changes with every cache write (review)
        shallow = [root, *(entry.path for entry in os.scandir(root) if entry.is_dir() and entry.name[:1] != ".")]
    except OSError:
        return None
    # ROOT/<dataset>/unlabeled, a misplaced pool warn_misplaced_pool names while it holds images: emptying it left the
    # stamp as it was, and a later command replayed the warning (review rev70)
    # with its sub-folders: the warning counts images at any depth (review rev72)
    shallow += [dirpath for folder in shallow[1:] if os.path.isdir(inside := os.path.join(folder, "unlabeled"))
                for dirpath, _, _ in os.walk(inside)]
    linked: list[str] = []

    def deep():
        for folder in pool_folders:
            for dirpath, dirnames, _ in os.walk(folder):
                if dirpath == os.fspath(folder):  # ROOT/unlabeled/<dataset> as a link is scanned through
                    linked.extend(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
                yield dirpath

    stamp, limit = [], time.time_ns() - int(STAMP_SETTLE_S * 1e9)
    for folder in itertools.chain(shallow, deep()):
        if linked:  # the scan follows such a link, os.walk does not: changes behind it would go unseen
            return None
        try:
            st = os.stat(folder)
        except OSError:
            return None
        if st.st_mtime_ns > limit:
            return None
        stamp.append((os.fspath(folder), st.st_ino, st.st_mtime_ns))
    return tuple(stamp)


def pool_with_sources(cfg: dict, infos) -> tuple[list[Path], list[int], str, list[int]]:
    """The pool (see _pool_with_sources), scanned once per process while its folders are unchanged: `fewshot run`
    asks for it 3-6 times (start-up checks, MoCo, every self-training round), 60 s each on a 100k-file pool.
    The scan's warnings are kept with it and said again (once per command, warn_once) where it is reused: a later
    command from a notebook said none of them (a pool that is a file, a misplaced pool folder, val images left out).
    (paths, ids, source, stand-in ids), always the four: a flag that dropped the last made its type a bare tuple."""
    d = cfg["data"]
    root = Path(d["root"])
    folders = d["unlabeled"] if isinstance(d["unlabeled"], list) else [d["unlabeled"]] if d["unlabeled"] else []
    key = (str(root), tuple(str(f) for f in folders), tuple(infos))
    stamp = _folders_stamp(root, [Path(f) for f in folders] or [root / "unlabeled"])
    hit = _POOL_MEMO.get(key)
    if stamp is not None and hit is not None and hit[0] == stamp:
        paths, ids, source, standing = hit[1]
        paths, ids, standing = list(paths), list(ids), list(standing)
        for lines, kind in hit[2]:
            warn_once(lines, kind)
    else:
        with recorded([]) as said:
            paths, ids, source, standing = _pool_with_sources(cfg, infos)
        _POOL_MEMO.clear()  # one pool at a time: a 100k-file list is tens of MB
        if stamp is not None:
            _POOL_MEMO[key] = (stamp, (list(paths), list(ids), source, list(standing)), said)
    return paths, ids, source, standing


def _pool_with_sources(cfg: dict, infos) -> tuple[list[Path], list[int], str, list[int]]:
    """The unlabeled pool: --unlabeled folders; else ROOT/unlabeled/<dataset>; else train images; plus the
    images under ROOT/unlabeled/ outside any dataset's folder (loose files, other sub-folders), of unknown source.

    Also returns each image's dataset index (-1 when unknown: from --unlabeled folders, or ROOT/unlabeled/
    outside the datasets' folders; self-training routes those by the teacher's most probable class), and the
    indices of the datasets whose train images stand in (self-training leaves those out: they are labelled).
    """
    d = cfg["data"]
    root = Path(d["root"])
    if d["unlabeled"]:
        folders = d["unlabeled"] if isinstance(d["unlabeled"], list) else [d["unlabeled"]]
        paths = given_pool_images(folders, root)
        # what the user typed: pretrain and run take --unlabeled (the MoCo stage, `_task: moco`, is theirs alone);
        # `fewshot train` has no such flag, and its start line named one (data.unlabeled=DIR there)
        typed = ("--unlabeled folder(s)" if cfg.get("_task") == "moco"
                 else "data.unlabeled folder(s) (`fewshot run --unlabeled`)")
        return paths, [-1] * len(paths), f"{len(distinct_folders(folders))} {typed}", []
    pool = root / "unlabeled"
    if os.path.lexists(pool) and not pool.is_dir():  # a file there: the train images stood in without a word
        what = "a broken symbolic link" if pool.is_symlink() and not pool.exists() else "a file"
        warn_once([f"{pool} is {what}, not a folder: no unlabeled pool is read from it (MoCo falls back to the "
                   f"train images; self-training and FixMatch find no pool). Move it away and put the pool's "
                   f"images in a folder {pool}/<dataset>/, or give a folder of them with --unlabeled DIR"])
    paths, ids, sources, stand_ins = [], [], [], []
    names = {info.name for info in infos} | set(_datasets_or_none(root))
    for index, info in enumerate(infos):
        folder = root / "unlabeled" / info.name
        found, held_out_only = [], False
        if folder.is_dir() and _pool_holds_images(folder):  # hidden files (.thumbnails/, ._IMG.png) do not count
            found, left_out = without_held_out(find_unlabeled_images([folder]), root)
            if left_out:
                warn_once([f"leaving out {left_out} val/test image(s) of the data root linked from {folder} (val "
                           f"picks the best checkpoint, test judges the run)" + ("" if found else
                           f"; it holds no other image, so {info.name} has no pool of its own, as with an empty pool "
                           f"folder")], "note")
            held_out_only = not found  # as an empty pool folder: "0 images ... lower --batch-size" helped nothing
        if found:
            sources.append((info.name, ": unlabeled/"))
        else:
            # No pool for this dataset: its labelled training images stand in (labels unused).
            found = [p for p, _ in info.train]
            sources.append((info.name, ": train images"))
            stand_ins.append(index)
            if not held_out_only:  # its note said why
                warn_misplaced_pool(root, info.name, names)
        paths += found
        ids += [index] * len(found)
    # datasets whose pool comes from the same place share it: "a: train images; b: train images; ..." 12 times
    said = [who + words for who, words in grouped_names(sources)]
    unsorted = unsorted_pool_images(root, known=paths)
    if unsorted:
        paths += unsorted
        ids += [-1] * len(unsorted)
        said.append(f"{len(unsorted)} images of unknown source: unlabeled/ outside the datasets' folders")
    return paths, ids, "; ".join(said), stand_ins


def _pool_holds_images(folder: Path) -> bool:
    """has_images for a dataset's pool folder, with the folders that cannot be listed named (DataLayoutError, as
    find_unlabeled_images names them) where no image was found: os.walk passed them over, an unreadable pool was
    "holds no images", and the train images silently took its place."""
    unreadable: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable.append):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(is_image(Path(f)) for f in filenames):
            return True  # the pool is read: find_unlabeled_images names any folder of it that cannot be listed
    if unreadable:
        raise DataLayoutError([f"{exc.filename}: cannot list the folder ({exc.strerror or exc})" for exc in unreadable])
    return False


def warn_misplaced_pool(root: Path, name: str, datasets=()) -> None:
    """A dataset without images in ROOT/unlabeled/<name>/ whose pool lies where a user may well have put it: inside
    the dataset's own folder (never read: the run said only "no unlabeled pool"), under a folder name that differs
    in case (read as images of unknown source, silently), or behind symlinked folders in its own pool folder.
    ``datasets``: the root's dataset names; a folder named exactly after one is that dataset's pool, not misplaced
    (with datasets `fashion` and `Fashion`, unlabeled/fashion was said to belong to Fashion)."""
    own = root / "unlabeled" / name
    if own.is_dir():  # there, but without an image: its train images stand in, which went unsaid
        warn_once([_imageless_pool_note(own, name)], "note")
    inside = root / name / "unlabeled"
    if inside.is_dir() and has_images(inside):
        warn_once([f"{inside} is not read: a dataset's unlabeled pool belongs in {root / 'unlabeled' / name}/ "
                   f"(move the folder there to use its images)"])
    try:  # the exact name is the pool folder itself (it may hold no image): "rename digits to digits" was said
        near = [p for p in (root / "unlabeled").iterdir()
                if p.is_dir() and p.name != name and p.name not in datasets and p.name.casefold() == name.casefold()]
    except OSError:
        return
    for folder in near:
        warn_once([f"{folder} differs from the dataset name '{name}' only in case: its images count as images of "
                   f"unknown source; rename it to {root / 'unlabeled' / name} to make them {name}'s pool"])


def linked_folders(folder: Path) -> list[str]:
    """The symlinked folders at any depth below ``folder``, hidden ones aside. The pool scan does not follow them
    (find_unlabeled_images: a link to / or to a test split would pull those in); only a pool folder that is itself
    a link (ROOT/unlabeled/<name>, an --unlabeled folder) is read through."""
    links: list[str] = []
    for dirpath, dirnames, _ in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        links += [os.path.join(dirpath, d) for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
    return links


def _imageless_pool_note(folder: Path, name: str | None) -> str:
    """Why a pool folder without images adds nothing: a folder of symlinked sub-folders (ROOT/unlabeled/digits/more
    -> /elsewhere) lost its 111 images without a word. ``name``: the dataset whose train images stand in (None: a
    folder of images of unknown source)."""
    instead = f"{name}'s train images stand in as its pool" if name else "it adds nothing to the pool"
    links = linked_folders(folder)
    if not links:
        return f"{folder} holds no images: {instead}"
    shown = ", ".join(links[:3]) + (f" and {len(links) - 3} more" if len(links) > 3 else "")
    return (f"{folder} holds no images of its own, only {len(links)} symlinked folder(s), which the pool scan does "
            f"not follow: {shown}; {instead}. Move the images into {folder}, or make {folder} itself the link")


def distinct_folders(folders: list) -> list[str]:
    """The --unlabeled folders as the scan reads them, each real folder once: `--unlabeled P P --unlabeled P/`
    was said as 3 folders."""
    return list(dict.fromkeys(os.path.realpath(f) for f in folders))


def given_pool_images(folders: list, root: Path) -> list[Path]:
    """The images under the --unlabeled folders, each file once (the same folder given twice, or one inside
    another, counted its images twice), without the val and test images of the data root: val drives the kNN
    score that picks best.pt and test is what the run is judged on (``--unlabeled ROOT`` took both)."""
    kept, left_out = without_held_out(find_unlabeled_images(folders), root)
    if left_out:
        note = f"{left_out} val/test image(s) of the data root {root} under the --unlabeled folders"
        if not kept:
            raise UserError(f"the --unlabeled folders hold only {left_out} val/test image(s) of the data root {root}; "
                            f"the pool must not hold the images that score the run. Give folders of unlabeled images.")
        warn_once([f"leaving out {note} (val picks the best checkpoint, test judges the run)"], "note")
    return kept


def without_held_out(found: list[Path], root: Path) -> tuple[list[Path], int]:
    """``found`` without repeats (by real file) and without the data root's val and test images, with the count
    left out. A linked file counts as its target: a pool of links to test images put the test split into
    MoCo, the pseudo-labels and FixMatch (only the links' folders were resolved). Copies are not detected (decoding the
    splits again at the pool's size and crop to compare them cost every start-up seconds; review rev71)."""
    held_out = [os.path.realpath(Path(root) / name / split) for name in _datasets_or_none(root)
                for split in ("val", "test")]
    scoring: dict[str, bool] = {}  # real folder -> inside a val or test split (checked once per folder)
    seen: set[str] = set()
    kept, left_out = [], 0
    for path, real in zip(found, real_paths(found)):
        if real in seen:
            continue
        seen.add(real)
        folder = os.path.dirname(real)
        if folder not in scoring:
            scoring[folder] = any(_inside(folder, held) for held in held_out)
        if scoring[folder]:
            left_out += 1
        else:
            kept.append(path)
    return kept, left_out


def _inside(path: str, folder: str) -> bool:
    """Path.is_relative_to for real (absolute, normalised) paths as strings."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _datasets_or_none(root: Path) -> list[str]:
    try:
        return list_datasets(root)
    except UserError:  # no readable root: nothing to leave out (the labelled splits fail on their own)
        return []


def unsorted_pool_images(root: Path, known: list[Path] = ()) -> list[Path]:
    """Images in ROOT/unlabeled/ that no dataset's folder holds: loose files and sub-folders not named after a
    dataset of the root (a pool laid out as ROOT/unlabeled/*.png used to be ignored without a word). A folder named
    after a dataset that is not trained on (`--datasets`) stays that dataset's. Empty folders are passed over; a
    file that is one of ``known`` or that lies in a dataset's own folder (reached through a symlink) is left out,
    so no image is pseudo-labelled twice and no test image joins the pool. Loose files that are not images by
    their extension (IMG_001.HEIC) are said once, as the pool's folders say theirs (system files aside)."""
    from fewshot.data.image_files import is_image, is_unread_file, unread_files_note

    pool = root / "unlabeled"
    if not pool.is_dir():
        return []
    datasets = set(list_datasets(root))
    found: list[Path] = []
    try:
        with os.scandir(pool) as it:
            listed = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise UserError(f"cannot list the unlabeled folder '{pool}': {exc.strerror or exc}.") from None
    unread = [e.name for e in listed if is_unread_file(e)]  # dropped without a word, where a pool folder's are said
    if unread:
        warn_once([unread_files_note(f"the unlabeled pool {pool}", "directly in it", unread)])
    for entry in (pool / e.name for e in listed):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name not in datasets and has_images(entry):  # empty folders, lost+found: nothing
            found += find_unlabeled_images([entry])
        elif entry.is_dir() and entry.name not in datasets and linked_folders(entry):
            warn_once([_imageless_pool_note(entry, None)], "note")
        elif entry.is_file() and is_image(entry):
            found.append(entry)
    if not found:  # the usual layout: resolving every known file (30 s for 100k) would be wasted
        return []
    seen = set(real_paths(known))
    dataset_dirs = [os.path.realpath(folder) for name in datasets for folder in (root / name, pool / name)]
    kept = []
    for path, real in zip(found, real_paths(found)):
        if real not in seen and not any(_inside(real, d) for d in dataset_dirs):
            seen.add(real)
            kept.append(path)
    return kept
