"""A joint MoCo + supervised loss while fine-tuning (``semi.method=moco``).

Each step adds ``semi.weight`` x InfoNCE on ``semi.mu x train.batch_size`` pool images to the labelled
cross-entropy, as MoCo v2 computes it (He et al. 2020; Chen et al. 2020):

    q = normalize(g(f(x_q)))               # f: the classifier's own backbone, g: a new projection head
    θk ← m·θk + (1−m)·θq                    # key encoder: a momentum copy of f and g, never trained by gradients
    k = normalize(g_k(f_k(shuffle(x_k))))  # shuffle-BN: the key copy's BatchNorm is split into groups
    loss = CE(labelled) + weight · CE([q·k, q·queue] / T, 0) ; enqueue(k)

The queries share the labelled images' forward: one backbone pass over cat([x_labelled, x_q]) gives the
features of both, so the contrastive term costs the pool images' share of that pass, the key encoder's
no-grad pass and the projections.

The shuffle is one-sided: the keys' split BatchNorm groups are shuffled, the queries are normalised with the labelled
images in the classifier's own BatchNorm batch (splitting it would change the supervised half). So the "cheat" that
shuffle-BN prevents in pretraining is only partly prevented here, and the classifier's BatchNorm statistics see the
MoCo-augmented query views. Measured behind plain fine-tuning at equal time (docs/recipes.md); a separate query
forward was not tried.

State outside the classifier (its checkpoint ``model`` stays the plain classifier's, which predict, export and
eval load): the projection head (trained: in the task's param_groups), the key encoder, the queue and its
pointer, all in ``checkpoint_extra`` so that --resume continues exactly. Only last.pt keeps them
(SupervisedTask.resume_only_extra): best.pt is read by eval, predict and --weights, which want the classifier alone,
and they added half its size again (test_resnet) or 30 MB (levit_128s) at every new best score.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.data.augment import BatchAugment, preset
from fewshot.data.warn_once import warn_once
from fewshot.process_state import said_once
from fewshot.ssl.functional import (all_finite_rows, enqueue_, infonce_logits, infonce_loss, momentum_update_,
                                    high_temperature_warning, shuffle_permutation, topk_accuracy,
                                    without_stochastic_depth)
from fewshot.train.semi import Pool, UnlabeledStream


class ContrastiveViews(NamedTuple):
    """One step's pool images as a contrastive pair, and the generator of the key batch's shuffle."""

    query: Tensor  # [n, 3, S, S]
    key: Tensor  # [n, 3, S, S], other augmentations of the same images
    generator: torch.Generator


def joint_summary(cfg: dict, pool: Pool) -> dict:
    """The joint loss's settings and pool, for metrics.json (JointMoCo.settings adds the resolved queue, groups)."""
    s, m = cfg["semi"], cfg["moco"]
    return {"method": "moco", "pool_size": len(pool.images), "pool_source": pool.source, "mu": int(s["mu"]),
            "weight": float(s["weight"]), "momentum": float(s["moco_momentum"]),
            "temperature": float(m["temperature"]), "dim": int(m["dim"]),
            "unknown_source": int((pool.dataset_ids < 0).sum())}


def joint_moco_note(summary: dict, without_pool: list[str]) -> str:
    """The start line: the settings, the pool's size and source, and the datasets without a pool of their own."""
    note = (f"joint MoCo loss (semi.mu={summary['mu']}, semi.weight={summary['weight']:g}, semi.moco_momentum="
            f"{summary['momentum']:g}, queue {summary.get('queue_size', '?')}, T={summary['temperature']:g}, "
            f"shuffle-BN groups {summary.get('split_bn_groups', '?')}) on an unlabeled pool of "
            f"{summary['pool_size']:,} images ({summary['pool_source']})")
    for name in without_pool:
        note += f"; note: {name} has no pool of its own (no ROOT/unlabeled/{name}/): the joint loss has no images of it"
    return note


def joint_queue_size(cap: int, pool: int, keys_per_step: int) -> int:
    """About half the pool, as `fewshot run` sizes MoCo's queue (run_stages.pretrain_stage), capped by moco.queue_size
    and at least one step's keys: a queue as large as the pool holds a key of nearly every image, so each query's own
    image would often sit among its negatives."""
    return int(max(keys_per_step, min(int(cap), pool // 2)))


# the small-pool warnings given in this command (`fewshot run` builds many tasks)
_TOLD_SMALL_POOL: set[str] = said_once(__name__, "_TOLD_SMALL_POOL")


def small_pool_warning(pool: int, queue: int, keys_per_step: int) -> str | None:
    """The warning for a pool too small for the joint loss, or None. The queue holds at least one step's keys
    (joint_queue_size), so with a step drawing about as many images as the pool has (3 pool images, 8 keys a step)
    it held keys of every image several times over: each query met its own image among its negatives and the
    contrastive term said nothing useful, without a word. The threshold and wording are `fewshot pretrain`'s
    (ssl.pretrain.run_pretrain): a queue of at least as many keys as the pool has images."""
    if queue < pool:
        return None
    repeat = (f", and each step draws {keys_per_step} pool images (semi.mu x --batch-size) from these {pool}, "
              f"repeating them within the step" if keys_per_step > pool else "")
    half = pool // 2
    smaller = (f", lower semi.mu or --batch-size so that a step draws at most {half} pool images (the queue then "
               f"holds about half the pool)" if half >= 2 else "")
    return (f"warning: the joint MoCo loss's queue (K={queue}, at least one step's keys) holds at least as many keys "
            f"as the pool has images ({pool}): each query meets older keys of its own image as negatives{repeat}. "
            f"The contrastive term teaches little here. Add images to the pool (ROOT/unlabeled/<dataset>/ or "
            f"data.unlabeled){smaller}, or train without semi.method=moco.")


def warn_small_pool(pool: int, queue: int, keys_per_step: int) -> None:
    """Print small_pool_warning once a command (call on the main rank only)."""
    text = small_pool_warning(pool, queue, keys_per_step)
    if text and text not in _TOLD_SMALL_POOL:
        _TOLD_SMALL_POOL.add(text)
        print(text, flush=True)


def shuffle_bn_groups(cfg: dict, n: int, backbone: nn.Module) -> int:
    """Split-BN groups of the key encoder for key batches of ``n`` images: moco.split_bn_groups, lowered to the
    largest divisor of n that leaves each group 2 images (BatchNorm needs them); 1 (no split) when moco.shuffle_bn
    is off or the backbone has no BatchNorm. Lowered rather than refused: n follows semi.mu and the batch size,
    chosen for the labelled loss."""
    from fewshot.ssl.pretrain_settings import has_batch_norm

    if cfg["moco"]["shuffle_bn"] in (False, "off", "none") or not has_batch_norm(backbone):
        return 1
    want = max(1, int(cfg["moco"]["split_bn_groups"]))
    return max([g for g in range(1, want + 1) if n % g == 0 and n // g >= 2] or [1])


class ContrastiveStream(UnlabeledStream):
    """The pool drawn as contrastive pairs: both views are independently sampled MoCo v2 augmentations (random
    resized crop with aug.scale, colour jitter, grey, blur, flip; the aug.* settings MoCo pretraining takes). That is
    MoCo v2's own pair: the invariance to learn comes from the difference between two strong views. FixMatch's
    weak/strong pair (semi.views) is made for pseudo-labels: a clean query would make the task easy and teach little,
    so semi.views does not apply here."""

    method = "moco"

    def describe(self, cfg: dict, pool: Pool) -> dict:
        return joint_summary(cfg, pool)

    def set_views(self, cfg: dict, size: int, mean, std, device: torch.device) -> None:
        a = cfg["aug"]
        try:
            aug = preset("mocov2", size, scale=tuple(a["scale"]), jitter=tuple(a["jitter"]), jitter_p=a["jitter_p"],
                         gray_p=a["gray_p"], blur_p=a["blur_p"], flip_p=a["flip_p"], mean=mean, std=std)
        except (ValueError, TypeError) as exc:  # aug.* out of range: the user's settings, not a bug
            from fewshot.errors import UserError

            raise UserError(f"aug settings: {exc}") from None
        self.views = "mocov2"  # draw(): two independent parameter draws of one augmentation
        self.weak = self.strong = BatchAugment(aug).to(device)


class Projection(nn.Module):
    """MoCo v2's projection head (fewshot.ssl.moco.Encoder's): an MLP (moco.mlp) or a linear layer."""

    def __init__(self, width: int, dim: int, mlp: bool, hidden: int | None):
        super().__init__()
        hidden = hidden or width
        self.head = (nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
                     if mlp else nn.Linear(width, dim))

    def forward(self, feats: Tensor) -> Tensor:
        """[B, T, D] features (extract_features) -> [B, dim] embeddings, not normalised."""
        return self.head(feats.mean(1))


class KeyEncoder(nn.Module):
    """The momentum copy: backbone + projection, no gradients, split BatchNorm for shuffle-BN."""

    def __init__(self, backbone: nn.Module, projection: Projection):
        super().__init__()
        self.backbone, self.projection = backbone, projection

    def forward(self, x: Tensor) -> Tensor:
        from fewshot.models.backbone import extract_features

        return self.projection(extract_features(self.backbone, x))


class JointMoCo:
    """The joint loss's state and step. The query encoder is the classifier's backbone (passed to ``loss`` as the
    model being trained) with ``projection``; the key encoder, queue and pointer live here.

    Momentum: ``semi.moco_momentum`` (0.99 by default), not moco.momentum (0.999, MoCo's for 200-epoch schedules):
    fine-tuning runs a few hundred steps over a pool of about a thousand images, and at 0.999 the key encoder would
    still be ~80 % the initial backbone after 200 steps (0.999^200), giving keys of a network the queries left
    behind; 0.99 follows within about 100 steps, as `fewshot run` chose for its short MoCo (run.moco_momentum).

    The key encoder is copied from the query encoder at the first step the Engine takes (``start``), not at
    construction: `fewshot run` loads the previous round's weights after building the task and times a few steps
    on a copy of the model before training (run_budget.measure_step_seconds); both would otherwise leave the key
    encoder and queue with another network's state."""

    def __init__(self, cfg: dict, backbone: nn.Module, n_keys: int, pool_size: int, device: torch.device,
                 channels_last: bool = False):
        from fewshot.models.backbone import feature_dim
        from fewshot.ssl.split_bn import convert_split_bn

        m = cfg["moco"]
        self.momentum, self.temperature = float(cfg["semi"]["moco_momentum"]), float(m["temperature"])
        warn_once([said] if (said := high_temperature_warning(self.temperature)) else [])
        self.seed = int(cfg["train"]["seed"])
        self.projection = Projection(feature_dim(backbone), int(m["dim"]), bool(m["mlp"]), m["mlp_hidden"]).to(device)
        self.groups = shuffle_bn_groups(cfg, n_keys, backbone)
        key = without_stochastic_depth(KeyEncoder(copy.deepcopy(backbone), copy.deepcopy(self.projection)))
        self.key = convert_split_bn(key, self.groups).to(device)
        if channels_last:
            self.key = self.key.to(memory_format=torch.channels_last)
        for p in self.key.parameters():
            p.requires_grad_(False)
        self.queue_size = joint_queue_size(m["queue_size"], pool_size, n_keys)
        self.queue = torch.zeros(self.queue_size, int(m["dim"]), device=device)
        # tensors, not ints: the Engine saves and restores them with the key encoder around a step it may skip
        self._ptr = torch.zeros(1, dtype=torch.long)
        self._started = torch.zeros(1, dtype=torch.bool)

    @property
    def ptr(self) -> int:
        return int(self._ptr[0])

    @ptr.setter
    def ptr(self, value: int) -> None:
        self._ptr[0] = int(value)

    @property
    def started(self) -> bool:
        return bool(self._started[0])

    @started.setter
    def started(self, value: bool) -> None:
        self._started[0] = bool(value)

    def forward_state_tensors(self) -> list[Tensor]:
        """What a training step changes outside the classifier without gradients: the key encoder (momentum step,
        BatchNorm statistics), the queue, its pointer and whether the key encoder was copied. The Engine restores
        them with the model's own when it skips a step for a non-finite loss or redoes one, so that such a step
        leaves no trace here either (its keys were enqueued, the key encoder moved)."""
        return [*self.key.parameters(), *self.key.buffers(), self.queue, self._ptr, self._started]

    def settings(self) -> dict:
        """What was resolved at run time, for the summary (metrics.json, the start line)."""
        return {"queue_size": self.queue_size, "split_bn_groups": self.groups}

    def parameters(self) -> list[nn.Parameter]:
        """The trained parameters outside the classifier: the projection head's."""
        return list(self.projection.parameters())

    @torch.no_grad()
    def start(self, backbone: nn.Module) -> None:
        """The key encoder becomes the query encoder (parameters and BatchNorm statistics); the queue is MoCo's
        start of random unit keys (seeded by train.seed), its pointer 0."""
        self.key.backbone.load_state_dict(backbone.state_dict())
        self.key.projection.load_state_dict(self.projection.state_dict())
        gen = torch.Generator().manual_seed(self.seed)
        self.queue.copy_(F.normalize(torch.randn(self.queue.shape, generator=gen), dim=1))
        self.ptr, self.started = 0, True

    def query_parameters(self, backbone: nn.Module) -> list[Tensor]:
        return list(backbone.parameters()) + list(self.projection.parameters())

    @torch.no_grad()
    def keys(self, backbone: nn.Module, x: Tensor, generator: torch.Generator, update: bool = True) -> Tensor:
        """Momentum step of the key encoder towards ``backbone`` + projection (``update``), then the keys with
        shuffle-BN: the batch is permuted before the split-BN key encoder and restored after, so that each key's
        BatchNorm group holds other images than its query's position."""
        if update:
            momentum_update_(list(self.key.parameters()), self.query_parameters(backbone), self.momentum)
        self.key.train()
        perm, inverse = shuffle_permutation(x.shape[0], generator, device=x.device)
        return F.normalize(self.key(x[perm]).float(), dim=1)[inverse]

    def contrast(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """(InfoNCE loss, logits [n, 1 + K]) in fp32 even under autocast (pretrain's MoCo.contrast explains)."""
        with torch.autocast(q.device.type, enabled=False):
            logits = infonce_logits(q.float(), k.float(), self.queue.clone(), self.temperature)
        return infonce_loss(logits), logits

    @torch.no_grad()
    def enqueue(self, k: Tensor) -> None:
        """This step's keys into the ring buffer; none when any is non-finite (it would poison K steps)."""
        if bool(all_finite_rows(k).all()):
            self.ptr = enqueue_(self.queue, self.ptr, k.float())

    def loss(self, backbone: nn.Module, query_feats: Tensor, views: ContrastiveViews,
             update: bool = True) -> tuple[Tensor, dict]:
        """The contrastive term for features [n, T, D] of the query views (from the labelled forward) and the key
        views; moves the key encoder and enqueues the keys (``update``: false for `fewshot run`'s timing steps on a
        copy of the model, which must leave the run's state alone)."""
        q = F.normalize(self.projection(query_feats).float(), dim=1)
        k = self.keys(backbone, views.key, views.generator, update)
        loss, logits = self.contrast(q, k)
        if update:
            self.enqueue(k)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        acc1 = topk_accuracy(logits.detach(), target, (1,))[0]
        return loss, {"moco_loss": loss.detach(), "moco_acc1": torch.tensor(acc1)}

    def state_dict(self) -> dict:
        return {"projection": self.projection.state_dict(), "key": self.key.state_dict(),
                "queue": self.queue.detach().cpu().clone(), "ptr": int(self.ptr), "started": bool(self.started)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if tuple(state["queue"].shape) != tuple(self.queue.shape):  # before the modules: their error is torch's
            from fewshot.errors import UserError

            raise UserError(f"the run being resumed kept a queue of {state['queue'].shape[0]} keys of width "
                            f"{state['queue'].shape[1]}; these settings give {self.queue_size} x "
                            f"{self.queue.shape[1]} (moco.queue_size, moco.dim, semi.mu, the batch size or the pool "
                            f"changed). Resume with the run's settings, or start a new run with another --out.")
        self.projection.load_state_dict(state["projection"])
        self.key.load_state_dict(state["key"])
        self.queue.copy_(state["queue"])
        self.ptr, self.started = int(state["ptr"]), bool(state["started"])


def refuse_processes(world: int) -> None:
    """The projection head lives outside the DDP-wrapped classifier, so DDP would not average its gradients, and the
    Engine offers the task no hook between backward and the optimizer step to do it: each process would train its
    own head. Refused rather than wrong."""
    if world > 1:
        from fewshot.errors import UserError

        raise UserError(f"semi.method=moco runs on one process only (this run has {world}): its projection head is "
                        f"outside the model the processes keep in step. Run it on one process, or use "
                        f"semi.method=fixmatch with several.")
