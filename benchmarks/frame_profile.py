"""Where the time of one streamed frame goes: ``detect.py``'s per-frame step
(``inference.streaming.StreamingScorer.push``) against its FLOP time on this machine.

For each size: the FLOPs of one steady-state push (``torch.utils.flop_counter``, the
per-frame reuse included), the dense matmul rate of the precision's dtype (the floor), the
measured seconds per push, their ratio, and the operators that take the time
(``torch.profiler``, self time, the top rows). A network of the paper's sizes with random
weights: speed does not depend on them.

    python benchmarks/frame_profile.py --sizes 32x48 --precision fp32
    python benchmarks/frame_profile.py --sizes 32x48,256x256 --precision bf16 --frames 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model_name, matmul_rate  # noqa: E402
from common.devices import resolve_precision  # noqa: E402
from inference.streaming import StreamingScorer  # noqa: E402
from model import LGNNet, init_memory_items  # noqa: E402


def frames_of(count: int, height: int, width: int) -> list[np.ndarray]:
    """BGR uint8 frames at the model's size (so ``push``'s resize is a no-op copy)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def profile_size(height: int, width: int, dtype: torch.dtype | None, frames: int, top: int):
    """Print one size's figures; returns (seconds per push, FLOP-time ratio)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = LGNNet().eval()
    items = init_memory_items(model.msize, model.mdim)
    scorer = StreamingScorer(model, items, height, width, dtype=dtype)
    images = frames_of(model.t_length + frames, height, width)
    for image in images[: model.t_length]:  # fill the window: steady state from here on
        scorer.push(image)
    with FlopCounterMode(display=False) as counter:
        scorer.push(images[model.t_length])
    flops = counter.get_total_flops()
    timed = []
    for image in images[model.t_length + 1 :]:
        began = time.perf_counter()
        scorer.push(image)
        timed.append(time.perf_counter() - began)
    seconds = statistics.median(timed)
    peak = matmul_rate(torch.device("cpu"), dtype or torch.float32)["flops_per_s"]
    floor = flops / peak
    name = str(dtype or torch.float32).removeprefix("torch.")
    print(
        f"\n{height}x{width} {name}: {flops / 1e9:.2f} GFLOP per frame, matmul "
        f"{peak / 1e12:.3f} TFLOP/s -> FLOP time {1e3 * floor:.1f} ms; measured "
        f"{1e3 * seconds:.1f} ms per push (median of {len(timed)}): {seconds / floor:.2f}x"
    )
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as profiler:
        for image in images[model.t_length + 1 :]:
            scorer.push(image)
    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    print(table)
    return seconds, seconds / floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32x48", help="HxW, comma-separated")
    parser.add_argument("--precision", default="auto", help="as detect.py's --precision")
    parser.add_argument("--frames", type=int, default=30, help="timed pushes per size")
    parser.add_argument("--top", type=int, default=12, help="operator rows to print")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_precision(args.precision, torch.device("cpu"))
    print(
        f"machine: {cpu_model_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    for text in args.sizes.split(","):
        height, width = (int(value) for value in text.split("x"))
        profile_size(height, width, dtype, args.frames, args.top)


if __name__ == "__main__":
    main()
