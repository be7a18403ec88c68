"""`fewshot run` on data much larger than the demo: the timing of an evaluation reads a bounded batch, the pool stays
in its cache file (a round reads only the images it labels), a cold pool is decoded only as far as the labelling can
use it, and a run that cannot keep its budget says so when it is planned."""

from __future__ import annotations

import time

import torch

from fewshot.config import resolve
from fewshot.data.cache import CachedImages, load_images
from fewshot.data.layout import scan_root
from fewshot.train.distributed import DistContext
from helpers.run_patch import patch_pipeline


def _task(root, **flags):
    from fewshot.train.supervised import SupervisedTask, resolve_finetune_defaults

    cfg = resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16, "train.device": "cpu",
                         "train.batch_size": 8, "train.progress": False, **flags})
    resolve_finetune_defaults(cfg)
    infos = scan_root(root, None, splits=("train", "val"))
    return cfg, infos, SupervisedTask(cfg, infos, torch.device("cpu"), DistContext())


def test_the_evaluation_is_timed_on_a_bounded_batch_and_a_stage_that_cannot_fit_says_so(digits_root, capsys):
    from fewshot.data.sets import ImageSet
    from fewshot.run_budget import measure_eval_seconds
    from fewshot.run_stages import plan_stage

    cfg, _, task = _task(digits_root)
    n = 2000  # a val split much larger than the timed batch (256)
    task.val_set = ImageSet(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8), torch.zeros(n, dtype=torch.long),
                            torch.zeros(n, dtype=torch.long), torch.arange(n), [None] * n)
    seen = []
    hook = task.model.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    try:
        seconds = measure_eval_seconds(task)
    finally:
        hook.remove()
    assert 0 < seconds and sum(seen) <= 2 * 256  # it evaluated all 2000 images only to time them
    # the end already past: the stage still takes its 5 steps, and says that the run will overrun
    plan_stage(task, cfg, time.monotonic() - 5.0, 1, ("train", "eval_every"))
    out = capsys.readouterr().out
    assert "warning: this stage's least time (about" in out and "--budget-minutes" in out


class Recording:
    """The cache's image array, counting the rows read from it."""

    def __init__(self, images):
        self.t, self.read = images, 0

    def __len__(self):
        return len(self.t)

    @property
    def shape(self):
        return self.t.shape

    def __getitem__(self, idx):
        out = self.t[idx]
        self.read += len(out) if out.dim() == 4 else 1
        return out


def test_pseudo_labelling_reads_only_its_share_of_the_pool_and_labels_as_before(copy_root, tmp_path, monkeypatch,
                                                                                any_confidence):
    import fewshot.run_pseudo as run_pseudo
    import fewshot.train.semi as semi
    from fewshot.eval.evaluate import compute_logits
    from fewshot.train.semi import class_quota, labelled_counts, load_pool, select_pseudo_labels

    cfg, infos, task = _task(copy_root, **{"data.cache_dir": str(tmp_path / "cache")})
    r = cfg["run"]
    ref = load_pool(cfg, infos, 16, exclude_train=True)
    paths = ref.paths
    full = load_images(paths, 16, tmp_path / "cache")
    n_pool, k = len(paths), 20
    assert n_pool >= 5 * k
    share = torch.randperm(n_pool, generator=torch.Generator().manual_seed(3))[:k].sort().values
    monkeypatch.setattr(run_pseudo, "pool_share_in_time", lambda *a, **kw: share)
    recorded = []

    def recording_load_images(*args, **kwargs):
        got = load_images(*args, **kwargs)
        recorded.append(Recording(got.images))
        return CachedImages(recorded[-1], got.valid, got.bad)

    monkeypatch.setattr(semi, "load_images", recording_load_images)
    pseudo = run_pseudo.pseudo_label_pool(task, cfg, infos, r, tmp_path / "round2.json")
    assert recorded[0].read == k  # the share, not the pool (it copied all of it, then the share, then the kept)
    kept = pseudo["images"][:]
    assert recorded[0].read == k + len(kept)
    # the labels of the old way: the decodable pool copied out, the share, its logits, the class-balanced choice
    images = full.images[full.valid][share]
    ids = ref.dataset_ids[share]
    logits = compute_logits(task.model, images, task.normalize, task.device, channels_last=task.channels_last)
    quota = class_quota(ids, task.space, r["pseudo_keep"], labelled_counts(infos, task.space), r["pseudo_max_per_shot"])
    idx, labels, _ = select_pseudo_labels(logits, ids, task.space, quota.per_class,
                                          torch.tensor(float(r["pseudo_threshold"])), quota.per_dataset)
    assert len(idx) > 0 and torch.equal(pseudo["targets"], labels) and torch.equal(kept, images[idx])

    # the next round holds the labelled images once: their repeat is of rows, not of pixels
    from fewshot.data.image_rows import ImageRows

    n_labelled = len(task.train_set)
    task.add_pseudo_labelled(pseudo["images"], pseudo["targets"], pseudo["dataset_ids"], labelled_repeat=3)
    held = task.train_set.images
    assert isinstance(held, ImageRows) and len(held.images) == n_labelled + len(kept)
    assert len(task.train_set) == 3 * n_labelled + len(kept)
    assert torch.equal(held[torch.tensor([1, n_labelled + 1, 3 * n_labelled])], torch.stack(
        [held.images[1], held.images[1], kept[0]]))


def test_a_cold_pool_is_decoded_only_as_far_as_the_labelling_can_use_it(copy_root, tmp_path, monkeypatch, capsys):
    import fewshot.train.semi as semi
    from fewshot.run_pseudo import pool_decode_limit
    from fewshot.train.semi import load_pool, pool_files

    cfg = resolve(flags={"data.root": str(copy_root), "model.img_size": 16, "data.cache_dir": str(tmp_path / "c")})
    infos = scan_root(copy_root, None, splits=("train", "val"))
    paths = pool_files(cfg, infos, exclude_train=True)[0]
    assert pool_decode_limit(cfg, paths, 1e6, n=8) is None  # decoded in time: all of it
    limit = pool_decode_limit(cfg, paths, 0.0, n=8)  # no time: one timed batch's worth
    assert limit == 8 and "decoding a seeded random 8 of them" in capsys.readouterr().out
    decoded = []
    real = semi.load_images
    monkeypatch.setattr(semi, "load_images", lambda p, *a, **kw: decoded.append(len(p)) or real(p, *a, **kw))
    pool = load_pool(cfg, infos, 16, exclude_train=True, limit=limit)
    assert decoded == [8] and len(pool.images) == 8 and set(pool.paths) <= {str(p) for p in paths}
    assert load_pool(cfg, infos, 16, exclude_train=True, limit=limit).paths == pool.paths  # seeded: the same
    load_pool(cfg, infos, 16, exclude_train=True)
    assert pool_decode_limit(cfg, paths, 0.0, n=8) is None  # a warm cache: mapped, not decoded


def test_a_closing_estimate_that_leaves_no_time_is_told_at_planning(digits_root, tmp_path, monkeypatch, capsys):
    """The closing estimate is no longer capped at half the budget (the run then planned to end after it): the
    stage keeps its floor of steps and says that the run will overrun (with the real time_holds a fresh run is
    refused instead: test_run_small_budget)."""
    import fewshot.pipeline as pipeline

    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 16,
                         "train.device": "cpu", "train.progress": False, "train.batch_size": 16, "run.report": False,
                         "run.semi_method": "off"})
    patch_pipeline(monkeypatch, "closing_seconds", lambda *a, **kw: 100.0)
    pipeline.run_pipeline(cfg, tmp_path / "r", 0.1)
    out = capsys.readouterr().out
    assert "warning: this stage's least time (about" in out and "kept for the work after it" in out


def test_the_pool_and_label_fingerprints_do_not_change_with_the_roots_place(copy_root, tmp_path):
    """`fewshot run --resume --data MOVED` (allowed) said "the unlabeled pool changed since the run started (400
    images then, 400 now)" and retrained the stopped round from scratch: the fingerprints hashed absolute paths."""
    import json
    import shutil

    from fewshot import run_pseudo

    keys = []
    for root in (copy_root, shutil.copytree(copy_root, tmp_path / "moved" / "root")):
        cfg, infos, task = _task(root, **{"data.cache_dir": str(tmp_path / "cache")})
        record = tmp_path / f"round2-{len(keys)}.json"
        pseudo = run_pseudo.pseudo_label_pool(task, cfg, infos, cfg["run"], record)
        keys.append((pseudo["key"], json.loads(record.read_text())["pool_key"]))
    assert keys[0] == keys[1]
