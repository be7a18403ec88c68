"""Self-training's warning for a pool that holds images of classes its dataset does not have (bug hunt hBH, finding
1): a closed-set softmax gives those a confident pseudo-label of the dataset's own classes (39 of 60 kept images
wrong on a 2-class dataset), and the run said only "binary 60/120 (mean confidence 0.95)". The check compares the
pool images' confidences with the val images' (pool_classes_check); it changes no selection."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from fewshot import run_pseudo
from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import DatasetInfo
from fewshot.eval import evaluate
from fewshot.train import semi

SPACE = LabelSpace(("two", "other"), (("t0", "t1"), ("o0", "o1")))


def spread(lo: float, hi: float, n: int) -> torch.Tensor:
    return torch.linspace(lo, hi, n)


def test_the_check_flags_kept_labels_less_sure_than_val():
    """The hunt's shape: val at 0.9-1.0; most pool images at 0.80-0.90 (out-of-class, still confident)."""
    val = spread(0.9, 1.0, 20)
    pool = torch.cat([spread(0.80, 0.90, 36), spread(0.95, 1.0, 24)])
    check = semi.pool_classes_check(pool, val, 60)
    assert check["suspect"]
    assert check["pool_share_below"] >= 0.6 and check["val_share_below"] <= 0.3
    assert check["pool"] == 60 and check["val"] == 20 and check["kept"] == 60


def test_the_check_passes_kept_labels_as_sure_as_val():
    """An in-class pool: its images are as sure as val's, or surer."""
    val = spread(0.5, 1.0, 40)
    for pool in (spread(0.5, 1.0, 30), spread(0.7, 1.0, 30), spread(0.55, 0.99, 24)):
        check = semi.pool_classes_check(pool, val, len(pool))
        assert check is not None and not check["suspect"], check


def test_the_check_counts_every_val_image_and_needs_enough_of_them():
    """Every val image sets the level, right or wrong (hunt hBQ #4: the right ones alone are the surer ones, and a
    weak model's in-class pool read as foreign); too few val images, pool images or kept labels: no verdict."""
    val = torch.cat([spread(0.9, 1.0, 20), spread(0.3, 0.4, 20)])
    pool = torch.cat([spread(0.80, 0.90, 36), spread(0.95, 1.0, 24)])
    assert not semi.pool_classes_check(pool, val, 60)["suspect"]  # as sure as val's images, wrong ones included
    assert semi.pool_classes_check(pool, val[20:], 60)["suspect"] is False
    assert semi.pool_classes_check(pool, val[:20], 60)["suspect"]
    assert semi.pool_classes_check(pool, val[:9], 60) is None
    assert semi.pool_classes_check(pool[:19], val, 60) is None
    assert semi.pool_classes_check(pool, val, 19) is None


def test_the_check_fires_at_the_margin_itself():
    """90 of 200 pool images below the level against 60 of 200 val images: 0.15 more, the margin (float32 read
    0.1499); at 20 images each the same shares are within sampling noise (2 standard errors: 0.29)."""
    val = spread(0.9, 1.0, 200)  # 60 of them below their 0.3 quantile
    pool = torch.cat([torch.full((90,), 0.91), torch.full((110,), 0.99)])
    check = semi.pool_classes_check(pool, val, 40)
    assert (check["pool_share_below"], check["val_share_below"], check["margin"]) == (0.45, 0.3, 0.15)
    assert check["suspect"]
    fewer = semi.pool_classes_check(torch.cat([pool[2:], pool[-2:]]), val, 40)
    assert not fewer["suspect"]  # 88 of 200: 0.14 more
    small = semi.pool_classes_check(torch.cat([torch.full((9,), 0.91), torch.full((11,), 0.99)]), spread(0.9, 1.0, 20),
                                    20)
    assert (small["pool_share_below"], small["val_share_below"]) == (0.45, 0.3) and not small["suspect"]
    assert small["margin"] > 0.28


def rows(d: int, probs) -> torch.Tensor:
    """Logits whose softmax over dataset ``d``'s two classes gives (p, 1 - p) for each p (other columns masked)."""
    out = torch.full((len(probs), SPACE.num_classes), -9.0)
    p = torch.tensor(probs)
    lo = SPACE.offsets[d]
    out[:, lo] = p.log()
    out[:, lo + 1] = (1 - p).log()
    return out


class Rows(list):
    def select(self, idx):
        return Rows(self[i] for i in torch.as_tensor(idx).tolist())


def label_pool(monkeypatch, tmp_path: Path, pool_probs: list[float], precision: float = 0.0) -> dict:
    """pseudo_label_pool on a pool of dataset "two" whose images say t0 at ``pool_probs`` (t1 below 0.5); val: 20
    right t0 images at 0.96-1.0; each class has 5 shots, the whole pool may be kept."""
    pool = rows(0, pool_probs)
    ids = torch.zeros(len(pool), dtype=torch.long)
    paths = [str(tmp_path / "unlabeled" / f"{i}.png") for i in range(len(pool))]
    monkeypatch.setattr(semi, "load_pool", lambda *a, **k: (Rows(range(len(pool))), ids, paths, "ROOT", []))
    monkeypatch.setattr(evaluate, "compute_logits", lambda *a, **k: pool.clone())
    val_p = spread(0.96, 0.9999, 20).tolist()
    val = SimpleNamespace(dataset_ids=torch.zeros(20, dtype=torch.long), targets=torch.zeros(20, dtype=torch.long))
    infos = [DatasetInfo(name=n, root=tmp_path / n, classes=SPACE.classes[d],
                         train=tuple((tmp_path / f"{c}{i}.png", k) for k, c in enumerate(SPACE.classes[d])
                                     for i in range(5)))
             for d, n in enumerate(SPACE.names)]
    task = SimpleNamespace(model=torch.nn.Linear(1, 1), normalize=None, device=torch.device("cpu"),
                           channels_last=False, size=32, space=SPACE, val_set=val,
                           val_logits=lambda m: rows(0, val_p))
    settings = {"pseudo_keep": 1.0, "pseudo_max_per_shot": 100.0, "pseudo_threshold": 0.0,
                "pseudo_precision": precision,
                "pseudo_targets": "hard"}
    return run_pseudo.pseudo_label_pool(task, {"data": {"root": str(tmp_path)}}, infos, settings,
                                        tmp_path / "pseudo.json")


def test_the_run_warns_of_a_pool_of_other_classes_and_records_it(monkeypatch, tmp_path, capsys):
    sure = spread(0.8, 0.9, 12).tolist() + [0.98] * 3  # per class; a p below 0.5 says t1 at 1 - p
    out = label_pool(monkeypatch, tmp_path, sure + [1 - p for p in sure])
    said = capsys.readouterr().out
    assert len(out["targets"]) == 30  # the selection is unchanged: every image is kept
    warning = [line for line in said.splitlines() if "[run] warning: two:" in line]
    assert len(warning) == 1, said
    assert "classes two does not have" in warning[0] and "run.semi_method=off" in warning[0]
    assert "or images unlike its labelled ones" in warning[0]  # a shift of source or colour reads the same
    assert "run.pseudo_precision" in warning[0] and "Keep only two's own classes" in warning[0]
    per = out["summary"]["datasets"]
    assert per["two"]["pool_classes_check"]["suspect"] is True
    assert per["other"]["pool_classes_check"] is None  # no val images, no pool: not measured
    recorded = json.loads((tmp_path / "pseudo.json").read_text())
    assert recorded["datasets"]["two"]["pool_classes_check"]["pool_share_below"] >= 0.6


def test_a_resume_that_reuses_the_round_says_its_warning_again(monkeypatch, tmp_path, capsys):
    """A resumed run reuses a finished round from its record (recorded_pseudo_labels): the session that labelled the
    pool said the warning, the resumed one's output said nothing of it (review rev69)."""
    sure = spread(0.8, 0.9, 12).tolist() + [0.98] * 3
    label_pool(monkeypatch, tmp_path, sure + [1 - p for p in sure])
    first = [line for line in capsys.readouterr().out.splitlines() if "[run] warning: two:" in line]
    reused = run_pseudo.recorded_pseudo_labels(tmp_path / "pseudo.json")
    again = [line for line in capsys.readouterr().out.splitlines() if "[run] warning" in line]
    assert reused is not None and reused["images"]
    assert again == first and len(first) == 1
    assert "set run.pseudo_precision" in again[0]  # the record's precision (0): the advice as the first time


def test_a_hand_edited_record_is_reused_without_a_crash_or_a_warning(tmp_path, capsys):
    record = tmp_path / "pseudo.json"
    record.write_text(json.dumps({"images": [], "precision": "x",
                                  "datasets": {"two": {"pool_classes_check": {"suspect": True}}, "one": 3}}))
    assert run_pseudo.recorded_pseudo_labels(record) is not None
    assert "[run] warning" not in capsys.readouterr().out


def test_the_run_says_nothing_of_a_pool_as_sure_as_val(monkeypatch, tmp_path, capsys):
    sure = spread(0.96, 0.9999, 15).tolist()
    out = label_pool(monkeypatch, tmp_path, sure + [1 - p for p in sure])
    said = capsys.readouterr().out
    assert "[run] warning" not in said, said
    assert out["summary"]["datasets"]["two"]["pool_classes_check"]["suspect"] is False


def test_the_warning_does_not_advise_a_calibration_already_on():
    """run.pseudo_precision on: the warning advised setting it (review rev69, finding 3)."""
    from fewshot.run_pseudo import pool_classes_warning

    check = {"pool_share_below": 0.6, "pool": 60, "kept": 40, "val_confidence": 0.9, "val_share_below": 0.3,
             "val": 20, "quantile": 0.3, "suspect": True}
    assert "run.pseudo_precision" in pool_classes_warning("d", check)
    assert "run.pseudo_precision" not in pool_classes_warning("d", check, calibrated=True)


def test_no_val_pass_where_no_dataset_kept_enough_to_check(monkeypatch, tmp_path):
    """The check's val pass ran whenever anything was kept, also where no dataset could be checked (review rev69,
    finding 4): 10 kept images, below POOL_CHECK_MIN_KEPT."""
    passes = []
    real = label_pool.__globals__["rows"]
    monkeypatch.setitem(label_pool.__globals__, "rows", lambda d, probs: passes.append(len(probs)) or real(d, probs))
    out = label_pool(monkeypatch, tmp_path, spread(0.8, 0.9, 5).tolist() + spread(0.1, 0.2, 5).tolist())
    assert len(out["targets"]) == 10
    assert passes == [10], passes  # the pool's rows only: val_logits was never called
    assert out["summary"]["datasets"]["two"]["pool_classes_check"] is None


def test_a_calibrated_run_is_not_advised_its_own_calibration(monkeypatch, tmp_path, capsys):
    """pseudo_label_pool passes run.pseudo_precision's state to the warning (review rev70, finding 4)."""
    sure = spread(0.8, 0.9, 12).tolist() + [0.98] * 3
    # per-class thresholds that keep every image (val holds no t1 image, whose threshold would keep none)
    monkeypatch.setattr(semi, "calibrated_thresholds", lambda *a, **k: torch.zeros(SPACE.num_classes))
    label_pool(monkeypatch, tmp_path, sure + [1 - p for p in sure], precision=0.05)
    warning = [line for line in capsys.readouterr().out.splitlines() if "[run] warning: two:" in line]
    assert len(warning) == 1 and "run.pseudo_precision" not in warning[0], warning


def test_the_report_marks_a_dataset_whose_pool_check_warned():
    """The pool warning was printed once and shown nowhere after (review rev69, finding 6): the report's
    self-training table says it per dataset, from summary.json's pool_classes_check."""
    from fewshot.report import tables as T
    from fewshot.report.pipeline_runs import _pseudo_labels

    entry = {"pool_size": 120, "pool_labelled": 120, "datasets": {
        "binary": {"kept": 59, "pool": 120, "labelled": 120, "mean_confidence": 0.9,
                   "pool_classes_check": {"suspect": True, "kept": 59}},
        "mix20": {"kept": 39, "pool": 80, "labelled": 80, "pool_classes_check": {"suspect": False}},
        "tint": {"kept": 3, "pool": 9, "labelled": 9, "pool_classes_check": None}}}
    labels = _pseudo_labels(entry)
    rounds = [{"round": 1, "stage": "finetune_labelled", "pseudo_labels": None, "val_mean_acc1": 80.0},
              {"round": 2, "stage": "finetune", "pseudo_labels": labels, "val_mean_acc1": 81.0}]
    kept = T.self_training_table("run", rounds).rows[1][3]
    assert "binary 59 (of 120; mean confidence 0.90; the pool may hold other classes)" in kept, kept
    assert kept.count("other classes") == 1, kept
