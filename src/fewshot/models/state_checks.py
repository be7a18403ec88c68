"""Checks of a state dict's values: whether its tensors can be a model's weights (dtype, NaN, infinities, views
that show more values than they store), and the size-limited builds of a model that judge an infinity.

Apart from models/weights.py (which loads a file into a backbone) because eval/predict and ssl/export check a
checkpoint's state without loading a weights file.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.nn.modules.module import (register_module_buffer_registration_hook,
                                    register_module_parameter_registration_hook)
from torch.overrides import TorchFunctionMode

from fewshot.errors import CheckpointError


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
