"""Decoding one image file into the pixels the cache keeps: any PIL mode to 8-bit RGB (16-bit depths, float images,
transparency laid on a contrasting colour), EXIF orientation applied, resized and centre-cropped, with
decompression bombs and files that are no regular file refused.

Apart from data/decode_many.py (which decodes many files with threads) and data/cache.py (which keeps them in a
memory-mapped entry and reuses it) because this is the part that knows about image formats and nothing about the
cache.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from fewshot.data.roots import broken_link_words

# Refuse decompression bombs outright: images over Pillow's MAX_IMAGE_PIXELS (it only warns there, and raises at
# twice that). decode_resized checks the header's size itself, naming the file, so load_images silences Pillow's
# warning (no file name) while it decodes: once, in the calling thread, as warnings.catch_warnings() around each
# decode is not thread-safe before Python 3.14 (with decoding threads, some bombs were decoded and an "error" filter
# was left behind).
MAX_PIXELS = 89_478_485
# data.resize=auto pads a dataset whose median image's long side is more than this many times its short one: padding
# was measured to gain at 2.5:1 and was mixed at 1.5:1, nothing between (docs/recipes.md); 16:9 (1.78) stays cropped
FAR_FROM_SQUARE = 2.0
EXTREME_AREA = 16  # resized images over this many crops' area are cropped before resizing (decode_resized)
ImageFile.LOAD_TRUNCATED_IMAGES = False


def to_rgb_uint8(img: Image.Image, bit_depth: int | str = "auto", peaks: list[int] | None = None) -> Image.Image:
    """Any PIL mode (L, P, RGBA, CMYK, 16-bit, float) -> 8-bit RGB. ``bit_depth`` (data.bit_depth): the significant
    bits of 16-bit images, whose values are scaled from 0..2**bit_depth - 1 (auto: 0..65535); 12-bit data stored in
    16 bits came out dark, in 17 grey levels. A given depth holds for 32-bit images (I, F) too, whatever their
    values (float images in [0, 1] aside). ``peaks``: a 16-bit image's largest value is appended to it (the decode
    cache warns when a split's images use fewer bits than they are scaled from, or more than 16)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        key = _transparent_value(img)
        raw = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)  # NaN: black, quietly
        top = arr.max(initial=0)
        # 16-bit data (32-bit integer and float modes too where they hold more than 8 bits, or a depth is given: a
        # dark image of a 12-bit split, all under 256, came out 16x brighter than the rest; a float one of a 10-bit
        # split 4x)
        given = bit_depth != "auto" and (img.mode == "I" or (img.mode == "F" and top > 1.0))
        if img.mode.startswith("I;16") or top > 255 or given:
            hi = 65535.0 if bit_depth == "auto" else float(2 ** int(bit_depth) - 1)
            if peaks is not None:
                peaks.append(int(top))
        else:  # float images in [0, 1] (what numpy / scientific pipelines write) would otherwise come out black
            hi = 1.0 if img.mode == "F" and top <= 1.0 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
        if key is not None:  # a 16-bit PNG's tRNS value: the 8-bit copy has no info, so its alpha is made here
            img = Image.merge("LA", (img, Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8), mode="L")))
    if img.mode in ("P", "PA", "LA", "RGBA") or _transparent_value(img) is not None:
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, contrasting_background(img))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def _transparent_value(img: Image.Image) -> int | tuple[int, ...] | None:
    """The colour a PNG's (or PNM's) tRNS chunk makes transparent in a 1, L, I or RGB image (img.info's
    "transparency"), None where there is none or it does not fit the mode: dark ink on such a sheet decoded on
    black (blank), where the same drawing saved as LA or P was laid on white."""
    value = img.info.get("transparency")
    if img.mode == "RGB":
        fits = isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, int) for v in value)
    else:
        fits = img.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N") and isinstance(value, int)
    return value if fits and not isinstance(value, bool) else None


def contrasting_background(rgba: Image.Image) -> tuple[int, int, int, int]:
    """The colour to lay a transparent image on: black, unless what the image shows (its colours weighted by their
    opacity) is dark. Dark ink drawn on a transparent sheet (glyphs, sketches, icons: the shape lives in the alpha
    channel alone) came out black on black, a blank image, and a dataset of them trained at chance."""
    arr = np.asarray(rgba, dtype=np.float32)
    alpha = arr[..., 3] / 255.0
    shown = float(alpha.sum())
    if shown == 0.0:
        return (0, 0, 0, 255)
    brightness = float((arr[..., :3].mean(axis=-1) * alpha).sum()) / shown
    return (255, 255, 255, 255) if brightness < 128.0 else (0, 0, 0, 255)


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phone photos store "rotate me" there); malformed EXIF, which Pillow can
    raise on, leaves the image as stored rather than making a readable photo undecodable."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _dangling(path: Path) -> str:
    """Why an image that is a symbolic link cannot be opened: the target it names is missing, or a loop (in the
    words the layout checks use for a root or class folder)."""
    return f"a symbolic link {broken_link_words(path)}"


def decode_resized(path: Path, size: int, crop_pct: float = 1.0, bit_depth: int | str = "auto",
                   peaks: list[int] | None = None, resize: str = "crop") -> np.ndarray:
    """Open, convert to RGB, resize the short side to size/crop_pct, center-crop size x size; CHW uint8.
    ``bit_depth`` and ``peaks``: as to_rgb_uint8's. ``resize`` (data.resize): crop, pad (letterbox: the long side
    to size/crop_pct and the whole image kept, padded to a square: a 40x100 image lost 60 % of its rows), a
    fit.Fit (each dataset's crop or pad: data.resize=auto as commands apply it), or auto (this image alone padded
    where far from square: only for a direct call; a dataset is decided as a whole, fit.fit_of)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise ValueError(_dangling(path)) from None  # "[Errno 2] No such file or directory" named no link
        raise
    if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
        raise ValueError("not a regular file")
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit: only the pixel count is known
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        raise ValueError(f"image of {int(pixels[1]) if pixels else 2 * MAX_PIXELS:,} pixels exceeds the "
                         f"decompression-bomb limit of {MAX_PIXELS:,} pixels") from None
    with img:
        w, h = img.size
        if w * h > MAX_PIXELS:  # the header only: nothing is decoded yet
            raise ValueError(f"image of {w}x{h} pixels exceeds the decompression-bomb limit of {MAX_PIXELS:,} pixels")
        img.draft("RGB", (size, size))  # JPEG: decode at reduced scale when possible
        img = to_rgb_uint8(_upright(img), bit_depth, peaks)
    w, h = img.size
    if not isinstance(resize, str):  # a fit.Fit: each dataset's choice
        resize = resize.of(path)
    if resize == "pad" or (resize == "auto" and max(w, h) > FAR_FROM_SQUARE * min(w, h)):
        return np.asarray(letterbox(img, size, crop_pct), dtype=np.uint8).transpose(2, 0, 1)
    short = max(1, round(size / crop_pct))
    scale = short / min(w, h)
    nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    if nw * nh > EXTREME_AREA * size * size:
        # a 1x300000 strip resized whole is 37 x 11 million pixels (2 GB) to keep 37 x 37 of them: resize only the
        # source region the crop keeps. Ordinary images take the path below, so their cached pixels stay the same.
        box = (left / scale, top / scale, (left + size) / scale, (top + size) / scale)
        img = img.resize((size, size), Image.BILINEAR, box=box)
    else:
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BILINEAR)
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def letterbox(img: Image.Image, size: int, crop_pct: float = 1.0) -> Image.Image:
    """``img`` resized whole (its long side to size/crop_pct) and centred on a size x size square of its border's
    mean colour: the bars then carry no edge of their own (black bars on a white-background image drew one whose
    place gave the aspect ratio away). A square image comes out as the centre crop does, pixel for pixel: a side
    over ``size`` (crop_pct < 1) is cut as the crop cuts it, its odd pixel on the far side (review rev87 #4)."""
    long = max(1, round(size / crop_pct))
    w, h = img.size
    scale = long / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    arr = np.asarray(img)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).reshape(-1, 3)
    canvas = Image.new("RGB", (size, size), tuple(int(v) for v in np.rint(border.mean(axis=0))))
    canvas.paste(img, (_offset(size, nw), _offset(size, nh)))
    return canvas


def _offset(size: int, side: int) -> int:
    """Where a side of ``side`` pixels goes on a canvas of ``size``: centred, its extra pixel on the far side
    either way. (size - side) // 2 rounds a negative offset down, one pixel off the crop's left=(side-size)//2."""
    return (size - side) // 2 if side <= size else -((side - size) // 2)
