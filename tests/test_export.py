"""`fewshot export` round trip: a tiny MoCo run -> backbone.safetensors -> timm and `fewshot train --weights`."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from fewshot.cli import TRAIN_FLAGS, main, resolve_run_config
from fewshot.cli_parser import build_parser
from fewshot.data.layout import scan_root
from fewshot.train.checkpoint import load_checkpoint
from fewshot.train.distributed import DistContext
from fewshot.train.engine import Engine
from fewshot.train.supervised import SupervisedTask, resolve_finetune_defaults
from helpers.tiny import build_digits

NAME = "test_resnet"
TINY = ["--model", NAME, "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
        "train.tensorboard=false", "train.threads=1", "train.deterministic=true"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    root = build_digits(tmp / "data")
    run = tmp / "pre"
    assert main(["pretrain", "--data", str(root), "--out", str(run), "--queue-size", "64", *TINY,
                 "moco.split_bn_groups=2", "moco.knn_k=5"]) == 0
    path = tmp / "bb.safetensors"
    assert main(["export", str(run), "--out", str(path)]) == 0
    return root, run, path


def encoder_q_backbone(run: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    prefix = "encoder_q.backbone."
    return {k[len(prefix):]: v for k, v in ck["model"].items() if k.startswith(prefix)}


def test_export_keys_are_timm_keys(exported):
    _, run, path = exported
    state = load_file(str(path))
    for bad in ("encoder_q.", "encoder_k.", "module.", "head.", "backbone."):
        assert not any(k.startswith(bad) for k in state), bad
    assert set(state) == set(timm.create_model(NAME, num_classes=0).state_dict())
    expected = encoder_q_backbone(run)
    assert set(state) == set(expected)
    for k, v in state.items():
        assert torch.equal(v, expected[k]), k
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["model"] == NAME and meta["epoch"] == "1" and meta["img_size"] == "32"


def test_timm_loads_the_export_without_a_classifier(exported):
    _, run, path = exported
    model = timm.create_model(NAME, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path)))
    expected = encoder_q_backbone(run)
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for k, v in expected.items():
        assert torch.equal(loaded[k], v), k


def test_timm_with_its_default_classifier(exported):
    """With the default num_classes (1000, the same as test_resnet's pretrained_cfg) timm's
    load_pretrained keeps strict=True, so the absent classifier fails the load:
    timm/models/_builder.py load_pretrained: `if num_classes != pretrained_cfg['num_classes']:` drops the
    classifier keys and sets strict=False only for a different class count; otherwise
    `model.load_state_dict(state_dict, strict=True)` raises. Any other num_classes loads the backbone
    and leaves a freshly initialised classifier."""
    _, run, path = exported
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "fc.weight", "fc.bias"'):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    model = timm.create_model(NAME, pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
    loaded = model.state_dict()
    assert loaded["fc.weight"].shape == (10, model.num_features)
    for k, v in encoder_q_backbone(run).items():
        assert torch.equal(loaded[k], v), k


def train_config(root: Path, out: Path, weights: Path, *extra: str) -> dict:
    args, rest = build_parser().parse_known_args(["train", "--data", str(root), "--out", str(out), "--weights",
                                                  str(weights), *TINY, *extra])
    return resolve_run_config(args, rest, TRAIN_FLAGS)


def test_train_with_weights_starts_from_them_at_the_course_lr(exported, tmp_path):
    root, _, path = exported
    # a fewshot export fine-tunes at run.finetune_lr, backbone x1 (hunt hBW #2); the course recipe, given, still runs
    assert resolve_finetune_defaults(train_config(root, tmp_path / "ft", path))["optim"]["lr"] == 2e-3
    cfg = resolve_finetune_defaults(train_config(root, tmp_path / "ft", path, "optim.lr=1e-4",
                                                 "optim.backbone_lr_mult=0.1"))
    assert cfg["model"]["weights"] == str(path)
    assert cfg["optim"]["lr"] == 1e-4 and cfg["optim"]["backbone_lr_mult"] == 0.1
    infos = scan_root(str(root), None, splits=("train", "val"))
    torch.manual_seed(123)
    task = SupervisedTask(cfg, infos, torch.device("cpu"), DistContext())
    weights = load_file(str(path))
    own = task.model.backbone.state_dict()
    assert set(own) == set(weights)
    for k, v in weights.items():
        assert torch.equal(own[k], v), k

    backbone_ids = {id(p) for p in task.model.backbone.parameters()}
    for group in task.param_groups():
        in_backbone = {id(p) in backbone_ids for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr_scale"] == (0.1 if in_backbone.pop() else 1.0)

    # the optimizer really runs the backbone at 0.1x the head's lr; at the end of the 1-epoch
    # warm-up of a 10-epoch run the cosine is at t = 1/10 (timm, warmup_prefix=False)
    cfg["train"]["epochs"] = 10
    engine = Engine(task, cfg, tmp_path / "ft", torch.device("cpu"), DistContext())
    engine.scheduler.step_update(engine.steps_per_epoch)
    head = 1e-5 + 0.5 * (1e-4 - 1e-5) * (1 + math.cos(math.pi * 0.1))
    for g in engine.optimizer.param_groups:
        assert g["lr"] == pytest.approx(head * g["lr_scale"], rel=1e-9)
    assert {g["lr_scale"] for g in engine.optimizer.param_groups} == {0.1, 1.0}


def test_explicit_lr_overrides_the_weights_default(exported, tmp_path):
    root, _, path = exported
    cfg = resolve_finetune_defaults(train_config(root, tmp_path / "ft", path, "--lr", "3e-4",
                                                 "optim.backbone_lr_mult=0.5"))
    assert cfg["optim"]["lr"] == 3e-4 and cfg["optim"]["backbone_lr_mult"] == 0.5


def test_cli_train_with_exported_weights(exported, tmp_path):
    root, _, path = exported
    out = tmp_path / "ft"
    assert main(["train", "--data", str(root), "--out", str(out), "--weights", str(path), *TINY]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # a fewshot export: the small-data recipe `run --pretrain` fine-tunes its own export at (hunt hBW #2)
    assert saved["optim"]["lr"] == 2e-3 and saved["optim"]["backbone_lr_mult"] == 1.0
    assert saved["model"]["weights"] == str(path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["datasets"]["digits"]["n"] == 30


@pytest.mark.parametrize("head", ["linear", "prototype"])
def test_probe_of_the_exported_backbone_writes_metrics_per_dataset(exported, tmp_path, head, capsys):
    root, _, path = exported
    out = tmp_path / "probe"
    assert main(["probe", "--weights", str(path), "--model", NAME, "--data", str(root), "--img-size", "32",
                 "--device", "cpu", "--epochs", "20", "--head", head, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "known" and metrics["routing_acc"] is None
    assert metrics["protocol"] == ("linear probe" if head == "linear" else "prototype (SimpleShot)")
    digits = metrics["datasets"]["digits"]
    assert digits["n"] == 30 and 0.0 <= digits["acc1"] <= 100.0 and digits["acc5"] >= digits["acc1"]
    assert metrics["protocol"] in capsys.readouterr().out


def test_export_refuses_an_out_inside_the_runs_data_splits(exported, tmp_path):
    """`export RUN --out ROOT/digits/train/new/bb.safetensors` made a class folder without images, and every later
    command on ROOT refused it."""
    import shutil

    root, run, _ = exported
    new = root / "digits" / "train" / "new"
    try:
        assert main(["export", str(run), "--out", str(new / "bb.safetensors")]) == 2
        assert not new.exists()
    finally:  # the module's data stays usable even when the check fails
        shutil.rmtree(new, ignore_errors=True)
    assert main(["export", str(run), "--out", str(tmp_path / "bb.safetensors")]) == 0


def test_a_small_stem_wide_export_is_rebuilt_from_its_metadata(exported, tmp_path, capsys):
    """model.width / model.small_stem travel in the export: train, predict and probe rebuild the same
    network from the file alone, and the fine-tuning run's config records them."""
    root = exported[0]
    run, path = tmp_path / "pre", tmp_path / "bb.safetensors"
    small = ("--img-size", "16")  # a small stem at 32 px sees 64 px maps: the size is not the subject
    assert main(["pretrain", "--data", str(root), "--out", str(run), "--queue-size", "64", *TINY, *small,
                 "moco.split_bn_groups=2", "moco.knn_k=5", "model.width=2.0", "model.small_stem=true"]) == 0
    assert main(["export", str(run), "--out", str(path)]) == 0
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["width"] == "2.0" and meta["small_stem"] == "true"
    assert load_file(str(path))["layer1.0.conv1.weight"].shape[0] == 64  # test_resnet's 32, doubled

    out = tmp_path / "ft"
    capsys.readouterr()
    # an explicit model.small_stem=false cannot hold (the file's tensors fit no other stem): taken, and said (a hunt:
    # it was replaced without a word)
    assert main(["train", "--data", str(root), "--out", str(out), "--weights", str(path), *TINY, *small,
                 "model.small_stem=false"]) == 0
    err = capsys.readouterr().err
    assert f"note: the network is built with width=2.0 and small_stem=true, as {path} records" in err, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["width"] == 2.0 and saved["model"]["small_stem"] is True
    own = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert own["backbone.layer1.0.conv1.weight"].shape[0] == 64
    path.rename(tmp_path / "moved.safetensors")  # prediction needs only the run
    assert main(["predict", str(out), "--data", str(root), "--out", str(tmp_path / "pred.json"),
                 "--device", "cpu"]) == 0
    assert main(["probe", "--weights", str(tmp_path / "moved.safetensors"), "--model", NAME, "--data", str(root),
                 *small, "--device", "cpu", "--epochs", "5"]) == 0


def test_pretrain_refuses_one_sample_per_split_bn_group(exported, tmp_path, capsys):
    """--batch-size 8 with the default 8 split-BN groups used to crash inside BatchNorm (exit 1)."""
    root, _, _ = exported
    code = main(["pretrain", "--data", str(root), "--out", str(tmp_path / "pre"), "--queue-size", "64", *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "split_bn_groups=8" in err and "Traceback" not in err


def test_pretrain_refuses_augmentation_settings_out_of_range(exported, tmp_path, capsys):
    root, _, _ = exported
    code = main(["pretrain", "--data", str(root), "--out", str(tmp_path / "pre"), "--queue-size", "64", *TINY,
                 "moco.split_bn_groups=2", "aug.gray_p=1.5"])
    err = capsys.readouterr().err
    assert code == 2 and "gray_p must be in [0, 1]" in err and "Traceback" not in err


def load_file_metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_an_export_under_another_name_is_still_read_as_safetensors(exported, tmp_path, capsys):
    """`fewshot export --out bb.pt` writes safetensors; reading by suffix sent it to torch.load, which
    called it a pickle with Python objects. It is recognised by its content, metadata included."""
    from fewshot.models.weights import architecture_of, read_tensor_file

    _, run, reference = exported
    path = tmp_path / "bb.pt"
    assert main(["export", str(run), "--out", str(path)]) == 0
    assert "only treats names ending in .safetensors" in capsys.readouterr().err  # timm's rule, said once
    got, want = read_tensor_file(path), load_file(str(reference))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    arch = architecture_of(path)
    assert {k: arch[k] for k in ("width", "small_stem", "model")} == {"width": 1.0, "small_stem": False,
                                                                     "model": "test_resnet"}
    assert arch["img_size"] == int(load_file_metadata(reference)["img_size"])  # what `train --weights` adopts
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")  # a real torch file is not mistaken for one
    assert torch.equal(read_tensor_file(tmp_path / "plain.pt")["w"], torch.ones(2))


def test_pretrain_run_directory_has_the_spec_files(exported):
    """SPEC: a run directory holds config.yaml, log.jsonl, metrics.json, checkpoints/, plots/; a MoCo run's
    metrics.json is the kNN monitor of its best checkpoint, in the same format as fine-tuning's."""
    root, run, _ = exported
    for name in ("config.yaml", "log.jsonl", "metrics.json", "checkpoints/last.pt", "checkpoints/best.pt",
                 "plots/pretrain_curves.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"mode", "n_parameters", "mean_acc1", "datasets", "routing_acc"} <= set(metrics)
    assert metrics["mode"] == "known" and metrics["routing_acc"] is None and metrics["n_parameters"] > 0
    assert set(metrics["datasets"]) == {"digits"}
    d = metrics["datasets"]["digits"]
    assert set(d) == {"acc1", "acc5", "n"} and d["n"] == 30 and 0 <= d["acc1"] <= d["acc5"] <= 100
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    best = [r for r in logged if r["epoch"] == metrics["best_epoch"]][0]
    assert d["acc1"] == pytest.approx(best["knn_acc1"]["digits"])  # the best checkpoint, re-measured


def test_non_strict_loading_says_what_it_left_out_and_refuses_a_file_that_loads_nothing(tmp_path, capsys):
    """model.strict=false used to load whatever matched, possibly nothing, without a word (and the
    pretrained-weights defaults then fine-tuned a random backbone at lr 1e-4)."""
    from safetensors.torch import save_file

    from fewshot.errors import CheckpointError
    from fewshot.models.backbone import create_backbone
    from fewshot.models.weights import load_backbone_weights

    own = create_backbone(NAME).state_dict()
    save_file({"backbone.0.weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))  # e.g. lightly's keys
    with pytest.raises(CheckpointError, match="none of its 1 tensor"):
        load_backbone_weights(create_backbone(NAME), tmp_path / "other.safetensors", strict=False)
    save_file({k: v for k, v in own.items() if not k.startswith("layer1")}, str(tmp_path / "part.safetensors"))
    out = load_backbone_weights(create_backbone(NAME), tmp_path / "part.safetensors", strict=False)
    assert out["missing"] and "left at random init (layer1." in capsys.readouterr().err
    # BatchNorm's step counters are not weights: a file without them still loads strictly
    save_file({k: v for k, v in own.items() if not k.endswith("num_batches_tracked")}, str(tmp_path / "nbt.safetensors"))
    assert load_backbone_weights(create_backbone(NAME), tmp_path / "nbt.safetensors", strict=True)["missing"] == []


def test_weights_from_a_fine_tuning_checkpoint_are_its_ema_weights():
    """Evaluation, best.pt and export use the EMA; `--weights RUN/checkpoints/best.pt` took the raw ones."""
    from fewshot.models.weights import backbone_state_from

    ck = {"format": "fewshot-checkpoint", "kind": "supervised", "model": {"backbone.w": torch.zeros(2)},
          "ema": {"backbone.w": torch.ones(2)}}
    assert torch.equal(backbone_state_from(ck, Path("x"))["w"], torch.ones(2))
    ck["ema"] = None
    assert torch.equal(backbone_state_from(ck, Path("x"))["w"], torch.zeros(2))


def test_vit_weights_of_another_image_size_load_with_a_resampled_position_embedding(tmp_path):
    """ImageNet ViT weights (224 px) were refused at --img-size 64/160 (pos_embed has one entry per patch);
    they are resampled to the model's patch grid as timm does, the other tensors load unchanged."""
    from safetensors.torch import save_file

    from fewshot.models.backbone import create_backbone
    from fewshot.models.weights import load_backbone_weights

    big = create_backbone("test_vit", img_size=64)
    save_file({k: v.contiguous() for k, v in big.state_dict().items()}, str(tmp_path / "vit64.safetensors"))
    small = create_backbone("test_vit", img_size=32)
    assert small.pos_embed.shape != big.pos_embed.shape
    load_backbone_weights(small, tmp_path / "vit64.safetensors", strict=True)
    assert torch.equal(small.pos_embed[:, :1], big.pos_embed[:, :1])  # the class token's entry is kept
    assert torch.equal(small.patch_embed.proj.weight, big.patch_embed.proj.weight)
    from timm.layers import resample_abs_pos_embed  # what timm's own checkpoint filter does

    assert torch.allclose(small.pos_embed, resample_abs_pos_embed(big.pos_embed.detach(), new_size=[2, 2]))


def test_probe_refuses_weights_that_give_non_finite_features(exported, tmp_path, capsys):
    """A NaN weights file used to be probed to chance accuracy with exit 0."""
    from safetensors.torch import save_file

    root, _, path = exported
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}
    bad = tmp_path / "nan.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    rc = main(["probe", "--weights", str(bad), "--model", NAME, "--data", str(root), "--img-size", "32",
               "--device", "cpu", "--epochs", "2", "--out", str(tmp_path / "probe")])
    err = capsys.readouterr().err
    assert rc == 2 and "holds NaN or infinite values" in err and str(bad) in err
    assert main(["probe", "--weights", str(tmp_path), "--model", NAME, "--data", str(root)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_an_unfinished_pipeline_folder_names_its_stages(tmp_path):
    """`fewshot eval/predict/export` on the top folder of a stopped `fewshot run` (no summary.json yet) said
    only "no checkpoint in run directory"; it now lists the stage folders that hold checkpoints."""
    from fewshot.errors import CheckpointError
    from fewshot.train.checkpoint import resolve_checkpoint

    for stage in ("finetune_labelled", "finetune"):
        (tmp_path / stage / "checkpoints").mkdir(parents=True)
        (tmp_path / stage / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"did not finish .*finetune, .*finetune_labelled; pass one of them"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"expected checkpoints/best.pt or last.pt\)\.$"):
        resolve_checkpoint(tmp_path / "empty" / "checkpoints")  # a folder without stages: as before
    # a stage's checkpoints/ holding last.pt resolves as the stage would (test_fds_predict_inputs)
    last = tmp_path / "finetune_labelled" / "checkpoints" / "last.pt"
    assert resolve_checkpoint(tmp_path / "finetune_labelled" / "checkpoints") == last


def test_fine_tuning_from_an_export_adopts_its_image_size_and_names_its_model(exported, tmp_path, capsys):
    """An export records the size its features were learnt at and its model: `train --weights` used the model's
    ImageNet default size instead (224 for 28 px images), and a wrong --model got a key list without the name."""
    root, _, path = exported
    run = tmp_path / "ft"
    assert main(["train", "--data", str(root), "--out", str(run), "--weights", str(path), "--model", NAME,
                 "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
                 "train.tensorboard=false"]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["img_size"] == 32
    capsys.readouterr()
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "wrong"), "--weights", str(path),
                 "--model", "resnet18", "--epochs", "1", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"The file records the model '{NAME}': pass --model {NAME}." in err, err


def test_the_timm_call_that_export_prints_loads_the_file(exported, tmp_path):
    """The README says "loadable by timm"; the plain call needs num_classes=0 (the file has no classifier):
    export prints the call, and that call must work as printed."""
    import contextlib
    import io
    import re

    _, run, _ = exported
    path = tmp_path / "again.safetensors"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["export", str(run), "--out", str(path)]) == 0
    call = re.search(r"in plain timm: (timm\.create_model\(.*\))$", buf.getvalue(), re.M).group(1)
    model = eval(call, {"timm": timm})  # noqa: S307 - our own printed line
    state = load_file(str(path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_fewshot_checkpoint_as_weights_brings_its_image_size_and_model(exported, tmp_path):
    """`train --weights RUN/checkpoints/best.pt` of a 32 px run fine-tuned at the model's default 160 px (10 %
    against 93 % from the export of the same run): the checkpoint's own record is read as an export's is."""
    from fewshot.models.backbone import adopt_weights_architecture
    from fewshot.models.weights import architecture_of

    last = exported[1] / "checkpoints" / "last.pt"
    arch = architecture_of(last)
    assert arch["img_size"] == 32 and arch["model"] == NAME and arch["width"] == 1.0 and arch["small_stem"] is False
    assert adopt_weights_architecture({"name": NAME, "weights": str(last), "img_size": None})["img_size"] == 32
    # a run saved before checkpoints were read so (img_size null: the model's default) resumes at its own size
    cfg = resolve_run_config(*build_parser().parse_known_args(["train", "--data", "x", "--out", "y",
                                                               "--weights", str(last), "--model", NAME]), TRAIN_FLAGS)
    saved = copy.deepcopy(cfg)
    assert resolve_finetune_defaults(saved, resuming=True)["model"]["img_size"] is None
    assert resolve_finetune_defaults(cfg)["model"]["img_size"] == 32


def test_another_models_width_and_stem_are_not_adopted(tmp_path):
    """An export of a half-width small-stem resnet18 given to a ViT: the error blamed model.width / small_stem,
    which the user never set; now the load names the file's model."""
    from safetensors.torch import save_file

    from fewshot.models.backbone import adopt_weights_architecture

    path = tmp_path / "r18.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), metadata={"model": "resnet18", "width": "0.5", "small_stem": "true",
                                                         "img_size": "32"})
    vit = adopt_weights_architecture({"name": "test_vit", "weights": str(path), "img_size": None, "width": 1.0})
    assert vit["width"] == 1.0 and not vit.get("small_stem") and vit["img_size"] is None  # nothing of its record
    r18 = adopt_weights_architecture({"name": "resnet18", "weights": str(path), "img_size": None, "width": 1.0})
    assert r18["width"] == 0.5 and r18["small_stem"] is True


def test_export_refuses_to_write_into_the_runs_checkpoints(exported, tmp_path, capsys):
    """`export RUN --out RUN/checkpoints/best.pt` replaced the run's checkpoint with a backbone file (exit 0)."""
    run = exported[1]
    before = (run / "checkpoints" / "last.pt").read_bytes()
    assert main(["export", str(run), "--out", str(run / "checkpoints" / "last.pt")]) == 2
    assert "would write into the checkpoints folder it exports from" in capsys.readouterr().err
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    loose = tmp_path / "moco.pt"  # a checkpoint copied out of its run: the export may go beside it
    loose.write_bytes(before)
    assert main(["export", str(loose), "--out", str(tmp_path / "backbone.safetensors")]) == 0
    assert main(["export", str(loose), "--out", str(loose)]) == 2


def test_train_resumes_after_its_weights_file_is_gone_and_export_says_when_there_is_no_best(exported, tmp_path,
                                                                                               capsys, monkeypatch):
    """--resume loaded model.weights before last.pt replaced them, so a deleted weights file ("weights file not
    found") made a stopped run impossible to resume; the same file named from another folder "changed" them
    (the path was recorded as typed). The start-up line says what was loaded (it said nothing of the weights)."""
    root, _, path = exported
    weights = tmp_path / "copy.safetensors"
    weights.write_bytes(path.read_bytes())
    run = tmp_path / "ft"
    assert main(["train", "--data", str(root), "--out", str(run), "--weights", str(weights), *TINY]) == 0
    n = sum(not k.endswith("num_batches_tracked") for k in load_file(str(path)))  # counters are no weights
    assert f"from weights {weights} ({n} of {n} weights)" in capsys.readouterr().out
    weights.unlink()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    argv = ["train", "--data", str(root), "--out", str(run), "--weights", "../copy.safetensors", "--resume", *TINY]
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv) == 0, capsys.readouterr().err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    (run / "checkpoints" / "best.pt").unlink()
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "bb.safetensors")]) == 0
    assert "has no best.pt" in capsys.readouterr().err


def test_pretrain_resumes_after_its_weights_file_is_gone(exported, tmp_path, capsys):
    """As `train --resume`: last.pt replaces model.weights, which MoCo still loaded first ("weights file not
    found" once the file was deleted)."""
    root, _, path = exported
    weights = tmp_path / "copy.safetensors"
    weights.write_bytes(path.read_bytes())
    run = tmp_path / "pre"
    argv = ["pretrain", "--data", str(root), "--out", str(run), "--queue-size", "64", "--weights", str(weights),
            *TINY, "moco.split_bn_groups=2", "moco.knn_k=5"]
    assert main(argv) == 0
    assert f"from weights {weights} (" in capsys.readouterr().out
    weights.unlink()
    argv[argv.index("--epochs") + 1] = "2"
    assert main([*argv, "--resume"]) == 0, capsys.readouterr().err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


def test_export_of_a_moco_run_names_the_best_knn_epoch_when_it_is_not_the_last(exported, tmp_path, capsys):
    """metrics.json, compare and report show the best kNN epoch's accuracy; export takes the last epoch, as
    MoCo does (a long-run hunt read 80 % and exported weights of 60 %). Say so where the two differ."""
    import json
    import shutil

    run = tmp_path / "pre"
    shutil.copytree(exported[1], run)
    metrics = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "a.safetensors")]) == 0
    assert "note: exporting the last epoch" not in capsys.readouterr().out  # a 1-epoch run: best is last
    metrics["best_epoch"] = 7
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert main(["export", str(run), "--out", str(tmp_path / "b.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "note: exporting the last epoch (1), as MoCo does" in out and "epoch 7" in out
    assert str(run / "checkpoints" / "best.pt") in out


def test_export_numbers_a_mid_epoch_checkpoint_s_epoch_as_predict_and_compare_do(exported, tmp_path, capsys):
    """A budget stop mid-epoch saved epoch 6 and step 2 of epoch 7: predict and compare said epoch 7, export
    printed and recorded epoch 6."""
    import shutil

    from safetensors import safe_open

    from fewshot.train.checkpoint import save_checkpoint

    run = tmp_path / "pre"
    shutil.copytree(exported[1], run)
    last = run / "checkpoints" / "last.pt"
    ck = load_checkpoint(last)
    ck["epoch"], ck["step_in_epoch"] = 6, 2
    save_checkpoint(last, ck)
    (run / "metrics.json").unlink()  # no best-epoch note in the way
    out = tmp_path / "mid.safetensors"
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert "epoch 7)" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["epoch"] == "7"


def test_probe_refuses_a_runs_folder_as_out_settings_out_of_range_and_names_the_files_model(exported, tmp_path,
                                                                                            capsys):
    """A probe hunt: `probe --out RUN` replaced the run's metrics.json (exit 0); `--epochs 0` reported an untrained
    head; `--img-size 2000` was taken (train refuses it); a small-stem file of another model was answered with
    "model.small_stem applies to timm ResNets", an option probe does not have."""
    from safetensors.torch import save_file

    root, run, path = exported
    base = ["probe", "--weights", str(path), "--model", NAME, "--data", str(root), "--device", "cpu"]
    before = (run / "metrics.json").read_bytes()
    assert main([*base, "--img-size", "32", "--epochs", "2", "--out", str(run)]) == 2
    assert "holds a run" in capsys.readouterr().err and (run / "metrics.json").read_bytes() == before
    for flag, value in (("--epochs", "0"), ("--epochs", "-1"), ("--img-size", "2000"), ("--img-size", "-3")):
        with pytest.raises(SystemExit) as exc:
            main([*base, flag, value])
        assert exc.value.code == 2 and flag in capsys.readouterr().err
    stem = tmp_path / "stem.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = {**fh.metadata(), "small_stem": "true"}
    save_file(load_file(str(path)), str(stem), metadata=meta)
    rc = main(["probe", "--weights", str(stem), "--model", "test_vit", "--data", str(root), "--device", "cpu",
               "--img-size", "32", "--epochs", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "apply to timm ResNets" not in err and f"records the model '{NAME}'" in err, err
    assert "and 70 more. 90 unexpected key(s)" in err, err  # the lists ran together ("bias 90 unexpected")


def test_the_printed_timm_call_of_a_fixed_size_model_without_position_weights_takes_the_runs_images(
        exported, tmp_path):
    """test_vit_relpos learns its relative positions with an MLP: no weight is shaped by the image size, so the
    printed call left out img_size and built a 160 px model that refused the run's 32 px images."""
    import contextlib
    import io
    import re

    root = exported[0]
    run, path = tmp_path / "ft", tmp_path / "relpos.safetensors"
    assert main(["train", "--data", str(root), "--out", str(run), "--model", "test_vit_relpos", "--img-size", "32",
                 "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
                 "train.tensorboard=false"]) == 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["export", str(run), "--out", str(path)]) == 0
    with safe_open(str(path), "pt") as fh:
        assert not any(k.endswith(("pos_embed", "relative_position_bias_table")) for k in fh.keys())
    call = re.search(r"in plain timm: (timm\.create_model\(.*\))$", buf.getvalue(), re.M).group(1)
    assert "img_size=32" in call
    model = eval(call, {"timm": timm}).eval()  # noqa: S307 - our own printed line
    assert model(torch.zeros(2, 3, 32, 32)).shape[0] == 2


def test_weights_without_a_model_adopt_the_model_the_export_records(exported, tmp_path, capsys):
    """`train --weights bb.safetensors` without --model built the default resnet18 and failed with a page of shape
    mismatches, though the export names its model; a model the user names (flag, word, config file) stays."""
    from fewshot.cli_moco import PRETRAIN_FLAGS

    root, _, path = exported

    def model_of(command, *words):
        args, extra = build_parser().parse_known_args([command, "--data", str(root), "--out", str(tmp_path / "o"),
                                                       "--weights", str(path), *words])
        if command == "pretrain":
            return resolve_run_config(args, extra, PRETRAIN_FLAGS, preset=args.preset, default_preset="mocov2")
        return resolve_run_config(args, extra, TRAIN_FLAGS)["model"]["name"]

    capsys.readouterr()
    assert model_of("train") == NAME
    assert f"using {NAME}, the model {path} records" in capsys.readouterr().err
    assert model_of("pretrain")["model"]["name"] == NAME
    assert f"using {NAME}" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  name: resnet18\n")
    for words in (["--model", "resnet18"], ["model.name=resnet18"], ["--config", str(config)]):
        assert model_of("train", *words) == "resnet18"
        assert "using" not in capsys.readouterr().err
    assert main(["probe", "--weights", str(path), "--data", str(root), "--img-size", "32", "--device", "cpu",
                 "--head", "prototype"]) == 0
    assert f"using {NAME}" in capsys.readouterr().err


def test_run_with_weights_and_no_model_adopts_the_recorded_model(exported, tmp_path, monkeypatch, capsys):
    """`fewshot run model.weights=bb.safetensors` without --model: the same adoption as train and pretrain."""
    import fewshot.pipeline

    root, _, path = exported
    seen = []
    monkeypatch.setattr(fewshot.pipeline, "run_pipeline", lambda cfg, *a, **k: seen.append(cfg["model"]["name"]))
    base = ["run", "--data", str(root), "--out", str(tmp_path / "r"), "--budget-minutes", "1", f"model.weights={path}"]
    capsys.readouterr()
    assert main(base) == 0 and seen == [NAME]
    assert f"using {NAME}" in capsys.readouterr().err
    assert main([*base, "--model", "resnet18"]) == 0 and seen[-1] == "resnet18"
    assert "using" not in capsys.readouterr().err
