"""MoCo training speed, fewshot against lightly, side by side in one run (issue 5).

Same work on both sides: a resnet18 backbone (timm's for fewshot, torchvision's for lightly, as
its examples do; same FLOPs), MLP head 512-512-128, K=4096, T=0.2, m=0.99, shuffle-BN on
(fewshot: split BN, 8 groups; lightly: its SplitBatchNorm + batch_shuffle/batch_unshuffle),
SGD lr 0.06 momentum 0.9 wd 5e-4, same batch, image size and thread count. Precision: each side's
default; fewshot's ``train.amp=auto`` is bf16 autocast on CUDA and, for >= 48 px images, on CPUs that
compute bf16 natively (AVX512-BF16/AMX); lightly runs fp32 as its examples do (the ablation has a
reference row with lightly wrapped in bf16 autocast).

* ``step``: one fixed pair of views; forward q, momentum update, forward k, loss, backward,
  optimizer step, enqueue. fewshot's side is the real ``fewshot pretrain`` code
  (MoCoTask.training_step, build_optimizer, fewshot.runtime settings).
* ``e2e``: from a folder of real PNGs (fashion-mnist resized to 64 px): fewshot decodes once
  into its uint8 cache (first build timed separately), then cached batch -> BatchAugment
  (MoCoTask.make_batch) -> step; lightly: LightlyDataset + MoCoV2Transform + torch DataLoader
  (num_workers probed over 0/1/2, lightly's best is used) -> step. images/s include every wait.

Each side lives in its own worker process (so process settings such as the allocator stay with
their side); the parent runs them alternately, ours, lightly, ours, lightly ..., with untimed
warm-up steps, and reports median, min..max and the ratio of each adjacent pair, so contention
from other work on the machine hits both sides alike. It also measures the machine's matmul
rate in fewshot's compute dtype right before each pair (the roofline), the FLOPs per image of a step
(torch.utils.flop_counter), each result as % of that roofline, and each side's peak RSS.

    .bench-venv/bin/python benchmarks/moco_speed.py                  # the issue's suite (~10 min)
    .bench-venv/bin/python benchmarks/moco_speed.py --mode step --img-size 32 --batch-size 256
    .bench-venv/bin/python benchmarks/moco_speed.py --ablation       # fewshot's speed changes, one by one
    .bench-venv/bin/python benchmarks/moco_speed.py --scaling        # fewshot alone: batch, size, K, model
    .bench-venv/bin/python benchmarks/moco_speed.py --profile        # torch.profiler top ops of our step

Results: benchmarks/results/moco_speed_<device>_<img>px_b<batch>.json (and _ablation/_scaling).
Set up the venv with benchmarks/setup_bench_venv.sh (``make bench`` does both).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA_DIR = ROOT / ".cache" / "bench"

# The common recipe (issue 5). mlp_hidden 512 = resnet18's width, so the head is 512-512-128 (--model resnet50:
# 2048-2048-128 on both sides).
MODEL_WIDTH = {"resnet18": 512, "resnet50": 2048}  # --model: the head is width-width-128 on both sides
RECIPE = dict(model="resnet18", dim=128, hidden=512, queue=4096, temperature=0.2, momentum=0.99, groups=8,
              lr=0.06, sgd_momentum=0.9, weight_decay=5e-4)
TARGETS = {  # (img, batch, mode) -> minimal ratio fewshot/lightly; roofline share for step at 64/64
    (64, 64, "step"): 1.5, (64, 64, "e2e"): 2.0, (32, 256, "step"): 1.3}
ROOFLINE_TARGET = 0.70


# =============================================================================================
# helpers usable on both sides


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def proc_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn) -> float:
    """FLOPs of one call of fn (forward q + forward k + backward q + the small matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def fixed_views(batch: int, img: int, device):
    """The fixed pair of views of the step mode: the same tensors on both sides."""
    import torch

    g = torch.Generator().manual_seed(1234)
    return (torch.randn(batch, 3, img, img, generator=g).to(device),
            torch.randn(batch, 3, img, img, generator=g).to(device))


# =============================================================================================
# fewshot's side: the real `fewshot pretrain` code


class Ours:
    name = "fewshot"

    def __init__(self, o: dict):
        import fewshot  # noqa: F401  (first: its OpenMP wait policy must precede `import torch`)
        import torch

        from fewshot.runtime import configure_cpu

        self.o = o
        # What run_pretrain does first (train.threads, the allocator); ablation may switch parts off.
        self.tuning = configure_cpu(o["threads"], allocator=o.get("malloc", True))
        from fewshot.ssl import split_bn

        split_bn.set_fast_path(o.get("fast_split_bn", True))
        from fewshot.models import fast_pool

        fast_pool.set_fast_path(o.get("fast_maxpool", True))
        from fewshot.models import tiny_map_conv

        tiny_map_conv.set_fast_path(o.get("tiny_map_conv", True))
        from fewshot.data import augment

        augment.set_fast_path(o.get("fast_augment", True))
        from fewshot.data.augment import BatchAugment, preset
        from fewshot.models.backbone import create_backbone, mean_std
        from fewshot.runtime import compile_modules
        from fewshot.ssl.moco import MoCo
        from fewshot.ssl.pretrain import MoCoTask
        from fewshot.train.optim import amp_dtype, build_optimizer

        self.device = torch.device(o["device"])
        img, r = o["img"], {**RECIPE, **o.get("recipe", {})}
        torch.manual_seed(0)
        backbone = create_backbone(r["model"], drop_path=0.0, img_size=img)
        mean, std = mean_std(backbone)
        groups = r["groups"] if o["batch"] // r["groups"] >= 2 else 1
        self.model = MoCo(backbone, dim=r["dim"], queue_size=r["queue"], momentum=r["momentum"],
                          temperature=r["temperature"], mlp=True, mlp_hidden=r["hidden"],
                          split_bn_groups=groups).to(self.device)
        cfg = {"optim": {"name": "sgd", "lr": r["lr"], "momentum": r["sgd_momentum"],
                         "weight_decay": r["weight_decay"], "fused": o.get("fused", "auto")},
               "train": {"seed": 0, "amp": o.get("amp", "auto"), "channels_last": o.get("channels_last", "auto"),
                         "compile": o.get("compile", "auto")}}
        cl = cfg["train"]["channels_last"]
        self.channels_last = cl is True or (cl == "auto" and self.device.type == "cuda")  # as MoCoTask
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp = amp_dtype(cfg, self.device, img)  # auto: bf16 on CUDA and on CPUs with native bf16 (>= 48 px)
        t0 = time.perf_counter()
        self.compiled = compile_modules([self.model.encoder_q, self.model.encoder_k], cfg["train"]["compile"],
                                        self.device)
        self.optimizer = build_optimizer(cfg, [{"params": [p for p in self.model.encoder_q.parameters()
                                                           if p.requires_grad],
                                                "weight_decay": r["weight_decay"], "lr_scale": 1.0}])
        self.augment = BatchAugment(preset("mocov2", img, mean=mean, std=std)).to(self.device)
        # MoCoTask's own make_batch / training_step, bound to the few attributes they read.
        self.task = MoCoTask.__new__(MoCoTask)
        self.task.cfg, self.task.device, self.task.augment = cfg, self.device, self.augment
        self.task.channels_last = self.channels_last
        from fewshot.train.distributed import DistContext

        self.task.ctx = DistContext()
        self.views = fixed_views(o["batch"], img, self.device)
        if self.channels_last:
            self.views = tuple(v.contiguous(memory_format=torch.channels_last) for v in self.views)
        self.gen_step = 0
        self.info = {"malloc_tuned": self.tuning["malloc_tuned"], "threads": self.tuning["threads"],
                     "split_bn_groups": groups, "channels_last": self.channels_last,
                     "amp": str(self.amp) if self.amp else "off", "compile": self.compiled,
                     "optimizer": "fused" if self.optimizer.defaults.get("fused") else "default",
                     "fast_split_bn": o.get("fast_split_bn", True), "fast_maxpool": o.get("fast_maxpool", True),
                     "tiny_map_conv": o.get("tiny_map_conv", True), "fast_augment": o.get("fast_augment", True),
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (spin)")}
        if self.compiled:  # compile happens at the first call: time it here, not in the runs
            self.step_once()
            sync(self.device)
            self.info["compile_s"] = time.perf_counter() - t0

    def autocast(self):
        import contextlib

        import torch

        return torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()

    def train_step(self, batch) -> None:
        """Engine._run_epoch's step body (no lr schedule: both sides use a constant lr)."""
        import torch

        with self.autocast():
            loss, metrics, n = self.task.training_step(self.model, batch)
        if not bool(torch.isfinite(loss.detach())):  # Engine._finite
            raise RuntimeError("non-finite loss in the benchmark")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        float(loss.detach())
        for v in metrics.values():
            float(v)

    def step_once(self) -> None:
        from fewshot.utils import make_generator

        self.gen_step += 1
        self.train_step((*self.views, make_generator(0, 0, self.gen_step, 2)))

    def flops(self) -> float:
        from fewshot.models import tiny_map_conv

        # Counted on the convolutions as the network defines them (lightly's basis): the tiny-map matmuls
        # skip the zero-padding terms, and fewer FLOPs for the same work would lower our % of the roofline.
        with tiny_map_conv.plain_convolutions():
            return count_flops(self.step_once)

    # ---- end to end
    def setup_e2e(self, folder: str, cache_dir: str) -> dict:
        from fewshot.data.cache import load_images

        paths = sorted(Path(folder).glob("*.png"))
        t0 = time.perf_counter()
        load_images(paths, self.o["img"], Path(cache_dir), crop_pct=1.0, desc="bench cache")
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pool = load_images(paths, self.o["img"], Path(cache_dir), crop_pct=1.0, desc="bench cache")
        load_s = time.perf_counter() - t0
        self.task.pool = pool.images
        self._batches = self._iter_batches(len(pool))
        return {"images": len(paths), "cache_build_s": build_s, "cache_load_s": load_s,
                "cache_bytes": int(pool.images.numel())}

    def setup_pool(self, n: int) -> dict:
        """e2e without a folder: n random uint8 images in memory stand in for the decoded cache, so that
        make_batch (the augmentation) + the step are timed without PNG files (the ablation, moco_ab.py)."""
        import torch

        img = self.o["img"]
        self.task.pool = torch.randint(0, 256, (n, 3, img, img), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(0))
        self._batches = self._iter_batches(n)
        return {"images": n}

    def _iter_batches(self, n: int):
        from fewshot.data.samplers import epoch_batches

        epoch = 0
        while True:
            for step, idx in enumerate(epoch_batches(n, self.o["batch"], epoch, 0, "shuffle", 0, 1, drop_last=True)):
                yield idx, epoch, step
            epoch += 1

    def e2e_once(self) -> None:
        idx, epoch, step = next(self._batches)
        self.train_step(self.task.make_batch(idx, epoch, step))


# =============================================================================================
# lightly's side, written the way its MoCo examples/docs do it


class Lightly:
    name = "lightly"

    def __init__(self, o: dict):
        import copy

        import torch
        import torchvision
        from torch import nn

        self.o = o
        if o.get("malloc"):  # ablation only: lightly with fewshot's allocator setting
            from fewshot.runtime import tune_allocator

            tune_allocator(True)
        torch.set_num_threads(o["threads"])
        import lightly
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum

        try:  # lightly >= 1.5 keeps it here; older releases exported it from lightly.models.utils
            from lightly.models.batchnorm import SplitBatchNorm
        except ImportError:  # pragma: no cover
            from lightly.models.utils import SplitBatchNorm

        self.batch_shuffle, self.batch_unshuffle, self.update_momentum = batch_shuffle, batch_unshuffle, update_momentum
        self.device = torch.device(o["device"])
        r = {**RECIPE, **o.get("recipe", {})}
        groups = r["groups"] if o["batch"] // r["groups"] >= 2 else 0
        torch.manual_seed(0)
        norm = (lambda c: SplitBatchNorm(c, groups)) if groups else None
        resnet = getattr(torchvision.models, r["model"])(norm_layer=norm)
        width = resnet.fc.in_features  # 512 for resnet18, 2048 for resnet50
        self.backbone = nn.Sequential(*list(resnet.children())[:-1]).to(self.device)
        self.head = MoCoProjectionHead(width, r["hidden"] or width, r["dim"]).to(self.device)
        self.backbone_m = copy.deepcopy(self.backbone)
        self.head_m = copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_m)
        deactivate_requires_grad(self.head_m)
        self.criterion = NTXentLoss(temperature=r["temperature"], memory_bank_size=(r["queue"], r["dim"]))
        params = list(self.backbone.parameters()) + list(self.head.parameters())
        self.optimizer = torch.optim.SGD(params, lr=r["lr"], momentum=r["sgd_momentum"], weight_decay=r["weight_decay"])
        self.views = fixed_views(o["batch"], o["img"], self.device)
        self.amp = torch.bfloat16 if o.get("amp") == "bf16" else None  # reference rows only: not lightly's examples
        self.info = {"lightly": lightly.__version__, "split_batch_norm": groups, "threads": torch.get_num_threads(),
                     "amp": "torch.bfloat16" if self.amp else "off",
                     "malloc_tuned": bool(o.get("malloc")),
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (spin)")}
        self.loader = None
        self.total_loss = 0.0

    def train_step(self, x_query, x_key) -> None:
        """lightly's MoCo example loop, with batch_shuffle for shuffle-BN."""
        m = RECIPE["momentum"]
        self.update_momentum(self.backbone, self.backbone_m, m=m)
        self.update_momentum(self.head, self.head_m, m=m)
        x_query, x_key = x_query.to(self.device, non_blocking=True), x_key.to(self.device, non_blocking=True)
        import contextlib

        import torch

        with torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext():
            query = self.head(self.backbone(x_query).flatten(start_dim=1))
            with torch.no_grad():
                x_key, shuffle = self.batch_shuffle(x_key)
                key = self.head_m(self.backbone_m(x_key).flatten(start_dim=1)).detach()
                key = self.batch_unshuffle(key, shuffle)
            loss = self.criterion(query, key)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.total_loss += loss.detach()

    def step_once(self) -> None:
        self.train_step(*self.views)

    def flops(self) -> float:
        return count_flops(self.step_once)

    # ---- end to end
    def _make_loader(self, workers: int):
        from lightly.data import LightlyDataset
        from lightly.transforms import MoCoV2Transform
        from torch.utils.data import DataLoader

        transform = MoCoV2Transform(input_size=self.o["img"])
        dataset = LightlyDataset(input_dir=self.folder, transform=transform)
        return DataLoader(dataset, batch_size=self.o["batch"], shuffle=True, drop_last=True, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=self.device.type == "cuda")

    def _batches(self):
        while True:
            for views, _, _ in self.loader:
                yield views

    def setup_e2e(self, folder: str, cache_dir: str, workers: list[int], probe_steps: int) -> dict:
        """Probe num_workers in `workers` (a few steps each) and keep lightly's fastest."""
        self.folder = folder
        probe = {}
        for w in workers:
            self.loader = self._make_loader(w)
            self.it = self._batches()
            for _ in range(2):
                self.e2e_once()
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(probe_steps):
                self.e2e_once()
            sync(self.device)
            probe[w] = probe_steps * self.o["batch"] / (time.perf_counter() - t0)
            self._shutdown_loader()
        best = max(probe, key=probe.get)
        self.workers = best
        self.loader = self._make_loader(best)
        self.it = self._batches()
        return {"num_workers_probe_img_per_s": probe, "num_workers": best}

    def _shutdown_loader(self) -> None:
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader, self.it = None, None

    def worker_pids(self) -> list[int]:
        it = getattr(self.loader, "_iterator", None)
        return [w.pid for w in getattr(it, "_workers", [])] if it is not None else []

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the DataLoader workers have refilled their prefetch queue and sit idle, so
        that they do not take CPU from fewshot's run that comes next (and their head start is used
        up by the next run's warm-up steps)."""
        it = getattr(self.loader, "_iterator", None)
        if it is None or not hasattr(it, "_data_queue"):
            return
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            try:
                if it._data_queue.qsize() >= it._tasks_outstanding:
                    return
            except (NotImplementedError, AttributeError):
                time.sleep(1.0)
                return
            time.sleep(0.05)

    def e2e_once(self) -> None:
        x_query, x_key = next(self.it)
        self.train_step(x_query, x_key)


# =============================================================================================
# worker processes


def worker_main(conn, side: str, opts: dict) -> None:
    try:
        impl = (Ours if side == "ours" else Lightly)(opts)
        conn.send({"ok": True, "info": impl.info, "rss_mb": peak_rss_mb()})
    except Exception:
        conn.send({"ok": False, "error": traceback.format_exc()})
        return
    while True:
        cmd = conn.recv()
        try:
            op = cmd["op"]
            if op == "quit":
                out = {}
                if isinstance(impl, Lightly) and impl.loader is not None:
                    out["loader_workers_peak_rss_mb"] = [proc_hwm_mb(p) for p in impl.worker_pids()]
                    impl._shutdown_loader()
                conn.send({"ok": True, **out})
                return
            if op == "flops":
                conn.send({"ok": True, "flops": impl.flops()})
            elif op == "setup_e2e":
                args = [cmd["folder"], cmd["cache_dir"]]
                if isinstance(impl, Lightly):
                    args += [cmd["workers"], cmd["probe_steps"]]
                conn.send({"ok": True, **impl.setup_e2e(*args)})
            elif op == "setup_pool" and isinstance(impl, Ours):
                conn.send({"ok": True, **impl.setup_pool(cmd["n"])})
            elif op in ("step", "e2e"):
                once = impl.step_once if op == "step" else impl.e2e_once
                for _ in range(cmd["warmup"]):
                    once()
                sync(impl.device)
                c0, t0 = time.process_time(), time.perf_counter()
                for _ in range(cmd["steps"]):
                    once()
                sync(impl.device)
                sec = time.perf_counter() - t0
                out = {"ok": True, "seconds": sec, "cpu_s": time.process_time() - c0,
                       "img_per_s": cmd["steps"] * impl.o["batch"] / sec, "rss_mb": peak_rss_mb()}
                if impl.device.type == "cuda":
                    import torch

                    out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(impl.device) / 2**20
                if op == "e2e" and isinstance(impl, Lightly):
                    impl.settle()
                conn.send(out)
            else:
                conn.send({"ok": False, "error": f"unknown op {op}"})
        except Exception:
            conn.send({"ok": False, "error": traceback.format_exc()})


class Worker:
    def __init__(self, side: str, opts: dict, label: str | None = None):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.label = label or side
        self.proc = ctx.Process(target=worker_main, args=(child, side, opts), daemon=False)
        saved = {k: os.environ.get(k) for k in opts.get("env", {})}
        os.environ.update(opts.get("env", {}))  # e.g. OMP_* must be set before the child imports torch
        try:
            self.proc.start()
        finally:
            child.close()  # the child holds its own copy: ours kept the pipe open, so recv never saw EOF
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.ready = self._recv()

    def _recv(self) -> dict:
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(timeout=30)
            msg = {"ok": False, "error": f"the process ended without an answer (exit code {self.proc.exitcode})"}
        if not msg.get("ok"):
            self.close()
            raise RuntimeError(f"{self.label} worker failed: {msg.get('error')}")
        return msg

    def call(self, **cmd) -> dict:
        self.conn.send(cmd)
        return self._recv()

    def close(self) -> dict:
        out = {}
        if self.proc.is_alive():
            try:
                self.conn.send({"op": "quit"})
                out = self.conn.recv()
            except (EOFError, BrokenPipeError, OSError):
                pass
            self.proc.join(timeout=30)
            if self.proc.is_alive():
                self.proc.terminate()
        return out


# =============================================================================================
# the parent: roofline, data folder, alternation, tables


def matmul_gflops(device_name: str, threads: int, dtype: str = "float32") -> float:
    """Best of 3 large square matmuls: the machine's dense compute rate right now."""
    import torch

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    n = 2048 if device.type == "cpu" else 8192
    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    a @ b
    sync(device)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def build_image_folder(n: int, size: int) -> Path:
    """n fashion-mnist training images as RGB PNGs of size x size px in .cache/bench (built once)."""
    import numpy as np
    from PIL import Image

    folder = DATA_DIR / f"fashion_{size}px_{n}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    from fewshot.data.build import load_fashion_sources

    src = load_fashion_sources()["train"]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, j in enumerate(rng.choice(len(src.images), size=n, replace=False)):
        img = Image.fromarray(src.images[j]).resize((size, size), Image.BICUBIC).convert("RGB")
        img.save(folder / f"{i:05d}.png")
    done.write_text(str(n))
    return folder


def summarize(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def alternate(workers: list[Worker], op: str, runs: int, warmup: int, steps: int, roof: dict | None,
              log=print) -> dict:
    """runs x (roofline, workers[0], workers[1], ...); per-run results per worker label."""
    res = {w.label: [] for w in workers}
    for r in range(runs):
        if roof is not None:
            roof["samples"].append(matmul_gflops(roof["device"], roof["threads"], roof.get("dtype", "float32")))
        for w in workers:
            out = w.call(op=op, warmup=warmup, steps=steps)
            out["roofline_gflops"] = roof["samples"][-1] if roof is not None else None
            res[w.label].append(out)
        log("    run %d: " % (r + 1) + "  ".join(f"{w.label} {res[w.label][-1]['img_per_s']:.1f}" for w in workers)
            + " img/s" + (f"  (matmul {roof['samples'][-1]:.0f} GFLOP/s)" if roof is not None else ""))
    return res


def side_summary(runs: list[dict], flops_per_img: float | None) -> dict:
    ips = [r["img_per_s"] for r in runs]
    out = {"img_per_s": summarize(ips), "peak_rss_mb": max(r["rss_mb"] for r in runs)}
    if flops_per_img and runs[0].get("roofline_gflops"):
        pct = [100 * r["img_per_s"] * flops_per_img / 1e9 / r["roofline_gflops"] for r in runs]
        out["gflops_per_s"] = summarize([r["img_per_s"] * flops_per_img / 1e9 for r in runs])
        out["roofline_pct"] = summarize(pct)
    if "gpu_peak_mb" in runs[0]:
        out["gpu_peak_mb"] = max(r["gpu_peak_mb"] for r in runs)
    return out


def fmt_ips(s: dict) -> str:
    return f"{s['median']:7.1f} ({s['min']:.1f}..{s['max']:.1f})"


def run_config(a, img: int, batch: int, modes: list[str], log=print) -> dict:
    import torch

    device = a.device
    threads = a.threads
    recipe = {"model": a.model, "hidden": MODEL_WIDTH[a.model]}
    base = dict(img=img, batch=batch, device=device, threads=threads, recipe=recipe)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    result = {"meta": meta(a, img, batch, gpu), "recipe": {**RECIPE, **recipe}, "modes": {}}
    log(f"\n== MoCo {a.model}, {img} px, batch {batch}, K {RECIPE['queue']}, {threads} threads, {device}"
        + ("" if gpu else " (no GPU in this session)") + " ==")
    t0 = time.perf_counter()
    ours = Worker("ours", base, "fewshot")
    try:
        light = Worker("lightly", base, "lightly")
    except BaseException:
        ours.close()  # a non-daemon worker left waiting would keep this process from exiting
        raise
    try:
        result["setup"] = {"fewshot": ours.ready["info"], "lightly": light.ready["info"],
                           "workers_start_s": time.perf_counter() - t0}
        roof_dev = device
        # where fewshot's step runs in bf16 autocast (CUDA; CPUs with native bf16 at >= 48 px), its roofline is
        # the bf16 matmul rate
        roof = {"device": roof_dev, "threads": threads, "samples": [],
                "dtype": "bfloat16" if "bfloat16" in str(ours.ready["info"]["amp"]) else "float32"}
        result["roofline_dtype"] = roof["dtype"]
        fo, fl = ours.call(op="flops")["flops"] / batch, light.call(op="flops")["flops"] / batch
        result["flops_per_image"] = {"fewshot": fo, "lightly": fl}
        log(f"  FLOPs per image of a step (fwd q + fwd k + bwd q): fewshot {fo / 1e9:.3f} G, lightly {fl / 1e9:.3f} G")
        for mode in modes:
            log(f"  [{mode}] {a.runs} alternating runs x {a.steps} steps (+{a.warmup} warm-up)")
            setup = {}
            if mode == "e2e":
                folder = build_image_folder(a.pool_images, 64)
                cache_dir = tempfile.mkdtemp(prefix="moco_speed_cache_", dir=DATA_DIR)
                setup["fewshot"] = ours.call(op="setup_e2e", folder=str(folder), cache_dir=cache_dir)
                cores = os.cpu_count() or 1  # a GPU host has more cores: give lightly's loader its best chance
                workers = [0, 1, 2] if cores <= 2 else sorted({0, 2, 4, min(8, cores), min(12, cores)})
                setup["lightly"] = light.call(op="setup_e2e", folder=str(folder), cache_dir=cache_dir,
                                              workers=workers, probe_steps=a.probe_steps)
                setup["folder"] = str(folder)
                log(f"    fewshot uint8 cache: first build {setup['fewshot']['cache_build_s']:.1f} s for "
                    f"{setup['fewshot']['images']} PNGs (one-time, excluded), reload {setup['fewshot']['cache_load_s']:.3f} s")
                probe = ", ".join(f"{k}: {v:.1f}" for k, v in setup["lightly"]["num_workers_probe_img_per_s"].items())
                log(f"    lightly num_workers probe (img/s) {probe} -> {setup['lightly']['num_workers']}")
            res = alternate([ours, light], mode, a.runs, a.warmup, a.steps, roof, log)
            so, sl = side_summary(res["fewshot"], fo), side_summary(res["lightly"], fl)
            ratios = [x["img_per_s"] / y["img_per_s"] for x, y in zip(res["fewshot"], res["lightly"])]
            entry = {"fewshot": so, "lightly": sl, "pair_ratios": ratios, "ratio_median": statistics.median(ratios),
                     "raw": res, "setup": setup}
            target = TARGETS.get((img, batch, mode))
            if target:
                entry["target_ratio"] = target
                entry["target_met"] = entry["ratio_median"] >= target
            if mode == "step" and (img, batch) == (64, 64):
                entry["target_roofline_pct"] = 100 * ROOFLINE_TARGET
                entry["roofline_met"] = so.get("roofline_pct", {}).get("median", 0) >= 100 * ROOFLINE_TARGET
            result["modes"][mode] = entry
    finally:
        result["shutdown"] = {"lightly": light.close(), "fewshot": ours.close()}
    result["roofline_gflops"] = summarize(roof["samples"]) if roof["samples"] else None
    print_table(result, img, batch, log)
    return result


def print_table(result: dict, img: int, batch: int, log=print) -> None:
    roof = result.get("roofline_gflops")
    log("")
    log(f"MoCo speed: {result['recipe']['model']}, {img} px, batch {batch}, {result['meta']['threads']} threads, "
        f"{result['meta']['device']}; matmul roofline " + (f"{roof['median']:.0f} GFLOP/s (median; "
        f"{roof['min']:.0f}..{roof['max']:.0f})" if roof else "n/a"))
    if result.get("roofline_dtype") == "bfloat16":
        cuda = str(result["meta"]["device"]).startswith("cuda")
        log("(%roof: of the bf16 matmul rate, fewshot's autocast dtype (train.amp=auto); lightly's step runs in "
            + ("fp32/TF32)" if cuda else "fp32, as its examples do)"))
    log(f"{'mode':5} {'side':8} {'img/s median (min..max)':>27} {'GFLOP/s':>8} {'%roof':>6} {'peak RSS':>9}")
    for mode, e in result["modes"].items():
        for side in ("fewshot", "lightly"):
            s = e[side]
            g = s.get("gflops_per_s", {}).get("median")
            p = s.get("roofline_pct", {}).get("median")
            gpu = f"  GPU peak {s['gpu_peak_mb']:.0f}MB" if s.get("gpu_peak_mb") is not None else ""
            log(f"{mode:5} {side:8} {fmt_ips(s['img_per_s']):>27} {g if g is None else round(g):>8} "
                f"{'' if p is None else f'{p:.0f}%':>6} {s['peak_rss_mb']:7.0f}MB{gpu}")
        verdict = ""
        if "target_ratio" in e:
            verdict = f"  target >= {e['target_ratio']}x: {'met' if e['target_met'] else 'NOT met'}"
        if "roofline_met" in e:
            verdict += f"; roofline >= 70%: {'met' if e['roofline_met'] else 'NOT met'}"
        log(f"{'':5} ratio per pair " + " ".join(f"{r:.2f}" for r in e["pair_ratios"])
            + f" -> median {e['ratio_median']:.2f}x{verdict}")


def meta(a, img: int, batch: int, gpu: str | None) -> dict:
    import torch
    import torchvision

    try:
        import lightly

        lv = lightly.__version__
    except ImportError:
        lv = None
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "lightly": lv,
            "python": platform.python_version(), "cpu": cpu, "cpu_count": os.cpu_count(), "threads": a.threads,
            "device": a.device, "gpu": gpu or "none (no GPU in this session)", "img": img, "batch": batch,
            "runs": a.runs, "steps": a.steps, "warmup": a.warmup, "loadavg_start": os.getloadavg(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def lightly_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("lightly") is None


def out_path(out: str | None, default: Path, part: str, several: bool) -> Path:
    """--out as given when this run writes one file; with several, <stem>_<part><suffix> each, so that
    none overwrites another (and the default, committed results are left alone)."""
    if not out:
        return default
    out = Path(out)
    return out.with_name(f"{out.stem}_{part}{out.suffix or '.json'}") if several else out


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj.setdefault("meta", {})["loadavg_end"] = os.getloadavg()
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    print(f"wrote {path}")


# =============================================================================================
# ablation, scaling, profile (fewshot alone)


ABLATIONS = [
    # (row label, options of fewshot's default worker, options of the variant worker): leave one out
    ("split-BN output without view bookkeeping", {}, {"fast_split_bn": False}),
    ("fused SGD (optim.fused=auto)", {}, {"fused": False}),
    ("max-pool through the channels_last kernel (models/fast_pool)", {}, {"fast_maxpool": False}),
    ("convolutions on tiny maps as matmuls (models/tiny_map_conv)", {}, {"tiny_map_conv": False}),
    ("allocator: keep freed memory (fewshot.runtime)", {}, {"malloc": False}),
    ("OpenMP spin wait (default; FEWSHOT_OMP_WAIT=passive opt-in)", {}, {"env": {"FEWSHOT_OMP_WAIT": "passive"}}),
    ("bf16 autocast where the CPU computes it (amp=auto, >= 48 px)", {}, {"amp": "off"}),
    ("channels_last on CPU (rejected: off by default)", {}, {"channels_last": True}),
    ("torch.compile on CPU (rejected: auto = CUDA only)", {}, {"compile": True}),
    ("all kept changes off (the plain path)", {}, {"fast_split_bn": False, "fused": False, "malloc": False,
                                                "fast_maxpool": False, "tiny_map_conv": False}),
]
AUGMENT_ABLATIONS = [  # e2e rows: the change is in make_batch, which the step's fixed views never run
    ("augmentation op forms (data/augment.set_fast_path), e2e", {}, {"fast_augment": False}),
]
LIGHTLY_REFERENCES = [  # lightly given fewshot's process settings: which part of the gap is settings
    ("lightly + fewshot's allocator setting", {"malloc": True}),
    ("lightly + OpenMP passive wait", {"env": {"OMP_WAIT_POLICY": "PASSIVE"}}),
    ("lightly + bf16 autocast (a wrapper of one's own)", {"amp": "bf16"}),
]


def _ab_row(label: str, side: str, base: dict, on: dict, var: dict, a, mode: str = "step") -> dict:
    t0 = time.perf_counter()
    w_on = Worker(side, {**base, **on}, "default")
    try:
        w_var = Worker(side, {**base, **var}, "variant")
    except BaseException:
        w_on.close()
        raise
    try:
        if mode == "e2e":  # same uint8 pool in both workers (seeded), PNG decoding excluded as in e2e
            for w in (w_on, w_var):
                w.call(op="setup_pool", n=a.pool_images)
        start = time.perf_counter() - t0
        print(f"  {label}: {on or 'defaults'} vs {var} ({mode})")
        res = alternate([w_on, w_var], mode, a.runs, a.warmup, a.steps, None)
    finally:
        w_on.close(), w_var.close()
    x = [r["img_per_s"] for r in res["default"]]
    y = [r["img_per_s"] for r in res["variant"]]
    return {"change": label, "side": side, "mode": mode, "default_opts": on, "variant_opts": var,
            "default": summarize(x), "variant": summarize(y),
            "default_over_variant": summarize([p / q for p, q in zip(x, y)]),
            "default_info": w_on.ready["info"], "variant_info": w_var.ready["info"],
            "default_peak_rss_mb": max(r["rss_mb"] for r in res["default"]),
            "variant_peak_rss_mb": max(r["rss_mb"] for r in res["variant"]), "workers_start_s": start}


def run_ablation(a) -> dict:
    """Leave-one-out: fewshot's default path against it with one change undone (or a rejected one
    switched on), alternating runs in two worker processes; then all kept changes off against all
    on; and lightly with fewshot's process settings, to show how much of the gap they explain. The
    augmentation row times e2e (make_batch + step from a uint8 pool in memory): the step alone never augments."""
    img, batch = a.img_size or 64, a.batch_size or 64
    base = dict(img=img, batch=batch, device=a.device, threads=a.threads)
    print(f"== ablation: fewshot MoCo step, {img} px, batch {batch}, {a.threads} threads, {a.device} ==")
    def chosen(label: str) -> bool:
        return not a.ablation_rows or any(part.lower() in label.lower() for part in a.ablation_rows)

    rows = [_ab_row(label, "ours", base, on, var, a) for label, on, var in ABLATIONS if chosen(label)]
    rows += [_ab_row(label, "ours", base, on, var, a, "e2e")
             for label, on, var in AUGMENT_ABLATIONS if chosen(label)]
    skipped = []
    if lightly_missing():
        skipped = [label for label, _ in LIGHTLY_REFERENCES if chosen(label)]
        if skipped:
            print(f"  lightly is not installed: skipping its {len(skipped)} reference rows")
    else:
        rows += [_ab_row(label, "lightly", base, on, {}, a) for label, on in LIGHTLY_REFERENCES if chosen(label)]
    print(f"\n{'change':56} {'with':>7} {'without':>7} {'effect: median of pairs (min..max)':>36}")
    for r in rows:
        d = r["default_over_variant"]
        print(f"{r['change'][:56]:56} {r['default']['median']:7.1f} {r['variant']['median']:7.1f} "
              f"{d['median']:>14.2f}x ({d['min']:.2f}..{d['max']:.2f})")
    out = {"meta": meta(a, img, batch, None), "rows": rows,
           "note": "'with' = fewshot's default path (or lightly with the setting); 'without' = the variant "
                   "(one change undone, or a rejected change switched on). effect > 1: 'with' is faster."}
    if skipped:
        out["skipped_rows"] = {"reason": "lightly is not installed", "rows": skipped}
    return out


def run_scaling(a) -> dict:
    """fewshot alone, one fresh worker per cell (so peak RSS is the cell's own), a few steps each."""
    cells = []
    for b in (32, 64, 128, 256, 512):
        cells.append(("batch", dict(img=64, batch=b)))
    for s in (32, 64, 96, 128, 160, 224):
        cells.append(("img_size", dict(img=s, batch=64)))
    for k in (1024, 4096, 16384, 65536):
        cells.append(("queue K", dict(img=64, batch=64, recipe={"queue": k})))
    for m in ("resnet18", "resnet50", "vit_tiny_patch16_224"):
        cells.append(("model", dict(img=64, batch=64, recipe={"model": m, "hidden": None})))
    rows = []
    print(f"== scaling: fewshot MoCo step, {a.threads} threads, {a.device} ==")
    for axis, c in cells:
        opts = dict(device=a.device, threads=a.threads, **c)
        w = Worker("ours", opts, "fewshot")
        try:
            flops = w.call(op="flops")["flops"] / c["batch"]
            out = w.call(op="step", warmup=1, steps=a.scaling_steps)
        finally:
            w.close()
        r = c.get("recipe", {})
        row = {"axis": axis, "model": r.get("model", "resnet18"), "img": c["img"], "batch": c["batch"],
               "K": r.get("queue", RECIPE["queue"]), "img_per_s": out["img_per_s"], "peak_rss_mb": out["rss_mb"],
               "gflop_per_img": flops / 1e9, "gpu_peak_mb": out.get("gpu_peak_mb")}
        rows.append(row)
        print(f"  {axis:9} {row['model']:22} {row['img']:4d}px b{row['batch']:<4d} K{row['K']:<6d} "
              f"{row['img_per_s']:8.1f} img/s  peak RSS {row['peak_rss_mb']:6.0f} MB  {row['gflop_per_img']:.3f} GFLOP/img")
    return {"meta": meta(a, 0, 0, None), "rows": rows}


def run_profile(a) -> dict:
    """torch.profiler top ops of fewshot's step (in this process, with fewshot's settings)."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for img, batch in ((64, 64), (32, 256)):
        impl = Ours(dict(img=img, batch=batch, device=a.device, threads=a.threads))
        for _ in range(2):
            impl.step_once()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device.startswith("cuda") else [])
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for _ in range(3):
                impl.step_once()
            sync(impl.device)
            ips = 3 * batch / (time.perf_counter() - t0)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        top = [{"op": e.key, "self_cpu_pct": 100 * e.self_cpu_time_total / total, "calls_per_step": e.count / 3,
                "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / 3} for e in events[:20]]
        out[f"{img}px_b{batch}"] = {"img_per_s_while_profiling": ips, "top_ops": top}
        print(f"\n== profile: fewshot step {img} px batch {batch} ({ips:.1f} img/s under the profiler) ==")
        for t in top[:15]:
            print(f"  {t['op'][:44]:44} {t['self_cpu_pct']:5.1f}%  {t['self_cpu_ms_per_step']:8.1f} ms/step  "
                  f"{t['calls_per_step']:6.1f} calls/step")
        del impl
    return {"meta": meta(a, 0, 0, None), "profiles": out}


# =============================================================================================


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--mode", choices=["step", "e2e", "both"], default="both",
                    help="with --img-size/--batch-size; the default suite runs both at 64px b64 and step at 32px b256")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--runs", type=int, default=3, help="alternating runs per side (>= 1; 3 or more for a median "
                    "worth reporting)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before each run")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both sides")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--model", choices=sorted(MODEL_WIDTH), default="resnet18",
                    help="backbone on both sides (timm's / torchvision's); resnet50 is the issue's GPU setting")
    ap.add_argument("--pool-images", type=int, default=3000, help="PNG files in the e2e image folder")
    ap.add_argument("--probe-steps", type=int, default=3, help="timed steps per lightly num_workers probe")
    ap.add_argument("--scaling-steps", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/"
                    "moco_speed_<device>_<img>px_b<batch>.json); where a run writes several files, each gets "
                    "_<img>px_b<batch> (or _ablation, ...) before the suffix")
    ap.add_argument("--ablation", action="store_true", help="fewshot's speed changes one by one (step mode; "
                    "the augmentation row e2e from --pool-images random uint8 images in memory)")
    ap.add_argument("--ablation-rows", nargs="*", help="with --ablation: only the rows whose label contains one "
                    "of these strings (e.g. max-pool 'plain path')")
    ap.add_argument("--scaling", action="store_true", help="fewshot alone over batch, image size, K and model")
    ap.add_argument("--profile", action="store_true", help="torch.profiler top ops of fewshot's step")
    a = ap.parse_args(argv)
    if a.runs < 1 or a.steps < 1 or a.warmup < 0:
        ap.error("--runs and --steps must be >= 1, --warmup >= 0")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available here", file=sys.stderr)
        return 2
    dev = a.device.split(":")[0]
    t_start = time.perf_counter()
    if a.ablation or a.scaling or a.profile:
        several = sum((a.ablation, a.scaling, a.profile)) > 1
        for flag, fn, suffix in ((a.ablation, run_ablation, "ablation"), (a.scaling, run_scaling, "scaling"),
                                 (a.profile, run_profile, "profile")):
            if flag:
                write_json(out_path(a.out, RESULTS / f"moco_speed_{dev}_{suffix}.json", suffix, several), fn(a))
        return 0
    if lightly_missing():
        print("lightly is not installed here, and this run compares against it: set up the benchmark venv with "
              "benchmarks/setup_bench_venv.sh (or `make bench`); --ablation, --scaling and --profile run fewshot "
              "alone", file=sys.stderr)
        return 2
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    if a.img_size or a.batch_size:
        configs = [(a.img_size or 64, a.batch_size or 64, ["step", "e2e"] if a.mode == "both" else [a.mode])]
    else:  # the issue's suite
        configs = [(64, 64, ["step", "e2e"] if a.mode == "both" else [a.mode]), (32, 256, ["step"])]
        if a.mode == "e2e":
            configs = configs[:1]
    summary = []
    for img, batch, modes in configs:
        result = run_config(a, img, batch, modes)
        tag = "" if a.model == "resnet18" else f"{a.model}_"
        name = f"{tag}{img}px_b{batch}"
        write_json(out_path(a.out, RESULTS / f"moco_speed_{dev}_{name}.json", name, len(configs) > 1), result)
        summary.append(result)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
