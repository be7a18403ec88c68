"""Every config field with its default, and the MoCo presets: the one table a user reads to learn the fields
(the help and README point here), kept apart from the code that layers, checks and records them."""

from __future__ import annotations

from typing import Any


# The fine-tuning defaults follow SPEC's course recipe; `None` means "decide at run time"
# (documented next to each field) so that one config serves CPU demos and GPU runs.
DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "resnet18",
        "weights": None,          # local state dict / safetensors / fewshot checkpoint
        "strict": True,           # refuse weights files whose keys do not match
        "drop_path": 0.1,
        "img_size": None,         # None: the model's default input size
        "width": 1.0,             # ResNets: stage channel multiplier (0.5: 32-64-128-256)
        "small_stem": False,      # ResNets: 3x3 stride-1 stem conv instead of 7x7 stride 2 (small images)
        "head": "linear",         # linear: BN1d(affine=False)+Linear
        "head_init": "random",    # random | probe (LP-FT: fit the head on frozen features first; measured
                                  # worse here: the full-batch probe is overconfident and derails early steps)
                                  # | prototype (SimpleShot: cosine nearest class mean of standardised features)
    },
    "data": {
        "root": None,
        "datasets": None,         # None: every dataset folder under root
        "cache_dir": None,        # None: ROOT/.fewshot_cache (read-only ROOT: ~/.cache/fewshot/<root>-<hash>)
        "cache_max_gb": 20.0,     # after writing a new entry, the least recently used ones go until the cache
                                  # holds this much (each changed file list writes a whole new entry); entries
                                  # used in the last hour stay; 0: no limit
        "crop_pct": 1.0,          # Resize(img_size / crop_pct) + CenterCrop(img_size)
        "resize": "auto",         # crop: the short side to the size, centre-cropped to a square (a 40x100 image
                                  # loses 60 % of its rows) | pad: the long side to the size, the whole image kept
                                  # on a square of its border's mean colour (data/decode.py:letterbox) | auto: pad
                                  # each dataset whose median image is more than 2 times as long as wide (or wide
                                  # as long), crop the others, decided once per dataset and recorded (data/fit.py;
                                  # square ones decode as before; docs/recipes.md measured it)
        "bit_depth": "auto",      # significant bits of 16-bit images (8..16: 12 for 12-bit microscopy data stored
                                  # in 16-bit PNG/TIFF, scaled from 0..4095); auto: the container's 16 (0..65535)
        "sampler": "shuffle",     # shuffle | repeat | grouped (batches from one dataset)
        "repeats": 3,             # repeated-augmentation copies (sampler=repeat)
        "randaug_ops": 2,
        "randaug_magnitude": 8,
        "randaug_p": 0.6667,      # SPEC: 2/3 of samples get RandAugment
        "randaug_group": 8,       # samples sharing one RandAugment draw (1: per sample; slower on CPU)
        "hflip": 0.0,             # extra horizontal flip probability (off: digits are not symmetric)
        "hflip_symmetric": 0.0,   # flip probability for the classes whose mean image is mirror-symmetric
        "gray_p": 0.2,            # fine-tuning: share of samples turned grayscale after RandAugment (colour
                                  # invariance: +7 pts on tinted images, -0.9 where hue is the class,
                                  # benchmarks/color_aug.py); MoCo's own is aug.gray_p
        "mixup_alpha": 0.0,       # > 0: mixup with partners of the same dataset, lam ~ Beta(a, a) (fewshot.data.mix)
        "cutmix_alpha": 0.0,      # > 0: CutMix likewise; with both > 0 each batch picks one at random
        "mix_p": 1.0,             # share of batches that are mixed (when mixup or CutMix is on)
        "skip_bad_images": False,  # undecodable labelled images are skipped and listed instead of stopping
                                   # the command (--skip-bad-images); a train class left without any is refused
        "skip_bad_unlabeled": True,  # undecodable pool images are skipped and listed (the pool is extra data; one
                                     # broken file stopped a whole run); false: they stop it, as labelled ones do
        "unlabeled": None,        # the pool (MoCo, self-training, FixMatch): list of folders (None:
                                  # ROOT/unlabeled/<dataset>, else MoCo falls back to the train images; images
                                  # elsewhere in ROOT/unlabeled/ join as of unknown dataset)
    },
    "optim": {
        "name": "adamw",          # adamw | sgd
        "lr": None,               # None: 1e-4 with --weights (course), 4e-3 from scratch (chosen on val:
                                  # docs/recipes.md); --weights of a fewshot export or checkpoint (not of a
                                  # run started from other weights): run.finetune_lr
        "backbone_lr_mult": None, # None: 0.1 with --weights (course), 1.0 from scratch; a fewshot export's or
                                  # checkpoint's: run.finetune_backbone_mult
        "weight_decay": 0.05,
        "momentum": 0.9,          # sgd only
        "fused": "auto",          # sgd: fused update kernel where torch has one (auto) | true | false
        "grad_clip": 5.0,         # max grad norm; 0 disables
        "label_smoothing": 0.1,
    },
    "sched": {
        "warmup_epochs": 1.0,
        "min_lr": 1e-5,
        "warmup_lr": 1e-6,
        "time_based": False,      # with train.budget_minutes: lr follows elapsed time, not steps (fewshot run)
    },
    "train": {
        "epochs": 50,
        "batch_size": 64,
        "seed": 0,
        "device": "auto",         # auto | cpu | cuda
        "amp": "auto",            # auto (bf16 on CUDA; on CPUs with native bf16 for >= 48 px, small stem >= 24 px;
                                  # else off) | bf16 | fp16 | off
        "channels_last": "auto",  # auto: on for CNNs on CUDA
        "compile": "auto",        # torch.compile of the MoCo encoders; auto: on CUDA only (no gain on CPU)
        "ema": True,
        "ema_decay": 0.99996,
        "ema_warmup": True,       # timm's decay warm-up, so EMA is useful on short runs
        "eval_every": 5,          # epochs; the last epoch is always evaluated
        "eval_mode": "known",     # known | unknown (which accuracy picks `best`)
        "save_every_steps": 0,    # extra mid-epoch checkpoints (0: only at epoch ends)
        "save_interval_s": 30.0,  # epoch-end last.pt at most this often (0: every epoch); the last epoch always
        "skip_nonfinite": 0,      # tolerate up to N non-finite losses (skipped steps)
        "deterministic": False,
        "threads": None,          # None: all cores
        "adapt_threads": "auto",  # auto: a budgeted CPU run of one process trains on 1 thread while that is faster
                                  # (other work on the cores), measured on its own steps (train/thread_tuner.py);
                                  # fixed-length runs keep their count (bit-for-bit repeatable) | true | false
        "progress": True,         # progress bars (plain lines when the output is a file or a pipe); --no-progress: off
        "tensorboard": True,      # also write curves to RUN/tensorboard/ when the tensorboard package is installed
        "budget_minutes": None,   # stop cleanly when this much training time is spent (start-up not counted)
    },
    "semi": {
        "method": "off",          # off | fixmatch: also train on the unlabeled pool with confident pseudo-labels
                                  # | moco: plus weight x MoCo's InfoNCE on the pool (train/semi_moco.py; moco.dim,
                                  # mlp, mlp_hidden, temperature, queue_size (a cap), shuffle_bn, split_bn_groups)
        "mu": 2,                  # unlabeled images per labelled image in a step (moco: per batch_size images)
        "threshold": 0.95,        # pseudo-label confidence (softmax within the image's dataset)
        "weight": 1.0,            # weight of the unlabeled loss
        "views": "randaug",       # randaug: weak = the clean image, strong = the labelled RandAugment | mocov2
                                  # (fixmatch only: moco always takes two independent MoCo v2 views, aug.*)
        "moco_momentum": 0.99,    # moco: the key encoder's momentum (0.999 barely moves it in a few hundred steps)
    },
    "moco": {
        "preset": "mocov2",
        "dim": 128,
        "queue_size": 4096,
        "momentum": 0.999,
        "temperature": 0.2,
        "mlp": True,
        "mlp_hidden": None,       # None: the backbone's feature width
        "symmetric": False,       # symmetric loss (both views as queries)
        "shuffle_bn": "auto",     # auto: split-BN groups on one process, DDP shuffle across ranks
        "split_bn_groups": 8,     # groups on a single device (batch must divide)
        "knn_k": 200,
        "knn_t": 0.1,
        "knn_every": 1,           # epochs
        "cos": True,
    },
    "run": {
        "pretrain": False,        # True: MoCo on the pool first (pretrain_share of the budget). Off by default:
                                  # at 3 and 10 CPU-minutes it lowered val accuracy (docs/recipes.md)
        "pretrain_share": 0.5,    # fraction of the budget spent on MoCo
        "pretrain_batch_size": 64,
        "pretrain_lr": None,      # None: linear scaling of 0.06 @ 256 (fast small-data setting)
        "queue_size": None,       # None: about half the pool, capped at 4096 (but one step's keys at least)
        "finetune_lr": 2e-3,      # fine-tuning lr after our own (short) MoCo: the backbone still needs to move
        "finetune_backbone_mult": 1.0,
        "min_epochs": 1,
        "report": True,           # write DIR/report/index.html at the end
        "semi_method": "pseudo",  # pseudo: self-training (fine-tune, label the pool, fine-tune again on both;
                                  # best on val at 3 and 10 min) | fixmatch: FixMatch while fine-tuning
                                  # (worse: it halves the epochs) | off: labelled images only
        "pseudo_share": 0.5,      # pseudo: fraction of the fine-tuning time for round 1 (labelled images only)
        "pseudo_rounds": 2,       # pseudo: fine-tuning rounds, >= 2 (round 1: labelled only; each later one
                                  # trains on the pool relabelled by the round before)
        "pseudo_keep": 0.5,       # pseudo: per class at most this fraction of (pool / classes) images, most
                                  # confident first
        "pseudo_max_per_shot": 10,  # pseudo: a class keeps at most this many pool images per labelled train image of
                                    # its own (1 shot: 10), so a huge pool cannot drown the true labels; 10 shots: 100,
                                    # above the demo's 50 (pseudo_keep of 1000 / 10 classes)
        "pseudo_threshold": 0.0,  # pseudo: minimum confidence (softmax within the image's dataset); whatever it is,
                                  # a label needs more than twice chance (2 / classes; two classes: 0.75)
        "pseudo_precision": 0.0,  # pseudo: > 0: per-class confidence thresholds at which the teacher is right this
                                  # often on val (0: rank only)
        "pseudo_labelled_repeat": 3,  # pseudo: the labelled images appear this many times in later rounds
        "pseudo_targets": "hard",  # pseudo: hard (the teacher's class) | soft (its probabilities: distillation)
        "moco_momentum": 0.99,    # short schedules: at 0.999 the key encoder barely moves in a few hundred steps
        "balance": "auto",        # test predictions evened out to the train split's class proportions, or even
                                  # ones, or the test split's own where skewed (per-class offsets fitted on the test
                                  # images): auto, where it does not lower val accuracy and val holds 10 images of
                                  # every class (fewshot.eval.balance) | on | off
    },
    "aug": {
        "scale": [0.2, 1.0],
        "jitter": [0.4, 0.4, 0.4, 0.1],
        "jitter_p": 0.8,
        "gray_p": 0.2,
        "blur_p": 0.5,
        "flip_p": 0.5,
    },
}

# MoCo presets (SPEC values). Applied over DEFAULTS for `fewshot pretrain`. lr None: 0.03 at batch 256,
# scaled linearly with the global batch (resolve_pretrain_defaults), as the course's 0.015 at 128.
def _moco_preset(name: str, temperature: float, mlp: bool, cos: bool, jitter: list, jitter_p: float,
                 blur_p: float) -> dict[str, Any]:
    """One MoCo version: what v1 and v2 differ in (head, temperature, cosine schedule, augmentation) over the
    optimisation and training both use."""
    return {
        "moco": {"preset": name, "temperature": temperature, "mlp": mlp, "cos": cos},
        "aug": {"jitter": jitter, "jitter_p": jitter_p, "gray_p": 0.2, "blur_p": blur_p},
        "optim": {"name": "sgd", "lr": None, "weight_decay": 1e-4, "momentum": 0.9, "grad_clip": 0.0,
                  "label_smoothing": 0.0},
        "sched": {"warmup_epochs": 0.0, "min_lr": 0.0},
        "train": {"epochs": 200, "batch_size": 256, "ema": False, "eval_every": 1},
        "model": {"drop_path": 0.0, "name": "resnet50"},
    }


PRESETS: dict[str, dict[str, Any]] = {
    "mocov1": _moco_preset("mocov1", 0.07, mlp=False, cos=False, jitter=[0.4, 0.4, 0.4, 0.4], jitter_p=1.0, blur_p=0.0),
    "mocov2": _moco_preset("mocov2", 0.2, mlp=True, cos=True, jitter=[0.4, 0.4, 0.4, 0.1], jitter_p=0.8, blur_p=0.5),
}
