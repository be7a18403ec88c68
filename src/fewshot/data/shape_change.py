"""predict's and eval's note where a dataset's images are shaped otherwise than the run's decode of it suits: a run
that letterboxed 3:1 images scored 35 % on them and 13 % on square ones, and one that cropped square images cut two
thirds off 3:1 ones, without a word either way (hunt hBT #5). From the headers only, as the start-up note."""

from __future__ import annotations

from fewshot.config.recorded import shape_record
from fewshot.data.aspect import (FAR_FROM_SQUARE, crop_loss, dataset_mode, header_sizes, kept_side, median_shape,
                                 ratio, sample_paths, too_thin)

ADVICE = "predict images shaped as the training ones, or train a run on images like these"


def training_shapes(cfg: dict) -> dict:
    """Each dataset's median training image (width, height) as the run recorded it when it started (SHAPE_RECORD):
    the decode mode alone does not say it (a run cropped 3:1 images given data.resize=crop, and auto crops a 50:1
    strip too thin to letterbox; the note then called the run's own images shaped otherwise, review rev91 #1). Not
    re-read from data.root: that cost seconds a call, printed that root's layout warnings and described whatever
    it holds now (review rev94 #2). A run from before the record: none, and the note goes by data.resize."""
    return shape_record(cfg)


def shape_change_notes(infos, fit, resize: str, img_size: int, trained: dict | None = None) -> list[str]:
    """One line per dataset whose sampled images the run decodes otherwise than data.resize=auto would now
    (``fit``: fit.fit_of's), where that is because they are shaped otherwise than its training images
    (``trained``: training_shapes'): a cropped dataset, trained near square, given far-from-square images; a padded
    one given near-square (or far thinner) images. None under data.resize=pad, where the user chose the decode."""
    if resize == "pad":
        return []
    lines = []
    for info in infos:
        paths = sample_paths(info)
        read = header_sizes(paths)
        shape = median_shape(read)
        if shape is None:
            continue
        ran = fit if isinstance(fit, str) else fit.of(paths[0])
        then = (trained or {}).get(info.name)
        w, h = shape
        typical = f"{info.name}: these images are {w}x{h} px typically"
        if ran == "crop" and ratio(shape) > FAR_FROM_SQUARE and _cropped_otherwise(read, then, resize, img_size):
            lost, where = crop_loss(shape)
            trained_as = f" ({then[0]}x{then[1]} px typically when it trained)" if then else ""
            lines.append(f"{typical}, far from square, and the run cropped this dataset's images{trained_as}, so "
                         f"each is cut to a centred square as well, dropping {lost:.0f} % of its {where}; where the "
                         f"object is not in the middle the model never sees it. Crop them around the object "
                         f"yourself, or {ADVICE}.")
        elif ran == "pad" and dataset_mode(read, img_size) == "crop":
            if too_thin(shape, img_size):
                k = kept_side(shape, img_size)
                kept = f"{img_size}x{k}" if w > h else f"{k}x{img_size}"
                what = f"letterboxed as the run's were, each keeps only {kept} px of the {img_size} px square"
            else:
                what = ("at most 2:1, where the run's were far from square: letterboxed as those were, each fills "
                        "the square instead of a band of it, so the model sees its objects at another scale")
            lines.append(f"{typical}, {what}. Expect lower accuracy: {ADVICE}.")
    return lines


def _cropped_otherwise(read, then, resize: str, img_size: int) -> bool:
    """Whether far-from-square images given to a cropping run differ from its training images: these trained near
    square where known; else, as the run's setting tells, under auto only where auto would letterbox these (its
    crop was then for near-square images, or for ones too thin to letterbox at this size)."""
    if then is not None:
        return ratio(then) <= FAR_FROM_SQUARE
    return resize == "auto" and dataset_mode(read, img_size) == "pad"
