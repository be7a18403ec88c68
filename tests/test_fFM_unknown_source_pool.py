"""Review rev92 of the pool check on unknown-source images. #1: with several datasets the note of the unchecked
ones counted the kept images of all datasets together, while the check's floor (POOL_CHECK_MIN_KEPT) is per
dataset: 15 kept in each of two datasets said it, though no dataset's check would have measured them. #4: with one
dataset the warning sent the user to its own pool folder; the flagged images may lie elsewhere (ROOT/unlabeled/misc/,
an --unlabeled folder), and the report's caption said "the dataset's own pool"."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from fewshot import run_pseudo
from fewshot.data.layout import DatasetInfo
from fewshot.eval import evaluate
from fewshot.report.tables import self_training_table
from fewshot.train import semi
from fewshot.train.semi import POOL_CHECK_MIN_KEPT
from test_fdw_pool_classes import Rows, spread
from test_fFH_pool_check_unknown_source import FOREIGN, ONE, SEVERAL



def _rows(space, probs, dataset: int = 0) -> torch.Tensor:
    """Logits that route to ``dataset`` and give its first class p and its second about 1 - p, for each p."""
    out = torch.full((len(probs), space.num_classes), -30.0)
    p, first = torch.tensor(probs), space.offsets[dataset]
    out[:, first], out[:, first + 1] = p.log(), (1 - p).log()
    return out


def _label(monkeypatch, tmp_path: Path, space, pool: torch.Tensor, names: list[str], unlabeled=None) -> dict:
    """pseudo_label_pool on unknown-source images at ``names`` (relative to ROOT) whose logits are ``pool``; val: 20
    images of every dataset at 0.96-1.0; the whole pool may be kept."""
    ids = torch.full((len(pool),), -1, dtype=torch.long)
    paths = [str(tmp_path / n) for n in names]
    monkeypatch.setattr(semi, "load_pool", lambda *a, **k: (Rows(range(len(pool))), ids, paths, "ROOT", []))
    monkeypatch.setattr(evaluate, "compute_logits", lambda *a, **k: pool.clone())
    n_val = 20 * len(space.names)
    val = SimpleNamespace(dataset_ids=torch.arange(n_val) // 20, targets=torch.zeros(n_val, dtype=torch.long))
    infos = [DatasetInfo(name=n, root=tmp_path / n, classes=space.classes[d],
                         train=tuple((tmp_path / f"{c}{i}.png", k) for k, c in enumerate(space.classes[d])
                                     for i in range(5)))
             for d, n in enumerate(space.names)]
    sure = spread(0.96, 0.9999, 20).tolist()
    task = SimpleNamespace(model=torch.nn.Linear(1, 1), normalize=None, device=torch.device("cpu"),
                           channels_last=False, size=32, space=space, val_set=val,
                           val_logits=lambda m: torch.cat([_rows(space, sure, d) for d in range(len(space.names))]))
    settings = {"pseudo_keep": 1.0, "pseudo_max_per_shot": 100.0, "pseudo_threshold": 0.0, "pseudo_precision": 0.0,
                "pseudo_targets": "hard"}
    cfg = {"data": {"root": str(tmp_path), "unlabeled": unlabeled}}
    return run_pseudo.pseudo_label_pool(task, cfg, infos, settings, tmp_path / "pseudo.json")


def _several(monkeypatch, tmp_path, per_dataset: int) -> dict:
    """Unknown-source images routed half to each of two datasets, each keeping ``per_dataset`` of them."""
    half = per_dataset // 2
    probs = FOREIGN[:per_dataset - half] + [1 - p for p in FOREIGN[:half]]  # both classes of the dataset
    pool = torch.cat([_rows(SEVERAL, probs, 0), _rows(SEVERAL, probs, 1)])
    names = [f"unlabeled/misc/{i}.png" for i in range(len(pool))]
    return _label(monkeypatch, tmp_path, SEVERAL, pool, names)


def test_several_datasets_each_below_the_floor_give_no_note(monkeypatch, tmp_path, capsys):
    """15 kept by each dataset: 30 in all, but no dataset's check would run on 15, so the note is not said."""
    out = _several(monkeypatch, tmp_path, 15)
    said = capsys.readouterr().out
    kept = [v["kept_from_unknown_source"] for v in out["summary"]["datasets"].values()]
    assert kept == [15, 15] and sum(kept) >= POOL_CHECK_MIN_KEPT, kept
    assert "unknown_source_unchecked" not in out["summary"]
    assert "not checked for other classes" not in said, said


def test_several_datasets_one_at_the_floor_gives_the_note(monkeypatch, tmp_path, capsys):
    out = _several(monkeypatch, tmp_path, POOL_CHECK_MIN_KEPT)
    said = capsys.readouterr().out
    assert out["summary"]["unknown_source_unchecked"] == 2 * POOL_CHECK_MIN_KEPT
    assert "not checked for other classes" in said, said


def _warning(text: str) -> str:
    lines = [line for line in text.splitlines() if "[run] warning: two:" in line]
    assert len(lines) == 1, text
    return lines[0]


def test_one_dataset_warning_names_where_its_unknown_source_images_lie(monkeypatch, tmp_path, capsys):
    """20 foreign images in ROOT/unlabeled/misc/ and 10 loose in ROOT/unlabeled/: the warning names both places,
    not only ROOT/unlabeled/two/, and says it again from the round's record."""
    names = [f"unlabeled/misc/{i}.png" for i in range(20)] + [f"unlabeled/{i}.png" for i in range(10)]
    out = _label(monkeypatch, tmp_path, ONE, _rows(ONE, FOREIGN + [1 - p for p in FOREIGN]), names)
    line = _warning(capsys.readouterr().out)
    places = "ROOT/unlabeled/misc/, ROOT/unlabeled/ (files outside its folders)"
    assert out["summary"]["unknown_source_in"] == places
    assert f"of its 30 pool images (30 of them of unknown source, from {places})" in line, line
    assert f"Keep only two's own classes in its pool ({places} included)" in line, line
    assert run_pseudo.recorded_pseudo_labels(tmp_path / "pseudo.json") is not None
    assert _warning(capsys.readouterr().out) == line


def test_one_dataset_warning_names_the_unlabeled_folders(monkeypatch, tmp_path, capsys):
    names = [f"extra/{i}.png" for i in range(30)]
    _label(monkeypatch, tmp_path, ONE, _rows(ONE, FOREIGN + [1 - p for p in FOREIGN]), names, unlabeled=["/data/x"])
    line = _warning(capsys.readouterr().out)
    assert "(30 of them of unknown source, from the --unlabeled folder /data/x)" in line, line


def test_the_report_caption_counts_unknown_source_images_with_one_dataset():
    caption = self_training_table("run", []).caption
    assert "the dataset's own pool (with one dataset, those of unknown source too)" in caption
