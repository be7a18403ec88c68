"""timm backbones as feature extractors, for any model family.

Features come from timm's own `forward_features` + `forward_head(pre_logits=True)`, which
already pool the way each family should (class token for DeiT, token mean for Swin, global
channel pooling for CNNs and hybrids). The one capability check is the distillation token:
DeiT- and PiT-distilled expose two tokens, and SPEC wants one head per token with logits averaged.
"""

from __future__ import annotations

import difflib
import sys

import timm
import torch
from torch import nn

from fewshot.errors import UserError
from fewshot.models.fast_pool import swap_max_pools
from fewshot.models.tiny_map_conv import swap_tiny_map_convs
from fewshot.process_state import said_once
from fewshot.train.distributed import launch_rank


def similar_models(name: str, n: int = 8) -> list[str]:
    """timm names closest to a mistyped ``name``, closest first, then the ones sharing its first word. The first 8
    names of the `*<first word>*` glob came alphabetically: `test_resnett` was offered test_byobnet, test_coatnet,
    ... and never test_resnet."""
    models = timm.list_models()
    close = difflib.get_close_matches(name.lower(), models, n=n, cutoff=0.6)
    prefix = [m for m in timm.list_models(f"*{name.lower().split('_')[0]}*") if m not in close]
    return (close + prefix)[:n]


# the names timm_name has noted (once per command, though every stage builds the model)
_NAMED: set[str] = said_once(__name__, "_NAMED")
# where a name create_backbone checks comes from (timm_name's ``source``): every command checks the names typed to it
# first (timm_name, no source); a name read from a file is RECORDED; one a caller passes in code is GIVEN, worded
# with no command-line advice and no file blamed
RECORDED = "as recorded in the checkpoint, run or weights file given, not typed"
GIVEN = "given"


def timm_name(name, source: str | None = None):
    """The timm model ``name`` means: as typed when timm has it, else the one timm name it matches ignoring case
    (`--model RESNET18` was refused, resnet18 suggested), said in a note; anything else as typed, for
    create_backbone to refuse with similar names. A pretrained tag (`.a1_in1k`) stays on the name, in lower case as
    timm writes every tag (`resnet18.A1_IN1K` was kept as typed where `ResNet18.A1_IN1K` was not, and a resume that
    spelt it the other way was refused). ``source``: where a name the user did not type comes from (RECORDED,
    GIVEN)."""
    if not isinstance(name, str):
        return name
    arch, dot, tag = name.partition(".")
    if timm.is_model(arch):
        meant = arch + dot + tag.lower()
    else:
        matches = [m for m in timm.list_models() if m.lower() == arch.lower()]
        if len(matches) != 1:
            return name
        meant = matches[0] + dot + tag.lower()
    check_pretrained_tag(meant, name, source)
    if meant != name and name not in _NAMED and launch_rank() == 0:
        _NAMED.add(name)
        print(f"note: model {name}: using timm's {meant} (timm names are lower case)", file=sys.stderr, flush=True)
    return meant


def pretrained_tags(arch: str) -> list[str]:
    """The pretrained tags timm registers for the architecture ``arch`` (`a1_in1k`, ...; `untrained` for some)."""
    try:
        names = list(timm.models.get_arch_pretrained_cfgs(arch))
    except (AttributeError, RuntimeError):  # an older timm without it
        names = timm.list_pretrained(f"{arch}.*")
    return [n.split(".", 1)[1] for n in names if "." in n]


def check_pretrained_tag(name: str, typed: str | None = None, source: str | None = None) -> None:
    """Refuse a model name whose tag timm does not know for its architecture (`test_resnet.bogus_tag`, or the empty
    tag of `test_resnet.`): timm raised "Invalid pretrained tag" from every command that built the model, a
    traceback and exit 1, after the command had started. ``typed``: the name as the user gave it, quoted as given
    (`resnet18.A1` was said to have the tag 'a1'). ``source``: where a name not typed comes from (`eval RUN` reads
    it from the checkpoint), said instead of advice on a name the user never gave; GIVEN: a name passed in code,
    with neither."""
    if "." not in name or not timm.is_model(name):
        return
    try:
        timm.get_pretrained_cfg(name)
        return
    except RuntimeError:
        pass
    arch, tag = timm.models.split_model_name_tag(name)
    shown = typed or name
    tags = pretrained_tags(arch)
    listed = ", ".join(tags[:12]) + (", ..." if len(tags) > 12 else "")
    what = (f"timm has no pretrained tag '{shown.partition('.')[2]}' for {arch}" if tag else
            "the name ends in a dot (an empty tag)")
    if source == GIVEN:
        raise UserError(f"model {shown}: {what}; {arch}'s tags are {listed or 'none'}. Use {arch} without a tag or "
                        f"with one of its tags.")
    if source:
        raise UserError(f"model {shown} ({source}): {what}; {arch}'s tags are {listed or 'none'}. The file was "
                        f"written with another timm version than this one ({timm.__version__}), or altered: use "
                        f"another file, or the timm version that wrote it.")
    raise UserError(f"model {shown}: {what}; {arch}'s tags are {listed or 'none'}. Give {arch} without a tag "
                    f"(fewshot never downloads pretrained weights; --weights FILE loads local ones) or with one of "
                    f"its tags.")


def create_backbone(name: str, drop_path: float = 0.0, img_size: int | None = None, width: float = 1.0,
                    small_stem: bool = False, source: str | None = None) -> nn.Module:
    """timm model without classifier (num_classes=0), random init (no hub access).

    `width` scales a ResNet's stage channels (timm's `channels`); `small_stem` makes its stem
    stride 1 (the 7x7 stride-2 convolution becomes 3x3 stride 1; a deep stem's first convolution
    gets stride 1; the max-pool stays), so that 32 px images keep 4x more spatial resolution
    through the network. Half width with the small stem costs about the FLOPs of the plain network
    (docs/recipes.md). Max-pool layers use the faster CPU kernel (`fast_pool`) and convolutions on maps
    smaller than their kernel run as matmuls on the CPU (`tiny_map_conv`); the math is unchanged. ``name``: a timm
    name, in any case (timm_name); one with a tag timm does not know is refused, worded as ``source`` says where
    the name came from: RECORDED from a caller that read it from a file (`eval RUN`), else as GIVEN (each command
    checks the names typed to it before it builds a model; a Python caller typed no flag to be advised on).
    """
    name = timm_name(name, source or GIVEN)
    if not timm.is_model(name):
        close = similar_models(name)
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise UserError(f"unknown timm model '{name}'.{hint} List models with `fewshot models PATTERN`.")
    kwargs: dict = {"pretrained": False, "num_classes": 0}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    if width != 1.0 or small_stem:
        channels = _resnet_channels(name, width)
        if width != 1.0:
            kwargs["channels"] = tuple(max(8, int(round(c * width))) for c in channels)
    pretrained_cfg = timm.get_pretrained_cfg(name)  # a tag timm does not know was refused by timm_name
    default_size = pretrained_cfg.input_size[-1] if pretrained_cfg else None
    if img_size and img_size != default_size:
        kwargs["img_size"] = img_size
    # Not every family takes img_size / drop_path_rate: drop the ones it refuses.
    for optional in ([], ["img_size"], ["drop_path_rate"], ["img_size", "drop_path_rate"]):
        attempt = {k: v for k, v in kwargs.items() if k not in optional}
        try:
            model = timm.create_model(name, **attempt)
        except TypeError:
            continue
        if small_stem:
            _stride_one_stem(model)
        swap_max_pools(model)
        swap_tiny_map_convs(model)
        return model
    raise UserError(f"timm could not build '{name}' with num_classes=0.")


def note_pretrained_tag(model_cfg: dict) -> None:
    """`--model resnet18.a1_in1k` without weights: the tag names timm's pretrained weights, which are never
    downloaded, and the run trained from random init without a word (`fewshot models` said it; train did not)."""
    name = model_cfg.get("name")
    if not isinstance(name, str) or "." not in name.strip(".") or model_cfg.get("weights"):
        return
    if not timm.is_model(name):  # `hf-hub:timm/resnet18.a1_in1k`: the note said "starts from random init", then
        return                   # create_backbone refused the name as unknown
    if launch_rank() == 0:
        arch, tag = name.split(".", 1)
        print(f"note: --model {name}: '.{tag}' names timm's pretrained weights, which fewshot never downloads; "
              f"the {arch} network starts from random init. Give local weights with --weights FILE "
              f"(model.weights=FILE) to start from them.", file=sys.stderr, flush=True)


def takes_img_size(name: str, img_size: int, fallback: bool = False) -> bool:
    """Whether create_backbone passes ``img_size`` to this model (then plain timm needs it too: a ViT with relative
    positions from an MLP has no size-shaped weight, yet its patch embedding refuses another size). Built on
    the meta device: no memory, no init; ``fallback`` where the model cannot be built there."""
    try:
        cfg = timm.get_pretrained_cfg(name)
    except RuntimeError:  # a tag timm does not know (a name read from a file): building it says so
        return fallback
    if cfg is not None and cfg.input_size[-1] == img_size:
        return False
    try:
        with torch.device("meta"):
            timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size)
    except TypeError:
        return False
    except Exception:  # noqa: BLE001 - an init step the meta device cannot run: keep the caller's guess
        return fallback
    return True


def backbone_options(model_cfg: dict) -> dict:
    """The `create_backbone` keyword arguments a run's `model` config asks for."""
    return {"drop_path": model_cfg.get("drop_path") or 0.0, "img_size": model_cfg.get("img_size"),
            "width": float(model_cfg.get("width") or 1.0), "small_stem": bool(model_cfg.get("small_stem"))}


# Input sizes fewshot accepts (--img-size, and the size a checkpoint or export records): a file from anyone
# must not make prediction decode its test images at 3000 px (GBs of cache and memory).
MIN_IMG_SIZE, MAX_IMG_SIZE = 1, 1024


def architecture_name(name) -> str:
    """The network a model name builds, in lower case: `resnet18` for `resnet18.a1_in1k`, `RESNET18` or
    `hf-hub:timm/resnet18.tv_in1k`. A pretrained tag names only timm's weights, not another network: a file recording
    resnet18 at 32 px given with --model resnet18.a1_in1k was taken for another model's and built at 224 px."""
    text = str(name).strip()
    for prefix in ("hf-hub:", "hf_hub:", "timm/"):
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
    return timm.models.split_model_name_tag(text)[0].lower()


def same_architecture(a, b) -> bool:
    """Whether two model names build the same network (architecture_name): tags, case and a hub prefix aside."""
    return architecture_name(a) == architecture_name(b)


def adopt_weights_architecture(model_cfg: dict) -> dict:
    """Where the config leaves width / small_stem at their defaults and `model.weights` is an export
    recording other values, take the export's (the file could not load otherwise). Written into the
    config, so the saved run rebuilds the same network without the weights file."""
    from fewshot.models.weights import architecture_of

    arch = architecture_of(model_cfg.get("weights"))
    if arch.get("model") and model_cfg.get("name") and not same_architecture(arch["model"], model_cfg["name"]):
        # another model's file: its width / small_stem made "model.width applies to timm ResNets" errors about
        # options the user never set; loading it names the file's model instead
        return model_cfg
    taken = []
    if float(model_cfg.get("width") or 1.0) == 1.0 and "width" in arch:
        if float(arch["width"]) != float(model_cfg.get("width") or 1.0):
            taken.append(f"width={arch['width']}")
        model_cfg["width"] = arch["width"]
    if not model_cfg.get("small_stem") and arch.get("small_stem"):
        model_cfg["small_stem"] = True
        taken.append("small_stem=true")
    if taken:  # also over a model.small_stem=false the user typed, which cannot be told from the default here
        from fewshot.data.warn_once import warn_once

        warn_once([f"the network is built with {' and '.join(taken)}, as {model_cfg.get('weights')} records: its "
                   f"tensors fit no other"], "note")
    if not model_cfg.get("img_size") and arch.get("img_size"):  # the size its features were learnt at, not
        model_cfg["img_size"] = arch["img_size"]                # the model's ImageNet default (224 for 28 px data)
    return model_cfg


def adopt_weights_model(model_cfg: dict, given: bool) -> str | None:
    """Where the user named no model (--model, model.name) and `model.weights` records the one it was exported or
    trained from, take that one (the default resnet18 failed on another model's file with a page of shape
    mismatches). Says so on stderr and returns the name; a model the user gave stays, and loading reports a
    mismatch."""
    from fewshot.models.weights import architecture_of

    recorded = architecture_of(model_cfg.get("weights")).get("model")
    if given or not recorded or recorded == model_cfg.get("name") or not timm.is_model(recorded):
        return None
    if launch_rank() == 0:  # every process of a torchrun job adopts it; one says so
        print(f"note: no --model given: using {recorded}, the model {model_cfg['weights']} records",
              file=sys.stderr, flush=True)
    model_cfg["name"] = recorded
    return recorded


def check_input_size(backbone: nn.Module, size: int, name: str) -> None:
    """One forward of a blank image at the run's size, before data or time is spent: a size the model cannot
    take (a ViT's patch grid, MaxViT's windows) is the user's to change, not a crash in the first step. The sizes
    the refusal suggests are checked (input_sizes.sizes_taken): "e.g. 224 or 64" was refused at 64 by
    efficientformer_l1."""
    from fewshot.models.input_sizes import patch_sizes, sizes_taken

    problem = input_size_problem(backbone, size, name)
    if problem is None:
        return
    patch = _image_patch_size(backbone)
    off_grid = bool(patch) and size % patch != 0  # the patch rule refused it (else a forward failed)
    sizes = " or ".join(f"{s}" for s in sorted(patch_sizes(name, size, patch) if off_grid else sizes_taken(name, size)))
    if off_grid:
        advice = f"Choose a multiple of {patch}" + (f" (--img-size {sizes})." if sizes else ".")
    else:
        advice = (f"Choose another --img-size, e.g. {sizes} (checked to work)." if sizes else
                  f"Choose another --img-size (see `fewshot models {name}` for its default).")
    raise UserError(f"{problem}. {advice}")


def input_size_problem(backbone: nn.Module, size: int, name: str) -> str | None:
    """Why ``backbone`` cannot take ``size`` px inputs, in words (check_input_size's refusal without its advice),
    or None where it can: the patch grid rule, then one forward of a blank image on the backbone's device (the
    meta device tells shapes alone, at no cost: input_sizes)."""
    patch = _image_patch_size(backbone)
    own = tuple((getattr(backbone, "pretrained_cfg", None) or {}).get("input_size") or ())[-1:]
    # the patch convolution would run, dropping the last rows and columns unseen; a model's own size is kept
    # (SigLIP so400m/14 at 384 px was trained dropping 6)
    if patch and size % patch and own != (size,):
        if size // patch:
            why = f"the last {size % patch} px rows and columns of every image would never be seen"
        else:  # smaller than one patch: no patch to embed at all (was "all of it of every image")
            why = f"an image of {size} px is smaller than one patch, and the model would have nothing to see"
        return f"{name} cannot take {size} px inputs: its patches are {patch} px, so {why}"
    device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
    was_training = backbone.training
    backbone.eval()  # no BatchNorm statistics touched, no randomness drawn
    try:
        with torch.no_grad():
            extract_features(backbone, torch.zeros(1, 3, size, size, device=device))
    # ZeroDivisionError: timm's MaxViT partitions a feature map smaller than its window (test_maxvit at 24 px)
    except (AssertionError, RuntimeError, ValueError, ZeroDivisionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return f"{name} cannot take {size} px inputs ({first})"
    finally:
        backbone.train(was_training)
    return None


def _image_patch_size(backbone: nn.Module) -> int | None:
    """The patch size of a ViT-style patch embedding on the image (timm's PatchEmbed with 3 input channels, not
    padding the image to whole patches itself); None for other models."""
    from timm.layers import PatchEmbed

    for module in backbone.modules():
        if isinstance(module, PatchEmbed) and getattr(module.proj, "in_channels", None) == 3:
            if getattr(module, "dynamic_img_pad", False) or len(set(module.patch_size)) != 1:
                return None
            return int(module.patch_size[0])
    return None


def _resnet_channels(name: str, width: float) -> tuple[int, ...]:
    """The stage widths (timm's `channels`) of a ResNet-family model; refuses other families."""
    from timm.models.resnet import ResNet

    if not 0.0 < width <= 4.0:
        raise UserError(f"model.width must be in (0, 4], got {width}.")
    model = timm.create_model(name, pretrained=False, num_classes=0) if timm.is_model(name) else None
    if not isinstance(model, ResNet):
        raise UserError(f"model.width / model.small_stem apply to timm ResNets (resnet18, resnet50, resnet26d, "
                        f"...), not '{name}'.")
    out = {f["module"]: int(f["num_chs"]) for f in model.feature_info}
    return tuple(out[f"layer{i}"] // type(getattr(model, f"layer{i}")[0]).expansion for i in range(1, 5))


def _stride_one_stem(model: nn.Module) -> None:
    stem = model.conv1
    if isinstance(stem, nn.Conv2d):
        model.conv1 = nn.Conv2d(stem.in_channels, stem.out_channels, 3, 1, 1, bias=False)
    else:  # deep stem: Sequential of 3x3 convolutions, the first one strided
        stem[0].stride = (1, 1)


def num_feature_tokens(backbone: nn.Module) -> int:
    """The tokens a distillation model's heads score, one head each, else 1. timm's layout for these: the learnt
    class and distillation tokens lead forward_features' output, `head` reads the first and `head_dist` the second.
    DeiT keeps them in `cls_token` + `dist_token` ([1, 1, C] each), PiT both in `cls_token` ([1, 2, C]): counting
    `dist_token` alone gave PiT one head. Models whose `head_dist` shares one pooled feature (LeViT, FastViT) have
    no learnt token: 1."""
    if getattr(backbone, "head_dist", None) is None:
        return 1
    learnt = [getattr(backbone, name, None) for name in ("cls_token", "dist_token")]
    count = sum(t.shape[1] for t in learnt if isinstance(t, torch.Tensor) and t.ndim == 3)
    return count if count > 1 else 1


def extract_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, T, D] pooled features; T = num_feature_tokens(backbone)."""
    feats = backbone.forward_features(x)
    tokens = num_feature_tokens(backbone)
    if tokens > 1:
        return feats[:, :tokens]
    return backbone.forward_head(feats, pre_logits=True).unsqueeze(1)


def feature_dim(backbone: nn.Module) -> int:
    """Width of extract_features: timm's pre-logits width (head_hidden_size), which exceeds
    num_features where the head has its own hidden layer (MobileNetV3: 288 -> 1024)."""
    return int(getattr(backbone, "head_hidden_size", 0) or getattr(backbone, "num_features", 0))


def input_size(backbone: nn.Module, override: int | None = None) -> int:
    if override:
        return int(override)
    cfg = timm.data.resolve_model_data_config(backbone)
    return int(cfg["input_size"][-1])


def mean_std(backbone: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    cfg = timm.data.resolve_model_data_config(backbone)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
