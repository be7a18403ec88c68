"""Weights files from elsewhere (hunt hS): a pretrained tag on the model name, wrapper prefixes that collide,
tensors one level down, the model.strict=false warning's lists, the official MoCo checkpoint's 'arch'."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fewshot.cli import main
from fewshot.errors import CheckpointError
from fewshot.models.backbone import adopt_weights_architecture, create_backbone
from fewshot.models.weights import backbone_state_from, load_backbone_weights
from helpers.tiny import build_digits

NAME, TAGGED = "test_resnet", "test_resnet.r160_in1k"  # timm's size for the tag is 160 px


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 1-epoch 32 px test_resnet run and its export (which records test_resnet and 32 px)."""
    tmp = tmp_path_factory.mktemp("foreign")
    root = build_digits(tmp / "data")
    run = tmp / "run"
    assert main(["train", "--data", str(root), "--out", str(run), "--model", NAME, "--img-size", "32", "--epochs", "1",
                 "--batch-size", "8", "--device", "cpu", "--no-progress", "train.tensorboard=false",
                 "train.threads=1"]) == 0
    path = tmp / "bb.safetensors"
    assert main(["export", str(run), "--out", str(path)]) == 0
    return root, path


def _retagged(path, out, **meta):
    """The export at ``path`` written to ``out`` with metadata fields replaced."""
    with safe_open(str(path), framework="pt") as fh:
        save_file(load_file(str(path)), str(out), metadata={**fh.metadata(), **meta})
    return out


def test_probe_with_a_tagged_model_name_takes_the_exports_image_size(exported, capsys):
    """`probe --model test_resnet.r160_in1k` of a file recording test_resnet at 32 px ran at the tag's 160 px:
    the tag was taken for another model, and the file's record ignored."""
    root, path = exported
    assert adopt_weights_architecture({"name": TAGGED, "weights": str(path), "img_size": None})["img_size"] == 32
    assert main(["probe", "--weights", str(path), "--model", TAGGED, "--data", str(root), "--device", "cpu",
                 "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert " at 32px " in out, out


def test_train_with_a_plain_name_takes_the_size_of_a_file_recording_a_tagged_one(exported, tmp_path, capsys):
    """The other way round: the file records test_resnet.r160_in1k, --model test_resnet; and a hub prefix or
    upper case is the same network too."""
    root, path = exported
    tagged = _retagged(path, tmp_path / "tag.safetensors", model=TAGGED)
    for name in ("hf-hub:timm/" + TAGGED, "TEST_RESNET"):
        assert adopt_weights_architecture({"name": name, "weights": str(tagged), "img_size": None})["img_size"] == 32
    run = tmp_path / "ft"
    assert main(["train", "--data", str(root), "--out", str(run), "--weights", str(tagged), "--model", NAME,
                 "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress",
                 "train.tensorboard=false", "train.threads=1"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["img_size"] == 32
    # another network still takes nothing of the record
    vit = adopt_weights_architecture({"name": "test_vit", "weights": str(tagged), "img_size": None})
    assert vit["img_size"] is None


def test_a_half_width_small_stem_export_loads_under_a_tagged_name(exported, tmp_path, capsys):
    """A half-width small-stem file given with the tagged name was built at full width: 96 shape mismatches, and a
    hint to pass --model with the name already given."""
    root, _ = exported
    half = create_backbone(NAME, img_size=32, width=0.5, small_stem=True).state_dict()
    path = tmp_path / "half.safetensors"
    save_file(half, str(path), metadata={"format": "pt", "model": NAME, "img_size": "32", "width": "0.5",
                                         "small_stem": "true"})
    cfg = adopt_weights_architecture({"name": TAGGED, "weights": str(path), "img_size": None, "width": 1.0})
    assert cfg["width"] == 0.5 and cfg["small_stem"] is True and cfg["img_size"] == 32
    assert main(["probe", "--weights", str(path), "--model", TAGGED, "--data", str(root), "--device", "cpu",
                 "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert f"from weights {path} (" in out and " at 32px " in out, out
    # a full-width model given the file is refused without telling the user to pass the name they gave
    with pytest.raises(CheckpointError) as exc:
        load_backbone_weights(create_backbone(TAGGED), _retagged(path, tmp_path / "t.safetensors", model=TAGGED))
    assert "shape/dtype mismatch" in str(exc.value) and "pass --model" not in str(exc.value)


def test_keys_that_collide_once_prefixes_are_stripped_are_refused(tmp_path):
    """`model.backbone.X` and `model.X` are both X: the last one won silently (loaded as "N of N weights")."""
    own = create_backbone(NAME).state_dict()
    obj = {**{f"model.backbone.{k}": v for k, v in own.items()}, **{f"model.{k}": v + 1 for k, v in own.items()}}
    with pytest.raises(CheckpointError) as exc:
        backbone_state_from(obj, tmp_path / "w.pt")
    text = str(exc.value)
    first = next(iter(own))
    assert f"'model.backbone.{first}' and 'model.{first}'" in text and "'model.backbone.'" in text, text
    assert f"holds {len(own)} pair(s)" in text, text
    # the same tensor under both names is one weight: no choice to make
    same = {**{f"model.backbone.{k}": v for k, v in own.items()}, **{f"model.{k}": v for k, v in own.items()}}
    assert set(backbone_state_from(same, tmp_path / "w.pt")) == set(own)


@pytest.mark.parametrize("obj, where", [
    ({"student": "S", "teacher": "S", "epoch": 3}, "['student'] (N tensors), ['teacher'] (N tensors)"),
    ({"state_dict_ema": "S", "epoch": 3}, "['state_dict_ema'] (N tensors)"),
    ({"model": {"ema": "S", "raw": "S"}}, "['model']['ema'] (N tensors), ['model']['raw'] (N tensors)"),
])
def test_tensors_one_level_down_are_named_with_how_to_pick_one(obj, where, tmp_path):
    """DINO's {'student', 'teacher'} or timm's {'state_dict_ema'}: "F holds no tensors", naming none."""
    own = create_backbone(NAME).state_dict()
    fill = lambda o: {k: (own if v == "S" else fill(v) if isinstance(v, dict) else v) for k, v in o.items()}  # noqa
    with pytest.raises(CheckpointError) as exc:
        backbone_state_from(fill(obj), tmp_path / "w.pt")
    text = str(exc.value)
    assert where.replace("N", str(len(own))) in text and "torch.save(torch.load(" in text, text


def test_a_wrapper_inside_a_wrapper_is_read(tmp_path):
    """{'model': {'state_dict': ...}}: the state dict two levels down was "holds no tensors"."""
    own = create_backbone(NAME).state_dict()
    torch.save({"model": {"state_dict": {f"module.{k}": v for k, v in own.items()}}, "epoch": 1}, tmp_path / "w.pt")
    assert load_backbone_weights(create_backbone(NAME), tmp_path / "w.pt")["missing"] == []


def test_the_non_strict_warning_has_no_empty_parentheses(tmp_path, capsys):
    """"0 left at random init ()": an empty list was still shown in parentheses."""
    own = create_backbone(NAME).state_dict()
    save_file({**own, "extra.weight": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    load_backbone_weights(create_backbone(NAME), tmp_path / "w.safetensors", strict=False)
    err = capsys.readouterr().err
    assert "0 left at random init, 1 in the file unused (extra.weight)" in err and "()" not in err, err


def test_the_official_moco_checkpoints_arch_names_the_model(exported, tmp_path, capsys):
    """The official MoCo checkpoint keeps `'arch': 'resnet50'` at its top level: probe without --model said the
    file "records no model"."""
    root, _ = exported
    own = create_backbone(NAME).state_dict()
    path = tmp_path / "moco_v2.pth.tar"
    torch.save({"epoch": 200, "arch": NAME, "state_dict": {f"module.encoder_q.{k}": v for k, v in own.items()}},
               path)
    assert main(["probe", "--weights", str(path), "--data", str(root), "--device", "cpu", "--img-size", "32",
                 "--epochs", "2"]) == 0
    assert f"no --model given: using {NAME}, the model {path} records" in capsys.readouterr().err
    torch.save({"arch": "not_a_timm_model", "state_dict": {}}, tmp_path / "other.pth")
    assert main(["probe", "--weights", str(tmp_path / "other.pth"), "--data", str(root), "--device", "cpu"]) == 2
    assert "records no model" in capsys.readouterr().err


def test_one_tensor_under_two_names_holding_nan_is_one_weight_not_a_clash(tmp_path):
    """torch.equal(nan, nan) is False: a shared tensor with a NaN was refused as "different values" (review rev28),
    before the clearer non-finite check could name it."""
    n = torch.tensor([float("nan"), 1.0])
    state = backbone_state_from({"backbone.bn.weight": n, "model.backbone.bn.weight": n.clone()}, tmp_path / "w.pt")
    assert set(state) == {"bn.weight"}


def test_a_clash_with_an_unprefixed_key_suggests_the_other_prefix(tmp_path):
    """p = '' keeps every key, so the advice led back to the same error."""
    w = torch.ones(2)
    with pytest.raises(CheckpointError) as exc:
        backbone_state_from({"conv1.weight": w, "model.conv1.weight": w + 1}, tmp_path / "w.pt")
    assert "with p = 'model.'" in str(exc.value), str(exc.value)


def test_the_one_liner_is_quoted_for_the_shell_and_picks_the_teacher(tmp_path):
    """A path with a quote broke the double-quoted -c; the example picked 'student' though the text advises a
    teacher or EMA copy."""
    import shlex

    own = create_backbone(NAME).state_dict()
    path = tmp_path / "it's $HOME.pth"
    with pytest.raises(CheckpointError) as exc:
        backbone_state_from({"student": own, "teacher": own}, path)
    text = str(exc.value)
    command = text.split("save it as its own file: ")[1].split(", then give --weights")[0]
    words = shlex.split(command)
    assert words[:2] == ["python", "-c"] and len(words) == 3, command
    assert repr(str(path)) in words[2] and "['teacher']" in words[2], words[2]


def test_a_file_of_only_the_moco_key_encoder_says_so(tmp_path):
    """Every tensor dropped as MoCo's key encoder or queue: "holds no tensors ... holds them under ['state_dict']",
    and the advised re-save looped back to the same error."""
    t = torch.ones(2)
    with pytest.raises(CheckpointError) as exc:
        backbone_state_from({"module.encoder_k.conv1.weight": t, "module.queue": t}, tmp_path / "w.pt")
    assert "only the MoCo key encoder and queue" in str(exc.value), str(exc.value)
