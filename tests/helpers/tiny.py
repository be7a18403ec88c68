"""Tiny real datasets (sklearn digits) and configs for fast CPU tests of the training loop."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import unicodedata
from pathlib import Path

from fewshot.config import resolve

REPO = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent

# Debug-friendly, fast, bit-reproducible on CPU.
COMMON = {
    "model.name": "test_resnet",
    "model.img_size": 32,
    "train.device": "cpu",
    "train.progress": False,
    "train.tensorboard": False,
    "train.deterministic": True,
    "train.threads": 1,
}


def build_digits(root: Path, shots: int = 4) -> Path:
    """ROOT/digits/{train,val,test} (shots x 10 train, 3 x 10 val) and ROOT/unlabeled/digits (80 images)."""
    from fewshot.data.build import build_dataset

    root = Path(root)
    build_dataset("digits", root, shots=shots, val_per_class=3, test_per_class=3, pool_per_class=8, progress=False)
    return root


def copy_data_root(src: Path, dst: Path) -> Path:
    """A private copy of a dataset root without its image cache, for a test that changes files in it (the cache
    would otherwise answer for the originals)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".fewshot_cache"))
    return Path(dst)


def tiny_train_argv(root: Path, out: Path, *extra) -> list:
    """`fewshot train` of one 1-epoch, 16 px test_resnet run: the cheapest real run a test can damage or read."""
    return ["train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.threads=1",
            *extra]


def trained_tiny_run(root: Path, out: Path) -> Path:
    """A finished tiny_train_argv run in ``out``, trained in this process (module fixtures train one; tests copy it)."""
    from helpers.checks import run_main

    rc, _, err = run_main(*tiny_train_argv(root, out))
    assert rc == 0, err
    return out


def altered_copy(run: Path, out: Path, **changes) -> Path:
    """A copy of ``run`` in ``out`` whose last.pt has ``changes``."""
    from fewshot.train.checkpoint import load_checkpoint, save_checkpoint

    shutil.copytree(run, out)
    last = out / "checkpoints" / "last.pt"
    ck = load_checkpoint(last)
    ck.update(changes)
    save_checkpoint(last, ck)
    return out


def build_cafe_root(root: Path, copies: tuple[str, ...]) -> Path:
    """ROOT/{café (decomposed, as macOS writes it), *copies}: copies of a tiny 2-shot digits dataset, no pool; the
    dataset-name tests (Unicode forms of one folder name) share it."""
    root = build_digits(root, shots=2)
    shutil.rmtree(root / "unlabeled")
    for name in copies:
        shutil.copytree(root / "digits", root / name)
    (root / "digits").rename(root / unicodedata.normalize("NFD", "café"))
    return root


def finetune_cfg(root: Path, **flags) -> dict:
    base = {**COMMON, "data.root": str(root), "train.epochs": 2, "train.batch_size": 8, "train.eval_every": 1}
    return resolve(flags={**base, **flags})


def pretrain_cfg(root: Path, **flags) -> dict:
    base = {**COMMON, "data.root": str(root), "train.epochs": 2, "train.batch_size": 8,
            "moco.queue_size": 52, "moco.split_bn_groups": 2, "moco.knn_k": 5}
    return resolve(preset="mocov2", flags={**base, **flags})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(nproc: int, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={port}", *args]


def dist_env() -> dict:
    env = dict(os.environ)
    env.update({"MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), env.get("PYTHONPATH", "")])})
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(k, None)
    return env


def digit_images(n: int, size: int = 32, offset: int = 0):
    """n real handwritten digits (sklearn) as normalised float [n, 3, size, size] tensors."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    imgs = torch.tensor(load_digits().images[offset:offset + n], dtype=torch.float32) / 16.0
    x = F.interpolate(imgs[:, None], size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    return ((x - 0.45) / 0.25).contiguous()


def view_pair(n: int, size: int = 32, offset: int = 0):
    """Two different views of the same real digits: the image and a shifted, mirrored copy."""
    x = digit_images(n, size, offset)
    return x, x.roll(shifts=(2, -1), dims=(2, 3)).flip(-1).contiguous()


def run_forked_ranks(fn, args: tuple, nprocs: int, timeout: float, what: str) -> None:
    """``fn(rank, *args)`` in ``nprocs`` forked processes, joined; a rank mismatch shows up as a hang, so ranks
    still running after ``timeout`` s are killed and the test fails naming ``what``."""
    import time

    import pytest
    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            for proc in ctx.processes:
                proc.join(5)  # reaped, not left as zombies until the worker exits
            pytest.fail(f"{what} still ran after {timeout} s (a collective mismatch?)")


def _cli_rank(rank: int, world: int, port: int, argv: list, cwd: str, said: str) -> None:
    """One forked rank of ``cli_in_forked_ranks``: torchrun's environment without its agent, the output to a file."""
    from helpers.checks import run_main

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    for name in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"):
        os.environ.pop(name, None)
    os.chdir(cwd)
    with open(Path(said, f"rank{rank}.out"), "w") as fh:
        os.dup2(fh.fileno(), 1)  # what torch or gloo writes to the descriptors lands there too
        os.dup2(fh.fileno(), 2)
        rc, out, err = run_main(*argv)
        fh.write(out + err)
    Path(said, f"rank{rank}.rc").write_text(str(rc))


def cli_in_forked_ranks(argv: list, cwd: Path, world: int = 2, timeout: float = 240) -> tuple[list[int], str]:
    """`torchrun --nproc_per_node=WORLD -m fewshot ARGV` where the launch is not what a test checks: the ranks are
    forks of this process (no interpreter start or torch import per rank: seconds each), each running
    ``fewshot.cli.main`` with torchrun's rank variables. Returns each rank's exit code and the ranks' output."""
    import tempfile

    said = Path(tempfile.mkdtemp(prefix=".ranks-", dir=cwd))
    run_forked_ranks(_cli_rank, (world, free_port(), [str(a) for a in argv], str(cwd), str(said)), world, timeout,
                     f"the ranks of fewshot {argv[0]}")
    codes = [int((said / f"rank{r}.rc").read_text()) for r in range(world)]
    out = "".join((said / f"rank{r}.out").read_text() for r in range(world))
    shutil.rmtree(said)
    return codes, out


def trained_digits_run(base: Path, epochs: int, *flags) -> dict:
    """A tiny digits root and a `fewshot train` run on it, evaluated every epoch: {"root", "ft"} (the report
    tests' module fixtures read it)."""
    from helpers.checks import run_main

    root = build_digits(base / "root")
    ft = base / "ft"
    rc, _, err = run_main("train", "--data", root, "--out", ft, "--epochs", str(epochs), "train.eval_every=1", *flags)
    assert rc == 0, err
    return {"root": root, "ft": ft}


def grey_pngs(folder: Path, count: int = 3) -> list[Path]:
    """``count`` small flat-grey PNGs of distinct shades in ``folder`` (0.png, 1.png, ...): the decode cache's tests."""
    import numpy as np
    from PIL import Image

    paths = []
    for i in range(count):
        p = folder / f"{i}.png"
        Image.fromarray(np.full((12, 10, 3), 30 + 60 * i, np.uint8)).save(p)
        paths.append(p)
    return paths


def tall_crop_run(base: Path) -> tuple[Path, Path]:
    """The tiny digits root (2 shots) with every image 3x as tall (data.resize=auto alone letterboxes them), and a
    tiny_train_argv run trained on it with data.resize=crop: the runs whose weights record a resize."""
    from PIL import Image

    from helpers.checks import run_main

    root = build_digits(base / "root", shots=2)
    for png in (root / "digits").rglob("*.png"):
        img = Image.open(png).convert("RGB")
        canvas = Image.new("RGB", (img.width, 3 * img.height))
        canvas.paste(img, (0, 0))
        canvas.save(png)
    rc, _, err = run_main(*tiny_train_argv(root, base / "crop", "data.resize=crop"))
    assert rc == 0, err
    return root, base / "crop"
