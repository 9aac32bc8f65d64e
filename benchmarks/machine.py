"""What a speed figure is measured on and against: the machine, its matmul peak, the model's
FLOPs, and peak memory."""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from common.devices import cpu_has_fast_bf16, resolve_precision


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device, threads: int) -> dict[str, Any]:
    """What the figures were measured on."""
    auto = resolve_precision("auto", device)
    machine: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu_model_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "threads": threads,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "auto_precision": dtype_name(auto),
    }
    if device.type == "cuda":
        machine["cuda_device"] = torch.cuda.get_device_name(device)
        machine["cuda"] = torch.version.cuda
    return machine


def dtype_name(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, tf32: bool = False) -> dict[str, Any]:
    """Dense square matmul rate in FLOP/s (2·n³ per product), median of 5 rounds.

    n doubles from 256 until one product takes ~20 ms (or n reaches 2048 on CPU, 8192 on
    CUDA), so an emulated dtype is measured in seconds rather than minutes.
    """
    max_n = 8192 if device.type == "cuda" else 2048
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        n, per_product = 256, 0.0
        while True:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            torch.mm(a, b)  # warm-up: library dispatch, workspace allocation
            per_product = math.inf
            for _ in range(3):  # the fastest of three, so one preemption cannot stop the search
                synchronize(device)
                start = time.perf_counter()
                torch.mm(a, b)
                synchronize(device)
                per_product = min(per_product, time.perf_counter() - start)
            if per_product >= 0.02 or n >= max_n:
                break
            n *= 2
        repeats = max(1, math.ceil(0.05 / max(per_product, 1e-6)))
        rates = []
        for _ in range(5):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                torch.mm(a, b)
            synchronize(device)
            rates.append(2 * n**3 * repeats / (time.perf_counter() - start))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    return {"n": n, "flops_per_s": statistics.median(rates)}


def measure_matmul_rates(device: torch.device) -> dict[str, dict[str, Any]]:
    """fp32 and bf16 rates; on CUDA also tf32 (what fp32 convolutions use by default) and fp16."""
    rates = {"fp32": matmul_rate(device, torch.float32)}
    if device.type == "cuda":
        rates["tf32"] = matmul_rate(device, torch.float32, tf32=True)
        rates["fp16"] = matmul_rate(device, torch.float16)
    rates["bf16"] = matmul_rate(device, torch.bfloat16)
    return rates


def count_flops(height: int, width: int) -> dict[str, float]:
    """FLOPs of one window's inference forward and of one sample's training step
    (forward, losses, backward) at ``height`` x ``width``.

    Counted on fake tensors (shapes only, no arithmetic), falling back to real CPU tensors
    if this torch cannot run the model on fake ones.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from model import LGNNet, init_memory_items
    from training.config import TrainConfig

    weights = TrainConfig()  # train.py's default loss weights

    def count() -> dict[str, float]:
        model = LGNNet().eval()
        items = init_memory_items(model.msize, model.mdim)
        window = torch.zeros(1, model.t_length * model.channels, height, width)
        inputs, target = window[:, : -model.channels], window[:, -model.channels :]
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.infer_from_encoded(model.encode(inputs), items)
        forward = counter.get_total_flops()
        model.train()
        with FlopCounterMode(display=False) as counter:
            out = model.forward_train(inputs, items)
            loss = F.mse_loss(out.prediction, target)
            loss = loss + weights.loss_compact * out.compactness
            loss = loss + weights.loss_separate * out.separateness
            loss.backward()
        return {
            "forward_per_frame": float(forward),
            "train_per_sample": float(counter.get_total_flops()),
        }

    try:
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            return count()
    except Exception:  # a private API: fall back to computing for real
        return count()


def resident_memory_bytes(field: str) -> int | None:
    """``VmHWM`` (peak) or ``VmRSS`` (current) of this process from /proc, None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak allocated since the last reset. CPU: peak resident set of this process.

    VmHWM belongs to the process's own address space, which exec replaces, whereas
    ``ru_maxrss`` survives exec and so starts a spawned child at its parent's size.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resident_memory_bytes("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, else KiB
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)
