"""Tests of fewshot.data.augment: batched MoCo augmentation against torchvision semantics."""


import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from fewshot.data.augment import AugmentConfig, BatchAugment, blur_kernel_size, preset

IDENTITY_NORM = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
ALL_OFF = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)


def images(b=8, h=32, w=32, seed=0):
    return torch.randint(0, 256, (b, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def plain_params(aug, b, size):
    """Params of the identity augmentation (whole-image crop, nothing else), to edit per test."""
    identity = BatchAugment(AugmentConfig(out_size=aug.cfg.out_size, **ALL_OFF))
    return identity.sample_params(b, gen(), size)


# ------------------------------------------------------------------ config and presets


def test_presets_and_kernel_size():
    v1, v2 = preset("mocov1", 224), preset("mocov2", 224)
    assert v1.jitter == (0.4, 0.4, 0.4, 0.4) and v1.jitter_p == 1.0 and v1.blur_p == 0.0
    assert v1.gray_p == 0.2 and v1.scale == (0.2, 1.0) and v1.flip_p == 0.5
    assert v2 == AugmentConfig(out_size=224)
    assert v2.jitter == (0.4, 0.4, 0.4, 0.1) and v2.jitter_p == 0.8 and v2.blur_p == 0.5
    assert preset("mocov2", 64, blur_p=0.0).blur_p == 0.0
    assert [blur_kernel_size(s) for s in (224, 96, 64, 32, 8)] == [23, 11, 7, 3, 3]
    with pytest.raises(ValueError, match="mocov1.*mocov2"):
        preset("simclr", 64)
    with pytest.raises(ValueError):
        preset("mocov2", 64, not_a_field=1)
    with pytest.raises(ValueError):
        AugmentConfig(out_size=32, jitter_p=1.5)


# ------------------------------------------------------------------ reproducibility, shapes


def test_determinism_and_shapes():
    aug = BatchAugment(preset("mocov2", 24))
    x = images(6, 32, 40)
    a, b, c = aug(x, gen(1)), aug(x, gen(1)), aug(x, gen(2))
    assert a.shape == (6, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # normalised with mean/std: undoing it gives values in [0, 1]
    mean, std = torch.tensor(aug.cfg.mean).view(1, 3, 1, 1), torch.tensor(aug.cfg.std).view(1, 3, 1, 1)
    raw = a * std + mean
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    # params: batch-first, on the CPU
    p = aug.sample_params(6, gen(1), (32, 40))
    assert all(v.shape[0] == 6 and v.device.type == "cpu" for v in p.values())
    cl = aug.apply(x, p, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(cl, a, atol=1e-6)


def test_params_do_not_depend_on_batch_size():
    aug = BatchAugment(preset("mocov2", 16))
    small, big = aug.sample_params(4, gen(3), (20, 20)), aug.sample_params(10, gen(3), (20, 20))
    for k in small:
        assert torch.equal(small[k], big[k][:4]), k


def test_param_ranges_and_rates():
    cfg = AugmentConfig(out_size=16, jitter=(1.5, 0.4, 0.2, 0.1), flip_p=0.5, jitter_p=0.8, gray_p=0.2, blur_p=0.3)
    p = BatchAugment(cfg).sample_params(20000, gen(8), (16, 16))
    f = p["jitter_factors"]
    lo, hi = torch.tensor([0.0, 0.6, 0.8, -0.1]), torch.tensor([2.5, 1.4, 1.2, 0.1])
    assert (f >= lo).all() and (f <= hi).all()
    assert torch.allclose(f.min(0).values, lo, atol=0.01) and torch.allclose(f.max(0).values, hi, atol=0.01)
    assert p["sigma"].min() >= 0.1 and p["sigma"].max() <= 2.0
    for key, rate in [("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.3)]:
        assert p[key].dtype == torch.bool and abs(p[key].float().mean() - rate) < 0.02, key


def test_rank_slices_equal_global_halves():
    aug = BatchAugment(preset("mocov2", 16))
    x = images(12, 20, 24)
    params = aug.sample_params(12, gen(5), (20, 24))
    full = aug.apply(x, params)
    for sl in (slice(0, 6), slice(6, 12)):
        part = aug.apply(x[sl], {k: v[sl] for k, v in params.items()})
        assert torch.allclose(part, full[sl], atol=1e-5)


def test_rejects_bad_inputs():
    aug = BatchAugment(preset("mocov2", 16))
    with pytest.raises(ValueError, match="uint8"):
        aug(images(2).float(), gen())
    params = aug.sample_params(2, gen(), (64, 64))
    with pytest.raises(ValueError, match="crop"):
        aug.apply(images(2, 16, 16), params)
    with pytest.raises(ValueError, match="batch"):
        aug.apply(images(3, 64, 64), params)


# ------------------------------------------------------------------ crop and flip


@pytest.mark.parametrize("in_size", [48, 24])  # downscale and upscale
def test_all_off_is_plain_bilinear_resize(in_size):
    aug = BatchAugment(AugmentConfig(out_size=32, **ALL_OFF))
    x = images(4, in_size, in_size)
    out = aug(x, gen())
    ref = F.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", align_corners=False, antialias=False)
    ref = TF.normalize(ref, list(aug.cfg.mean), list(aug.cfg.std))
    assert torch.allclose(out, ref, atol=1e-4)


def test_crop_box_matches_torchvision_resized_crop():
    aug = BatchAugment(AugmentConfig(out_size=16, **ALL_OFF, **IDENTITY_NORM))
    x = images(3, 60, 80)
    params = plain_params(aug, 3, (60, 80))
    params["crop"] = torch.tensor([[0, 0, 60, 80], [5, 30, 20, 40], [40, 7, 17, 33]])
    out = aug.apply(x, params)
    for i, (top, left, h, w) in enumerate(params["crop"].tolist()):
        ref = TF.resized_crop(x[i].float() / 255, top, left, h, w, [16, 16], antialias=False)
        assert torch.allclose(out[i], ref, atol=1e-4), i


def test_flip_mirrors_output():
    aug = BatchAugment(AugmentConfig(out_size=20, flip_p=0.0))
    x = images(8, 28, 24)
    params = aug.sample_params(8, gen(7), (28, 24))
    assert params["blur"].any() and params["jitter"].any()  # flip must commute with the other ops
    plain = aug.apply(x, params)
    params["flip"] = torch.ones(8, dtype=torch.bool)
    flipped = aug.apply(x, params)
    assert torch.allclose(flipped, plain.flip(-1), atol=1e-5)
    assert not torch.allclose(flipped, plain)


def test_crop_boxes_within_bounds_over_many_draws():
    cfg = AugmentConfig(out_size=16)
    aug = BatchAugment(cfg)
    for height, width in [(64, 64), (48, 80), (90, 30)]:
        top, left, h, w = aug.sample_params(5000, gen(11), (height, width))["crop"].double().unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
        assert (top + h <= height).all() and (left + w <= width).all()
        # the unrounded box (w +- 0.5, h +- 0.5) has area in scale and aspect ratio in ratio ...
        area = height * width
        lo_area, hi_area = (w - 0.5) * (h - 0.5) / area, (w + 0.5) * (h + 0.5) / area
        lo_ratio, hi_ratio = (w - 0.5) / (h + 0.5), (w + 0.5) / (h - 0.5)
        in_scale = (hi_area >= cfg.scale[0]) & (lo_area <= cfg.scale[1])
        searched = in_scale & (hi_ratio >= cfg.ratio[0]) & (lo_ratio <= cfg.ratio[1])
        # ... unless all 10 tries failed: then the central crop, whole image with the ratio clamped
        floor_half = lambda t: t.div(2, rounding_mode="floor")  # noqa: E731
        central = (top == floor_half(height - h)) & (left == floor_half(width - w))
        assert (searched | central).all()
        assert searched.float().mean() > 0.95
        # the positions are spread over the free range
        assert (top < height - h).any() and (top > 0).any()


def test_crop_fallback_and_distribution_match_torchvision():
    # ratio 2 never fits a square image at scale 1: central crop, full width, height w / 2
    aug = BatchAugment(AugmentConfig(out_size=16, scale=(1.0, 1.0), ratio=(2.0, 2.0)))
    crop = aug.sample_params(5, gen(), (40, 40))["crop"]
    assert crop.tolist() == [[10, 0, 20, 40]] * 5
    # default scale/ratio: area fraction and aspect ratio distributions close to torchvision's
    ours = BatchAugment(AugmentConfig(out_size=16)).sample_params(4000, gen(1), (48, 64))["crop"].double()
    torch.manual_seed(0)
    rrc, img = T.RandomResizedCrop(16, scale=(0.2, 1.0)), torch.zeros(1, 48, 64)
    theirs = torch.tensor([[p["height"], p["width"]] for p in (rrc.make_params([img]) for _ in range(4000))]).double()
    for col in (lambda c: c[:, -2] * c[:, -1] / (48 * 64), lambda c: torch.log(c[:, -1] / c[:, -2])):
        a, b = col(ours), col(theirs)
        assert abs(a.mean() - b.mean()) < 0.02 and abs(a.std() - b.std()) < 0.02


# ------------------------------------------------------------------ colour


def jitter_setup(b=6, size=16):
    aug = BatchAugment(AugmentConfig(out_size=size, **{**ALL_OFF, "jitter_p": 1.0}, **IDENTITY_NORM))
    x = images(b, size, size, seed=3)
    params = plain_params(aug, b, (size, size))
    params["jitter"] = torch.ones(b, dtype=torch.bool)
    params["jitter_factors"] = torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(b, 1)
    return aug, x, params


@pytest.mark.parametrize(
    "col,fn,values",
    [
        (0, TF.adjust_brightness, [0.6, 0.8, 1.0, 1.2, 1.4, 1.7]),
        (1, TF.adjust_contrast, [0.6, 0.8, 1.0, 1.2, 1.4, 0.0]),
        (2, TF.adjust_saturation, [0.6, 0.8, 1.0, 1.2, 1.4, 0.0]),
        (3, TF.adjust_hue, [-0.5, -0.3, -0.05, 0.0, 0.1, 0.45]),
    ],
    ids=["brightness", "contrast", "saturation", "hue"],
)
def test_each_jitter_op_matches_torchvision_per_sample(col, fn, values):
    aug, x, params = jitter_setup()
    params["jitter_factors"][:, col] = torch.tensor(values)
    out = aug.apply(x, params)
    for i, v in enumerate(values):
        ref = fn(x[i].float() / 255, v)
        assert (out[i] - ref).abs().max() < 1e-3, (i, v)


def test_full_jitter_matches_torchvision_in_fixed_order_and_mask():
    aug, x, params = jitter_setup()
    params["jitter_factors"] = torch.tensor([[0.7, 1.3, 0.6, 0.08], [1.3, 0.7, 1.4, -0.1]] * 3)
    params["jitter"] = torch.tensor([True, True, False, True, True, False])
    out = aug.apply(x, params)
    for i in range(6):
        ref = x[i].float() / 255
        if params["jitter"][i]:
            b, c, s, h = params["jitter_factors"][i].tolist()
            ref = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(ref, b), c), s), h)
        assert (out[i] - ref).abs().max() < 1e-3, i


def test_hue_on_edge_colours():
    # greys, primaries, secondaries and ties between channels are where HSV formulas go wrong
    aug, _, params = jitter_setup(b=4, size=4)
    levels = torch.tensor([0, 128, 255], dtype=torch.uint8)
    colours = torch.cartesian_prod(levels, levels, levels)[:16].T.reshape(3, 4, 4)  # 16 of 27 combos
    x = torch.stack([colours, colours.roll(1, 0), colours.flip(1), colours.flip(2)])
    params["jitter_factors"][:, 3] = torch.tensor([0.25, -0.4, 0.5, 1 / 6])
    out = aug.apply(x, params)
    for i, v in enumerate(params["jitter_factors"][:, 3].tolist()):
        assert (out[i] - TF.adjust_hue(x[i].float() / 255, v)).abs().max() < 1e-3


def test_grayscale():
    aug = BatchAugment(AugmentConfig(out_size=16, **{**ALL_OFF, "gray_p": 0.5}, **IDENTITY_NORM))
    x = images(8, 16, 16)
    params = aug.sample_params(8, gen(2), (16, 16))
    params["gray"] = torch.tensor([True, False] * 4)
    out = aug.apply(x, params)
    for i in range(8):
        ref = x[i].float() / 255
        if params["gray"][i]:
            assert torch.equal(out[i, 0], out[i, 1]) and torch.equal(out[i, 1], out[i, 2])
            ref = TF.rgb_to_grayscale(ref, num_output_channels=3)
        assert torch.allclose(out[i], ref, atol=1e-5), i


def test_gray_before_jitter_keeps_mocov1_images_grey():
    cfg = preset("mocov1", 16, **IDENTITY_NORM)
    params = BatchAugment(cfg).sample_params(16, gen(4), (16, 16))
    params["gray"][:] = True
    out = BatchAugment(cfg).apply(images(16, 16, 16), params)
    assert (out[:, 0] - out[:, 1]).abs().max() < 1e-5 and (out[:, 1] - out[:, 2]).abs().max() < 1e-5


# ------------------------------------------------------------------ blur


@pytest.mark.parametrize("size", [32, 64])
def test_blur_matches_torchvision_per_sample(size):
    aug = BatchAugment(AugmentConfig(out_size=size, **{**ALL_OFF, "blur_p": 1.0}, **IDENTITY_NORM))
    x = images(5, size, size)
    params = plain_params(aug, 5, (size, size))
    params["blur"] = torch.tensor([True, True, False, True, True])
    params["sigma"] = torch.tensor([0.1, 0.7, 1.0, 1.5, 2.0])
    out = aug.apply(x, params)
    k = aug.cfg.blur_kernel
    for i, s in enumerate(params["sigma"].tolist()):
        ref = x[i].float() / 255
        if params["blur"][i]:
            ref = TF.gaussian_blur(ref, [k, k], [s, s])
        assert (out[i] - ref).abs().max() < 1e-4, i


# ------------------------------------------------------------------ devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    aug = BatchAugment(preset("mocov2", 32))
    x = images(16, 40, 40)
    params = aug.sample_params(16, gen(9), (40, 40))
    cpu = aug.apply(x, params)
    cuda = aug.apply(x.cuda(), params)
    assert cuda.device.type == "cuda"
    assert torch.allclose(cuda.cpu(), cpu, atol=1e-3)
    assert torch.allclose(aug(x.cuda(), gen(9)).cpu(), cuda.cpu(), atol=1e-6)  # same params from the same seed


# ------------------------------------------------------------------ fast op forms against the plain ones


@pytest.fixture
def plain_path():
    """Run a block with augment.set_fast_path(False), restoring the setting after."""
    from fewshot.data import augment

    class Switch:
        def __enter__(self):
            self.old = augment.set_fast_path(False)

        def __exit__(self, *exc):
            augment.set_fast_path(self.old)

    return Switch()


@pytest.mark.parametrize("name,in_hw,out", [("mocov2", (64, 64), 64), ("mocov2", (40, 52), 31),
                                            ("mocov1", (32, 32), 24), ("mocov2", (9, 9), 7)])
def test_fast_path_matches_plain(plain_path, name, in_hw, out):
    # the hue shift without torch.where/aminmax, the blur as matmuls and the broadcast crop grid: same views,
    # also when the caller runs under bf16 autocast (the contrast's luma mean and the blur stay float32)
    from fewshot.data import augment

    assert augment._FAST  # the default
    aug = BatchAugment(preset(name, out, blur_p=0.5 if name == "mocov2" else 0.0, **IDENTITY_NORM))
    x = images(32, *in_hw, seed=3)
    for seed in range(3):
        params = aug.sample_params(32, gen(seed), in_hw)
        fast = aug.apply(x, params)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast_bf16 = aug.apply(x, params)
        with plain_path:
            plain = aug.apply(x, params)
        assert (fast - plain).abs().max() < 2e-5, seed
        assert fast_bf16.dtype == torch.float32 and (fast_bf16 - plain).abs().max() < 2e-5, seed


def test_fast_hue_matches_plain_on_edge_colours(plain_path):
    # greys (max == min), ties between channels, primaries and secondaries, every sector boundary of the shift
    from fewshot.data.augment import _shift_hue

    levels = torch.tensor([0.0, 0.25, 0.5, 1.0])
    colours = torch.cartesian_prod(levels, levels, levels).T.reshape(1, 3, 8, 8)  # all 64 combinations
    hues = torch.tensor([-0.5, -1 / 3, -1 / 6, -0.05, 0.0, 1e-7, 1 / 12, 1 / 6, 0.25, 1 / 3, 0.5])
    x = colours.expand(len(hues), -1, -1, -1).contiguous()
    fast = _shift_hue(x, hues)
    with plain_path:
        plain = _shift_hue(x, hues)
    assert (fast - plain).abs().max() < 1e-6
    assert torch.equal(fast[:, :, 0, 0], torch.zeros_like(fast[:, :, 0, 0]))  # black stays exactly black


def test_fast_hue_masks_follow_torchvisions_max_priority():
    # On a tie every priority gives the same hue in exact arithmetic, so the values above cannot see a wrong
    # order: check the masks themselves against torchvision's rule (red holds the max, else green, else blue),
    # i.e. the first channel that equals the max, on all 64 colours of 4 levels (every kind of tie).
    from fewshot.data.augment import _max_masks

    levels = torch.tensor([0.0, 0.25, 0.5, 1.0])
    x = torch.cartesian_prod(levels, levels, levels).T.reshape(1, 3, 8, 8)
    r, g, b = x.unbind(1)
    masks = torch.stack(_max_masks(r, g, b, torch.maximum(torch.maximum(r, g), b)), dim=1)
    is_max = x == x.amax(dim=1, keepdim=True)
    first_max = is_max & (is_max.cumsum(dim=1) == 1)
    assert torch.equal(masks, first_max.to(x.dtype))
    assert int((first_max[:, 0] & (g == r)).sum()) and int((first_max[:, 1] & (b == g)).sum())  # ties present


@pytest.mark.parametrize("hw,k,dtype", [((64, 64), 7, torch.float32), ((20, 33), 5, torch.float32),
                                        ((4, 4), 7, torch.float32), ((3, 9), 5, torch.float32),
                                        ((9, 3), 5, torch.float32), ((3, 9), 5, torch.float64),
                                        ((20, 33), 7, torch.float64)])
def test_fast_blur_matches_plain_and_ignores_autocast(plain_path, hw, k, dtype):
    # the reflect padding folded into a matrix; non-square maps; (4, 4) with k 7 and (3, 9) / (9, 3) with k 5 pad
    # by side - 1, the widest reflect allows; float64 stays float64; sigma over the config's range (0.1..2.0) and
    # at the extremes: 1e-3 is a copy of the input, 1e3 a flat box over the reflected window
    from fewshot.data.augment import _gaussian_blur

    x = torch.rand(8, 3, *hw, generator=gen(5), dtype=dtype)
    sigma = torch.tensor([1e-3, 0.1, 0.5, 1.0, 1.5, 2.0, 3.0, 1e3])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast must not make the blur bf16
        fast = _gaussian_blur(x, sigma, k)
    with plain_path:
        plain = _gaussian_blur(x, sigma, k)
    assert fast.dtype == dtype and fast.shape == x.shape
    assert (fast - plain).abs().max() < (1e-6 if dtype == torch.float32 else 1e-12)
    assert torch.equal(fast[0], x[0])  # the taps of sigma 1e-3 are exactly (0, ..., 1, ..., 0)
    p = k // 2
    box = F.avg_pool2d(F.pad(x[-1:], (p, p, p, p), mode="reflect"), k, stride=1)
    assert (fast[-1:] - box).abs().max() < 2e-5  # sigma 1e3: taps within 5e-6 of 1/k


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_blur_padding_not_smaller_than_the_image_is_a_clear_error(plain_path, fast):
    # the fast form failed with "index -1 is out of bounds", the plain one in F.pad: name the padding and the fix
    import contextlib

    from fewshot.data.augment import _gaussian_blur

    with plain_path if not fast else contextlib.nullcontext():
        for hw, k, most in (((3, 9), 7, 5), ((9, 3), 9, 5), ((2, 2), 5, 3)):
            with pytest.raises(ValueError, match=rf"kernel_size {k} needs a reflect padding of {k // 2} px.*"
                                                 rf"{hw[0]}x{hw[1]}; use an odd kernel_size of at most {most}"):
                _gaussian_blur(torch.rand(2, 3, *hw), torch.tensor([1.0, 2.0]), k)
        assert _gaussian_blur(torch.rand(2, 3, 3, 9), torch.tensor([1.0, 2.0]), 5).shape == (2, 3, 3, 9)


def test_fast_crop_grid_is_affine_grid():
    from fewshot.data.augment import _crop_grid, _crop_theta

    aug = BatchAugment(preset("mocov2", 24))
    for hw, size in (((64, 64), 24), ((30, 50), 17)):
        p = aug.sample_params(16, gen(7), hw)
        theta = _crop_theta(p["crop"], p["flip"], *hw).float()
        ref = F.affine_grid(theta, [16, 3, size, size], align_corners=False)
        assert (_crop_grid(theta, size) - ref).abs().max() < 1e-6
