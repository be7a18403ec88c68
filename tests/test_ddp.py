"""DDP on CPU with gloo, 2 processes (forked ranks for the module test, torchrun for the CLI).

(a) DDP(MoCo) equals a hand-written single-process simulation of the 2 ranks: per-rank BatchNorm
    statistics for queries, the global key batch shuffled across ranks with rank 0's permutation,
    mean InfoNCE over the global batch, SGD, momentum update, enqueue of all ranks' keys.
(b) `torchrun --nproc_per_node=2 -m fewshot pretrain|train` run end to end and write checkpoints. Where the launch
    is not the subject (refusals, a NaN on one rank, the budget's agreed stop), the ranks are forks of the test
    process with torchrun's environment and store (helpers.forked_torchrun): seconds instead of a launch each.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fewshot.models.backbone import create_backbone
from fewshot.ssl.functional import shuffle_permutation
from fewshot.ssl.moco import MoCo
from helpers.forked_torchrun import forked_torchrun
from helpers.tiny import (build_digits, cli_in_forked_ranks, copy_data_root, dist_env, free_port, run_forked_ranks,
                          torchrun_cmd, view_pair)

TIMEOUT = 240  # a rank mismatch shows up as a hang: fail instead of blocking the suite
HELPERS = Path(__file__).parent / "helpers"

H = {"img_size": 32, "dim": 16, "K": 20, "m": 0.9, "T": 0.2, "lr": 0.5, "wd": 1e-4, "perm_seed": 100}
B, WORLD, STEPS = 4, 2, 3  # per-rank batch; K=20 is not a multiple of the global batch 8


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    for attempt in range(2):  # a port taken between free_port() and bind: retry once
        proc = subprocess.run(torchrun_cmd(WORLD, free_port(), *args), cwd=cwd, env=dist_env(),
                              capture_output=True, text=True, timeout=TIMEOUT)
        if proc.returncode == 0 or "address already in use" not in (proc.stdout + proc.stderr).lower():
            break
    return proc


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"


# ------------------------------------------------------------------------------ (a) module equivalence


def build_moco() -> MoCo:
    torch.manual_seed(0)
    return MoCo(create_backbone("test_resnet", img_size=H["img_size"]), dim=H["dim"], queue_size=H["K"],
                momentum=H["m"], temperature=H["T"], mlp=True, split_bn_groups=1).train()


def reference(state: dict, im_qs, im_ks) -> tuple[list[dict], MoCo]:
    """Single process, written out by hand: what 2 DDP ranks compute together."""
    model = build_moco()
    model.load_state_dict(state)
    enc_q, enc_k = model.encoder_q, model.encoder_k
    opt = torch.optim.SGD([p for p in enc_q.parameters() if p.requires_grad], lr=H["lr"], momentum=0.9,
                          weight_decay=H["wd"])
    queue, ptr = model.queue.detach().clone(), 0
    records = []
    for step, (im_q, im_k) in enumerate(zip(im_qs, im_ks)):
        n = im_q.shape[0]
        # queries: each rank's chunk through f_q on its own (BatchNorm statistics per rank)
        q = torch.cat([F.normalize(enc_q(im_q[r * B:(r + 1) * B]), dim=1) for r in range(WORLD)])
        with torch.no_grad():
            for pk, pq in zip(enc_k.parameters(), enc_q.parameters()):
                pk.mul_(H["m"]).add_(pq.detach(), alpha=1 - H["m"])
            perm, inverse = shuffle_permutation(n, torch.Generator().manual_seed(H["perm_seed"] + step))
            shuffled = im_k[perm]
            k = torch.cat([F.normalize(enc_k(shuffled[r * B:(r + 1) * B]), dim=1) for r in range(WORLD)])[inverse]
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / H["T"]
        loss = F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rows = (ptr + torch.arange(n)) % H["K"]
        queue[rows] = k
        ptr = (ptr + n) % H["K"]
        records.append({"loss": loss.detach(), "keys": k, "queue": queue.clone(), "ptr": ptr,
                        "logits": logits.detach()})
    return records, model


def spawn_ranks(spec: str, out: str) -> None:
    """2 gloo ranks as forked processes (no re-import of torch/timm: seconds instead of a torchrun
    launch); a hang fails after TIMEOUT instead of blocking the suite."""
    from helpers.ddp_moco_worker import run_rank

    run_forked_ranks(run_rank, (WORLD, free_port(), spec, out), WORLD, TIMEOUT, "DDP MoCo ranks")


@pytest.fixture(scope="module")
def ddp_vs_reference(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ddp_moco")
    state = {k: v.clone() for k, v in build_moco().state_dict().items()}
    pairs = [view_pair(B * WORLD, H["img_size"], offset=8 * s) for s in range(STEPS)]
    im_qs, im_ks = [p[0] for p in pairs], [p[1] for p in pairs]
    torch.save({"state": state, "im_q": im_qs, "im_k": im_ks, "hparams": H}, tmp / "spec.pt")
    spawn_ranks(str(tmp / "spec.pt"), str(tmp))
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    ref, ref_model = reference(state, im_qs, im_ks)
    return ranks, ref, ref_model, state


def test_ddp_moco_matches_the_single_process_simulation_per_step(ddp_vs_reference):
    ranks, ref, _, _ = ddp_vs_reference
    tol = dict(rtol=0, atol=1e-5)
    for step in range(STEPS):
        for r, out in enumerate(ranks):
            rec = out["records"][step]
            torch.testing.assert_close(rec["keys"], ref[step]["keys"], **tol, msg=f"step {step} rank {r}: keys")
            torch.testing.assert_close(rec["local_keys"], ref[step]["keys"][r * B:(r + 1) * B], **tol)
            torch.testing.assert_close(rec["queue"], ref[step]["queue"], **tol, msg=f"step {step} rank {r}: queue")
            assert int(rec["ptr"]) == ref[step]["ptr"] == (8 * (step + 1)) % H["K"]
            assert int(rec["filled"]) == min(H["K"], 8 * (step + 1))
            torch.testing.assert_close(rec["loss"], ref[step]["loss"], **tol, msg=f"step {step} rank {r}: loss")
            torch.testing.assert_close(rec["logits"], ref[step]["logits"][r * B:(r + 1) * B], rtol=0, atol=5e-5)


def test_ddp_moco_encoders_match_after_three_steps(ddp_vs_reference):
    ranks, _, ref_model, initial = ddp_vs_reference
    ref = ref_model.state_dict()
    for r, out in enumerate(ranks):
        for name, value in out["state"].items():
            if "running_" in name or "num_batches" in name:
                continue  # BN running statistics are per rank (broadcast_buffers=False), as in the official code
            if name in ("queue", "queue_ptr", "queue_filled"):
                continue  # checked per step
            # float noise of another summation order grows with how far training moved the tensor: the stem
            # moves by 1-5 in these 3 steps, and on an AVX-512 host the ranks then differ from the reference by
            # up to 2e-5 (1.3e-5 of the move); a real fault (an unaveraged gradient) is of the move's own size
            moved = float((ref[name].float() - initial[name].float()).abs().max()) if name in initial else 0.0
            torch.testing.assert_close(value, ref[name], rtol=0, atol=5e-5 * max(1.0, moved), msg=f"rank {r}: {name}")
    # training really moved both encoders
    for prefix in ("encoder_q.", "encoder_k."):
        name = next(n for n in ref if n.startswith(prefix) and n.endswith("conv1.weight"))
        assert not torch.allclose(ref[name], initial[name])
    # the two ranks hold the same parameters
    a, b = ranks[0]["state"], ranks[1]["state"]
    for name in a:
        if "running_" not in name and "num_batches" not in name:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ (b) CLI under torchrun


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build_digits(tmp_path_factory.mktemp("data"))


COMMON = ["--model", "test_resnet", "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
          "--no-progress", "train.tensorboard=false", "train.threads=1"]


def test_torchrun_pretrain_smoke(root, tmp_path):
    """Also a mixed cluster: rank 0's CPU computes bf16 and rank 1's does not (FEWSHOT_CPU_BF16 per rank, 48 px).
    The ranks must agree on rank 0's arithmetic: gathering bf16 keys from one and fp32 from the other died in
    gloo ("Received data size doesn't match expected size")."""
    run = tmp_path / "pre"
    worker = Path(__file__).parent / "helpers" / "rank_env_worker.py"
    args = [a if a != "32" else "48" for a in COMMON]
    bars = [a for a in args if a != "--no-progress"]  # the bars' lines, left in the captured output
    proc = torchrun([str(worker), "FEWSHOT_CPU_BF16", "1,0", "pretrain", "--data", str(root), "--out", str(run),
                     "--queue-size", "64", *bars, "moco.split_bn_groups=3"], cwd=tmp_path)
    check(proc)
    assert "at 48px on cpu x2 (bfloat16 autocast)" in proc.stdout
    # split BN, which one process would refuse for 8 images in 3 groups, is not used under DDP: said once (rank 0)
    assert proc.stdout.count("note: moco.split_bn_groups=3 is not used on 2 processes") == 1, proc.stdout
    # the bar's loss is rank 0's, the log's the mean over the ranks: the bar says whose it is
    out = proc.stdout + proc.stderr
    assert re.search(r"rank 0 loss=\d", out) and not re.search(r"(?<!rank 0 )loss=\d", out), out[-3000:]
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["amp"] == "bf16"
    assert (proc.stdout + proc.stderr).count("done: ") == 1  # rank 0 says it, once
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # only rank 0 logs
    row = rows[0]
    assert row["epoch"] == 1 and row["step"] == 80 // 16  # 80 pool images, global batch 2 x 8
    for key in ("loss", "contrast_acc1", "contrast_acc5", "lr", "images_per_s", "knn_acc1"):
        assert key in row
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert int(ck["model"]["queue_ptr"]) == (5 * 16) % 64
    assert not any(k.startswith("module.") for k in ck["model"])
    # resumed in one process: the process count is the reason given, not the shuffle-BN groups that 8 images
    # per batch would leave one image each in a single process (advice that led nowhere)
    from helpers.checks import run_main

    rc, _, err = run_main("pretrain", "--data", root, "--out", run, "--queue-size", "64", *args, "--resume")
    assert rc == 2 and "written by a run on 2 process(es); resume it on 2" in err, err


def test_torchrun_train_smoke_with_an_uneven_last_batch(tmp_path):
    """39 train images, 6 per rank: the last global batch of 3 splits 2 + 1. A rank must not drop a
    batch the other rank keeps (that desynchronised the collectives: rank 0's non-finite check met
    rank 1's end-of-epoch all-reduce and the run died with a bogus "the loss became 2.27")."""
    root = build_digits(tmp_path / "data")
    first = sorted((root / "digits" / "train" / "0").iterdir())[0]
    first.unlink()
    run = tmp_path / "ft"
    args = [a if a != "8" else "6" for a in COMMON]
    proc = torchrun(["-m", "fewshot", "train", "--data", str(root), "--out", str(run), *args], cwd=tmp_path)
    check(proc)
    assert (proc.stdout + proc.stderr).count("done: ") == 1  # rank 0 says it, once
    assert "at 32px on cpu x2 (" in proc.stdout  # the start line names the processes, as pretrain's does
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # only rank 0 logs
    assert rows[0]["step"] == 39 // 12  # 3 full global batches; the 2 + 1 remainder is dropped on both ranks
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["datasets"]["digits"]["n"] == 30
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ck["model"])
    assert ck["world"] == 2
    # resuming on another number of processes changed the epoch plan silently (the lr jumped, batches halved)
    from helpers.checks import run_main

    rc, out, err = run_main("train", "--data", root, "--out", run, *args[:5], "2", *args[6:], "--resume")
    assert rc == 2 and "written by a run on 2 process(es); resume it on 2" in err, err


def test_shutdown_destroys_the_process_group_and_is_idempotent(tmp_path):
    """The CLI destroys the group after a command succeeds: left to interpreter teardown, gloo can abort a
    finished worker (SIGABRT), which torchrun counts as a failure and restarts the whole group for."""
    import torch.distributed as dist

    from fewshot.train.distributed import shutdown_distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    shutdown_distributed()
    assert not dist.is_initialized()
    shutdown_distributed()  # nothing left to destroy: no error


def test_torchrun_sigterm_on_one_rank_stops_every_rank_at_the_same_step(root, tmp_path):
    """Only rank 1 gets the signal (a node's scheduler, say): the ranks agree at the step's end, rank 0
    writes last.pt there, both exit with 128 + SIGTERM instead of rank 0 hanging in the next all-reduce."""
    import signal

    run = tmp_path / "ft"
    worker = Path(__file__).parent / "helpers" / "signal_worker.py"
    proc = torchrun([str(worker), "1", "2", "train", "--data", str(root), "--out", str(run), *COMMON[:5], "3",
                     *COMMON[6:]], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert out.count("stopped by SIGTERM after a whole step") == 1, out[-3000:]  # rank 0 says it; not a hang or a crash
    # torchrun's failure summary, one line per rank: each rank exits 143 itself, or, when the other rank's exit
    # came first, is ended by torchrun's own SIGTERM (-15) after both printed the stop (last.pt was written
    # before the ranks' common barrier). Never an abort at teardown (-6) or an internal error (1).
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", out)
    assert str(128 + signal.SIGTERM) in codes and set(codes) <= {str(128 + signal.SIGTERM), str(-signal.SIGTERM)}, \
        out[-3000:]
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["global_step"] == 2
    # every rank's running sums travel in the mid-epoch last.pt: the resumed epoch's log row is the uninterrupted
    # run's (it averaged rank 0's partial sums on both ranks: loss 1.7769 against 1.7778)
    assert len(ck["epoch_sums_by_rank"]) == 2 and ck["epoch_sums_by_rank"][0] != ck["epoch_sums_by_rank"][1]
    # the resume and the uninterrupted reference are not about the launch: 2 forked ranks each (no torchrun)
    args = ["train", "--data", str(root), *COMMON[:5], "3", *COMMON[6:], "train.deterministic=true"]
    for more in (["--out", str(run), "--resume"], ["--out", str(tmp_path / "whole")]):
        codes, said = cli_in_forked_ranks([*args, *more], tmp_path, WORLD, TIMEOUT)
        assert codes == [0] * WORLD, f"exit {codes}\n{said[-6000:]}"

    def rows(folder):
        return [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines()]

    resumed, whole = rows(run), rows(tmp_path / "whole")
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in whole]
    for a, b in zip(resumed, whole):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["train_acc1"] == pytest.approx(b["train_acc1"])


def test_torchrun_nan_loss_on_one_rank_gives_one_message_on_every_rank(root, tmp_path):
    """Rank 1's loss alone is NaN: both ranks stop (the check agrees across them), and rank 0 says so for both.
    Rank 0 printed its own finite loss as "the loss became 0.98", rank 1 left out the checkpoint's global step
    (only rank 0, which writes last.pt, knew it); the message now comes once (a user error under torchrun).
    The ranks are forks (helpers.forked_torchrun): what they say together is the subject, not the launch."""
    run = tmp_path / "ft"
    argv = ["train", "--data", str(root), "--out", str(run), *COMMON, "train.save_every_steps=1"]
    codes, out = forked_torchrun(HELPERS / "nan_worker.py", ["1", "3", *argv], tmp_path, timeout=TIMEOUT)
    assert all(code != 0 for code in codes), (codes, out[-3000:])
    said = re.findall(r"the loss became (.*?); training stopped.*?"
                      r"(The last good checkpoint is .*?\(global step \d+\))", out)
    assert len(said) == 1, out[-3000:]  # said by rank 0 for both (a user error, printed once under torchrun)
    assert said[0][0].startswith("nan on rank 1") and "(global step 2)" in said[0][1], said


def test_torchrun_budget_stops_every_rank_at_the_same_step(root, tmp_path):
    """train.budget_minutes under DDP: each rank used to read the deadline on its own clock, and rank 0 starts
    later (TensorBoard, the disk check), so rank 1 left the epoch a step early and its epoch-end all-reduce met
    rank 0's per-step one ("the loss became 1.27 ... non-finite", a peer's 'Connection closed'). The ranks now
    agree on the deadline (and on the time-based lr) with one all-reduce per step."""
    run = tmp_path / "ft"
    args = [a for a in COMMON if a != "train.tensorboard=false"]
    args[args.index("--epochs") + 1] = "1000"
    argv = ["train", "--data", str(root), "--out", str(run), *args, "train.budget_minutes=0.05",
            "sched.time_based=true", "train.tensorboard=true"]
    codes, out = forked_torchrun("fewshot", argv, tmp_path, timeout=TIMEOUT)  # forked ranks: the launch is no subject
    assert codes == [0] * WORLD, f"exit {codes}\n{out[-6000:]}"
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert 1 <= rows[-1]["epoch"] < 1000 and (run / "metrics.json").is_file()
    assert "is used up" not in out  # a time-based schedule ends with its budget: the planned end


def test_torchrun_refuses_ranks_that_see_different_data(root, tmp_path):
    """A node with another copy of --data (one train image fewer) trained on its own epoch plan without a word,
    or DDP died with "params ... appears not to match" reported as a bug; now every rank stops with one error."""
    other = copy_data_root(root, tmp_path / "other")
    sorted((other / "digits" / "train" / "0").iterdir())[0].unlink()
    argv = ["train", "--data", "DATA", "--out", str(tmp_path / "ft"), *COMMON]
    codes, out = forked_torchrun(HELPERS / "rank_arg_worker.py", ["DATA", f"{root},{other}", *argv], tmp_path,
                                 timeout=TIMEOUT)  # forked ranks: the refusal is the subject, not the launch
    assert all(code != 0 for code in codes), (codes, out[-3000:])
    assert out.count("the 2 processes see different data under --data") == 1, out[-3000:]
    assert "rank 1 reads digits 39 train" in out and "internal error" not in out, out[-3000:]


def test_torchrun_refuses_ranks_given_different_settings(root, tmp_path):
    """--epochs 2 on rank 0 and 3 on rank 1 hung in the first collective their plans disagreed on (until gloo's
    30-minute timeout); another optim.lr per rank trained each with its own while config.yaml said rank 0's."""
    argv = ["train", "--data", str(root), "--out", str(tmp_path / "ft"), *COMMON, "LR"]
    codes, out = forked_torchrun(HELPERS / "rank_arg_worker.py", ["LR", "optim.lr=0.004,optim.lr=0.0001", *argv],
                                 tmp_path, timeout=TIMEOUT)  # forked ranks: the refusal is the subject, not the launch
    assert all(code != 0 for code in codes), (codes, out[-3000:])
    assert out.count("the 2 processes were given different settings") == 1, out[-3000:]
    assert "optim.lr: 0.004 on rank 0, 0.0001 on rank 1" in out and "internal error" not in out, out[-3000:]
    assert not (tmp_path / "ft" / "checkpoints").exists()


def test_torchrun_refuses_ranks_whose_unlabeled_pools_differ(root, tmp_path):
    """The labelled files agreed, the pools did not (30 images fewer on one node): pretrain's ranks planned
    different epochs and hung in the first collective, without a word, until torchrun's timeout."""
    other = copy_data_root(root, tmp_path / "other")
    pool = sorted(p for p in (other / "unlabeled").rglob("*") if p.is_file())
    assert len(pool) > 30
    for p in pool[:30]:
        p.unlink()
    argv = ["pretrain", "--data", "DATA", "--out", str(tmp_path / "pre"), "--queue-size", "32", *COMMON]
    codes, out = forked_torchrun(HELPERS / "rank_arg_worker.py", ["DATA", f"{root},{other}", *argv], tmp_path,
                                 timeout=TIMEOUT)  # forked ranks: the refusal is the subject, not the launch
    assert all(code != 0 for code in codes), (codes, out[-3000:])
    assert out.count("the 2 processes hold different images") == 1, out[-3000:]
    counts = re.search(r"rank 0 [^;]*?(\d+) unlabeled; rank 1 [^(]*?(\d+) unlabeled", out)
    assert counts and int(counts[1]) - int(counts[2]) == 30, out[-3000:]


def test_torchrun_a_user_error_or_ctrl_c_is_said_once_whichever_rank_stops_first(tmp_path):
    """late_error: both ranks decode the unlabeled pool and rank 1 found the broken file first; it exited quietly
    and torchrun's SIGTERM ended rank 0 before its message (only ChildFailedError was shown). own_error: rank 1
    alone fails, and prints it once rank 0 has not spoken in time. interrupted: rank 0 said "interrupted" and
    rank 1, whose own SIGINT came after the closed connection, blamed "another process of this torchrun job".
    The three launches run side by side (each is mostly start-up)."""
    worker = str(Path(__file__).parent / "helpers" / "rank_exit_worker.py")
    cases = ("late_error", "own_error", "interrupted")
    procs = {case: subprocess.Popen(torchrun_cmd(WORLD, free_port(), worker, case), cwd=tmp_path, env=dist_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for case in cases}
    outs = {case: proc.communicate(timeout=TIMEOUT)[0] for case, proc in procs.items()}
    for case in ("late_error", "own_error"):
        out = outs[case]
        assert procs[case].returncode != 0 and out.count(f"error: a broken image in the pool ({case})") == 1, out
        assert "stopped because another process" not in out, out
    out = outs["interrupted"]
    assert out.count("fewshot pretrain: interrupted") == 1 and "another process" not in out, out
    assert set(re.findall(r"exitcode\s*:\s*(-?\d+)", out)) == {"130"}, out  # rank 1 too: 128 + SIGINT, not 1


def test_torchrun_says_a_usage_error_and_an_out_that_is_a_file_once(tmp_path):
    """argparse's usage error came once per process; an --out that is a file was found by rank 0 alone after the
    barrier, and rank 1 added "stopped because another process ended first" with gloo's text cut mid-word. The
    two launches run side by side (each is mostly start-up)."""
    root = build_digits(tmp_path / "data")
    (tmp_path / "afile").write_text("x")
    argvs = {"usage": ["train", "--data", str(root), "--out", str(tmp_path / "r"), "--lr", "abc"],
             "file": ["train", "--data", str(root), "--out", str(tmp_path / "afile"), *COMMON]}
    procs = {case: subprocess.Popen(torchrun_cmd(WORLD, free_port(), "-m", "fewshot", *argv), cwd=tmp_path,
                                    env=dist_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for case, argv in argvs.items()}
    outs = {case: proc.communicate(timeout=TIMEOUT)[0] for case, proc in procs.items()}
    out = outs["usage"]
    assert out.count("usage: fewshot train") == 1 and out.count("invalid float value: 'abc'") == 1, out
    out = outs["file"]
    assert out.count("the run folder") == 1 and "is a file; give --out a folder" in out, out
    assert "another process" not in out and "internal error" not in out, out  # (torchrun adds its own traceback)
    assert set(re.findall(r"exitcode\s*:\s*(-?\d+)", out)) <= {"2", "-15"}, out
    assert (tmp_path / "afile").read_text() == "x"
