"""Warnings said once when a run starts, about settings that would waste it without a word: a warmup as long as
the run, an EMA slower than the run, fp16 autocast on a CPU.

Apart from the loop (engine.py) because each reads only the settings and what the Engine built from them (the
schedule, the steps per epoch, the autocast dtype), and says nothing to the loop: it prints, or does not.
"""

from __future__ import annotations

import os
import sys

import torch

from fewshot.errors import one_line
from fewshot.process_state import said_once
from fewshot.runtime import cpu_fp16_warning, cpu_quota_cores, usable_cores


_TOLD_CPU_FP16: set[str] = said_once(__name__, "_TOLD_CPU_FP16")  # the fp16-on-a-CPU warning, once given
_TOLD_SHARED_CORES: set[str] = said_once(__name__, "_TOLD_SHARED_CORES")  # the ranks-share-the-cores note, once
WARMUP_PEAK_OK = 0.9  # a warmup as long as the run whose last step trains at this share of optim.lr or more: no word


def warn_long_warmup(cfg: dict, steps_per_epoch: int, scheduler, is_main: bool) -> None:
    """A warmup as long as the run, or longer, never lets the lr reach optim.lr: sched.warmup_epochs=100 with
    --epochs 2 trained at a 50th of it, and the default 1-epoch warmup of a 1-epoch run peaked at 75 %, without
    a word. The peak said is the schedule's own lr at the run's last step (a warmup of W steps reaches
    (steps - 1) / W of the way up), not epochs / warmup_epochs. A peak of WARMUP_PEAK_OK or more is left
    unsaid, whoever set the warmup: a last step that short of optim.lr changes little (the default warmup of a
    plain `train --epochs 1` on the demo data reaches 96 %, and was warned about). A time-based schedule
    (`fewshot run`) is left out: its epochs are a cap, not the run's length."""
    warmup, epochs = float(cfg["sched"].get("warmup_epochs") or 0.0), cfg["train"]["epochs"]
    total = max(1, epochs * steps_per_epoch)
    warmup_steps = int(round(warmup * steps_per_epoch))  # as build_scheduler counts them
    if not is_main or warmup_steps < total or warmup_steps == 0 or cfg["sched"].get("time_based"):
        return
    # the lr timm's schedule gives the last step, as a share of the first group's optim.lr (what log.jsonl says)
    peak = scheduler._get_lr(total - 1)[0] / scheduler.base_values[0]
    if round(peak, 6) >= WARMUP_PEAK_OK:  # 9 steps of 10 may come out as 0.8999999
        return
    than = "longer than" if warmup_steps > total else "as long as"
    print(f"warning: sched.warmup_epochs={warmup:g} is {than} the run's {epochs} epoch(s) ({total} steps): the "
          f"learning rate climbs for the whole run and never reaches optim.lr (the last step trains at "
          f"{f'{peak:.0%}' if peak >= 0.01 else 'under 1%'} of it). Lower sched.warmup_epochs or raise --epochs.",
          flush=True)


def warn_slow_ema(cfg: dict, steps_per_epoch: int, is_main: bool) -> None:
    """An EMA without decay warm-up averages over about 1/(1 - decay) steps (25,000 at the default 0.99996): on a
    run with fewer optimizer steps it stays near the random initial weights, and a 32-step run was scored at
    chance (val 10.0 at every epoch while the train accuracy climbed), without a word. Told once, at the start
    (best.pt falls back to the raw weights when they score higher, but the EMA's evaluations are wasted)."""
    t = cfg["train"]
    decay = float(t["ema_decay"])
    total = max(1, int(t["epochs"]) * steps_per_epoch)
    # a time-based schedule (`fewshot run`) plans 4x the epochs that fit as a cap: about a quarter of them run
    planned = (f"about {max(1, total // 4):,}, a quarter of its cap of {t['epochs']} epoch(s) x "
               f"{steps_per_epoch} steps" if cfg["sched"].get("time_based") else
               f"{total:,} ({t['epochs']} epoch(s) x {steps_per_epoch} steps)")
    if cfg["sched"].get("time_based"):
        total = max(1, total // 4)
    if t["ema_warmup"] or not is_main or decay <= 0.0 or 1.0 / (1.0 - decay) <= total:
        return
    print(one_line(f"warning: train.ema_warmup=false with train.ema_decay={decay:g} averages the weights over "
                   f"about {1.0 / (1.0 - decay):,.0f} optimizer steps, more than this run's {planned}"
                   f": the EMA stays close to the "
                   f"initial weights and scores near chance. Set train.ema_warmup=true (the default), a smaller "
                   f"train.ema_decay, or train.ema=false; meanwhile best.pt keeps the raw weights wherever they "
                   f"score higher."), file=sys.stderr, flush=True)


def warn_cpu_fp16(amp, device, is_main: bool) -> None:
    """train.amp=fp16 on a CPU was accepted without a word and trained ~15x slower than fp32: said once a
    command (`fewshot run` builds an Engine per stage; each call from a notebook says it, as the shell would)."""
    text = cpu_fp16_warning(amp, device)
    if text and is_main and not _TOLD_CPU_FP16:
        _TOLD_CPU_FP16.add(text)
        print(text, file=sys.stderr, flush=True)


def shared_cores_note(ranks: int, threads: int, cores: int, busy: float = 0.0) -> str | None:
    """The note for torchrun on a CPU whose ``cores`` (less ``busy``: other work's load) cannot give each of this
    machine's ``ranks`` its ``threads``: 2 ranks on 2 shared cores trained FixMatch no faster than one process, and
    with --batch-size per process a budget held half the steps, without a word (hunt hBP). None: no note."""
    busy = min(int(busy), cores)  # a busy host's load counts more than these cores (review rev84, #4)
    if ranks <= 1 or ranks * threads <= cores - busy:
        return None
    others = f", and other work keeps about {busy} of them busy" if busy >= 1 else ""
    return one_line(f"note: the {ranks} torchrun processes on this machine share its {cores} usable CPU cores "
                    f"({threads} thread(s) each{others}): training will not be faster than in one process, and "
                    f"--batch-size is per process, so a time budget holds fewer, larger steps. Run one process "
                    f"(with --batch-size {ranks}x for the same global batch), or give each process cores of its own.")


def cores_and_load(ranks: int) -> tuple[int, float]:
    """The cores this process may use (its affinity, within a cgroup CPU quota) and the load other work puts on
    them: the 1-minute load average less the ``ranks``, only where those cores are the whole host's. Elsewhere (a
    container, a cluster job) the load average counts the host's other jobs: 38 busy of 4 granted cores (rev84 #4)."""
    cores, quota = usable_cores(), cpu_quota_cores()
    cores = min(cores, quota) if quota else cores
    if cores != os.cpu_count():
        return cores, 0.0
    try:
        return cores, max(0.0, os.getloadavg()[0] - ranks)
    except (AttributeError, OSError):  # Windows: no load average
        return cores, 0.0


def warn_shared_cores(device, ctx) -> None:
    """shared_cores_note for this command's CPU processes, said once by rank 0 (the ranks on this machine:
    torchrun's LOCAL_WORLD_SIZE; the cores and other work's load: cores_and_load)."""
    if device.type != "cpu" or not ctx.enabled or not ctx.is_main or _TOLD_SHARED_CORES:
        return
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    ranks = int(local) if local.isdigit() else ctx.world
    text = shared_cores_note(ranks, torch.get_num_threads(), *cores_and_load(ranks))
    if text:
        _TOLD_SHARED_CORES.add(text)
        print(text, flush=True)
