"""Fine-tuning's words and lines say what it does: semi.* words a method never reads are named (they were
accepted silently), a data.unlabeled pool that is all labelled images says so (the error advised the
data.unlabeled=DIR the user had given), `fewshot train` names no --unlabeled flag it lacks, the per-class flip line
is not printed when data.hflip flips every image anyway, and a resume told a dataset left out by --datasets that
it was gone from the data."""

from __future__ import annotations

import pytest
import torch

from helpers.checks import run_main


def _words(command: str, words: list[str], flags: dict | None = None) -> list[str]:
    from fewshot.cli_warnings import unused_override_warnings
    from fewshot.config import resolve

    cfg = resolve(flags=flags or {}, overrides=[w for w in words if w.startswith("semi.method=")],
                  default_preset="mocov2")
    return unused_override_warnings(command, cfg, words)


@pytest.mark.parametrize("method, named, quiet", [
    (None, ["semi.threshold=0.5", "semi.mu=7", "semi.views=mocov2", "semi.weight=2", "semi.moco_momentum=0.9"], []),
    ("fixmatch", ["semi.moco_momentum=0.9"], ["semi.threshold=0.5", "semi.mu=7", "semi.views=mocov2",
                                              "semi.weight=2"]),
    ("moco", ["semi.threshold=0.5", "semi.views=mocov2"], ["semi.mu=7", "semi.weight=2", "semi.moco_momentum=0.9"])])
def test_train_names_the_semi_words_its_method_never_reads(method, named, quiet):
    """FixMatch reads semi.mu/threshold/weight/views (train/semi.py), the joint MoCo loss semi.mu/weight/
    moco_momentum (train/semi_moco.py), and without a method none: `fewshot train semi.threshold=0.5` was silent."""
    given = ([f"semi.method={method}"] if method else []) + named + quiet
    said = _words("train", given)
    assert len(said) == 1 and said[0].startswith(f"warning: {' '.join(named)} do"), said
    if method is None:
        assert "only with semi.method=fixmatch" in said[0] and "semi.method=moco" in said[0]
    else:
        assert f"semi.method={method} reads only" in said[0] and "semi.method=" + (
            "moco" if method == "fixmatch" else "fixmatch") in said[0].split("; ")[-1]


def test_train_with_every_word_its_method_reads_says_nothing():
    assert _words("train", ["semi.method=fixmatch", "semi.mu=7", "semi.threshold=0.5", "semi.weight=2",
                            "semi.views=mocov2"]) == []
    assert _words("train", ["semi.method=moco", "semi.mu=3", "semi.weight=2", "semi.moco_momentum=0.9"]) == []


@pytest.mark.parametrize("semi", ["pseudo", "off"])
def test_run_reads_semi_words_only_with_fixmatch(semi):
    """`fewshot run` sets semi.method itself (fixmatch only with --semi fixmatch): its other methods read none."""
    said = _words("run", ["semi.threshold=0.5", "semi.mu=7"], {"run.semi_method": semi})
    assert len(said) == 1 and said[0].startswith("warning: semi.threshold=0.5 semi.mu=7 do nothing: `fewshot run` "
                                                 "reads semi.* only with --semi fixmatch"), said
    assert f"this run's method is {semi}" in said[0] and said[0].endswith("give --semi fixmatch.")


def test_run_with_fixmatch_names_only_the_joint_moco_momentum():
    said = _words("run", ["semi.threshold=0.5", "semi.mu=7", "semi.views=mocov2", "semi.moco_momentum=0.9"],
                  {"run.semi_method": "fixmatch"})
    assert len(said) == 1 and said[0].startswith("warning: semi.moco_momentum=0.9 does nothing:"), said


def test_train_command_names_the_semi_words(digits_root, tmp_path, monkeypatch):
    """The case of the report: the words reach stderr from the command line, and training still starts."""
    from fewshot.train import finetune

    given = []
    monkeypatch.setattr(finetune, "run_finetune", lambda cfg, *a, **k: given.append(cfg))
    rc, _, err = run_main("train", "--data", digits_root, "--out", tmp_path / "t", "--model", "test_resnet",
                          "--img-size", "32", "--device", "cpu", "--no-progress", "semi.threshold=0.5", "semi.mu=7",
                          "semi.views=mocov2")
    assert rc == 0 and given, err
    assert "warning: semi.threshold=0.5 semi.mu=7 semi.views=mocov2 do nothing: `fewshot train` reads semi.*" in err


def test_a_pool_of_labelled_images_says_they_were_left_out(digits_root):
    """data.unlabeled=ROOT/digits/train: every image is labelled; the error said the data had no pool and advised
    data.unlabeled=DIR, which the user had given, and never said where the images went."""
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.semi import Pool, no_pool_message, pool_files

    train = digits_root / "digits" / "train"
    n = sum(1 for p in train.rglob("*") if p.is_file())
    cfg = resolve(flags={"data.root": str(digits_root), "model.img_size": 16, "data.unlabeled": [str(train)]})
    infos = scan_root(digits_root, ["digits"], splits=("train", "val"))
    paths, _, source = pool_files(cfg, infos, exclude_train=True)
    assert paths == [] and f"all {n:,} of the pool's images left out as labelled train or val images" in source
    assert "1 data.unlabeled folder(s)" in source and "--unlabeled folder(s)" not in source
    said = no_pool_message(cfg, Pool(torch.zeros(0), torch.zeros(0), [], source), "fixmatch")
    assert source in said and "data.unlabeled=DIR" not in said and "not the labelled train or val images" in said
    # MoCo keeps them (its pool may hold labelled images): nothing is said there
    assert "left out" not in pool_files(cfg, infos)[2]


def test_stand_in_train_images_are_not_counted_as_dropped(digits_root, dataset_names):
    """A dataset without a pool stands in its train images for MoCo only: they were never pool images."""
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.semi import pool_files

    cfg = resolve(flags={"data.root": str(digits_root), "model.img_size": 16})
    infos = scan_root(digits_root, None, splits=("train", "val"))
    _, _, source = pool_files(cfg, infos, exclude_train=True)
    assert "left out" not in source, source


def test_the_pool_source_names_what_each_command_takes(digits_root):
    """`fewshot train` has no --unlabeled flag: its pool is data.unlabeled; MoCo (pretrain, run) takes --unlabeled."""
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.data.pool import _pool_with_sources

    folder = str(digits_root / "unlabeled")
    cfg = resolve(flags={"data.root": str(digits_root), "model.img_size": 16, "data.unlabeled": [folder]})
    infos = scan_root(digits_root, None, splits=("train", "val"))
    assert _pool_with_sources(cfg, infos)[2] == "1 data.unlabeled folder(s) (`fewshot run --unlabeled`)"
    assert _pool_with_sources({**cfg, "_task": "moco"}, infos)[2] == "1 --unlabeled folder(s)"


def _task(root, **data):
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.distributed import DistContext
    from fewshot.train.supervised import SupervisedTask

    cfg = resolve(flags={"data.root": str(root), "model.name": "test_resnet", "model.img_size": 16,
                         **{f"data.{k}": v for k, v in data.items()}})
    return SupervisedTask(cfg, scan_root(root, cfg["data"]["datasets"], splits=("train", "val")),
                          torch.device("cpu"), DistContext())


def test_hflip_that_flips_every_image_gets_no_per_class_line(digits_root, capsys):
    """data.hflip=1 data.hflip_symmetric=0.5 printed "horizontal flips (p=0.5) for the classes that look
    mirror-symmetric" while TrainAugment flipped every image (it takes the larger of the two)."""
    task = _task(digits_root, hflip=1.0, hflip_symmetric=0.5)
    out = capsys.readouterr().out
    assert task.flip_by_class is None and "look mirror-symmetric" not in out, out
    assert "warning: data.hflip_symmetric=0.5 adds nothing: data.hflip=1 flips every class's images" in out
    # below it the per-class flips still apply, and the line names data.hflip's share for the others
    task = _task(digits_root, hflip=0.2, hflip_symmetric=0.5)
    out = capsys.readouterr().out
    assert task.flip_by_class is not None and set(task.flip_by_class.tolist()) <= {0.0, 0.5}
    assert "horizontal flips (p=0.5) for the classes that look mirror-symmetric, p=0.2 (data.hflip) for the others" \
        in out, out


def test_a_dataset_left_out_by_datasets_is_not_said_to_be_gone(digits_root, dataset_names):
    """`train --resume --datasets digits` on a two-dataset run: "fashion-mnist in the run, not in the data now",
    though it was there; --datasets left it out."""
    from fewshot.data.label_space import LabelSpace
    from fewshot.errors import UserError
    from fewshot.train.supervised import space_changes

    first, second = dataset_names
    task = _task(digits_root, datasets=[first])
    both = LabelSpace(tuple(dataset_names), (task.space.classes[0], ("a", "b")))
    with pytest.raises(UserError) as info:
        task.check_classes({"label_space": both.to_dict()})
    said = str(info.value)
    assert f"dataset(s) {second} in the run and in the data, but left out by --datasets" in said, said
    assert f"give --datasets {first},{second}" in said and "not in the data now" not in said
    # one that is gone from the root is still said to be gone
    gone = LabelSpace((first, "elsewhere"), (task.space.classes[0], ("a",)))
    assert space_changes(gone, task.space, [first, second]) == ["dataset(s) elsewhere in the run, not in the data now"]
