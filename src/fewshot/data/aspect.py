"""The start-up note of `fewshot run` and `fewshot train` where a dataset's images are far from square: cut to a
square (data.resize=crop), a 40x100 image lost 60 % of its rows without a word, and where the object sat
off-centre the model saw almost nothing while the closing warning blamed the budget (hunt hBQ #1); letterboxed
(auto), the image is whole but smaller, which the user should know as well. Also the headers both it and
`fewshot run`'s image-size choice read (header_sizes), and data.resize=auto's choice per dataset (dataset_mode)."""

from __future__ import annotations

import statistics

from fewshot.data.decode import FAR_FROM_SQUARE  # median long / short side above which auto pads a dataset
from fewshot.data.warn_once import warn_once

SAMPLE = 32  # images per dataset whose header is read, spread over its train list (sample_paths)
# auto pads a far-from-square dataset only where the letterbox keeps at least this many pixels of its median image's
# short side at the run's size: a 50:1 strip at 32 px kept one row of content on a canvas of its own border colour
# (hunt hBT #2); a CNN's stem downsamples 4x, so under 4 px the content is less than one row of its first feature map
MIN_PADDED_SIDE = 4
MANY_FAR = 0.25  # the share of far-from-square images in a cropped dataset from which the note names them
EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)  # EXIF orientations that turn the image a quarter: the decode swaps its width and height


def sample_paths(info, n: int = SAMPLE) -> list:
    """``n`` train images of a dataset, evenly spaced over its list; a prediction's dataset, which has test images
    only, its test's. The list is sorted by class: its first 20 were the first two classes' (hunt hBT #1)."""
    train = [p for p, _ in getattr(info, "train", ())]
    return _spread(train or [p for p, _ in getattr(info, "val", ())] or [p for _, p in getattr(info, "test", ())], n)


def _spread(items: list, n: int) -> list:
    return items if len(items) <= n else [items[i * len(items) // n] for i in range(n)]


def header_sizes(paths) -> list[tuple[int, int]]:
    """Each readable image's (width, height) as decoded (EXIF orientation applied: a portrait phone photo is stored
    landscape), from its header only; unreadable files are left out (the image loader reports those). Read once a
    command: the size choice, auto's choice and the note ask for the same files."""
    key = tuple(str(p) for p in paths)
    if key not in _READ:
        if len(_READ) >= 64:  # a long-lived process (tests) that met many roots
            _READ.clear()
        _READ[key] = _read_sizes(paths)
    return list(_READ[key])


_READ: dict = {}


def _read_sizes(paths) -> list[tuple[int, int]]:
    from PIL import Image

    sizes = []
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
                try:
                    turned = im.getexif().get(EXIF_ORIENTATION) in TURNED
                except Exception:  # malformed EXIF: the decode leaves such an image as stored (decode._upright)
                    turned = False
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        sizes.append((h, w) if turned else (w, h))
    return sizes


def ratio(shape: tuple[int, int]) -> float:
    return max(shape) / max(1, min(shape))


def median_shape(sizes: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The (width, height) with the median long/short ratio among ``sizes``; None where there are none."""
    if not sizes:
        return None
    middle = statistics.median_low(ratio(s) for s in sizes)
    return next(s for s in sizes if ratio(s) == middle)


def kept_side(shape: tuple[int, int], size: int) -> int:
    """The pixels of ``shape``'s short side that a letterbox at ``size`` keeps (its long side scaled to ``size``)."""
    return max(1, round(size * min(shape) / max(1, max(shape))))


def too_thin(shape: tuple[int, int], size: int | None) -> bool:
    """Whether the letterbox at ``size`` (None: not known yet) keeps fewer than MIN_PADDED_SIDE px of ``shape``."""
    return size is not None and kept_side(shape, size) < MIN_PADDED_SIDE


def dataset_mode(sizes: list[tuple[int, int]], img_size: int | None = None) -> str:
    """data.resize=auto's choice for a whole dataset (``sizes``: its sampled headers): pad where its median image is
    more than FAR_FROM_SQUARE times as long as wide and the letterbox at ``img_size`` keeps MIN_PADDED_SIDE px of its
    short side, else crop. Decided per image, a dataset mixing 4:3 and 16:9 photos had two geometries (some
    letterboxed, a smaller object) and the bars became a cue (review rev87)."""
    shape = median_shape(sizes)
    return "pad" if shape is not None and ratio(shape) > FAR_FROM_SQUARE and not too_thin(shape, img_size) else "crop"


def crop_loss(shape: tuple[int, int]) -> tuple[float, str]:
    """The % of ``shape``'s long side a centred square crop drops, and which lines those are."""
    w, h = shape
    return 100 * (1 - min(w, h) / max(w, h)), "rows" if h > w else "columns"


def thicker_size(shape: tuple[int, int]) -> int:
    """The smallest image size at which the letterbox keeps MIN_PADDED_SIDE px of ``shape``'s short side."""
    return -(-MIN_PADDED_SIDE * max(shape) // max(1, min(shape)))


def crop_notes(infos, resize: str, modes: dict | None = None, sizes: dict | None = None,
               img_size: int | None = None) -> list[str]:
    """One line per dataset whose median image is far from square, saying what data.resize does to it (under pad
    only where the letterbox keeps too few pixels: the user chose it), or whose images are cropped though many of
    them are far from square. ``modes``: auto's choice per dataset name, as recorded (fit.settle_fit); ``sizes``:
    each dataset's header_sizes where they were read already; ``img_size``: the run's image size."""
    lines = []
    for info in infos:
        known = (sizes or {}).get(info.name)
        read = known if known is not None else header_sizes(sample_paths(info))
        shape = median_shape(read)
        if shape is None:
            continue
        mode = resize if resize != "auto" else (modes or {}).get(info.name) or dataset_mode(read, img_size)
        if ratio(shape) <= FAR_FROM_SQUARE:
            line = _many_far_note(info.name, read, resize) if mode == "crop" else None
        elif resize == "auto" and mode == "crop" and not too_thin(shape, img_size):
            line = None  # recorded as cropped by an earlier start of this run: the images decode as then
        else:
            line = _far_note(info.name, shape, resize, mode, img_size)
        if line:
            lines.append(line)
    return lines


def _far_note(name: str, shape: tuple[int, int], resize: str, mode: str, img_size: int | None) -> str | None:
    w, h = shape
    lost, where = crop_loss(shape)
    typical = f"{name}: its images are far from square ({w}x{h} px is typical)"
    thin = too_thin(shape, img_size)
    if thin:
        k = kept_side(shape, img_size)
        kept = f"{img_size}x{k}" if w > h else f"{k}x{img_size}"
        bigger = f"--img-size {thicker_size(shape)} (or more) keeps {MIN_PADDED_SIDE} px"
        if mode == "pad":
            return (f"{typical}, and data.resize=pad letterboxes each into {kept} px of the {img_size} px square "
                    f"(the rest is border colour): too thin to show much. {bigger}; data.resize=crop keeps a centred "
                    f"square at full size instead, dropping {lost:.0f} % of the {where}.")
        chose = "data.resize=auto crops" if resize == "auto" else "data.resize=crop cuts"
        return (f"{typical}, and {chose} each to a centred square, dropping {lost:.0f} % of its {where}: letterboxed "
                f"at {img_size} px it would keep only {kept} px. {bigger} and lets auto letterbox them "
                f"(data.resize=pad forces it); where the object is not in the middle, crop the images around it.")
    if mode == "pad":
        if resize == "pad":
            return None  # the user chose it, and enough is kept
        k = kept_side(shape, img_size) if img_size else None
        kept = f"{img_size}x{k}" if w > h else f"{k}x{img_size}"
        each = f"{kept} px of the {img_size} px square" if k else "the square, its long side scaled to it"
        return (f"{typical}: data.resize=auto letterboxes them (each whole, scaled into {each}; the rest is border "
                f"colour) rather than crop {lost:.0f} % of their {where} away; data.resize=crop to crop them instead.")
    return (f"{typical}, and data.resize=crop cuts each to a centred square, dropping {lost:.0f} % of its {where}; "
            f"where the object is not in the middle the model never sees it. data.resize=auto keeps the whole image "
            f"(letterboxed; docs/recipes.md compares the two).")


def _many_far_note(name: str, read: list[tuple[int, int]], resize: str) -> str | None:
    """A cropped dataset whose median image is near square but MANY_FAR of whose images are far from it: a 50/50
    mix of 96x32 and 32x32 images cropped two thirds of half its images without a word (hunt hBT #1)."""
    far = [s for s in read if ratio(s) > FAR_FROM_SQUARE]
    if not far or len(far) < MANY_FAR * len(read):
        return None
    lost, where = crop_loss(median_shape(far))
    w, h = median_shape(far)
    why = ("data.resize=crop cuts" if resize == "crop" else
           "data.resize=auto, which decides by the median image (near square here), crops")
    return (f"{name}: {len(far)} of the {len(read)} images sampled are far from square ({w}x{h} px is typical of "
            f"them), and {why} each to a centred square, dropping {lost:.0f} % of its {where}. data.resize=pad "
            f"keeps them whole (letterboxed; the square ones decode as now).")


def note_far_from_square(cfg: dict, infos, modes: dict | None = None, sizes: dict | None = None) -> None:
    """Say crop_notes once per command (rank 0)."""
    size = (cfg.get("model") or {}).get("img_size")
    warn_once(crop_notes(infos, cfg["data"].get("resize", "auto"), modes, sizes, size), "note")
