"""`fewshot pretrain`: the MoCo task for the engine (the pool's two views, the kNN monitor on the labelled splits),
running it, and its start line and metrics.json. The pool's files are found in data/pool.py; the settings' defaults,
checks and advice are in ssl/pretrain_settings.py."""

from __future__ import annotations

from pathlib import Path

import torch

from fewshot.data.augment import BatchAugment, preset as aug_preset
from fewshot.data.cache import default_cache_dir, load_images
from fewshot.data.fit import fit_of
from fewshot.data.label_space import LabelSpace
from fewshot.data.pool import pool_paths
from fewshot.data.samplers import epoch_batches
from fewshot.data.sets import load_splits
from fewshot.data.skipped import write_skipped
from fewshot.data.transforms import Normalize
from fewshot.data.warn_once import warn_once
from fewshot.errors import UserError, one_line
from fewshot.eval.features import backbone_features
from fewshot.models.backbone import backbone_options, check_input_size, create_backbone, input_size, mean_std
from fewshot.models.weights import load_backbone_weights, weights_note
from fewshot.ssl.functional import high_temperature_warning, temperature_hint, topk_accuracy
from fewshot.ssl.knn import knn_predict
from fewshot.ssl.moco import MoCo
from fewshot.ssl.pretrain_settings import (bn_protection, has_batch_norm, queue_advice, resolve_pretrain_defaults,
                                           shared_bn_warning, split_groups, unused_split_bn_note)
from fewshot.train.distributed import DistContext
from fewshot.train.engine import Engine
from fewshot.train.semi import POOL_SKIP_NOTE, pool_fingerprint, pool_key, pool_subset
from fewshot.utils import make_generator


class MoCoTask:
    kind = "moco"
    supports_ema = False
    drop_last = True

    def __init__(self, cfg: dict, infos, device: torch.device, ctx: DistContext, resuming: bool = False,
                 quiet_weights: bool = False, pool_limit: int | None = None):
        """``resuming``: last.pt replaces the model, so model.weights are not read (the file may be gone, as for
        `fewshot train --resume`); ``quiet_weights``: the model.strict=false warning was given already;
        ``pool_limit``: train on a seeded random share of the pool (`fewshot run`'s cap on a cold pool)."""
        self.cfg, self.device, self.ctx = cfg, device, ctx
        m, d = cfg["moco"], cfg["data"]
        warn_once([said] if (said := high_temperature_warning(float(m["temperature"]))) else [])
        backbone = create_backbone(cfg["model"]["name"], **backbone_options(cfg["model"]))
        self.weights_loaded = None  # load_backbone_weights' counts, for the start-up line
        self.last_knn: tuple | None = None  # (the last evaluate's result, its knn_metrics): write_knn_metrics
        if cfg["model"]["weights"] and not resuming:
            self.weights_loaded = load_backbone_weights(backbone, cfg["model"]["weights"],
                                                        strict=cfg["model"]["strict"], quiet=quiet_weights)
        self.size = input_size(backbone, cfg["model"]["img_size"])
        check_input_size(backbone, self.size, cfg["model"]["name"])
        mean, std = mean_std(backbone)
        self.normalize = Normalize(mean, std).to(device)
        self.model = MoCo(backbone, dim=m["dim"], queue_size=m["queue_size"], momentum=m["momentum"],
                          temperature=m["temperature"], mlp=m["mlp"], mlp_hidden=m["mlp_hidden"],
                          split_bn_groups=split_groups(cfg, ctx.world, backbone), symmetric=m["symmetric"],
                          shuffle_across_ranks=m["shuffle_bn"] not in (False, "off", "none"))
        self.channels_last = cfg["train"]["channels_last"] is True or (
            cfg["train"]["channels_last"] == "auto" and device.type == "cuda")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        from fewshot.runtime import compile_modules

        # train.compile auto: CUDA only (on the CPU it was measured not to help; docs/performance.md)
        self.compiled = compile_modules([self.model.encoder_q, self.model.encoder_k], cfg["train"]["compile"], device)
        a = cfg["aug"]
        try:
            aug = aug_preset(m["preset"], self.size, scale=tuple(a["scale"]), jitter=tuple(a["jitter"]),
                             jitter_p=a["jitter_p"], gray_p=a["gray_p"], blur_p=a["blur_p"], flip_p=a["flip_p"],
                             mean=mean, std=std)
        except (ValueError, TypeError) as exc:  # aug.* out of range: the user's settings, not a bug
            raise UserError(f"aug settings: {exc}") from None
        self.augment = BatchAugment(aug).to(device)
        cache = default_cache_dir(d["root"], d["cache_dir"])
        paths, self.pool_source = pool_paths(cfg, infos)
        self.pool_share = ""  # the pool's seeded random share, in words ("": the whole pool)
        subset = pool_subset(len(paths), pool_limit, int(cfg["train"]["seed"]))
        if subset is not None:  # the files `fewshot run` decoded (run_checks.moco_pool_share: the same order)
            self.pool_share = f"a seeded random share of the pool's {len(paths):,} files"
            paths = [paths[i] for i in subset.tolist()]
        # under torchrun each rank's digests of its pool (hashed once, then kept in the cache's meta file): the ranks
        # compare them (Engine: check_same_image_counts); one process writes them as it decodes (next to free), so
        # that a later torchrun start finds them there
        pool = load_images(paths, self.size, cache, crop_pct=1.0, desc="loading unlabeled pool",
                           skip_bad=d["skip_bad_images"] or d["skip_bad_unlabeled"], skip_note=POOL_SKIP_NOTE,
                           max_gb=d.get("cache_max_gb"), bit_depth=d.get("bit_depth", "auto"), digests=ctx.enabled,
                           entry_digests=True, resize=fit_of(cfg, infos))
        self.pool = pool.images[pool.valid] if not bool(pool.valid.all()) else pool.images
        self.pool_skipped = list(pool.bad)
        self.pool_digest = pool_fingerprint(pool)
        # the files the pool's images come from: a resume refuses a pool whose files changed (images drawn by position)
        kept = [p for p, ok in zip(paths, pool.valid.tolist()) if ok]
        self.pool_key = pool_key(kept, d["root"], True)
        self.legacy_pool_key = pool_key(kept, d["root"], True, legacy=True)  # what older checkpoints recorded
        self.space = LabelSpace.from_infos(infos)
        self.train_set, self.val_set = load_splits(infos, ("train", "val"), self.space, self.size, cache,
                                                   d["crop_pct"], d["skip_bad_images"], d.get("cache_max_gb"),
                                                   d.get("bit_depth", "auto"), fit_of(cfg, infos))
        self.eval_every = m["knn_every"]
        self.n_parameters = sum(p.numel() for p in self.model.encoder_q.backbone.parameters())

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.model.encoder_q.parameters() if p.requires_grad],
                 "weight_decay": self.cfg["optim"]["weight_decay"], "lr_scale": 1.0}]

    def plan_epoch(self, epoch: int) -> list[torch.Tensor]:
        t = self.cfg["train"]
        return epoch_batches(len(self.pool), t["batch_size"], epoch, t["seed"], "shuffle", self.ctx.rank,
                             self.ctx.world, drop_last=True)

    def make_batch(self, idx: torch.Tensor, epoch: int, step: int):
        """Two views per image. Parameters are drawn for the global batch and sliced per rank, so one
        process given the global batch sees exactly what the ranks see together."""
        bs, seed = len(idx), self.cfg["train"]["seed"]
        gen = make_generator(seed, epoch, step, 1)
        hw = tuple(self.pool.shape[-2:])
        total = bs * self.ctx.world
        lo, hi = self.ctx.rank * bs, (self.ctx.rank + 1) * bs
        pq = {k: v[lo:hi] for k, v in self.augment.sample_params(total, gen, hw).items()}
        pk = {k: v[lo:hi] for k, v in self.augment.sample_params(total, gen, hw).items()}
        x = self.pool[idx].to(self.device, non_blocking=True)
        return (self.augment.apply(x, pq, self.channels_last), self.augment.apply(x, pk, self.channels_last),
                make_generator(seed, epoch, step, 2))

    def training_step(self, model, batch):
        im_q, im_k, gen = batch
        loss, logits = model(im_q, im_k, gen)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        acc1, acc5 = topk_accuracy(logits.detach(), target, (1, 5))
        return loss, {"contrast_acc1": acc1, "contrast_acc5": acc5}, logits.shape[0]

    def nonfinite_hint(self) -> str | None:
        """The Engine's non-finite message names a tiny moco.temperature as the likely cause (temperature_hint)."""
        return temperature_hint(float(self.cfg["moco"]["temperature"]))

    def evaluate(self, model, epoch: int) -> dict:
        """kNN accuracy per dataset: the dataset's labelled train images vote for its val images. The whole
        result (acc5, n) is kept in ``last_knn``: `fewshot run`'s metrics.json of the weights its stage ends with
        is the engine's closing evaluation, not a second one."""
        full = self.knn_metrics(model)
        per = {name: m["acc1"] for name, m in full.items()}
        per["mean"] = sum(per.values()) / max(1, len(per))
        result = {"score": per["mean"], "knn_acc1": per}
        self.last_knn = (result, full)
        return result

    def knn_metrics(self, model) -> dict[str, dict]:
        """Per dataset {acc1, acc5, n} of the weighted kNN monitor (k, t from moco.knn_*) on val."""
        backbone = model.encoder_q.backbone
        tr = backbone_features(backbone, self.train_set.images, self.normalize, self.device)
        va = backbone_features(backbone, self.val_set.images, self.normalize, self.device)
        k, t = self.cfg["moco"]["knn_k"], self.cfg["moco"]["knn_t"]
        out = {}
        for d, name in enumerate(self.space.names):
            mt, mv = self.train_set.dataset_ids == d, self.val_set.dataset_ids == d
            off = self.space.offsets[d]
            labels = self.val_set.targets[mv] - off
            scores = knn_predict(tr[mt], self.train_set.targets[mt] - off, va[mv], self.space.sizes[d], k, t)
            n = int(labels.numel())
            acc1, acc5 = topk_accuracy(scores, labels, (1, 5)) if n else (float("nan"), float("nan"))
            out[name] = {"acc1": acc1, "acc5": acc5, "n": n}
        return out

    def checkpoint_extra(self) -> dict:
        return {"label_space": self.space.to_dict(), "n_parameters": self.n_parameters, "img_size": self.size,
                "model_name": self.cfg["model"]["name"], "n_pool": len(self.pool), "pool_key": self.pool_key}

    def load_checkpoint_extra(self, ck: dict) -> None:
        """The pool the run trained on: the same count, and the same files (a checkpoint saved before the key was
        kept: the count only); swapped files of the same count resumed without a word."""
        from fewshot.train.checkpoint import check_same_images

        check_same_images(ck, "n_pool", len(self.pool), "pool images")
        if ck.get("pool_key") not in (None, self.pool_key, self.legacy_pool_key):
            raise UserError(f"--resume continues a MoCo run on the unlabeled pool it trained with, but the pool "
                            f"({self.pool_source}) has other files now ({len(self.pool)} images, as in the run; files "
                            f"renamed or moved count as other files). Restore the pool's files to resume, or start a "
                            f"new run with another --out.")


def run_pretrain(cfg: dict, out: Path, resume: bool = False) -> dict:
    from fewshot.train.finetune import start_job
    from fewshot.train.run_dir import undone_if_start_fails

    cfg["_task"] = "moco"
    with undone_if_start_fails(out) as start:  # a bad model or weights file leaves no run folder behind
        # its last.pt is left unheld (mapped, it kept a replaced file on disk while the run trained)
        device, ctx, infos, resuming, ck = start_job(cfg, out, resume,
                                                     lambda ctx, resuming: resolve_pretrain_defaults(cfg, ctx.world),
                                                     start, "moco")  # MoCoTask.kind
        task = MoCoTask(cfg, infos, device, ctx, resuming=resuming)
        # a changed pool is refused before the start line and skipped_images.json (run_finetune's order): refused
        # in Engine.resume, it had said the start and rewritten the file of a run it did not continue
        saved_amp = None
        if ck is not None:
            task.load_checkpoint_extra(ck)
            saved_amp = ck.get("amp")
            del ck  # its tensors mapped: Engine.resume reads the file again
        engine = Engine(task, cfg, out, device, ctx)
        engine.keep_resolved_amp(saved_amp)  # before the header, which names the arithmetic
        announce_pretrain(cfg, out, task, engine, device, ctx)
    result = engine.fit(resume=resume)
    if ctx.is_main:
        from fewshot.report.plots import plot_pretrain_curves

        plot_pretrain_curves(Path(out))
        written = write_knn_metrics(engine, task, Path(out))
        if written:
            print(one_line(knn_summary(written, result)))
    return result or {}


def announce_pretrain(cfg: dict, out: Path, task: MoCoTask, engine: Engine, device, ctx) -> None:
    """The start's lines (rank 0): what is pretrained on what, and the warnings about the queue and BatchNorm;
    skipped_images.json."""
    if ctx.is_main:
        write_skipped(out, task.pool_skipped + task.train_set.skipped + task.val_set.skipped)
        m = cfg["moco"]
        print(one_line(f"MoCo ({m['preset']}) pretraining {cfg['model']['name']}"
                       f"{weights_note(task.weights_loaded, cfg['model']['weights'])} on {len(task.pool)} unlabeled "
                       f"image{'' if len(task.pool) == 1 else 's'} ({task.pool_source}) at {task.size}px on "
                       f"{device} x{ctx.world} ({engine.precision}"
                       f"{speed_settings(task)}): "
                       f"K={m['queue_size']}, m={m['momentum']}, T={m['temperature']}, "
                       f"{bn_protection(task.model, ctx.world)}; run directory {out}"))
        for said in (unused_split_bn_note(cfg, task.model, ctx.world), shared_bn_warning(task.model, ctx.world)):
            if said:
                print(said, flush=True)
        said = queue_warning(cfg, task, ctx.world)
        if said:
            print(said, flush=True)


def queue_warning(cfg: dict, task: MoCoTask, world: int) -> str | None:
    """The warning for a queue (moco.queue_size) of at least as many keys as the pool has images, or None: each
    query then meets older keys of its own image as negatives. `fewshot pretrain` and `fewshot run`'s MoCo stage
    both say it (the stage's queue, a floor of two batches over half the pool, exceeded a 100-image pool silently)."""
    m, pool = cfg["moco"], len(task.pool)
    if m["queue_size"] < pool:
        return None
    advice = queue_advice(pool, cfg["train"]["batch_size"] * world, world, task.model.split_bn_groups,
                          has_batch_norm(task.model.encoder_q), bool(m.get("symmetric")))
    return (f"warning: the queue (K={m['queue_size']}) holds at least as many keys as the pool has images "
            f"({pool}): each query meets older keys of its own image as negatives. {advice}")


def speed_settings(task: MoCoTask) -> str:
    """The start line's word on channels_last and train.compile where they are on: a run's speed depends on them,
    and the first epoch's images_per_s (log.jsonl) also counts the minutes compiling takes."""
    on = ", channels_last" if task.channels_last else ""
    return on + (", compiled: the first epoch's speed includes compiling" if task.compiled else "")


def knn_k_words(task: MoCoTask, k: int) -> str:
    """The k the kNN monitor used: knn_predict caps it at each dataset's train images (k=200 on a 100-image train
    set was said as k=200, and was 100)."""
    used = {name: max(1, min(k, int((task.train_set.dataset_ids == d).sum())))  # as knn_predict caps it
            for d, name in enumerate(task.space.names)}
    if all(u == k for u in used.values()):
        return f"k={k}"
    if len(set(used.values())) == 1:
        return f"k={next(iter(used.values()))}: moco.knn_k={k} capped at the train images"
    return f"moco.knn_k={k} capped at the train images: " + ", ".join(f"{n} k={u}" for n, u in used.items())


def knn_summary(written: dict, last_eval: dict | None) -> str:
    """The console's last word agrees with metrics.json (the best checkpoint's kNN accuracy); the last
    epoch's mean is added when it differs, so a user who exports last.pt sees both."""
    per = ", ".join(f"{name} {d['acc1']:.2f}" for name, d in written["datasets"].items())
    line = (f"kNN accuracy (val) of {written['checkpoint']} (epoch {written['best_epoch']}): {per}, "
            f"mean {written['mean_acc1']:.2f}")
    last = (last_eval or {}).get("knn_acc1", {}).get("mean")
    if last is not None and abs(last - written["mean_acc1"]) > 5e-3:
        line += f"; last evaluated epoch: mean {last:.2f}"
    return line


def write_knn_metrics(engine: Engine, task: MoCoTask, out: Path, which: str = "best") -> dict | None:
    """RUN/metrics.json in the SPEC's format (every run directory has one): the kNN monitor on the val splits,
    known-source mode, of the checkpoint ``which`` names, said in its ``checkpoint`` and ``epoch``. "best" (a
    standalone `fewshot pretrain`): best.pt (the epoch with the best mean kNN accuracy; last.pt without one),
    read from disk. "last" (`fewshot run`'s stage): the weights the engine ended with, which are last.pt's and
    the exported backbone's: its metrics.json scored best.pt next to an export of last.pt. Returns what it wrote
    plus the checkpoint's file name (None without a checkpoint)."""
    from fewshot.train.checkpoint import load_checkpoint, logged_epoch
    from fewshot.utils import write_json

    if which == "last":
        ckpt = out / "checkpoints" / "last.pt"
        epoch = logged_epoch({"epoch": engine.epoch, "step_in_epoch": engine.step_in_epoch})
        # the engine's last evaluation, of these weights (it evaluates after its last step), where this session
        # made it; else (resumed with the stop evaluated before the kill, or nothing left to train) scored now
        kept = task.last_knn
        per = kept[1] if kept is not None and kept[0] is engine.last_eval else task.knn_metrics(task.model)
        extra = {"checkpoint": ckpt.name, "epoch": epoch}
    else:
        ckpt = out / "checkpoints" / "best.pt"
        ckpt = ckpt if ckpt.is_file() else out / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            return None
        ck = load_checkpoint(ckpt)
        task.model.load_state_dict(ck["model"])
        per = task.knn_metrics(task.model)
        extra = {"checkpoint": ckpt.name, "epoch": logged_epoch(ck), "best_epoch": logged_epoch(ck)}
    m = task.cfg["moco"]
    metrics = {
        "mode": "known", "n_parameters": task.n_parameters,
        "mean_acc1": sum(d["acc1"] for d in per.values()) / max(1, len(per)), "datasets": per, "routing_acc": None,
        "split": "val", "metric": f"kNN ({knn_k_words(task, int(m['knn_k']))}, t={m['knn_t']}) on frozen backbone "
                                  f"features", **extra}
    write_json(out / "metrics.json", metrics)
    return dict(metrics)
