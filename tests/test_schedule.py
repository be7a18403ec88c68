"""The learning-rate schedules as the engine steps them (`scheduler.step_update(t)` before step t): MoCo v1's step
decay and the cosine, each with a warmup, against hand-computed step numbers."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot.train.engine import build_scheduler


def _lrs(cos: bool, epochs: int, steps_per_epoch: int, warmup_epochs: float, lr: float = 0.1) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    cfg = {"_task": "moco", "moco": {"cos": cos}, "train": {"epochs": epochs},
           "sched": {"warmup_epochs": warmup_epochs, "warmup_lr": 1e-6, "min_lr": 0.0}}
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch)
    out = []
    for t in range(epochs * steps_per_epoch):
        scheduler.step_update(t)
        out.append(optimizer.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_mocov1_decays_tenfold_at_60_and_80_percent_of_the_steps_with_or_without_warmup(warmup_epochs):
    """A hunt: with a warmup, timm pushed the milestones back by its length (of 100 steps with 10 of warmup, the
    decays came at steps 69 and 89), and counted a milestone one step early without one."""
    lrs = _lrs(cos=False, epochs=10, steps_per_epoch=10, warmup_epochs=warmup_epochs)
    first = 10 * warmup_epochs
    assert lrs[first:60] == pytest.approx([0.1] * (60 - first))
    assert lrs[60:80] == pytest.approx([0.01] * 20) and lrs[80:] == pytest.approx([0.001] * 20)
    if warmup_epochs:
        assert lrs[0] < lrs[5] < 0.1  # warming up


def test_mocov1_with_a_warmup_half_the_run_still_decays():
    """`--epochs 2 sched.warmup_epochs=1 moco.cos=false` never decayed: its milestones lay past the end."""
    lrs = _lrs(cos=False, epochs=2, steps_per_epoch=10, warmup_epochs=1)
    assert lrs[11] == pytest.approx(0.1) and lrs[12] == pytest.approx(0.01) and lrs[16] == pytest.approx(0.001)


def test_cosine_warms_up_then_falls_to_the_floor_at_the_last_step():
    lrs = _lrs(cos=True, epochs=10, steps_per_epoch=10, warmup_epochs=1)
    # the cosine runs over the whole run, warmup included (warmup_prefix=False): at step 10 it is 10 % along
    assert lrs[0] == pytest.approx(1e-6) and lrs[10] == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.1)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-3


def test_a_budgeted_run_that_meets_its_epoch_cap_early_still_decays_its_lr(digits_root, tmp_path):
    """A hunt: a `fewshot run` stage planned from a step timed on a busy machine (532 ms measured, 35 ms taken) met
    its epoch cap in 5 s of its minute, and its time-based cosine had not moved: the last lr was the peak. The
    schedule's position is now the further of the elapsed time and the steps taken of the cap."""
    import json

    from helpers.checks import run_main

    out = tmp_path / "run"
    rc, _, err = run_main("train", "--data", digits_root, "--out", out, "--model", "test_resnet", "--img-size", "32",
                          "--epochs", "2", "--device", "cpu", "--no-progress", "train.budget_minutes=30",
                          "sched.time_based=true", "sched.warmup_epochs=0", "sched.min_lr=0", "--lr", "0.01")
    assert rc == 0, err
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs[-1] < 0.002, lrs  # of 0.01: near the floor at the cap (one step short), not the peak


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from helpers.tiny import build_digits

    return build_digits(tmp_path_factory.mktemp("data"))  # 40 train images, batch 8: 5 steps per epoch


@pytest.mark.parametrize("epochs, warmup, batch, said", [
    (1, 1, 8, "sched.warmup_epochs=1 is as long as the run's 1 epoch(s) (5 steps)"),  # the default warmup: 80 %
    (1, 1, 10, "sched.warmup_epochs=1 is as long as the run's 1 epoch(s) (4 steps)"),  # few steps: 75 %
    (2, 2, 8, None),  # 90 %: close enough
    (5, 5, 8, None),  # 96 %, as the default warmup of `train --epochs 1` on the demo data (25 steps)
    (1, 2, 8, "sched.warmup_epochs=2 is longer than the run's 1 epoch(s) (5 steps)"),  # 40 %, not "near 50%"
    (2, 1, 8, None),  # the warmup ends inside the run
])
def test_a_warmup_as_long_as_the_run_is_warned_about_with_the_lr_it_reaches(tiny_root, tmp_path, capsys, epochs,
                                                                            warmup, batch, said):
    """A warmup exactly as long as the run gave no warning (the check was warmup > epochs), though the lr never
    reached optim.lr: the default 1-epoch warmup of `--epochs 1` peaked at 75 % of it with 4 steps an epoch. A
    longer one said "ends near epochs / warmup" (50 %) where the last step's lr was 38 %: (steps - 1) / warmup
    steps. A last step at 90 % of optim.lr or more is not worth a warning: `fewshot train --epochs 1` on the demo
    data was told its last step trained at 96 %, of a warmup the user never set."""
    import json
    import re

    from fewshot.train.finetune import run_finetune
    from helpers.tiny import finetune_cfg

    out = tmp_path / "run"
    cfg = finetune_cfg(tiny_root, **{"train.epochs": epochs, "sched.warmup_epochs": warmup,
                                     "train.batch_size": batch})
    run_finetune(cfg, out)
    text = capsys.readouterr().out
    warnings = [line for line in text.splitlines() if "warmup_epochs" in line]
    last_lr = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["lr"]  # the lr of the run's last step
    if said is None:
        assert warnings == [], text
        assert warmup < epochs or 0.9 <= last_lr / cfg["optim"]["lr"] < 1, last_lr  # still in its warmup
        return
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {said}: "), text
    share = re.search(r"the last step trains at (\d+)% of it", warnings[0])
    assert share and int(share[1]) == round(100 * last_lr / cfg["optim"]["lr"]), (warnings, last_lr)
