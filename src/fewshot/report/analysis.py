"""The parts of a report that look at images: val predictions, confusion matrices, embedding maps,
image grids. They need the dataset root the run was trained on (`--data`, else config data.root).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fewshot.errors import UserError, one_line, path_argument


@dataclass
class ValAnalysis:
    """A fine-tuned run's predictions and features on the val split (known-source predictions)."""

    space: object                 # LabelSpace
    images: torch.Tensor          # uint8 [N, 3, S, S]
    targets: np.ndarray           # global class
    dataset_ids: np.ndarray
    logits: torch.Tensor          # [N, C] float32
    features: np.ndarray          # [N, D]
    pred_local: np.ndarray        # known-source prediction, class index within the dataset
    model: torch.nn.Module
    size: int
    n_parameters: int
    root: Path
    epoch: int | None = None      # the logged epoch of the checkpoint predicted with
    left_out: tuple[str, ...] = ()  # the model's datasets the root lacks (no val images of theirs here)
    checkpoint: Path | None = None  # the file predicted with: best.pt, or last.pt where there is none

    @property
    def true_local(self) -> np.ndarray:
        offsets = np.asarray(self.space.offsets)
        return self.targets - offsets[self.dataset_ids]

    @property
    def correct(self) -> np.ndarray:
        return self.pred_local == self.true_local


def resolve_data_root(run, data: str | Path | None) -> tuple[Path | None, str]:
    """(root, why): --data if given, else the run's config data.root when that folder exists."""
    if data is not None:
        p = Path(data)
        if not p.is_dir():
            raise UserError(f"--data '{data}' is not a folder.")
        return p, f"--data {data}"
    recorded = run.data_root
    if not recorded:
        return None, "the run's config.yaml records no data.root and no --data was given"
    p = Path(recorded)
    candidates = [p] if p.is_absolute() else [p, run.path / p, run.path.parent / p, run.path.parent.parent / p]
    for c in candidates:
        if c.is_dir():
            return c, f"data.root '{recorded}' recorded in the run's config.yaml"
    return None, f"the data root recorded in config.yaml ({recorded}) does not exist here; pass --data ROOT"


@torch.no_grad()
def _features_and_logits(model, images, normalize, device, batch_size: int = 128):
    """One pass: pooled features [N, D] (token-averaged) and logits [N, C]."""
    from fewshot.progress import track

    model.eval()
    feats, logits = [], []
    starts = range(0, len(images), batch_size)
    for s in track(starts, desc="report: val predictions", total=len(starts)):
        x = normalize(images[s:s + batch_size].to(device))
        if hasattr(model, "features") and hasattr(model, "classify"):
            f = model.features(x)
            logits.append(model.classify(f).float().cpu())
            feats.append(f.mean(1).float().cpu())
        else:  # any other classifier: logits only, features from its backbone
            from fewshot.eval.features import backbone_features

            logits.append(model(x).float().cpu())
            feats.append(backbone_features(model.backbone, images[s:s + batch_size], normalize, device))
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, 0)
    return torch.cat(feats), torch.cat(logits)


def analyse_run(run, root: Path, device: torch.device, skip_bad: bool = False) -> ValAnalysis:
    """The val predictions the image-based parts draw. ``skip_bad`` (report's --skip-bad-images): undecodable val
    images are left out, as eval leaves them out of its val score (the hint of the decode error names the flag)."""
    from fewshot.eval.predict import _data_for, load_trained

    tm = load_trained(run.checkpoint or run.path, device)  # the checkpoint named as RUN, else best.pt (last.pt)
    left_out: tuple[str, ...] = ()
    try:
        _, data = _data_for(tm, Path(root), "val", skip_bad=skip_bad)
    except UserError:
        wrong = _dataset_folder_given(Path(root))
        if wrong is not None:
            raise wrong from None
        # A root holding only some of the model's datasets: predict's error says "pass --datasets", an option
        # report lacks. The image parts cover the datasets that are here instead, and the page says which are not.
        here = _datasets_here(Path(root), tm.space.names)
        if not here or len(here) == len(tm.space.names):
            raise
        left_out = tuple(d for d in tm.space.names if d not in here)
        _, data = _data_for(tm, Path(root), "val", datasets=here, skip_bad=skip_bad)
    if len(data) == 0:
        raise UserError(f"no val images under {root} for the datasets of {run.label}.")
    feats, logits = _features_and_logits(tm.model, data.images, tm.normalize, device)
    _, pred_local = tm.space.predict(logits, "known", data.dataset_ids)
    return ValAnalysis(space=tm.space, images=data.images, targets=data.targets.numpy(),
                       dataset_ids=data.dataset_ids.numpy(), logits=logits, features=feats.numpy(),
                       pred_local=pred_local.numpy(), model=tm.model, size=tm.size, n_parameters=tm.n_parameters,
                       root=Path(root), epoch=tm.epoch, left_out=left_out, checkpoint=Path(tm.path))


def _dataset_folder_given(root: Path) -> UserError | None:
    """`report RUN --data ROOT/digits` (a dataset folder): decided by layout's own test (dataset_folders), so that
    report refuses what training refuses (a copy of its test with looser rules took a root of one empty val/ for a
    dataset folder). Its words are training's (`--datasets`, an option report lacks; train/, where report reads
    val/): said again for the report, whose advice is the parent alone. None where the root is no dataset folder
    (its other errors stand)."""
    from fewshot.data.roots import dataset_folders

    try:
        dataset_folders(root)
        return None
    except OSError:
        return None
    except UserError:
        pass
    absolute = Path(os.path.abspath(root))
    parent = absolute.parent if root.is_absolute() else Path(os.path.relpath(absolute.parent))
    names = [f"{f.name}/" for f in _split_folders(root)]
    held = (", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else
            f"the split folder {names[0]}" if names else "split folders")
    return UserError(one_line(f"--data {path_argument(root)} looks like a dataset folder itself (it holds {held}), "
                              f"but --data is the root above the datasets (ROOT/<dataset>/val/<class>/<image> for "
                              f"the report). Pass its parent instead: "
                              f"--data {path_argument(parent)} (the report reads the run's datasets there)."))


def _split_folders(root: Path) -> list[Path]:
    """The folders layout's refusal counts as splits (its rule, by name): a run or dataset named like a split beside
    them (`--out ROOT/digits/val`) was named among "the split folders" too. None where ROOT can no longer be
    read."""
    from fewshot.data.roots import split_folders

    try:
        return split_folders(root)
    except OSError:
        return []


def _datasets_here(root: Path, names) -> list[str]:
    """The model's datasets that ``root`` holds (as predict's _data_for finds them), in the model's order."""
    from fewshot.data.roots import list_datasets

    try:
        listed = set(list_datasets(root))
    except UserError:
        return []
    return [d for d in names if d in listed]


def recomputed_mean_acc1(a: ValAnalysis) -> float:
    from fewshot.eval.evaluate import score

    return score(a.logits, torch.as_tensor(a.targets), torch.as_tensor(a.dataset_ids), a.space, "known")["mean_acc1"]


def confusion(a: ValAnalysis, d: int) -> np.ndarray:
    """Known-source confusion counts of dataset d: rows true class, columns predicted class."""
    n = a.space.sizes[d]
    m = a.dataset_ids == d
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (a.true_local[m], a.pred_local[m]), 1)
    return cm


def top_confusions(cm: np.ndarray, classes: list[str], k: int = 10) -> list[tuple[str, str, int, float]]:
    """The k largest off-diagonal cells: (true class, predicted as, count, % of the true class)."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:k]
    out = []
    rows = cm.sum(axis=1)
    for idx in flat:
        i, j = np.unravel_index(idx, off.shape)
        if off[i, j] <= 0:
            break
        out.append((classes[i], classes[j], int(off[i, j]), 100.0 * off[i, j] / max(1, rows[i])))
    return out


def embed_2d(features: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str]:
    """(2-D map of L2-normalised features, the method drawn): "PCA", or "t-SNE" (initialised by PCA) when
    method == 'tsne'; under 3 images or 2 feature dimensions neither applies: "raw", the first two coordinates."""
    x = features.astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if len(x) < 3 or x.shape[1] < 2:
        out = np.zeros((len(x), 2))
        out[:, : min(2, x.shape[1])] = x[:, :2]
        return out, "raw"
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3.0)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), "t-SNE"
    # PCA by numpy's SVD, signed as sklearn's: importing sklearn for it took 1.5 s of `fewshot run`'s closing work
    x = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(2, len(s))
    sign = np.sign(vt[range(k), np.abs(vt[:k]).argmax(axis=1)])
    out = np.zeros((len(x), 2))
    out[:, :k] = u[:, :k] * s[:k] * sign
    return out, "PCA"


def grid_shares(sizes: list[int], n: int) -> list[int]:
    """Images per dataset for a grid of n (at least one each, so n = 1 shows one of each): even shares, and a share
    a dataset has too few images for goes to the others. A share rounded up per dataset and cut at the end left the
    last dataset none (4 of 3 datasets: 2/2/0), and a small one's unused share was lost (40 asked, 23 shown)."""
    shares = [0] * len(sizes)
    left = min(max(n, len(sizes)), sum(sizes))
    open_ = [d for d, size in enumerate(sizes) if size]
    while left > 0 and open_:
        each, extra = divmod(left, len(open_))
        for j, d in enumerate(open_):
            give = min(each + int(j < extra), sizes[d] - shares[d])
            shares[d] += give
            left -= give
        open_ = [d for d in open_ if shares[d] < sizes[d]]
    return shares


def sample_for_grid(a: ValAnalysis, n: int = 40, seed: int = 0) -> np.ndarray:
    """About n val indices (n, or every image where fewer), spread evenly over the datasets with val images here (a
    left-out one takes no share), in a fixed random order; at least one per such dataset (grid_shares)."""
    rng = np.random.default_rng(seed)
    present = [idx for d in range(len(a.space.names)) for idx in [np.flatnonzero(a.dataset_ids == d)] if len(idx)]
    picked = []
    for idx, share in zip(present, grid_shares([len(idx) for idx in present], n)):
        picked += sorted(rng.choice(idx, size=share, replace=False).tolist())
    return np.asarray(picked, dtype=np.int64)
