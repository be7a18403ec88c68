"""Three user-facing notes whose words misled (bug hunts): the pool share's time figures, eval's refusal of every
dataset for one dataset's answer key, and --balance on's "too few" note for a val split that lacks classes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import fewshot.data.cache
import fewshot.run_pseudo as run_pseudo
from fewshot.data.label_space import LabelSpace
from fewshot.errors import UserError
from fewshot.eval import answer_keys, balancing, predict


def test_the_pool_share_note_says_the_labelling_time_and_the_time_left_apart(tmp_path, monkeypatch, capsys):
    """"more than a quarter of the time left (5 s)" read as 5 s left, where 20 s were and 5 s was the quarter."""
    monkeypatch.setattr(run_pseudo, "measure_prediction_seconds", lambda task, images: 0.018)  # 18 s for the pool
    images = torch.zeros(1000, 3, 4, 4, dtype=torch.uint8)
    share = run_pseudo.pool_share_in_time(None, images, 5.0, tmp_path / "pseudo_labels_round2.json", seed=1)
    assert share is not None and len(share) == 277
    out = capsys.readouterr().out
    assert "277 of the 1,000 pool images" in out and "about 18 s" in out, out
    assert "more than the 5 s the labelling may take" in out and "a quarter of the 20 s left" in out, out
    assert "time left (5 s)" not in out, out


def _dataset(root: Path, name: str, key: dict, classes=("a", "b")) -> SimpleNamespace:
    """A scanned dataset as read_answer_keys reads one: its folder, test ids and answer key."""
    folder = root / name
    for c in classes:
        (folder / "train" / c).mkdir(parents=True)
    (folder / "test_labels.json").write_text(json.dumps(key, ensure_ascii=False))
    test = [(str(i), folder / "test" / f"{i}.png") for i in range(2)]
    return SimpleNamespace(name=name, root=folder, answer_key=folder / "test_labels.json", test=test,
                           classes=list(classes))


def test_one_unusable_answer_key_names_the_datasets_eval_can_score(tmp_path):
    """One key naming a class train lacks refused every dataset, without saying that --datasets scores the others."""
    infos = [_dataset(tmp_path, "ok one", {"0": "a", "1": "b"}), _dataset(tmp_path, "bad", {"0": "a", "1": "fünf"}),
             _dataset(tmp_path, "ok2", {"0": 0, "1": 1})]
    space = LabelSpace.from_infos(infos)
    with pytest.raises(UserError) as err:
        predict.check_answer_keys(infos, space)
    text = str(err.value)
    assert "'fünf'" in text and "--datasets 'ok one,ok2'" in text, text
    # a test image missing from its key: the same hint
    infos[1] = _dataset(tmp_path / "other", "bad", {"0": "a"})
    with pytest.raises(UserError) as err:
        predict.check_answer_keys(infos, space)
    assert "missing from their answer key" in str(err.value) and "--datasets 'ok one,ok2'" in str(err.value)
    # one dataset only, or none usable: nothing to hint at
    with pytest.raises(UserError) as err:
        predict.check_answer_keys(infos[1:2], LabelSpace.from_infos(infos[1:2]))
    assert "--datasets" not in str(err.value)
    predict.check_answer_keys([infos[0], infos[2]], LabelSpace.from_infos([infos[0], infos[2]]))  # both usable


def test_too_few_val_images_for_balance_on_names_the_classes_val_lacks(tmp_path, monkeypatch):
    """"9 val images for 4 classes: too few to decide on" did not say that val lacked two of the classes."""
    classes = ("cat", "dog", "emu", "fox")
    val = [(tmp_path / f"{i}.png", k) for i, k in enumerate([0] * 5 + [2] * 4)]  # no dog, no fox
    monkeypatch.setattr(balancing, "_labelled_split", lambda tm, root, name, split: (SimpleNamespace(val=val), None))
    monkeypatch.setattr(fewshot.data.cache, "load_images", lambda paths, *a, **k: SimpleNamespace(
        images=torch.zeros(len(paths), 3, 4, 4), valid=torch.ones(len(paths), dtype=torch.bool), bad=[]))
    tm = SimpleNamespace(space=LabelSpace(("pets",), (classes,)), cfg={"data": {}}, size=4)
    logits, targets, why = balancing._val_logits(tm, tmp_path, "pets", torch.device("cpu"))
    assert logits is None and targets is None
    assert "9 val images for 4 classes: too few to decide on" in why, why
    assert "lacks 2 of the 4 classes: dog, fox" in why, why
    val[:] = [(tmp_path / f"{i}.png", i % 4) for i in range(9)]  # every class: no list
    assert "lacks" not in balancing._val_logits(tm, tmp_path, "pets", torch.device("cpu"))[2]


def test_a_missing_key_beside_a_broken_one_names_only_what_can_be_scored(tmp_path):
    """Review rev46: read_answer_keys' own hint for a missing key named every dataset with a key file, a broken one
    too ("--datasets bad,good", which eval then refused on bad); the refusal now names the usable ones only."""
    infos = [_dataset(tmp_path, "nokey", {"0": "a", "1": "b"}), _dataset(tmp_path, "bad", {"0": "a", "1": "fünf"}),
             _dataset(tmp_path, "good", {"0": "a", "1": "b"})]
    infos[0].answer_key = None
    space = LabelSpace.from_infos(infos)
    with pytest.raises(UserError) as err:
        predict.check_answer_keys(infos, space)
    text = str(err.value)
    assert "no answer key" in text and "--datasets good." in text, text
    assert "bad,good" not in text and "Score the datasets that have one" not in text, text
    infos[2] = _dataset(tmp_path / "other", "good", {"0": "a", "1": "nine"})  # no key usable: no hint at all
    with pytest.raises(UserError) as err:
        predict.check_answer_keys(infos, LabelSpace.from_infos(infos))
    assert "--datasets" not in str(err.value), str(err.value)


def test_the_hint_gives_a_dataset_named_with_a_comma_alone():
    """--datasets splits at commas: "--datasets x,y,z" for the datasets "x,y" and "z" named three unknown ones."""
    assert answer_keys._datasets_hint(["z", "w"]) == "--datasets z,w"
    hint = answer_keys._datasets_hint(["x,y", "z"])
    assert hint.startswith("--datasets z, then --datasets x,y ") and "goes alone" in hint, hint  # the whole value


def test_the_classes_val_lacks_are_quoted_where_a_name_holds_a_comma_or_a_space(tmp_path, monkeypatch):
    """Review rev46: "val lacks 3 of the 4 classes: cat, dog, fox , sea lion" read as four classes."""
    classes = ("cat, dog", "emu", "fox ", "sea lion")
    val = [(tmp_path / f"{i}.png", 1) for i in range(9)]
    monkeypatch.setattr(balancing, "_labelled_split", lambda tm, root, name, split: (SimpleNamespace(val=val), None))
    monkeypatch.setattr(fewshot.data.cache, "load_images", lambda paths, *a, **k: SimpleNamespace(
        images=torch.zeros(len(paths), 3, 4, 4), valid=torch.ones(len(paths), dtype=torch.bool), bad=[]))
    tm = SimpleNamespace(space=LabelSpace(("pets",), (classes,)), cfg={"data": {}}, size=4)
    why = balancing._val_logits(tm, tmp_path, "pets", torch.device("cpu"))[2]
    assert "lacks 3 of the 4 classes: 'cat, dog', 'fox ', 'sea lion'" in why, why
