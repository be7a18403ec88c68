"""The pool check's reference (hunt hBQ, finding 4): it compared the kept pseudo-labels (right and wrong) with the
correctly classified val images only, the surer ones, and warned "its pool may hold images of classes digits28 does
not have" on a pool of only in-class images of a weak 1-minute model. It now compares the labelled pool with every
val image, right or wrong: both are images of the dataset's classes to a model however weak."""

from __future__ import annotations

from test_fdw_pool_classes import label_pool, rows, spread


def _weak_val(monkeypatch, probs: list[float], right: int) -> None:
    """Val of dataset "two": t0 images at ``probs`` (the model's confidence), the first ``right`` said t0 (right),
    the others t1 at the same confidence (wrong)."""
    said = [p if i < right else 1 - p for i, p in enumerate(probs)]
    val_rows = rows(0, said)
    monkeypatch.setitem(label_pool.__globals__, "rows", lambda d, p: val_rows if len(p) == 20 else rows(d, p))


def test_an_in_class_pool_of_a_weak_model_is_not_flagged(monkeypatch, tmp_path, capsys):
    """A weak model: its val images at 0.76-0.96, the surer half right; its in-class pool drawn alike. The kept
    labels read 50 % below the right val images' 0.3 quantile against 30 %: the old check warned."""
    val = spread(0.76, 0.96, 20).tolist()
    _weak_val(monkeypatch, val[::-1], right=10)  # the surer ten are right
    pool = spread(0.76, 0.96, 15).tolist()
    out = label_pool(monkeypatch, tmp_path, pool + [1 - p for p in pool])
    said = capsys.readouterr().out
    assert "[run] warning" not in said, said
    assert out["summary"]["datasets"]["two"]["pool_classes_check"]["suspect"] is False


def test_a_foreign_pool_of_the_same_model_is_still_flagged(monkeypatch, tmp_path, capsys):
    """The same weak model's val; a pool of which most images sit at the foot of val's confidences (other classes)."""
    val = spread(0.76, 0.96, 20).tolist()
    _weak_val(monkeypatch, val[::-1], right=10)
    pool = spread(0.76, 0.80, 12).tolist() + [0.95] * 3
    out = label_pool(monkeypatch, tmp_path, pool + [1 - p for p in pool])
    warning = [line for line in capsys.readouterr().out.splitlines() if "[run] warning: two:" in line]
    assert len(warning) == 1 and "of its 30 pool images" in warning[0] and "of its 20 val images" in warning[0]
    assert "(30 were kept)" in warning[0], warning[0]
    check = out["summary"]["datasets"]["two"]["pool_classes_check"]
    assert check["suspect"] is True and check["pool"] == 30 and check["val"] == 20 and check["kept"] == 30
