"""Does fine-tuning's random grayscale (data.gray_p) buy colour invariance, and what does it cost?

`fewshot run --budget-minutes B` per data.gray_p value over seeds, the variants alternating run by run (the
machine is shared: load hits them alike; `uptime` is recorded before and after each run), on three roots:

  tint   fashion-mnist, 10 classes, 64x64 RGB, a random foreground/background tint per image (colour is a
         nuisance; hunt hAY's fmrgb, same builder and seed): invariance should help
  hue    the same images, but each class gets its own hue (+ small noise): colour IS the signal, the
         counter-check: invariance must not cost much here
  demo   demo_data (grey images): nothing to gain or lose beyond noise

Test accuracy is scored from pred_all.json against the answer keys (<dataset>/test_labels.json, as `fewshot eval`
reads them). Runs already finished (pred_all.json present) are scored, not rerun: the script can be resumed.

    python benchmarks/color_aug.py --work /tmp/color_aug --grays 0 0.2 0.5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import colorsys
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An MNIST-format idx file (images [N,H,W] or labels [N]) as uint8."""
    with gzip.open(path) as f:
        data = f.read()
    if data[2:4] == b"\x08\x03":
        n, h, w = np.frombuffer(data[4:16], ">i4")
        return np.frombuffer(data[16:], np.uint8).reshape(n, h, w)
    return np.frombuffer(data[8:], np.uint8)


def load_fashion() -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([read_idx(FASHION / f"{s}-images-idx3-ubyte.gz") for s in ("train", "t10k")])
    y = np.concatenate([read_idx(FASHION / f"{s}-labels-idx1-ubyte.gz") for s in ("train", "t10k")])
    return x, y


def tint(a: np.ndarray, rng, fg=None) -> Image.Image:
    """28 px grey -> 64 px RGB: foreground colour ``fg`` (random when None), a random dark background."""
    col = rng.uniform(0.2, 1.0, 3) if fg is None else fg
    bg = rng.uniform(0, 0.3, 3)
    g = np.asarray(Image.fromarray(a).resize((64, 64), Image.BILINEAR)).astype(np.float32) / 255
    rgb = (bg[None, None] * (1 - g[..., None]) + col[None, None] * g[..., None]) * 255
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def random_tint(a, rng, label):
    return tint(a, rng)


def class_hue(a, rng, label):
    """Colour as the signal: class c's hue is c/10 (+ noise), saturation and value jittered a little."""
    h = (label / 10 + rng.normal(0, 0.015)) % 1.0
    fg = np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.6, 0.8), rng.uniform(0.75, 0.95)))
    return tint(a, rng, fg)


def build(root: Path, name: str, x, y, make, shots=10, val=5, test=20, pool=100, seed=0) -> Path:
    """hAY's layout: root/name/{train,val}/<class>/, root/name/test/ + test_labels.json, root/unlabeled/name/."""
    if (root / name / "test_labels.json").exists():
        return root
    rng = np.random.default_rng(seed)
    ds, key, items = root / name, {}, []
    for ci in range(10):
        ix = rng.permutation(np.where(y == ci)[0])
        parts = {"train": ix[:shots], "val": ix[shots:shots + val]}
        for split, sel in parts.items():
            (ds / split / str(ci)).mkdir(parents=True, exist_ok=True)
            for i in sel:
                make(x[i], rng, ci).save(ds / split / str(ci) / f"{i}.png")
        items += [(i, ci) for i in ix[shots + val:shots + val + test]]
        (root / "unlabeled" / name).mkdir(parents=True, exist_ok=True)
        for i in ix[shots + val + test:shots + val + test + pool]:
            make(x[i], rng, ci).save(root / "unlabeled" / name / f"{i}.png")
    (ds / "test").mkdir(parents=True, exist_ok=True)
    for k, j in enumerate(rng.permutation(len(items))):
        i, ci = items[j]
        make(x[i], rng, ci).save(ds / "test" / f"{k}.png")
        key[str(k)] = int(ci)
    (ds / "test_labels.json").write_text(json.dumps(key))
    return root


def score(run: Path, root: Path) -> float | None:
    """Test acc@1 (%) over all datasets' test images of pred_all.json against root/<ds>/test_labels.json."""
    path = run / "pred_all.json"
    if not path.exists():
        return None
    preds, right, total = json.loads(path.read_text()), 0, 0
    for ds, got in preds.items():
        keys = root / ds / "test_labels.json"
        if not isinstance(got, dict) or not keys.exists():
            continue
        for name, label in json.loads(keys.read_text()).items():
            right += int(str(got.get(name)) == str(label))
            total += 1
    return 100.0 * right / total if total else None


def stages(run: Path) -> dict:
    """What the budget bought: epochs per stage and self-training rounds skipped (load on a shared machine
    costs epochs, and a round that does not fit is skipped), from the run's summary.json."""
    path = run / "summary.json"
    if not path.exists():
        return {}
    summ = json.loads(path.read_text())
    return {"epochs": {k: v.get("epochs") for k, v in summ.get("stages", {}).items()},
            "rounds_skipped": summ.get("self_training_skipped", {}).get("rounds", [])}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run_one(root: Path, out: Path, seed: int, gray: float, minutes: float, cache: Path, before: dict) -> dict:
    """One `fewshot run` (skipped when its predictions exist: ``before`` holds its recorded row), with its wall
    time and the load around it."""
    row = dict(before.get(str(out), {}), seed=seed, gray_p=gray, out=str(out))
    if not (out / "pred_all.json").exists():
        cmd = [sys.executable, "-m", "fewshot", "run", "--data", str(root), "--out", str(out), "--seed", str(seed),
               "--budget-minutes", str(minutes), f"data.gray_p={gray}", f"data.cache_dir={cache}"]
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        if not env.get("OMP_NUM_THREADS"):
            env.pop("OMP_NUM_THREADS", None)  # an empty one makes libgomp complain
        row["uptime_start"], t0 = uptime(), time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        row["wall_s"], row["uptime_end"], row["rc"] = round(time.time() - t0, 1), uptime(), proc.returncode
        (out.parent / f"{out.name}.log").write_text(proc.stdout + proc.stderr)
    row["test_acc"] = score(out, root)
    row.update(stages(out))
    return row


def schedule(roots: dict, seeds, grays) -> list[tuple[str, int, float]]:
    """(root, seed, gray_p) in run order: seeds outermost, the variants' order rotated per seed and root so that
    no variant always runs first."""
    order, turn = [], 0
    for seed in seeds:
        for name, (_, n_seeds) in roots.items():
            if seed not in seeds[:n_seeds]:
                continue
            rot = [grays[(k + turn) % len(grays)] for k in range(len(grays))]
            order += [(name, seed, g) for g in rot]
            turn += 1
    return order


def load1(up: str | None) -> float | None:
    """The 1-minute load average of an `uptime` line."""
    return float(up.split("load average:")[1].split(",")[0]) if up and "load average:" in up else None


def summary(rows: list[dict]) -> dict:
    """root -> gray_p -> mean, std, n, runs' wall times."""
    table: dict = {}
    for r in rows:
        if r.get("test_acc") is None:
            continue
        table.setdefault(r["root"], {}).setdefault(str(r["gray_p"]), []).append(r)
    out = {}
    for root, by_gray in table.items():
        out[root] = {}
        for g, rs in by_gray.items():
            accs = [r["test_acc"] for r in rs]
            out[root][g] = {"mean": round(statistics.mean(accs), 2), "n": len(accs),
                            "std": round(statistics.stdev(accs), 2) if len(accs) > 1 else None,
                            "accs": accs, "wall_s": [r.get("wall_s") for r in rs],
                            "epochs": [round(sum(e or 0 for e in r.get("epochs", {}).values()), 1) for r in rs],
                            "load1_start_end": [[load1(r.get("uptime_start")), load1(r.get("uptime_end"))]
                                                for r in rs]}
    return out


def print_table(summ: dict) -> None:
    print(f"{'root':6} {'gray_p':>6} {'n':>2} {'mean':>6} {'std':>5}  runs: test acc@1 % (epochs, wall s, load)")
    for root, by_gray in summ.items():
        for g, s in sorted(by_gray.items(), key=lambda kv: float(kv[0])):
            std = "-" if s["std"] is None else f"{s['std']:.2f}"
            runs = [f"{a:.1f} ({e:g}, {w}, {ld[0]}->{ld[1]})"
                    for a, e, w, ld in zip(s["accs"], s["epochs"], s["wall_s"], s["load1_start_end"])]
            print(f"{root:6} {g:>6} {s['n']:>2} {s['mean']:6.2f} {std:>5}  {'; '.join(runs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/color_aug", help="roots, runs and cache go here")
    ap.add_argument("--grays", type=float, nargs="+", default=[0.0, 0.2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--demo-seeds", type=int, default=1, help="how many of --seeds demo_data gets")
    ap.add_argument("--budget-minutes", type=float, default=1.0)
    ap.add_argument("--demo", default=str(REPO / "demo_data"), help="the demo root (`fewshot data digits`)")
    ap.add_argument("--json", default=str(REPO / "benchmarks/results/color_aug.json"))
    a = ap.parse_args()
    work = Path(a.work)
    x, y = load_fashion()
    roots = {"tint": (build(work / "roots/tint", "fmrgb", x, y, random_tint), len(a.seeds)),
             "hue": (build(work / "roots/hue", "fmhue", x, y, class_hue), len(a.seeds)),
             "demo": (Path(a.demo), a.demo_seeds)}
    old = json.loads(Path(a.json).read_text()).get("runs", []) if Path(a.json).exists() else []
    before, rows = {r["out"]: r for r in old}, []
    for name, seed, gray in schedule(roots, a.seeds, a.grays):
        out = work / "runs" / f"{name}_g{gray:g}_s{seed}"
        row = dict(run_one(roots[name][0], out, seed, gray, a.budget_minutes, work / "cache", before),
                   root=name)
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(Path(a.json), a.budget_minutes, rows, before)
    print_table(write(Path(a.json), a.budget_minutes, rows, before))


def write(path: Path, minutes: float, rows: list[dict], before: dict) -> dict:
    """The json: this invocation's runs, then the recorded ones it did not schedule (other seeds or values)."""
    done = {r["out"] for r in rows}
    runs = rows + [dict(r, **stages(Path(out))) for out, r in before.items() if out not in done]
    summ = summary(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"budget_minutes": minutes, "cpu_count": os.cpu_count(), "runs": runs,
                                "summary": summ}, indent=1))
    return summ


if __name__ == "__main__":
    main()
