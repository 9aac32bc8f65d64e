"""Inference and training speed of LGN-Net: the plain path against what the CLIs do by default.

For every size this measures, in one run:

- evaluation, seconds per test frame, through ``inference.video.evaluate_video`` (the function
  ``evaluate.py`` runs per video): the *plain* path (fp32, one window at a time) and the
  *default* path (``--precision auto``, ``--eval_batch_size 8``);
- training, samples per second, through ``training.loop.train_one_epoch`` on an in-memory
  loader: the plain path (fp32, batch 1) and the default path (``--precision auto``, batch 6,
  channels_last on CUDA as ``train.py`` sets it);
- variants that explain the choice of defaults: bf16 forced on a CPU without native bf16
  (emulated there, hence ``auto`` picks fp32), fp32 at the default batch sizes where ``auto``
  picks a lower precision, and the other memory format (channels_last / contiguous);
- the FLOPs of one window's forward and of one sample's training step (FlopCounterMode on
  fake tensors, so nothing is computed), the machine's fp32/tf32/bf16/fp16 matmul rates, the
  floor (FLOPs / fastest matmul rate) and the fraction of it each path reaches;
- peak memory: on CPU the peak resident set (VmHWM) of a fresh process that measures only
  that configuration, since a process's peak can only grow (the figure includes torch
  itself, printed as "base"); on CUDA ``torch.cuda.max_memory_allocated``, reset before each
  configuration.

Weights are random and the frames are noise: speed does not depend on either. The memory
gate ``gamma`` is set to infinity so every test frame pays for a test-time memory update
(the slowest case; the update is a small part of a frame's work). Warm-up chunks/steps are
excluded from the timings, which are medians.

Examples::

    python benchmarks/speed.py                               # 256x256 and 64x64
    python benchmarks/speed.py --sizes 128x128 --frames 16 --train_steps 3 --json speed.json
    python benchmarks/speed.py --device cpu --threads 4 --variants none

On a CPU the default sizes take long (a 256x256 training step at batch 6 is ~7 TFLOP).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.loop import train_one_epoch  # noqa: E402
from utils import (  # noqa: E402
    InputError,
    atomic_write,
    cpu_has_fast_bf16,
    resolve_device,
    resolve_precision,
)

LOSS_COMPACT, LOSS_SEPARATE = 10.0, 5.0  # train.py's defaults (SPEC)
DEFAULT_EVAL_BATCH = 8  # evaluate.py --eval_batch_size
DEFAULT_TRAIN_BATCH = 6  # train.py --batch_size
VARIANTS = ("bf16", "fp32_batched", "memory_format")
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Config:
    """One measurement: a task (``eval``/``train``) at one size with one set of settings."""

    task: str  # "eval" or "train"
    path: str  # "plain", "default" or a variant name
    height: int
    width: int
    precision: str  # what --precision would be given: auto, fp32, bf16, fp16
    batch: int  # eval: windows encoded together; train: samples per step
    channels_last: bool
    units: int  # eval: timed frames; train: timed steps
    warmup: int  # eval: warm-up chunks of `batch` windows; train: warm-up steps
    device: str
    threads: int
    seed: int = 0


# --------------------------------------------------------------------------- machine


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


# --------------------------------------------------------------------------- FLOPs


def count_flops(height: int, width: int) -> dict[str, float]:
    """FLOPs of one window's inference forward and of one sample's training step
    (forward, losses, backward) at ``height`` x ``width``.

    Counted on fake tensors (shapes only, no arithmetic), falling back to real CPU tensors
    if this torch cannot run the model on fake ones.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from model import LGNNet, init_memory_items

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
            loss = loss + LOSS_COMPACT * out.compactness + LOSS_SEPARATE * out.separateness
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


# --------------------------------------------------------------------------- measurements


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


def measure_eval(config: Config, device: torch.device) -> list[float]:
    """Seconds per frame of each timed chunk of ``config.batch`` windows."""
    from inference.video import evaluate_video
    from model import LGNNet, init_memory_items

    model = LGNNet().to(device).eval()
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    items = init_memory_items(model.msize, model.mdim, device=device)
    dtype = resolve_precision(config.precision, device)
    chunks = config.warmup + math.ceil(config.units / config.batch)
    context = model.t_length - 1
    generator = torch.Generator().manual_seed(config.seed)
    frames = torch.rand(
        chunks * config.batch + context,
        model.channels,
        config.height,
        config.width,
        generator=generator,
    )
    frames = (frames * 2 - 1).to(device)
    per_frame = []
    for chunk in range(chunks):
        # evaluate_video encodes start-aligned batches independently, so scoring a video
        # chunk by chunk (carrying the memory items) does exactly the work of one call.
        first = chunk * config.batch
        clip = frames[first : first + config.batch + context]
        synchronize(device)
        start = time.perf_counter()
        scores = evaluate_video(
            model, clip, items, gamma=math.inf, batch_size=config.batch, dtype=dtype
        )
        synchronize(device)
        if chunk >= config.warmup:
            per_frame.append((time.perf_counter() - start) / config.batch)
        items = scores.items
    return per_frame


def measure_train(config: Config, device: torch.device) -> list[float]:
    """Seconds of each timed training step of ``config.batch`` samples.

    The model, memory, optimizer and loader are set up as ``train.py`` sets them up; each
    step is one call of ``training.loop.train_one_epoch`` on a one-batch loader.
    """
    from torch.utils.data import DataLoader

    from model import LGNNet, init_memory_items

    dtype = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    model = LGNNet().to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    items = init_memory_items(model.msize, model.mdim, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    stacked = model.t_length * model.channels
    windows = torch.rand(config.batch, stacked, config.height, config.width) * 2 - 1
    loader = DataLoader(windows, batch_size=config.batch, pin_memory=device.type == "cuda")
    step_seconds = []
    for step in range(config.warmup + config.units):
        synchronize(device)
        start = time.perf_counter()
        # train_one_epoch draws a progress bar per call, one per timed step: keep it (and
        # the step's stderr with it) out of the report.
        with contextlib.redirect_stderr(io.StringIO()):
            items, _, _ = train_one_epoch(
                model, loader, items, optimizer, device,
                loss_compact=LOSS_COMPACT, loss_separate=LOSS_SEPARATE, dtype=dtype, scaler=scaler,
            )  # fmt: skip
        synchronize(device)
        if step >= config.warmup:
            step_seconds.append(time.perf_counter() - start)
    return step_seconds


def run_config(config: Config) -> dict[str, Any]:
    """Measure one configuration in the current process; returns timings and peak memory."""
    torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    base_memory = resident_memory_bytes("VmRSS") or peak_memory_bytes(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base_memory = 0
    measure = measure_eval if config.task == "eval" else measure_train
    timings = measure(config, device)
    return {
        **dataclasses.asdict(config),
        "precision_used": dtype_name(resolve_precision(config.precision, device)),
        "timings_s": timings,
        "median_s": statistics.median(timings),
        "peak_memory_bytes": peak_memory_bytes(device),
        "process_base_bytes": base_memory,
    }


def run_isolated(config: Config) -> dict[str, Any]:
    """``run_config`` in a fresh process on CPU, so each peak RSS is that config's own."""
    if config.device != "cpu":
        return run_config(config)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(run_config, config).result()


# --------------------------------------------------------------------------- plan and report


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        try:
            height, width = (int(p) for p in parts)
        except ValueError:
            raise InputError(
                f"--sizes entry {item!r} is not HxW; write e.g. --sizes 256x256,64x64"
            ) from None
        if height <= 0 or width <= 0 or height % 8 or width % 8:
            raise InputError(
                f"--sizes entry {item!r}: height and width must be positive multiples of 8"
            )
        if (height // 8) * (width // 8) < 2:
            # The plain training path (batch 1) batch-normalises the H/8 x W/8 features.
            raise InputError(
                f"--sizes entry {item!r} is too small for batch-1 training; use 16x8 or more"
            )
        sizes.append((height, width))
    return sizes


def parse_variants(text: str, device: torch.device) -> set[str]:
    if text == "auto":
        return set(VARIANTS) if device.type == "cuda" else {"bf16", "fp32_batched"}
    if text == "none":
        return set()
    chosen = {v.strip() for v in text.split(",") if v.strip()}
    unknown = chosen - set(VARIANTS)
    if unknown:
        raise InputError(
            f"--variants {', '.join(sorted(unknown))} unknown; use auto, none or a list of "
            f"{', '.join(VARIANTS)}"
        )
    return chosen


def plan(
    args: argparse.Namespace, device: torch.device, threads: int
) -> tuple[list[Config], list[str]]:
    """The configurations to measure (plain and default first at every size) and notes on
    what ``--variants auto`` left out."""
    sizes = parse_sizes(args.sizes)
    variants = parse_variants(args.variants, device)
    auto = resolve_precision("auto", device)
    cuda = device.type == "cuda"
    frames = args.frames or (64 if cuda else DEFAULT_EVAL_BATCH)
    steps = args.train_steps or (10 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    smallest = min(sizes, key=lambda s: s[0] * s[1])
    emulated_bf16 = not cuda and not cpu_has_fast_bf16()
    bf16_supported = not cuda or torch.cuda.is_bf16_supported()
    configs, notes = [], []
    if "bf16" in variants and emulated_bf16 and args.variants == "auto":
        # Emulated bf16 runs ~10x slower than fp32: one evaluation at the smallest size
        # shows why auto picks fp32 without costing more than the rest of the run.
        notes.append(
            f"bf16 emulated on this CPU: measured for evaluation at {smallest[0]}x{smallest[1]} "
            "only; --variants bf16 measures it everywhere (slow)"
        )
    if cuda and torch.backends.cudnn.allow_tf32:
        notes.append("fp32 convolutions run as TF32 on CUDA (torch.backends.cudnn.allow_tf32)")

    def add(task: str, path: str, size: tuple[int, int], precision: str, batch: int, cl: bool):
        configs.append(
            Config(
                task, path, size[0], size[1], precision, batch, cl,
                units=frames if task == "eval" else steps,
                warmup=warmup, device=str(device), threads=threads,
            )
        )  # fmt: skip

    for size in sizes:
        for task, batch, default_cl in (
            ("eval", DEFAULT_EVAL_BATCH, False),  # evaluate.py keeps the default format
            ("train", DEFAULT_TRAIN_BATCH, cuda),  # train.py: channels_last on CUDA
        ):
            add(task, "plain", size, "fp32", 1, False)
            add(task, "default", size, "auto", batch, default_cl)
            bf16_here = args.variants != "auto" or not emulated_bf16
            bf16_here = bf16_here or (task == "eval" and size == smallest)
            if "bf16" in variants and auto != torch.bfloat16 and bf16_supported and bf16_here:
                add(task, "bf16", size, "bf16", batch, default_cl)
            if "fp32_batched" in variants and auto is not None:
                add(task, "fp32 batched", size, "fp32", batch, default_cl)
            if "memory_format" in variants:
                name = "contiguous" if default_cl else "channels_last"
                add(task, name, size, "auto", batch, not default_cl)
    return configs, notes


def summarise(results: list[dict[str, Any]], flops: dict, peak_rate: float) -> None:
    """Add throughput, ratio to the plain path and fraction of the floor to each result."""
    plain = {(r["task"], r["height"], r["width"]): r for r in results if r["path"] == "plain"}
    for result in results:
        size_flops = flops[f"{result['height']}x{result['width']}"]
        if result["task"] == "eval":
            result["seconds_per_frame"] = result["median_s"]
            result["frames_per_s"] = 1 / result["median_s"]
            floor = size_flops["forward_per_frame"] / peak_rate
            result["fraction_of_floor"] = floor / result["median_s"]
            base = plain.get(("eval", result["height"], result["width"]))
            result["speedup_vs_plain"] = base["median_s"] / result["median_s"] if base else None
        else:
            result["samples_per_s"] = result["batch"] / result["median_s"]
            floor = size_flops["train_per_sample"] / peak_rate
            result["fraction_of_floor"] = floor * result["samples_per_s"]
            base = plain.get(("train", result["height"], result["width"]))
            result["speedup_vs_plain"] = (
                result["samples_per_s"] / base["samples_per_s"] if base else None
            )


def print_report(report: dict[str, Any]) -> None:
    machine, rates = report["machine"], report["matmul"]
    print(
        f"machine: {machine['cpu']} | capability {machine['cpu_capability']} | native bf16 "
        f"{'yes' if machine['cpu_native_bf16'] else 'no'} | {machine['threads']} threads "
        f"({machine['logical_cpus']} logical CPUs) | torch {machine['torch']}"
    )
    if "cuda_device" in machine:
        print(f"cuda: {machine['cuda_device']} (CUDA {machine['cuda']})")
    print(f"device {machine['device']}: --precision auto resolves to {machine['auto_precision']}")
    print(
        "matmul peak: "
        + ", ".join(
            f"{name} {rate['flops_per_s'] / 1e12:.3f} TFLOP/s (n={rate['n']})"
            for name, rate in rates.items()
        )
        + f"; floor uses {report['floor_dtype']}"
    )
    print()
    print(f"{'size':>9}  {'GFLOP/frame (fwd)':>17}  {'GFLOP/sample (train)':>20}  "
          f"{'floor s/frame':>13}  {'floor samples/s':>15}")  # fmt: skip
    for size, counted in report["flops"].items():
        forward, train_step = counted["forward_per_frame"], counted["train_per_sample"]
        print(
            f"{size:>9}  {forward / 1e9:17.2f}  {train_step / 1e9:20.2f}  "
            f"{forward / report['peak_flops_per_s']:13.4f}  "
            f"{report['peak_flops_per_s'] / train_step:15.3f}"
        )
    header = (
        f"{'size':>9}  {'path':<14}{'prec':<5}{'batch':>5}  {'format':<8}"
        "{:>10}{:>11}{:>10}{:>10}  {}"
    )
    results = report["results"]
    for task, title, units in (
        ("eval", "evaluation: seconds per test frame", ("s/frame", "frames/s")),
        ("train", "training: samples per second", ("s/step", "samples/s")),
    ):
        rows = [r for r in results if r["task"] == task]
        if not rows:
            continue
        counts = "/".join(str(n) for n in sorted({len(r["timings_s"]) for r in rows}))
        print(f"\n{title} (median of {counts} timed {'chunks' if task == 'eval' else 'steps'})")
        print(header.format(*units, "vs plain", "of floor", "peak MiB"))
        for r in rows:
            rate = r["frames_per_s"] if task == "eval" else r["samples_per_s"]
            speedup = f"{r['speedup_vs_plain']:.2f}x" if r["speedup_vs_plain"] else "-"
            memory = f"{r['peak_memory_bytes'] / MIB:.0f}"
            if r["process_base_bytes"]:
                memory += f" (base {r['process_base_bytes'] / MIB:.0f})"
            size = f"{r['height']}x{r['width']}"
            print(
                f"{size:>9}  {r['path']:<14}{r['precision_used']:<5}{r['batch']:>5}  "
                f"{'ch_last' if r['channels_last'] else 'contig':<8}"
                f"{r['median_s']:>10.4f}{rate:>11.3f}{speedup:>10}"
                f"{100 * r['fraction_of_floor']:>9.2f}%  {memory}"
            )
    print()
    if machine["device"].startswith("cuda"):
        print("peak MiB: torch.cuda.max_memory_allocated, reset before each configuration")
    else:
        print(
            "peak MiB: peak resident set of a fresh process measuring only that configuration; "
            "base = its resident set after importing torch"
        )
    print(
        "vs plain: speed relative to the plain path at the same size; of floor: "
        f"(FLOPs / {report['floor_dtype']} matmul peak) / measured time"
    )
    for note in report["notes"]:
        print(f"note: {note}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256x256,64x64", help="HxW list, multiples of 8")
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="timed test frames per evaluation config (default: 8 on CPU, 64 on CUDA); "
        "batched paths round up to whole batches",
    )
    parser.add_argument(
        "--train_steps", type=int, default=None, help="timed steps (default: 2 CPU, 10 CUDA)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed warm-up chunks/steps per config (default: 1 CPU, 3 CUDA)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument(
        "--variants",
        default="auto",
        help="extra paths: a list of bf16, fp32_batched, memory_format, or auto/none "
        "(auto: all on CUDA; on CPU fp32_batched where auto picks bf16, and where bf16 is "
        "emulated, bf16 evaluation at the smallest size)",
    )
    parser.add_argument("--json", default=None, help="also write all figures to this JSON file")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    for flag in ("frames", "train_steps", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag} must be at least 1, got {value}")
    if args.warmup is not None and args.warmup < 0:
        raise InputError(f"--warmup must be at least 0, got {args.warmup}")
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    configs, notes = plan(args, device, threads)

    machine = describe_machine(device, threads)
    print("measuring matmul rates ...", file=sys.stderr)
    rates = measure_matmul_rates(device)
    floor_dtype = max(rates, key=lambda name: rates[name]["flops_per_s"])
    peak = rates[floor_dtype]["flops_per_s"]
    print("counting FLOPs ...", file=sys.stderr)
    flops = {f"{h}x{w}": count_flops(h, w) for h, w in parse_sizes(args.sizes)}

    results = []
    for index, config in enumerate(configs, 1):
        began = time.perf_counter()
        result = run_isolated(config)
        results.append(result)
        print(
            f"[{index}/{len(configs)}] {config.task} {config.path} {config.height}x"
            f"{config.width} {result['precision_used']} batch {config.batch}: "
            f"median {result['median_s']:.4f} s ({time.perf_counter() - began:.0f} s)",
            file=sys.stderr,
        )
    summarise(results, flops, peak)
    report = {
        "machine": machine,
        "matmul": rates,
        "floor_dtype": floor_dtype,
        "peak_flops_per_s": peak,
        "flops": flops,
        "results": results,
        "notes": notes,
    }
    print_report(report)
    if args.json:
        atomic_write(Path(args.json), lambda p: p.write_text(json.dumps(report, indent=2)))
    return report


if __name__ == "__main__":
    cli_args = get_args_parser().parse_args()
    try:
        main(cli_args)
    except InputError as error:
        sys.exit(f"error: {error}")
