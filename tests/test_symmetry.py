"""Per-class flip choice: a class is mirror-symmetric when its mean image is, within sampling noise."""

import torch

from fewshot.data.symmetry import mirror_asymmetry, mirror_symmetric_classes
from fewshot.data.transforms import TrainAugment


def _class(n: int, mirrored_half: bool, seed: int) -> torch.Tensor:
    """n noisy copies of one lopsided shape (a bar on the left); half of them mirrored when asked."""
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(3, 16, 16)
    base[:, 2:14, 2:5] = 200.0
    base[:, 2:5, 2:10] = 200.0
    x = base.expand(n, 3, 16, 16) + torch.randn(n, 3, 16, 16, generator=g) * 30
    if mirrored_half:
        x[1::2] = x[1::2].flip(-1)
    return x.clamp(0, 255).to(torch.uint8)


def test_a_class_seen_in_both_orientations_is_symmetric_and_a_lopsided_one_is_not():
    both, one_way = _class(20, True, 0), _class(20, False, 1)
    asym, noise = mirror_asymmetry(one_way)
    assert asym > 5 * noise  # the bar is always on the left
    images = torch.cat([both, one_way, one_way[:3]])
    targets = torch.tensor([0] * 20 + [1] * 20 + [2] * 3)
    got = mirror_symmetric_classes(images, targets, num_classes=4)
    # class 2: too few images for a noise estimate; class 3: none at all
    assert got.tolist() == [True, False, False, False]


def test_the_demo_data_opens_clothes_and_keeps_shoes_and_digits_closed(digits_root, dataset_names):
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.distributed import DistContext
    from fewshot.train.supervised import SupervisedTask

    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 16,
                         "data.hflip_symmetric": 0.5})
    task = SupervisedTask(cfg, scan_root(digits_root, None, splits=("train", "val")), torch.device("cpu"),
                          DistContext())
    def flips(dataset: str) -> dict:  # by dataset: without fashion-mnist the second one is another digits draw
        d = task.space.names.index(dataset)
        return dict(zip(task.space.classes[d], task.flip_by_class[task.space.offsets[d]:].tolist()))

    assert set(task.flip_by_class.tolist()) <= {0.0, 0.5}
    assert flips("digits")["3"] == flips("digits")["7"] == 0.0  # lopsided digits never mirrored
    if "fashion-mnist" in dataset_names:
        assert flips("fashion-mnist")["9_ankle_boot"] == 0.0  # Fashion-MNIST's shoes all point left
    # off by default: no per-class flips, and the default augmentation is unchanged
    off = SupervisedTask(resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet",
                                        "model.img_size": 16}),
                         scan_root(digits_root, None, splits=("train", "val")), torch.device("cpu"), DistContext())
    assert off.flip_by_class is None


def test_per_sample_flip_probabilities_flip_exactly_the_chosen_samples():
    aug = TrainAugment(p=0.0, hflip=0.0)
    batch = torch.arange(4 * 3 * 2 * 3, dtype=torch.uint8).reshape(4, 3, 2, 3)
    out = aug(batch, (0, 1, 2), flip_p=torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert torch.equal(out[0], batch[0].flip(-1)) and torch.equal(out[2], batch[2].flip(-1))
    assert torch.equal(out[1], batch[1]) and torch.equal(out[3], batch[3])
    assert torch.equal(aug(batch, (0, 1, 2)), batch)  # without flip_p: hflip=0, nothing flips
