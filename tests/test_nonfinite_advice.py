"""The non-finite stops' advice fits the cause where the run shows it: a MoCo run with a tiny moco.temperature
(1e-30: NaN within a few steps) was told only "Lower the learning rate"; an fp16 autocast run is told of fp32."""

from __future__ import annotations

import types

import pytest
import torch

from fewshot.ssl.functional import SAFE_TEMPERATURE, temperature_hint
from fewshot.ssl.pretrain import MoCoTask, run_pretrain
from fewshot.train.engine import Engine, NonFiniteLossError
from helpers.tiny import build_digits, pretrain_cfg


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("advice-data"))


def test_a_tiny_moco_temperature_is_named_in_the_nan_loss_message(root, tmp_path):
    with pytest.raises(NonFiniteLossError) as caught:
        run_pretrain(pretrain_cfg(root, **{"moco.temperature": 1e-30, "model.img_size": 16}), tmp_path / "run")
    text = str(caught.value)
    assert "the loss became nan" in text
    assert "The temperature moco.temperature=1e-30 is below 0.01" in text and "0.07 (MoCo v1) to 0.2 (v2)" in text
    assert "Otherwise lower the learning rate (optim.lr=...), or allow skipping" in text
    assert "\n" not in text  # one paragraph


def _causes(task, amp) -> str:
    """Engine._nonfinite_causes of an Engine holding only ``task`` and ``amp`` (what it reads)."""
    engine = Engine.__new__(Engine)
    engine.task, engine.amp = task, amp
    return engine._nonfinite_causes()


def _moco(temperature: float):
    task = MoCoTask.__new__(MoCoTask)
    task.cfg = {"moco": {"temperature": temperature}}
    return task


def test_the_advice_names_only_the_causes_the_run_shows():
    plain = types.SimpleNamespace()  # a task without a hint (fine-tuning)
    assert _causes(plain, None) == " Lower"  # the message as before: ". Lower the learning rate ..."
    assert _causes(_moco(0.2), torch.bfloat16) == " Lower"  # a usual temperature is no cause
    fp16 = _causes(plain, torch.float16)
    assert "fp16 autocast" in fp16 and "train.amp=bf16, or off (fp32)" in fp16 and fp16.endswith(" Otherwise lower")
    both = _causes(_moco(1e-4), torch.float16)
    assert both.index("moco.temperature=0.0001") < both.index("fp16 autocast") and both.endswith(" Otherwise lower")


def test_the_temperature_hint_starts_below_the_safe_temperature():
    assert temperature_hint(SAFE_TEMPERATURE) is None and temperature_hint(0.07) is None
    assert "reach 1e+30" in temperature_hint(1e-30)
    assert temperature_hint(0.0) is None  # refused by the config (moco.temperature > 0) before any training


def test_the_temperature_hint_names_overflow_only_where_the_logits_overflow():
    """At T=0.005 the logits reach 200, finite in fp16 and fp32: the gradients (1/T larger) are the cause; fp16's
    range (65504) is passed below T of about 1.5e-5, fp32's below about 3e-39."""
    mild = temperature_hint(0.005)
    assert "reach 2e+02, and the loss's gradients grow as 1/T" in mild and "overflow" not in mild
    assert "they overflow in fp16 autocast" in temperature_hint(1e-5)
    assert "overflow" not in temperature_hint(2e-5)
    assert "they overflow even in fp32" in temperature_hint(1e-40)


def test_a_huge_moco_temperature_is_warned_about_at_the_start(root, tmp_path, capsys):
    """moco.temperature=1e308 made every logit 0: the loss sat at ln(1 + K) with zero gradients and the run ended
    with nothing learnt and no word; T=0.2 (v2) and T=1 say nothing."""
    from fewshot.ssl.functional import high_temperature_warning

    assert high_temperature_warning(0.2) is None and high_temperature_warning(1.0) is None
    assert "span at most 0.4" in high_temperature_warning(5.0)
    run_pretrain(pretrain_cfg(root, **{"moco.temperature": 1e308, "model.img_size": 16}), tmp_path / "run")
    err = capsys.readouterr().err
    assert err.count("warning: moco.temperature=1e+308 is above 1") == 1 and "MoCo learns next to nothing" in err


def test_the_joint_loss_warns_about_a_huge_temperature_too(root, capsys):
    """The warning was given by `fewshot pretrain` alone; the joint loss (semi.method=moco) reads moco.temperature."""
    from fewshot.models.backbone import create_backbone
    from fewshot.train.semi_moco import JointMoCo

    cfg = pretrain_cfg(root, **{"moco.temperature": 7.0, "model.img_size": 16})
    JointMoCo(cfg, create_backbone("test_resnet", img_size=16), 8, 80, torch.device("cpu"))
    assert "warning: moco.temperature=7 is above 1" in capsys.readouterr().err
