"""Devices and numeric precision: ``--device`` and ``--precision`` resolved once, the same
way in every command line and in the Python API."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from common.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str = "auto", flag: str = "--device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch.device.
    ``flag`` is how error messages name the setting (the Python API passes ``device``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(
            f"{flag} {name!r} is not a device name ({error}); use auto, cpu or cuda"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{flag} {name} asks for CUDA, but none is available; use cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is
    emulated and several times slower than fp32."""
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if "AMX" in capability or "BF16" in capability:
        return True
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(
    precision: str, device: torch.device, flag: str = "--precision"
) -> torch.dtype | None:
    """Map a precision name to an autocast dtype, or None for plain fp32.

    ``auto``: bf16 on CPUs that compute it natively, bf16 (or fp16 where bf16 is missing)
    on CUDA, fp32 otherwise.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise InputError(f"{flag} {precision!r} is unknown; use {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bfloat16`` or ``float16``: how reports and calibrations name an autocast
    dtype."""
    return str(dtype or "fp32").replace("torch.", "")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """An autocast region for ``dtype``, or a no-op for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
