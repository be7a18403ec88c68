"""predict's and eval's note where a dataset's images are shaped otherwise than the run's decode of it suits: a run
that letterboxed 3:1 images scored 35 % on them and 13 % on square ones, and one that cropped square images cut two
thirds off 3:1 ones, without a word either way (hunt hBT #5). From the headers only, as the start-up note."""

from __future__ import annotations

from fewshot.data.aspect import (FAR_FROM_SQUARE, crop_loss, dataset_mode, header_sizes, kept_side, median_shape,
                                 ratio, sample_paths, too_thin)

ADVICE = "predict images shaped as the training ones, or train a run on images like these"


def shape_change_notes(infos, fit, resize: str, img_size: int) -> list[str]:
    """One line per dataset whose sampled images data.resize=auto would decode otherwise than the run decodes them
    (``fit``: fit.fit_of's): a padded dataset given near-square (or far thinner) images, a cropped one given
    far-from-square images. None under data.resize=pad, which does not say what shape the run trained on."""
    if resize == "pad":
        return []
    lines = []
    for info in infos:
        paths = sample_paths(info)
        shape = median_shape(header_sizes(paths))
        if shape is None:
            continue
        ran = fit if isinstance(fit, str) else fit.of(paths[0])
        w, h = shape
        typical = f"{info.name}: these images are {w}x{h} px typically"
        if ran == "crop" and ratio(shape) > FAR_FROM_SQUARE:
            lost, where = crop_loss(shape)
            lines.append(f"{typical}, far from square, and the run cropped this dataset's images (near square when it "
                         f"trained), so each is cut to a centred square as well, dropping {lost:.0f} % of its {where}; "
                         f"where the object is not in the middle the model never sees it. Crop them around the "
                         f"object yourself, or {ADVICE}.")
        elif ran == "pad" and dataset_mode(header_sizes(paths), img_size) == "crop":
            if too_thin(shape, img_size):
                k = kept_side(shape, img_size)
                kept = f"{img_size}x{k}" if w > h else f"{k}x{img_size}"
                what = f"letterboxed as the run's were, each keeps only {kept} px of the {img_size} px square"
            else:
                what = ("at most 2:1, where the run's were far from square: letterboxed as those were, each fills "
                        "the square instead of a band of it, so the model sees its objects at another scale")
            lines.append(f"{typical}, {what}. Expect lower accuracy: {ADVICE}.")
    return lines
