"""torch.distributed set-up from torchrun's environment; one process when there is none.

`torchrun --nproc_per_node=N -m fewshot pretrain ...` sets RANK/WORLD_SIZE/LOCAL_RANK; we pick
gloo on CPU and nccl on CUDA. Multi-node and elastic restarts are torchrun's job.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fewshot.errors import UserError, printable


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


LAUNCH = ("launch the command with torchrun (`torchrun --nproc_per_node=N -m fewshot ...`), which sets RANK, "
          "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, or unset WORLD_SIZE to run in one process")


class LaunchError(UserError):
    """A torchrun variable missing or bad: said by every process (one started by hand has no rank 0 to say it)."""
    every_process = True


def _missing(name: str) -> LaunchError:
    return LaunchError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} asks for several processes, but {name} is not set: "
                     f"{LAUNCH}.")


def env_int(name: str, default: int | None = None, low: int = 0, high: int | None = None) -> int:
    """An integer torchrun variable in [low, high); a UserError naming it where it is missing or bad (int()'s
    ValueError or a KeyError read as a bug in fewshot). Empty counts as unset, as in cli_ranks.world_size_env."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        if default is None:
            raise _missing(name)
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value >= high):
        bounds = f"from {low} to {high - 1}" if high is not None else f"{low} or more"
        raise LaunchError(f"{name}={printable(raw)!r} must be a whole number {bounds}: {LAUNCH}.")
    return value


def launch_rank() -> int:
    """This process's rank as init_distributed takes it, for "rank 0 says it" notes and warnings: 0 in one process
    (WORLD_SIZE unset, under 2 or not a number: RANK ignored, `RANK= fewshot train` included), else RANK, a
    LaunchError where it is missing, empty or bad. A missing RANK read as 0 had every process of a hand launch print
    rank 0's notes before init_distributed refused it; `os.environ.get("RANK", "0") == "0"` silenced them all for
    an empty RANK in one process. This module loads torch: code that loads none (fewshot.data.layout) imports it
    where a note is due."""
    try:
        world = env_int("WORLD_SIZE", default=1, low=1)
    except LaunchError:  # cli_ranks.world_size_env's reading: init_distributed names the bad value
        world = 1
    return 0 if world < 2 else env_int("RANK", high=world)


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    world = env_int("WORLD_SIZE", default=1, low=1)
    if world <= 1:
        return DistContext(), device
    rank = env_int("RANK", high=world)
    local_rank = env_int("LOCAL_RANK", default=0)
    if not dist.is_initialized():  # what the env:// rendezvous reads: its ValueError read as a bug in fewshot
        if not os.environ.get("MASTER_ADDR", "").strip():
            raise _missing("MASTER_ADDR")
        env_int("MASTER_PORT", low=1, high=65536)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is None:
            dist.init_process_group(backend=backend)
        else:
            # torchrun keeps one TCPStore for the whole job: after an elastic restart (--max-restarts) the
            # new workers would read the previous attempt's keys and connect to dead peers (pytorch#135712).
            # Namespacing the keys by attempt lets the restarted group form and resume from last.pt.
            store, _, _ = next(dist.rendezvous("env://"))
            store = dist.PrefixStore(f"fewshot/attempt_{attempt}", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank), device


def shutdown_distributed() -> None:
    """Destroy the process group while the interpreter is still whole.

    Left to interpreter teardown, gloo's worker threads can still hold work objects whose destruction
    aborts the process (SIGABRT, "terminate called without an active exception"; pytorch#179291), and
    torchrun counts a finished worker that aborts at exit as a failed one.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# {call}: the cli.main call of this process (cli_ranks._CALL), the same on every rank (they make their calls in order).
# torchrun's store keeps its keys for the whole job: a second in-process call read the first one's exit codes and
# claims, and its error was said by nobody
EXIT_KEY = "fewshot/call_{call}/exit_code/{rank}"


def _store():
    """The process group's key-value store (under torchrun the agent holds it, so it outlives every worker); None
    without a group, or where torch no longer has the helper (the ranks then say what they know)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def report_exit(code: int, call: int = 0) -> None:
    """Said by a process after its message, if it printed one: its exit code in command call `call`, for the quiet
    ranks waiting in reported_exit."""
    store = _store()
    if store is not None:
        try:
            store.set(EXIT_KEY.format(call=call, rank=dist.get_rank()), str(code))
        except Exception:  # the store is gone with its host: the waiting ranks then speak for themselves
            pass


def reported_exit(rank: int, timeout_s: float, call: int = 0) -> int | None:
    """The exit code process `rank` reported after printing why it stops, waiting up to timeout_s for it; None when
    it has not (yet), there is no group or its store is gone, or Ctrl-C ends the wait. A quiet rank that fails
    first must not exit before rank 0 has spoken: torchrun then ends rank 0 (SIGTERM) before its message."""
    store = _store()
    if store is None:
        return None
    key, deadline = EXIT_KEY.format(call=call, rank=rank), time.monotonic() + timeout_s
    try:  # polled: a blocking store.wait would hold off Ctrl-C until its timeout
        while not store.check([key]):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        return int(store.get(key))
    except (Exception, KeyboardInterrupt):
        return None


SAID_KEY = "fewshot/call_{call}/said/{speaker}/{digest}"


def _said_key(speaker: int, message: str, call: int) -> str:
    import hashlib

    return SAID_KEY.format(call=call, speaker=speaker, digest=hashlib.sha256(message.encode()).hexdigest()[:16])


def claim_message(speaker: int, message: str, call: int = 0) -> bool:
    """Whether this process is the first of its node (whose first process is rank `speaker`) to say `message`: a
    quiet rank that said an error of its own (cli_ranks._speaker_spoke) must not hear it again from rank 0 when rank 0
    meets the same error later. True without a group or store: say it."""
    store = _store()
    if store is None:
        return True
    try:
        return int(store.add(_said_key(speaker, message, call), 1)) == 1
    except Exception:  # the store is gone with its host: say it
        return True


def speaker_said(speaker: int, message: str, timeout_s: float, call: int = 0) -> bool:
    """A quiet rank's error: whether rank `speaker` (the first process of its node) has said this message or
    reported its own exit, waiting up to timeout_s for either; False (this rank says it) once the wait ends
    without either and this rank has claimed the message. True without a store, or when a signal ends the wait
    (torchrun ends the others once one has failed; Ctrl-C reaches every rank, and rank 0 says it)."""
    store = _store()
    if store is None:
        return True
    keys = [EXIT_KEY.format(call=call, rank=speaker), _said_key(speaker, message, call)]
    deadline = time.monotonic() + timeout_s
    try:  # polled: a blocking store.wait would hold off Ctrl-C until its timeout
        while not any(store.check([key]) for key in keys):
            if time.monotonic() >= deadline:
                return not claim_message(speaker, message, call)
            time.sleep(0.05)
        return True
    except KeyboardInterrupt:
        return True
    except Exception:  # the store is gone with its host (rank 0's agent): this rank says it
        return False


def several_processes() -> bool:
    """Whether this process is one of several in a process group (init_distributed), for code given no DistContext."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj):
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(ctx: DistContext, obj) -> list:
    """Every rank's obj, in rank order (a plain container of numbers: the ranks are trusted peers)."""
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_max(ctx: DistContext, value):
    """The largest value over the ranks: a float, or element-wise for a list of floats (one collective)."""
    if not ctx.enabled:
        return value
    t = torch.tensor(value if isinstance(value, list) else [value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist() if isinstance(value, list) else float(t.item())


def all_reduce_mean(ctx: DistContext, value: float) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":  # NCCL reduces on the rank's device (set by init_distributed)
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t)
    return float(t.item()) / ctx.world


SAME_COPY = "Every node needs the same copy of the data"  # the data refusals' advice (check_same_data, ...)


def data_fingerprint(infos) -> list[tuple[str, int, int, str]]:
    """Per dataset: name, train and val image counts, and a hash of the classes and of each image's path (relative
    to its dataset) with its label; what the processes of one run must agree on."""
    import hashlib

    out = []
    for info in infos:
        h = hashlib.sha256(repr(tuple(info.classes)).encode())
        for split in (info.train, info.val):
            for path, label in split:
                path = Path(path)
                name = path.relative_to(info.root) if path.is_relative_to(info.root) else path
                h.update(f"{name}\0{label}\n".encode())
        out.append((info.name, len(info.train), len(info.val), h.hexdigest()[:16]))
    return out


def check_same_data(ctx: DistContext, infos, resolved: dict | None = None) -> None:
    """Every process must read the same labelled images: a node whose copy of --data differs trained on another
    epoch plan without a word (or DDP died with "params ... appears not to match", reported as a bug). ``resolved``:
    the settings each process filled in after check_same_settings (config.RUN_TIME_FIELDS: the network its node's
    own weights file records), compared in the same exchange: another width ended in DDP's shape-mismatch error,
    another img_size trained each rank at its own size without a word."""
    if not ctx.enabled:
        return
    gathered = all_gather_object(ctx, {"data": data_fingerprint(infos),
                                       "resolved": {k: repr(v) for k, v in (resolved or {}).items()}})
    seen = [g["data"] for g in gathered]
    if all(s == seen[0] for s in seen):
        _check_same_resolved(ctx, [g["resolved"] for g in gathered])
        return
    from fewshot.errors import UserError

    def described(fp) -> str:
        return ", ".join(f"{name} {n_train} train / {n_val} val" for name, n_train, n_val, _ in fp) or "no dataset"

    other = next(r for r, s in enumerate(seen) if s != seen[0])
    same_counts = [s[:3] for s in seen[other]] == [s[:3] for s in seen[0]]
    raise UserError(f"the {ctx.world} processes see different data under --data: rank 0 reads {described(seen[0])}; "
                    f"rank {other} reads {described(seen[other])}"
                    f"{' (the same counts, other files or classes)' if same_counts else ''}. {SAME_COPY} (a shared "
                    f"file system, or one synced copy per node).")


def _check_same_resolved(ctx: DistContext, seen: list[dict]) -> None:
    """check_same_data's part for the settings filled in per process: refused naming them and where they came from."""
    other = next((r for r, s in enumerate(seen) if s != seen[0]), None)
    if other is None:
        return
    from fewshot.errors import UserError

    said, more, keys = _differences(seen[0], seen[other], other)
    network = [k for k in keys if k.startswith("model.")]
    why = (f" Where the command leaves {'it' if len(network) == 1 else 'them'} unset, each process takes "
           f"{', '.join(network)} from its node's own weights file (model.weights, a path per node), and those files "
           f"record other networks: give every node the same weights file (a copy per node must be the same file)."
           if network else "")
    raise UserError(f"the {ctx.world} processes filled in different settings: {said}{more}.{why} "
                    f"{'Or set' if network else 'Set'} {', '.join(keys)} alike for every process on the command line.")


def _differences(mine: dict, theirs: dict, other: int) -> tuple[str, str, list[str]]:
    """The keys whose values (their repr) differ between rank 0 and rank ``other``, said for a message: the first
    five (`k: 2 on rank 0, unset on rank 1`), `(and N more)`, and the keys shown."""
    def value(seen: dict, key: str) -> str:
        text = seen.get(key)
        return "unset" if text in (None, "None") else text  # None's repr: "None on rank 0" read as a typed word

    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    said = "; ".join(f"{k}: {value(mine, k)} on rank 0, {value(theirs, k)} on rank {other}" for k in keys[:5])
    return said, f" (and {len(keys) - 5} more)" if len(keys) > 5 else "", keys[:5]


# fields a node may set for itself: where its copy of the data, cache and weights lie, its threads and output.
# The paths are recorded absolute per node (config.resolve: `~/data` or `../data` named another folder on a node with
# another HOME or cwd); what they hold is compared apart (check_same_data, check_same_image_counts)
PER_NODE_FIELDS = ("data.root", "data.cache_dir", "data.cache_max_gb", "model.weights",
                   "train.threads", "train.progress", "train.tensorboard")
# paths recorded absolute that every node must give alike: a resume cannot honour a pool path per node (config.yaml
# records rank 0's, and MoCo's key of a pool outside the root is made of absolute paths, so rank 1's differed)
SHARED_PATH_FIELDS = ("data.unlabeled",)


def check_same_settings(ctx: DistContext, cfg: dict, resuming: bool) -> bool:
    """Every process must train with the same settings: ranks given other words (a node's own copy of a --config
    file, --epochs 2 on one and 3 on another) hung in the first collective their plans disagreed on, or trained
    each with its own lr while config.yaml recorded rank 0's. Compared as typed, before the job's defaults (which
    one rank alone may refuse, its --batch-size or its weights file, leaving the others waiting here), but for
    PER_NODE_FIELDS.
    Ranks of which only some resume (``resuming``: a last.pt read) differ for that reason, which the engine's
    checkpoint check says; they are left to it. Returns whether every rank is ``resuming`` alike: where not, a
    check of last.pt by the resuming ranks alone would leave the others waiting in the next collective."""
    if not ctx.enabled:
        return True
    from fewshot.config import flatten_dotted

    mine = {key: repr(value) for key, value in flatten_dotted(cfg).items()
            if not key.startswith("_") and key not in PER_NODE_FIELDS}
    # whether weights are given at all, though their file is the node's: the lr defaults it picks (compared once
    # resolved, they told a node without --weights apart) are filled in after this check
    mine["model.weights"] = "a file" if cfg["model"].get("weights") else "none"
    seen = all_gather_object(ctx, (bool(resuming), mine))
    if len({r for r, _ in seen}) > 1:
        return False
    seen = [s for _, s in seen]
    other = next((r for r, s in enumerate(seen) if s != seen[0]), None)
    if other is None:
        return True
    from fewshot.errors import UserError

    said, more, shown = _differences(seen[0], seen[other], other)
    paths = [k for k in shown if k in SHARED_PATH_FIELDS]  # its reason only where the field is among those said
    why = (f" {', '.join(paths)} is resolved to an absolute path on each node (`~/pool` or a relative path names "
           f"another folder on a node with another HOME or working folder): give the same absolute path on every "
           f"node." if paths else "")
    raise UserError(f"the {ctx.world} processes were given different settings: {said}{more}.{why} Give every "
                    f"process the same command line and config file (a copy per node must be the same file).")


def check_same_image_counts(ctx: DistContext, counts: dict[str, int], pixels: dict[str, str] | None = None) -> None:
    """The decoded images per split, the same on every rank: check_same_data compares the labelled files only,
    and a node whose unlabeled pool (or a split, after --skip-bad-images) held other images planned other epochs
    and hung in the first collective. ``pixels``: a hash of the decoded images' digests per part ("train images of
    digits", "the pool"; start_checks.image_fingerprints), compared in the same exchange: a node whose copy held other
    pixels under the same names trained on other images for the same indices without a word."""
    if not ctx.enabled:
        return
    seen = all_gather_object(ctx, {"counts": counts, "pixels": pixels or {}})
    other = next((r for r, c in enumerate(seen) if c["counts"] != seen[0]["counts"]), None)
    if other is None:
        _check_same_pixels(ctx, [c["pixels"] for c in seen])
        return
    from fewshot.errors import UserError

    def described(c: dict) -> str:
        return ", ".join(f"{n} {split}" for split, n in c.items())

    raise UserError(f"the {ctx.world} processes hold different images: rank 0 {described(seen[0]['counts'])}; rank "
                    f"{other} {described(seen[other]['counts'])} (another copy of the data or of the unlabeled pool on "
                    f"that node, or images one node could not decode). {SAME_COPY}.")


def _check_same_pixels(ctx: DistContext, seen: list[dict[str, str]]) -> None:
    """check_same_image_counts' part for the pixels: the parts whose hashes differ between rank 0 and the first rank
    that differs, of those every rank knows (the others said by _say_uncompared)."""
    shared = [part for part in seen[0] if all(part in s for s in seen)]
    other = next((r for r, s in enumerate(seen) if any(s[p] != seen[0][p] for p in shared)), None)
    if other is None:
        _say_uncompared(ctx, seen)
        return
    from fewshot.errors import UserError

    parts = [p for p in shared if seen[other][p] != seen[0][p]]
    raise UserError(f"the {ctx.world} processes see different data under --data: rank 0 and rank {other} decoded "
                    f"other pixels from files of the same names and counts ({', '.join(parts)}): another copy of the "
                    f"data on that node, with other contents. {SAME_COPY} (a shared file system, or one synced copy "
                    f"per node).")


def _say_uncompared(ctx: DistContext, seen: list[dict[str, str]]) -> None:
    """Rank 0 warns of the parts some rank has no digests of, which are not compared: such a part was left out
    without a word, and the ranks trained unchecked (every rank takes them now; a warning, not a refusal, for what
    a rank could not hash)."""
    parts = list(dict.fromkeys(part for s in seen for part in s))
    lacking = {part: [r for r, s in enumerate(seen) if part not in s] for part in parts}
    lacking = {part: ranks for part, ranks in lacking.items() if ranks}
    if not lacking or not ctx.is_main:
        return
    said = "; ".join(f"{part}: no digests on rank {', '.join(map(str, ranks))}" for part, ranks in lacking.items())
    print(f"warning: the {ctx.world} processes could not compare the pixels they decoded of some data ({said}): a "
          f"node whose copy holds other contents under the same names is not found there. {SAME_COPY}.",
          file=sys.stderr, flush=True)
