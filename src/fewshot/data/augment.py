"""Batched MoCo augmentation on the compute device, with per-sample random parameters.

Why: the per-image PIL pipeline (torchvision transforms in DataLoader workers) is what makes
MoCo slow on a couple of CPU cores. Our images are cached once as uint8 tensors [N,3,H,W];
here whole batches are augmented at once, on whatever device the batch lives on.

Two steps, so that augmentation is reproducible and shardable:

* :meth:`BatchAugment.sample_params` draws every random number for a batch on the CPU from a
  ``torch.Generator`` (one ``torch.rand`` call, one row per sample). The same generator state
  gives the same parameters on any device, and every tensor has the batch dimension first, so
  the parameters of a global batch can be sliced per DDP rank.
* :meth:`BatchAugment.apply` is deterministic given the parameters.

Semantics follow torchvision (``RandomResizedCrop``, ``ColorJitter``, ``RandomGrayscale``,
``GaussianBlur``, ``RandomHorizontalFlip``, ``Normalize``) with these deliberate deviations:

* the colour-jitter ops run in the fixed order brightness, contrast, saturation, hue
  (torchvision draws a random order per image): one fused batched pass instead of 24 orders;
* crop + resize is one bilinear ``grid_sample`` on the whole image without antialiasing
  (torchvision on PIL antialiases when downscaling): cache images near the output size
  (about 1-1.25x) so crops are rarely downscaled much. When a crop is upscaled, edge pixels
  interpolate with their real neighbours outside the crop rather than replicating the edge;
* the blur kernel is truncated at about 10% of the output size (odd, at least 3), as in
  torchvision-based MoCo v2 ports (23 px at 224); the official code uses PIL's untruncated blur;
* intermediate values stay float32 (no rounding to uint8 between ops as PIL does).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AugmentConfig", "BatchAugment", "PRESETS", "blur_kernel_size", "preset", "set_fast_path"]

_FAST = True  # cheaper forms of the hue shift, blur and crop grid (same outputs within float rounding)


def set_fast_path(enabled: bool) -> bool:
    """Turn the cheaper op forms on/off (tests compare them; the benchmark's A/B); returns the old setting."""
    global _FAST
    old, _FAST = _FAST, bool(enabled)
    return old

# ITU-R 601-2 luma weights, exactly as torchvision's rgb_to_grayscale.
_GRAY = (0.2989, 0.587, 0.114)
# Columns of the single per-sample uniform draw (see BatchAugment.sample_params).
_N_TRIES = 10
_COLS = {
    "scale": slice(0, _N_TRIES),
    "log_ratio": slice(_N_TRIES, 2 * _N_TRIES),
    "pos": slice(2 * _N_TRIES, 2 * _N_TRIES + 2),
    "flip": 2 * _N_TRIES + 2,
    "jitter": 2 * _N_TRIES + 3,
    "factors": slice(2 * _N_TRIES + 4, 2 * _N_TRIES + 8),
    "gray": 2 * _N_TRIES + 8,
    "blur": 2 * _N_TRIES + 9,
    "sigma": 2 * _N_TRIES + 10,
}
_N_COLS = 2 * _N_TRIES + 11


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the MoCo augmentation; defaults are MoCo v2's "aug-plus"."""

    out_size: int
    scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratio (w/h)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    gray_before_jitter: bool = False  # MoCo v1's official order: RandomGrayscale, then ColorJitter

    def __post_init__(self) -> None:
        """Fail at construction, not in the middle of an epoch."""
        problems = []
        if self.out_size < 1:
            problems.append(f"out_size must be >= 1, got {self.out_size}")
        # NaN and inf refused first, each field on its own: the range checks below used min(), which passes over a
        # NaN that is not first (jitter (0.4, nan, ...) turned contrast jitter off), and an inf jitter or blur
        # sigma gave NaN images
        finite = {}
        for name in ("scale", "ratio", "jitter", "blur_sigma", "mean", "std", "flip_p", "jitter_p", "gray_p",
                     "blur_p"):
            value = getattr(self, name)
            finite[name] = all(math.isfinite(v) for v in (value if isinstance(value, tuple) else (value,)))
            if not finite[name]:
                problems.append(f"{name} must be finite numbers, got {value}")
        if finite["scale"] and not 0 < self.scale[0] <= self.scale[1]:
            problems.append(f"scale must satisfy 0 < min <= max, got {self.scale}")
        if finite["ratio"] and not 0 < self.ratio[0] <= self.ratio[1]:
            problems.append(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p"):
            if finite[name] and not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if finite["jitter"] and (min(self.jitter) < 0 or self.jitter[3] > 0.5):
            problems.append(f"jitter must be >= 0 with hue <= 0.5, got {self.jitter}")
        if finite["blur_sigma"] and not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            problems.append(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        if finite["std"] and min(self.std) <= 0:
            problems.append(f"std must be positive, got {self.std}")
        if problems:
            raise ValueError("invalid AugmentConfig: " + "; ".join(problems))

    @property
    def blur_kernel(self) -> int:
        """Gaussian kernel size used for this output size (see :func:`blur_kernel_size`)."""
        return blur_kernel_size(self.out_size)


def blur_kernel_size(out_size: int) -> int:
    """Odd kernel of about 10% of the image side, at least 3: 23 for 224 as in MoCo v2 ports."""
    k = max(3, int(round(0.1 * out_size)))
    return k if k % 2 == 1 else k + 1


PRESETS: dict[str, dict] = {
    # He et al. 2020: RRC(0.2-1), RandomGrayscale(0.2), ColorJitter(0.4,0.4,0.4,0.4), flip.
    "mocov1": dict(jitter=(0.4, 0.4, 0.4, 0.4), jitter_p=1.0, gray_p=0.2, blur_p=0.0, gray_before_jitter=True),
    # Chen et al. 2020 "aug-plus": the AugmentConfig defaults.
    "mocov2": {},
}


def preset(name: str, out_size: int, **overrides) -> AugmentConfig:
    """Config of a named recipe, with field overrides (``preset("mocov2", 64, blur_p=0.0)``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown AugmentConfig field(s) {unknown}; known fields: {', '.join(sorted(fields))}")
    return AugmentConfig(out_size=out_size, **{**PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------
# Parameter sampling (CPU, float64, vectorised over the batch)


def _sample_crops(
    u_scale: Tensor, u_log_ratio: Tensor, u_pos: Tensor, cfg: AugmentConfig, height: int, width: int
) -> Tensor:
    """torchvision's RandomResizedCrop box search, vectorised: the first of 10 (scale, log-uniform
    ratio) tries that fits, else the central crop with the ratio clamped. Returns int64 [B,4] =
    (top, left, height, width)."""
    area = height * width
    target_area = area * (cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u_scale)
    lo, hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u_log_ratio)
    w = torch.round(torch.sqrt(target_area * aspect))  # round half to even, like Python's round
    h = torch.round(torch.sqrt(target_area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting try
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # Fallback: central crop, whole image with the aspect ratio clamped to `ratio`.
    in_ratio = width / height
    if in_ratio < cfg.ratio[0]:
        fw, fh = width, int(round(width / cfg.ratio[0]))
    elif in_ratio > cfg.ratio[1]:
        fw, fh = int(round(height * cfg.ratio[1])), height
    else:
        fw, fh = width, height
    found = ok.any(dim=1)
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))

    # Uniform integer positions (torch.randint(0, H - h + 1) per sample), central on fallback.
    top = torch.floor(u_pos[:, 0] * (height - h + 1)).clamp_(max=height - h)
    left = torch.floor(u_pos[:, 1] * (width - w + 1)).clamp_(max=width - w)
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


# ----------------------------------------------------------------------------------------------
# Batched image ops: float32 [n,3,H,W] in [0,1], one parameter per sample


def _crop_theta(crop: Tensor, flip: Tensor, height: int, width: int) -> Tensor:
    """Affine map from output to input normalised coordinates (align_corners=False) that resizes
    the box (top, left, h, w) to the output, mirrored where `flip`: crop, resize and flip in one
    grid_sample. Output pixel centre o maps to input pixel left + (o + 0.5) * w / S - 0.5, as
    torchvision's crop-then-interpolate does."""
    top, left, h, w = crop.to(torch.float64).unbind(1)
    sx = torch.where(flip, -w / width, w / width)
    theta = torch.zeros(crop.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    return theta


def _crop_grid(theta: Tensor, size: int) -> Tensor:
    """``F.affine_grid(theta, [n, 3, size, size], align_corners=False)`` for the axis-aligned theta of
    :func:`_crop_theta`, by broadcasting one row and one column: a quarter of affine_grid's time on the CPU."""
    base = torch.arange(size, dtype=theta.dtype, device=theta.device).mul_(2).add_(1).div_(size).sub_(1)
    gx = theta[:, 0, 0:1] * base + theta[:, 0, 2:3]  # [n, size]: x of output column o
    gy = theta[:, 1, 1:2] * base + theta[:, 1, 2:3]  # [n, size]: y of output row o
    n = theta.shape[0]
    return torch.stack([gx.unsqueeze(1).expand(n, size, size), gy.unsqueeze(2).expand(n, size, size)], dim=3)


def _gray(x: Tensor) -> Tensor:
    """Luma [n,1,H,W] with torchvision's weights."""
    r, g, b = x.unbind(1)
    return (r * _GRAY[0] + g * _GRAY[1] + b * _GRAY[2]).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """torchvision's _blend (ratio * x + (1 - ratio) * other, clamped) with a per-sample ratio."""
    r = ratio.view(-1, 1, 1, 1)
    return (x * r).add_(other * (1 - r)).clamp_(0, 1)


def _shift_hue(x: Tensor, hue: Tensor) -> Tensor:
    """Rotate the hue by `hue` turns per sample. Closed form of torchvision's rgb->hsv, shift,
    hsv->rgb round trip: channel n in (R,G,B) = (5,3,1) is V - V*S*clamp(min(k, 4-k), 0, 1) with
    k = (n + 6*H) mod 6, and V*S = max - min; no HSV tensor, no gather. The fast path (default) picks
    the sector with exact 0/1 masks from ``sign`` instead of ``torch.where`` and takes max/min over
    channel planes instead of ``aminmax``: both are several times slower on the CPU (docs/performance.md)."""
    if not _FAST:
        return _shift_hue_plain(x, hue)
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    is_r, is_g, is_b = _max_masks(r, g, b, maxc)
    num = (g - b).mul_(is_r)
    num.addcmul_((b - r).add_(delta, alpha=2), is_g)
    num.addcmul_((r - g).add_(delta, alpha=4), is_b)
    h6 = num.div_(torch.sign(delta).neg_().add_(1).add_(delta))  # a grey pixel (delta 0) divides by 1
    h6.add_(6.0 * hue.view(-1, 1, 1))  # hue * 6, in [-4, 8)
    out = torch.empty_like(x)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = h6 + n
        k.add_(torch.floor(k * (1 / 6.0)), alpha=-6.0)  # mod 6
        w = torch.minimum(k, 4.0 - k).clamp_(0, 1)
        torch.addcmul(maxc, delta, w, value=-1, out=out[:, c])
    return out


def _max_masks(r: Tensor, g: Tensor, b: Tensor, maxc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """0/1 masks of the channel that holds the max, one per pixel: red, else green, else blue on ties
    (torchvision's priority); from ``sign``, several times cheaper than ``torch.where`` on the CPU, and
    multiplying by them is exact. Separate so that tests can check the priority itself: on ties every
    order gives the same hue in exact arithmetic, so a value test cannot see a wrong one."""
    not_r = torch.sign(maxc - r)
    is_r = 1 - not_r
    is_g = torch.sign(maxc - g).neg_().add_(1).mul_(not_r)
    return is_r, is_g, not_r.sub_(is_g)  # blue: neither red nor green


def _shift_hue_plain(x: Tensor, hue: Tensor) -> Tensor:
    """The reference form of :func:`_shift_hue` (``set_fast_path(False)``)."""
    r, g, b = x.unbind(1)
    minc, maxc = torch.aminmax(x, dim=1)
    delta = maxc - minc
    # Sector offsets (torchvision's priority: red, then green, then blue holds the max).
    num = torch.where(
        maxc == r, g - b, torch.where(maxc == g, (b - r).add_(delta, alpha=2), (r - g).add_(delta, alpha=4))
    )
    h6 = num.div_(torch.where(delta > 0, delta, torch.ones_like(delta)))  # hue * 6, in [-1, 5)
    h6.add_(6.0 * hue.view(-1, 1, 1))
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(h6.unsqueeze(1) + n, 6.0)
    w = torch.minimum(k, 4.0 - k).clamp_(0, 1)
    return maxc.unsqueeze(1) - delta.unsqueeze(1) * w


def _color_jitter(x: Tensor, factors: Tensor, enabled: tuple[bool, bool, bool, bool]) -> Tensor:
    """Brightness, contrast, saturation, hue in this fixed order (torchvision: random order),
    clamping to [0,1] after each op as torchvision does. factors: [n,4]. Ops with jitter 0 are
    skipped, like torchvision's ColorJitter."""
    bright, contrast, sat, hue = factors.unbind(1)
    if enabled[0]:
        x = (x * bright.view(-1, 1, 1, 1)).clamp_(0, 1)
    if enabled[1]:
        # mean of the luma image == luma of the per-channel means (linear), but cheaper; a product and a sum,
        # not `@`: a caller's autocast would run that matmul in bf16 (1e-3 off in the output)
        w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device)
        mean = (x.mean(dim=(2, 3)) * w).sum(1).view(-1, 1, 1, 1)
        x = _blend(x, mean, contrast)
    if enabled[2]:
        x = _blend(x, _gray(x), sat)
    if enabled[3]:
        x = _shift_hue(x, hue)
    return x


def _gaussian_taps(sigma: Tensor, kernel_size: int, dtype: torch.dtype) -> Tensor:
    """[n, kernel_size]: torchvision's kernel, exp(-d^2 / 2 sigma^2) normalised, per sample; one place for
    both blur forms, so that the fast path and its reference cannot drift apart."""
    d = torch.arange(kernel_size, dtype=dtype, device=sigma.device) - kernel_size // 2
    return torch.softmax(-(d * d) / (2 * sigma.to(dtype).view(-1, 1) ** 2), dim=1)


def _blur_matrix(sigma: Tensor, kernel_size: int, size: int) -> Tensor:
    """[n, size, size]: row i holds the Gaussian taps of output pixel i on the input pixels, with the
    reflect padding folded in, so one axis of the blur is one batched matmul."""
    kern = _gaussian_taps(sigma, kernel_size, sigma.dtype)  # [n,k]
    d = torch.arange(kernel_size, device=sigma.device) - kernel_size // 2
    j = (torch.arange(size, device=sigma.device).view(-1, 1) + d.view(1, -1)).abs_()
    j = torch.where(j > size - 1, 2 * (size - 1) - j, j)  # reflect: -1 -> 1, size -> size - 2
    m = torch.zeros(sigma.shape[0], size, size, dtype=sigma.dtype, device=sigma.device)
    return m.scatter_add_(2, j.expand(sigma.shape[0], -1, -1), kern.unsqueeze(1).expand(-1, size, -1))


def _gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-sample Gaussian blur with reflect padding; the kernel is torchvision's (exp(-d^2 / 2 sigma^2),
    normalised). Fast path (default): one batched matmul per axis with the padding folded into the
    matrix, in float32 even under autocast; plain: one grouped conv2d per axis (groups = n*3)."""
    n, c, height, width = x.shape
    if kernel_size // 2 >= min(height, width):
        raise ValueError(f"Gaussian blur: kernel_size {kernel_size} needs a reflect padding of {kernel_size // 2} "
                         f"px, which must be smaller than the image's sides, got {height}x{width}; use an odd "
                         f"kernel_size of at most {2 * min(height, width) - 1} (BatchAugment skips the blur on "
                         "such small outputs)")
    if not _FAST:
        return _gaussian_blur_plain(x, sigma, kernel_size)
    with torch.autocast(x.device.type, enabled=False):
        kw = _blur_matrix(sigma.to(x.dtype), kernel_size, width)
        kh = kw if height == width else _blur_matrix(sigma.to(x.dtype), kernel_size, height)
        y = torch.bmm(x.reshape(n, c * height, width), kw.transpose(1, 2)).view(n, c, height, width)
        return torch.matmul(kh.unsqueeze(1), y)


def _gaussian_blur_plain(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """The reference form of :func:`_gaussian_blur` (``set_fast_path(False)``): separable, one grouped
    conv2d per axis (groups = n*3) with reflect padding."""
    n, c, height, width = x.shape
    kern = _gaussian_taps(sigma, kernel_size, x.dtype).repeat_interleave(c, dim=0)  # [n*c,k]
    p = kernel_size // 2
    y = F.pad(x, (p, p, p, p), mode="reflect").reshape(1, n * c, height + 2 * p, width + 2 * p)
    y = F.conv2d(y, kern.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, kern.view(n * c, 1, kernel_size, 1), groups=n * c)
    return y.view(n, c, height, width)


def _where_mask(x: Tensor, mask: Tensor, fn) -> Tensor:
    """Apply `fn(sub_x, sub_index)` only to the samples where `mask` is true, in place; the other
    samples keep their values exactly and cost nothing. The mask is normally on the CPU (from
    sample_params), so the indices need no device sync."""
    if not bool(mask.any()):
        return x
    if bool(mask.all()):
        return fn(x, None).to(x.dtype)
    idx = mask.nonzero().squeeze(1)
    dev_idx = idx.to(x.device, non_blocking=True)
    # in x's dtype: under a caller's autocast the plain blur's conv2d returns bfloat16, which index_copy_ into the
    # float32 batch refused ("Float and BFloat16"); the all-true branch casts alike, so the output dtype is one
    x.index_copy_(0, dev_idx, fn(x.index_select(0, dev_idx), idx).to(x.dtype))
    return x


class BatchAugment(torch.nn.Module):
    """MoCo augmentation for uint8 batches [B,3,H,W] on any device, per-sample random parameters.

    ``out = aug(x, generator)``; or ``params = aug.sample_params(B, generator, (H, W))`` then
    ``aug.apply(x, params)``, e.g. to draw the parameters of a global batch once and apply a slice
    on each DDP rank. Params (all batch-first, on the CPU):

    * ``crop``: int64 [B,4], (top, left, height, width) in input pixels
    * ``flip``, ``jitter``, ``gray``, ``blur``: bool [B], whether each op applies to the sample
    * ``jitter_factors``: float32 [B,4], brightness, contrast, saturation factors and hue shift
    * ``sigma``: float32 [B], Gaussian blur sigma
    """

    def __init__(self, cfg: AugmentConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return repr(self.cfg)

    @torch.no_grad()
    def sample_params(self, batch_size: int, generator: torch.Generator, in_size: tuple[int, int]) -> dict[str, Tensor]:
        """All random parameters of a batch, from ONE CPU ``torch.rand(B, 31)`` draw: row b only
        depends on the generator state and b, so results do not depend on the device, and the
        first rows of a bigger batch equal a smaller batch drawn from the same state."""
        cfg = self.cfg
        height, width = int(in_size[0]), int(in_size[1])
        u = torch.rand(batch_size, _N_COLS, generator=generator, dtype=torch.float64)
        crop = _sample_crops(u[:, _COLS["scale"]], u[:, _COLS["log_ratio"]], u[:, _COLS["pos"]], cfg, height, width)
        j = torch.tensor(cfg.jitter, dtype=torch.float64)
        lo = torch.cat([(1 - j[:3]).clamp(min=0), -j[3:]])
        hi = torch.cat([1 + j[:3], j[3:]])
        factors = lo + (hi - lo) * u[:, _COLS["factors"]]
        sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u[:, _COLS["sigma"]]
        return {
            "crop": crop,
            "flip": u[:, _COLS["flip"]] < cfg.flip_p,
            "jitter": u[:, _COLS["jitter"]] < cfg.jitter_p,
            "jitter_factors": factors.to(torch.float32),
            "gray": u[:, _COLS["gray"]] < cfg.gray_p,
            "blur": u[:, _COLS["blur"]] < cfg.blur_p,
            "sigma": sigma.to(torch.float32),
        }

    @torch.no_grad()
    def apply(self, x: Tensor, params: dict[str, Tensor], channels_last: bool = False) -> Tensor:
        """Augment uint8 [B,3,H,W] (any device) with given params: float32 [B,3,S,S], normalised."""
        self._check(x, params)
        cfg, size = self.cfg, self.cfg.out_size
        batch, _, height, width = x.shape
        cpu = {k: v.cpu() for k, v in params.items()}  # masks index on the host; a no-op normally

        theta = _crop_theta(cpu["crop"], cpu["flip"], height, width).to(x.device, torch.float32)
        grid = _crop_grid(theta, size) if _FAST else F.affine_grid(theta, [batch, 3, size, size], align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        out.mul_(1.0 / 255.0)

        factors = cpu["jitter_factors"].to(x.device)
        enabled = tuple(v > 0 for v in cfg.jitter)

        def jitter(sub, idx):
            return _color_jitter(sub, factors if idx is None else factors[idx.to(x.device)], enabled)

        def gray(sub, idx):
            return _gray(sub).expand(-1, 3, -1, -1).contiguous()

        if any(enabled) and not cfg.gray_before_jitter:
            out = _where_mask(out, cpu["jitter"], jitter)
        out = _where_mask(out, cpu["gray"], gray)
        if any(enabled) and cfg.gray_before_jitter:
            out = _where_mask(out, cpu["jitter"], jitter)

        sigma = cpu["sigma"].to(x.device)

        def blur(sub, idx):
            return _gaussian_blur(sub, sigma if idx is None else sigma[idx.to(x.device)], cfg.blur_kernel)

        if cfg.blur_kernel // 2 < size:  # reflect padding needs pad < side; smaller images are not blurred
            out = _where_mask(out, cpu["blur"], blur)

        mean, std = self.mean.to(x.device), self.std.to(x.device)
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out.sub_(mean).div_(std)

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """sample_params + apply: one augmented view of each image."""
        return self.apply(x, self.sample_params(x.shape[0], generator, tuple(x.shape[-2:])))

    def _check(self, x: Tensor, params: dict[str, Tensor]) -> None:
        """Clear errors for the usual mistakes (float input, params of another batch or size)."""
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"BatchAugment expects uint8 [B,3,H,W], got {x.dtype} {tuple(x.shape)}")
        missing = {"crop", "flip", "jitter", "jitter_factors", "gray", "blur", "sigma"} - set(params)
        if missing:
            raise ValueError(f"params lack {sorted(missing)}")
        bad = {k: v.shape[0] for k, v in params.items() if v.shape[0] != x.shape[0]}
        if bad:
            raise ValueError(f"params batch sizes {bad} differ from the input batch {x.shape[0]}")
        crop = params["crop"].cpu()
        if len(crop) and (
            bool((crop[:, :2] < 0).any())
            or int((crop[:, 0] + crop[:, 2]).max()) > x.shape[2]
            or int((crop[:, 1] + crop[:, 3]).max()) > x.shape[3]
        ):
            raise ValueError(
                f"crop boxes exceed the input size {tuple(x.shape[-2:])}; sample params with in_size=(H, W)"
            )
