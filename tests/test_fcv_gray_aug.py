"""Fine-tuning's random grayscale (data.gray_p): with few shots a network keys on colour where colour is a
nuisance (hunt hAY: a random tint per image cost 7.5 points), so TrainAugment can drop it from a share of the
samples. Hand-checked: equal channels, the rate, reproducibility from the batch's seed, grey images unchanged,
the other draws unchanged, validation and the wiring into fine-tuning and FixMatch's strong view."""

import pytest
import torch

from fewshot.config import resolve
from fewshot.data.transforms import TrainAugment, to_grayscale
from fewshot.errors import UserError


def _colour(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 4, 5), dtype=torch.uint8, generator=gen)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """[N] True where all three channels are equal."""
    return (x[:, 0] == x[:, 1]).flatten(1).all(1) & (x[:, 1] == x[:, 2]).flatten(1).all(1)


def test_the_chosen_samples_turn_grey_at_the_asked_rate():
    x = _colour(2000)
    out = TrainAugment(p=0.0, gray_p=0.3)(x, (0, 1, 2))
    grey = _grey(out)
    assert 0.25 < grey.float().mean().item() < 0.35
    assert torch.equal(out[~grey], x[~grey])  # the others untouched (no RandAugment at p=0)
    assert torch.equal(out[grey], to_grayscale(x[grey]))
    assert out.dtype == torch.uint8


def test_the_luma_is_itu_r_601_as_torchvision_rounded():
    from torchvision.transforms.v2 import functional as TF

    x = _colour(50, seed=3)
    ref = (x[:, 0].double() * 0.2989 + x[:, 1].double() * 0.587 + x[:, 2].double() * 0.114).round()
    got = to_grayscale(x)
    assert torch.equal(got[:, 0].double(), ref) and _grey(got).all()
    assert (got.int() - TF.rgb_to_grayscale(x, num_output_channels=3).int()).abs().max() <= 1  # it truncates


def test_grey_images_are_left_as_they_are():
    levels = torch.arange(256, dtype=torch.uint8).view(16, 1, 4, 4).expand(16, 3, 4, 4).contiguous()
    assert torch.equal(TrainAugment(p=0.0, gray_p=1.0)(levels, (5, 6)), levels)


def test_the_draws_follow_the_batch_seed():
    aug, x = TrainAugment(p=2 / 3, hflip=0.5, gray_p=0.5), _colour(64)
    first = aug(x, (0, 3, 7))
    assert torch.equal(first, aug(x, (0, 3, 7)))  # a resumed run sees the same batch
    assert not torch.equal(_grey(first), _grey(aug(x, (0, 3, 8))))  # another step, other samples


def test_gray_p_leaves_randaugment_and_flip_draws_as_they_were():
    x = _colour(64, seed=1)
    before = TrainAugment(p=2 / 3, hflip=0.5)(x, (2, 4))
    after = TrainAugment(p=2 / 3, hflip=0.5, gray_p=0.3)(x, (2, 4))
    changed = (before != after).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 64
    assert torch.equal(after[changed], to_grayscale(before[changed]))


def test_data_gray_p_is_validated_as_a_probability():
    assert resolve(overrides=["data.gray_p=0.2"])["data"]["gray_p"] == 0.2
    for word in ("data.gray_p=1.5", "data.gray_p=-0.1"):
        with pytest.raises(UserError, match="data.gray_p"):
            resolve(overrides=[word])


def test_fine_tuning_and_the_fixmatch_strong_view_read_data_gray_p(digits_root):
    from fewshot.data.layout import scan_root
    from fewshot.train.distributed import DistContext
    from fewshot.train.semi import UnlabeledStream
    from fewshot.train.supervised import SupervisedTask

    flags = {"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 16, "data.gray_p": 0.4}
    infos = scan_root(digits_root, None, splits=("train", "val"))
    task = SupervisedTask(resolve(flags=flags), infos, torch.device("cpu"), DistContext())
    assert task.augment.gray_p == 0.4
    stream = UnlabeledStream(resolve(flags=dict(flags, **{"semi.views": "randaug"})), infos, 16, (0.5,) * 3,
                             (0.25,) * 3, torch.device("cpu"))
    assert stream.randaug.gray_p == 0.4
    assert TrainAugment().gray_p == 0.0  # off unless asked


def test_pretrain_names_data_gray_p_as_a_word_it_never_reads():
    """MoCo's views are aug.*: `fewshot pretrain data.gray_p=0.2` would otherwise do nothing without a word."""
    from fewshot.cli_warnings import unused_override_warnings

    said = unused_override_warnings("pretrain", resolve(overrides=["data.gray_p=0.2"]), ["data.gray_p=0.2"])
    assert any("data.gray_p=0.2" in line for line in said)


def _a_run_older_than_gray_p(folder):
    """A run's config.yaml as fewshot wrote it before data.gray_p existed (rev61 #1)."""
    from fewshot.config import save_yaml

    old = resolve()
    del old["data"]["gray_p"]
    save_yaml(old, folder / "config.yaml")
    return old


def test_a_run_older_than_gray_p_resumes_without_greying(tmp_path):
    """`train --resume` and a resumed `fewshot run` stage filled in today's 0.2: the rest of the run greyed 20 % of
    its samples, and `--resume data.gray_p=0` was refused as "0.2 in the run, 0 now"."""
    from fewshot.run_stages import stage_config
    from fewshot.train.resume_config import merge_resume_config

    _a_run_older_than_gray_p(tmp_path)
    assert merge_resume_config(tmp_path, resolve(), {})["data"]["gray_p"] == 0.0
    assert stage_config(tmp_path, resolve())["data"]["gray_p"] == 0.0
    assert merge_resume_config(tmp_path, resolve(), {"data.gray_p": 0.0})["data"]["gray_p"] == 0.0
    with pytest.raises(UserError, match=r"data.gray_p \(0.0 in the run, 0.2 now\)"):
        merge_resume_config(tmp_path, resolve(), {"data.gray_p": 0.2})


def test_a_fewshot_run_older_than_gray_p_keeps_it_off_in_its_later_stages(tmp_path):
    """The stages and rounds a resumed `fewshot run` starts take the run's settings (run_state.json): an older run's
    lacks data.gray_p, and its later rounds greyed 20 % where its first did not."""
    from fewshot.run_state import STATE_FILE, RunState, adopt_untyped_settings
    from fewshot.utils import write_json

    old = _a_run_older_than_gray_p(tmp_path)
    write_json(tmp_path / STATE_FILE, {"config": old, "budget_minutes": 1.0, "stages": {}, "seconds": 0.0})
    cfg = resolve()
    assert adopt_untyped_settings(tmp_path, cfg, set()) == {"data.gray_p": 0.0}
    assert cfg["data"]["gray_p"] == 0.0
    RunState.resume(tmp_path, cfg, None)  # the run's own setting: no change
    with pytest.raises(UserError, match=r"data.gray_p \(0.0 in the run, 0.2 now\)"):
        RunState.resume(tmp_path, resolve(), None)
