"""One rank of the DDP MoCo equivalence test (gloo, CPU): `run_rank` for torch.multiprocessing, or
this file under `torchrun --nproc_per_node=2 ddp_moco_worker.py SPEC.pt OUT_DIR`.

SPEC holds the initial MoCo state dict, the global view batches of each
step and the hyper-parameters. Each rank takes its contiguous slice of every global batch, runs
DDP(MoCo) + SGD (as the engine wraps it: broadcast_buffers=False) and saves, per step, the
gathered keys, the queue, its pointer, the rank-averaged loss and its own logits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from fewshot.models.backbone import create_backbone
from fewshot.ssl.moco import MoCo, concat_all_gather


def run_rank(rank: int, world: int, port: int, spec_path: str, out_dir: str) -> None:
    """Entry point for torch.multiprocessing (rank first); sets up gloo on 127.0.0.1:port."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    work(spec_path, out_dir)


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # from torchrun's environment
    work(sys.argv[1], sys.argv[2])


def work(spec_path: str, out_dir: str) -> None:
    """Run DDP(MoCo) for the steps in SPEC and save this rank's records to OUT_DIR/rank<r>.pt."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    spec = torch.load(spec_path, weights_only=True)
    out = Path(out_dir)
    rank, world = dist.get_rank(), dist.get_world_size()
    h = spec["hparams"]
    model = MoCo(create_backbone("test_resnet", img_size=h["img_size"]), dim=h["dim"], queue_size=h["K"],
                 momentum=h["m"], temperature=h["T"], mlp=True, split_bn_groups=1)
    model.load_state_dict(spec["state"])
    model.train()
    ddp = DDP(model, broadcast_buffers=False)
    opt = torch.optim.SGD([p for p in model.encoder_q.parameters() if p.requires_grad], lr=h["lr"],
                          momentum=0.9, weight_decay=h["wd"])
    seen: list[torch.Tensor] = []
    orig_keys = model.keys

    def keys(x, generator):
        k = orig_keys(x, generator)
        seen.append(k.detach().clone())
        return k

    model.keys = keys
    records = []
    for step, (im_q, im_k) in enumerate(zip(spec["im_q"], spec["im_k"])):
        b = im_q.shape[0] // world
        lo, hi = rank * b, (rank + 1) * b
        # rank 0's generator decides the permutation (other ranks get another seed on purpose)
        gen = torch.Generator().manual_seed(h["perm_seed"] + step + 1000 * rank)
        loss, logits = ddp(im_q[lo:hi].contiguous(), im_k[lo:hi].contiguous(), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        records.append({"loss": mean_loss / world, "local_loss": loss.detach().clone(),
                        "keys": concat_all_gather(seen[-1]), "local_keys": seen[-1],
                        "queue": model.queue.clone(), "ptr": model.queue_ptr.clone(),
                        "filled": model.queue_filled.clone(), "logits": logits.detach().clone()})
    torch.save({"records": records, "state": model.state_dict()}, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
