"""Loading weights from files we did not write: safetensors or `torch.load(weights_only=True)` only.

Accepts a plain state dict, a safetensors file, a timm/torchvision checkpoint ({"state_dict": ...}
or {"model": ...}), an exported fewshot backbone, or a fewshot MoCo/fine-tuning checkpoint.
Common wrapper prefixes are stripped; mismatches are reported by name, never as a traceback.
Reading the file safely is models/weights_file.py; checking a state dict's values, models/state_checks.py.
"""

from __future__ import annotations

import functools
import math
import re
import reprlib
import shlex
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from fewshot.errors import CheckpointError, one_line
from fewshot.models.state_checks import _counter, _finite_as, _view_text, fit_problems, shows_more_than_stored
from fewshot.models.weights_file import _looks_like_torch_file, check_weights_path, is_safetensors, read_tensor_file

PREFIXES = ("module.", "_orig_mod.", "encoder_q.backbone.", "encoder_q.0.", "encoder_q.", "backbone.", "model.")
WRAPPERS = ("state_dict", "model", "model_state", "module")  # the keys a checkpoint keeps its state dict under
# the MoCo key encoder and queue (official checkpoints), and the count of keys enqueued (fewshot's own MoCo module)
MOCO_ONLY = ("encoder_k", "queue", "queue_ptr", "queue_filled")
OUTER_PREFIXES = ("module.", "_orig_mod.", "model.")  # a wrapper around a whole MoCo module (DDP, compile, Lightning)


def backbone_state_from(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    """Find the backbone's tensors inside whatever container the file holds, each refused as read where it shows
    more values than it stores: pos_embed and relative-position tables are resampled before fit_problems compares
    them, and a zero-stride pos_embed was materialised there (GBs) and then loaded without a word."""
    state = _backbone_tensors(obj, path)
    for k, v in state.items():
        if shows_more_than_stored(v):
            raise CheckpointError(f"weights file {path} cannot be loaded: {k} {_view_text(v)}; it was not saved from "
                                  f"a model. Save the tensors themselves (torch.save({{k: v.clone() for k, v in "
                                  f"state.items()}}, 'weights.pt')) or use another weights file.")
    return state


def _backbone_tensors(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors inside whatever container the file holds."""
    if obj.get("format") == "fewshot-checkpoint":
        from fewshot.train.checkpoint import check_checkpoint

        check_checkpoint(obj, path, required=("model",))  # names to tensors, as `fewshot eval` checks it
        if obj.get("kind") == "moco":
            state = obj["model"]
            prefix = "encoder_q.backbone."
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        # the EMA weights when the run kept them: those were evaluated, chose best.pt and are what export writes
        state = obj["ema"] if obj.get("ema") is not None else obj["model"]
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    top = obj
    obj = _state_level(obj)
    key = next((k for k in obj if not isinstance(k, str)), None)
    if key is not None:  # {0: tensor} or a tuple key: no weight name to match (was an AttributeError)
        raise CheckpointError(f"{path} holds the key {one_line(reprlib.repr(key))} (of type {type(key).__name__}) "
                              f"where a state dict has weight names (strings); it is not a model's state dict. Save "
                              f"the model's weights with torch.save(model.state_dict(), 'weights.pt') and give "
                              f"that file.")
    state, source, clashes, moco_dropped = {}, {}, [], 0
    fewshot_moco = any(isinstance(k, str) and _strip_outer(k).startswith("encoder_q.backbone.") for k in obj)
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        name = _strip_prefixes(k)
        if fewshot_moco and _strip_outer(k).startswith("encoder_q.") and \
                not _strip_outer(k).startswith("encoder_q.backbone."):
            continue  # fewshot's MoCo module saved whole: its projection head (encoder_q.head) is no backbone weight
        if name.split(".")[0] in MOCO_ONLY:  # the official MoCo checkpoint: its query encoder is the backbone
            moco_dropped += 1
            continue
        if name in state and not _same_tensor(state[name], v):
            clashes.append((source[name], k, name))
        state[name], source[name] = v, k
    if clashes:  # the last read won without a word, and a file of zeros loaded as "100 of 100 weights"
        first, second, name = clashes[0]
        keep = first[:len(first) - len(name)] or second[:len(second) - len(name)]  # '' would keep every key
        raise CheckpointError(
            f"weights file {path} holds {len(clashes)} pair(s) of keys that are the same weight once the wrapper "
            f"prefixes ({', '.join(PREFIXES)}) are stripped, with different values, e.g. {one_line(first)!r} and "
            f"{one_line(second)!r} (both {one_line(name)!r}): which are the backbone's cannot be told. Save its "
            f"tensors alone, e.g. {{k[len(p):]: v for k, v in state.items() if k.startswith(p)}} with p = "
            f"{one_line(keep)!r} or the other key's prefix, and give that file.")
    if not state and moco_dropped:
        raise CheckpointError(f"{path} holds only the MoCo key encoder and queue ({moco_dropped} tensors), no query "
                              f"encoder (encoder_q) to use as the backbone.")
    if not state:
        raise CheckpointError(f"{path} holds no tensors{_nested_tensors_hint(top, path)}")
    return state


def _state_level(obj: dict, depth: int = 2) -> dict:
    """The dict of ``obj`` that holds the state dict: ``obj`` itself or, up to ``depth`` wrappers down
    ({'model': {'state_dict': ...}}), the dict under one of its WRAPPERS keys: the one with the most tensors, every
    key compared (a tie goes to a wrapper over ``obj``, then to the first in WRAPPERS). A plain state dict beside a
    metadata dict under 'model' ({'arch': ...}) was reported as holding no tensors, and so were weights under
    'model_state' beside that dict, or under 'model' beside an empty 'state_dict': only the first key was looked in.
    A checkpoint's weights under 'model' beside a step count tensor are the wrapper's."""
    best, most = obj, _tensor_count(obj)
    for key in WRAPPERS if depth else ():
        if not isinstance(obj.get(key), dict):
            continue
        inner = _state_level(obj[key], depth - 1)
        count = _tensor_count(inner)
        if count > most or (best is obj and count == most):
            best, most = inner, count
    return best


def _tensor_count(obj: dict) -> int:
    return sum(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_outer(key: str) -> str:
    """`module.encoder_q.head.0.weight` -> `encoder_q.head.0.weight`: the prefixes of a wrapper around a whole MoCo
    module, leaving its own `encoder_q.` (which tells its projection head from its backbone)."""
    while prefix := next((p for p in OUTER_PREFIXES if key.startswith(p)), None):
        key = key[len(prefix):]
    return key


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """One weight saved under two names (a wrapper that registers the backbone twice): no choice to make."""
    try:
        if a is b or (a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride()
                      and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
                      and a.storage_offset() == b.storage_offset()):
            return True  # one tensor under two names (NaN in it is not a difference: the value check names it)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        return bool(torch.equal(a, b)) or (a.is_floating_point() and bool(torch.allclose(a, b, rtol=0, atol=0,
                                                                                          equal_nan=True)))
    except (RuntimeError, TypeError):  # a dtype without an equality kernel (float8): told apart as two
        return False


def _nested_tensors_hint(obj: dict, path) -> str:
    """Where tensors are one or two levels down under keys no loader here picks (DINO's 'student' / 'teacher',
    timm's 'state_dict_ema'): the rest of the "holds no tensors" sentence, naming them and how to save one as its own
    file (the message named none, and the file looked empty)."""
    found = []
    for k, v in obj.items():
        if not isinstance(v, dict):
            continue
        count = sum(isinstance(t, torch.Tensor) for t in v.values())
        if count:
            found.append(([k], count))
        for k2, v2 in v.items():
            if isinstance(v2, dict) and (n := sum(isinstance(t, torch.Tensor) for t in v2.values())):
                found.append(([k, k2], n))
    if not found:
        return "."
    where = ", ".join(one_line("".join(f"[{k!r}]" for k in keys)) + f" ({n} tensors)" for keys, n in found[:6])
    example = next((keys for keys, _ in found if any("teacher" in str(k) or "ema" in str(k).lower() for k in keys)),
                   found[0][0])
    keys = "".join(f"[{k!r}]" for k in example)
    more = f" and {len(found) - 6} more" if len(found) > 6 else ""
    return (f" at the top level or under {', '.join(repr(k) for k in WRAPPERS)}; it holds them under {where}{more}. "
            f"Choose the one that is the backbone (a teacher or EMA copy is usually the one to evaluate) and save it "
            f"as its own file: python -c "
            + shlex.quote(f"import torch; torch.save(torch.load({str(path)!r}, weights_only=True){keys}, "
                          f"'weights.pt')") + ", then give --weights weights.pt.")


def _strip_prefixes(key: str) -> str:
    """`model.backbone.conv1.weight` (Lightning) -> `conv1.weight`: wrappers' prefixes in any order and number."""
    while True:
        prefix = next((p for p in PREFIXES if key.startswith(p)), None)
        if prefix is None:
            return key
        key = key[len(prefix):]


def classifier_keys(backbone: nn.Module, state: dict) -> list[str]:
    """Keys of an ImageNet classifier (e.g. fc.*, head.*) that a num_classes=0 backbone has no place for."""
    names = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier", "fc")
    names = names if isinstance(names, (list, tuple)) else [names]
    # timm records classifier=None for encoders without one (qwen3_vit_88m_enc): None + "." was a TypeError
    names = [n for n in names if isinstance(n, str) and n]
    own = set(backbone.state_dict())
    return [k for k in state if k not in own and any(k.startswith(n + ".") for n in names)]


def architecture_of(path: str | Path | None) -> dict:
    """`width` / `small_stem` / `img_size` / `model` recorded by `fewshot export` in a safetensors file's
    metadata, or by a fewshot checkpoint (best.pt / last.pt) given as weights ({} if none).

    So that a backbone exported from a half-width, small-stem run is rebuilt the same way by
    `fewshot train --weights` / `fewshot probe` without the user repeating the options (a best.pt of a 32 px run
    used to be fine-tuned at the model's default 160 px: 10 % instead of 93 %)."""
    if not path or not Path(path).is_file():
        return {}
    if not is_safetensors(Path(path)):
        return _checkpoint_architecture(Path(path))
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return {}  # read_tensor_file reports an unreadable file with its own message
    return _recorded_architecture(meta, path)


def _checkpoint_architecture(path: Path) -> dict:
    """The same fields, from a fewshot checkpoint's own record (its config's model section and image size).
    Remembered per file version: the config resolution asks several times, and the file is read whole."""
    if not _looks_like_torch_file(path):
        return {}
    st = path.stat()
    return dict(_checkpoint_architecture_of(str(path.resolve()), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=8)
def _checkpoint_architecture_of(path: str, mtime_ns: int, size: int) -> dict:
    path = Path(path)
    try:
        ck = read_tensor_file(path)
    except CheckpointError:
        return {}  # reported when the weights are loaded
    if ck.get("format") != "fewshot-checkpoint":
        return _foreign_architecture(ck)
    model = (ck.get("config") or {}).get("model") if isinstance(ck.get("config"), dict) else None
    model = model if isinstance(model, dict) else {}
    meta = {"img_size": str(ck.get("img_size", "")), "model": str(ck.get("model_name") or model.get("name") or ""),
            "width": str(model.get("width") or ""), "small_stem": str(bool(model.get("small_stem"))).lower()}
    return _recorded_architecture(meta, path)


def _foreign_architecture(ck: dict) -> dict:
    """The model another trainer's checkpoint names at its top level, when timm has it: the official MoCo and
    DINO checkpoints keep `'arch': 'resnet50'`, and probe without --model said the file "records no model"."""
    import timm

    arch = ck.get("arch")
    if isinstance(arch, str) and arch.strip() and timm.is_model(arch.strip()):
        return {"model": arch.strip()}
    return {}


def _recorded_architecture(meta: dict, path) -> dict:
    arch = {}
    if meta.get("width"):
        arch["width"] = _recorded_width(meta["width"], path)
    if meta.get("small_stem"):
        arch["small_stem"] = meta["small_stem"].lower() == "true"
    # ASCII digits only: "²" passed str.isdigit(), then int() raised and the whole record (the model too) was lost;
    # another value is not used, as any non-number is
    size = meta.get("img_size", "")
    digits = size.lstrip("0") if isinstance(size, str) and re.fullmatch(r"[0-9]+", size) else ""
    if digits:
        from fewshot.models.backbone import MAX_IMG_SIZE

        # a file from anyone must not size the image cache (and int() of over 4300 digits raises)
        if len(digits) > 9 or int(digits) > MAX_IMG_SIZE:
            shown = digits if len(digits) <= 20 else f"{digits[:20]}... ({len(digits)} digits)"
            raise CheckpointError(f"weights file {path} records img_size {shown}, more than {MAX_IMG_SIZE} px; it "
                                  f"is not a fewshot export of a usable network.")
        arch["img_size"] = int(digits)
    if meta.get("model"):
        arch["model"] = meta["model"]
    return arch


def _recorded_width(text: str, path) -> float:
    """The width a weights file records, which the model is then built with: "nan" or "1e309" there gave
    "model.width must be in (0, 4], got nan" without naming the file the value came from."""
    try:
        width = float(text)
    except ValueError:
        width = math.nan
    if not 0.0 < width <= 4.0:  # NaN fails this too
        raise CheckpointError(f"weights file {path} records width {one_line(str(text))[:40]!r}, not a number in "
                              f"(0, 4]; it is not a fewshot export of a usable network. Use another weights file.")
    return width


def _resample_pos_embed(backbone: nn.Module, state: dict, own: dict) -> None:
    """A ViT's position embedding has one entry per patch, so it depends on the image size: weights
    trained at 224 px are resampled to this model's patch grid (bicubic), as timm's own loaders do."""
    posemb, mine = state.get("pos_embed"), own.get("pos_embed")
    if posemb is None or mine is None or posemb.shape == mine.shape or posemb.dim() != mine.dim():
        return  # another rank: reported as a shape mismatch
    try:
        if posemb.dim() == 4:
            state["pos_embed"] = _resized_pos_grid(backbone, posemb, mine)
        elif posemb.dim() == 3:
            state["pos_embed"] = _resampled_pos_tokens(backbone, posemb, mine)
    except (RuntimeError, ValueError):
        return  # another width, a grid not square in the file: left for the shape-mismatch report


def _resized_pos_grid(backbone: nn.Module, posemb: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
    """A 4-D embedding is an image of the grid, (1, C, H, W) in PiT and (1, H, W, C) in VOLO and SAM: interpolated
    over its grid axes (timm's resample_abs_pos_embed_nhwc), it was refused as a shape mismatch at any other size,
    and VOLO's was read as PiT's, resampled along the wrong axes. A file of another width C is not resampled."""
    from timm.layers import resample_abs_pos_embed_nhwc

    channels_last = _grid_is_channels_last(backbone, mine.shape)
    width = 3 if channels_last else 1
    if posemb.shape[0] != mine.shape[0] or posemb.shape[width] != mine.shape[width]:
        raise ValueError("another embedding width")  # pit_ti's (1, 64, 27, 27) was read as pit_xs's (1, 96, 27, 27)
    nhwc = posemb if channels_last else posemb.permute(0, 2, 3, 1)
    size = list(mine.shape[1:3] if channels_last else mine.shape[2:])
    grid = resample_abs_pos_embed_nhwc(nhwc.float(), new_size=size).to(posemb.dtype)
    return grid if channels_last else grid.permute(0, 3, 1, 2).contiguous()


# timm's classes with a 4-D pos_embed, by layout (True: (1, H, W, C)), for a grid whose own shape cannot tell
CHANNELS_LAST_GRIDS = {"PoolingVisionTransformer": False, "Hiera": False, "HieraDet": False, "VOLO": True,
                       "VisionTransformerSAM": True, "NaFlexVit": True}


def _grid_is_channels_last(backbone: nn.Module, model: torch.Size) -> bool:
    """Whether this model's 4-D embedding is (1, H, W, C), told by its own shape (timm builds a square grid for
    the square images fewshot trains on): (1, C, H, H) or (1, H, H, C). Square both ways or neither, by timm's
    class. Told by the axes a file shares with it, a file of another width was read in the other layout."""
    nchw, nhwc = model[2] == model[3], model[1] == model[2]
    if nchw != nhwc:
        return nhwc
    layout = CHANNELS_LAST_GRIDS.get(type(backbone).__name__)
    if layout is None:
        raise ValueError("the width axis cannot be told from the grid's")  # left to the shape-mismatch report
    return layout


def _resampled_pos_tokens(backbone: nn.Module, posemb: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
    """A (1, tokens, C) embedding: the tokens before the grid are the model's length less the grid's H*W, not its
    num_prefix_tokens: CaiT adds its class token after the embedding (0 extra rows, though it counts 1)."""
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    if grid is None or posemb.shape[-1] != mine.shape[-1]:
        raise ValueError("no patch grid, or another embedding width")
    prefix = mine.shape[1] - math.prod(grid)
    if prefix < 0:
        raise ValueError("an embedding shorter than the grid")
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(posemb.float(), new_size=list(grid), num_prefix_tokens=prefix).to(posemb.dtype)


def _resize_rel_pos_tables(backbone: nn.Module, state: dict, own: dict) -> None:
    """Window-attention models (Swin, MaxViT, CoAtNet, GCViT) keep a relative-position bias table per window, whose
    size follows the window and so the image size: a table trained at another size is interpolated to this
    model's window with timm's resize_rel_pos_bias_table, as timm's loaders do for pretrained weights."""
    from timm.layers import resize_rel_pos_bias_table

    for k, v in list(state.items()):
        if not k.endswith("relative_position_bias_table") or k not in own or own[k].shape == v.shape:
            continue
        try:
            window = getattr(backbone.get_submodule(k.rsplit(".", 1)[0]), "window_size", None)
            if window is None or v.dim() != own[k].dim():
                continue
            window = tuple(window) if isinstance(window, (tuple, list)) else (int(window), int(window))
            with warnings.catch_warnings():  # torch's notes on timm's interpolation internals, not the user's
                warnings.simplefilter("ignore", UserWarning)
                state[k] = resize_rel_pos_bias_table(v.float(), new_window_size=window,
                                                     new_bias_shape=tuple(own[k].shape)).to(v.dtype)
        except (AttributeError, AssertionError, RuntimeError, ValueError):
            continue  # left for the shape-mismatch report


def weights_note(loaded: dict | None, path) -> str:
    """` from weights F (N of M weights)` for a command's start-up line ('' when no weights file was loaded)."""
    if not loaded:
        return ""
    return f" from weights {path} ({loaded['loaded']} of {loaded['total']} weights)"


def load_backbone_weights(backbone: nn.Module, path: str | Path, strict: bool = True, quiet: bool = False,
                          load: bool = True) -> dict:
    """Load into `backbone`; strict refuses missing/unexpected keys (classifier heads are dropped). ``quiet``: no
    model.strict=false warning (the caller has given it for this file already). ``load=False``: the checks only
    (a backbone on the meta device: check_before_build). Returns the counts of weights (parameters and BatchNorm
    statistics, step counters left out) loaded and in the model."""
    path = check_weights_path(path)  # given as typed: Path() made `https://x/y.pth` the file `https:/x/y.pth`
    state = backbone_state_from(read_tensor_file(path), path)
    for k in classifier_keys(backbone, state):
        state.pop(k)
    own = backbone.state_dict()
    for k, v in list(state.items()):  # a file cast whole to fp16: its counters are floats, still step counts
        if _counter(k) and k in own and v.is_floating_point() and not own[k].is_floating_point():
            if v.numel() == own[k].numel() and _finite_as(v, torch.float32):
                state[k] = v.to(torch.float32).round().to(own[k].dtype).reshape(own[k].shape)
            else:
                state.pop(k)  # the model's own counter stays (it only counts steps)
    _resample_pos_embed(backbone, state, own)
    _resize_rel_pos_tables(backbone, state, own)
    mismatched, broken = fit_problems(state, own)
    missing = [k for k in own if k not in state and not _counter(k)]
    # the weights first: a list that began with BatchNorm step counters named nothing telling
    unexpected = sorted((k for k in state if k not in own), key=_counter)
    weights = [k for k in own if not _counter(k)]
    loaded = [k for k in weights if k in state]  # counters that match are loaded, not counted: they are no weights
    if mismatched or (strict and (missing or unexpected)):
        parts = [f"weights file {path} does not fit the model ({type(backbone).__name__})."]
        more = lambda keys: f" and {len(keys) - 8} more" if len(keys) > 8 else ""  # noqa: E731 (lists ran together)
        if mismatched:
            parts.append(f"{len(mismatched)} shape/dtype mismatch(es): " + "; ".join(mismatched[:8]) + more(mismatched)
                         + ".")
        if missing:
            parts.append(f"{len(missing)} missing key(s): " + ", ".join(missing[:8]) + more(missing) + ".")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected[:8]) + more(unexpected) + ".")
        from fewshot.models.backbone import same_architecture

        recorded = architecture_of(path).get("model")  # a tag (resnet18.tv_in1k) names no other network
        if recorded and not same_architecture(recorded, getattr(backbone, "default_cfg", {}).get("architecture",
                                                                                                 recorded)):
            parts.append(f"The file records the model '{recorded}': pass --model {recorded}.")  # a MoCo file's arch too
        if not mismatched and not loaded:  # model.strict=false would only say that nothing matches
            parts.append(f"No weight in the file has a name of the model (file keys like "
                         f"{', '.join(list(state)[:2]) or '-'}; the model's like {', '.join(weights[:2])}), so "
                         f"model.strict=false would load nothing: the file holds another architecture, or names its "
                         f"keys another way (a wrapper's prefix, an nn.Sequential's numbers); re-save it with the "
                         f"model's key names.")
        parts.append("Check --model (and model.width / model.small_stem, and for a ViT --img-size) matches the "
                     "architecture the file was trained with"
                     + ("" if not strict or mismatched or not loaded else
                        ", or (train, pretrain, run) pass model.strict=false to load the matching part") + ".")
        raise CheckpointError(" ".join(parts))
    if broken:  # named here; in training they surfaced as "the loss became nan ... lower the learning rate"
        raise CheckpointError(f"weights file {path} holds NaN or infinite values in {len(broken)} tensor(s) "
                              f"({', '.join(broken[:4])}{', ...' if len(broken) > 4 else ''}); it cannot be trained "
                              f"from. Use an earlier checkpoint of the run that wrote it.")
    if not loaded:  # BatchNorm step counters alone are no weights: the backbone would stay wholly random
        counters = "; only BatchNorm step counters match, no weights" if len(state) > len(unexpected) else ""
        raise CheckpointError(f"weights file {path}: none of its {len(state)} tensor(s) matches a weight of the "
                              f"model ({type(backbone).__name__}; file keys like {', '.join(list(state)[:3]) or '-'}"
                              f"{counters}); check --model, or the file is not a backbone of this architecture.")
    unused = [k for k in unexpected if not _counter(k)]
    if (missing or unused) and not quiet:  # model.strict=false: a mostly random backbone must not go unnoticed
        print(f"warning: {path}: loaded {len(loaded)} of the model's {len(weights)} weights (model.strict=false; "
              f"BatchNorm step counters not counted); {len(missing)} left at random init{_some(missing)}, "
              f"{len(unused)} in the file unused{_some(unused)}", file=sys.stderr)
    if load:
        backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"loaded": len(loaded), "total": len(weights), "missing": missing, "unexpected": unexpected}


def _some(keys: list[str]) -> str:
    """` (a, b, c, d, ...)` naming the first keys, '' for none: the warning read "0 left at random init ()"."""
    return f" ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})" if keys else ""


def check_before_build(build, path: str | Path, strict: bool = True) -> None:
    """Check the weights file ``path`` against the model ``build()`` makes, built on the meta device (shapes and
    dtypes, no memory): a 1.5 MB file whose metadata names vit_giant_patch14_dinov2 had probe allocate that model
    (GBs) before any key was compared."""
    path = check_weights_path(path)
    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception:  # noqa: BLE001 - an init step the meta device cannot run: the caller's real build and load
        return         # check the file instead (as takes_img_size keeps its guess)
    load_backbone_weights(skeleton, path, strict=strict, quiet=True, load=False)
