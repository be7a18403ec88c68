"""Fine-tuning set-up found by reading it line by line: the device index a run records, a refused resume that
first announced its training, and the repeat sampler's warning counting a short last batch as a full one."""

from __future__ import annotations


import torch
import yaml

from fewshot.config import resolve
from fewshot.data.samplers import repeats_warning
from helpers.checks import run_main
from helpers.tiny import copy_data_root, tiny_train_argv


def test_the_device_index_is_recorded(digits_root, tmp_path, monkeypatch):
    """`--device cuda:1` was saved as `cuda`, so a later `--resume` without --device trained on GPU 0."""
    import fewshot.train.finetune as ft

    monkeypatch.setattr(ft, "resolve_device", lambda name: torch.device("cuda:1"))
    out = tmp_path / "run"
    cfg = resolve(flags={"data.root": str(digits_root), "model.name": "test_resnet", "model.img_size": 16,
                         "train.device": "cuda:1"})
    with ft.undone_if_start_fails(out) as start:
        ft.start_job(cfg, out, False, lambda ctx, resuming: ft.resolve_finetune_defaults(cfg, resuming), start)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["device"] == "cuda:1"


def test_a_resume_refused_for_other_classes_announces_no_training(digits_root, tmp_path):
    root = copy_data_root(digits_root, tmp_path / "data")
    out = tmp_path / "run"
    rc, _, err = run_main(*tiny_train_argv(root, out, "--datasets", "digits"))
    assert rc == 0, err
    for split in ("train", "val"):
        (root / "digits" / split / "3").rename(root / "digits" / split / "three")
    rc, stdout, err = run_main(*tiny_train_argv(root, out, "--datasets", "digits", "--resume", "--epochs", "2"))
    assert rc == 2 and "differ" in err, err
    assert "fine-tuning test_resnet" not in stdout, stdout


def test_the_repeats_warning_counts_a_short_last_batch_as_short():
    """"2 of its 3 batches of 32" counted the last batch of 8 as one of 32; n equal to the batch read "fewer
    repeats than the images and than a batch"."""
    said = repeats_warning(72, 32, 1, 40)
    assert "2 of its 3 batches (of 32, the last of 8) all copies of one image" in said, said
    said = repeats_warning(64, 64, 1, 64)
    assert "fewer repeats than the 64 images, which a batch holds" in said, said
