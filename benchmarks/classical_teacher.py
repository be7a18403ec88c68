"""Would a classical teacher of another inductive bias clean the self-training pseudo-labels? (fGO, 2026-12-07)

The CNN teacher (a run's best checkpoint, loaded as `fewshot predict` loads it) mislabels shirts, pullovers and
coats on Fashion-MNIST. This builds a teacher that shares none of its bias from the labelled images and the unlabeled
pool: Coates-Ng k-means patch features (seeded random patches, per-patch normalisation, ZCA, triangle encoding,
sum-pooled over 2x2 quadrants) and HOG, then a logistic regression whose C is chosen on val. It prints and writes,
per dataset: val accuracy of each teacher alone and per class, the val errors they share, the time the classical
teacher takes to build (features of train + val + pool, the C sweep, the pool's prediction), and for each CNN run
how many of the pool labels kept at the product's quota are right (class_quota and select_pseudo_labels, as
`fewshot run` keeps them) for the CNN alone, the classical teacher alone, the mean of their probabilities, and the
mean's labels where both agree.

    OMP_NUM_THREADS=1 python benchmarks/classical_teacher.py RUN [RUN ...] [--data demo_data] \
        [--datasets fashion-mnist] [--seed 0 --shots 10 ...] [--out benchmarks/results/classical_teacher.json]

RUN: a `fewshot train` or `fewshot run` folder (or a checkpoint). The pool's true classes come from
pseudo_accuracy.pool_classes (a demo root only; used for scoring, never by a teacher). Needs scikit-learn (a
declared dependency). Runs on one thread: with two threads on a loaded 2-core machine, BLAS contention in the
C sweep made it 10x slower (120 s instead of 11 s).
"""

from __future__ import annotations

import os

if __name__ == "__main__":  # before numpy and torch load their thread pools (threadpoolctl, if present, also caps)
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402
from PIL import Image  # noqa: E402
from pseudo_accuracy import SIZES, pool_classes  # noqa: E402

CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # logistic regression's C, chosen on val
HARD = ("0_tshirt_top", "2_pullover", "4_coat", "6_shirt")  # Fashion-MNIST's classes the CNN confuses


def gray(paths) -> np.ndarray:
    """Images as float32 [N, H, W] in [0, 1] at their own size (the classical features need no resize)."""
    return np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255.0 for p in paths])


def _normalise(x: np.ndarray, eps: float = 0.01) -> np.ndarray:
    return (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + eps)


def kmeans_encoder(src: np.ndarray, r: int, k: int, n_patches: int, seed: int, grid: int = 2):
    """Coates & Ng (2011): k-means on whitened random r x r patches of ``src``; returns images -> features
    (triangle activations at stride 1, summed over a grid x grid split of the image)."""
    from sklearn.cluster import MiniBatchKMeans

    rng = np.random.default_rng(seed)
    h = src.shape[1]
    ii, yy, xx = (rng.integers(0, n, n_patches) for n in (len(src), h - r + 1, h - r + 1))
    patches = _normalise(np.stack([src[i, y:y + r, x:x + r].ravel() for i, y, x in zip(ii, yy, xx)]))
    mu = patches.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(patches - mu, rowvar=False))
    zca = (evecs @ np.diag(1 / np.sqrt(evals + 0.1)) @ evecs.T).astype(np.float32)
    km = MiniBatchKMeans(k, batch_size=4096, n_init=1, random_state=seed, max_iter=50).fit((patches - mu) @ zca)
    cen = km.cluster_centers_.astype(np.float32)
    c2 = (cen ** 2).sum(1)
    g = h - r + 1
    edges = np.linspace(0, g, grid + 1).astype(int)

    def encode(x: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(x), 64):
            q = sliding_window_view(x[s:s + 64], (r, r), axis=(1, 2)).reshape(-1, r * r)
            q = (_normalise(q) - mu) @ zca
            z = np.sqrt(np.maximum((q ** 2).sum(1, keepdims=True) - 2 * q @ cen.T + c2, 0))
            f = np.maximum(0, z.mean(1, keepdims=True) - z).reshape(-1, g, g, k)
            out.append(np.concatenate([f[:, edges[a]:edges[a + 1], edges[b]:edges[b + 1]].sum((1, 2))
                                       for a in range(grid) for b in range(grid)], 1))
        return np.concatenate(out)

    return encode


def hog(x: np.ndarray, cell: int, bins: int = 9) -> np.ndarray:
    """Dalal-Triggs HOG (unsigned gradients, 2x2-cell blocks, L2-Hys). In numpy: scikit-image is not a dependency
    and could not be installed where this was measured (no package index)."""
    gx, gy = np.zeros_like(x), np.zeros_like(x)
    gx[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    gy[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    mag = np.hypot(gx, gy)
    b = np.minimum((np.rad2deg(np.arctan2(gy, gx)) % 180 / (180 / bins)).astype(int), bins - 1)
    n, nc = len(x), x.shape[1] // cell
    cells = mag[:, :nc * cell, :nc * cell].reshape(n, nc, cell, nc, cell)
    which = b[:, :nc * cell, :nc * cell].reshape(n, nc, cell, nc, cell)
    hist = np.stack([(cells * (which == k)).sum((2, 4)) for k in range(bins)], -1).astype(np.float32)
    blocks = []
    for i in range(nc - 1):
        for j in range(nc - 1):
            v = hist[:, i:i + 2, j:j + 2].reshape(n, -1)
            v = np.minimum(v / np.sqrt((v ** 2).sum(1, keepdims=True) + 1e-6), 0.2)
            blocks.append(v / np.sqrt((v ** 2).sum(1, keepdims=True) + 1e-6))
    return np.concatenate(blocks, 1)


def classical_teacher(imgs: dict, y_train: np.ndarray, y_val: np.ndarray, k: int, n_patches: int = 100_000,
                      seed: int = 0) -> tuple[dict, dict]:
    """k-means + HOG features of ``imgs`` (train, val, pool), each block standardised on train + pool (no labels),
    then the logistic regression of the C best on val. Returns (probabilities of val and pool, how it was built).
    Patches of 6 px and 4 px HOG cells; 3 px and 2 px on images of 8 px or less (digits)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    small = imgs["train"].shape[1] <= 8
    encode = kmeans_encoder(np.concatenate([imgs["pool"], imgs["train"]]), 3 if small else 6, k, n_patches, seed)
    blocks = [{s: encode(x) for s, x in imgs.items()}, {s: hog(x, 2 if small else 4) for s, x in imgs.items()}]
    t_feat = time.perf_counter() - t0
    feats = {s: [] for s in imgs}
    for block in blocks:
        scaler = StandardScaler().fit(np.concatenate([block["train"], block["pool"]]))
        for s in imgs:
            feats[s].append(scaler.transform(block[s]))
    feats = {s: np.concatenate(f, 1) for s, f in feats.items()}
    best = None
    for c in CS:
        model = LogisticRegression(C=c, max_iter=2000).fit(feats["train"], y_train)
        acc = float((model.predict(feats["val"]) == y_val).mean())
        if best is None or acc > best[0]:  # the smallest C of the best
            best = (acc, c, model)
    probs = {s: best[2].predict_proba(feats[s]) for s in ("val", "pool")}
    return probs, {"k": k, "patches": n_patches, "seed": seed, "C": best[1], "dim": int(feats["train"].shape[1]),
                   "features_s": round(t_feat, 1), "build_s": round(time.perf_counter() - t0, 1)}


def cnn_teacher(run, info, pool_paths: list, root: Path) -> tuple[dict, str]:
    """The run's best checkpoint's probabilities (softmax within the dataset, EMA weights) on val and the pool,
    decoded as the run decoded its images. Returns (probabilities, the checkpoint's path)."""
    from fewshot.data.cache import load_images
    from fewshot.data.fit import fit_of
    from fewshot.data.sets import load_split
    from fewshot.eval.evaluate import compute_logits
    from fewshot.eval.predict import load_trained
    from fewshot.train.semi import teacher_probabilities

    device = torch.device("cpu")
    tm = load_trained(run, device)
    d, data = tm.space.index(info.name), tm.cfg["data"]
    crop, depth, fit = data.get("crop_pct", 1.0), data.get("bit_depth", "auto"), fit_of(tm.cfg, [info], root)
    val = load_split([info], "val", tm.space, tm.size, None, crop, bit_depth=depth, resize=fit).images
    pool = load_images(pool_paths, tm.size, None, crop_pct=crop, bit_depth=depth, resize=fit).images
    out = {}
    for split, images in (("val", val), ("pool", pool)):
        logits = compute_logits(tm.model, images, tm.normalize, device)
        probs = teacher_probabilities(logits, torch.full((len(logits),), d), tm.space)
        out[split] = probs[:, tm.space.offsets[d]:tm.space.offsets[d] + tm.space.sizes[d]].numpy()
    return out, str(tm.path)


def kept_labels(probs: np.ndarray, info, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pool images `fewshot run` would keep from a teacher with these probabilities (run.pseudo_keep,
    run.pseudo_max_per_shot, run.pseudo_threshold at their defaults). ``mask``: only these may be kept (the others
    get a uniform row, which the product's chance floor never keeps). Returns (pool indices, labels)."""
    from fewshot.config import DEFAULTS
    from fewshot.data.label_space import LabelSpace
    from fewshot.train.semi import class_quota, labelled_counts, select_pseudo_labels

    space = LabelSpace((info.name,), (tuple(info.classes),))
    logp = torch.from_numpy(np.log(np.clip(probs, 1e-12, 1))).float()
    if mask is not None:
        logp[torch.from_numpy(~mask)] = 0.0
    ids = torch.zeros(len(probs), dtype=torch.long)
    r = DEFAULTS["run"]
    quota = class_quota(ids, space, r["pseudo_keep"], labelled_counts([info], space), r["pseudo_max_per_shot"])
    idx, labels, _ = select_pseudo_labels(logp, ids, space, quota.per_class, r["pseudo_threshold"], quota.per_dataset)
    return idx.numpy(), labels.numpy()


def pct(x) -> float:
    return round(100.0 * float(np.mean(x)), 1)


def per_class(pred: np.ndarray, truth: np.ndarray, classes) -> dict:
    return {c: pct(pred[truth == i] == i) for i, c in enumerate(classes)}


def compare(cnn: dict, cls: dict, y_val: np.ndarray, truth: np.ndarray, info) -> dict:
    """Both teachers on val (alone, per class, shared errors) and their kept pool labels, right/kept per class."""
    classes = info.classes
    a, b = cnn["val"].argmax(1), cls["val"].argmax(1)
    wrong_a, wrong_b = a != y_val, b != y_val
    out = {"val": {"cnn": pct(~wrong_a), "classical": pct(~wrong_b),
                   "mean": pct((cnn["val"] + cls["val"]).argmax(1) == y_val)},
           "val_per_class": {"cnn": per_class(a, y_val, classes), "classical": per_class(b, y_val, classes)},
           "val_errors": {"cnn": int(wrong_a.sum()), "classical": int(wrong_b.sum()),
                          "both": int((wrong_a & wrong_b).sum()),
                          "both_same_class": int((wrong_a & wrong_b & (a == b)).sum())},
           "pseudo": {}}
    mean = (cnn["pool"] + cls["pool"]) / 2
    agree = cnn["pool"].argmax(1) == cls["pool"].argmax(1)
    for name, probs, mask in (("cnn", cnn["pool"], None), ("classical", cls["pool"], None), ("mean", mean, None),
                              ("agreement", mean, agree)):
        idx, labels = kept_labels(probs, info, mask)
        right = labels == truth[idx]
        out["pseudo"][name] = {"kept": len(idx), "right": int(right.sum()), "right_pct": pct(right) if len(idx) else 0,
                               "per_class": {c: f"{int(right[labels == i].sum())}/{int((labels == i).sum())}"
                                             for i, c in enumerate(classes)}}
    return out


def say(name: str, run: str, res: dict) -> None:
    v, e = res["val"], res["val_errors"]
    shown = [c for c in res["val_per_class"]["cnn"] if c in HARD] or list(res["val_per_class"]["cnn"])
    print(f"{name} {run}: val CNN {v['cnn']} classical {v['classical']} mean {v['mean']}; wrong CNN {e['cnn']}, "
          f"classical {e['classical']}, both {e['both']} ({e['both_same_class']} the same wrong class)")
    print("  val per class (CNN / classical): " + ", ".join(
        f"{c} {res['val_per_class']['cnn'][c]:.0f}/{res['val_per_class']['classical'][c]:.0f}" for c in shown))
    for teacher, p in res["pseudo"].items():
        print(f"  pool kept {teacher:10s} {p['right']:4d}/{p['kept']:4d} right ({p['right_pct']:5.1f} %)  "
              + " ".join(f"{c}:{p['per_class'][c]}" for c in shown))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="`fewshot train` / `fewshot run` folders (their best checkpoint)")
    ap.add_argument("--data", type=Path, default=Path("demo_data"), help="the demo root the runs were trained on")
    ap.add_argument("--datasets", default=None, help="comma-separated (default: those with a pool under the root)")
    ap.add_argument("--k", type=int, default=None, help="k-means centroids (default: 400; 800 on images <= 8 px)")
    ap.add_argument("--patches", type=int, default=100_000, help="random patches k-means is fit on")
    ap.add_argument("--km-seed", type=int, default=0, help="seed of the patch sampling and of k-means")
    ap.add_argument("--seed", type=int, default=0, help="the seed the demo data was built with (pool truth)")
    for size in SIZES:  # as pseudo_accuracy takes them: the plan that says the pool's classes depends on them
        flag = "--" + size.replace("_", "-")
        ap.add_argument(flag, type=int, help=f"the {flag} the demo data was built with (default: fewshot data's)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/classical_teacher.json"))
    args = ap.parse_args(argv)
    if not (args.data / "unlabeled").is_dir():
        ap.error(f"--data {args.data}: no unlabeled/ folder there; pass the demo root the runs were trained on")
    missing = [r for r in args.runs if not Path(r).exists()]
    if missing:
        ap.error(f"{', '.join(missing)}: no such run folder; pass `fewshot train` or `fewshot run` folders")
    if (args.k is not None and args.k < 2) or args.patches < 1:
        ap.error("--k must be at least 2 and --patches at least 1")

    from fewshot.data.image_files import is_image
    from fewshot.data.layout import scan_root

    torch.set_num_threads(1)
    names = args.datasets.split(",") if args.datasets else sorted(
        p.name for p in (args.data / "unlabeled").iterdir() if p.is_dir() and (args.data / p.name).is_dir())
    result = {"data": str(args.data), "runs": args.runs, "quota": "fewshot run's defaults", "datasets": {}}
    for info in scan_root(args.data, names):
        pool_paths = sorted((p for p in (args.data / "unlabeled" / info.name).iterdir() if is_image(p)),
                            key=lambda p: (len(p.stem), p.stem))
        truth_names = pool_classes(info.name, args.seed, args.data, {k: getattr(args, k) for k in SIZES})
        truth = np.array([info.classes.index(truth_names[p.name]) for p in pool_paths])
        y_train = np.array([c for _, c in info.train])
        y_val = np.array([c for _, c in info.val])
        imgs = {"train": gray(p for p, _ in info.train), "val": gray(p for p, _ in info.val), "pool": gray(pool_paths)}
        k = args.k or (800 if imgs["train"].shape[1] <= 8 else 400)
        cls, built = classical_teacher(imgs, y_train, y_val, k, args.patches, args.km_seed)
        print(f"{info.name}: classical teacher (k-means {k} + HOG, C {built['C']}) built in {built['build_s']} s "
              f"({built['features_s']} s features) on one thread")
        entry = result["datasets"][info.name] = {"classical": built, "pool": len(pool_paths), "runs": {}}
        for run in args.runs:
            cnn, ckpt = cnn_teacher(run, info, pool_paths, args.data)
            res = entry["runs"][run] = {"checkpoint": ckpt, **compare(cnn, cls, y_val, truth, info)}
            say(info.name, run, res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the environment variables above are the cap then
        threadpool_limits = None
    with threadpool_limits(1) if threadpool_limits else contextlib.nullcontext():
        main()
