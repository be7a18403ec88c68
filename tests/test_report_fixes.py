"""`fewshot report` / `fewshot compare` given a checkpoint file, a stopped run's epochs, and the footer's command.

One fine-tuning run (2 epochs, evaluated after each) of timm's `test_resnet` at 32 px on a tiny sklearn-digits root,
trained once; each test copies it and shapes the copy into the case it checks.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from helpers.checks import run_main
from helpers.tiny import trained_digits_run

COMMON = ["--model", "test_resnet", "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--no-progress",
          "train.tensorboard=false", "train.threads=1"]
METRICS = ("metrics.json", "metrics_known.json", "metrics_unknown.json")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_digits_run(tmp_path_factory.mktemp("report_fixes"), 2, *COMMON)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def _best_at_epoch_1(trained, run: Path) -> dict:
    """A copy of the run whose best.pt holds epoch 1 (its evaluation said 99.00 everywhere), last.pt epoch 2 (the
    real evaluation): last.pt differs from best.pt. Returns epoch 2's logged known-source val scores."""
    from fewshot.train.checkpoint import load_checkpoint, save_checkpoint

    shutil.copytree(trained["ft"], run)
    rows = _rows(run)
    assert [r["epoch"] for r in rows if "val" in r] == [1, 2]
    fake = {"mode": "known", "mean_acc1": 99.0, "datasets": {"digits": {"acc1": 99.0, "acc5": 99.0, "n": 30}}}
    rows[0].update(score=99.0, val={"known": fake, "unknown": {**fake, "mode": "unknown"}})
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in METRICS:
        (run / name).write_text(json.dumps({**fake, "best_epoch": 1, "split": "val",
                                            "mode": "unknown" if "unknown" in name else "known"}))
    ck = load_checkpoint(run / "checkpoints" / "best.pt")
    save_checkpoint(run / "checkpoints" / "best.pt", {**{k: v for k, v in ck.items() if k not in ("format", "version")},
                                                       "epoch": 1, "step_in_epoch": 0})
    return rows[1]["val"]["known"]


def test_a_checkpoint_file_given_is_the_one_reported_not_best_pt(trained, tmp_path):
    """RUN/checkpoints/last.pt was cut to its run folder and reported with best.pt's numbers, confusion matrices
    and plots, without a word."""
    from fewshot.report.runs import expand_runs

    run = tmp_path / "run"
    last_epoch = _best_at_epoch_1(trained, run)
    last = run / "checkpoints" / "last.pt"
    found = expand_runs([last, run])
    assert [(r.label, r.given_checkpoint) for r in found] == [("run/checkpoints/last.pt", last), ("run", None)]
    assert found[0].checkpoint == last and found[1].checkpoint == run / "checkpoints" / "best.pt"
    assert found[0].metrics["mean_acc1"] == last_epoch["mean_acc1"] and found[0].metrics_epoch == 2
    assert found[1].metrics["mean_acc1"] == 99.0 and found[1].metrics_epoch == 1

    rc, out, err = run_main("report", last, "--out", tmp_path / "r", "--device", "cpu", "--grid", "4")
    assert rc == 0, err
    text = (tmp_path / "r" / "index.html").read_text()
    assert "99.00" not in text  # best.pt's evaluation
    assert f"{last_epoch['mean_acc1']:.2f}" in text
    assert "evaluation of epoch 2, the one last.pt holds" in text
    assert f"{last} (named as RUN; epoch 2)" in text  # the facts name the file
    assert f"Predictions of {last} (the checkpoint named as RUN, epoch 2)" in text  # and the image parts use it
    rc, out, err = run_main("compare", last)
    assert rc == 0, err
    assert "99.00" not in out and f"{last_epoch['mean_acc1']:.2f}" in out


def test_a_checkpoint_whose_epoch_the_log_did_not_evaluate_says_whose_accuracies_are_shown(trained, tmp_path):
    from fewshot.report.runs import expand_runs

    run = tmp_path / "run"
    _best_at_epoch_1(trained, run)
    rows = _rows(run)
    del rows[1]["val"], rows[1]["score"]  # epoch 2 logged without an evaluation
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = expand_runs([run / "checkpoints" / "last.pt"])[0]
    assert found.metrics["mean_acc1"] == 99.0
    assert any("last.pt (named as RUN) holds epoch 2, but log.jsonl holds no evaluation of that epoch: the accuracies "
               "shown are of epoch 1" in n for n in found.notes), found.notes


def _checkpoint(path: Path, kind: str, **fields) -> None:
    """A small fewshot checkpoint with the position fields given (weights are not read by the report here)."""
    from fewshot.train.checkpoint import save_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"kind": kind, "config": {"train": {"batch_size": 8}}, "model": {}, "label_space": {},
                           "img_size": 32, "n_parameters": 1, **fields})


def test_a_stopped_runs_epochs_count_the_steps_last_pt_saved_after_the_log(tmp_path):
    """Stopped at step 33 of 25 per epoch: the log's last row is epoch 1 (step 25), and the report showed 1, not
    1.32; a pretraining stopped after 2 steps (no log row) showed 0."""
    from fewshot.report.runs import load_run

    ft = tmp_path / "ft"
    ft.mkdir()
    (ft / "log.jsonl").write_text(json.dumps({"epoch": 1, "step": 25, "loss": 1.0, "train_acc1": 5.0}) + "\n")
    _checkpoint(ft / "checkpoints" / "last.pt", "supervised", epoch=1, step_in_epoch=8, global_step=33)
    assert load_run(ft, "ft").epochs == 1.32
    moco = tmp_path / "moco"
    _checkpoint(moco / "checkpoints" / "last.pt", "moco", epoch=0, step_in_epoch=2, global_step=2, n_pool=64, world=1)
    run = load_run(moco, "moco")
    assert run.kind == "moco" and run.epochs == 0.25  # 64 pool images in batches of 8: 8 steps per epoch
    # a log that holds last.pt's step (a budget stop logs and evaluates its partial epoch) keeps the log's count
    (ft / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"epoch": 1, "step": 25, "loss": 1.0}, {"epoch": 2, "step": 33, "loss": 1.0})))
    assert load_run(ft, "ft").epochs == 1.32  # from the log's own rows, as before


def test_the_footer_names_the_command_that_rebuilds_this_report(trained, tmp_path):
    """The footer said `fewshot report <stage paths>` whatever was given: a `fewshot run` folder, a checkpoint file,
    and no --out."""
    pipe = tmp_path / "my run"
    shutil.copytree(trained["ft"], pipe / "finetune")
    (pipe / "summary.json").write_text(json.dumps({"stages": {}, "metrics": {}}))
    out = tmp_path / "r"
    rc, _, err = run_main("report", pipe, "--out", out, "--device", "cpu", "--grid", "0", "--data", trained["root"])
    assert rc == 0, err
    text = (out / "index.html").read_text()
    want = shlex.join(["fewshot", "report", str(pipe), "--out", str(out), "--data", str(trained["root"]),
                       "--grid", "0"])
    assert want.replace("'", "&#x27;") in text, text[-600:]
    assert str(pipe / "finetune") not in text.split("<footer>")[1]


def test_report_help_says_which_out_folders_are_refused():
    rc, out, _ = run_main("report", "--help")
    assert rc == 0
    words = " ".join(out.split())
    assert "outside the reported runs and the data" not in words
    assert "RUN/report" in words and "train/val/test" in words


def test_prediction_grid_keeps_a_dataset_name_of_16_characters_and_shrinks_long_titles(tmp_path, monkeypatch):
    """The grid cut dataset names at 12 characters: "fashion-mnist" was "fashion-mni…"."""
    import numpy as np

    from fewshot.report import plots

    figs, save = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, out: (figs.append(fig), save(fig, out))[1])
    imgs = np.zeros((3, 3, 8, 8), dtype=np.uint8)
    plots.plot_prediction_grid(imgs, ["Ankle boot", "9", "Pullover"], ["T-shirt/top", "9", "Sandal-or-sneaker"],
                               [False, True, True], tmp_path / "a.png",
                               datasets=["fashion-mnist", "digits", "fashion-mnist-v2"])
    titles = [ax.get_title() for ax in figs[0].axes[:3]]
    assert titles == ["fashion-mnist: T-shirt/top\n(true: Ankle boot)", "digits: 9",
                      "fashion-mnist-v2: Sandal-or-snea…"]
    sizes = [ax.title.get_fontsize() for ax in figs[0].axes[:3]]
    assert sizes[:2] == [7, 7] and 5 <= sizes[2] < 7  # the longest title gets a smaller font, not a cut name


def test_overview_caption_says_log_jsonl_for_a_run_without_metrics_json(trained, tmp_path):
    """A stopped run's accuracies come from log.jsonl; the overview's caption said "(metrics.json)" all the same."""
    from fewshot.report import tables as T
    from fewshot.report.runs import expand_runs

    stopped = tmp_path / "stopped"
    shutil.copytree(trained["ft"], stopped)
    for name in METRICS:
        (stopped / name).unlink()
    finished, stopped_run = expand_runs([trained["ft"], stopped])
    assert "(metrics.json)" in T.overview_table([finished], {}).caption
    alone = T.overview_table([stopped_run], {}).caption
    assert "metrics.json)" not in alone.replace("no usable metrics.json)", "") and "log.jsonl" in alone
    both = T.overview_table([finished, stopped_run], {}).caption
    assert "(metrics.json); for stopped: from the logged evaluation in log.jsonl" in both


def test_compare_prints_each_tables_caption_in_the_terminal(monkeypatch):
    """`fewshot compare` dropped every caption: a `fewshot run` folder's test table showed class-balanced scores
    (pred_all.json under run.balance) with nothing saying so, while the HTML report said it."""
    import builtins
    import io

    from fewshot.report import tables as T

    table = T.Table("r1/finetune: test accuracy", ["dataset", "acc@1"], [["digits", "97.0"]],
                    caption="Known-source predictions (pred_all.json): class-balanced for digits.")
    out = io.StringIO()
    T.print_tables([table], file=out)
    assert "class-balanced for digits" in out.getvalue()

    real_import = builtins.__import__

    def no_rich(name, *args, **kwargs):  # the plain-text path, taken where rich is not installed
        if name == "rich" or name.startswith("rich."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rich)
    plain = io.StringIO()
    T.print_tables([table], file=plain)
    assert plain.getvalue().rstrip().endswith("class-balanced for digits.")


def test_the_test_table_of_a_run_names_its_balanced_predictions():
    from types import SimpleNamespace

    from fewshot.report import tables as T

    run = SimpleNamespace(kind="supervised", label="r1/finetune", path=Path("r1/finetune"), metrics_known=None,
                          metrics_unknown=None, from_log=False,
                          pipeline={"metrics": {"test": {"mean_acc1": 97.0, "datasets": {"digits": {"acc1": 97.0}}}},
                                    "balanced_prediction": "class-balanced for digits"})
    table = T.test_table(run)
    assert "class-balanced for digits" in table.caption
    run.pipeline.pop("balanced_prediction")
    assert T.test_table(run).caption == ""


def test_a_run_at_the_models_default_size_shows_the_size_it_ran_at(trained, tmp_path):
    """A run without --img-size records model.img_size null in config.yaml; the input column showed "–" beside FLOPs
    counted at the size the checkpoint says (hunt hAT). The column now shows the counted model's size."""
    import yaml

    from fewshot.report import tables as T
    from fewshot.report.compare import compute_flops
    from fewshot.report.runs import expand_runs

    default = tmp_path / "default"
    shutil.copytree(trained["ft"], default)
    cfg = yaml.safe_load((default / "config.yaml").read_text())
    cfg["model"]["img_size"] = None  # as a run at the model's default size saves it; its checkpoint says 32
    (default / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run,) = expand_runs([default])
    assert run.img_size is None
    flop_counts = compute_flops([run])
    assert run.img_size == 32 and flop_counts[run.label]
    table = T.overview_table([run], flop_counts)
    assert ["32 px"] == [cell for row in table.rows for cell in row if str(cell).endswith(" px")]
