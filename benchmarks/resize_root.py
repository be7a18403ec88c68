"""Copy a dataset root with every PNG resized and made RGB: a held-out-like root at another input size.

`fewshot run` picks 32 px for images of 40 px or less and 64 px on CPU above that; the demo data (28 and 8 px)
only exercises the first. Resized copies of a demo draw exercise the second on the same images.

    python benchmarks/resize_root.py runs/heldout/draw2 runs/heldout/draw2_56rgb --size 56
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="a dataset root (fewshot data's layout)")
    ap.add_argument("dst", type=Path, help="a new folder for the copy")
    ap.add_argument("--size", type=int, default=56, help="side of the resized (square) images")
    args = ap.parse_args(argv)
    if not args.src.is_dir():
        ap.error(f"{args.src} is not a folder")
    if args.dst.exists():
        ap.error(f"{args.dst} exists: give a new folder")
    if args.size < 1:
        ap.error("--size must be at least 1")
    for p in sorted(args.src.rglob("*")):
        q = args.dst / p.relative_to(args.src)
        if p.is_dir():
            q.mkdir(parents=True, exist_ok=True)
            continue
        q.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix.lower() == ".png":
            Image.open(p).convert("RGB").resize((args.size, args.size), Image.BICUBIC).save(q)
        else:  # answer keys and anything else: as they are
            shutil.copy(p, q)


if __name__ == "__main__":
    main()
