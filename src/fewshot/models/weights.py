"""Loading weights from files we did not write: safetensors or `torch.load(weights_only=True)` only.

Accepts a plain state dict, a safetensors file, a timm/torchvision checkpoint ({"state_dict": ...}
or {"model": ...}), an exported fewshot backbone, or a fewshot MoCo/fine-tuning checkpoint.
Common wrapper prefixes are stripped; mismatches are reported by name, never as a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import pickle
import re
import reprlib
import shlex
import stat
import sys
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.module import (register_module_buffer_registration_hook,
                                    register_module_parameter_registration_hook)
from torch.overrides import TorchFunctionMode

from fewshot.errors import CheckpointError, is_utf8_name, one_line

PREFIXES = ("module.", "_orig_mod.", "encoder_q.backbone.", "encoder_q.0.", "encoder_q.", "backbone.", "model.")
WRAPPERS = ("state_dict", "model", "model_state", "module")  # the keys a checkpoint keeps its state dict under
# the MoCo key encoder and queue (official checkpoints), and the count of keys enqueued (fewshot's own MoCo module)
MOCO_ONLY = ("encoder_k", "queue", "queue_ptr", "queue_filled")
OUTER_PREFIXES = ("module.", "_orig_mod.", "model.")  # a wrapper around a whole MoCo module (DDP, compile, Lightning)


def is_safetensors(path: Path) -> bool:
    """By name or by content (an 8-byte header length, then a JSON header), so that a safetensors file
    saved or renamed as `backbone.pt` is still read as one rather than handed to torch.load."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return path.suffix == ".safetensors"
    if path.suffix == ".safetensors" and not head.startswith((b"PK", b"\x80")):  # a torch.save file so named is
        return True                                                               # read as one (sniffed below)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


def check_weights_path(path: str | Path) -> Path:
    """The checks a weights path gets before anything reads it (a folder, a missing or empty file, a URL), each a
    CheckpointError that says what to give. A run folder is named as one, with the file in it to give."""
    typed = os.fspath(path)  # a Path of `https://x/y.pth` is `https:/x/y.pth`: the URL is named as typed
    if remote_name(typed) and not os.path.exists(typed):
        example = one_line(_remote_file_name(typed))
        raise CheckpointError(f"weights {one_line(typed)!r} is a URL or hub name: fewshot never downloads "
                              f"weights. Download the file yourself and give its path, e.g. --weights "
                              f"~/weights/{example}.")
    path = Path(path)
    if path.is_dir():
        runs = (path / "checkpoints").is_dir() or (path / "run_state.json").is_file()
        hint = (f" {path} is a run folder: `fewshot export {path} --out backbone.safetensors` writes its backbone "
                f"as one" if runs else "")
        raise CheckpointError(f"{path} is a folder; --weights takes a weights file (.safetensors, .pt, .pth).{hint}")
    if not path.is_file():
        _refuse_special_file(path)
        raise CheckpointError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file {path} is empty (0 bytes).")
    if is_safetensors(path):  # its header first: a corrupt file without --model was "--model is required"
        _check_safetensors_header(path)
    return path


def _refuse_special_file(path: Path) -> None:
    """A path that exists but is no regular file (/dev/null, a FIFO, a process substitution's /dev/fd/63) was
    "not found". A pipe cannot be read either: torch.load seeks in the file and safetensors maps it, so it is
    refused by its kind, without opening it (opening a FIFO waits for a writer)."""
    try:
        mode = path.stat().st_mode
    except OSError:  # missing, a dangling link, or a folder above it not searchable: "not found" says it
        return
    kind = ("a pipe (FIFO), as a process substitution <(...) gives" if stat.S_ISFIFO(mode) else
            "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) else
            "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise CheckpointError(f"weights file {path} exists but is {kind}: weights are read by seeking in (or mapping) "
                          f"a file on disk, which this cannot do. Save the weights to a file (e.g. "
                          f"weights.safetensors) and give --weights that file's path.")


def _check_safetensors_header(path: Path) -> None:
    """Parse a safetensors file's header (names, dtypes, offsets; no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as exc:  # safetensors' own error types (SafetensorError, ...) vary between versions
        raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from None


def remote_name(text: str) -> bool:
    """`https://...`, `s3://...` or a hub name (`hf-hub:timm/resnet18.a1_in1k`, as timm takes it): names of weights
    somewhere else, which fewshot does not fetch (config records them as typed, for this message)."""
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text)) or text.startswith(("hf-hub:", "hf_hub:"))


def _remote_file_name(text: str) -> str:
    """The last part of a URL, for the example path (`model.pth`), without its query string."""
    name = text.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return name[:80] if re.search(r"\.(pth?|bin|safetensors|ckpt|tar)$", name) else "model.safetensors"


def read_tensor_file(path: str | Path, mmap: bool = False) -> dict:
    """Read a checkpoint or weights file safely; any failure becomes a CheckpointError naming the file.
    ``mmap``: a torch file's tensors are mapped, not read (a reader of a few numbers in a large checkpoint)."""
    path = check_weights_path(path)
    if is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from None
    _refuse_compressed_members(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": noise next to the error below
            # torch maps only a file named by its path, which it encodes as UTF-8: a name that is not (os.fsdecode
            # gives "o\udcff" for b"o\xff") failed as a truncated file, so such a file is read whole instead
            if mmap and path.suffix != ".safetensors" and is_utf8_name(os.fsdecode(path)):
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            else:
                with open(path, "rb") as f:  # an open file: torch would read a `.safetensors` name as safetensors
                    obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _looks_like_torch_file(path):  # text, an image, ...: torch's legacy reader calls that a bad pickle
            raise CheckpointError(f"cannot read {path}: not a PyTorch (.pt/.pth) or safetensors weights file "
                                  f"({_kind_of(path)}).") from None
        raise CheckpointError(
            f"refused to load {path}: it contains Python objects other than tensors and plain containers, "
            f"which could run code when unpickled (loaded with weights_only=True). Re-save it as a plain "
            f"state dict or safetensors. Detail: {_unpickling_detail(exc)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {path}: the file is truncated or not a PyTorch/safetensors "
                              f"weights file ({first.split('. ')[0][:200]}).") from None
    except Exception as exc:  # torch's legacy reader fails on arbitrary bytes in its own ways (`KeyError: 101`)
        if not _looks_like_torch_file(path):
            raise CheckpointError(f"cannot read {path}: not a PyTorch (.pt/.pth) or safetensors weights file "
                                  f"({_kind_of(path)}).") from None
        raise CheckpointError(f"cannot read {path}: the file is damaged or not a weights file "
                              f"({type(exc).__name__}: {str(exc)[:200]}).") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    return obj


def _refuse_compressed_members(path: Path) -> None:
    """torch.save stores its zip members uncompressed; a deflated member is not from torch.save, and a 1 MB file
    inflating to 1.7 GB in torch.load is a zip bomb, refused before anything is inflated. A TorchScript archive
    (torch.jit.save) is told by its member names alone (never loaded: it holds code), and named as one."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load names what is wrong with it
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if any(_torchscript_member(i.filename) for i in infos):
        raise CheckpointError(f"{path} is a TorchScript model (torch.jit.save): it holds code, and is not loaded. "
                              f"Save the model's weights instead, torch.save(model.state_dict(), 'weights.pt'), "
                              f"and give that file.")
    if packed:
        raise CheckpointError(f"{path} holds compressed members ({', '.join(packed[:3])}); torch.save never "
                              f"compresses, so it is not a checkpoint written by torch.save, and it is not loaded.")


def _torchscript_member(name: str) -> bool:
    """torch.jit.save writes `ARCHIVE/constants.pkl` and `ARCHIVE/code/...` (its Python source); torch.save
    writes neither (data.pkl, data/N, version, byteorder)."""
    parts = name.split("/")
    return len(parts) >= 2 and (parts[1] == "constants.pkl" or (parts[1] == "code" and len(parts) > 2))


def _head(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _kind_of(path: Path) -> str:
    """What the file looks like, without quoting it: its first bytes were shown, and for a checkpoint linked to
    another file (a run folder from elsewhere, best.pt -> /etc/passwd) they were that file's content."""
    head = _head(path, 64)
    text = head.decode("utf-8", "ignore")  # 64 bytes may end inside a character
    is_text = len(text.encode()) >= len(head) - 3 and all(c.isprintable() or c in "\n\r\t" for c in text)
    return "it looks like a text file" if is_text else "it holds other binary data"


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (``PK``); the legacy format is a pickle (protocol byte 0x80)."""
    head = _head(path, 2)
    return head.startswith(b"PK") or head.startswith(b"\x80")


def _unpickling_detail(exc: Exception) -> str:
    """What torch's weights_only unpickler refused (e.g. `GLOBAL posix.system`), without the boilerplate
    around it (which suggests retrying with the unsafe full unpickler)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if m:
        detail = m.group(1)
    else:
        detail = next((ln for ln in text.splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
    detail = detail.strip().split(". ")[0].rstrip(".")
    return (detail or "unsupported pickle content")[:300]


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
    posemb = state.get("pos_embed")
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    if posemb is None or grid is None or "pos_embed" not in own or posemb.shape == own["pos_embed"].shape:
        return
    if posemb.dim() != 3 or posemb.shape[-1] != own["pos_embed"].shape[-1]:
        return  # not the same embedding width: reported as a shape mismatch
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(backbone, "no_embed_class", False) else int(getattr(backbone, "num_prefix_tokens", 1))
    try:
        state["pos_embed"] = resample_abs_pos_embed(posemb.float(), new_size=list(grid),
                                                    num_prefix_tokens=prefix).to(posemb.dtype)
    except (RuntimeError, ValueError):
        return  # a grid that is not square in the file: left for the shape-mismatch report


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


def _counter(key: str) -> bool:
    """BatchNorm's step counter: not a weight (many published checkpoints leave it out, or cast it to fp16)."""
    return key.endswith("num_batches_tracked")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _finite_as(v: torch.Tensor, dtype: torch.dtype) -> bool | None:
    """Whether floating ``v`` is finite once in ``dtype`` (the model's): float8 and other low-precision types have
    no isfinite kernel but convert exactly, and a float64 value past float32's range would load as inf. None for a
    type torch cannot convert (packed float4)."""
    try:
        return bool(torch.isfinite(v.to(dtype)).all())
    except (RuntimeError, TypeError):
        return None


def _converts(v: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether torch can convert ``v``'s dtype to ``dtype``, tried on one element (packed float4 cannot): the
    meta-device pass reads no values."""
    try:
        (v[(0,) * v.dim()] if v.numel() else v).to(dtype)
    except (RuntimeError, TypeError):
        return False
    return True


def _bad_values(v: torch.Tensor, mine: torch.Tensor) -> bool:
    """Whether ``v``, once in the model's dtype, holds NaN, or an infinity where the model's own value (``mine``,
    same shape) is not that infinity: timm's gemma4 clipping buffers start at -inf/+inf on purpose, and a file
    that keeps them is healthy. Only for a model with values (not on the meta device)."""
    x = v.to(mine.dtype)
    if bool(torch.isfinite(x).all()):
        return False
    if bool(torch.isnan(x).any()):
        return True
    return bool((torch.isinf(x) & (x != mine.detach().to(x.device))).any())


def _float_counter(key: str, v: torch.Tensor, mine: torch.Tensor) -> bool:
    """A BatchNorm step counter that is a float in the file where the model's is an integer: a checkpoint cast whole
    to fp16 ({k: v.half()}). Only load_backbone_weights rounds it back (or keeps the model's, past fp16's range);
    eval and predict load a checkpoint with load_state_dict, which casts it as it is (truncated; an fp16 inf is no
    count at all). A step count, no weight (BatchNorm with a momentum never reads it): no reason to refuse the file."""
    return _counter(key) and v.is_floating_point() and not mine.is_floating_point() and not mine.is_complex()


def fit_problems(state: dict, own: dict) -> tuple[list[str], list[str]]:
    """The tensors of ``state`` that cannot go into a model whose state dict is ``own`` (real or on the meta
    device), in file order: (shape or dtype mismatches, names of tensors holding NaN/inf). One check for every
    reader of weights (train --weights, probe, eval/predict, export): load_state_dict casts int and complex tensors
    to float silently, and a NaN backbone predicted class 0 for every image with exit 0. Against a model on the
    meta device only keys, shapes and dtypes are compared: values are tested once, in the real load."""
    mismatched, broken = [], []
    for k, v in state.items():
        mine = own.get(k)
        if mine is None:
            continue
        if mine.shape != v.shape:
            mismatched.append(f"{k}: file {tuple(v.shape)} vs model {tuple(mine.shape)}")
        elif shows_more_than_stored(v):
            mismatched.append(f"{k} {_view_text(v)}")
        elif _float_counter(k, v, mine):
            continue
        elif v.is_floating_point() != mine.is_floating_point() or v.is_complex():  # float16/bfloat16/float8 load fine
            mismatched.append(f"{k}: file dtype {_dtype_name(v.dtype)} vs model {_dtype_name(mine.dtype)}")
        elif v.is_floating_point():
            if not _converts(v, mine.dtype):
                mismatched.append(f"{k}: file dtype {_dtype_name(v.dtype)} cannot be converted to the model's "
                                  f"{_dtype_name(mine.dtype)}")
            elif not mine.is_meta and _bad_values(v, mine):
                broken.append(k)
    return mismatched, broken


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


def check_state_fits(state: dict, own: dict, path, what: str) -> None:
    """A checkpoint's ``what`` state (model, ema) against the model built for it (``own``: its state dict): int,
    complex or NaN tensors, which load_state_dict would take, are refused in one paragraph naming the file and the
    first bad tensor. Shapes and keys are left to load_state_dict, whose message names them all."""
    mismatched, broken = fit_problems({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, own)
    if mismatched:
        raise CheckpointError(f"{path} cannot be used: its {what} state holds {len(mismatched)} tensor(s) that are "
                              f"no weights of its model (the first: {mismatched[0]}); it was not written by fewshot "
                              f"or was altered.")
    if broken:
        raise CheckpointError(f"{path} cannot be used: its {what} state holds NaN or infinite values in "
                              f"{len(broken)} tensor(s) (the first: {broken[0]}); its predictions would be "
                              f"meaningless. The run diverged or the file was altered: use another checkpoint.")


def state_value_problem(state: dict) -> str | None:
    """Without a model to compare with: the first tensor of ``state`` that no weight can be (complex, bool, a
    float type torch cannot convert, NaN), or None; integer tensors pass (step counters, index buffers). An
    infinity is no sign of damage here: a model may start a buffer at inf (timm's gemma4 clipping bounds), and
    only its own values tell (fit_problems); a float step counter past fp16's range is inf, and only counts."""
    for k, v in state.items():
        if shows_more_than_stored(v):
            return f"{k} {_view_text(v)}"
        if v.is_complex() or v.dtype == torch.bool:
            return f"{k} has dtype {_dtype_name(v.dtype)}"
        if v.is_floating_point():
            if not _converts(v, torch.float32):
                return f"{k} has dtype {_dtype_name(v.dtype)}, which cannot be converted to float32"
            if not _counter(k) and bool(torch.isnan(v.to(torch.float32)).any()):
                return f"{k} holds NaN or infinite values"
    return None


def _infinite_keys(state: dict) -> list[str]:
    """The floating tensors of ``state`` holding an infinity (step counters left out: see state_value_problem)."""
    return [k for k, v in state.items()
            if v.is_floating_point() and not _counter(k) and _finite_as(v, torch.float32) is False]


# A file far smaller than its model is no whole backbone (train --weights refuses it): its infinities are judged
# without building the model for real, which a small file naming a giant ViT made allocate gigabytes
REAL_BUILD_SHARE, REAL_BUILD_FLOOR = 8, 64 << 20  # float8 files hold a quarter of a float32 model's bytes


def _nbytes(state: dict) -> int:
    """A model's own state (built on the meta device, so no storage to count): each tensor its shape's bytes."""
    return sum(v.numel() * v.element_size() for v in state.values())


def _stored_bytes(state: dict) -> int:
    """The bytes a file's ``state`` really holds, each storage once: its shapes' bytes counted a 1.7 KB file of a
    zero-stride `torch.zeros(1).expand(1 << 28)` as 1 GiB, which let it have an 8 GiB model built for real."""
    storages = {}
    for v in state.values():
        try:
            storage = v.untyped_storage()
            key, size = (str(storage.device), storage.data_ptr()), storage.nbytes()
        except (RuntimeError, NotImplementedError, TypeError):  # no plain storage (a sparse tensor): its shape
            key, size = id(v), v.numel() * v.element_size()
        storages[key] = max(size, storages.get(key, 0))
    return sum(storages.values())


def shows_more_than_stored(v: torch.Tensor) -> bool:
    """Whether ``v`` shows more values than its storage holds (a zero-stride `expand`, an overlapping `as_strided`):
    torch.load(weights_only=True) keeps such a view as saved, and a model's saved weights never are one."""
    if v.is_meta or v.numel() <= 1:
        return False
    try:
        return any(n > 1 and st == 0 for n, st in zip(v.shape, v.stride())) or \
            v.numel() * v.element_size() > v.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # no strides or storage (sparse): left to the load
        return False


def _view_text(v: torch.Tensor) -> str:
    return (f"is shaped {tuple(v.shape)} over a storage of {v.untyped_storage().nbytes() // max(v.element_size(), 1)} "
            f"value(s) (a zero-stride or overlapping view), a view that a model's saved weights never are")


class _TooLarge(Exception):
    """A real build that passed its byte limit (_size_limited): stopped before it took that memory."""


# the tensor factories a module's build calls (nn.Linear: torch.empty; timm: torch.zeros, torch.randn, torch.arange,
# torch.linspace, ...) that TorchFunctionMode sees and that take device="meta"
_FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
                        torch.empty_strided, torch.empty_like, torch.zeros_like, torch.ones_like, torch.full_like,
                        torch.rand_like, torch.randn_like, torch.randint_like, torch.arange, torch.linspace,
                        torch.logspace, torch.eye, torch.normal, torch.randperm, torch.Tensor.new_empty,
                        torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_full})


def _legacy_new_bytes(args) -> int | None:
    """The bytes of the legacy `t.new(n, m)` / `t.new(torch.Size(...))` constructor, which refuses the meta device:
    its shape from the ints given, None for data (`t.new([1.0])` or a tuple, bounded by what it copies)."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    dims = args[1:]
    if len(dims) == 1 and isinstance(dims[0], torch.Size):
        dims = tuple(dims[0])
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        return None
    return math.prod(dims) * args[0].element_size()


class _FactoryBytes(TorchFunctionMode):
    """Sizes each factory call on the meta device before it allocates, and stops the build (_TooLarge) once their
    bytes together pass ``limit``: the registration hooks see a tensor only once it exists, and one huge Parameter
    was allocated in full. Temporaries count too, so the limit is an upper bound. Per thread (torch's modes are).
    The bound covers the factories listed (_FACTORIES) and the legacy `t.new(n)`; `torch.Tensor(n)` and C++ code,
    which the mode never sees, are counted only once registered (_size_limited)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.total = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        size = None
        if func in _FACTORIES and "out" not in kwargs:
            try:
                shown = func(*args, **{**kwargs, "device": "meta"})
            except (RuntimeError, TypeError, ValueError):  # the real call raises its own error
                shown = None
            if isinstance(shown, torch.Tensor):
                size = shown.numel() * shown.element_size()
        elif func is torch.Tensor.new:
            size = _legacy_new_bytes(args)
        if size is not None:
            self.total += size
            if self.total > self.limit:
                raise _TooLarge
        return func(*args, **kwargs)


@contextlib.contextmanager
def _size_limited(limit: int | None):
    """Stop a model's build (_TooLarge) past ``limit`` bytes: a model the meta device cannot build has no size known
    before it is built, and a small file naming a giant one had it allocated whole. Two counts, each against
    ``limit``: the torch factory calls of this thread (_FactoryBytes, before each allocates), and the parameters and
    buffers registered (tensors made otherwise: torch.tensor, C++ code), which bounds only between tensors (one is
    counted once it exists) and, as torch's registration hooks are process-global, counts another thread's modules
    built meanwhile too."""
    if limit is None:
        yield
        return
    sizes, total = {}, 0

    def count(module, name, tensor):
        nonlocal total
        size = 0 if tensor is None else tensor.numel() * tensor.element_size()
        total += size - sizes.get((id(module), name), 0)
        sizes[(id(module), name)] = size
        if total > limit:
            raise _TooLarge

    handles = [register_module_parameter_registration_hook(count), register_module_buffer_registration_hook(count)]
    try:
        with _FactoryBytes(limit):
            yield
    finally:
        for handle in handles:
            handle.remove()


def infinity_problem(state: dict, ck: dict, prefix: str = "", skeleton: dict | None = None) -> str | None:
    """The first tensor of ``state`` holding an infinity that the model ``ck``'s config names does not start with
    (``prefix``: its backbone's keys in ``state``; others never start at inf), or None. Keys and shapes are compared
    on the meta device first (``skeleton``, when the caller has it): an infinity under a key the model lacks, or of
    another shape, is damage, and passed export silently. Only infinities under the model's own keys need its
    values, and the model is built for real for them only when the file is not far smaller than it (or when it
    cannot be built on the meta device)."""
    infinite = _infinite_keys(state)
    if not infinite:
        return None
    limit = max(REAL_BUILD_SHARE * _stored_bytes(state), REAL_BUILD_FLOOR)
    own = {prefix + k: v for k, v in (_skeleton_state(ck) if skeleton is None else skeleton).items()}
    if not own:  # an init step the meta device cannot run (as check_before_build): the real build alone tells,
        # stopped where it passes the limit ({}: then no infinity is the model's own)
        own = {prefix + k: v for k, v in _skeleton_state(ck, meta=False, limit=limit).items()}
    broken = next((k for k in infinite if k not in own or own[k].shape != state[k].shape), None)
    if broken is None and any(v.is_meta for v in own.values()) and _nbytes(own) <= limit:
        own = {prefix + k: v for k, v in _skeleton_state(ck, meta=False).items()}
    if broken is None:  # a model that cannot be built, or too large to: its infinities cannot be its own values
        broken = next((k for k in infinite if k not in own or own[k].is_meta or own[k].shape != state[k].shape
                       or _bad_values(state[k], own[k])), None)
    return None if broken is None else f"{broken} holds NaN or infinite values"


def check_export_state(state: dict, ck: dict, path) -> None:
    """Before `fewshot export` writes a checkpoint's backbone: the values `train --weights` refuses (export wrote a
    NaN or int backbone, and its message suggested train --weights, which then refused the file). Integer tensors
    are compared with the model's, built on the meta device (no memory), when its config names one; a float step
    counter (a checkpoint cast whole to fp16) loads as one. Infinities, which a model may hold on purpose, are
    judged by infinity_problem."""
    problem = state_value_problem(state)
    own = None
    if problem is None:
        own = _skeleton_state(ck)
        problem = next((f"{k} has dtype {_dtype_name(v.dtype)} where the model has {_dtype_name(own[k].dtype)}"
                        for k, v in state.items() if k in own and not _float_counter(k, v, own[k])
                        and v.is_floating_point() != own[k].is_floating_point()), None)
    if problem is None:
        problem = infinity_problem(state, ck, skeleton=own)
    if problem:
        raise CheckpointError(f"{path} cannot be exported: its backbone tensor {problem}; `fewshot train --weights` "
                              f"would refuse the file. The run diverged or the file was altered: export another "
                              f"checkpoint of the run.")


def _skeleton_state(ck: dict, meta: bool = True, limit: int | None = None) -> dict:
    """The state dict (meta tensors, or with ``meta=False`` the values a fresh model starts with) of the backbone a
    checkpoint's config describes, {} when it names none that can be built (or, ``limit`` given, none within that
    many bytes)."""
    from fewshot.errors import UserError
    from fewshot.models.backbone import backbone_options, create_backbone

    model = (ck.get("config") or {}).get("model") if isinstance(ck.get("config"), dict) else None
    name = ck.get("model_name") or (model.get("name") if isinstance(model, dict) else None)
    if not isinstance(name, str) or not isinstance(model, dict):
        return {}
    try:
        with torch.device("meta" if meta else "cpu"), _size_limited(limit):
            return create_backbone(name, **backbone_options(model)).state_dict()
    except (UserError, TypeError, ValueError, RuntimeError, KeyError, AttributeError, _TooLarge):
        return {}
