"""The start-up note of `fewshot run` and `fewshot train` where a dataset's images are far from square: cut to a
square (data.resize=crop), a 40x100 image lost 60 % of its rows without a word, and where the object sat
off-centre the model saw almost nothing while the closing warning blamed the budget (hunt hBQ #1); letterboxed
(auto), the image is whole but smaller, which the user should know as well. Also the headers both it and
`fewshot run`'s image-size choice read (header_sizes), and data.resize=auto's choice per dataset (dataset_mode)."""

from __future__ import annotations

import statistics

from fewshot.data.decode import FAR_FROM_SQUARE  # median long / short side above which auto pads a dataset
from fewshot.data.warn_once import warn_once

SAMPLE = 20  # images per dataset whose header is read
EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)  # EXIF orientations that turn the image a quarter: the decode swaps its width and height


def sample_paths(info, n: int = SAMPLE) -> list:
    """The first ``n`` train images of a dataset; a prediction's dataset, which has test images only, its test's."""
    train = [p for p, _ in getattr(info, "train", ())[:n]]
    return train or [p for p, _ in getattr(info, "val", ())[:n]] or [p for _, p in getattr(info, "test", ())[:n]]


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


def dataset_mode(sizes: list[tuple[int, int]]) -> str:
    """data.resize=auto's choice for a whole dataset (``sizes``: its sampled headers): pad where its median image is
    more than FAR_FROM_SQUARE times as long as wide, else crop. Decided per image, a dataset mixing 4:3 and 16:9
    photos had two geometries (some letterboxed, a smaller object) and the bars became a cue (review rev87)."""
    shape = median_shape(sizes)
    return "pad" if shape is not None and ratio(shape) > FAR_FROM_SQUARE else "crop"


def crop_notes(infos, resize: str, modes: dict | None = None, sizes: dict | None = None) -> list[str]:
    """One line per dataset whose median image is far from square, saying what data.resize does to it (none for
    pad: the user chose it). ``modes``: auto's choice per dataset name, as recorded (fit.settle_fit); ``sizes``:
    each dataset's header_sizes where they were read already."""
    if resize == "pad":
        return []
    lines = []
    for info in infos:
        known = (sizes or {}).get(info.name)
        shape = median_shape(known if known is not None else header_sizes(sample_paths(info)))
        if shape is None or ratio(shape) <= FAR_FROM_SQUARE:
            continue
        if resize == "auto" and modes is not None and modes.get(info.name, "pad") != "pad":
            continue  # recorded as cropped by an earlier start of this run: the images decode as then
        w, h = shape
        lost = 100 * (1 - min(w, h) / max(w, h))
        where = "rows" if h > w else "columns"
        shape = f"{info.name}: its images are far from square ({w}x{h} px is typical)"
        if resize == "crop":
            lines.append(f"{shape}, and data.resize=crop cuts each to a centred square, dropping {lost:.0f} % of its "
                         f"{where}; where the object is not in the middle the model never sees it. data.resize=auto "
                         f"keeps the whole image (letterboxed; docs/recipes.md compares the two).")
        else:
            lines.append(f"{shape}: data.resize=auto letterboxes them all, whole, rather than crop {lost:.0f} % of "
                         f"their {where} away; data.resize=crop to crop them instead.")
    return lines


def note_far_from_square(cfg: dict, infos, modes: dict | None = None, sizes: dict | None = None) -> None:
    """Say crop_notes once per command (rank 0)."""
    warn_once(crop_notes(infos, cfg["data"].get("resize", "auto"), modes, sizes), "note")
