"""Choice of device and precision, and the autocast context they imply."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from lemevit_geo.choices import Compile, Precision
from lemevit_geo.errors import LemevitError

if TYPE_CHECKING:
    import torch


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a device that exists."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise LemevitError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LemevitError(f"device {spec!r} asked for, but torch sees no CUDA device; use `device` cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise LemevitError(f"device {spec!r} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise LemevitError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    return device


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul support (AVX512-BF16 or AMX), where bf16 is fast."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: Precision | str, device: torch.device) -> torch.dtype:
    """Pick the compute dtype: ``auto`` is bf16 on CUDA with bf16 support (else fp16) and on CPUs with
    native bf16, fp32 elsewhere."""
    import torch

    precision = Precision(precision)
    if precision == Precision.auto:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    if precision == Precision.fp16 and device.type == "cpu":
        raise LemevitError("fp16 is not supported on the CPU; use `precision` bf16 or fp32")
    return {Precision.fp32: torch.float32, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast context for ``dtype`` on ``device`` (a no-op for fp32)."""
    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype: torch.dtype) -> str:
    """Short name of a compute dtype (fp32, bf16, fp16)."""
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


#: ``auto`` batch size on the CPU: tiles of this many pixels per batch (4 tiles of 512 x 512 px); the CPU runs
#: at the same speed from a few tiles on, so this only bounds memory.
CPU_BATCH_PIXELS = 4 * 512 * 512
#: Most reader threads ``auto`` starts (GDAL decodes in them; more than this only adds contention).
MAX_READER_THREADS = 8


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and SLURM restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_threads(threads: int | str, device: torch.device) -> int:
    """Reader threads: a number as given; ``auto`` is 2 on the CPU (the model needs the cores) and, with a GPU,
    every core but two (the main thread and the writer), between 2 and :data:`MAX_READER_THREADS`."""
    if threads != "auto":
        return int(threads)
    if device.type == "cpu":
        return 2
    return max(2, min(MAX_READER_THREADS, available_cores() - 2))


def cpu_batch_size(tile: int) -> int:
    """The ``auto`` batch size on the CPU for ``tile`` x ``tile`` px tiles: about :data:`CPU_BATCH_PIXELS`, 1 to 32."""
    return max(1, min(32, CPU_BATCH_PIXELS // (tile * tile)))


def resolve_compile(choice: Compile | str, device: torch.device) -> bool:
    """Whether to compile the model: ``auto`` compiles on CUDA only. On a 2-core CPU ``torch.compile`` gave
    LeMeViT-tiny 1.03x (bf16) to 1.14x (fp32) after 10-60 s of compiling: it does not pay there."""
    choice = Compile(choice)
    if choice == Compile.auto:
        return device.type == "cuda"
    return choice == Compile.on
