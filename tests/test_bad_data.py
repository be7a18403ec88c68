"""Bad data: every kind of broken or odd file a user's folder can hold.

- odd but valid images (CMYK, 16-bit, 32-bit int, float, palette with/without transparency, RGBA, LA,
  1-bit, GIF/BMP/TIFF/WebP/PPM, a PNG named .jpg) decode to 8-bit RGB;
- broken ones (zero bytes, truncated PNG/JPEG, text or random bytes under an image extension, a header
  claiming 20000x20000 pixels, an image over a lowered decompression-bomb limit, dangling and looping
  symlinks, a FIFO, unreadable files and folders, non-UTF-8 names) make `fewshot train` fail before
  training with exit 2 and a list naming every one, or with --skip-bad-images be skipped and listed
  (stderr and RUN/skipped_images.json);
- property-based (hypothesis): over generated folder trees, scanning and loading never raise anything
  but the documented UserError subclasses, and a file is reported bad exactly when its bytes are.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import warnings
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
import torch

import fewshot.data.cache as cache
import fewshot.data.cache_words as cache_words
import fewshot.data.decode as decode
from fewshot.data.cache import load_images
from fewshot.data.decode import decode_resized
from fewshot.data.layout import scan_root
from fewshot.data.pool_scan import find_unlabeled_images
from fewshot.errors import DataLayoutError, UserError
from helpers.tiny import build_digits
from helpers.checks import run_main


@pytest.fixture(scope="module")
def base_root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("bad-data"))


@pytest.fixture
def root(base_root, tmp_path):
    """A private copy (no image cache) that the test may damage."""
    return Path(shutil.copytree(base_root, tmp_path / "root", ignore=shutil.ignore_patterns(".fewshot_cache"),
                                symlinks=True))


def train_argv(root: Path, out: Path, *extra) -> list:
    return ["train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.ema=false",
            "train.threads=1", *extra]


# ------------------------------------------------------------------------------ file makers


def png_bytes(w: int = 12, h: int = 10, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb costs nothing to make)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def odd_images(folder: Path) -> dict[str, Path]:
    """Valid images in modes and formats other than 8-bit RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    made = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        img.save(folder / name, **kw)
        made[name] = folder / name

    save("cmyk.jpg", rgb.convert("CMYK"), format="JPEG")
    save("cmyk.tif", rgb.convert("CMYK"), format="TIFF")
    save("gray16.png", Image.fromarray((np.arange(480, dtype=np.uint16).reshape(20, 24) * 130)))
    save("gray16.tif", Image.fromarray((np.arange(480, dtype=np.uint16).reshape(20, 24) * 130)), format="TIFF")
    save("int32.tif", Image.fromarray(np.arange(480, dtype=np.int32).reshape(20, 24) * 100), format="TIFF")
    save("float.tif", Image.fromarray(np.linspace(0, 1, 480, dtype=np.float32).reshape(20, 24)), format="TIFF")
    save("palette.png", rgb.convert("P"))
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    save("palette_alpha.png", pal, transparency=0)
    save("rgba.png", rgb.convert("RGBA"))
    save("la.png", rgb.convert("LA"))
    save("bilevel.png", rgb.convert("1"))
    save("anim.gif", rgb.convert("P"), save_all=True, append_images=[rgb.convert("P").rotate(90)])
    save("bitmap.bmp", rgb)
    save("portable.ppm", rgb)
    save("progressive.jpg", rgb, format="JPEG", progressive=True)
    with contextlib.suppress(OSError, KeyError, ValueError):  # WebP support is optional in Pillow builds
        save("lossy.webp", rgb.convert("RGBA"), format="WEBP")
    (folder / "png_named.jpg").write_bytes(png_bytes(9, 9))
    made["png_named.jpg"] = folder / "png_named.jpg"
    return made


def break_class_folder(folder: Path) -> list[Path]:
    """Every kind of bad file in one class folder; returns the paths that must be reported."""
    good = png_bytes(12, 10)
    jpg = io.BytesIO()
    Image.open(io.BytesIO(good)).save(jpg, format="JPEG")
    bad = {
        "zero.png": b"",
        "truncated.png": good[: len(good) // 2],
        "truncated.jpg": jpg.getvalue()[:120],
        "text.jpg": b"name,label\nfoo,1\n",
        "random.webp": bytes(np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8)),
        "bomb.png": png_header_only(20000, 20000),
    }
    paths = []
    for name, data in bad.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    (folder / "dangling.png").symlink_to(folder / "does-not-exist.png")
    (folder / "self_loop.png").symlink_to("self_loop.png")  # ELOOP
    (folder / "loop_a.jpg").symlink_to("loop_b.jpg")
    (folder / "loop_b.jpg").symlink_to("loop_a.jpg")
    paths += [folder / n for n in ("dangling.png", "self_loop.png", "loop_a.jpg", "loop_b.jpg")]
    non_utf8 = folder / os.fsdecode(b"bad-\xff\xfe-name.png")
    non_utf8.write_bytes(b"\x00garbage")
    paths.append(non_utf8)
    # harmless oddities: ignored, never reported as bad, never hang
    (folder / "dir_loop").symlink_to(".")  # a folder symlink loop inside a class folder
    (folder / "folder.png").mkdir()  # a folder with an image name
    os.mkfifo(folder / "fifo.png")  # opening it would block
    (folder / "notes.txt").write_text("not an image, not an image extension")
    return paths


# ------------------------------------------------------------------------------ valid odd images


def test_odd_modes_and_formats_decode_to_rgb(tmp_path):
    made = odd_images(tmp_path / "odd")
    assert len(made) >= 16
    for name, path in made.items():
        arr = decode_resized(path, 16)
        assert arr.shape == (3, 16, 16) and arr.dtype == np.uint8, name
    # 16-bit values are scaled, not clipped: the brightest pixel of a 0..62270 ramp is near white
    assert decode_resized(made["gray16.png"], 16).max() > 200
    # alpha is composited on black: a fully transparent pixel is black, not its hidden colour
    img = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    img.save(tmp_path / "clear.png")
    assert decode_resized(tmp_path / "clear.png", 8).max() == 0


@pytest.mark.parametrize("ink, background", [(0, 255), (255, 0)])
def test_ink_drawn_on_a_transparent_sheet_stays_visible(tmp_path, ink, background):
    """A glyph whose shape lives in the alpha channel alone (black ink, transparent elsewhere) decoded to a blank
    black image, and a dataset of them trained at chance: dark content is laid on white, light content on black."""
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[..., :3] = ink
    arr[4:12, 6:10, 3] = 255  # the stroke: opaque; elsewhere fully transparent
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "glyph.png")
    out = decode_resized(tmp_path / "glyph.png", 16)
    assert out[:, 8, 8].tolist() == [ink] * 3 and out[:, 0, 0].tolist() == [background] * 3


def test_float_images_in_the_unit_range_are_not_black_and_jfif_files_are_images(root, tmp_path):
    """A float TIFF holding 0..1 (what numpy pipelines write) used to decode to black (divided by 255); a
    `.jfif` file (a JPEG, as browsers save them) was passed over in train/ and refused in test/."""
    gray = np.asarray(Image.open(sorted((root / "digits" / "train" / "3").glob("*.png"))[0]).convert("L"),
                      dtype=np.float32)
    Image.fromarray(gray / 255.0, mode="F").save(tmp_path / "unit.tif")
    Image.fromarray(gray, mode="F").save(tmp_path / "byte.tif")
    unit, byte = decode_resized(tmp_path / "unit.tif", 16), decode_resized(tmp_path / "byte.tif", 16)
    assert byte.max() > 200 and np.abs(unit.astype(int) - byte.astype(int)).max() <= 1
    nan = gray / 255.0
    nan[: len(nan) // 4] = np.nan  # a float TIFF with NaNs printed numpy's "invalid value encountered in cast" with a source line
    Image.fromarray(nan, mode="F").save(tmp_path / "nan.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = decode_resized(tmp_path / "nan.tif", 16)
    assert got[:, :2].max() == 0 and np.abs(got[:, 8:].astype(int) - unit[:, 8:].astype(int)).max() <= 1
    train = root / "digits" / "train" / "3"
    Image.open(sorted(train.glob("*.png"))[0]).convert("RGB").save(train / "web photo.jfif", format="JPEG")
    test = root / "digits" / "test"
    Image.open(sorted(test.glob("*.png"))[0]).convert("RGB").save(test / "999.jfif", format="JPEG")
    info = scan_root(root, ["digits"], splits=("train", "test"))[0]
    assert train / "web photo.jfif" in [p for p, _ in info.train]
    assert ("999", test / "999.jfif") in info.test


def test_odd_images_train_without_skip(root, tmp_path):
    made = odd_images(root / "digits" / "train" / "3")
    rc, out, err = run_main(*train_argv(root, tmp_path / "run"))
    assert rc == 0, err
    assert f"{40 + len(made)} train / 30 val images" in out
    assert "skipping" not in err and not (tmp_path / "run" / "skipped_images.json").exists()


# ------------------------------------------------------------------------------ broken files


def test_train_fails_before_training_listing_every_bad_file(root, tmp_path):
    """A real process: exit 2, one message naming all 12 bad files (the non-UTF-8 name escaped), no traceback."""
    bad = break_class_folder(root / "digits" / "train" / "2")
    bad_val = root / "digits" / "val" / "5" / "0.png"
    bad_val.write_bytes(b"")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fewshot", *[str(a) for a in train_argv(root, run)]],
                          capture_output=True, timeout=300)
    err = proc.stderr.decode("utf-8", "backslashreplace")
    assert proc.returncode == 2, err
    assert "Traceback" not in err and "fewshot train: error: the data layout has 12 problem(s)" in err, err
    assert err.rstrip().endswith("(pass --skip-bad-images to skip these files and go on)")  # advice, not counted
    for p in bad + [bad_val]:
        shown = str(p).encode("utf-8", "backslashreplace").decode()
        assert shown in err, (shown, err)
    assert "exceeds the decompression-bomb limit of 89,478,485 pixels" in err
    assert "a symbolic link (to self_loop.png) that goes round a loop of links" in err
    problems = err[err.index("fewshot train: error:"):]  # sub-folders are named in a warning before it (not read)
    assert "fifo.png" not in err and "notes.txt" not in problems  # a file that is not an image: a warning
    assert "dir_loop" not in problems and "folder.png" not in problems
    assert not (run / "checkpoints").exists() and not (run / "log.jsonl").exists()


def test_skip_bad_images_trains_and_lists_them(root, tmp_path):
    bad = break_class_folder(root / "digits" / "train" / "2")
    rc, out, err = run_main(*train_argv(root, tmp_path / "run", "--skip-bad-images"))
    assert rc == 0, err
    assert "40 train / 30 val images" in out  # every good image kept, every bad one left out
    assert f"warning: skipping {len(bad)} undecodable image(s) (--skip-bad-images)" in err
    listed = json.loads((tmp_path / "run" / "skipped_images.json").read_text())
    assert sorted(x["path"] for x in listed) == sorted(str(p) for p in bad)
    assert all(x["reason"] for x in listed)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_lowered_decompression_bomb_limit(root, tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "MAX_PIXELS", 100)  # every 8x8 digit (64 px) passes; a 12x10 image does not
    big = root / "digits" / "train" / "7" / "big.png"
    big.write_bytes(png_bytes(12, 10))
    rc, _, err = run_main(*train_argv(root, tmp_path / "run"))
    assert rc == 2 and str(big) in err and "image of 12x10 pixels exceeds the decompression-bomb limit" in err, err


def test_unreadable_file_is_reported(root, tmp_path, monkeypatch):
    """chmod cannot stop root, so the denial is simulated at the open() the decoder makes."""
    locked = root / "digits" / "train" / "1" / "0.png"
    real_open = Image.open

    def guarded_open(fp, *a, **kw):
        if isinstance(fp, (str, os.PathLike)) and Path(fp) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(fp))
        return real_open(fp, *a, **kw)

    monkeypatch.setattr(Image, "open", guarded_open)
    rc, _, err = run_main(*train_argv(root, tmp_path / "run"))
    assert rc == 2 and f"{locked}: cannot be decoded as an image (permission denied)" in err, err
    rc, _, err = run_main(*train_argv(root, tmp_path / "run2", "--skip-bad-images"))
    assert rc == 0 and str(locked) in err


def test_unreadable_folders_are_reported_not_raised(root, tmp_path, monkeypatch):
    """A class folder and an unlabeled sub-folder that cannot be listed: named problems, exit 2."""
    locked_class = root / "digits" / "train" / "4"
    locked_pool = root / "unlabeled" / "digits"
    real_iterdir, real_scandir = Path.iterdir, os.scandir

    def iterdir(self):
        if self == locked_class:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    def scandir(path="."):  # the data scan lists with os.scandir (entry types without a system call a file)
        if Path(os.fsdecode(path)) in (locked_pool, locked_class):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataLayoutError) as exc:
        scan_root(root)
    assert f"{locked_class}: cannot list the folder (Permission denied)" in exc.value.problems
    with pytest.raises(DataLayoutError, match="cannot list the folder"):
        find_unlabeled_images([root / "unlabeled"])
    rc, _, err = run_main(*train_argv(root, tmp_path / "run"))
    assert rc == 2 and str(locked_class) in err and "Traceback" not in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 000 does not stop root from reading, so "
                    "this real-permission variant cannot fail here; the same code paths are covered by the "
                    "two simulated-denial tests above")
def test_unreadable_by_real_permissions(root, tmp_path):
    locked_file = root / "digits" / "train" / "1" / "0.png"
    locked_dir = root / "digits" / "train" / "4"
    locked_file.chmod(0)
    locked_dir.chmod(0)
    try:
        rc, _, err = run_main(*train_argv(root, tmp_path / "run"))
        assert rc == 2 and str(locked_dir) in err, err
        locked_dir.chmod(0o755)
        rc, _, err = run_main(*train_argv(root, tmp_path / "run2"))
        assert rc == 2 and f"{locked_file}: cannot be decoded as an image (permission denied)" in err, err
    finally:
        locked_dir.chmod(0o755)
        locked_file.chmod(0o644)


def test_unlabeled_pool_with_symlink_loops_and_bad_files(root):
    pool = root / "unlabeled" / "digits"
    (pool / "loop").symlink_to("..")  # a folder loop: never followed
    (pool / "sub").mkdir()
    (pool / "sub" / "back").symlink_to(pool)  # another one, deeper
    (pool / "self.png").symlink_to("self.png")
    os.mkfifo(pool / "fifo.jpg")
    (pool / os.fsdecode(b"\xe9t\xe9.png")).write_bytes(png_bytes())  # Latin-1 name, valid image
    paths = find_unlabeled_images([root / "unlabeled"])
    assert len(paths) == 80 + 3  # the digits, the self loop, the FIFO, the Latin-1 file; nothing twice
    with pytest.raises(DataLayoutError) as exc:
        load_images(paths, 16, None)
    assert sorted(p.split(":")[0] for p in exc.value.problems) == sorted([str(pool / "fifo.jpg"),
                                                                               str(pool / "self.png")])
    got = load_images(paths, 16, None, skip_bad=True)
    assert int(got.valid.sum()) == 81


def test_an_undecodable_pool_image_is_skipped_by_default_and_stops_only_on_request(root, tmp_path, capfd):
    """The pool is extra data: one broken file in it used to stop `fewshot run` (exit 2) before any training.
    Labelled images still stop the run (above); data.skip_bad_unlabeled=false makes the pool as strict."""
    from fewshot.config import resolve
    from fewshot.train.semi import load_pool

    broken = root / "unlabeled" / "digits" / "broken.png"
    broken.write_bytes(png_bytes()[:40])  # a truncated PNG
    infos = scan_root(root, ["digits"])
    cfg = resolve(flags={"data.root": str(root), "data.datasets": "digits", "data.cache_dir": str(tmp_path / "c")})
    images, _, paths, _, skipped = load_pool(cfg, infos, 16)[:5]
    assert len(images) == len(paths) == 80 and str(broken) not in paths
    assert [p for p, _ in skipped] == [str(broken)]  # for the run's skipped_images.json
    err = capfd.readouterr().err
    assert "skipping 1 undecodable image(s) (pool images; data.skip_bad_unlabeled=false stops instead)" in err
    assert str(broken) in err
    strict = resolve(flags={"data.root": str(root), "data.datasets": "digits"},
                     overrides=["data.skip_bad_unlabeled=false", f"data.cache_dir={tmp_path / 'c2'}"])
    with pytest.raises(DataLayoutError, match="broken.png: cannot be decoded"):
        load_pool(strict, infos, 16)


def test_fixmatch_lists_the_pool_images_it_skipped_in_the_run(root, tmp_path):
    """FixMatch's pool skips an undecodable file (data.skip_bad_unlabeled): RUN/skipped_images.json names it,
    as it names the labelled images --skip-bad-images leaves out."""
    broken = root / "unlabeled" / "digits" / "broken.png"
    broken.write_bytes(png_bytes()[:40])
    rc, _, err = run_main(*train_argv(root, tmp_path / "run", "semi.method=fixmatch", "semi.mu=1"))
    assert rc == 0, err
    listed = json.loads((tmp_path / "run" / "skipped_images.json").read_text())
    assert [x["path"] for x in listed] == [str(broken)] and listed[0]["reason"]


def test_a_failure_fixed_since_is_decoded_again_not_served_from_the_cache(root, tmp_path, monkeypatch):
    """The cache key is path, size and mtime: a permission fixed by chmod (or a transient I/O error) changes
    none of them, so the cached failure list used to be served forever."""
    paths = sorted((root / "digits" / "train" / "1").glob("*.png"))
    locked, real_open = paths[0], Image.open

    def guarded_open(fp, *a, **kw):
        if isinstance(fp, (str, os.PathLike)) and Path(fp) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(fp))
        return real_open(fp, *a, **kw)

    cache_dir = tmp_path / "cache"
    monkeypatch.setattr(Image, "open", guarded_open)
    with pytest.raises(DataLayoutError, match="permission denied"):
        load_images(paths, 16, cache_dir)
    with pytest.raises(DataLayoutError, match="permission denied"):  # still broken: the cached failure holds
        load_images(paths, 16, cache_dir)
    monkeypatch.setattr(Image, "open", real_open)
    got = load_images(paths, 16, cache_dir)  # fixed: decoded now, and the cache rebuilt
    assert bool(got.valid.all()) and got.images[0].any()
    assert np.array_equal(got.images[0].numpy(), decode_resized(locked, 16))
    assert bool(load_images(paths, 16, cache_dir).valid.all())


def test_a_bad_file_listed_twice_is_skipped_in_both_places(tmp_path):
    """Overlapping --unlabeled folders can list a file twice; only the last copy used to be marked."""
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image")
    good = tmp_path / "g.png"
    good.write_bytes(png_bytes())
    got = load_images([bad, good, bad], 16, None, skip_bad=True)
    assert got.valid.tolist() == [False, True, False]


def test_a_newline_in_a_skipped_files_name_cannot_forge_a_list_item(tmp_path, capsys):
    """The list of skipped images kept a name's line break: "bad\n  - fake.png: looks fine.png" showed as two
    items."""
    bad = tmp_path / "bad\n  - fake.png: looks fine\u202e.png"
    bad.write_bytes(b"not an image")
    load_images([bad], 16, None, skip_bad=True)
    err = capsys.readouterr().err
    assert "\\n  - fake.png" in err and "\u202e" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("  - ")]) == 1, err


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stores its rotation in EXIF; the pixels must come out upright."""
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = 255  # left half white, landscape 40 wide x 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    out = decode_resized(path, 20, resize="crop")  # upright: 20 wide x 40 high, center-cropped to 20 x 20
    upright = np.asarray(Image.fromarray(arr).transpose(Image.Transpose.ROTATE_270))
    assert upright.shape == (40, 20, 3)
    expected = upright[10:30].transpose(2, 0, 1)
    assert np.abs(out.astype(int) - expected.astype(int)).max() < 40  # JPEG noise, not a rotation
    assert np.abs(out.astype(int) - arr[:, 10:30].transpose(2, 0, 1).astype(int)).max() > 200


def test_a_class_folder_with_only_sub_folders_says_so(root, tmp_path):
    cls = root / "digits" / "train" / "3"
    (cls / "more").mkdir()
    for p in list(cls.glob("*.png")):
        p.rename(cls / "more" / p.name)
    rc, _, err = run_main(*train_argv(root, tmp_path / "run"))
    assert rc == 2 and f"{cls}: no image directly in this class folder, only in sub-folders (more)" in err, err


def test_skipping_every_val_image_of_a_dataset_is_a_user_error(root, tmp_path):
    """An emptied val split crashed in the label-space mask (0 x 0 logits) and was left out of the mean."""
    for p in (root / "digits" / "val").rglob("*.png"):
        p.write_bytes(b"broken")
    rc, _, err = run_main(*train_argv(root, tmp_path / "run", "--skip-bad-images"))
    assert rc == 2 and "no decodable val image is left in digits" in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------ property-based

KINDS = ("png", "png_as_jpg", "empty", "garbage", "truncated", "text", "dangling", "loop", "dir")
BAD = {"empty", "garbage", "truncated", "text", "dangling", "loop"}
EXTS = (".png", ".jpg", ".JPEG", ".gif", ".txt", "")
NAME_CHARS = "ab-_ 0é1漢.#"
# Mostly valid layouts with mostly good images, so that most examples get past the scan into decoding.
kinds = st.sampled_from(("png",) * 6 + KINDS)
exts = st.sampled_from((".png",) * 4 + EXTS)


@st.composite
def names(draw):
    if draw(st.integers(0, 9)) == 0:  # now and then a name that is not valid UTF-8
        return os.fsdecode(b"x\xff" + draw(st.binary(max_size=3)).replace(b"/", b"").replace(b"\0", b""))
    name = draw(st.text(NAME_CHARS, min_size=1, max_size=6).filter(lambda s: s not in (".", "..")))
    return name if not name.startswith(".") or draw(st.integers(0, 4)) == 0 else "_" + name  # few hidden ones


def files(stems=None, max_size=3):
    return st.lists(st.tuples(names() if stems is None else stems, exts, kinds), min_size=1, max_size=max_size)


@st.composite
def class_files(draw):
    """Usually one good image first (so that most classes are valid), then anything."""
    first = [("good", ".png", "png")] if draw(st.integers(0, 9)) else []
    return first + draw(files())


@st.composite
def trees(draw):
    """{dataset: {split: {class or "": [(stem, ext, kind), ...]}}}; "" holds files directly in the split."""
    tree = {}
    for ds in draw(st.lists(st.sampled_from(["d1", "x y", os.fsdecode(b"d\xe9")]), min_size=1, max_size=2,
                            unique=True)):
        classes = draw(st.lists(names(), min_size=1, max_size=3, unique=True))
        splits = {}
        for split in ("train", "val"):
            if draw(st.integers(0, 29)) == 0:
                continue  # a missing split
            own = classes if draw(st.integers(0, 9)) else draw(st.lists(names(), min_size=0, max_size=3, unique=True))
            splits[split] = {c: draw(class_files()) for c in own}
            if draw(st.integers(0, 14)) == 0:
                splits[split][""] = draw(files(max_size=1))  # a stray file in the split folder
        if draw(st.booleans()):
            ids = st.one_of(st.integers(0, 9).map(str), names())
            splits["test"] = {"": draw(files(ids, max_size=4))}
        tree[ds] = splits
    if draw(st.booleans()):
        tree["unlabeled"] = {"pool": {c: draw(files()) for c in draw(st.lists(names(), max_size=2, unique=True))}}
    return tree


def materialise(root: Path, tree: dict) -> dict[str, str]:
    """Write the tree; returns {path: kind} for every file entry actually created."""
    kinds = {}
    good = png_bytes(6, 5)
    for ds, splits in tree.items():
        for split, classes in splits.items():
            for cls, entries in classes.items():
                folder = root / ds / split / cls if cls else root / ds / split
                folder.mkdir(parents=True, exist_ok=True)
                for stem, ext, kind in entries:
                    path = folder / f"{stem}{ext}"
                    if os.path.lexists(path) or path.name in (".", ".."):
                        continue
                    if kind == "dir":
                        path.mkdir()
                    elif kind == "dangling":
                        path.symlink_to(folder / "missing.png")
                    elif kind == "loop":
                        path.symlink_to(path.name)
                    else:
                        data = {"png": good, "png_as_jpg": good, "empty": b"", "garbage": b"\x13\x37" * 20,
                                "truncated": good[:30], "text": b"hello\n"}[kind]
                        path.write_bytes(data)
                    kinds[str(path)] = kind
    return kinds


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), splits=st.sampled_from([("train", "val"), ("train",), ("test",), ("train", "val", "test")]),
       skip_bad=st.booleans(), use_cache=st.booleans())
def test_generated_trees_raise_only_documented_errors(tree, splits, skip_bad, use_cache):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        kinds = materialise(root, tree)
        try:
            infos = scan_root(root, splits=splits)
        except UserError as exc:
            assert str(exc).strip()
            event(f"scan: {type(exc).__name__}")
            return
        paths = [p for info in infos for p, _ in info.train + info.val] + [p for info in infos for _, p in info.test]
        assert all(kinds[str(p)] != "dir" for p in paths)  # folders are never taken for images
        cache_dir = Path(tmp) / "cache" if use_cache else None
        for attempt in range(2 if use_cache else 1):  # the second pass reads the cache
            try:
                got = load_images(paths, 8, cache_dir, skip_bad=skip_bad, threads=1)
            except DataLayoutError as exc:
                event("load: bad files reported")
                assert not skip_bad
                reported = {p for p, _ in _bad_from(exc)}
                assert reported == {str(p) for p in paths if kinds[str(p)] in BAD}
                continue
            event(f"load: ok, {'some' if not bool(got.valid.all()) else 'no'} files skipped")
            assert got.images.shape == (len(paths), 3, 8, 8)
            assert [bool(v) for v in got.valid] == [kinds[str(p)] not in BAD for p in paths]
        if (root / "unlabeled").is_dir():
            try:
                pool = find_unlabeled_images([root / "unlabeled"])
            except UserError:
                return
            try:
                got = load_images(pool, 8, None, skip_bad=skip_bad, threads=1)
            except DataLayoutError:
                assert not skip_bad and any(kinds[str(p)] in BAD for p in pool)
                return
            assert [bool(v) for v in got.valid] == [kinds[str(p)] not in BAD for p in pool]


def _bad_from(exc: DataLayoutError) -> list[tuple[str, str]]:
    out = []
    for problem in exc.problems:
        if problem.startswith("(pass --skip-bad-images"):
            continue
        path, _, why = problem.rpartition(": cannot be decoded as an image")
        assert path, problem
        out.append((path, why))
    return out


def test_a_read_only_data_root_caches_in_the_user_cache_folder(tmp_path, monkeypatch):
    """A read-only dataset mount used to print a warning per split and image size and decode every image
    again in every command; the cache now goes to $XDG_CACHE_HOME/fewshot/<root>-<hash>."""

    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    assert cache.default_cache_dir(root, None) == root / ".fewshot_cache"  # writable: beside the data
    assert cache.default_cache_dir(root, "/x/y") == Path("/x/y")  # data.cache_dir wins
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)
    fallback = cache.default_cache_dir(root, None)
    assert fallback.parent == tmp_path / "xdg" / "fewshot" and fallback.name.startswith("data-")
    other = tmp_path / "elsewhere" / "data"
    other.mkdir(parents=True)
    assert cache.default_cache_dir(other, None) != fallback  # one folder per root, even with the same name
    # a cache prebuilt beside a read-only root is read from there, not decoded again elsewhere
    (root / ".fewshot_cache").mkdir()
    monkeypatch.setattr(cache.os, "access", lambda path, mode: Path(path).name == ".fewshot_cache")
    assert cache.default_cache_dir(root, None) == root / ".fewshot_cache"
    # no home folder to fall back on (a container's arbitrary uid): no cache rather than a traceback
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(cache.Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    assert cache.default_cache_dir(other, None) is None


def test_a_relative_xdg_cache_home_is_ignored_and_a_missing_home_says_the_cache_is_off(tmp_path, monkeypatch,
                                                                                        capsys):
    """A relative XDG_CACHE_HOME (invalid by the XDG spec) put the cache under whatever folder the command ran in;
    with no home folder at all the cache was off without a word (an unwritable one already said so)."""

    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)  # a read-only data root
    monkeypatch.setenv("XDG_CACHE_HOME", "rel/cache")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.default_cache_dir(root, None).parent == tmp_path / "home" / ".cache" / "fewshot"
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(cache_words, "_WARNED", set())
    monkeypatch.setattr(cache.Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    assert cache.default_cache_dir(root, None) is None
    assert cache.default_cache_dir(root, None) is None  # every split asks: one line for the command
    lines = [line for line in capsys.readouterr().err.splitlines() if "image cache" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: no folder for the image cache"), lines


def test_an_unwritable_cache_is_one_plain_warning_line(tmp_path, capsys, monkeypatch):
    """Failing to write the cache warned through warnings.warn, which printed the file, line number and
    the warn() source line around the message; it is now one `warning:` line, once per folder."""

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(p)
        paths.append(p)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setattr(cache_words, "_WARNED", set())
    for size in (8, 16):
        got = cache.load_images(paths, size, blocker / "cache", threads=1)
        assert bool(got.valid.all())
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "image cache" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: could not write the image cache"), err
    assert "warnings.warn" not in err and "cache.py" not in err and "cache_words.py" not in err


def test_an_extreme_strip_is_cropped_before_it_is_resized(tmp_path, monkeypatch):
    """A 2 x 30000 PNG (a few KB) was resized whole to 16 x 240000 before the 16 x 16 centre crop; a 1 x 300000
    one took 2.35 GB. Only the kept region is resized now, with the same pixels as resizing all of it."""
    rows = (np.arange(30000) // 100 % 256).astype(np.uint8)
    arr = np.repeat(np.stack([rows, 255 - rows, rows // 2], axis=1)[:, None, :], 2, axis=1)  # 30000 high, 2 wide
    path = tmp_path / "strip.png"
    Image.fromarray(arr).save(path)
    resized = []
    real_resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, size, *a, **kw: resized.append(size) or
                        real_resize(self, size, *a, **kw))
    out = decode_resized(path, 16, resize="crop")  # data.resize=auto would letterbox it
    assert resized == [(16, 16)]  # not (16, 240000)
    monkeypatch.setattr(Image.Image, "resize", real_resize)
    whole = np.asarray(Image.fromarray(arr).resize((16, 240000), Image.BILINEAR))[120000 - 8:120000 + 8]
    assert np.abs(out.astype(int) - whole.transpose(2, 0, 1).astype(int)).max() <= 2


def test_a_cache_write_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    """numpy's short write on a full disk left a partial .tmp<pid> copy per process in the cache folder, and the
    warning suggested another folder as if this one were not writable."""
    a = tmp_path / "a.png"
    a.write_bytes(png_bytes())
    cache_dir = tmp_path / "cache"

    import errno

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "replace", full)
    got = load_images([a], 16, cache_dir)
    assert bool(got.valid.all()) and list(cache_dir.iterdir()) == []
    assert "the disk is full" in capsys.readouterr().err


def test_files_swapped_by_name_are_decoded_again(tmp_path):
    """`mv` keeps size and mtime: two same-size images swapped by name were served from the cache unswapped."""
    a, b = tmp_path / "a.bmp", tmp_path / "b.bmp"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(a)
    Image.new("RGB", (16, 16), (0, 0, 255)).save(b)
    for p in (a, b):
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    cache_dir = tmp_path / "cache"
    before = load_images([a, b], 16, cache_dir).images
    assert before[0, 0].max() == 255 and before[1, 2].max() == 255
    os.rename(a, tmp_path / "t.bmp")
    os.rename(b, a)
    os.rename(tmp_path / "t.bmp", b)
    after = load_images([a, b], 16, cache_dir).images
    assert after[0, 2].max() == 255 and after[0, 0].max() == 0, "a.bmp is the blue image now"


def test_one_cache_whatever_the_spelling_of_the_root(tmp_path, monkeypatch):
    """`eval --data root` hashed `root/a.png` where train (data.root made absolute) hashed `/abs/root/a.png`:
    every image was decoded and stored again, once per spelling (a concurrency hunt)."""
    from fewshot.data.cache import cache_key

    (tmp_path / "root").mkdir()
    a = tmp_path / "root" / "a.png"
    a.write_bytes(png_bytes())
    monkeypatch.chdir(tmp_path)
    assert cache_key([Path("root/a.png")], 16, 1.0) == cache_key([a], 16, 1.0)
    assert cache_key([Path("./root/../root/a.png")], 16, 1.0) == cache_key([a], 16, 1.0)
    # a bad file recorded under one spelling is skipped under the other (review: its blank row trained)
    bad = tmp_path / "root" / "b.png"
    bad.write_bytes(b"not an image")
    cache_dir = tmp_path / "cache"
    assert load_images([Path("root/a.png"), Path("root/b.png")], 16, cache_dir, skip_bad=True).valid.tolist() == \
        [True, False]
    got = load_images([a, bad], 16, cache_dir, skip_bad=True)
    assert got.valid.tolist() == [True, False] and got.bad[0][0] == str(bad)
    assert len(list(cache_dir.glob("*.u8"))) == 1  # one cache for both spellings


@pytest.mark.parametrize("bad", [[[1, 2]], [["x"]], "none", [None]])
def test_a_cache_meta_file_of_another_shape_is_rebuilt(tmp_path, bad):
    """`"bad": [[1, 2]]` in a cache's meta file crashed with AttributeError (an internal error, exit 1)."""
    a = tmp_path / "a.png"
    a.write_bytes(png_bytes())
    cache_dir = tmp_path / "cache"
    first = load_images([a], 16, cache_dir).images.clone()
    (meta,) = cache_dir.glob("*.json")
    meta.write_text(json.dumps({"n": 1, "size": 16, "bad": bad}))
    got = load_images([a], 16, cache_dir)
    assert bool(got.valid.all()) and torch.equal(got.images, first)
    assert json.loads(meta.read_text())["bad"] == []


def test_a_single_class_in_all_is_warned_about_not_silently_trained(copy_root, tmp_path):
    """`train --datasets single` on a one-class dataset trained at loss 0 and printed "1 classes" (a hunt)."""
    from helpers.checks import run_main

    for split in ("train", "val"):
        for extra in sorted((copy_root / "digits" / split).iterdir())[1:]:
            shutil.rmtree(extra)
    rc, out, err = run_main("train", "--data", copy_root, "--datasets", "digits", "--out", tmp_path / "run",
                            "--model", "test_resnet", "--img-size", "16", "--epochs", "1", "--device", "cpu",
                            "--no-progress")
    assert rc == 0, err
    assert "1 class," in out and "has one class" in err and "nothing is learned" in err, (out, err)


def test_a_dataset_the_grouped_sampler_never_batches_is_named(copy_root, dataset_names, tmp_path):
    """data.sampler=grouped drops a batch BatchNorm cannot take (under 2 images per process): a 1-image dataset
    was never trained, without a word (a DDP hunt: 3 images on 2 processes the same)."""
    from helpers.checks import run_main

    small = dataset_names[0]
    for split in ("train", "val"):
        for extra in sorted((copy_root / small / split).iterdir())[1:]:
            shutil.rmtree(extra)
    for p in sorted(p for p in (copy_root / small / "train").rglob("*") if p.is_file())[1:]:
        p.unlink()
    argv = ["train", "--data", copy_root, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--device", "cpu", "--no-progress", "train.eval_every=100"]
    rc, _, err = run_main(*argv, "--out", tmp_path / "g", "data.sampler=grouped")
    assert rc == 0 and f"warning: {small} never reach(es) a training batch" in err, err
    rc, _, err = run_main(*argv, "--out", tmp_path / "s")  # shuffled, its image joins a batch of the other's
    assert rc == 0 and "never reach" not in err, err
    # repeat draws a third of the images each epoch: a seed whose epoch 0 misses the small dataset's image (the
    # first: datasets in name order) was warned about, though later epochs train on it
    import torch

    from fewshot.data.samplers import epoch_batches

    n = sum(1 for p in copy_root.glob("*/train/*/*") if p.is_file())
    seed = next(s for s in range(100) if 0 not in torch.cat(epoch_batches(n, 64, 0, s, "repeat")).tolist())
    rc, _, err = run_main(*argv, "--out", tmp_path / "r", "data.sampler=repeat", "--batch-size", "64",
                          "--seed", str(seed))
    assert rc == 0 and "never reach" not in err, err


def test_the_cache_drops_its_least_recently_used_entries_beyond_its_cap(tmp_path):
    """Every changed file list wrote a whole new entry and the old ones stayed forever (one image added to a
    100k pool: another 307 MB). A new entry now deletes the least recently used ones beyond data.cache_max_gb;
    a read counts as a use; the entry just written and those used in the last hour stay."""
    from fewshot.data.cache import cache_key

    images = []
    for i in range(4):
        images.append(tmp_path / f"{i}.png")
        images[-1].write_bytes(png_bytes(seed=i))
    cache_dir = tmp_path / "cache"
    lists = {"oldest": [images[0]], "old": [images[1]], "older": [images[2]], "recent": [images[3]]}
    hours = {"oldest": 5, "old": 3, "older": 4, "recent": 0.5}
    for name, paths in lists.items():
        load_images(paths, 16, cache_dir)
        used = time.time() - hours[name] * 3600
        os.utime(cache_dir / f"{cache_key(paths, 16, 1.0)}.u8", (used, used))
    (cache_dir / "notes.u8").write_bytes(b"x" * 5000)  # not an entry of the cache: never deleted
    os.utime(cache_dir / "notes.u8", (0, 0))
    assert len(list(cache_dir.glob("*.json"))) == 4
    load_images(lists["oldest"], 16, cache_dir)  # read: used now
    lists["new"] = images[:2]
    load_images(lists["new"], 16, cache_dir, max_gb=3 * 3 * 16 * 16 / 1e9)  # room for three 1-image entries
    left = {name for name, paths in lists.items() if (cache_dir / f"{cache_key(paths, 16, 1.0)}.u8").exists()}
    assert left == {"oldest", "recent", "new"}  # over the cap: the recent ones stay
    assert len(list(cache_dir.glob("*.json"))) == 3 and (cache_dir / "notes.u8").exists()
    load_images(images[2:], 16, cache_dir, max_gb=0)  # 0: no limit
    assert len(list(cache_dir.glob("*.json"))) == 4
