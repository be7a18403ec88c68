"""Process-level settings for CPU training speed: the C allocator and the thread count.

Why the allocator: a training step on the CPU allocates and frees the same large activation
buffers (tens of MB) every step. glibc's malloc hands blocks above its mmap threshold back to
the kernel on free and trims the heap top, so the next step faults every page in again and the
kernel zeroes it: about 25,000 minor page faults per MoCo step (resnet18, 64 px, batch 64),
a large share of the step on 2 cores. Keeping freed memory in the process (fixed mmap
threshold at glibc's maximum, no trimming) removes almost all of them; the peak memory is
unchanged (the same buffers are reused), only the return of memory to the OS after a step is
skipped. Numbers and the ablation: docs/performance.md.

Opt out with ``FEWSHOT_MALLOC_TUNE=0``; a no-op on non-glibc systems and when glibc was
already tuned through the ``MALLOC_*_`` environment variables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import statistics
import sys
import time

import torch

__all__ = ["tune_allocator", "allocator_tuned", "configure_cpu", "resolve_compile", "compile_modules",
           "compiled_modules", "uncompile", "is_compile_failure", "raised_in_compiled_code", "inductor_cache_dir",
           "compile_failure_text", "compile_remedy",
           "cpu_computes_bf16", "bf16_conv_speedup", "CPU_BF16_MIN_SIZE", "cpu_fp16_warning"]

# Smallest image side at which `train.amp=auto` uses bf16 on a CPU that computes it natively: a MoCo step
# at 64 px ran 1.4x faster in bf16, at 32 px within the noise of fp32 (docs/performance.md, "bf16 ...");
# with model.small_stem the input counts double (its stages see the maps of a 2x larger input).
CPU_BF16_MIN_SIZE = 48

DEFAULT_THREADS = torch.get_num_threads()  # torch's own count, before any run set one (process_state restores it)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the largest it accepts
_TRIM_THRESHOLD = 2**31 - 1  # int: never trim the heap top back to the OS
_tuned: bool | None = None


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` changed glibc's settings in this process."""
    return bool(_tuned)


def tune_allocator(enabled: bool | None = None) -> bool:
    """Keep freed memory in the process (glibc only); returns whether the setting is active.

    ``enabled=None`` reads ``FEWSHOT_MALLOC_TUNE`` (default on). Idempotent.
    """
    global _tuned
    if enabled is None:
        enabled = os.environ.get("FEWSHOT_MALLOC_TUNE", "1").strip().lower() not in ("0", "false", "no", "off")
    if not enabled:
        return bool(_tuned)
    if _tuned is not None:
        return _tuned
    _tuned = False
    if platform.system() != "Linux" or any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):  # musl etc.: different allocator, leave it alone
            return False
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
        _tuned = ok
    except (OSError, AttributeError):
        _tuned = False
    return _tuned


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity: a cluster job's share, not the whole node)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


CGROUP_CPU_FILES = (("/sys/fs/cgroup/cpu.max", None),  # cgroup v2: "QUOTA PERIOD" or "max PERIOD"
                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"))  # v1; -1: none


def cpu_quota_cores() -> int | None:
    """The cores a container's cgroup CPU quota grants (rounded up), None where no quota is set or readable: a
    container may hold all the host's cores in its affinity and a quota of a few of them."""
    for quota_file, period_file in CGROUP_CPU_FILES:
        try:
            with open(quota_file) as f:
                words = f.read().split()
            if period_file is not None:
                with open(period_file) as f:
                    words = words[:1] + f.read().split()[:1]
        except OSError:
            continue
        if len(words) < 2 or not words[0].lstrip("-").isdigit() or not words[1].isdigit():
            return None  # "max": no quota
        quota, period = int(words[0]), int(words[1])
        return -(-quota // period) if quota > 0 and period > 0 else None
    return None


def configure_cpu(threads: int | None = None, allocator: bool | None = None) -> dict:
    """Thread count (``None``: torch's default, one per core) and the allocator; returns what is set.

    One process, one intra-op pool: fewshot's augmentation runs on batches in the training
    process (no DataLoader workers), so data work and compute take turns on the same threads
    instead of fighting over the cores.
    """
    if threads:
        cores = usable_cores()
        if int(threads) > cores:  # 1000 threads on 2 cores: every OpenMP barrier waits on the scheduler
            print(f"[fewshot] train.threads={threads} is more than the {cores} usable cores of this machine; "
                  f"using {cores}.", flush=True)
        torch.set_num_threads(min(int(threads), cores))
    return {"threads": torch.get_num_threads(), "malloc_tuned": tune_allocator(allocator)}


def forced_cpu_bf16() -> bool | None:
    """FEWSHOT_CPU_BF16 read (None: unset). Checked at start-up too (cli.main): a typo found only when training
    began had already left a `fewshot run` folder that the next attempt refused."""
    forced = os.environ.get("FEWSHOT_CPU_BF16", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if forced:
        from fewshot.errors import UserError

        raise UserError(f"FEWSHOT_CPU_BF16={os.environ['FEWSHOT_CPU_BF16']!r}: use 1 (the CPU computes bf16) or 0 "
                        f"(it does not), or unset it to detect.")
    return None


ENV_WORDS = {"FEWSHOT_MALLOC_TUNE": ("1", "0", "true", "false", "yes", "no", "on", "off"),
             "FEWSHOT_OMP_WAIT": ("spin", "passive")}


def check_environment() -> None:
    """FEWSHOT_* variables checked at start-up of the training commands: a typo (`FEWSHOT_OMP_WAIT=passiv`)
    was ignored silently, and one of FEWSHOT_CPU_BF16 was found only once training began."""
    from fewshot.errors import UserError

    forced_cpu_bf16()
    for name, words in ENV_WORDS.items():
        value = os.environ.get(name)
        # empty counts as unset, the shell's convention (`FEWSHOT_OMP_WAIT= fewshot train`), as for FEWSHOT_CPU_BF16
        # and as the readers take it (the default)
        if value is not None and value.strip() and value.strip().lower() not in words:
            raise UserError(f"{name}={value!r}: use one of {', '.join(words)}, or unset it.")


def cpu_computes_bf16() -> bool:
    """Whether bf16 convolutions run faster than fp32 on this CPU, so that ``train.amp=auto`` may use them.

    AMX (Intel Sapphire Rapids and later) always pays. AVX512-BF16 alone does on AMD Zen 4 (1.4x per
    resnet18 step at 64 px) but not on Intel CPUs without AMX, or whose hypervisor hides it: there oneDNN's
    bf16 kernels ran at half the fp32 speed (docs/performance.md, "A fourth host"). So AVX512-BF16 alone
    counts on AMD CPUs, and elsewhere :func:`bf16_conv_speedup` measures it once per process (0.2-2 s on
    2 cores). Without either flag torch emulates bf16 and fp32 is kept. ``FEWSHOT_CPU_BF16=0``/``1`` overrides all of it (the test suite sets 0,
    so that its results do not depend on the CPU it runs on); a resumed run keeps the precision it began with.
    """
    forced = forced_cpu_bf16()
    if forced is not None:
        return forced
    cpu = getattr(torch, "cpu", None)
    try:  # private but stable helpers (torch >= 2.1; used by torch's own inductor); absent: assume no
        if cpu._is_amx_tile_supported():
            return True
        if not cpu._is_avx512_bf16_supported():
            return False
    except AttributeError:
        return False
    if cpu_vendor() == "AuthenticAMD":  # Zen 4 and later: measured 1.4-1.6x per step at 64 px, no probe needed
        return True
    return bf16_conv_speedup() >= BF16_MIN_SPEEDUP


def cpu_vendor() -> str | None:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``) from /proc/cpuinfo; None where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# bf16 must beat fp32 by this much on the probe's convolution before `train.amp=auto` takes it: a whole step
# also pays for casts that the probe does not see.
BF16_MIN_SPEEDUP = 1.15


@functools.lru_cache(maxsize=None)
def bf16_conv_speedup(reps: int = 5) -> float:
    """fp32 time over bf16-autocast time of a convolution's forward and backward, median of ``reps``
    alternating pairs after two untimed pairs (oneDNN builds its kernels on first use). The shape is
    resnet18's first stage at 64 px (64 channels, 16x16 maps), batch 32, where bf16 gains most if it gains."""
    # callers may be inside no_grad or inference_mode; the global RNG must not move (a seeded run would then
    # depend on whether this CPU needed the probe)
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
        x = torch.randn(32, 64, 16, 16, requires_grad=True)

        def seconds(bf16: bool) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = conv(x)
            out.float().sum().backward()
            return time.perf_counter() - start

        for _ in range(2):
            seconds(True), seconds(False)
        return statistics.median(seconds(False) / seconds(True) for _ in range(reps))


def resolve_compile(setting, device: torch.device) -> bool:
    """train.compile: ``auto`` compiles on CUDA only. On the CPU it was measured not to help a MoCo
    step (same speed as eager, and a cold compile takes minutes on 2 cores: docs/performance.md).
    ``true``/``false`` force it."""
    if setting in (None, False, "false", "off", "no"):
        return False
    if setting == "auto":
        return device.type == "cuda" and hasattr(torch, "compile")
    return True


def compile_modules(modules, setting, device: torch.device, backend: str | None = None) -> bool:
    """``module.compile()`` in place (state-dict keys unchanged) when :func:`resolve_compile` says so.

    A forward frame that fails to compile runs eagerly instead (``suppress_errors``), so a missing C++
    compiler or an unsupported op costs speed there. ``suppress_errors`` does not reach the backward graph,
    which AOT autograd compiles lazily inside ``loss.backward()``: the training loop handles that failure
    (Engine: the step is redone eagerly in a single process; under DDP the run stops and says what failed,
    :func:`compile_failure_text`).
    Returns whether compile is on.
    """
    if not resolve_compile(setting, device):
        return False
    if not hasattr(torch, "compile"):
        print("warning: train.compile is on but this torch has no torch.compile; running eagerly", file=sys.stderr)
        return False
    from torch import _dynamo

    _dynamo.config.suppress_errors = True
    for m in modules:
        m.compile(**({"backend": backend} if backend else {}))
    return True


def compiled_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules that ``module.compile()`` compiled: their calls go through ``_compiled_call_impl``."""
    return [m for m in model.modules() if getattr(m, "_compiled_call_impl", None) is not None]


def uncompile(modules) -> None:
    """Undo ``module.compile()``: the modules run their eager forward again (parameters are untouched)."""
    for m in modules:
        m._compiled_call_impl = None


def is_compile_failure(exc: BaseException) -> bool:
    """Whether ``exc`` comes from torch.compile's machinery: dynamo and inductor errors (InductorError and
    BackendCompilerFailed derive from TorchDynamoException), e.g. a broken cache entry's "main.so: file too
    short" or a C++ compiler error raised while the backward graph compiles; and errors raised while compiled
    code runs (:func:`raised_in_compiled_code`)."""
    try:
        from torch._dynamo.exc import TorchDynamoException
    except ImportError:  # a torch without dynamo compiles nothing
        return False
    return isinstance(exc, TorchDynamoException) or raised_in_compiled_code(exc)


def raised_in_compiled_code(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by inductor's generated code or its runtime checks: the innermost Python frame
    of its traceback lies in the inductor cache folder (generated code) or in torch/_inductor/. Seen on an H200
    (torch 2.11): a MoCo pretraining at 32 px with channels_last stopped in its compiled backward with inductor's
    stride check, a plain AssertionError ("expected size 512==512, stride 9==1 ... convolution_backward": torch's
    fake kernel predicted a channels_last weight gradient, cuDNN returned a contiguous one; pytorch/pytorch#171622,
    #197517), reported as "internal error (a bug)". The same step runs eagerly. Only the innermost frame counts:
    every error in a compiled backward passes through inductor's frames, a user's own (a custom op's backward) too.
    Running out of memory and the GPU's sticky errors (an illegal address) are not compile failures: the eager
    step would meet them again."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return False
    sticky = getattr(torch, "AcceleratorError", None)
    if sticky is not None and isinstance(exc, sticky):
        return False
    if isinstance(exc, RuntimeError) and str(exc).startswith("CUDA error"):  # a sticky error before AcceleratorError
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = os.path.abspath(tb.tb_frame.f_code.co_filename)
    inductor = os.sep + os.path.join("torch", "_inductor") + os.sep
    return inductor in path or path.startswith(os.path.join(inductor_cache_dir(), ""))


def inductor_cache_dir() -> str:
    """The folder where torch.compile (inductor) keeps its compiled kernels, as torch._inductor's
    ``cache_dir()`` finds it (TORCHINDUCTOR_CACHE_DIR, else ``<tmp>/torchinductor_<user>``), without
    creating it or setting the variable as ``cache_dir()`` does."""
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env:
        return os.path.abspath(env)
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return os.path.abspath(default_cache_dir())
    except Exception:  # noqa: BLE001 - another torch layout: the folder's usual name
        import getpass
        import tempfile

        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name (a container without /etc/passwd entry)
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        return os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")


def compile_failure_text(exc: BaseException) -> str:
    """What failed, in one line of at most 300 characters: a C++ compiler error carries the whole compiler
    output, which buried the cause of the message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= 300 else text[:297] + "..."


def compile_remedy(exc: BaseException) -> str:
    """What the user can do about a compile failure: an error raised while compiled code runs (a torch bug, such as
    inductor's stride check; it fails again after any recompile) is avoided by not compiling, or often by
    train.channels_last=false; a failed compile may be a broken entry of torch's compile cache, left by a run
    killed while compiling. Decided by where the error was raised, not by its type: the generated code raises
    RuntimeErrors and IndexErrors too, and a compile error can wrap an AssertionError."""
    if raised_in_compiled_code(exc):
        return ("It was raised in torch's generated code (a torch bug, seen with channels_last): set "
                "train.compile=false, or train.channels_last=false, to avoid it.")
    return (f"A run killed while compiling can leave a broken entry in torch's compile cache: delete the folder "
            f"{inductor_cache_dir()} to compile again, or set train.compile=false to skip compiling.")


def cpu_fp16_warning(amp: torch.dtype | None, device: torch.device) -> str | None:
    """The warning for ``train.amp=fp16`` on a CPU (None where it does not apply): fp16 autocast runs there,
    but without native fp16 arithmetic (AMX-FP16) every op converts through fp32; a MoCo pretraining ran
    about 15x slower than in fp32."""
    if amp != torch.float16 or device.type != "cpu":
        return None
    try:
        if torch.cpu._is_amx_fp16_supported():
            return None
    except AttributeError:  # a torch without the probe: assume no native fp16
        pass
    return ("warning: train.amp=fp16 on a CPU: this CPU has no fast fp16 arithmetic, so training runs much slower "
            "than in fp32 (about 15x in a measured pretraining). Use train.amp=off (fp32), or train.amp=bf16 on a "
            "CPU with native bf16 (train.amp=auto picks it where it pays).")
