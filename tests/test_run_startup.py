"""`fewshot run`'s start-up before the first training step: every second of it is a second less of training in the
budget, so no work is done twice. The MoCo stage built its task (model, augmentation, the pool read from its cache)
once only to count the pool and then again with the queue sized from it."""

from __future__ import annotations

import fewshot.run_stages as run_stages
import fewshot.run_startup as run_startup
from fewshot.cli import main
from helpers.run_patch import patch_pipeline


class Planned(Exception):
    """Stops the run at the MoCo stage's planning: the task is built by then."""


def run_words(root, out, *extra) -> list:
    return ["run", "--data", root, "--out", out, "--budget-minutes", "1", "--model", "test_resnet",
            "--img-size", "32", "--no-progress", "--pretrain", *extra]


def built_moco_tasks(monkeypatch) -> list:
    """Record every MoCoTask the run builds, and stop the run where its stage is planned (before any timing; the
    CLI reports the stop as an internal error, and the tasks are what the test reads)."""
    import fewshot.ssl.pretrain as pretrain

    built, real = [], pretrain.MoCoTask

    def build(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    def plan_stage(task, cfg, *args, **kwargs):
        raise Planned

    monkeypatch.setattr(pretrain, "MoCoTask", build)
    monkeypatch.setattr(run_stages, "plan_stage", plan_stage)
    return built


def half_the_pool(task) -> int:
    """The queue the MoCo stage sizes from its pool (run.queue_size unset)."""
    batch = task.cfg["train"]["batch_size"]
    return int(max(batch, min(4096, len(task.pool) // 2)))  # never under one step's keys


def test_the_moco_task_is_built_once_with_its_queue_sized_from_the_pool(digits_root, tmp_path, monkeypatch):
    built = built_moco_tasks(monkeypatch)
    main(run_words(digits_root, tmp_path / "out"))
    assert len(built) == 1
    task = built[0]
    assert task.model.K == half_the_pool(task) == task.cfg["moco"]["queue_size"] < 4096


def test_a_pool_counted_otherwise_at_start_up_still_gives_the_queue_of_the_pool_read(digits_root, tmp_path,
                                                                                    monkeypatch):
    counted = run_startup.check_pool_images

    def miscounted(*args, **kwargs):  # the pool changed between start-up's count and the stage
        skipped, n = counted(*args, **kwargs)
        return skipped, n + 1000

    patch_pipeline(monkeypatch, "check_pool_images", miscounted)
    built = built_moco_tasks(monkeypatch)
    main(run_words(digits_root, tmp_path / "out"))
    assert len(built) == 2  # built again, as the stage's own count of the pool asks
    assert built[-1].model.K == half_the_pool(built[-1]) == built[-1].cfg["moco"]["queue_size"]


def test_a_queue_size_given_is_kept(digits_root, tmp_path, monkeypatch):
    built = built_moco_tasks(monkeypatch)
    main(run_words(digits_root, tmp_path / "out", "run.queue_size=96"))
    assert len(built) == 1 and built[0].model.K == 96
