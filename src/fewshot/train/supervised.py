"""The fine-tuning task: multi-dataset classification with a joint label space."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot.data.cache import default_cache_dir
from fewshot.data.fit import fit_of
from fewshot.data.label_space import LabelSpace
from fewshot.data.mix import BatchMix
from fewshot.data.samplers import epoch_batches
from fewshot.data.sets import load_splits
from fewshot.data.transforms import Normalize, TrainAugment
from fewshot.errors import one_line
from fewshot.eval.evaluate import compute_logits, score
from fewshot.models.backbone import adopt_weights_architecture, check_input_size, input_size, mean_std
from fewshot.models.classifier import build_classifier, n_parameters
from fewshot.models.weights import load_backbone_weights
from fewshot.train.distributed import DistContext


IMAGENET_RECIPE = {"lr": 1e-4, "backbone_lr_mult": 0.1}  # the course's, for ImageNet-grade weights


def resolve_finetune_defaults(cfg: dict, resuming: bool = False) -> dict:
    """Fill the learning-rate fields that depend on whether a pretrained backbone is loaded. ``resuming``: the
    saved config already says how the network was built (a run saved before the weights file's record was read
    must not change its image size mid-run). What it fills in is listed as chosen at run time (config.CHOSEN), so
    that the run's config.yaml given back as --config chooses it again rather than pinning a scratch run's lr."""
    from fewshot.config import record_chosen, run_time_values

    before = run_time_values(cfg)
    pretrained = bool(cfg["model"]["weights"])
    if not resuming:
        adopt_weights_architecture(cfg["model"])
    o, small = cfg["optim"], small_data_recipe(cfg)
    if o["lr"] is None:
        o["lr"] = small["lr"] if small else IMAGENET_RECIPE["lr"] if pretrained else 4e-3
    if o["backbone_lr_mult"] is None:
        o["backbone_lr_mult"] = small["backbone_lr_mult"] if small else IMAGENET_RECIPE["backbone_lr_mult"] \
            if pretrained else 1.0
    record_chosen(cfg, before)
    return cfg


def small_data_recipe(cfg: dict) -> dict | None:
    """The lr and backbone multiplier for model.weights learnt by fewshot on the user's own data (a `fewshot export`
    or a fewshot checkpoint, of a run that did not start from other weights: models.weights_origin): fine-tuned at
    run.finetune_lr with the backbone at run.finetune_backbone_mult as `run --pretrain` fine-tunes its own export. At
    the ImageNet recipe (1e-4, backbone x0.1) such a backbone barely moved: 21.7 % where random init got 91 % (hunt
    hBW #2). None for other weights."""
    from fewshot.config import DEFAULTS
    from fewshot.models.weights_origin import weights_origin

    weights = cfg["model"]["weights"]
    if not weights or not weights_origin(weights).small_data:
        return None
    r = cfg.get("run") or DEFAULTS["run"]
    return {"lr": float(r["finetune_lr"]), "backbone_lr_mult": float(r["finetune_backbone_mult"])}


def recipe_words(cfg: dict) -> str:
    """Which rule chose a --weights fine-tuning's lr (for the start's line): the small-data recipe of fewshot's own
    weights, or the ImageNet recipe assumed for other weights. Only the fields the run chose and that hold the value
    the rule gives now are credited to it (a resumed run from before the rule keeps its own: nothing is said); a
    field the user gave is named as theirs; empty where the rule chose neither."""
    from fewshot.config import CHOSEN, same_value
    from fewshot.models.weights_origin import OTHER, UNKNOWN, weights_origin

    weights, chosen, o = cfg["model"]["weights"], cfg.get(CHOSEN) or {}, cfg["optim"]
    if not weights:
        return ""
    small = small_data_recipe(cfg)
    rule = small or IMAGENET_RECIPE
    fields = ("lr", "backbone_lr_mult")
    by_rule = [f for f in fields if f"optim.{f}" in chosen and same_value(o[f], rule[f])]
    if not by_rule:
        return ""
    shown = {"lr": f"lr {o['lr']:g}", "backbone_lr_mult": f"the backbone at {o['backbone_lr_mult']:g}x"}
    values = " with ".join(shown[f] for f in by_rule)
    yours = [f"optim.{f} {o[f]:g}" for f in fields if f"optim.{f}" not in chosen]
    yours_words = f"; {' and '.join(yours)} {'is' if len(yours) == 1 else 'are'} yours" if yours else ""
    origin = weights_origin(weights)
    what = {"export": "a fewshot export", "checkpoint": "a fewshot checkpoint"}.get(origin.kind, "")
    if small:
        run_field = {"lr": "run.finetune_lr", "backbone_lr_mult": "run.finetune_backbone_mult"}
        names = " and ".join(run_field[f] for f in by_rule)
        # its run's start file gone (another machine): fewshot's own is the safer guess (the ImageNet recipe left a
        # small-data backbone near chance, hunt hBW #2), said as a guess (review rev101 #1)
        unsure = (f" (its run started from {origin.start_file}, which is gone, so whether that was ImageNet-grade "
                  f"is unknown; optim.lr and optim.backbone_lr_mult change it)" if origin.start == UNKNOWN else "")
        return (f"{what}: the small-data recipe of {names}, {values}, as `fewshot run --pretrain` fine-tunes its own "
                f"export{unsure}{yours_words}")
    if origin.start == OTHER:
        start = f" ({origin.start_file})" if origin.start_file else ""
        return (f"{what} of a run that started from other weights{start}: the recipe for ImageNet-grade weights, "
                f"{values}{yours_words}; optim.lr and optim.backbone_lr_mult change it")
    return (f"not a fewshot export or checkpoint: the recipe for ImageNet-grade weights, {values}{yours_words}; "
            f"optim.lr and optim.backbone_lr_mult change it")


def use_channels_last(cfg: dict, device: torch.device) -> bool:
    v = cfg["train"]["channels_last"]
    return bool(v) if v != "auto" else device.type == "cuda"


def split_decay(params) -> tuple[list, list]:
    """Biases and norm weights get no weight decay (the usual timm practice)."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def plan_training_batches(cfg: dict, train_set, epoch: int, world: int = 1, rank: int = 0) -> list[torch.Tensor]:
    """This rank's batches of one fine-tuning epoch, only those BatchNorm can train on (the task's epoch plan;
    `fewshot run` builds it before the run folder is started, to refuse a plan with no batch at once)."""
    t, d = cfg["train"], cfg["data"]

    def plan(r: int) -> list[torch.Tensor]:
        return epoch_batches(len(train_set), t["batch_size"], epoch, t["seed"], d["sampler"], r, world,
                             drop_last=False, dataset_ids=train_set.dataset_ids, repeats=d["repeats"])

    # BatchNorm in training mode needs at least 2 samples per batch. Under DDP a batch is dropped
    # on every rank when any rank's share is short, so all ranks step (and all-reduce) in lockstep.
    ranks = [plan(r) for r in range(world)]
    return [b for b, *shares in zip(ranks[rank], *ranks) if min(len(s) for s in shares) >= 2]


def space_changes(saved: LabelSpace, now: LabelSpace, in_root=()) -> list[str]:
    """What differs between the run's datasets and classes and the data's now, by name: the refusal gave each
    dataset's class count on both sides, which read the same after a class folder was renamed. ``in_root``: the
    datasets the data root holds; a run's dataset among them was left out by --datasets, not gone from the data
    (it said "not in the data now" of a dataset that was there)."""
    from fewshot.data.names import datasets_option, names_list

    def shown(names: list[str]) -> str:
        return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")

    was, here = dict(zip(saved.names, saved.classes)), dict(zip(now.names, now.classes))
    parts = []
    gone, new = [n for n in was if n not in here], [n for n in here if n not in was]
    left_out = [n for n in gone if n in set(in_root)]
    gone = [n for n in gone if n not in left_out]
    if left_out:
        parts.append(f"dataset(s) {names_list(left_out)} in the run and in the data, but left out by --datasets "
                     f"(data.datasets) now: give {datasets_option(saved.names)}")
    if gone:
        parts.append(f"dataset(s) {names_list(gone)} in the run, not in the data now")
    if new:
        parts.append(f"dataset(s) {names_list(new)} in the data now, not in the run")
    for name in (n for n in was if n in here and was[n] != here[n]):
        only_run = [c for c in was[name] if c not in here[name]]
        only_now = [c for c in here[name] if c not in was[name]]
        bits = [f"class(es) {shown(only_run)} in the run, not now"] if only_run else []
        bits += [f"{shown(only_now)} now, not in the run"] if only_now else []
        parts.append(f"{names_list([name])}: {', '.join(bits) or 'its classes in another order'}")
    if not parts:  # the same datasets and classes, the datasets in another order
        parts.append(f"the datasets {names_list(saved.names)} in the run, {names_list(now.names)} now")
    return parts


def check_same_classes(ck: dict, space: LabelSpace, data_root) -> None:
    """Refuse a resume whose datasets or classes (``space``, as scanned) are not the checkpoint's: run_finetune asks
    it before any image is decoded (a refused resume on other data cached its images first). ``data_root()`` gives
    the root scanned, read only where a run's dataset is missing now."""
    saved = LabelSpace.from_dict(ck["label_space"])
    if saved == space:
        return
    from fewshot.errors import UserError
    from fewshot.run_state import class_order_changes, class_order_refusal

    was, now = dict(zip(saved.names, saved.classes)), dict(zip(space.names, space.classes))
    changes = class_order_changes(was, now)
    if changes and saved.names == space.names and all(was[n] == now[n] for n in was if n not in changes):
        raise UserError(class_order_refusal(None, changes))

    from fewshot.data.roots import list_datasets

    in_root = []
    if any(name not in space.names for name in saved.names):  # a run's dataset not trained on now
        try:  # the root was scanned a moment ago: this lists it again, without the splits
            in_root = list_datasets(Path(data_root()))
        except UserError:
            pass
    raise UserError(one_line(f"the datasets or classes differ from those of the run being resumed "
                             f"({'; '.join(space_changes(saved, space, in_root))}). Resume with the "
                             f"run's data (--data, --datasets), or start a new run with another --out."))


class SupervisedTask:
    kind = "supervised"
    supports_ema = True
    drop_last = False
    # resume alone reads the joint MoCo loss's state: best.pt (eval, predict, --weights) is saved without it
    resume_only_extra = ("joint_moco",)

    def __init__(self, cfg: dict, infos, device: torch.device, ctx: DistContext, resuming: bool = False,
                 quiet_weights: bool = False, pool_limit: int | None = None):
        """``resuming``: a checkpoint (or `fewshot run`'s previous round) replaces the whole model, so model.weights
        are not read (the file may be gone) nor the head initialised; ``quiet_weights``: the model.strict=false
        warning was given already (`fewshot run` checks the file at start-up); ``pool_limit``: FixMatch's seeded
        share of a cold pool that `fewshot run` decoded at start-up (UnlabeledStream's limit)."""
        self.cfg, self.device, self.ctx = cfg, device, ctx
        self.space = LabelSpace.from_infos(infos)
        self.model = build_classifier(cfg, self.space.num_classes)
        self.weights_loaded = None  # load_backbone_weights' counts, for the start-up line
        if cfg["model"]["weights"] and not resuming:  # resuming: last.pt replaces them, and the file may be gone
            self.weights_loaded = load_backbone_weights(self.model.backbone, cfg["model"]["weights"],
                                                        strict=cfg["model"]["strict"], quiet=quiet_weights)
        self.size = input_size(self.model.backbone, cfg["model"]["img_size"])
        check_input_size(self.model.backbone, self.size, cfg["model"]["name"])
        self.normalize = Normalize(*mean_std(self.model.backbone)).to(device)
        self.channels_last = use_channels_last(cfg, device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        d = cfg["data"]
        cache = default_cache_dir(d["root"], d["cache_dir"])
        self.train_set, self.val_set = load_splits(infos, ("train", "val"), self.space, self.size, cache,
                                                   d["crop_pct"], d["skip_bad_images"], d.get("cache_max_gb"),
                                                   d.get("bit_depth", "auto"), fit_of(cfg, infos))
        head_init = self.head_init_mode() if not resuming else "random"  # resuming: last.pt holds the head
        if head_init == "probe":
            self.init_head_from_probe()
        elif head_init == "prototype":
            self.init_head_from_prototypes()
        self.augment = TrainAugment(d["randaug_ops"], d["randaug_magnitude"], d["randaug_p"], d["hflip"],
                                    d["randaug_group"], float(d.get("gray_p", 0.0)))  # a config saved before it: 0
        self.flip_by_class = self.mirror_flip_probabilities(float(d.get("hflip_symmetric", 0.0)), float(d["hflip"]))
        self.mix = BatchMix(d.get("mixup_alpha", 0.0), d.get("cutmix_alpha", 0.0), d.get("mix_p", 1.0))
        self.unlabeled = None
        self.joint = None  # semi.method=moco: the joint loss's projection head, key encoder and queue
        self.soft_targets: torch.Tensor | None = None  # set by add_pseudo_labelled(soft=...)
        if cfg["semi"]["method"] == "fixmatch":
            from fewshot.train.semi import UnlabeledStream

            self.unlabeled = UnlabeledStream(cfg, infos, self.size, *mean_std(self.model.backbone), device,
                                             limit=pool_limit)
        elif cfg["semi"]["method"] == "moco":
            self.start_joint_moco(infos)
        elif cfg["semi"]["method"] not in ("off", None, False):
            from fewshot.errors import UserError

            raise UserError(f"semi.method must be off, fixmatch or moco, not {cfg['semi']['method']!r}")
        self.eval_every = cfg["train"]["eval_every"]
        self.n_parameters = n_parameters(self.model)

    def start_joint_moco(self, infos) -> None:
        """semi.method=moco (fewshot.train.semi_moco): the pool as contrastive pairs and the joint loss's state,
        built on the classifier's backbone as it is now (its key encoder is copied again at the first step)."""
        from fewshot.train.semi_moco import ContrastiveStream, JointMoCo, refuse_processes, warn_small_pool

        refuse_processes(self.ctx.world)  # before the pool is decoded
        self.unlabeled = ContrastiveStream(self.cfg, infos, self.size, *mean_std(self.model.backbone), self.device)
        n_keys = int(self.cfg["semi"]["mu"]) * int(self.cfg["train"]["batch_size"])
        self.joint = JointMoCo(self.cfg, self.model.backbone, n_keys, len(self.unlabeled.images), self.device,
                               self.channels_last)
        self.unlabeled.summary.update(self.joint.settings())
        if self.ctx.is_main:
            warn_small_pool(len(self.unlabeled.images), self.joint.queue_size, n_keys)

    def mirror_flip_probabilities(self, p: float, hflip: float = 0.0) -> torch.Tensor | None:
        """data.hflip_symmetric: flip probability [C] for the classes whose labelled images (train + val)
        look mirror-symmetric (fewshot.data.symmetry), 0 for the others; None when off. TrainAugment flips each
        image with the larger of this and data.hflip, so with data.hflip >= p it adds nothing (None, and said):
        "flips for the classes that look mirror-symmetric" was printed while every image was flipped."""
        if p <= 0:
            return None
        if hflip >= p:
            if self.ctx.is_main:
                print(one_line(f"warning: data.hflip_symmetric={p:g} adds nothing: data.hflip={hflip:g} flips every "
                               f"class's images at p={hflip:g} already, mirror-symmetric or not (each image takes the "
                               f"larger of the two); drop data.hflip_symmetric, or lower data.hflip below it to "
                               f"flip the mirror-symmetric classes more often than the others"), flush=True)
            return None
        from fewshot.data.symmetry import mirror_symmetric_classes

        images = torch.cat([self.train_set.images, self.val_set.images])
        targets = torch.cat([self.train_set.targets, self.val_set.targets])
        symmetric = mirror_symmetric_classes(images, targets, self.space.num_classes)
        if self.ctx.is_main:
            parts = []
            for d, name in enumerate(self.space.names):
                classes = torch.nonzero(self.space.mask(torch.tensor([d]))[0]).flatten()
                parts.append(f"{name} {int(symmetric[classes].sum())}/{len(classes)}")
            others = f", p={hflip:g} (data.hflip) for the others" if hflip > 0 else ""
            print(one_line(f"horizontal flips (p={p:g}) for the classes that look mirror-symmetric{others}: "
                           f"{', '.join(parts)}"))
        return symmetric.float() * p

    def head_init_mode(self) -> str:
        mode = self.cfg["model"].get("head_init", "random")
        if mode not in ("random", "probe", "prototype"):
            from fewshot.errors import UserError

            raise UserError(f"model.head_init must be random, probe or prototype, not {mode!r}")
        return mode

    @torch.no_grad()
    def init_head_from_probe(self) -> None:
        """LP-FT: fit the head on frozen features first, so fine-tuning starts from a head that
        agrees with the pretrained features instead of a random one that pulls them apart."""
        from fewshot.eval.probe import train_linear_heads

        self.prepare_norm_statistics()
        feats = self.token_features().to(self.device)
        with torch.enable_grad():  # each head on the token it scores (class, distillation), fitted together
            heads = train_linear_heads(feats, self.train_set.targets, self.space.num_classes,
                                       seed=self.cfg["train"]["seed"])
        for h, head in zip(self.model.heads, heads):
            h.load_state_dict(head.state_dict())

    @torch.no_grad()
    def init_head_from_prototypes(self, scale: float = 10.0) -> None:
        """SimpleShot-style start: the head's BN standardises with the train features' statistics and
        each class weight is its normalised class mean, so at step 0 the classifier is the nearest class
        mean by cosine on centred features (argmax is invariant to a sample's feature norm)."""
        self.prepare_norm_statistics()
        feats = self.token_features()
        for i, h in enumerate(self.model.heads):  # each head on the token it scores (class, distillation)
            h.set_prototypes(feats[:, i], self.train_set.targets, scale)

    def token_features(self) -> torch.Tensor:
        """[N, T, D] eval-mode train features, one pass: head i scores token i (DeiT-distilled's heads were both
        fitted to the average of the class and distillation tokens, statistics and class means neither head sees)."""
        from fewshot.eval.features import backbone_features

        return backbone_features(self.model.backbone, self.train_set.images, self.normalize, self.device,
                                 per_token=True)

    def prepare_norm_statistics(self) -> None:
        """Before fitting a head on eval-mode features: a backbone without weights has BatchNorm statistics
        of no data, so they are first taken from the labelled images (pretrained ones keep their own)."""
        from fewshot.eval.features import recalibrate_norm_statistics

        self.model.to(self.device)
        if not self.cfg["model"].get("weights"):
            recalibrate_norm_statistics(self.model.backbone, self.train_set.images, self.normalize, self.device)

    def add_pseudo_labelled(self, images: torch.Tensor, targets: torch.Tensor, dataset_ids: torch.Tensor,
                            labelled_repeat: int = 1, soft: torch.Tensor | None = None) -> None:
        """Self-training: train on the labelled images (repeated, so the true labels keep their weight
        next to a larger pseudo-labelled set) together with pool images and their pseudo-labels.
        ``soft`` [n, C]: the teacher's probabilities as targets instead of its classes (distillation);
        the labelled images keep their one-hot targets. ``images``: a tensor or the pool's ImageRows (read here,
        once). The pixels are held once: the repeat is of their rows (a copy per repeat tripled the labelled set)."""
        from fewshot.data.image_rows import ImageRows
        from fewshot.data.sets import ImageSet

        t = self.train_set
        r = max(1, int(labelled_repeat))
        n, n_labelled = len(targets), len(t)
        if soft is not None:
            one_hot = F.one_hot(t.targets, self.space.num_classes).float().repeat(r, 1)
            self.soft_targets = torch.cat([one_hot, soft.float()])
        rows = torch.cat([torch.arange(n_labelled).repeat(r), n_labelled + torch.arange(n)])
        self.train_set = ImageSet(ImageRows(torch.cat([t.images[:], images[:]]), rows),
                                  torch.cat([t.targets.repeat(r), targets]),
                                  torch.cat([t.dataset_ids.repeat(r), dataset_ids]),
                                  torch.cat([t.ids.repeat(r), torch.full((n,), -1, dtype=torch.long)]),
                                  list(t.paths) * r + [None] * n, t.skipped)

    def param_groups(self) -> list[dict]:
        wd, mult = self.cfg["optim"]["weight_decay"], self.cfg["optim"]["backbone_lr_mult"]
        groups = []
        parts = [(self.model.backbone.parameters(), mult), (self.model.heads.parameters(), 1.0)]
        if self.joint is not None:  # the joint MoCo loss's projection head: new, so at the heads' rate
            parts.append((self.joint.parameters(), 1.0))
        for params, scale in parts:
            decay, no_decay = split_decay(params)
            groups += [{"params": decay, "weight_decay": wd, "lr_scale": scale},
                       {"params": no_decay, "weight_decay": 0.0, "lr_scale": scale}]
        return [g for g in groups if g["params"]]

    def plan_epoch(self, epoch: int) -> list[torch.Tensor]:
        return plan_training_batches(self.cfg, self.train_set, epoch, self.ctx.world, self.ctx.rank)

    def datasets_left_out(self) -> list[str]:
        """Datasets none of whose images is ever in a batch that trains: with data.sampler=grouped a dataset
        smaller than 2 images per process has only batches BatchNorm cannot take, and was never trained without a
        word (3 images on 2 processes; 1 image on any). Only grouped can: its batch sizes are the same every epoch,
        so epoch 0's plan tells. shuffle and repeat draw a new order each epoch, so every image can land in a
        batch that trains (repeat's epoch 0 holds only a third of the images: it named datasets that do train)."""
        if self.cfg["data"]["sampler"] != "grouped":
            return []
        batches = self.plan_epoch(0)
        seen = set(self.train_set.dataset_ids[torch.cat(batches)].tolist()) if batches else set()
        present = set(self.train_set.dataset_ids.tolist())
        return [self.space.names[d] for d in sorted(present - seen)]

    def make_batch(self, idx: torch.Tensor, epoch: int, step: int):
        flip_p = None if self.flip_by_class is None else self.flip_by_class[self.train_set.targets[idx]]
        x = self.augment(self.train_set.images[idx], (self.cfg["train"]["seed"], epoch, step, self.ctx.rank), flip_p)
        x = self.normalize(x.to(self.device, non_blocking=True))
        y, ds = self.train_set.targets[idx].to(self.device), self.train_set.dataset_ids[idx].to(self.device)
        if self.soft_targets is not None:  # probabilities [B, C]; cross_entropy takes them as they are
            y = self.soft_targets[idx].to(self.device)
        if self.mix.enabled:  # labelled (and pseudo-labelled) images only, never FixMatch's pool views
            x, y = self.mix(x, y, ds, self.space.num_classes, (self.cfg["train"]["seed"], epoch, step, self.ctx.rank))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.unlabeled is None:
            return x, y, ds, None
        if self.joint is not None:
            return x, y, ds, self.contrastive_views(epoch, step)
        n = int(self.cfg["semi"]["mu"]) * len(idx)
        weak, strong, uds = self.unlabeled.draw(n, self.cfg["train"]["seed"], epoch, step, self.ctx.rank)
        if self.channels_last:
            weak, strong = (v.contiguous(memory_format=torch.channels_last) for v in (weak, strong))
        return x, y, ds, (weak, strong, uds)

    def contrastive_views(self, epoch: int, step: int):
        """semi.method=moco: ``semi.mu x train.batch_size`` pool images as two views each, the same number every step
        (a short last labelled batch does not shrink the key batch its shuffle-BN groups divide)."""
        from fewshot.train.semi_moco import ContrastiveViews
        from fewshot.utils import make_generator

        n, seed = int(self.cfg["semi"]["mu"]) * int(self.cfg["train"]["batch_size"]), self.cfg["train"]["seed"]
        query, key, _ = self.unlabeled.draw(n, seed, epoch, step, self.ctx.rank)
        if self.channels_last:
            query, key = (v.contiguous(memory_format=torch.channels_last) for v in (query, key))
        return ContrastiveViews(query, key, make_generator(seed, epoch, step, self.ctx.rank, 37))

    def joint_step(self, model, x: torch.Tensor, views) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """semi.method=moco: (labelled logits, contrastive loss, its metrics). One backbone pass over the labelled
        images and the query views gives the features of both (the heads see the labelled ones only). The first step
        of the run being trained (``model`` is the task's own; a timing copy is not) copies the key encoder."""
        if model is self.model and not self.joint.started:
            self.joint.start(model.backbone)
        feats = model.features(torch.cat([x, views.query]))
        logits = model.classify(feats[:len(x)])
        loss_u, metrics = self.joint.loss(model.backbone, feats[len(x):], views, update=model is self.model)
        return logits, loss_u, metrics

    def training_step(self, model, batch):
        x, y, ds, unlabeled = batch
        joint = None
        if self.joint is not None and unlabeled is not None:
            logits, *joint = self.joint_step(model, x, unlabeled)
        elif unlabeled is not None:
            # the weak view only gives targets: no graph for it (a third less work per step than one
            # forward over all three); labelled + strong views share one forward and its BN statistics
            weak, strong, uds = unlabeled
            with torch.no_grad():
                lw = model(weak)
            logits, ls = model(torch.cat([x, strong])).split([len(x), len(strong)])
        else:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg["optim"]["label_smoothing"])
        with torch.no_grad():
            hard = y.argmax(1) if y.is_floating_point() else y
            acc = (self.space.restrict(logits.float(), ds).argmax(1) == hard).float().mean() * 100
        metrics = {"train_acc1": acc}
        if joint is not None:
            loss = loss + self.cfg["semi"]["weight"] * joint[0]
            metrics.update(joint[1])
        elif unlabeled is not None:
            from fewshot.train.semi import fixmatch_loss

            loss_u, mask = fixmatch_loss(lw, ls, uds, self.space, self.cfg["semi"]["threshold"])
            loss = loss + self.cfg["semi"]["weight"] * loss_u
            metrics.update({"unlabeled_loss": loss_u.detach(), "pseudo_label_rate": mask * 100})
        return loss, metrics, len(y)

    def val_logits(self, model) -> torch.Tensor:
        return compute_logits(model, self.val_set.images, self.normalize, self.device,
                              channels_last=self.channels_last, desc="validating")

    def evaluate(self, model, epoch: int) -> dict:
        logits = self.val_logits(model)
        out = {}
        for mode in ("known", "unknown"):
            out[mode] = score(logits, self.val_set.targets, self.val_set.dataset_ids, self.space, mode,
                              self.n_parameters)
        return {"score": out[self.cfg["train"]["eval_mode"]]["mean_acc1"], "val": out}

    def forward_state_tensors(self) -> list[torch.Tensor]:
        """Tensors outside the model that a training step changes without gradients (the Engine restores them with
        the model's when it skips or redoes a step): the joint MoCo loss's key encoder, queue and pointer."""
        return self.joint.forward_state_tensors() if self.joint is not None else []

    def checkpoint_extra(self) -> dict:
        return {"label_space": self.space.to_dict(), "n_parameters": self.n_parameters, "img_size": self.size,
                "model_name": self.cfg["model"]["name"], "n_train": len(self.train_set),
                **({"n_pool": len(self.unlabeled.images), "pool_key": self.unlabeled.key} if self.unlabeled else {}),
                **({"joint_moco": self.joint.state_dict()} if self.joint is not None else {})}

    def check_resumable(self, ck: dict) -> None:
        """The checks a resume makes of the checkpoint's data (classes, training images, pool), without loading
        anything: run_finetune makes them before its start line (a refused resume first announced its training)."""
        from fewshot.train.checkpoint import check_same_images

        self.check_classes(ck)
        check_same_images(ck, "n_train", len(self.train_set), "training images", stage_note=True)
        self.check_same_pool(ck)

    def load_checkpoint_extra(self, ck: dict) -> None:
        self.check_resumable(ck)
        if self.joint is not None and ck.get("joint_moco") is not None:
            self.joint.load_state_dict(ck["joint_moco"])
        elif self.joint is not None:  # the config check refuses a changed semi.method; this is a damaged checkpoint
            from fewshot.errors import UserError

            raise UserError("--resume continues a run with semi.method=moco, but its checkpoint holds no state of the "
                            "joint MoCo loss (projection head, key encoder, queue). Start a new run with another --out "
                            "(--weights RUN/checkpoints/last.pt keeps the classifier's weights).")

    def check_same_pool(self, ck: dict) -> None:
        """FixMatch and the joint MoCo loss draw their pool images by position: in a pool that gained or lost files
        since the stop the resumed epochs would draw other images than the run's (a checkpoint saved before the key
        was kept: not checked)."""
        if self.unlabeled is None or ck.get("pool_key") in (None, self.unlabeled.key):
            return
        from fewshot.errors import UserError

        n_run, n_now = int(ck.get("n_pool", -1)), len(self.unlabeled.images)
        what = (f"{n_run} images in the run, {n_now} now" if n_run != n_now else
                f"{n_now} images as in the run, but other files")
        if self.unlabeled.skipped:  # the key is of the files that decode: a file that broke since counts as gone
            what += f"; {len(self.unlabeled.skipped)} pool file(s) no longer decode (listed above)"
        method = "FixMatch" if self.joint is None else "joint MoCo"
        raise UserError(f"--resume continues a {method} run on the unlabeled pool it trained with, but the pool "
                        f"({self.unlabeled.source}) has changed since the stop: {what}. Restore the pool's files to "
                        f"resume, or start a new run with another --out.")

    def check_classes(self, ck: dict) -> None:
        check_same_classes(ck, self.space, lambda: self.cfg["data"]["root"])
