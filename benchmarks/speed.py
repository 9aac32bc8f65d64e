"""Inference and training speed of LGN-Net: the plain path, the previous default and today's
default, measured in one run.

For every size:

- evaluation, seconds per test frame, through ``inference.video.evaluate_video`` (what
  ``evaluate.py`` runs per video), over one clip of ``--frames`` frames;
- training, samples per second, through ``training.loop.train_one_epoch`` over
  ``--train_steps`` steps;

each along these paths:

- ``reference`` (evaluation only): the official release's order, fp32, one window at a time
  through the whole forward (``model(window, items, train=False)``), nothing reused between
  windows, each frame's point score read on the host before the memory update;
- ``plain``: fp32, one window at a time (evaluation: through ``evaluate_video``, which
  encodes each frame's per-frame part once for its 4 windows) or batch 1 (training), eager;
- ``previous``: the default before the CUDA fast path: ``--precision auto``, evaluation batch 8
  with each frame's values read back at once, training batch 6 from a DataLoader with plain
  Adam and the losses read back every step; eager, channels_last on CUDA;
- ``default``: what ``evaluate.py`` and ``train.py`` do today.

On CUDA ``default`` is the fast path (``--fast_path auto``): torch.compile of the encoder and
per-frame step and 32 windows encoded at once; for training torch.compile of the step, frames
as uint8 on the GPU, fused Adam, cuDNN autotuning and losses read every 25 steps. On a CPU
``default`` equals ``previous``, which is then left out. channels_last on CUDA everywhere but
``plain``. ``--variants`` adds bf16 where ``auto`` does not pick it and fp32 at the default
batch sizes where it does.

Beside the timings: the FLOPs of one window's forward and of one training sample (counted on
fake tensors), the machine's matmul peak, the floor (FLOPs / fastest matmul rate), the
fraction of it each path reaches, and peak memory (CPU: peak resident set of a fresh process
per configuration; CUDA: ``torch.cuda.max_memory_allocated``). Weights are random and frames
are noise; gamma is infinite, so every test frame pays for a memory update (the slowest case).
The first ``--warmup`` passes (compilation, autotuning) are not timed; figures are medians.

Examples::

    python benchmarks/speed.py --sizes 64x64,32x32 --variants none     # a quick look on a CPU
    python benchmarks/speed.py --sizes 256x256,32x48 --variants bf16   # default vs reference
    python benchmarks/speed.py --sizes 256x256 --device cuda --json results/speed/cuda_256x256.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import math
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import (  # noqa: E402
    count_flops,
    cpu_has_fast_bf16,
    describe_machine,
    dtype_name,
    measure_matmul_rates,
    peak_memory_bytes,
    resident_memory_bytes,
    synchronize,
)
from common.devices import resolve_device, resolve_precision  # noqa: E402
from common.errors import InputError  # noqa: E402
from common.files import atomic_write  # noqa: E402

MIB = 1024 * 1024
VARIANTS = ("bf16", "fp32_batched")


@dataclasses.dataclass(frozen=True)
class Config:
    """One measurement: a task (``eval``/``train``) at one size along one path."""

    task: str  # "eval" or "train"
    path: str  # "reference", "plain", "previous", "default" or a variant name
    height: int
    width: int
    precision: str  # what --precision would be given: auto, fp32, bf16
    batch: int  # eval: windows encoded together; train: samples per step
    channels_last: bool
    fast: bool  # the CUDA fast path (compilation, frames on the device, fused Adam, ...)
    units: int  # eval: frames per timed pass; train: steps per timed pass
    repeats: int  # timed passes
    warmup: int  # untimed passes before them
    device: str
    threads: int
    seed: int = 0


# --------------------------------------------------------------------------- measurements


def measure_eval(config: Config, device: torch.device) -> list[float]:
    """Seconds per frame of each timed pass over one clip of ``config.units`` frames."""
    from inference.video import compiled_scoring_functions, evaluate_video
    from model import LGNNet, init_memory_items

    torch.manual_seed(config.seed)
    model = LGNNet().to(device).eval()
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = config.fast
    functions = compiled_scoring_functions(model) if config.fast else None
    items = init_memory_items(model.msize, model.mdim, device=device)
    dtype = resolve_precision(config.precision, device)
    generator = torch.Generator().manual_seed(config.seed)
    frames = torch.rand(
        config.units + model.t_length - 1, 3, config.height, config.width, generator=generator
    )
    frames = (frames * 2 - 1).to(device)
    per_frame = []
    for index in range(config.warmup + config.repeats):
        synchronize(device)
        start = time.perf_counter()
        if config.path == "reference":
            score_in_reference_order(model, frames, items, gamma=math.inf)
        else:
            evaluate_video(
                model, frames, items, gamma=math.inf, batch_size=config.batch, dtype=dtype,
                functions=functions, sync_each_frame=not config.fast,
            )  # fmt: skip
        synchronize(device)
        if index >= config.warmup:
            per_frame.append((time.perf_counter() - start) / config.units)
    return per_frame


@torch.no_grad()
def score_in_reference_order(
    model: Any, frames: torch.Tensor, items: torch.Tensor, gamma: float
) -> list[float]:
    """The official release's test loop over frames ``(T, c, H, W)`` in [-1, 1]: per window
    the whole forward, the PSNR and point score read on the host, then the memory update
    when the point score is below ``gamma``. Returns the PSNRs (dB)."""
    from model.memory import update_memory
    from utils import frame_errors, point_score, psnr_from_mse

    context = model.t_length - 1
    psnrs = []
    for start in range(frames.shape[0] - context):
        window = frames[start : start + context].flatten(0, 1).unsqueeze(0)
        out = model(window, items, train=False)
        errors = frame_errors(out.prediction, frames[start + context].unsqueeze(0))
        psnrs.append(psnr_from_mse(float(errors.mean())))
        if point_score(errors) < gamma:
            items = update_memory(out.queries, items)
    return psnrs


def measure_train(config: Config, device: torch.device) -> list[float]:
    """Seconds per step of each timed pass of ``config.units`` steps, set up as ``train.py``
    sets itself up (``config.fast``: its CUDA fast path)."""
    from torch.utils.data import DataLoader

    from data.device_frames import DeviceWindows
    from data.frames import frames_to_tensor
    from training.config import TrainConfig
    from training.loop import train_one_epoch
    from training.setup import prepare_training

    train_config = TrainConfig(
        h=config.height, w=config.width, batch_size=config.batch, precision=config.precision,
        fast_path="auto" if config.fast else "off", seed=config.seed,
    )  # fmt: skip
    setup = prepare_training(train_config, device)
    model = setup.model
    if device.type == "cuda" and not config.channels_last:  # the plain path's layout
        model.to(memory_format=torch.contiguous_format)
    steps = max(config.units, config.warmup)
    rng = np.random.default_rng(config.seed)
    video = rng.integers(0, 256, (steps * config.batch + model.t_length - 1,
                                  config.height, config.width, 3), dtype=np.uint8)  # fmt: skip
    windows = [(0, start) for start in range(steps * config.batch)]
    if config.fast:
        source = DeviceWindows([video], windows, model.t_length, device)
    else:
        stacked = [
            frames_to_tensor(video[s : s + model.t_length]).flatten(0, 1) for _, s in windows
        ]

    def loader(count: int):
        batches = [list(range(i * config.batch, (i + 1) * config.batch)) for i in range(count)]
        if config.fast:
            return source.loader(batches)
        return DataLoader(stacked[: count * config.batch], batch_size=config.batch,
                          pin_memory=device.type == "cuda")  # fmt: skip

    per_step = []
    for index in range(1 + config.repeats):  # one warm-up pass of `warmup` steps
        count = config.warmup if index == 0 else config.units
        if count == 0:
            continue
        synchronize(device)
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # the epoch's progress bar
            setup.items, _, _ = train_one_epoch(
                setup.runner, loader(count), setup.items, setup.optimizer, device,
                setup.settings, sync_every=setup.sync_every,
            )  # fmt: skip
        synchronize(device)
        if index > 0:
            per_step.append((time.perf_counter() - start) / count)
    return per_step


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


def plan(args: argparse.Namespace, device: torch.device, threads: int) -> list[Config]:
    """The configurations to measure: plain, previous (CUDA only), default, variants."""
    cuda = device.type == "cuda"
    variants = set(VARIANTS) if args.variants == "auto" else set()
    if args.variants not in ("auto", "none"):
        variants = {v.strip() for v in args.variants.split(",") if v.strip()}
        if unknown := variants - set(VARIANTS):
            raise InputError(f"--variants {', '.join(sorted(unknown))} unknown; use auto, none "
                             f"or a list of {', '.join(VARIANTS)}")  # fmt: skip
    auto = resolve_precision("auto", device)
    native_bf16 = cuda or cpu_has_fast_bf16()
    repeats = args.repeats or (3 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    configs = []
    for (height, width), task in itertools.product(parse_sizes(args.sizes), ("eval", "train")):
        if task == "eval":
            units = args.frames or (192 if cuda else 8)
            previous_batch, default_batch = 8, (32 if cuda else 8)
        else:
            units = args.train_steps or (50 if cuda else 2)
            previous_batch = default_batch = 6
        common = {
            "task": task,
            "height": height,
            "width": width,
            "units": units,
            "repeats": repeats,
            "warmup": warmup,
            "device": str(device),
            "threads": threads,
        }
        paths = [("reference", "fp32", 1, False, False)] if task == "eval" else []
        paths.append(("plain", "fp32", 1, False, False))
        if cuda:
            paths.append(("previous", "auto", previous_batch, False, True))
        paths.append(("default", "auto", default_batch, cuda, cuda))
        if (
            "bf16" in variants
            and auto != torch.bfloat16
            and (native_bf16 or args.variants != "auto")
        ):
            paths.append(("bf16", "bf16", default_batch, cuda, cuda))
        if "fp32_batched" in variants and auto is not None:
            paths.append(("fp32 batched", "fp32", default_batch, cuda, cuda))
        for path, precision, batch, fast, channels_last in paths:
            configs.append(Config(path=path, precision=precision, batch=batch, fast=fast,
                                  channels_last=channels_last, **common))  # fmt: skip
    return configs


def summarise(results: list[dict[str, Any]], flops: dict, peak_rate: float) -> None:
    """Add the rate (frames/s or samples/s), the speed-ups over the plain and the previous
    path at the same size and task, and the fraction of the floor to each result."""
    for result in results:
        size_flops = flops[f"{result['height']}x{result['width']}"]
        if result["task"] == "eval":
            result["frames_per_s"] = result["rate"] = 1 / result["median_s"]
            flops_per_unit = size_flops["forward_per_frame"]
        else:
            result["samples_per_s"] = result["rate"] = result["batch"] / result["median_s"]
            flops_per_unit = size_flops["train_per_sample"]
        result["fraction_of_floor"] = flops_per_unit / peak_rate * result["rate"]
    for result in results:
        for base_path in ("reference", "plain", "previous"):
            base = [r for r in results if r["path"] == base_path and all(
                r[key] == result[key] for key in ("task", "height", "width"))]  # fmt: skip
            ratio = result["rate"] / base[0]["rate"] if base else None
            result[f"speedup_vs_{base_path}"] = ratio


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
    peaks = ", ".join(f"{name} {rate['flops_per_s'] / 1e12:.3f} TFLOP/s (n={rate['n']})"
                      for name, rate in rates.items())  # fmt: skip
    print(f"matmul peak: {peaks}; floor uses {report['floor_dtype']}\n")
    print(f"{'size':>9}  {'GFLOP/frame (fwd)':>17}  {'GFLOP/sample (train)':>20}")
    for size, counted in report["flops"].items():
        print(f"{size:>9}  {counted['forward_per_frame'] / 1e9:17.2f}  "
              f"{counted['train_per_sample'] / 1e9:20.2f}")  # fmt: skip
    for task, title, unit in (
        ("eval", "evaluation", "frames/s"),
        ("train", "training", "samples/s"),
    ):
        rows = [r for r in report["results"] if r["task"] == task]
        if not rows:
            continue
        print(f"\n{title} ({unit}, median of {rows[0]['repeats']} timed passes)")
        print(f"{'size':>9}  {'path':<13}{'prec':<5}{'batch':>5}  {'format':<8}{unit:>11}"
              f"{'vs ref.':>10}{'vs plain':>10}{'vs prev.':>10}{'of floor':>10}"
              "  peak MiB")  # fmt: skip
        for r in rows:
            keys = ("speedup_vs_reference", "speedup_vs_plain", "speedup_vs_previous")
            ratios = [f"{r[k]:.2f}x" if r[k] else "-" for k in keys]
            memory = f"{r['peak_memory_bytes'] / MIB:.0f}"
            if r["process_base_bytes"]:
                memory += f" (base {r['process_base_bytes'] / MIB:.0f})"
            fmt = "ch_last" if r["channels_last"] else "contig"
            print(f"{r['height']:>5}x{r['width']:<3}  {r['path']:<13}{r['precision_used']:<5}"
                  f"{r['batch']:>5}  {fmt:<8}{r['rate']:>11.3f}{ratios[0]:>10}{ratios[1]:>10}"
                  f"{ratios[2]:>10}"
                  f"{100 * r['fraction_of_floor']:>9.2f}%  {memory}")  # fmt: skip
    print(
        "\npeak MiB: "
        + ("torch.cuda.max_memory_allocated" if machine["device"].startswith("cuda") else
           "peak resident set of a fresh process per configuration (base: after importing torch)")
        + f"; of floor: (FLOPs / {report['floor_dtype']} matmul peak) x measured rate"
    )  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speed.py", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256x256,32x48", help="HxW list, multiples of 8")
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames per timed evaluation pass (default: 8 CPU, 192 CUDA)",
    )
    parser.add_argument(
        "--train_steps",
        type=int,
        default=None,
        help="steps per timed training pass (default: 2 CPU, 50 CUDA)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed passes per configuration (default: 1 CPU, 3 CUDA)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed passes (eval) / steps (train) first (default: 1 CPU, 3 CUDA)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument(
        "--variants", default="auto", help="extra paths: bf16, fp32_batched (a list), auto or none"
    )
    parser.add_argument("--json", default=None, help="also write all figures to this JSON file")
    return parser  # fmt: skip


def main(args: argparse.Namespace) -> dict[str, Any]:
    for flag in ("frames", "train_steps", "threads", "repeats"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag} must be at least 1, got {value}")
    if args.warmup is not None and args.warmup < 0:
        raise InputError(f"--warmup must be at least 0, got {args.warmup}")
    device = resolve_device(args.device)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    configs = plan(args, device, threads)
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
        results.append(run_isolated(config))
        print(
            f"[{index}/{len(configs)}] {config.task} {config.path} {config.height}x"
            f"{config.width} {results[-1]['precision_used']} batch {config.batch}: median "
            f"{results[-1]['median_s']:.4f} s ({time.perf_counter() - began:.0f} s)",
            file=sys.stderr,
        )
    summarise(results, flops, peak)
    report = {"machine": machine, "matmul": rates, "floor_dtype": floor_dtype,
              "peak_flops_per_s": peak, "flops": flops, "results": results}  # fmt: skip
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
