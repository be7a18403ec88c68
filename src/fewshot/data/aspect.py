"""The start-up note of `fewshot run` and `fewshot train` where a dataset's images are far from square: cut to a
square (data.resize=crop), a 40x100 image lost 60 % of its rows without a word, and where the object sat
off-centre the model saw almost nothing while the closing warning blamed the budget (hunt hBQ #1); letterboxed
(auto), the image is whole but smaller, which the user should know as well."""

from __future__ import annotations

import statistics

from fewshot.data.decode import FAR_FROM_SQUARE  # median long / short side above which the note is given
from fewshot.data.warn_once import warn_once

SAMPLE = 20  # train images per dataset whose header is read (as run_checks.images_size reads them)


def median_shape(info, n: int = SAMPLE) -> tuple[int, int] | None:
    """The (width, height) of the image with the median long/short ratio among a dataset's first ``n`` train
    images, headers only; None where none can be read (the image loader reports those)."""
    from PIL import Image

    shapes = []
    for p, _ in info.train[:n]:
        try:
            with Image.open(p) as im:
                shapes.append(im.size)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    if not shapes:
        return None
    ratio = statistics.median_low(max(w, h) / max(1, min(w, h)) for w, h in shapes)
    return next(s for s in shapes if max(s) / max(1, min(s)) == ratio)


def crop_notes(infos, resize: str) -> list[str]:
    """One line per dataset whose median image is far from square, saying what data.resize does to it (none for
    pad: the user chose it)."""
    if resize == "pad":
        return []
    lines = []
    for info in infos:
        shape = median_shape(info)
        if shape is None or max(shape) / max(1, min(shape)) <= FAR_FROM_SQUARE:
            continue
        w, h = shape
        lost = 100 * (1 - min(w, h) / max(w, h))
        where = "rows" if h > w else "columns"
        shape = f"{info.name}: its images are far from square ({w}x{h} px is typical)"
        if resize == "crop":
            lines.append(f"{shape}, and data.resize=crop cuts each to a centred square, dropping {lost:.0f} % of its "
                         f"{where}; where the object is not in the middle the model never sees it. data.resize=auto "
                         f"keeps the whole image (letterboxed; docs/recipes.md compares the two).")
        else:
            lines.append(f"{shape}: data.resize=auto letterboxes them, whole, rather than crop {lost:.0f} % of "
                         f"their {where} away; data.resize=crop to crop them instead.")
    return lines


def note_far_from_square(cfg: dict, infos) -> None:
    """Say crop_notes once per command (rank 0)."""
    warn_once(crop_notes(infos, cfg["data"].get("resize", "auto")), "note")
