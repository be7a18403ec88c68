"""Reading a weights or checkpoint file safely: safetensors, or `torch.load(weights_only=True)` only.

Apart from models/weights.py (which finds a backbone in what is read and loads it) because checkpoints, probe,
report and the CLI read or check a file without loading a backbone. A folder, a URL, a pipe or an empty file is
named as such, a TorchScript archive or a compressed (zip bomb) member is refused unopened, and a pickle holding
code is refused by what it holds.
"""

from __future__ import annotations

import os
import pickle
import re
import stat
import warnings
import zipfile
from pathlib import Path

import torch

from fewshot.errors import CheckpointError, is_utf8_name, one_line


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
