"""`fewshot train`: start the job (threads, device, data, the run folder and its config), fit, write metrics.json.

The run folder's preparation is in run_dir.py and --resume's settings in resume_config.py; this module starts and
runs a fine-tuning job (start_job is shared with MoCo pretraining) and reports its final metrics.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch

from fewshot.config import CHOSEN, note_chosen, note_rechosen, run_time_values, save_yaml
from fewshot.data.fit import settle_fit
from fewshot.data.label_space import LabelSpace
from fewshot.data.layout import scan_root
from fewshot.data.skipped import write_skipped
from fewshot.errors import CheckpointError, UserError, one_line
from fewshot.eval.evaluate import format_table
from fewshot.eval.routing import routing_words
from fewshot.models.weights import weights_note
from fewshot.progress import set_enabled
from fewshot.train.distributed import check_same_data, check_same_settings, init_distributed
from fewshot.train.engine import Engine
from fewshot.train.resume_config import resumes_from_config
from fewshot.train.run_dir import RunStart, prepare_run_dir, undone_if_start_fails
from fewshot.train.start_checks import agree_on_checkpoint, check_resume_fits
from fewshot.train.supervised import SupervisedTask, check_same_classes, recipe_words, resolve_finetune_defaults
from fewshot.utils import resolve_device, seed_everything, write_json


def configure_threads(cfg: dict) -> None:
    """Threads (train.threads, None: one per core) and the allocator setting of fewshot.runtime."""
    from fewshot.runtime import configure_cpu

    configure_cpu(cfg["train"].get("threads"))


def warn_random_backbone_at_a_pretrained_lr(cfg: dict, given: str = "--weights FILE", file=None) -> None:
    """The course recipes (configs/course_*.yaml) are for pretrained backbones: lr 1e-4 with the backbone at 0.1x.
    Without --weights the random backbone barely moves at 1e-5 and the run quietly ends near a linear probe of
    random features. ``given``: what starts from pretrained weights (`fewshot run`: --pretrain too); an unset lr
    is the scratch rule's (resolve_finetune_defaults), so `fewshot run` can ask before its stages fill it in."""
    o = cfg["optim"]
    lr = 4e-3 if o["lr"] is None else float(o["lr"])
    mult = 1.0 if o["backbone_lr_mult"] is None else float(o["backbone_lr_mult"])
    if not cfg["model"]["weights"] and lr * mult < 1e-4:
        print(f"warning: the backbone starts from random init but trains at lr {lr * mult:g} (optim.lr "
              f"{lr:g} x backbone_lr_mult {mult:g}), a rate for pretrained weights. Pass "
              f"{given}, or train from scratch at the measured default (optim.lr=4e-3 "
              f"optim.backbone_lr_mult=1).", file=file or sys.stdout, flush=True)


def start_job(cfg: dict, out: Path, resume: bool, resolve_defaults, start: RunStart | None = None,
              kind: str = "supervised") -> tuple:
    """The start every training job shares (fine-tuning and MoCo): threads, device and process group, the
    job's defaults (``resolve_defaults(ctx, resuming)``), the datasets, the run directory and its config,
    the seed. ``start`` (undone_if_start_fails) records what the run directory held before; ``kind``: the task's
    (its checkpoints'). Returns (device, ctx, infos, resuming, ck): ``ck`` is last.pt (its tensors mapped) once
    its kind and process count fit, None where nothing is resumed or only some ranks resume (Engine.resume says
    it: a check by the resuming ranks alone would leave the others waiting in the next collective)."""
    set_enabled(bool(cfg["train"]["progress"]))
    configure_threads(cfg)
    device = resolve_device(cfg["train"]["device"])
    ctx, device = init_distributed(device)
    auto = cfg["train"]["device"] == "auto"
    # the device used, with its index (`cuda:1` was saved as `cuda`, and a --resume moved the run to GPU 0); under
    # torchrun each process has its own (LOCAL_RANK), so the type is what all of them share
    cfg["train"]["device"] = str(device) if device.index is not None and ctx.world == 1 else str(device.type)
    if auto:  # config.yaml saves the device used: given back, auto chooses again
        note_chosen(cfg, "train.device")
    # a record even if empty where this run writes the first config.yaml (also a --resume that starts fresh): a
    # run's config.yaml without one is taken for an older fewshot's, and a given --lr 0.004 or --device cpu there
    # for the run's choice
    if not (resume and resumes_from_config(out)):  # cfg is not the run's (merge_resume_config)
        cfg.setdefault(CHOSEN, {})
    if cfg["train"]["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
    last = Path(out) / "checkpoints" / "last.pt"
    resuming = resume and last.is_file()
    # the first collective, on every rank, of the settings as typed: resolve_defaults may refuse on one rank alone
    # (its --batch-size, its own weights file), and the others waited here without the settings' difference said;
    # other --datasets per rank were said as other data (check_same_data), and rank 0 had written its config.yaml
    alike = check_same_settings(ctx, cfg, resuming)
    resolve_defaults(ctx, resuming)
    # test/ too where it exists: its duplicate ids and sub-folders stopped predict only, after the training
    infos = scan_root(cfg["data"]["root"], cfg["data"]["datasets"], splits=("train", "val"), if_present=("test",))
    if not resuming:  # a resume's, once its checkpoint is read: the record it holds, and no note before a refusal
        settle_fit(cfg, infos)
    # with what resolve_defaults filled in from each node's own weights file (its network), in the same exchange
    # but train.amp, which the Engine resolves on rank 0 for every rank (a rank resuming a run that recorded its
    # choice read `off` where one without the run read `auto`, and the checkpoint check never spoke)
    check_same_data(ctx, infos, {k: v for k, v in run_time_values(cfg).items() if k != "train.amp"})
    prepare_run_dir(out, resume, cfg, ctx, start, kind)
    note_rechosen(cfg, say=ctx.is_main)  # a run's config.yaml as --config: what this command chose otherwise
    if ctx.is_main and not resuming:
        save_yaml(cfg, Path(out) / "config.yaml")  # a resumed run's is written once its checkpoint has loaded
    ck = None
    # its kind, then its process count, before the task is built: the settings checks building runs (shuffle-BN
    # groups against the batch size) answered another process count with advice that leads nowhere, and a moco
    # last.pt was counted as images. Read once, its tensors mapped; every rank reads it only where all resume, and
    # the ranks first agree that they read one file (agree_on_checkpoint)
    if resuming and alike:
        from fewshot.train.checkpoint import load_checkpoint
        from fewshot.train.resume import unreadable_last

        try:
            ck, unreadable = load_checkpoint(last, mmap=True), None
        except CheckpointError as exc:  # with the way forward: moved away, --resume starts the run over
            ck, unreadable = None, unreadable_last(exc, last)
        except (UserError, OSError) as exc:  # said after the other ranks heard of it: alone, they waited
            ck, unreadable = None, exc
        agree_on_checkpoint(ctx, last, ck, unreadable)
        if unreadable is not None:
            raise unreadable
        check_resume_fits(last, ck, kind, ctx.world)
    if resuming:
        then = ck.get("config") if ck is not None else None
        settle_fit(cfg, infos, then if isinstance(then, dict) else None, f"checkpoint {last}")
    seed_everything(cfg["train"]["seed"])
    return device, ctx, infos, resuming, ck


def run_finetune(cfg: dict, out: Path, resume: bool = False) -> dict:
    with undone_if_start_fails(out) as start:  # a bad model or weights file leaves no run folder behind
        device, ctx, infos, resuming, ck = start_job(cfg, out, resume,
                                                     lambda ctx, resuming: resolve_finetune_defaults(cfg, resuming),
                                                     start, "supervised")  # SupervisedTask.kind
        if ck is not None:  # from the folder listing, before the task decodes (and caches) the images it refuses
            check_same_classes(ck, LabelSpace.from_infos(infos), lambda: cfg["data"]["root"])
        task = SupervisedTask(cfg, infos, device, ctx, resuming=resuming)
        # refused before the start line, not after it, and after start_job's checks of its kind and process count
        # (Engine.resume makes them first too). Where only some ranks resume, ck is None: the ranks first agree on
        # one last.pt in Engine.resume (the ranks that resume stopped here while the others waited in DDP's set-up)
        saved_amp = None
        if ck is not None:
            task.check_resumable(ck)
            saved_amp = ck.get("amp")
            del ck  # its tensors mapped: Engine.resume reads the file again
        engine = Engine(task, cfg, out, device, ctx)
        engine.keep_resolved_amp(saved_amp)  # before the header, which names the arithmetic
        announce_finetune(cfg, out, task, engine, device, ctx)
    engine.fit(resume=resume)
    metrics = final_metrics(engine, task, out)
    if ctx.is_main:
        from fewshot.report.plots import plot_train_curves

        plot_train_curves(Path(out))  # SPEC: a run directory holds plots/ (`fewshot run`'s report draws its own)
    return metrics


def announce_finetune(cfg: dict, out: Path, task: SupervisedTask, engine: Engine, device, ctx) -> None:
    """The start's lines (rank 0): what is trained on what, and the warnings about settings that learn little;
    skipped_images.json."""
    if ctx.is_main:
        pool_skipped = task.unlabeled.skipped if task.unlabeled is not None else []  # FixMatch's pool
        write_skipped(out, task.train_set.skipped + task.val_set.skipped + pool_skipped)
        processes = f" x{ctx.world}" if ctx.world > 1 else ""  # as pretrain's line says it (docs/performance.md)
        print(one_line(f"fine-tuning {cfg['model']['name']} ({task.n_parameters:,} parameters)"
                       f"{weights_note(task.weights_loaded, cfg['model']['weights'])} on "
                       f"{', '.join(task.space.names)}: {task.space.num_classes} "
                       f"class{'es' if task.space.num_classes != 1 else ''}, {len(task.train_set)} train / "
                       f"{len(task.val_set)} val images at {task.size}px{size_note(cfg)} on {device}{processes} "
                       f"({engine.precision}); run directory {out}"))
        if task.unlabeled is not None:
            from fewshot.train.semi import fixmatch_note

            print(one_line(fixmatch_note(task.unlabeled.summary, task.unlabeled.without_pool)))
        warn_random_backbone_at_a_pretrained_lr(cfg)
        recipe = recipe_words(cfg)
        if recipe:  # the lr a --weights file took, as `fewshot run`'s line says it
            print(one_line(f"note: --weights {cfg['model']['weights']} is {recipe}."), flush=True)
        if cfg["train"]["compile"] is True:  # it was accepted and silently ignored (auto: no word, as documented)
            print("note: train.compile applies to MoCo pretraining only; fine-tuning runs eagerly.", flush=True)
        left_out = task.datasets_left_out()
        if left_out:
            print(one_line(f"warning: {', '.join(left_out)} never reach(es) a training batch: with data.sampler="
                           f"{cfg['data']['sampler']} on {ctx.world} process(es) each of its batches would give a "
                           f"process fewer than 2 images, which BatchNorm cannot train on. Use data.sampler=shuffle, "
                           f"fewer processes, or more images."), file=sys.stderr)
        if task.space.num_classes == 1:  # the loss is 0 from the first step: a silent run that learns nothing
            print(one_line(f"warning: {task.space.names[0]} has one class and no other dataset is trained with it: "
                           f"the loss is 0 and nothing is learned; every image is predicted as "
                           f"{task.space.classes[0][0]!r}. Add classes or datasets (--datasets)."), file=sys.stderr)


def size_note(cfg: dict) -> str:
    """Why the input size is what it is when the user did not choose one: a model's default (often 224 px) costs
    10-50x the compute of the 32-64 px that small images need, and `fewshot run` picks smaller sizes by itself."""
    if cfg["model"].get("img_size") is not None:
        return ""
    return " (the model's default input size; --img-size sets it)"


def load_best_checkpoint(model, out: Path) -> dict:
    """Load into ``model`` the weights a run's metrics belong to: best.pt (its EMA when it has one), else
    last.pt. Returns the checkpoint."""
    from fewshot.train.checkpoint import load_checkpoint

    best = Path(out) / "checkpoints" / "best.pt"
    ck = load_checkpoint(best if best.is_file() else Path(out) / "checkpoints" / "last.pt")
    model.load_state_dict(ck["ema"] if ck.get("ema") is not None else ck["model"])
    return ck


def chosen_weights(ck: dict) -> str:
    """Which weights a checkpoint's readers take: "ema" or "raw" (best.pt says; older ones hold the EMA's if any)."""
    return ck.get("weights") or ("ema" if ck.get("ema") is not None else "raw")


def final_metrics(engine: Engine, task: SupervisedTask, out: Path) -> dict:
    """Evaluate the best checkpoint on val in both modes; metrics.json holds the configured mode."""
    from fewshot.train.checkpoint import logged_epoch

    if not engine.ctx.is_main:
        return {}
    model = task.model
    ck = load_best_checkpoint(model, out)
    best_epoch = logged_epoch(ck)
    result = task.evaluate(model, best_epoch)
    mode = task.cfg["train"]["eval_mode"]
    metrics = dict(result["val"][mode])
    weights = chosen_weights(ck)
    compared, last_score = val_scores_logged(Path(out))
    metrics.update({"split": "val", "best_epoch": best_epoch, "weights": weights, "val_scores_compared": compared})
    if task.unlabeled is not None:  # what the unlabeled pool added to the labelled images
        metrics["semi"] = task.unlabeled.summary
    write_json(Path(out) / "metrics.json", metrics)
    for m in ("known", "unknown"):
        write_json(Path(out) / f"metrics_{m}.json", {**result["val"][m], "split": "val", "best_epoch": best_epoch,
                                                     "weights": weights})  # as metrics.json says it
    # the table is of train.eval_mode, the mode metrics.json holds and the best epoch was chosen by
    print(format_table(metrics, title=f"val accuracy, best epoch {best_epoch}, {weights} weights"
                                      f"{best_of_words(compared, len(task.val_set), last_score)}"))
    if weights == "raw" and task.cfg["train"]["ema"]:
        print("note: best.pt holds the raw (non-EMA) weights: they scored higher on val than the EMA's (log.jsonl: "
              "score_raw, score_ema); eval, predict and export use them.", flush=True)
    if mode == "known":
        print(f"unknown-source: mean acc@1 {result['val']['unknown']['mean_acc1']:.2f}, "
              f"{routing_words(result['val']['unknown'])}")
    else:
        print(f"known-source: mean acc@1 {result['val']['known']['mean_acc1']:.2f}")
    return metrics


def val_scores_logged(out: Path) -> tuple[int, float | None]:
    """How many val scores best.pt was chosen among (log.jsonl's evaluations; raw and EMA weights each count) and
    the last evaluation's score: the best of many scores of a small val is a maximum, above what new images give
    (4 classes x 10 val images: best of 130 scores 77.5, test 57.5)."""
    compared, last = 0, None
    with contextlib.suppress(OSError):
        for line in (out / "log.jsonl").read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and isinstance(row.get("score"), (int, float)):
                    compared += 1 + (row.get("score_raw") is not None and row.get("score_ema") is not None)
                    last = float(row["score"])
    return compared, last


def best_of_words(compared: int, images: int, last_score: float | None) -> str:
    """The table title's note that its figure is a maximum (none where only one score was taken)."""
    if compared < 2:
        return ""
    last = f"; the last evaluation {last_score:.2f}" if last_score is not None else ""
    return f": the best of {compared} val scores of {images} images (a maximum: optimistic{last})"
