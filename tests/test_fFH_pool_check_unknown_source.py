"""The out-of-class pool check on pool images of unknown source (hunt hBU, finding 2): a digits root whose pool
(ROOT/unlabeled/misc/) was 97 % Fashion-MNIST kept 564 foreign pseudo-labels with no warning, while the same files
under unlabeled/digits/ warned: the check left out every unknown-source image. With one dataset their softmax runs
over its classes, val's scale, so they are checked; with several they are not, and a note says so."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from fewshot import run_pseudo
from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import DatasetInfo
from fewshot.eval import evaluate
from fewshot.train import semi
from test_fdw_pool_classes import Rows, spread

ONE = LabelSpace(("two",), (("t0", "t1"),))
SEVERAL = LabelSpace(("two", "other"), (("t0", "t1"), ("o0", "o1")))


def _rows(space, probs) -> torch.Tensor:
    """Logits whose softmax over all of ``space``'s classes gives t0 at p and t1 at about 1 - p for each p."""
    out = torch.full((len(probs), space.num_classes), -30.0)
    p = torch.tensor(probs)
    out[:, 0], out[:, 1] = p.log(), (1 - p).log()
    return out


def _label(monkeypatch, tmp_path: Path, space, pool_probs: list[float], source: int = -1) -> dict:
    """pseudo_label_pool on a pool of images whose source is ``source`` (-1: unknown, ROOT/unlabeled/misc/) saying
    t0 at ``pool_probs`` (t1 below 0.5); val: 20 of dataset "two" at 0.96-1.0; the whole pool may be kept."""
    pool = _rows(space, pool_probs)
    ids = torch.full((len(pool),), source, dtype=torch.long)
    paths = [str(tmp_path / "unlabeled" / "misc" / f"{i}.png") for i in range(len(pool))]
    monkeypatch.setattr(semi, "load_pool", lambda *a, **k: (Rows(range(len(pool))), ids, paths, "ROOT", []))
    monkeypatch.setattr(evaluate, "compute_logits", lambda *a, **k: pool.clone())
    val = SimpleNamespace(dataset_ids=torch.zeros(20, dtype=torch.long), targets=torch.zeros(20, dtype=torch.long))
    infos = [DatasetInfo(name=n, root=tmp_path / n, classes=space.classes[d],
                         train=tuple((tmp_path / f"{c}{i}.png", k) for k, c in enumerate(space.classes[d])
                                     for i in range(5)))
             for d, n in enumerate(space.names)]
    task = SimpleNamespace(model=torch.nn.Linear(1, 1), normalize=None, device=torch.device("cpu"),
                           channels_last=False, size=32, space=space, val_set=val,
                           val_logits=lambda m: _rows(space, spread(0.96, 0.9999, 20).tolist()))
    settings = {"pseudo_keep": 1.0, "pseudo_max_per_shot": 100.0, "pseudo_threshold": 0.0, "pseudo_precision": 0.0,
                "pseudo_targets": "hard"}
    return run_pseudo.pseudo_label_pool(task, {"data": {"root": str(tmp_path)}}, infos, settings,
                                        tmp_path / "pseudo.json")


FOREIGN = spread(0.8, 0.9, 12).tolist() + [0.98] * 3  # most at the foot of val's confidences: other classes
IN_CLASS = spread(0.96, 0.9999, 15).tolist()  # as sure as val's images


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if "[run] warning: two:" in line]


def test_one_dataset_checks_its_unknown_source_pool(monkeypatch, tmp_path, capsys):
    out = _label(monkeypatch, tmp_path, ONE, FOREIGN + [1 - p for p in FOREIGN])
    said = capsys.readouterr().out
    check = out["summary"]["datasets"]["two"]["pool_classes_check"]
    assert len(out["targets"]) == 30 and out["summary"]["unknown_source_pool"] == 30  # the selection is unchanged
    assert check is not None and check["suspect"] is True and check["pool"] == 30 and check["kept"] == 30, check
    assert len(_warnings(said)) == 1 and "of its 30 pool images" in _warnings(said)[0], said
    assert "not checked" not in said


def test_one_dataset_unknown_source_in_class_pool_is_not_flagged(monkeypatch, tmp_path, capsys):
    """The same verdict as for the same images of known source: the false-alarm rate is the known-source one."""
    unknown = _label(monkeypatch, tmp_path, ONE, IN_CLASS + [1 - p for p in IN_CLASS])
    said = capsys.readouterr().out
    known = _label(monkeypatch, tmp_path, ONE, IN_CLASS + [1 - p for p in IN_CLASS], source=0)
    checks = [r["summary"]["datasets"]["two"]["pool_classes_check"] for r in (unknown, known)]
    assert "[run] warning" not in said and "not checked" not in said, said
    assert checks[0] is not None and checks[0] == checks[1]


def test_several_datasets_leave_unknown_source_images_unchecked_and_say_so(monkeypatch, tmp_path, capsys):
    """Routed to "two", where the class quota keeps half of them: 30 kept of 60, enough to be worth the note."""
    out = _label(monkeypatch, tmp_path, SEVERAL, (FOREIGN + [1 - p for p in FOREIGN]) * 2)
    said = capsys.readouterr().out
    assert out["summary"]["datasets"]["two"]["pool_classes_check"] is None
    assert out["summary"]["unknown_source_unchecked"] == 60 and len(out["targets"]) == 30
    note = [line for line in said.splitlines() if "not checked for other classes" in line]
    assert note == [run_pseudo.unchecked_note(60)], said
    assert note[0].startswith("[run] note: 60 pool images of unknown source were not checked for other classes")
    assert "ROOT/unlabeled/<dataset>/" in note[0] and not _warnings(said)
    assert run_pseudo.recorded_pseudo_labels(tmp_path / "pseudo.json") is not None  # a reused round says it again
    assert capsys.readouterr().out.splitlines() == note
