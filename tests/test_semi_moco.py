"""The joint MoCo + supervised loss while fine-tuning (semi.method=moco, fewshot.train.semi_moco): its InfoNCE against
a hand computation, the key encoder's momentum rule and the queue, `fewshot train` end to end with a checkpoint that
predict reads as a plain classifier, exact resume, and the refusals (no pool, several processes)."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import torch

from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.distributed import DistContext
from fewshot.train.finetune import run_finetune
from fewshot.train.supervised import SupervisedTask
from helpers.checks import assert_same, run_main
from helpers.tiny import build_digits, finetune_cfg

MOCO = {"semi.method": "moco", "semi.mu": 1}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("data"))  # 40 train images, a pool of 80


def make_task(root, ctx=None, **flags) -> SupervisedTask:
    from fewshot.data.layout import scan_root

    cfg = finetune_cfg(root, **{**MOCO, **flags})
    return SupervisedTask(cfg, scan_root(root, None, splits=("train", "val")), torch.device("cpu"),
                          ctx or DistContext())


def test_the_contrastive_loss_is_infonce_over_the_positive_key_and_the_queue(root):
    task = make_task(root, **{"moco.temperature": 0.5})
    joint = task.joint
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 128, generator=gen), dim=1)
    k = torch.nn.functional.normalize(torch.randn(3, 128, generator=gen), dim=1)
    joint.queue.copy_(torch.nn.functional.normalize(torch.randn(joint.queue_size, 128, generator=gen), dim=1))
    loss, logits = joint.contrast(q, k)
    expected = 0.0
    for i in range(3):  # -log( e^{q.k/T} / (e^{q.k/T} + sum_j e^{q.queue_j/T}) ), averaged
        pos = math.exp(float(q[i] @ k[i]) / 0.5)
        neg = sum(math.exp(float(q[i] @ row) / 0.5) for row in joint.queue)
        expected -= math.log(pos / (pos + neg)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logits.shape == (3, 1 + joint.queue_size)


def test_the_step_adds_weight_times_the_contrastive_loss_to_the_labelled_one(root):
    task = make_task(root, **{"semi.weight": 0.5, "optim.label_smoothing": 0.0, "model.drop_path": 0.0})
    batch = task.make_batch(task.plan_epoch(0)[0], 0, 0)
    x, y = batch[0], batch[1]
    state = copy.deepcopy(task.model.state_dict())
    loss, metrics, n = task.training_step(task.model, batch)
    probe = copy.deepcopy(task.model)
    probe.load_state_dict(state)  # the same BatchNorm statistics as the step's forward started from
    feats = probe.features(torch.cat([x, batch[3].query]))
    ce = torch.nn.functional.cross_entropy(probe.classify(feats[:len(x)]), y)
    assert loss.item() == pytest.approx(ce.item() + 0.5 * metrics["moco_loss"].item(), rel=1e-5)
    assert n == len(x) and len(batch[3].query) == len(batch[3].key) == 8  # semi.mu x train.batch_size
    loss.backward()
    assert all(p.grad is not None for p in task.joint.projection.parameters())  # the head trains
    optimised = {id(p) for group in task.param_groups() for p in group["params"]}
    assert {id(p) for p in task.joint.projection.parameters()} <= optimised  # and the optimizer steps (saves) it
    assert all(p.grad is None for p in task.joint.key.parameters())  # the key encoder never does


def test_the_key_encoder_follows_by_momentum_and_the_queue_takes_the_steps_keys(root):
    task = make_task(root, **{"semi.moco_momentum": 0.9})
    joint = task.joint
    opt = torch.optim.SGD(task.param_groups(), lr=0.5)
    batches = task.plan_epoch(0)
    for step in range(2):
        if step == 1:  # after one optimizer step the query encoder differs from the key encoder
            key_before = [p.detach().clone() for p in joint.key.parameters()]
            query_now = [p.detach().clone() for p in joint.query_parameters(task.model.backbone)]
            ptr_before, queue_before = joint.ptr, joint.queue.clone()
            keys_seen = []
            orig_enqueue = joint.enqueue
            joint.enqueue = lambda k: (keys_seen.append(k.detach().clone()), orig_enqueue(k))
        loss, _, _ = task.training_step(task.model, task.make_batch(batches[step], 0, step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = False
    for kb, qn, ka in zip(key_before, query_now, joint.key.parameters()):
        torch.testing.assert_close(ka, 0.9 * kb + 0.1 * qn, rtol=1e-5, atol=1e-6)
        moved |= not torch.equal(ka, kb)
    assert moved
    n, size = 8, joint.queue_size
    assert joint.ptr == (ptr_before + n) % size
    rows = [(ptr_before + i) % size for i in range(n)]
    torch.testing.assert_close(joint.queue[rows], keys_seen[0])
    others = [r for r in range(size) if r not in rows]
    assert torch.equal(joint.queue[others], queue_before[others])


def test_the_key_encoder_starts_from_the_model_as_the_run_trains_it(root):
    """`fewshot run` loads the previous round's weights after building the task and times steps on a copy: the key
    encoder and the queue start from the model of the run's first step, whatever happened before."""
    task = make_task(root)
    copy_of_model = copy.deepcopy(task.model)
    task.training_step(copy_of_model, task.make_batch(task.plan_epoch(0)[0], 0, 0))  # a timing step on a copy
    assert not task.joint.started
    with torch.no_grad():
        for p in task.model.backbone.parameters():
            p.add_(0.1)  # the round's weights, loaded after the timing
    task.training_step(task.model, task.make_batch(task.plan_epoch(0)[0], 0, 0))
    assert task.joint.started and task.joint.ptr == 8  # the timing step's keys were dropped
    for k, q in zip(task.joint.key.backbone.parameters(), task.model.backbone.parameters()):
        torch.testing.assert_close(k, q)


def train_argv(root, out, *extra) -> list:
    return ["train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "32", "--epochs", "2",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.threads=1",
            "semi.method=moco", "semi.mu=1", *extra]


def test_fewshot_train_with_the_joint_loss_logs_it_and_predict_reads_a_plain_classifier(root, tmp_path):
    run = tmp_path / "run"
    rc, out, err = run_main(*train_argv(root, run))
    assert rc == 0, err
    assert "joint MoCo loss (semi.mu=1, semi.weight=1, semi.moco_momentum=0.99, queue 40, T=0.2" in out
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["moco_loss"]) and "moco_acc1" in r for r in rows)
    semi = json.loads((run / "metrics.json").read_text())["semi"]
    assert semi["method"] == "moco" and semi["pool_size"] == 80 and semi["queue_size"] == 40
    assert semi["momentum"] == 0.99 and semi["split_bn_groups"] == 4  # 8 keys: 4 groups of 2
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    from fewshot.models.classifier import build_classifier

    build_classifier(finetune_cfg(root), 10).load_state_dict(ck["model"])  # strict: the classifier's keys only
    assert set(ck["joint_moco"]) == {"projection", "key", "queue", "ptr", "started"}
    pred = tmp_path / "pred_all.json"
    rc, _, err = run_main("predict", run, "--data", root, "--out", pred, "--device", "cpu", "--no-progress")
    assert rc == 0 and pred.is_file(), err


class Killed(BaseException):
    """Stands for SIGKILL (not an Exception: nothing in the code under test can swallow it)."""


def test_a_resumed_joint_moco_run_ends_as_the_uninterrupted_one(root, tmp_path, monkeypatch):
    flags = {**MOCO, "train.epochs": 2, "train.save_every_steps": 2}
    ref = tmp_path / "ref"
    run_finetune(finetune_cfg(root, **flags), ref)
    out = tmp_path / "run"
    orig, calls = SupervisedTask.training_step, {"n": 0}

    def step(self, model, batch):  # dies inside step 8, after its forward moved the key encoder and the queue
        result = orig(self, model, batch)
        calls["n"] += 1
        if calls["n"] == 8:
            raise Killed("killed in step 8")
        return result

    with monkeypatch.context() as mp:
        mp.setattr(SupervisedTask, "training_step", step)
        with pytest.raises(Killed):
            run_finetune(finetune_cfg(root, **flags), out)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["global_step"] == 6
    run_finetune(finetune_cfg(root, **flags), out, resume=True)
    for name in ("last", "best"):
        a, b = (load_checkpoint(r / "checkpoints" / f"{name}.pt") for r in (ref, out))
        for ck in (a, b):
            ck.pop("train_seconds"), ck.pop("epoch_seconds", None)  # measured times
            ck["config"]["train"].pop("budget_minutes")
        assert_same(a, b, name)
    timing = {"images_per_s", "epoch_time_s", "eval_time_s"}

    def log(run):
        return [{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in (run / "log.jsonl").read_text().splitlines()]

    assert log(out) == log(ref)


def test_the_joint_loss_without_a_pool_stops_and_says_how_to_give_one(root, tmp_path):
    data = tmp_path / "root"
    shutil.copytree(root, data, ignore=shutil.ignore_patterns(".fewshot_cache", "unlabeled"))
    rc, _, err = run_main(*train_argv(data, tmp_path / "run"))
    assert rc == 2, err
    assert "semi.method=moco needs an unlabeled pool" in err and "unlabeled/<dataset>/" in err
    assert "data.unlabeled" in err and "train without semi.method=moco" in err
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_the_joint_loss_is_refused_on_several_processes(root):
    from fewshot.errors import UserError

    with pytest.raises(UserError, match="one process only.*semi.method=fixmatch"):
        make_task(root, ctx=DistContext(rank=0, world=2))


def test_a_bad_semi_method_names_the_three_choices(root, tmp_path):
    rc, _, err = run_main(*train_argv(root, tmp_path / "run", "semi.method=mocoo"))
    assert rc == 2 and "moco" in err and "fixmatch" in err, err


def _joint_snapshot(joint) -> list[torch.Tensor]:
    return [torch.tensor(joint.ptr), joint.queue.clone(), *(x.detach().clone() for x in joint.key.parameters()),
            *(x.detach().clone() for x in joint.key.buffers())]


def test_a_step_skipped_for_a_non_finite_loss_leaves_the_joint_state_as_it_was(root, tmp_path, monkeypatch):
    """A skipped step restored the classifier's BatchNorm statistics only: the key encoder had moved and the
    step's keys were in the queue (train.skip_nonfinite promises that a bad batch leaves no trace)."""
    real, calls, seen = SupervisedTask.training_step, [0], []

    def step(self, model, batch):
        if self.joint.started:
            seen.append(_joint_snapshot(self.joint))  # before steps 2 and 3: after step 1, after the skipped 2
        calls[0] += 1
        loss, metrics, n = real(self, model, batch)
        return (loss * float("nan") if calls[0] == 2 else loss), metrics, n

    monkeypatch.setattr(SupervisedTask, "training_step", step)
    rc, _, err = run_main(*train_argv(root, tmp_path / "run", "--epochs", "1", "--skip-nonfinite", "3"))
    assert rc == 0 and calls[0] >= 3, err
    for before, after in zip(seen[0], seen[1]):
        assert torch.equal(before, after)


def test_gradient_clipping_covers_the_projection_head(root, tmp_path, monkeypatch):
    """optim.grad_clip clipped the classifier's parameters only: the joint loss's head trained unclipped."""
    clipped: list[set] = []
    real = torch.nn.utils.clip_grad_norm_

    def clip(parameters, *args, **kwargs):
        parameters = list(parameters)
        clipped.append({id(p) for p in parameters})
        return real(parameters, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    heads = []
    real_init = SupervisedTask.start_joint_moco

    def start(self, infos):
        real_init(self, infos)
        heads.append({id(p) for p in self.joint.projection.parameters()})

    monkeypatch.setattr(SupervisedTask, "start_joint_moco", start)
    rc, _, err = run_main(*train_argv(root, tmp_path / "run", "--epochs", "1", "optim.grad_clip=1.0"))
    assert rc == 0 and clipped and heads, err
    assert all(heads[0] <= ids for ids in clipped)


def _tensor_bytes(obj) -> int:
    """Bytes of every tensor in a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    return sum(_tensor_bytes(v) for v in obj) if isinstance(obj, (list, tuple)) else 0


def test_best_pt_leaves_the_joint_state_to_last_pt_and_the_disk_check_counts_it(root, tmp_path):
    """best.pt carried the projection head, key encoder and queue (+55 % for test_resnet) that only a resume
    reads, and the disk-space estimate left them out of last.pt's size."""
    from fewshot.train.engine import Engine

    def engine(**flags) -> Engine:
        from fewshot.train.supervised import resolve_finetune_defaults

        task = make_task(root, **flags)
        cfg = resolve_finetune_defaults(task.cfg)  # the learning rate, as `fewshot train` fills it
        return Engine(task, cfg, tmp_path / str(len(flags)), torch.device("cpu"), DistContext())

    joint, plain = engine(), engine(**{"semi.method": "off"})
    joint.save("best")
    joint.save("last")
    joint.publish_best()  # the new best.pt is put in place after its last.pt (tests/test_fdh_best_order.py)
    best, last = (load_checkpoint(joint.ckpt_dir / f"{name}.pt") for name in ("best", "last"))
    assert "joint_moco" in last and "joint_moco" not in best
    assert best["optimizer"] is None and set(best) == set(last) - {"joint_moco"} | {"weights"}  # all else as before
    assert best["weights"] == "ema"  # the set its readers take (tests/test_ema_choice.py)
    from fewshot.models.classifier import build_classifier

    build_classifier(finetune_cfg(root), 10).load_state_dict(best["model"])  # still what eval and predict read
    assert joint.checkpoint_bytes() - plain.checkpoint_bytes() >= _tensor_bytes(last["joint_moco"])


def _pool_of(root, tmp_path, n: int):
    """A copy of the data root whose unlabeled pool holds ``n`` images."""
    data = tmp_path / "root"
    shutil.copytree(root, data, ignore=shutil.ignore_patterns(".fewshot_cache"))
    pool = sorted(p for p in (data / "unlabeled").rglob("*") if p.is_file())
    for p in pool[n:]:
        p.unlink()
    return data


def test_a_pool_too_small_for_a_steps_keys_is_warned_about_once(root, tmp_path, capsys, monkeypatch):
    """A 3-image pool got a queue of 8 keys (one step's), all of the same 3 images: the contrastive term was
    meaningless without a word. `fewshot pretrain`'s warning, once a process."""
    from fewshot.train import semi_moco

    monkeypatch.setattr(semi_moco, "_TOLD_SMALL_POOL", set(), raising=False)
    make_task(root)  # 80 images, 8 keys a step, a queue of 40: nothing to say
    assert "warning" not in capsys.readouterr().out
    data = _pool_of(root, tmp_path, 3)
    task = make_task(data)
    assert len(task.unlabeled.images) == 3 and task.joint.queue_size == 8
    out = capsys.readouterr().out
    assert out.count("warning:") == 1, out
    assert "queue (K=8, at least one step's keys) holds at least as many keys as the pool has images (3)" in out
    assert "each query meets older keys of its own image as negatives" in out  # pretrain's words
    assert "each step draws 8 pool images (semi.mu x --batch-size) from these 3, repeating them" in out
    assert "Add images to the pool" in out and "train without semi.method=moco" in out
    make_task(data)
    assert "warning" not in capsys.readouterr().out  # once


def test_a_queue_as_large_as_the_pool_is_warned_about_as_pretrain_does():
    from fewshot.train.semi_moco import joint_queue_size, small_pool_warning

    assert small_pool_warning(80, joint_queue_size(4096, 80, 8), 8) is None
    text = small_pool_warning(16, joint_queue_size(4096, 16, 16), 16)  # one step's keys: the whole pool
    assert text is not None and "(K=16," in text and "repeat within a step" not in text
    assert "at most 8 pool images" in text  # a way to a queue of half the pool
    assert "at most" not in small_pool_warning(3, 8, 8)  # half of 3 pool images is no batch BatchNorm takes
