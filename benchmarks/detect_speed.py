"""How fast ``detect.py`` scores footage on this machine: frames per second of the whole
command (decoding, resizing, one window per frame, the memory update, the CSV), at the sizes
given, with a network of the paper's sizes (random weights: speed does not depend on them).

Examples::

    python benchmarks/detect_speed.py --sizes 256x256,32x48 --frames 60
    python benchmarks/detect_speed.py --sizes 256x256 --precision fp32 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import detect  # noqa: E402  (a benchmark drives the command line as a user would)
from benchmarks.machine import cpu_model_name  # noqa: E402
from inference.calibration import calibration_from_scores  # noqa: E402
from model import LGNNet, init_memory_items  # noqa: E402
from model import checkpoint as checkpoint_format  # noqa: E402


def synthetic_clip(path: Path, frames: int, height: int = 240, width: int = 360) -> Path:
    """A grey street with a dark block walking across it, as an MJPG AVI."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (width, height))
    rng = np.random.default_rng(0)
    for t in range(frames):
        frame = np.full((height, width, 3), 110, np.uint8)
        x = (10 + 4 * t) % (width - 40)
        frame[height // 3 : height // 3 + 40, x : x + 20] = 40
        writer.write(np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8))
    writer.release()
    return path


def measure(size: tuple[int, int], frames: int, precision: str, device: str, folder: Path) -> dict:
    """detect.py's report for one size: frames, seconds, frames per second."""
    torch.manual_seed(0)
    model = LGNNet()
    items = init_memory_items(model.msize, model.mdim)
    saved = checkpoint_format.with_calibration(
        checkpoint_format.build(model, items, size),
        calibration_from_scores(np.linspace(20, 30, 200), np.linspace(0.01, 0.02, 200)),
    )
    checkpoint = folder / f"untrained_{size[0]}x{size[1]}.pth"
    checkpoint_format.write(saved, checkpoint)
    clip = synthetic_clip(folder / "clip.avi", frames)
    argv = ["--checkpoint", str(checkpoint), "--input", str(clip), "--precision", precision]
    argv += ["--device", device, "--scores", str(folder / "scores.csv")]
    return detect.main(detect.get_args_parser().parse_args(argv))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256x256,32x48", help="HxW, comma-separated")
    parser.add_argument("--frames", type=int, default=60, help="frames of the synthetic clip")
    parser.add_argument("--precision", default="auto", help="as detect.py's --precision")
    parser.add_argument("--device", default="auto", help="as detect.py's --device")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for text in args.sizes.split(","):
            height, width = (int(v) for v in text.split("x"))
            report = measure(
                (height, width), args.frames, args.precision, args.device, Path(folder)
            )
            rows.append((text, report))
    print(
        f"machine: {cpu_model_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"{'size':>9} {'precision':>9} {'frames':>6} {'seconds':>8} {'frames/s':>9} {'s/frame':>8}"
    )
    for text, report in rows:
        rate = report["frames_per_second"]
        print(
            f"{text:>9} {report['precision']:>9} {report['frames']:>6} {report['seconds']:>8.1f} "
            f"{rate:>9.2f} {1 / rate:>8.3f}"
        )


if __name__ == "__main__":
    main()
