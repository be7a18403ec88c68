"""What a MoCo checkpoint's contrastive accuracy is made of.

For RUN's last checkpoint, contrastive acc@1 on fresh batches of the pool:
  1. as trained: its own key encoder and queue (what the training log reports);
  2. consistent: key encoder := query encoder, queue refilled with that encoder's keys; what is
     left is the instance discrimination of the features themselves;
  3. same view: the query's own image as its key (encoders equal), per number of split-BN groups;
     100 % unless the batch statistics of the groups make one image unrecognisable.

    .venv/bin/python benchmarks/moco_diagnose.py runs/moco --groups 8 4 2 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot.data.layout import scan_root
from fewshot.ssl.pretrain import MoCoTask
from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.distributed import DistContext


def batches(task: MoCoTask, n: int, epoch: int, bs: int):
    for step in range(n):
        idx = torch.randperm(len(task.pool))[:bs]
        yield task.make_batch(idx, epoch, step)


@torch.no_grad()
def accuracy(model, task: MoCoTask, n: int, epoch: int, bs: int, same_view: bool = False) -> float:
    hits = total = 0
    for im_q, im_k, gen in batches(task, n, epoch, bs):
        q = F.normalize(model.encoder_q(im_q), dim=1)
        _, logits = model.contrast(q, model.keys(im_q if same_view else im_k, gen))
        hits += int((logits.argmax(1) == 0).sum())
        total += logits.shape[0]
    return 100.0 * hits / total


@torch.no_grad()
def make_consistent(model, task: MoCoTask, bs: int) -> None:
    model.encoder_k.load_state_dict(model.encoder_q.state_dict())
    for _, im_k, gen in batches(task, model.K // bs + 2, 10_001, bs):
        model.enqueue(model.keys(im_k, gen))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--groups", type=int, nargs="*", default=[8, 4, 2, 1])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--results", help="JSON file to write")
    args = ap.parse_args()
    ck = load_checkpoint(Path(args.run) / "checkpoints" / "last.pt")
    cfg = ck["config"]
    bs = int(cfg["train"]["batch_size"])
    infos = scan_root(cfg["data"]["root"], cfg["data"]["datasets"], splits=("train", "val"))
    out: dict = {"run": str(args.run), "epoch": ck["epoch"], "batch_size": bs,
                 "trained_groups": cfg["moco"]["split_bn_groups"], "same_view": {}}
    for i, groups in enumerate([cfg["moco"]["split_bn_groups"]] + args.groups):
        cfg["moco"]["split_bn_groups"] = groups
        task = MoCoTask(cfg, infos, torch.device("cpu"), DistContext())
        model = task.model
        model.load_state_dict(ck["model"])
        model.train()
        torch.manual_seed(0)
        if i == 0:
            out["as_trained"] = accuracy(model, task, args.batches, 10_000, bs)
        make_consistent(model, task, bs)
        if i == 0:
            out["consistent"] = accuracy(model, task, args.batches, 10_002, bs)
            print(f"{args.run} (epoch {ck['epoch']}, {groups} split-BN groups of {bs // groups}): contrastive acc@1 "
                  f"as trained {out['as_trained']:.1f} %, consistent encoders + fresh queue {out['consistent']:.1f} %")
            continue
        out["same_view"][groups] = accuracy(model, task, args.batches, 10_003, bs, same_view=True)
        print(f"  same image as query and key, {groups} group(s) of {bs // groups}: acc@1 "
              f"{out['same_view'][groups]:.1f} %", flush=True)
    if args.results:
        Path(args.results).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
