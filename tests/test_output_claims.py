"""What a run's outputs say, checked against what the run did: the floor of a stage said as the time it is, the
`run --pretrain` stage's metrics.json, a resumed epoch's timing, the curves' legends and epoch ranges, the
accuracy bars of runs on different datasets, and the test table's balanced scores."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers.checks import run_main
from test_run_resume import _cmd, sigterm_in_stage

SHORT = ("--budget-minutes", "0.03")  # after BASE's 0.2, so it wins: the run's length is not the subject (suite time)


def test_the_floor_of_a_stage_is_said_as_the_time_it_is(monkeypatch, capsys):
    """"its least 5 training steps (3.6 s ...)" while the Engine stops at the floor's time: on a machine that got
    busy the stage trained 2 steps. The plan line and the warning say a time, the steps at the measured speed."""
    import fewshot.run_stages
    from fewshot.run_stages import plan_stage
    from fewshot.run_words import stage_plan_words

    assert stage_plan_words(0.73, 3.65, 1.25).startswith("about 3.6 s, its floor (5 training steps at the measured")
    monkeypatch.setattr(fewshot.run_stages, "measure_step_seconds", lambda task: 0.73)
    monkeypatch.setattr(fewshot.run_stages, "measure_eval_seconds", lambda task: 0.1)
    task = SimpleNamespace(plan_epoch=lambda epoch: [0] * 4)
    plan_stage(task, {"train": {}, "sched": {}}, time.monotonic() + 1.0, 1, ("train", "eval_every"))
    out = capsys.readouterr().out
    assert "this stage's least time (about 3.6 s, 5 training steps at the measured speed) does not fit" in out
    assert "least 5 training steps" not in out


def _knn_after_fit(monkeypatch, stage: str) -> list:
    """The kNN evaluations (MoCoTask.knn_metrics calls) made after the Engine.fit of the stage ``stage``."""
    from fewshot.ssl.pretrain import MoCoTask
    from fewshot.train.engine import Engine

    after, calls = {"on": False}, []
    fit, knn = Engine.fit, MoCoTask.knn_metrics

    def fit_watched(self, *args, **kwargs):
        result = fit(self, *args, **kwargs)
        after["on"] = self.run_dir.name == stage
        return result

    def knn_watched(self, model):
        if after["on"]:
            calls.append(model)
        return knn(self, model)

    monkeypatch.setattr(Engine, "fit", fit_watched)
    monkeypatch.setattr(MoCoTask, "knn_metrics", knn_watched)
    return calls


def test_the_pretrain_stage_of_a_run_writes_its_metrics_and_resumes_after_it(digits_root, tmp_path, monkeypatch):
    """`fewshot pretrain` writes RUN/metrics.json (SPEC: a run directory holds its metrics); `run --pretrain`'s
    pretrain/ did not. Then it scored best.pt while the stage exports last.pt (its metrics.json read one epoch,
    the backbone held another), with a second kNN evaluation and a checkpoint read: now it is the weights exported,
    said in it, with the stop's evaluation. A run stopped in the fine-tuning after it resumes with the stage
    reused."""
    from safetensors import safe_open

    from fewshot.train.checkpoint import load_checkpoint, logged_epoch
    from fewshot.train.supervised import SupervisedTask

    out = tmp_path / "run"
    cmd = _cmd(digits_root, out, "--pretrain", "run.semi_method=off", *SHORT)
    with monkeypatch.context() as mp:
        again = _knn_after_fit(mp, "pretrain")
        sigterm_in_stage(mp, "finetune", SupervisedTask, 2)
        rc, _, err = run_main(*cmd)
    assert rc == 128 + signal.SIGTERM, err
    metrics = json.loads((out / "pretrain" / "metrics.json").read_text())
    assert metrics["mode"] == "known" and metrics["split"] == "val" and metrics["metric"].startswith("kNN")
    assert set(metrics["datasets"]) == {p.name for p in digits_root.iterdir() if (p / "train").is_dir()}
    assert 0 <= metrics["mean_acc1"] <= 100
    # the weights exported: last.pt's epoch, the export's, and the stop's evaluation of them (the log's last row)
    last = load_checkpoint(out / "pretrain" / "checkpoints" / "last.pt")
    with safe_open(str(out / "backbone.safetensors"), "pt") as f:
        exported = f.metadata()
    assert metrics["checkpoint"] == "last.pt" and "best_epoch" not in metrics
    assert str(metrics["epoch"]) == exported["epoch"] == str(logged_epoch(last))
    row = [json.loads(line) for line in (out / "pretrain" / "log.jsonl").read_text().splitlines()][-1]
    assert row["epoch"] == metrics["epoch"] and row["step"] == last["global_step"]
    assert {n: d["acc1"] for n, d in metrics["datasets"].items()} == {
        n: v for n, v in row["knn_acc1"].items() if n != "mean"}
    assert metrics["mean_acc1"] == pytest.approx(row["knn_acc1"]["mean"])
    assert again == []  # no second evaluation after the stage's fit
    rc, stdout, err = run_main(*cmd, "--resume")
    assert rc == 0, err
    assert "pretrain: finished before the stop" in stdout
    assert json.loads((out / "pretrain" / "metrics.json").read_text()) == metrics  # reused as it was


def test_the_stage_metrics_score_the_weights_in_memory_without_the_stops_evaluation(tmp_path):
    """A stage resumed with its stop evaluated before the kill evaluates nothing in its fit: metrics.json scores
    the weights in memory (last.pt's) then, as the stop's evaluation would have; its closing time counts one
    evaluation (which metrics.json reuses) and no checkpoint read."""
    from fewshot.run_budget import pretrain_closing_seconds
    from fewshot.ssl.pretrain import write_knn_metrics

    scored = []
    model = object()

    def knn_metrics(m):
        scored.append(m)
        return {"digits": {"acc1": 40.0, "acc5": 90.0, "n": 30}}

    task = SimpleNamespace(model=model, knn_metrics=knn_metrics, last_knn=None, n_parameters=7,
                           cfg={"moco": {"knn_k": 20, "knn_t": 0.1}}, space=SimpleNamespace(names=["digits"]),
                           train_set=SimpleNamespace(dataset_ids=torch.zeros(40, dtype=torch.long)))
    earlier = {"score": 10.0, "knn_acc1": {"digits": 10.0, "mean": 10.0}}  # last.pt's, from the earlier session
    engine = SimpleNamespace(epoch=2, step_in_epoch=3, last_eval=earlier)
    (tmp_path / "checkpoints").mkdir()
    written = write_knn_metrics(engine, task, tmp_path, which="last")
    assert scored == [model] and written["checkpoint"] == "last.pt" and written["epoch"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["datasets"]["digits"]["acc1"] == 40.0
    # this session's closing evaluation, of the same weights: reused
    task.last_knn = (earlier, {"digits": {"acc1": 10.0, "acc5": 50.0, "n": 30}})
    written = write_knn_metrics(engine, task, tmp_path, which="last")
    assert scored == [model] and written["mean_acc1"] == 10.0
    assert pretrain_closing_seconds(20.0, 0) == 20.0 and pretrain_closing_seconds(0.0, 250_000_000) == 16.0


def _train(root: Path, out: Path, *extra: str) -> tuple:
    return run_main("train", "--data", root, "--out", out, "--model", "test_resnet", "--img-size", "16", "--epochs",
                    "1", "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false",
                    "train.ema=false", *extra)


def _slow_steps(monkeypatch, task_cls, seconds: float, calls: list) -> None:
    """Each training step ``seconds`` longer; ``calls`` gets its (start, end) on perf_counter."""
    step = task_cls.training_step

    def slow(self, model, batch):
        begun = time.perf_counter()
        time.sleep(seconds)
        result = step(self, model, batch)
        calls.append((begun, time.perf_counter()))
        return result

    monkeypatch.setattr(task_cls, "training_step", slow)


def _fit_walls(monkeypatch, walls: list) -> None:
    """``walls`` gets the wall seconds of each Engine.fit, stopped or not: a session's bound on its epoch time
    (its steps and what the epoch does around them: batches, the stop, checkpoint writes), start-up excluded."""
    from fewshot.train.engine import Engine

    fit = Engine.fit

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fit(self, *args, **kwargs)
        finally:
            walls.append(time.perf_counter() - t0)

    monkeypatch.setattr(Engine, "fit", timed)


DOWNTIME = 4.0  # clearly longer than what a resumed fit does besides its epoch's time (reading last.pt, the
# evaluation, the writes), which the bounds of the resumed row let in


@pytest.fixture(scope="module")
def stopped_epoch(digits_root, tmp_path_factory):
    """One dataset's 5-step epoch stopped by SIGTERM in its step 3, shared by the resumes that copy it: the run
    folder, last.pt as read, the first session's steps' seconds and its fit's wall seconds, and the time of the stop
    on time.monotonic. Its steps are 1 s longer (the resumed ones 0.5 s): 0.9 of them is the margin that tells
    this session's epoch time from both sessions', under load too."""
    from fewshot.train.checkpoint import load_checkpoint
    from fewshot.train.supervised import SupervisedTask

    out, calls, walls = tmp_path_factory.mktemp("epoch") / "finetune", [], []
    with pytest.MonkeyPatch.context() as mp:
        _slow_steps(mp, SupervisedTask, 1.0, calls)
        _fit_walls(mp, walls)
        sigterm_in_stage(mp, "finetune", SupervisedTask, 3)
        rc, _, err = _train(digits_root, out, "--datasets", "digits")
    stopped = time.monotonic()
    assert rc == 128 + signal.SIGTERM, err
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    return out, ck, calls[-1][1] - calls[0][0], walls[0], stopped


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_a_resumed_epoch_row_times_the_whole_epoch(digits_root, tmp_path, monkeypatch, old_checkpoint,
                                                   stopped_epoch):
    """After a mid-epoch --resume the epoch's epoch_time_s and images_per_s covered the steps after the resume
    only, and the report's training time came short (2 min 06 s for 184 s trained): last.pt carries the epoch's
    seconds and images so far, as it carries its loss sums. A checkpoint written before them: as before. Bounded
    by each session's fit: the time between the steps (batches, the stop, the checkpoint write) is training time
    too, and a bound by the steps alone failed under load (14.97 s, not under 10.22 + 3.01 + 1.5). The stopped
    session (stopped_epoch) is shared: each resume runs on its own copy, at least DOWNTIME after the stop."""
    from fewshot.train.checkpoint import load_checkpoint, save_checkpoint
    from fewshot.train.supervised import SupervisedTask

    shared, ck, first, wall, stopped = stopped_epoch  # first: the first session's 3 steps
    out = Path(shutil.copytree(shared, tmp_path / "finetune"))
    last = out / "checkpoints" / "last.pt"
    assert ck["step_in_epoch"] == 3 and ck["epoch_images"] == 24 and first <= ck["epoch_seconds"] <= wall
    if old_checkpoint:
        ck = load_checkpoint(last)
        for key in ("epoch_seconds", "epoch_images"):
            ck.pop(key)
        save_checkpoint(last, ck)
    calls, walls = [], []
    _slow_steps(monkeypatch, SupervisedTask, 0.5, calls)
    _fit_walls(monkeypatch, walls)
    # the downtime between the sessions is no training time
    time.sleep(max(0.0, DOWNTIME - (time.monotonic() - stopped)))
    rc, _, err = _train(digits_root, out, "--datasets", "digits", "--resume")
    assert rc == 0, err
    second = calls[-1][1] - calls[0][0]  # the resumed session's steps
    row = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    steps = ck["steps_per_epoch"]
    assert row["epoch"] == 1 and len(calls) == steps - 3 and row["epoch_time_s"] >= second
    if old_checkpoint:  # this session's steps only, as before
        assert row["epoch_time_s"] <= walls[0] and row["epoch_time_s"] < second + 0.9 * first
        assert row["images_per_s"] * row["epoch_time_s"] == pytest.approx(8 * (steps - 3), rel=0.05)
    else:  # both sessions' steps, not the downtime between them
        assert second + 0.9 * first <= row["epoch_time_s"] <= ck["epoch_seconds"] + walls[0]
        assert row["images_per_s"] * row["epoch_time_s"] == pytest.approx(8 * steps, rel=0.05)


def test_a_single_dataset_curve_plot_tells_known_from_unknown_and_shares_the_epochs(tmp_path, monkeypatch):
    """One dataset: "digits (known)" and "digits (unknown)" were one colour and one marker (the scores often agree,
    so one hid the other), and a val panel of one evaluation spanned epochs 9-11 next to panels of 1-10."""
    from fewshot.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: figures.append(fig) or out)
    val = {m: {"datasets": {"digits": {"acc1": 80.0}}, "mean_acc1": 80.0} for m in ("known", "unknown")}
    rows = [{"epoch": e, "loss": 2.0 - 0.1 * e, "lr": 0.01, "train_acc1": 40.0 + e, **({"val": val} if e == 10 else {})}
            for e in range(1, 11)]
    plots.plot_finetune_curves(rows, tmp_path / "c.png")
    axes = figures[0].axes
    lines = {line.get_label(): line for line in axes[3].get_lines()}
    known, unknown = lines["digits (known)"], lines["digits (unknown)"]
    assert known.get_color() != unknown.get_color() and known.get_marker() != unknown.get_marker()
    assert unknown.get_markerfacecolor() == "none"  # the known point shows through where they agree
    assert axes[3].get_xlim() == pytest.approx(axes[0].get_xlim())
    assert axes[3].get_xlim()[0] < 2


def test_the_mean_over_datasets_is_drawn_behind_theirs(tmp_path, monkeypatch):
    """Two datasets: the black mean points were drawn over the datasets' points and hid them."""
    from fewshot.report import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: figures.append(fig) or out)
    sets = {"a": {"acc1": 50.0}, "b": {"acc1": 52.0}}
    val = {"known": {"datasets": sets, "mean_acc1": 51.0},
           "unknown": {"datasets": sets, "mean_acc1": 51.0, "routing_acc": 90.0}}
    rows = [{"epoch": e, "loss": 1.0, "lr": 0.01, "train_acc1": 40.0, "val": val} for e in (1, 2)]
    plots.plot_finetune_curves(rows, tmp_path / "c.png")
    knn = [{"epoch": e, "loss": 5.0, "lr": 0.03, "contrast_acc1": 10.0, "contrast_acc5": 30.0,
            "knn_acc1": {"a": 40.0, "b": 41.0, "mean": 40.5}} for e in (1, 2)]
    plots.plot_moco_curves(knn, tmp_path / "m.png")
    for ax in (figures[0].axes[3], figures[1].axes[2]):
        lines = [line for line in ax.get_lines() if line.get_marker() == "o"]
        means = [line for line in lines if line.get_color() == "black"]
        others = [line for line in lines if line.get_color() != "black"]
        assert means and others
        assert all(m.get_markerfacecolor() == "none" for m in means)
        assert max(m.get_zorder() for m in means) < min(o.get_zorder() for o in others)


def test_the_accuracy_bars_of_runs_on_different_datasets_say_so(tmp_path, monkeypatch):
    """A 2-dataset run's mean next to a 1-dataset run's, without a word: the bars and the page's caption note it."""
    from fewshot.report import plots

    two = {"known": {"datasets": {"digits": {"acc1": 90.0}, "fashion": {"acc1": 70.0}}, "mean_acc1": 80.0}}
    one = {"known": {"datasets": {"digits": {"acc1": 91.0}}, "mean_acc1": 91.0}}
    note = plots.differing_datasets(["A", "B"], [two, one])
    assert "different datasets" in note and "all on digits; besides those, A: fashion; B: none" in note
    assert plots.differing_datasets(["A", "B"], [one, one]) == ""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: figures.append(fig) or out)
    plots.plot_accuracy_bars(["A", "B"], [two, one], tmp_path / "bars.png")
    plots.plot_accuracy_bars(["A", "B"], [one, one], tmp_path / "same.png")
    titles = [f._suptitle.get_text() if f._suptitle else "" for f in figures]
    assert "different datasets" in titles[0] and titles[1] == ""


def test_the_accuracy_bars_caption_names_only_what_the_runs_do_not_share():
    """10 runs on 12 datasets: the caption listed every run's every dataset (120 names). It names the datasets not
    every run has, per run, with runs of the same ones together and long lists shortened."""
    from fewshot.report import plots

    names = [f"dataset-{i:02d}" for i in range(12)]
    labels = [f"r{i}/finetune" for i in range(10)]
    metrics = [{"known": {"datasets": {n: {"acc1": 50.0} for n in names if n != "dataset-11" or i % 2}}}
               for i in range(10)]
    metrics[3]["known"]["datasets"].update({f"extra-{j}": {"acc1": 1.0} for j in range(6)})
    note = plots.differing_datasets(labels, metrics)
    assert "all on dataset-00, dataset-01, dataset-02 and 8 more; besides those," in note
    assert "r0/finetune, r2/finetune, r4/finetune, r6/finetune, r8/finetune: none" in note
    assert "r1/finetune, r5/finetune, r7/finetune, r9/finetune: dataset-11" in note
    assert "r3/finetune: dataset-11, extra-0, extra-1 and 4 more" in note
    assert sum(note.count(n) for n in names) == 5 and len(note) < 400


def test_the_test_table_says_which_scores_are_class_balanced(tmp_path):
    """"known 70.33" (class-balanced) stood next to "unknown 23.00" (plain argmax) with no word in the table."""
    from fewshot.report import tables as T
    from fewshot.report.pipeline_runs import _read_summary

    summary = {"balanced_prediction": {"setting": "auto", "datasets": {
        "digits": {"used": True, "val_plain": 60.0, "val_balanced": 62.0}, "fashion": {"used": False, "why": "off"}}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    read = _read_summary(tmp_path, [])
    assert read["balanced_datasets"] == ["digits"]
    test = {"datasets": {"digits": {"acc1": 70.33}}, "mean_acc1": 70.33}
    run = SimpleNamespace(kind="supervised", label="r1/finetune", path=Path("r1/finetune"), metrics_known=None,
                          metrics_unknown=None, from_log=False,
                          pipeline={"metrics": {"test": test, "test_unknown": {**test, "mean_acc1": 23.0}},
                                    "balanced_prediction": "class-balanced for digits",
                                    "balanced_datasets": ["digits"]})
    table = T.test_table(run)
    assert table.columns[2] == "known acc@1 (class-balanced)" and table.columns[4] == "unknown acc@1 (plain)"
    # two datasets, one balanced: its cells (and the mean they enter) are marked
    test2 = {"datasets": {"digits": {"acc1": 70.33}, "fashion": {"acc1": 60.0}}, "mean_acc1": 65.17}
    run.pipeline["metrics"] = {"test": test2, "test_unknown": test2}
    table = T.test_table(run)
    assert table.columns[2] == "known acc@1 (* class-balanced)"
    assert table.rows[0][2] == "70.33*" and table.rows[1][2] == "60.00" and table.rows[2][2] == "65.17*"
    run.pipeline.pop("balanced_datasets")  # a run without balanced predictions: the plain headers
    assert T.test_table(run).columns[2] == "known acc@1"
