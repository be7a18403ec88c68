"""Any timm model through fewshot (bug hunt hBN, findings 1, 2 and 4).

1. `probe --weights ''` scored another random network on every call (the backbone was built unseeded), and with
   BatchNorm statistics of no data, where train's prototype init first takes them from the labelled images.
2. A MoCo run whose BatchNorm variances reached 1e24 (finite) was called "inf/NaN": the fused float32 norm of the
   check overflows past ~1e19. The advice never named the shuffle-BN groups of 2 images that caused it.
4. `fewshot run --model vit_small_patch14_dinov2` chose 32 px itself, then refused its own choice; and the advice
   "e.g. 224 or 64" of a forward failure was refused at 64 by efficientformer_l1.
"""

from __future__ import annotations

import re
import types

import pytest
import torch

import fewshot.eval.probe as probe
import fewshot.train.nonfinite as nonfinite
from fewshot.errors import UserError
from fewshot.train.engine import NonFiniteLossError
from helpers.checks import run_main

NO_DDP = types.SimpleNamespace(enabled=False)


# --- 1. probe's random baseline -------------------------------------------------------------------------------


def _probe_random(monkeypatch, root, *words, state: int = 0) -> dict:
    """`probe --weights ''` of test_resnet, the global RNG left at ``state`` before it (as another process finds
    it); the train features and the backbone they came from."""
    torch.manual_seed(state)
    seen: dict = {}
    real = probe.backbone_features

    def spy(backbone, images, *args, **kwargs):
        feats = real(backbone, images, *args, **kwargs)
        seen.setdefault("feats", feats)  # the train split's, first
        seen["backbone"] = backbone
        return feats

    monkeypatch.setattr(probe, "backbone_features", spy)
    rc, out, err = run_main("probe", "--weights", "", "--model", "test_resnet", "--data", root, "--img-size", "16",
                            "--head", "prototype", "--device", "cpu", "--no-progress", *words)
    assert rc == 0, err
    seen["out"] = out
    return seen


def test_the_random_baseline_is_the_same_network_every_time(digits_root, monkeypatch):
    first = _probe_random(monkeypatch, digits_root, state=1)
    again = _probe_random(monkeypatch, digits_root, "--seed", "0", state=2)
    assert torch.equal(first["feats"], again["feats"])
    other = _probe_random(monkeypatch, digits_root, "--seed", "1")
    assert not torch.equal(first["feats"], other["feats"])  # --seed draws another network
    assert "(random init, seed 0; BatchNorm statistics of the train images)" in first["out"], first["out"]


def test_the_random_baseline_takes_its_batchnorm_statistics_from_the_train_images(digits_root, monkeypatch):
    bns = [m for m in _probe_random(monkeypatch, digits_root)["backbone"].modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(int(m.num_batches_tracked) > 0 for m in bns)
    assert float(bns[0].running_mean.abs().sum()) > 0  # not the empty statistics (mean 0, var 1)


def test_weights_keep_their_own_batchnorm_statistics(digits_root, monkeypatch, tmp_path):
    from safetensors.torch import save_file

    from fewshot.models.backbone import create_backbone

    state = create_backbone("test_resnet", img_size=16).state_dict()
    for key in state:
        if key.endswith("running_var"):
            state[key].fill_(2.0)
    save_file(state, str(tmp_path / "w.safetensors"))
    seen = {}
    real = probe.backbone_features

    def spy(backbone, *args, **kwargs):
        seen["backbone"] = backbone
        return real(backbone, *args, **kwargs)

    monkeypatch.setattr(probe, "backbone_features", spy)
    rc, _, err = run_main("probe", "--weights", tmp_path / "w.safetensors", "--model", "test_resnet", "--data",
                          digits_root, "--img-size", "16", "--head", "prototype", "--device", "cpu", "--no-progress")
    assert rc == 0, err
    bn = next(m for m in seen["backbone"].modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.all(bn.running_var == 2.0)


# --- 2. diverged weights: finite but huge, and the shuffle-BN groups ------------------------------------------


def test_a_finite_tensor_whose_norm_overflows_is_not_called_inf_nan():
    named = [("fine.weight", torch.ones(3)), ("bn.running_var", torch.full((4,), 1e24))]
    culprit = nonfinite.diverged_tensor(NO_DDP, named)
    assert culprit == ("bn.running_var", pytest.approx(1e24, rel=1e-3))
    text = str(nonfinite.diverged_weights_error(0, 0, "No checkpoint was written", " Lower", 0.03, culprit))
    assert "inf/NaN" not in text and "grew too large for float32 arithmetic in epoch 1" in text, text
    assert "bn.running_var reached 1e+24: still finite" in text, text


def test_a_tensor_holding_nan_is_named_as_inf_nan():
    named = [("huge", torch.full((2,), 1e24)), ("bn.running_mean", torch.tensor([0.0, float("nan")]))]
    culprit = nonfinite.diverged_tensor(NO_DDP, named)
    assert culprit == ("bn.running_mean", None)  # a non-finite value first, before a merely huge one
    text = str(nonfinite.diverged_weights_error(0, 0, "No checkpoint was written", " Lower", 0.03, culprit))
    assert "became inf/NaN in epoch 1 although the loss stayed finite (bn.running_mean holds inf/NaN)" in text


def test_a_finetune_run_names_the_tensor_that_grew_huge(tmp_path, monkeypatch):
    from fewshot.train.finetune import run_finetune
    from fewshot.train.supervised import SupervisedTask
    from helpers.tiny import build_digits, finetune_cfg

    root = build_digits(tmp_path / "root", shots=2)
    real = SupervisedTask.make_batch

    def make_batch(self, idx, epoch, step):
        if (epoch, step) == (0, 1):
            with torch.no_grad():
                next(m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(1e24)
        return real(self, idx, epoch, step)

    monkeypatch.setattr(SupervisedTask, "make_batch", make_batch)
    with pytest.raises(NonFiniteLossError) as caught:
        run_finetune(finetune_cfg(root, **{"model.img_size": 16, "train.epochs": 1}), tmp_path / "run")
    text = str(caught.value)
    assert "became inf/NaN" not in text and "grew too large for float32 arithmetic" in text, text
    assert re.search(r"\(\S*running_var reached \S+e\+2\d: still finite", text), text


def _moco_task(batch: int, groups: int):
    """What nonfinite_causes reads of a MoCo pretraining task: its config and the MoCo model's split-BN groups."""
    return types.SimpleNamespace(cfg={"train": {"batch_size": batch}, "moco": {"temperature": 0.2}},
                                 model=types.SimpleNamespace(split_bn_groups=groups))


def test_shuffle_bn_groups_of_two_images_are_named_among_the_causes():
    text = nonfinite.nonfinite_causes(_moco_task(16, 8), None)
    assert "into 8 BatchNorm groups of 2" in text and "moco.split_bn_groups=2, 8 images each" in text, text
    assert "moco.shuffle_bn=off" in text and text.endswith(" Otherwise lower")


def test_shuffle_bn_groups_of_many_images_or_none_are_not_named():
    assert nonfinite.nonfinite_causes(_moco_task(64, 8), None) == " Lower"  # 8 images a group
    assert nonfinite.nonfinite_causes(_moco_task(16, 1), None) == " Lower"  # no split (DDP, shuffle_bn off)
    joint = types.SimpleNamespace(cfg={"train": {"batch_size": 4}, "semi": {"mu": 1}}, model=None,
                                  joint=types.SimpleNamespace(groups=2))
    assert "each batch of 4 images into 2 BatchNorm groups of 2" in nonfinite.nonfinite_causes(joint, None)


# --- 4. image sizes the model takes ----------------------------------------------------------------------------


def _small_images(root):
    from fewshot.data.layout import scan_root

    return scan_root(root)


def test_run_rounds_its_own_size_to_the_patch_of_the_model(digits_root):
    from fewshot.run_checks import auto_img_size

    size, why = auto_img_size(_small_images(digits_root), torch.device("cpu"), 1.0,
                              {"name": "vit_small_patch14_dinov2"})
    assert size == 28 and why == ("chosen for these images and device at 32 px, then 28 px: vit_small_patch14_dinov2's "
                                  "patches are 14 px; --img-size to change"), why
    assert auto_img_size(_small_images(digits_root), torch.device("cpu"), 1.0, {"name": "test_vit"})[0] == 32


def test_run_refuses_a_fixed_size_model_at_once_naming_a_size_that_works(copy_root, tmp_path):
    """efficientformer_l1 takes 224 px alone, 49x the pixels of the run's own 32 (fEN moved the run there: it
    decoded 616 MB of the digits into ROOT/.fewshot_cache and timed 71 s steps before the budget refused it, advising
    a smaller --img-size): refused before anything is decoded or written."""
    before = sorted(copy_root.rglob("*"))
    rc, _, err = run_main("run", "--data", copy_root, "--out", tmp_path / "out", "--budget-minutes", "1",
                          "--model", "efficientformer_l1", "--device", "cpu", "--no-progress")
    assert rc == 2 and "efficientformer_l1 cannot take 32 px inputs" in err, err
    assert "32 px was `fewshot run`'s own choice" in err and "Give --img-size 224 (checked to work)" in err, err
    assert "the nearest size it takes, 224 px, has 49x the pixels" in err, err
    assert not (tmp_path / "out").exists() and sorted(copy_root.rglob("*")) == before


def _suggested(name: str, size: int) -> tuple[str, list[int]]:
    """check_input_size's refusal of ``name`` at ``size`` px, and the --img-size values it suggests."""
    from fewshot.models.backbone import check_input_size, create_backbone

    with pytest.raises(UserError) as caught:
        check_input_size(create_backbone(name, img_size=size), size, name)
    text = str(caught.value)
    return text, [int(s) for s in re.findall(r"(?:e\.g\. |--img-size |or )(\d+)", text)]


@pytest.mark.parametrize("name, size", [("efficientformer_l1", 64), ("test_vit", 24), ("test_maxvit", 24)])
def test_the_sizes_a_refusal_suggests_are_taken(name, size):
    from fewshot.models.backbone import check_input_size, create_backbone

    text, sizes = _suggested(name, size)
    assert sizes and size not in sizes, text
    for good in sizes:  # each suggestion passes the check, on a real build
        check_input_size(create_backbone(name, img_size=good), good, name)


def test_probe_refuses_a_seed_torch_cannot_take(capsys):
    """review rev81: `probe --seed 2**64` was an internal error (exit 1); train.seed's range is refused with exit 2."""
    from fewshot.cli import main

    rc = main(["probe", "--weights", "", "--model", "test_resnet", "--data", "/nonexistent", "--seed", str(2**64)])
    err = capsys.readouterr().err
    assert rc == 2 and "--seed must be in [-2^63, 2^64-1]" in err, err


def test_a_huge_tensor_of_values_under_1e19_is_not_said_to_be_past_it():
    """review rev81: a million values of 1e17 overflow float32's sum of squares; the message said "past ~1e19"."""
    from fewshot.train.nonfinite import diverged_what

    verb, named = diverged_what(("blocks.3.weight", 1e17))
    assert "past ~1e19" not in named and "sum of the squares" in named and "too large" in verb
    assert "past ~1e19" in diverged_what(("bn.running_var", 1.03e24))[1]
