"""Mixup / CutMix within a dataset: partners, blends and targets checked by hand."""

import pytest
import torch

from fewshot.data.mix import BatchMix, partners_within_groups


def test_partners_stay_in_their_dataset_and_form_a_permutation():
    groups = torch.tensor([0, 1, 0, 0, 1, 2, 1, 0])
    perm = partners_within_groups(groups, torch.Generator().manual_seed(3))
    assert sorted(perm.tolist()) == list(range(len(groups)))
    assert torch.equal(groups[perm], groups)
    assert perm[5] == 5  # alone in its dataset: its own partner
    assert all(perm[i] != i for i in range(len(groups)) if i != 5)  # everyone else gets another image


def _batch():
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 5, 6, 2, 7])  # classes 0-4: dataset 0, classes 5-9: dataset 1
    ds = torch.tensor([0, 0, 1, 1, 0, 1])
    return x, y, ds


def test_mixup_blends_images_and_targets_with_the_same_weight_within_a_dataset():
    x, y, ds = _batch()
    mix = BatchMix(mixup_alpha=0.4)
    lam, perm, box = mix.draw(ds, 8, 8, (0, 1, 2))
    assert box is None and 0 < lam < 1 and torch.equal(ds[perm], ds)
    out, t = mix(x, y, ds, 10, (0, 1, 2))
    assert torch.allclose(out, lam * x + (1 - lam) * x[perm], atol=1e-6)
    for i in range(6):
        want = torch.zeros(10)
        want[y[i]] += lam
        want[y[perm[i]]] += 1 - lam
        assert torch.allclose(t[i], want)  # the mass stays within the sample's own dataset's classes


def test_cutmix_pastes_a_box_whose_area_is_the_partner_target_weight():
    x, y, ds = _batch()
    mix = BatchMix(cutmix_alpha=1.0)
    lam, perm, (y0, y1, x0, x1) = mix.draw(ds, 8, 8, (0, 4, 9))
    out, t = mix(x, y, ds, 10, (0, 4, 9))
    want = x.clone()
    want[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    assert torch.equal(out, want)
    assert lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 64)
    changed = (out != x).any(1)  # [B, H, W]: where the partner's pixels were pasted
    for i in range(6):
        if t[i, y[i]] < 1:  # mixed with another class: the pasted area is its share
            assert changed[i].float().mean().item() == pytest.approx(1 - t[i, y[i]].item(), abs=1e-6)
    box = changed.any(0)
    rows, cols = torch.nonzero(box.any(1)).flatten(), torch.nonzero(box.any(0)).flatten()
    assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle for the batch


def test_draws_are_reproducible_from_the_seed_parts_and_change_with_the_step():
    x, y, ds = _batch()
    mix = BatchMix(mixup_alpha=0.4, cutmix_alpha=1.0)
    a, ta = mix(x, y, ds, 10, (0, 1, 2))
    b, tb = mix(x, y, ds, 10, (0, 1, 2))
    c, tc = mix(x, y, ds, 10, (0, 1, 3))
    assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(ta, tc)


def test_soft_targets_are_blended_as_they_are_and_off_means_untouched():
    x, y, ds = _batch()
    soft = torch.softmax(torch.randn(6, 10), 1)
    mix = BatchMix(mixup_alpha=1.0)
    lam, perm, _ = mix.draw(ds, 8, 8, (1, 2, 3))
    _, t = mix(x, soft, ds, 10, (1, 2, 3))
    assert torch.allclose(t, lam * soft + (1 - lam) * soft[perm])
    off = BatchMix(mixup_alpha=1.0, p=0.0)
    assert not off.enabled
    out, t = off(x, y, ds, 10, (1, 2, 3))
    assert out is x and torch.equal(t, torch.nn.functional.one_hot(y, 10).float())


def test_fine_tuning_with_mixing_trains_on_blended_targets(digits_root):
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.distributed import DistContext
    from fewshot.train.supervised import SupervisedTask

    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 16,
                         "data.mixup_alpha": 0.4, "data.cutmix_alpha": 1.0})
    task = SupervisedTask(cfg, scan_root(digits_root, None, splits=("train", "val")), torch.device("cpu"),
                          DistContext())
    idx = torch.arange(16)
    x, y, ds, _ = task.make_batch(idx, epoch=0, step=0)
    assert y.shape == (16, task.space.num_classes) and torch.allclose(y.sum(1), torch.ones(16))
    assert (y.max(1).values < 1).any()  # some samples really were blended
    x2, y2, _, _ = task.make_batch(idx, epoch=0, step=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # a resumed run replays the same batch
    loss, metrics, n = task.training_step(task.model, (x, y, ds, None))
    assert torch.isfinite(loss) and n == 16


@pytest.mark.parametrize("field, value", [("data.mixup_alpha", -0.1), ("data.cutmix_alpha", -1.0),
                                          ("data.mixup_alpha", float("inf")), ("data.mix_p", 1.5)])
def test_bad_mixing_settings_are_refused_at_start_up(field, value):
    from fewshot.config import resolve
    from fewshot.errors import UserError

    with pytest.raises(UserError, match=field):
        resolve(flags={field: value})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixing_works_on_cuda_tensors():
    x, y, ds = (t.cuda() for t in _batch())
    out, t = BatchMix(mixup_alpha=0.4, cutmix_alpha=1.0)(x, y, ds, 10, (0, 1, 2))
    assert out.device == x.device and t.device == x.device
