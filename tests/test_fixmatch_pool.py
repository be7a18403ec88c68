"""FixMatch's unlabeled pool (semi.method=fixmatch): only real pool images (a dataset's labelled train images never
stand in), a clear stop without any, a resume refused when the pool changed, and a trace of it in the outputs."""

import json
import shutil

import pytest
import torch

from helpers.checks import run_main


def train_argv(root, out, *extra) -> list:
    return ["train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false", "train.ema=false",
            "train.threads=1", "semi.method=fixmatch", "semi.mu=1", *extra]


def names(root) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "train").is_dir())


def test_fixmatch_draws_no_train_image_of_a_dataset_without_a_pool(copy_root):
    """A dataset without ROOT/unlabeled/<name>/ stood in its labelled train images as FixMatch's 'unlabeled' pool
    (pseudo-labels may not use train images: load_pool's exclude_train); it is named instead."""
    from fewshot.config import resolve
    from fewshot.data.layout import scan_root
    from fewshot.train.semi import UnlabeledStream

    first, second = names(copy_root)
    shutil.rmtree(copy_root / "unlabeled" / first)
    cfg = resolve(flags={"data.root": str(copy_root)})
    infos = scan_root(copy_root, None, splits=("train", "val"))
    stream = UnlabeledStream(cfg, infos, 16, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    n_own = len(list((copy_root / "unlabeled" / second).rglob("*.png")))
    assert len(stream.images) == n_own and set(stream.dataset_ids.tolist()) == {1}
    assert stream.without_pool == [first] and stream.summary["pool_size"] == n_own


def test_fixmatch_without_any_pool_stops_and_says_how_to_give_one(copy_root, tmp_path):
    shutil.rmtree(copy_root / "unlabeled")
    rc, _, err = run_main(*train_argv(copy_root, tmp_path / "run"))
    assert rc == 2, err
    assert "needs an unlabeled pool" in err and "unlabeled/<dataset>/" in err and "data.unlabeled" in err
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_fixmatch_run_leaves_a_trace_of_its_pool(copy_root, tmp_path):
    """The start line names FixMatch and its pool; metrics.json records it (the report's facts read it)."""
    first, second = names(copy_root)
    shutil.rmtree(copy_root / "unlabeled" / first)
    run = tmp_path / "run"
    rc, out, err = run_main(*train_argv(copy_root, run))
    assert rc == 0, err
    n_own = len(list((copy_root / "unlabeled" / second).rglob("*.png")))
    assert f"FixMatch (semi.mu=1, semi.threshold=0.95, semi.weight=1) on an unlabeled pool of {n_own} images" in out
    assert f"note: {first} has no pool of its own" in out
    semi = json.loads((run / "metrics.json").read_text())["semi"]
    assert semi["method"] == "fixmatch" and semi["pool_size"] == n_own and semi["mu"] == 1
    assert semi["threshold"] == 0.95 and f"{second}: unlabeled/" in semi["pool_source"]
    from fewshot.report.runs import load_run
    from fewshot.report.semi_facts import fixmatch_fact

    assert fixmatch_fact(load_run(run, "run")).startswith(f"FixMatch on an unlabeled pool of {n_own} images (")


def test_resume_refuses_a_pool_that_changed_since_the_stop(copy_root, tmp_path):
    """FixMatch draws pool images by position: a pool folder that gained files resumed silently on other images."""
    pool = tmp_path / "pool"
    files = sorted((copy_root / "unlabeled").rglob("*.png"))
    pool.mkdir()
    for f in files[:10]:
        shutil.copy(f, pool / f.name)
    run = tmp_path / "run"
    rc, _, err = run_main(*train_argv(copy_root, run, f"data.unlabeled={pool}"))
    assert rc == 0, err
    for f in files[10:15]:
        shutil.copy(f, pool / f.name)
    resume = ["train", "--data", copy_root, "--out", run, "--epochs", "2", "--resume", "--no-progress"]
    rc, _, err = run_main(*resume)
    assert rc == 2 and "the pool" in err and "10 images in the run, 15 now" in err, err
    for f in files[10:15]:
        (pool / f.name).unlink()
    rc, _, err = run_main(*resume)  # the run's pool again: resumed
    assert rc == 0, err
    (pool / files[0].name).write_bytes(b"not a png")  # a file that no longer decodes: said, not "restore the files"
    rc, _, err = run_main(*resume[:5], "--epochs", "3", "--resume", "--no-progress", "data.skip_bad_unlabeled=true")
    assert rc == 2 and "10 images in the run, 9 now" in err and "1 pool file(s) no longer decode" in err, err


def test_the_no_pool_note_counts_the_unknown_source_images_fixmatch_draws_for_every_dataset():
    from fewshot.train.semi import fixmatch_note

    summary = {"mu": 1, "threshold": 0.95, "weight": 1.0, "pool_size": 30, "pool_source": "x", "unknown_source": 12}
    assert "has no images of it apart from the 12 of unknown source" in fixmatch_note(summary, ["digits"])
    assert fixmatch_note({**summary, "unknown_source": 0}, ["digits"]).endswith("FixMatch has no images of it")


def test_pool_key_is_of_the_files_relative_to_the_data_root(tmp_path):
    """The data root may move between a stop and --resume (data.root may change): the key does not."""
    from fewshot.train.semi import pool_key

    a = pool_key([tmp_path / "a" / "unlabeled" / "x.png", tmp_path / "a" / "unlabeled" / "y.png"], tmp_path / "a")
    b = pool_key([tmp_path / "b" / "unlabeled" / "y.png", tmp_path / "b" / "unlabeled" / "x.png"], tmp_path / "b")
    assert a == b != pool_key([tmp_path / "a" / "unlabeled" / "x.png"], tmp_path / "a")


def test_finetune_curves_draw_fixmatch_losses_and_its_pseudo_label_rate(tmp_path, monkeypatch):
    from fewshot.report import plots

    figs = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: (figs.append(fig), save(fig, out))[1])
    rows = [{"epoch": e, "loss": 2.0 / e, "lr": 1e-3, "train_acc1": 10.0 * e, "unlabeled_loss": 0.5 / e,
             "pseudo_label_rate": 5.0 * e} for e in range(1, 6)]
    plots.plot_finetune_curves(rows, tmp_path / "ft.png")
    labels = [[line.get_label() for line in ax.get_lines()] for ax in figs[0].axes]
    assert "train loss (labelled + weight x unlabeled)" in labels[0] and "unlabeled loss (FixMatch)" in labels[0]
    assert "pseudo-label rate (FixMatch)" in labels[2]
    figs.clear()
    plots.plot_finetune_curves([{k: v for k, v in r.items() if k not in ("unlabeled_loss", "pseudo_label_rate")}
                                for r in rows], tmp_path / "plain.png")
    assert "train loss" in [line.get_label() for line in figs[0].axes[0].get_lines()]


@pytest.mark.parametrize("pool", [False, True], ids=["no-pool", "pool"])
def test_run_with_fixmatch_checks_its_pool_and_records_it(copy_root, tmp_path, monkeypatch, pool):
    """`fewshot run --semi fixmatch`: without a pool FixMatch is off, as self-training is (it trained on the train
    images); with one it says which, and summary.json records it (the fine-tuning is not run here: the method its
    config gets is what counts; the run stops at the prediction, with the summary kept in run_state.json)."""
    from types import SimpleNamespace

    from fewshot import pipeline
    from fewshot.eval import predict

    class Stop(Exception):
        pass

    seen = {}

    def finetune_stage(fcfg, *args, **kwargs):
        seen["method"] = fcfg["semi"]["method"]
        return SimpleNamespace(reused=False, epochs_run=0, fit_seconds=0.0), {}

    def predict_and_score(*args, **kwargs):
        raise Stop

    if not pool:
        shutil.rmtree(copy_root / "unlabeled")
    monkeypatch.setattr(pipeline, "finetune_stage", finetune_stage)
    monkeypatch.setattr(predict, "predict_and_score", predict_and_score)
    rc, out, err = run_main("run", "--data", copy_root, "--out", tmp_path / "x", "--budget-minutes", "1", "--model",
                            "test_resnet", "--img-size", "16", "--device", "cpu", "--no-progress", "--semi", "fixmatch")
    assert seen, err
    state = json.loads((tmp_path / "x" / "run_state.json").read_text())
    if pool:
        n = len(list((copy_root / "unlabeled").rglob("*.png")))
        assert seen["method"] == "fixmatch" and "[run] FixMatch (semi.mu=" in out
        assert f"on an unlabeled pool of {n} images" in out
        assert state["summary"]["semi"]["pool_size"] == n
    else:
        assert seen["method"] == "off" and "FixMatch is off" in out and "semi" not in state["summary"]


def test_run_checks_fixmatch_pool_in_the_cache_entry_fixmatch_reads(copy_root):
    """`fewshot run`'s up-front pool check decoded MoCo's pool (train images standing in for a dataset without
    one) for FixMatch: FixMatch then decoded its own pool a second time, inside the budget."""
    from fewshot.config import resolve
    from fewshot.data.cache import default_cache_dir, is_cached
    from fewshot.data.layout import scan_root
    from fewshot.run_checks import check_pool_images
    from fewshot.train.semi import pool_files

    first, _ = names(copy_root)
    shutil.rmtree(copy_root / "unlabeled" / first)
    cfg = resolve(flags={"data.root": str(copy_root), "model.img_size": 16})
    infos = scan_root(copy_root, None, splits=("train", "val"))
    skipped, n_moco = check_pool_images(cfg, infos, "fixmatch")
    assert skipped == [] and n_moco is None
    paths = pool_files(cfg, infos, exclude_train=True)[0]
    assert is_cached(paths, 16, default_cache_dir(str(copy_root), None), cfg["data"]["crop_pct"])
